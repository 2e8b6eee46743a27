"""Client-side exceptions: a failed call becomes one of these, with the server's field violations."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class IdcheckError(Exception):
    """A call the service refused or could not answer."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        violations: list[tuple[str, str]] | None = None,
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.violations = violations or []
        self.reason = reason
        # Seconds the server asks the caller to wait before retrying (google.rpc.RetryInfo), e.g. when the
        # member's rate limit is exhausted; None when the server gave no hint.
        self.retry_after = retry_after

    def __str__(self) -> str:
        lines = [f"{self.code.name}: {self.message}"]
        lines += [f"  {f}: {d}" for f, d in self.violations if f"{f}: {d}" not in self.message]
        return "\n".join(lines)


class InvalidArgument(IdcheckError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(IdcheckError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(IdcheckError):
    code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(IdcheckError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(IdcheckError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(IdcheckError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(IdcheckError):
    """The service could not be reached (not running, wrong address, network down)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(IdcheckError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[IdcheckError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        PermissionDenied,
        Unauthenticated,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_rpc_error(err: grpc.RpcError) -> IdcheckError:
    """Translate a grpc.RpcError (with google.rpc details when present) into an IdcheckError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else "") or (code.name if code else "error")
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:  # malformed trailers: keep the plain message
        status = None
    return _error(code, message, status)


def from_status(data: bytes) -> IdcheckError:
    """Translate a serialized google.rpc.Status (a refused request of a check stream) into an IdcheckError."""
    status = status_pb2.Status.FromString(data)
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _error(code, status.message or code.name, status)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _error(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> IdcheckError:
    violations: list[tuple[str, str]] = []
    reason = ""
    retry_after: float | None = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(code, IdcheckError)
    return cls(message, code=code, violations=violations, reason=reason, retry_after=retry_after)
