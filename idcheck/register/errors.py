"""Errors of the register core, mapped to gRPC status codes in one place (idcheck/server/errors.py)."""

from __future__ import annotations

from collections.abc import Sequence


class RegisterError(Exception):
    """Base class of the register's refusals."""


class InvalidRequest(RegisterError):
    """Bad input: every offending field with a description (becomes google.rpc.BadRequest)."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        self.violations = list(violations)
        n = len(self.violations)
        shown = "; ".join(f"{f}: {d if len(d) <= 100 else d[:99] + '…'}" for f, d in self.violations[:3])
        more = f" (and {n - 3} more)" if n > 3 else ""
        super().__init__(f"invalid request, {n} bad field{'s' if n != 1 else ''}: {shown}{more}")

    @classmethod
    def single(cls, field: str, description: str) -> InvalidRequest:
        return cls([(field, description)])


class LimitExceeded(RegisterError):
    """A request larger than the configured limits (becomes RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class UploadAborted(RegisterError):
    """The upload stream did not end cleanly; nothing of it was applied."""


class HitNotFound(RegisterError):
    """No HIT or POSSIBLE_MATCH under that query id (becomes NOT_FOUND)."""

    def __init__(self, message: str, *, field: str = "query_id") -> None:
        super().__init__(message)
        self.field = field


class HitAlreadyDecided(RegisterError):
    """The hit was already confirmed or rejected; one outcome per query id (becomes FAILED_PRECONDITION)."""

    def __init__(self, message: str, *, field: str = "query_id") -> None:
        super().__init__(message)
        self.field = field
