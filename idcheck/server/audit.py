"""The AuditLog servicer: lists checked documents, verifies and identifies for operators, and for the members
whose records or templates were matched; streams the hits on a member's records and records hit outcomes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from idcheck.register import Register, hits
from idcheck.register.hits import HitOutcome
from idcheck.server.auth import current_caller
from idcheck.v1 import audit_pb2 as pb
from idcheck.v1 import audit_pb2_grpc


class AuditLogServicer(audit_pb2_grpc.AuditLogServicer):
    """gRPC face of the audit log."""

    def __init__(self, register: Register, *, watch_recheck: float = 1.0) -> None:
        self.register = register
        # A caught-up watch sleeps until the next audit commit; this only bounds how long it goes without looking
        # at whether its stream is still open (a cancelled stream wakes it at once anyway).
        self.watch_recheck = watch_recheck

    def ListAudit(self, request: pb.ListAuditRequest, context: grpc.ServicerContext) -> pb.ListAuditResponse:
        page = self.register.audit_page(
            current_caller(),
            since=request.since,
            until=request.until,
            caller_member=request.caller_member,
            verdicts=list(request.verdicts),
            limit=request.limit,
            page_token=request.page_token,
        )
        response = pb.ListAuditResponse(next_page_token=page.next_page_token)
        for row in page.rows:
            response.entries.add(
                query_id=row.query_id,
                at=row.at,
                caller_member=row.caller_member,
                caller_role=row.caller_role,
                peer=row.peer,
                query_kind=row.query_kind,
                issuing_state=row.issuing_state,
                document_number=row.document_number,
                verdict=row.verdict,
                matched_record_ids=[int(x) for x in row.matched_records.split(",") if x],
                register_sequence=row.register_seq,
                subject_id=row.subject_id,
            )
        return response

    def WatchHits(self, request: pb.WatchHitsRequest, context: grpc.ServicerContext) -> Iterator[pb.HitNotification]:
        caller = current_caller()
        audit = self.register.audit
        context.add_callback(audit.wake_waiters)  # a cancelled stream stops waiting at once
        for hit in hits.follow(
            self.register.store,
            audit,
            caller.member,
            request.cursor,
            stop=lambda: not context.is_active(),
            catch_up_only=request.catch_up_only,
            recheck=self.watch_recheck,
        ):
            row = hit.row
            yield pb.HitNotification(
                cursor=hit.cursor,
                query_id=row.query_id,
                at=row.at,
                caller_member=row.caller_member,
                caller_role=row.caller_role,
                query_kind=row.query_kind,
                issuing_state=row.issuing_state,
                document_number=row.document_number,
                verdict=row.verdict,
                matched_record_ids=[int(x) for x in row.matched_records.split(",") if x],
            )

    def ConfirmHit(self, request: pb.ConfirmHitRequest, context: grpc.ServicerContext) -> pb.ConfirmHitResponse:
        outcome = self.register.confirm_hit(current_caller(), request.query_id, request.outcome, request.note)
        return pb.ConfirmHitResponse(outcome=_outcome(outcome))

    def GetHitOutcome(self, request: pb.GetHitOutcomeRequest, context: grpc.ServicerContext) -> pb.HitOutcome:
        return _outcome(self.register.hit_outcome(current_caller(), request.query_id))


def _outcome(outcome: HitOutcome) -> pb.HitOutcome:
    return pb.HitOutcome(
        query_id=outcome.query_id,
        outcome=outcome.outcome,
        note=outcome.note,
        decided_by=outcome.decided_by,
        decided_at=outcome.decided_at,
        caller_member=outcome.caller_member,
    )
