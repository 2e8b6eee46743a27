"""Who is calling, and what each role may do.

With TLS (the only way to listen beyond loopback) the member code and role come from the client
certificate (`idcheck.server.tls.certificate_identity`) and request metadata is ignored. Without TLS, for
development and tests, a caller states its member code and role in request metadata (`x-idcheck-member`,
`x-idcheck-role`, `metadata_identity`); that is only acceptable because the server then refuses to listen
anywhere but loopback: only processes on this machine can reach it.
"""

from __future__ import annotations

import contextvars
import enum
import ipaddress
from collections.abc import Callable, Mapping

import grpc

from idcheck.icao import canonical_state, is_known_state
from idcheck.register import Caller

MEMBER_HEADER = "x-idcheck-member"
ROLE_HEADER = "x-idcheck-role"


class Role(enum.StrEnum):
    """Roles of design.md: border (checks), member (own records plus border rights), operator (no records), and
    mirror (an on-site mirror or read replica: follows the change feed, nothing else)."""

    BORDER = "border"
    MEMBER = "member"
    OPERATOR = "operator"
    MIRROR = "mirror"


class Unauthenticated(Exception):
    """No usable identity on the call."""


class RoleDenied(Exception):
    """The caller's role may not use this RPC."""


_CHECKERS = frozenset({Role.BORDER, Role.MEMBER})
_OWNERS = frozenset({Role.MEMBER})
_AUDITORS = frozenset({Role.OPERATOR, Role.MEMBER})  # a member sees only the checks that hit its records
_REPLICATORS = frozenset({Role.MIRROR, Role.OPERATOR})  # the whole register, as it changes

# Every RPC of our services with the roles allowed to call it. An RPC missing here is refused.
RPC_ROLES: Mapping[str, frozenset[Role]] = {
    "/idcheck.v1.DocumentRegister/CheckDocument": _CHECKERS,
    "/idcheck.v1.DocumentRegister/CheckDocumentStream": _CHECKERS,
    "/idcheck.v1.DocumentRegister/CheckDocuments": _CHECKERS,
    "/idcheck.v1.DocumentRegister/CheckManifest": _CHECKERS,
    "/idcheck.v1.DocumentRegister/UploadRecords": _OWNERS,
    "/idcheck.v1.DocumentRegister/CancelRecords": _OWNERS,
    "/idcheck.v1.DocumentRegister/GetRecord": _OWNERS,
    "/idcheck.v1.Biometrics/EnrolTemplates": _OWNERS,
    "/idcheck.v1.Biometrics/Verify": _CHECKERS,
    "/idcheck.v1.Biometrics/Identify": _CHECKERS,
    "/idcheck.v1.Biometrics/RemoveTemplates": _OWNERS,
    "/idcheck.v1.AuditLog/ListAudit": _AUDITORS,
    "/idcheck.v1.AuditLog/WatchHits": _OWNERS,  # hits on the caller's own records
    "/idcheck.v1.AuditLog/ConfirmHit": _OWNERS,
    "/idcheck.v1.AuditLog/GetHitOutcome": _CHECKERS,  # the querying member, or the owner
    "/idcheck.v1.Replication/WatchChanges": _REPLICATORS,
    # Totals over every member's records and traffic: a member could subtract its own and learn the others'.
    "/idcheck.v1.Operations/GetStatistics": frozenset({Role.OPERATOR}),
}

# Standard services anyone on the (loopback) network may use without identity.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("idcheck_caller")


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


# Where a call's claimed (member, role) comes from: request metadata (development) or the client certificate.
IdentitySource = Callable[[grpc.ServicerContext], tuple[str, str]]


def metadata_identity(context: grpc.ServicerContext) -> tuple[str, str]:
    """(member, role) as stated in request metadata: development mode on loopback without TLS only."""
    metadata = dict(context.invocation_metadata() or ())
    member_raw = str(metadata.get(MEMBER_HEADER, "")).strip()
    role_raw = str(metadata.get(ROLE_HEADER, "")).strip().lower()
    if not member_raw or not role_raw:
        raise Unauthenticated(f"no caller identity: send {MEMBER_HEADER} and {ROLE_HEADER} metadata (development mode)")
    return member_raw, role_raw


def authenticate(method: str, context: grpc.ServicerContext, identify: IdentitySource = metadata_identity) -> Caller:
    """The caller of this RPC, identified by `identify` and checked against the RPC's roles."""
    member_raw, role_raw = identify(context)
    if not is_known_state(member_raw):
        raise Unauthenticated("the caller's member is not a known ICAO state code")
    try:
        role = Role(role_raw)
    except ValueError:
        raise Unauthenticated(f"the caller's role must be one of: {', '.join(r.value for r in Role)}") from None
    allowed = RPC_ROLES.get(method)
    if allowed is None or role not in allowed:
        raise RoleDenied(f"role {role.value} may not call {method.rsplit('/', 1)[-1]}")
    return Caller(canonical_state(member_raw), role.value, context.peer() or "")


def set_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _current.set(caller)


def reset_caller(token: contextvars.Token[Caller]) -> None:
    _current.reset(token)


def current_caller() -> Caller:
    """The authenticated caller of the RPC running in this thread (set by the interceptor)."""
    return _current.get()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
