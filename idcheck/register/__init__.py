"""The register core: checks, uploads, cancels and reads over the durable store and the in-memory index."""

from idcheck.register.checks import CheckResult, PreparedQuery, Query, Verdict
from idcheck.register.errors import InvalidRequest, LimitExceeded, RegisterError, UploadAborted
from idcheck.register.register import Caller, Limits, RawRecord, Register, UploadSession

__all__ = [
    "Caller",
    "CheckResult",
    "InvalidRequest",
    "LimitExceeded",
    "Limits",
    "PreparedQuery",
    "Query",
    "RawRecord",
    "Register",
    "RegisterError",
    "UploadAborted",
    "UploadSession",
    "Verdict",
]
