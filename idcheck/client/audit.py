"""`AuditClient`: reading the audit log (operators: every check; members: the checks that hit their records)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc

from idcheck.client.channel import ServiceClient, TlsLike
from idcheck.client.register import DEFAULT_TARGET
from idcheck.v1 import audit_pb2 as pb
from idcheck.v1 import audit_pb2_grpc


class AuditClient(ServiceClient):
    """Client of the AuditLog service."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        member: str | None = None,
        role: str | None = None,
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        tls: TlsLike = None,
    ) -> None:
        super().__init__(target, member=member, role=role, timeout=timeout, channel=channel, tls=tls)
        self._stub = audit_pb2_grpc.AuditLogStub(self._channel)

    def entries(
        self,
        since: str,
        *,
        until: str = "",
        caller_member: str = "",
        verdicts: Sequence[str] = (),
        page_size: int = 1000,
        timeout: float | None = None,
    ) -> Iterator[pb.AuditEntry]:
        """Every audit entry in the range, oldest first, fetched page by page."""
        token = ""
        while True:
            request = pb.ListAuditRequest(
                since=since,
                until=until,
                caller_member=caller_member,
                verdicts=list(verdicts),
                limit=page_size,
                page_token=token,
            )
            response = self._call(self._stub.ListAudit, request, timeout)
            yield from response.entries
            token = response.next_page_token
            if not token:
                return
