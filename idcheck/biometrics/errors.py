"""Errors of the biometric core, mapped to gRPC status codes in one place (idcheck/server/errors.py)."""

from __future__ import annotations

from collections.abc import Sequence


class TemplateError(ValueError):
    """Bad templates or probes: every offending field with a description (becomes google.rpc.BadRequest)."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        self.violations = list(violations)
        shown = "; ".join(f"{f}: {d}" for f, d in self.violations[:5])
        more = f" (and {len(self.violations) - 5} more)" if len(self.violations) > 5 else ""
        super().__init__(f"invalid request: {shown}{more}")

    @classmethod
    def single(cls, field: str, description: str) -> TemplateError:
        return cls([(field, description)])
