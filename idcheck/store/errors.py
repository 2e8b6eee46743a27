"""Errors the store raises for requests it refuses; the server maps them to gRPC status codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base class. `field` names the request field concerned, when there is one."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class NotOwner(StoreError):
    """The caller tried to change or read a record another member owns."""


class RecordNotFound(StoreError):
    """No record under that key."""


class AmbiguousKey(StoreError):
    """A key without document class matches records of several classes."""
