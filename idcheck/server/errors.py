"""The one place where exceptions become gRPC status codes (with google.rpc details).

`GuardInterceptor` wraps every RPC handler: it authenticates the caller, makes the caller available to
the servicer, and turns the core's exceptions into precise status codes. Anything unexpected becomes
INTERNAL with an incident id, logged with its traceback; the message never carries internals.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from idcheck.biometrics import TemplateError
from idcheck.register import Caller, InvalidRequest, LimitExceeded, UploadAborted
from idcheck.register.errors import HitAlreadyDecided, HitNotFound
from idcheck.server.auth import (
    IdentitySource,
    RoleDenied,
    Unauthenticated,
    authenticate,
    is_public,
    metadata_identity,
    reset_caller,
    set_caller,
)
from idcheck.server.limits import CallExpired, ConcurrencyLimiter, Overloaded, RateLimited, RateLimiter
from idcheck.store import AmbiguousKey, NotOwner, RecordNotFound
from idcheck.store.templates import TemplateNotFound

log = logging.getLogger(__name__)

DOMAIN = "idcheck.v1"


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# A status travels in HTTP/2 trailers, which clients refuse beyond 8 KiB by default (and the details are
# base64-encoded on the way). Messages echo what the caller sent, so every part is clipped and only the first
# violations are detailed; the message says how many there were in all.
MAX_MESSAGE_CHARS = 600
MAX_FIELD_CHARS = 80
MAX_DESCRIPTION_CHARS = 160
MAX_VIOLATIONS = 20


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bad_request(violations: list[tuple[str, str]]) -> any_pb2.Any:
    return _pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clip(f, MAX_FIELD_CHARS), description=clip(d, MAX_DESCRIPTION_CHARS)
                )
                for f, d in violations[:MAX_VIOLATIONS]
            ]
        )
    )


def _info(reason: str, **metadata: str) -> any_pb2.Any:
    return _pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))


def _retry_info(seconds: float) -> any_pb2.Any:
    # Rounded up to the millisecond, so that a client waiting exactly this long finds room.
    millis = max(1, math.ceil(seconds * 1000))
    return _pack(
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
        )
    )


def to_status(exc: BaseException) -> status_pb2.Status | None:
    """The status for a known exception, or None when it is not one of ours."""
    if isinstance(exc, InvalidRequest | TemplateError):
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[_bad_request(exc.violations)]
        )
    if isinstance(exc, AmbiguousKey):
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[_bad_request([(exc.field, str(exc))])]
        )
    if isinstance(exc, LimitExceeded):
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=str(exc),
            details=[_info("LIMIT_EXCEEDED", field=exc.field)],
        )
    if isinstance(exc, RateLimited):
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=str(exc),
            details=[
                _retry_info(exc.retry_after),
                _pack(
                    error_details_pb2.QuotaFailure(
                        violations=[
                            error_details_pb2.QuotaFailure.Violation(
                                subject=f"member:{exc.member}",
                                description=f"at most {exc.per_second:g} requests/s per member (burst {exc.burst})",
                            )
                        ]
                    )
                ),
                _info("RATE_LIMITED", member=exc.member),
            ],
        )
    if isinstance(exc, Overloaded):
        # RESOURCE_EXHAUSTED like the rate limit (the client's ResourceExhausted with `retry_after`), told apart
        # by the ErrorInfo reason; UNAVAILABLE would read as "server not reachable" to our clients.
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=str(exc),
            details=[_retry_info(exc.retry_after), _info("OVERLOADED", limit=str(exc.limit))],
        )
    if isinstance(exc, CallExpired):
        return status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=str(exc), details=[_info("NOT_WORKED_ON")])
    if isinstance(exc, NotOwner):
        return status_pb2.Status(
            code=code_pb2.PERMISSION_DENIED,
            message=f"{exc.field}: {exc}" if exc.field else str(exc),
            details=[_info("NOT_OWNER", field=exc.field)],
        )
    if isinstance(exc, RecordNotFound):
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND,
            message=f"{exc.field}: {exc}" if exc.field else str(exc),
            details=[_info("RECORD_NOT_FOUND", field=exc.field)],
        )
    if isinstance(exc, TemplateNotFound):
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND,
            message=f"{exc.field}: {exc}" if exc.field else str(exc),
            details=[_info("TEMPLATE_NOT_FOUND", field=exc.field)],
        )
    if isinstance(exc, HitNotFound):
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND, message=str(exc), details=[_info("HIT_NOT_FOUND", field=exc.field)]
        )
    if isinstance(exc, HitAlreadyDecided):
        return status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION, message=str(exc), details=[_info("HIT_ALREADY_DECIDED", field=exc.field)]
        )
    if isinstance(exc, RoleDenied):
        return status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=str(exc), details=[_info("ROLE_DENIED")])
    if isinstance(exc, Unauthenticated):
        return status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=str(exc), details=[_info("NO_IDENTITY")])
    if isinstance(exc, UploadAborted):
        return status_pb2.Status(code=code_pb2.ABORTED, message=str(exc), details=[_info("UPLOAD_ABORTED")])
    return None


def error_status(exc: BaseException) -> status_pb2.Status:
    """The status a call failing with `exc` ends with: ours as `to_status` maps them, anything else INTERNAL with
    an incident id (logged with its traceback; the message never carries internals)."""
    status = to_status(exc)
    if status is None:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error, incident %s", incident, exc_info=exc)
        status = status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal error (incident {incident}); nothing was changed by this call",
            details=[_info("INTERNAL", incident=incident)],
        )
    status.message = clip(status.message, MAX_MESSAGE_CHARS)
    return status


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    context.abort_with_status(rpc_status.to_status(error_status(exc)))


# Admits one request of a check stream as a call is admitted (the member's rate limit, a work slot); returns what
# gives the work slot back.
Admit = Callable[[grpc.ServicerContext], Callable[[], None]]


def _as_is(request: Any) -> Any:
    return request


def answer_each(
    wrap: Callable[[Any], Any], refuse: Callable[[bytes], Any]
) -> Callable[[Callable[[Any, Any, grpc.ServicerContext], Any]], Callable[..., Iterator[Any]]]:
    """Turn a servicer method that answers one request into the handler of a stream of such requests (e.g.
    CheckDocumentStream from CheckDocument). Each request is answered in the order sent: `wrap(answer)`, or
    `refuse(status)` with the serialized google.rpc.Status the unary call would have ended with. A refused request
    changes nothing and the stream goes on; the stream itself ends when the client half-closes or goes away.

    The guard (GuardInterceptor) passes every message through its `decode` (undecodable bytes are that request's
    INVALID_ARGUMENT) and `admit` (the per-member rate limit and a work slot, as for a unary call)."""

    def decorate(method: Callable[[Any, Any, grpc.ServicerContext], Any]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(method)
        def stream(
            self: Any,
            requests: Iterator[Any],
            context: grpc.ServicerContext,
            *,
            decode: Callable[[Any], Any] = _as_is,
            admit: Admit | None = None,
        ) -> Iterator[Any]:
            for raw in requests:  # a cancelled stream raises grpc.RpcError here, which ends it
                release = None
                try:
                    if admit is not None:
                        release = admit(context)
                    answer = wrap(method(self, decode(raw), context))
                except Exception as exc:
                    answer = refuse(error_status(exc).SerializeToString())
                finally:
                    if release is not None:
                        release()  # before the answer is sent: a slow reader holds no work slot
                yield answer

        stream.answers_each_request = True  # type: ignore[attr-defined]
        return stream

    return decorate


def _decoder(method: str, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """A request decoder for `method` that raises InvalidRequest (not grpc's INTERNAL) for undecodable bytes."""
    if deserialize is None:
        return lambda raw: raw
    name = method.rsplit("/", 1)[-1]

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # google.protobuf DecodeError, or whatever a custom deserializer raises
            raise InvalidRequest.single("request", f"not a valid {name} request message ({exc})") from None

    return decode


def _nothing() -> None:
    pass


class _EndableRequests:
    """A check stream's requests, which `end` (from another thread: the server is stopping) stops: at once when the
    stream is waiting for its next request (the call is cancelled: nothing is in progress), else after the request
    being worked on has been answered (the stream then ends with OK)."""

    def __init__(self, requests: Iterator[Any], context: grpc.ServicerContext) -> None:
        self._requests = requests
        self._context = context
        self._lock = threading.Lock()
        self._waiting = False
        self._ending = False

    def __iter__(self) -> _EndableRequests:
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._ending:
                raise StopIteration
            self._waiting = True
        try:
            return next(self._requests)
        finally:
            with self._lock:
                self._waiting = False

    def end(self) -> None:
        with self._lock:
            self._ending = True
            if self._waiting:
                self._context.cancel()


def _is_grpc_termination(exc: BaseException) -> bool:
    # abort() raises a plain Exception after setting the status; a cancelled request stream raises RpcError.
    return isinstance(exc, grpc.RpcError) or (type(exc) is Exception and not exc.args)


class GuardInterceptor(grpc.ServerInterceptor):
    """Authentication, role checks, the per-member rate limit and error mapping for every RPC.

    `identify` says where the caller's member and role come from: the client certificate with TLS
    (`idcheck.server.tls.certificate_identity`), request metadata on loopback without TLS (the default).
    `limiter` takes one token per call from the caller's member right after authentication (none: no limit);
    `shedder` then bounds the calls worked on at once (README "Limits and overload"): unary and
    client-streaming calls take a work slot (waiting in its bounded queue, never past their deadline),
    response streams (WatchHits) count against its stream cap instead. A check stream (`answer_each`) counts
    against the check-stream cap, and each of its requests is decoded, rate-limited and given a work slot as a call
    would be. Health and reflection are public and never limited."""

    def __init__(
        self,
        identify: IdentitySource = metadata_identity,
        limiter: RateLimiter | None = None,
        shedder: ConcurrencyLimiter | None = None,
    ) -> None:
        self._identify = identify
        self._limiter = limiter
        self._shedder = shedder

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        identify = self._identify
        limiter = self._limiter
        shedder = self._shedder
        if handler is None or is_public(method):
            return handler
        # Requests are decoded here rather than by grpc, which answers INTERNAL ("Exception deserializing
        # request!") for bytes that are not a valid message (corrupt or truncated wire format, invalid UTF-8 in a
        # string): that is the caller's error, INVALID_ARGUMENT, and decoding is work done under a work slot.
        decode = _decoder(method, handler.request_deserializer)
        handler = handler._replace(request_deserializer=None)

        def admit(context: grpc.ServicerContext) -> Caller:
            caller = authenticate(method, context, identify)
            if limiter is not None:
                limiter.acquire(caller.member)
            return caller

        def guard_unary(behaviour: Callable[..., Any], streaming: bool = False) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    token = set_caller(admit(context))
                except (Unauthenticated, RoleDenied, RateLimited) as exc:
                    _abort(context, exc)
                    return None
                admitted_at = None
                try:
                    if shedder is not None:
                        admitted_at = shedder.enter(context.time_remaining(), context.is_active)
                    request = map(decode, request) if streaming else decode(request)
                    return behaviour(request, context)
                except BaseException as exc:
                    if _is_grpc_termination(exc):
                        raise
                    _abort(context, exc)
                    return None
                finally:
                    if admitted_at is not None:
                        shedder.leave(admitted_at)  # type: ignore[union-attr]
                    reset_caller(token)

            return run

        def guard_stream(
            behaviour: Callable[..., Iterator[Any]], streaming: bool = False
        ) -> Callable[..., Iterator[Any]]:
            # A check stream (`answer_each`) admits, decodes and answers each of its requests on its own.
            each = streaming and getattr(behaviour, "answers_each_request", False)

            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    caller = admit(context)
                    token = set_caller(caller)
                except (Unauthenticated, RoleDenied, RateLimited) as exc:
                    _abort(context, exc)
                    return
                opened = False
                requests = _EndableRequests(request, context) if each else None
                try:
                    if shedder is not None:
                        if requests is not None:
                            shedder.open_check_stream(requests.end)
                        else:
                            shedder.open_stream()
                        opened = True
                    if requests is not None:
                        yield from behaviour(requests, context, decode=decode, admit=admit_each(caller))
                    else:
                        request = map(decode, request) if streaming else decode(request)
                        yield from behaviour(request, context)
                except BaseException as exc:
                    if _is_grpc_termination(exc) or isinstance(exc, GeneratorExit):
                        raise
                    _abort(context, exc)
                finally:
                    if opened and requests is not None:
                        shedder.close_check_stream(requests.end)  # type: ignore[union-attr]
                    elif opened:
                        shedder.close_stream()  # type: ignore[union-attr]
                    reset_caller(token)

            return run

        def admit_each(caller: Caller) -> Admit:
            def admit_one(context: grpc.ServicerContext) -> Callable[[], None]:
                if limiter is not None:
                    limiter.acquire(caller.member)
                if shedder is None:
                    return _nothing
                admitted_at = shedder.enter(context.time_remaining(), context.is_active)
                return functools.partial(shedder.leave, admitted_at)

            return admit_one

        if handler.unary_unary:
            return handler._replace(unary_unary=guard_unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=guard_unary(handler.stream_unary, streaming=True))
        if handler.unary_stream:
            return handler._replace(unary_stream=guard_stream(handler.unary_stream))
        if handler.stream_stream:
            return handler._replace(stream_stream=guard_stream(handler.stream_stream, streaming=True))
        return handler
