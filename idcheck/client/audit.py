"""`AuditClient`: reading the audit log (operators: every check; members: the checks that hit their records)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from idcheck.client.channel import ServiceClient, StreamWatch
from idcheck.v1 import audit_pb2 as pb
from idcheck.v1 import audit_pb2_grpc


class AuditClient(ServiceClient):
    """Client of the AuditLog service."""

    stub_class = audit_pb2_grpc.AuditLogStub
    default_timeout = 30.0

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

    def watch_hits(self, cursor: str = "", *, follow: bool = True, timeout: float | None = None) -> HitWatch:
        """HITs and POSSIBLE_MATCHes on the caller's records after `cursor`, then (`follow`) live ones as they
        come, until `timeout` seconds pass (None: the client's timeout; 0: no deadline) or `cancel()` is called
        (from any thread). Keep the cursor of the last notification processed to resume without gap or
        duplicate."""
        deadline = self.timeout if timeout is None else timeout
        request = pb.WatchHitsRequest(cursor=cursor, catch_up_only=not follow)
        return HitWatch(self._stub.WatchHits(request, timeout=deadline or None, metadata=self._metadata))

    def confirm_hit(
        self, query_id: str, outcome: str, note: str = "", *, timeout: float | None = None
    ) -> pb.HitOutcome:
        """Confirm or reject (outcome CONFIRMED or REJECTED) a hit on one of the caller's records."""
        request = pb.ConfirmHitRequest(query_id=query_id, outcome=outcome, note=note)
        return self._call(self._stub.ConfirmHit, request, timeout).outcome

    def hit_outcome(self, query_id: str, *, timeout: float | None = None) -> pb.HitOutcome:
        """The outcome of a hit (PENDING until its owner decides)."""
        return self._call(self._stub.GetHitOutcome, pb.GetHitOutcomeRequest(query_id=query_id), timeout)


class HitWatch(StreamWatch[pb.HitNotification]):
    """An open WatchHits stream: iterate it for notifications; `cancel()` ends it (the iteration then stops)."""
