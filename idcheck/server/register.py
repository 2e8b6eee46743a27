"""The DocumentRegister servicer: translates requests into register calls and results into responses.

No business rules here: validation, matching, ownership and atomicity live in idcheck.register and
idcheck.store; errors are mapped to status codes by idcheck.server.errors.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from idcheck.cpus import every_cpu
from idcheck.records import Holder, RecordChange, StoredRecord
from idcheck.register import CheckResult, InvalidRequest, Query, RawRecord, Register, UploadAborted, Verdict
from idcheck.register.checks import CLEAR_ACTION
from idcheck.server.auth import current_caller
from idcheck.server.errors import answer_each
from idcheck.uploads import UploadOutcome
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc


def query_from_proto(q: pb.DocumentQuery) -> Query:
    which = q.WhichOneof("query")
    if which == "mrz":
        return Query(mrz=q.mrz, client_reference=q.client_reference)
    t = q.typed
    return Query(
        issuing_state=t.issuing_state,
        document_number=t.document_number,
        document_class=t.document_class,
        birth_date=t.birth_date,
        client_reference=q.client_reference,
    )


def holder_to_proto(h: Holder) -> pb.HolderData:
    return pb.HolderData(
        surname=h.surname,
        given_names=h.given_names,
        birth_date=h.birth_date,
        nationality=h.nationality,
        expiry_date=h.expiry_date,
    )


def record_to_proto(r: StoredRecord) -> pb.Record:
    d = r.data
    return pb.Record(
        key=pb.DocumentKey(
            issuing_state=d.key.issuing_state,
            document_number=d.number_printed,
            document_class=pb.DocumentClass.ValueType(d.key.document_class),
        ),
        status=pb.RecordStatus.ValueType(d.status),
        event_date=d.event_date,
        holder=holder_to_proto(d.holder),
        instructions=d.instructions,
        owner_member=r.owner,
        record_id=r.record_id,
        recorded_at=r.recorded_at,
        sequence=r.sequence,
    )


def result_to_proto(r: CheckResult, out: pb.DocumentResult | None = None) -> pb.DocumentResult:
    """Fill `out` (e.g. a new element of a repeated field, avoiding a copy) or a new DocumentResult."""
    if out is None:
        out = pb.DocumentResult()
    query = r.query
    lookup = query.lookup
    out.verdict = pb.Verdict.ValueType(r.verdict)
    out.query_id = r.query_id
    out.officer_action = r.officer_action
    if query.client_reference:
        out.client_reference = query.client_reference
    key = out.searched_key
    key.issuing_state = lookup.issuing_state
    key.document_number = lookup.number
    key.document_class = pb.DocumentClass.ValueType(lookup.document_class)
    if not r.matches and query.mrz is None:
        return out
    add_match = out.matches.add
    for m in r.matches:  # filled in place: building sub-messages and appending them copies each one
        rec, d = m.record, m.record.data
        match = add_match()
        match.kind = pb.MatchKind.ValueType(m.kind)
        match.record_id = rec.record_id
        key = match.key
        key.issuing_state = d.key.issuing_state
        key.document_number = d.number_printed
        key.document_class = pb.DocumentClass.ValueType(d.key.document_class)
        match.status = pb.RecordStatus.ValueType(d.status)
        match.owner_member = rec.owner
        match.event_date = d.event_date
        match.instructions = d.instructions
        h = d.holder
        if any(h):  # no holder data recorded: no holder message (each field would be its default '')
            holder = match.holder
            holder.surname = h.surname
            holder.given_names = h.given_names
            holder.birth_date = h.birth_date
            holder.nationality = h.nationality
            holder.expiry_date = h.expiry_date
    mrz = query.mrz
    if mrz is not None:
        out.mrz.CopyFrom(
            pb.MrzReading(
                format=str(mrz.format),
                document_type=mrz.document_type,
                issuing_state=mrz.issuing_state,
                document_number=mrz.document_number,
                nationality=mrz.nationality,
                birth_date=mrz.birth_date,
                sex=mrz.sex,
                expiry_date=mrz.expiry_date,
                surname=mrz.surname,
                given_names=mrz.given_names,
                checks=[pb.CheckDigitResult(name=n, valid=ok) for n, ok in mrz.checks.items()],
                checks_valid=mrz.valid,
            )
        )
    return out


def outcome_to_proto(o: UploadOutcome) -> pb.UploadRecordsResponse:
    return pb.UploadRecordsResponse(
        upload_id=o.upload_id,
        received=o.received,
        accepted=o.accepted,
        rejected=o.rejected,
        created=o.created,
        updated=o.updated,
        unchanged=o.unchanged,
        cancelled=o.cancelled,
        rejected_rows=[pb.RejectedRow(row_index=r.row_index, field=r.field, reason=r.reason) for r in o.rejections],
        register_sequence=o.register_sequence,
        replayed=o.replayed,
    )


def change_to_proto(c: RecordChange) -> pb.RecordChange:
    return pb.RecordChange(
        sequence=c.sequence,
        operation=c.operation,
        status=pb.RecordStatus.ValueType(c.status),
        actor_member=c.actor,
        changed_at=c.changed_at,
        upload_id=c.upload_id,
        reason=c.reason,
    )


def raw_record(r: pb.Record) -> RawRecord:
    k, h = r.key, r.holder
    return RawRecord(
        issuing_state=k.issuing_state,
        document_number=k.document_number,
        document_class=k.document_class,
        status=r.status,
        event_date=r.event_date,
        surname=h.surname,
        given_names=h.given_names,
        birth_date=h.birth_date,
        nationality=h.nationality,
        expiry_date=h.expiry_date,
        instructions=r.instructions,
    )


class DocumentRegisterServicer(register_pb2_grpc.DocumentRegisterServicer):
    """gRPC face of the register."""

    def __init__(self, register: Register, *, upstream_contact: Callable[[], str] | None = None) -> None:
        """`upstream_contact` (mirrors only): when the mirror last knew it held every upstream change, RFC 3339,
        told with every check answer (see CheckDocumentResponse.upstream_contact_time)."""
        self.register = register
        self.upstream_contact = upstream_contact

    def CheckDocument(
        self, request: pb.CheckDocumentRequest, context: grpc.ServicerContext
    ) -> pb.CheckDocumentResponse:
        if not request.HasField("query"):
            raise InvalidRequest.single("query", "a query (typed or mrz) is required")
        contact = self.upstream_contact() if self.upstream_contact is not None else ""  # read before the check
        results, seq = self.register.check(current_caller(), [query_from_proto(request.query)], field="query")
        return pb.CheckDocumentResponse(
            result=result_to_proto(results[0]), register_sequence=seq, upstream_contact_time=contact
        )

    @answer_each(
        lambda answer: pb.CheckStreamResponse(response=answer), lambda status: pb.CheckStreamResponse(error=status)
    )
    def CheckDocumentStream(
        self, request: pb.CheckDocumentRequest, context: grpc.ServicerContext
    ) -> pb.CheckDocumentResponse:
        """One request of a check stream: answered as CheckDocument answers it (errors.answer_each does the rest)."""
        return self.CheckDocument(request, context)

    def CheckDocuments(
        self, request: pb.CheckDocumentsRequest, context: grpc.ServicerContext
    ) -> pb.CheckDocumentsResponse:
        queries = [
            Query(t.issuing_state, t.document_number, t.document_class, t.birth_date, q.mrz, q.client_reference)
            for q in request.queries
            for t in (q.typed,)
        ]
        contact = self.upstream_contact() if self.upstream_contact is not None else ""  # read before the check
        batch = self.register.check_batch(current_caller(), queries)
        response = pb.CheckDocumentsResponse(register_sequence=batch.sequence, upstream_contact_time=contact)
        add = response.results.add
        details, references, uid = batch.details, batch.references, batch.call_uid
        for i, lookup in enumerate(batch.lookups):
            detail = details.get(i)
            if detail is not None:
                result_to_proto(detail, add())
                continue
            out = add()  # a plain CLEAR, filled field by field: most of a manifest
            out.verdict = pb.Verdict.ValueType(Verdict.CLEAR)
            out.query_id = f"{uid}-{i}"
            out.officer_action = CLEAR_ACTION
            if references[i]:
                out.client_reference = references[i]
            key = out.searched_key
            key.issuing_state = lookup.issuing_state
            key.document_number = lookup.number
            key.document_class = pb.DocumentClass.ValueType(lookup.document_class)
        counts = collections.Counter(batch.verdicts)
        response.hits = counts[Verdict.HIT]
        response.possible_matches = counts[Verdict.POSSIBLE_MATCH]
        response.clear = counts[Verdict.CLEAR]
        return response

    def CheckManifest(
        self, request: pb.CheckManifestRequest, context: grpc.ServicerContext
    ) -> pb.CheckManifestResponse:
        contact = self.upstream_contact() if self.upstream_contact is not None else ""  # read before the check
        batch = self.register.check_manifest(current_caller(), request.queries_arrow_ipc)
        verdicts = batch.verdicts
        counts = np.bincount(verdicts, minlength=len(Verdict))
        response = pb.CheckManifestResponse(
            verdicts=verdicts.tobytes(),
            query_id_prefix=batch.call_uid,
            clear_action=CLEAR_ACTION,
            register_sequence=batch.sequence,
            hits=int(counts[Verdict.HIT]),
            possible_matches=int(counts[Verdict.POSSIBLE_MATCH]),
            clear=int(counts[Verdict.CLEAR]),
            upstream_contact_time=contact,
        )
        add = response.details.add
        for i in sorted(batch.details):
            out = add()
            out.row = i
            result_to_proto(batch.details[i], out.result)
        return response

    def UploadRecords(
        self, request_iterator: Iterator[pb.UploadRecordsRequest], context: grpc.ServicerContext
    ) -> pb.UploadRecordsResponse:
        # An upload decodes and validates its batches as they arrive, then sorts and writes them: seconds of work that
        # mostly releases the interpreter lock, so it runs on every CPU, not only the one calls are answered on.
        with every_cpu():
            return self._upload(request_iterator, context)

    def _upload(
        self, request_iterator: Iterator[pb.UploadRecordsRequest], context: grpc.ServicerContext
    ) -> pb.UploadRecordsResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidRequest.single("header", "the first message of an upload must be its header")
        h = first.header
        session = self.register.begin_upload(current_caller(), h.upload_id, h.mode, h.description)
        previous = session.previous_outcome()
        if previous is not None:
            return outcome_to_proto(previous)
        end: pb.UploadEnd | None = None
        for n, message in enumerate(request_iterator, start=1):
            item = message.WhichOneof("item")
            if end is not None:
                raise InvalidRequest.single(f"messages[{n}]", "nothing may follow the end message")
            if item == "batch":
                batch = message.batch
                if batch.arrow_ipc:
                    if batch.records:
                        raise InvalidRequest.single(
                            f"messages[{n}].batch", "a batch carries either records or arrow_ipc, not both"
                        )
                    session.add_arrow(batch.arrow_ipc)
                else:
                    session.add([raw_record(r) for r in batch.records])
            elif item == "end":
                end = message.end
            else:
                raise InvalidRequest.single(f"messages[{n}]", "only the first message may be a header")
        # The request iterator also ends when the call was cancelled or timed out, exactly as on a clean
        # half-close: only the end message proves the client sent everything.
        if end is None or not context.is_active():
            raise UploadAborted("the upload stream ended without its end message; nothing was applied")
        if end.total_rows != session.received:
            raise InvalidRequest.single(
                "end.total_rows", f"end message counts {end.total_rows} rows but {session.received} arrived"
            )
        return outcome_to_proto(session.commit())

    def CancelRecords(
        self, request: pb.CancelRecordsRequest, context: grpc.ServicerContext
    ) -> pb.CancelRecordsResponse:
        keys = [(k.issuing_state, k.document_number, k.document_class) for k in request.keys]
        outcome = self.register.cancel(current_caller(), keys, request.reason)
        return pb.CancelRecordsResponse(
            cancelled=outcome.cancelled,
            already_cancelled=outcome.already_cancelled,
            register_sequence=outcome.register_sequence,
        )

    def GetRecord(self, request: pb.GetRecordRequest, context: grpc.ServicerContext) -> pb.GetRecordResponse:
        k = request.key
        record, history = self.register.get(current_caller(), k.issuing_state, k.document_number, k.document_class)
        return pb.GetRecordResponse(record=record_to_proto(record), history=[change_to_proto(c) for c in history])
