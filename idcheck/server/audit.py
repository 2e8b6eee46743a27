"""The AuditLog servicer: lists checked documents, verifies and identifies for operators, and for the members
whose records or templates were matched; streams the hits on a member's records and records hit outcomes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from idcheck.register import Register
from idcheck.register.hits import HitOutcome
from idcheck.server.auth import current_caller
from idcheck.v1 import audit_pb2 as pb
from idcheck.v1 import audit_pb2_grpc


class AuditLogServicer(audit_pb2_grpc.AuditLogServicer):
    """gRPC face of the audit log."""

    def __init__(self, register: Register, *, poll_interval: float = 0.2) -> None:
        self.register = register
        # How often a watch looks for new hits once it has caught up (the audit writer commits in batches).
        self.poll_interval = poll_interval

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
        cursor = request.cursor
        first = True
        while context.is_active():
            found = self.register.hits_after(caller, cursor, flush=first)
            first = False
            for hit in found:
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
                cursor = hit.cursor
            if not found:
                if request.catch_up_only:
                    return
                time.sleep(self.poll_interval)

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
