"""The AuditLog servicer: lists checked documents, verifies and identifies for operators, and for the members
whose records or templates were matched."""

from __future__ import annotations

import grpc

from idcheck.register import Register
from idcheck.server.auth import current_caller
from idcheck.v1 import audit_pb2 as pb
from idcheck.v1 import audit_pb2_grpc


class AuditLogServicer(audit_pb2_grpc.AuditLogServicer):
    """gRPC face of the audit log."""

    def __init__(self, register: Register) -> None:
        self.register = register

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
