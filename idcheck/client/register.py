"""`RegisterClient`: the Python client of the document register.

    with RegisterClient("127.0.0.1:50051", member="NZL", role="border") as client:
        answer = client.check(state="UTO", number="L898902C3")
        if answer.verdict == "HIT":
            print(answer.officer_action)

Every call has a deadline (`timeout`, default 10 s; uploads get longer), and failures raise
`idcheck.client.errors.IdcheckError` subclasses carrying the server's field violations.
"""

from __future__ import annotations

import hashlib
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa

from idcheck.client.channel import DEFAULT_TARGET as DEFAULT_TARGET  # re-exported
from idcheck.client.channel import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES  # re-exported
from idcheck.client.channel import ServiceClient
from idcheck.client.errors import DeadlineExceeded, IdcheckError, from_rpc_error, from_status
from idcheck.client.files import (
    REQUIRED_RECORD_COLUMNS,
    FileFormatError,
    column_names,
    ipc_bytes,
    read_arrow_payloads,
    read_records,
)
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc


def _enum_name(enum_type: Any, value: int, prefix: str) -> str:
    try:
        return str(enum_type.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class MatchInfo:
    """A record that matched a check."""

    kind: str  # EXACT, OCR_VARIANT, STATE_MISMATCH, STATE_MISSING, CLASS_MISMATCH
    record_id: int
    issuing_state: str
    document_number: str
    document_class: str
    status: str
    owner_member: str
    event_date: str
    instructions: str
    holder_surname: str
    holder_given_names: str
    holder_birth_date: str


@dataclass(frozen=True)
class CheckAnswer:
    """The answer for one document."""

    verdict: str  # HIT, POSSIBLE_MATCH, CLEAR
    officer_action: str
    matches: tuple[MatchInfo, ...]
    query_id: str
    register_sequence: int
    reference: str = ""
    searched_state: str = ""
    searched_number: str = ""
    mrz_checks: dict[str, bool] = field(default_factory=dict)
    mrz_valid: bool | None = None
    mrz_fields: dict[str, str] = field(default_factory=dict)
    # From an on-site mirror: when it last knew it held every upstream change (RFC 3339); "" from the upstream.
    upstream_contact_time: str = ""

    @classmethod
    def from_proto(cls, r: pb.DocumentResult, sequence: int, upstream_contact_time: str = "") -> CheckAnswer:
        matches = tuple(
            MatchInfo(
                kind=_enum_name(pb.MatchKind, m.kind, "MATCH_KIND_"),
                record_id=m.record_id,
                issuing_state=m.key.issuing_state,
                document_number=m.key.document_number,
                document_class=_enum_name(pb.DocumentClass, m.key.document_class, "DOCUMENT_CLASS_"),
                status=_enum_name(pb.RecordStatus, m.status, "RECORD_STATUS_"),
                owner_member=m.owner_member,
                event_date=m.event_date,
                instructions=m.instructions,
                holder_surname=m.holder.surname,
                holder_given_names=m.holder.given_names,
                holder_birth_date=m.holder.birth_date,
            )
            for m in r.matches
        )
        has_mrz = r.HasField("mrz")
        mrz_fields = {}
        if has_mrz:
            m = r.mrz
            mrz_fields = {
                "format": m.format,
                "document_type": m.document_type,
                "issuing_state": m.issuing_state,
                "document_number": m.document_number,
                "nationality": m.nationality,
                "birth_date": m.birth_date,
                "sex": m.sex,
                "expiry_date": m.expiry_date,
                "surname": m.surname,
                "given_names": m.given_names,
            }
        return cls(
            verdict=_enum_name(pb.Verdict, r.verdict, "VERDICT_"),
            officer_action=r.officer_action,
            matches=matches,
            query_id=r.query_id,
            register_sequence=sequence,
            reference=r.client_reference,
            searched_state=r.searched_key.issuing_state,
            searched_number=r.searched_key.document_number,
            mrz_checks={c.name: c.valid for c in r.mrz.checks} if has_mrz else {},
            mrz_valid=r.mrz.checks_valid if has_mrz else None,
            mrz_fields=mrz_fields,
            upstream_contact_time=upstream_contact_time,
        )


_VERDICT_NAMES = tuple(_enum_name(pb.Verdict, v, "VERDICT_") for v in range(256))


@dataclass(frozen=True)
class ManifestAnswer:
    """The answers to one columnar manifest (CheckManifest), row by row in request order.

    Rows that are a plain CLEAR come as a verdict only; every other row (a match, an MRZ reading, a warning) has
    its full CheckAnswer in `details`. `answer(i)` gives a CheckAnswer for any row.
    """

    verdict_codes: bytes  # one Verdict value per row
    details: dict[int, CheckAnswer]
    query_id_prefix: str
    clear_action: str
    register_sequence: int
    hits: int
    possible_matches: int
    clear: int
    upstream_contact_time: str = ""

    @classmethod
    def from_proto(cls, r: pb.CheckManifestResponse) -> ManifestAnswer:
        seq, contact = r.register_sequence, r.upstream_contact_time
        return cls(
            verdict_codes=r.verdicts,
            details={d.row: CheckAnswer.from_proto(d.result, seq, contact) for d in r.details},
            query_id_prefix=r.query_id_prefix,
            clear_action=r.clear_action,
            register_sequence=seq,
            hits=r.hits,
            possible_matches=r.possible_matches,
            clear=r.clear,
            upstream_contact_time=contact,
        )

    def __len__(self) -> int:
        return len(self.verdict_codes)

    def verdict(self, i: int) -> str:
        """HIT, POSSIBLE_MATCH or CLEAR for row i."""
        return _VERDICT_NAMES[self.verdict_codes[i]]

    def query_id(self, i: int) -> str:
        return f"{self.query_id_prefix}-{i}"

    def answer(
        self, i: int, *, reference: str = "", searched_state: str = "", searched_number: str = ""
    ) -> CheckAnswer:
        """Row i as a CheckAnswer; for a plain CLEAR row the caller supplies what it sent (reference, and the
        canonical state and number if it wants them shown)."""
        detail = self.details.get(i)
        if detail is not None:
            return detail
        return CheckAnswer(
            verdict=self.verdict(i),
            officer_action=self.clear_action,
            matches=(),
            query_id=self.query_id(i),
            register_sequence=self.register_sequence,
            reference=reference,
            searched_state=searched_state,
            searched_number=searched_number,
            upstream_contact_time=self.upstream_contact_time,
        )


def manifest_table(queries: Iterable[QueryInput]) -> pa.Table:
    """Queries (DocumentQuery messages or dicts as `make_query` takes) as a CheckManifest table."""
    columns: dict[str, list[Any]] = {
        "issuing_state": [],
        "document_number": [],
        "document_class": [],
        "birth_date": [],
        "mrz": [],
        "client_reference": [],
    }
    for q in queries:
        m = make_query(q)
        t = m.typed
        columns["issuing_state"].append(t.issuing_state)
        columns["document_number"].append(t.document_number)
        columns["document_class"].append(t.document_class)
        columns["birth_date"].append(t.birth_date)
        columns["mrz"].append(m.mrz)
        columns["client_reference"].append(m.client_reference)
    types = {name: pa.int32() if name == "document_class" else pa.string() for name in columns}
    return pa.table({name: pa.array(values, types[name]) for name, values in columns.items()})


@dataclass(frozen=True)
class Rejected:
    """One rejected row of an upload."""

    row_index: int
    field: str
    reason: str


@dataclass(frozen=True)
class UploadResult:
    """What an upload did."""

    upload_id: str
    received: int
    accepted: int
    rejected: int
    created: int
    updated: int
    unchanged: int
    cancelled: int
    register_sequence: int
    replayed: bool
    rejected_rows: tuple[Rejected, ...]

    @classmethod
    def from_proto(cls, r: pb.UploadRecordsResponse) -> UploadResult:
        return cls(
            upload_id=r.upload_id,
            received=r.received,
            accepted=r.accepted,
            rejected=r.rejected,
            created=r.created,
            updated=r.updated,
            unchanged=r.unchanged,
            cancelled=r.cancelled,
            register_sequence=r.register_sequence,
            replayed=r.replayed,
            rejected_rows=tuple(Rejected(x.row_index, x.field, x.reason) for x in r.rejected_rows),
        )


@dataclass(frozen=True)
class CancelResult:
    cancelled: int
    already_cancelled: int
    register_sequence: int


@dataclass(frozen=True)
class RecordView:
    """A record and its history as returned by `get`."""

    record: pb.Record
    history: tuple[pb.RecordChange, ...]


QueryInput = pb.DocumentQuery | dict[str, Any]
RecordInput = pb.Record | dict[str, Any]


def make_query(q: QueryInput) -> pb.DocumentQuery:
    """A DocumentQuery from a dict with `mrz` or `state`/`number` (plus `document_class`, `birth_date`,
    `reference`)."""
    if isinstance(q, pb.DocumentQuery):
        return q
    ref = str(q.get("reference", ""))
    if q.get("mrz"):
        return pb.DocumentQuery(mrz=str(q["mrz"]), client_reference=ref)
    return pb.DocumentQuery(
        typed=pb.TypedQuery(
            issuing_state=str(q.get("state", q.get("issuing_state", ""))),
            document_number=str(q.get("number", q.get("document_number", ""))),
            document_class=pb.DocumentClass.ValueType(int(q.get("document_class", 0))),
            birth_date=str(q.get("birth_date", "")),
        ),
        client_reference=ref,
    )


def check_request(
    state: str, number: str, document_class: int, birth_date: str, mrz: str, reference: str
) -> pb.CheckDocumentRequest:
    """The CheckDocumentRequest of one document, typed (state, number) or as a whole MRZ."""
    query = make_query(
        {
            "mrz": mrz,
            "state": state,
            "number": number,
            "document_class": document_class,
            "birth_date": birth_date,
            "reference": reference,
        }
    )
    return pb.CheckDocumentRequest(query=query)


def make_record(r: RecordInput) -> pb.Record:
    """A Record from a dict with the record-file column names."""
    if isinstance(r, pb.Record):
        return r
    return pb.Record(
        key=pb.DocumentKey(
            issuing_state=str(r.get("issuing_state", "")),
            document_number=str(r.get("document_number", "")),
            document_class=pb.DocumentClass.ValueType(int(r.get("document_class", 0))),
        ),
        status=pb.RecordStatus.ValueType(int(r.get("status", 0))),
        event_date=str(r.get("event_date", "")),
        holder=pb.HolderData(
            surname=str(r.get("surname", "")),
            given_names=str(r.get("given_names", "")),
            birth_date=str(r.get("birth_date", "")),
            nationality=str(r.get("nationality", "")),
            expiry_date=str(r.get("expiry_date", "")),
        ),
        instructions=str(r.get("instructions", "")),
    )


def file_upload_id(path: Path, mode: str) -> str:
    """A stable upload id for a file: re-sending the same file in the same mode is a no-op."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"file-{mode}-{digest.hexdigest()[:32]}"


class RegisterClient(ServiceClient):
    """Client of the DocumentRegister service."""

    stub_class = register_pb2_grpc.DocumentRegisterStub

    def check(
        self,
        *,
        state: str = "",
        number: str = "",
        document_class: int = 0,
        birth_date: str = "",
        mrz: str = "",
        reference: str = "",
        timeout: float | None = None,
    ) -> CheckAnswer:
        """Check one document, typed (state, number) or as a whole MRZ."""
        request = check_request(state, number, document_class, birth_date, mrz, reference)
        resp = self._call(self._stub.CheckDocument, request, timeout)
        return CheckAnswer.from_proto(resp.result, resp.register_sequence, resp.upstream_contact_time)

    def check_stream(self, *, timeout: float | None = None) -> CheckStream:
        """Open a check stream (CheckDocumentStream): single checks over one long-lived call, for a desk or an
        e-gate that checks travellers one at a time. Each check is answered as `check` answers it, without
        gRPC's fixed cost of a call each time; `timeout` is each check's (default: the client's), the stream itself
        has no deadline.

            with client.check_stream() as stream:
                for mrz in scanner:
                    answer = stream.check(mrz=mrz)
        """
        return CheckStream(self._stub.CheckDocumentStream, self._metadata, timeout or self.timeout)

    def check_many(
        self, queries: Iterable[QueryInput], *, batch_size: int = 1000, timeout: float | None = None
    ) -> Iterator[CheckAnswer]:
        """Check a manifest in calls of `batch_size`; answers come in query order."""
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10,000")
        it = iter(queries)
        while chunk := list(itertools.islice(it, batch_size)):
            req = pb.CheckDocumentsRequest(queries=[make_query(q) for q in chunk])
            resp = self._call(self._stub.CheckDocuments, req, timeout)
            for r in resp.results:
                yield CheckAnswer.from_proto(r, resp.register_sequence, resp.upstream_contact_time)

    def check_manifest(
        self, queries: pa.Table | Iterable[QueryInput], *, timeout: float | None = None
    ) -> ManifestAnswer:
        """Check up to 10,000 documents in one CheckManifest call: an Arrow table in its schema (see
        `idcheck.client.files.manifest_wire_table`, register.proto) or queries as `check_many` takes them. The
        fast path for manifests: answers come as a verdict per row, full results for the rows that need one."""
        table = queries if isinstance(queries, pa.Table) else manifest_table(queries)
        req = pb.CheckManifestRequest(queries_arrow_ipc=ipc_bytes(table))
        return ManifestAnswer.from_proto(self._call(self._stub.CheckManifest, req, timeout))

    def upload(
        self,
        records: Iterable[RecordInput] | Iterable[Sequence[RecordInput]] | str | Path,
        *,
        upload_id: str | None = None,
        mode: str = "incremental",
        description: str = "",
        batch_size: int = 5000,
        on_batch: Callable[[int], None] | None = None,
        timeout: float | None = 3600.0,
        arrow: bool | None = None,
        arrow_rows: int = 50_000,
    ) -> UploadResult:
        """Upload records (an iterable of records, or a CSV/Parquet/Arrow file) all or nothing.

        `mode` is "incremental" or "replace-all". Without `upload_id`, a file gets an id derived from its
        content (re-uploading the same file changes nothing), other inputs a random one. `on_batch` is
        called with the number of rows of each batch sent (for progress bars).

        A file is read in bounded chunks and sent as Arrow IPC batches of about `arrow_rows` rows (the bulk
        path: validated column by column and written in one large transaction by the server); `arrow=False`
        sends it as protobuf records of `batch_size` instead. Records given as an iterable always go as
        protobuf records (small uploads).
        """
        mode_value = {
            "incremental": pb.UPLOAD_MODE_INCREMENTAL,
            "replace-all": pb.UPLOAD_MODE_REPLACE_ALL,
            "replace_all": pb.UPLOAD_MODE_REPLACE_ALL,
        }.get(mode.lower())
        if mode_value is None:
            raise ValueError("mode must be 'incremental' or 'replace-all'")
        if isinstance(records, str | Path):
            path = Path(records)
            missing = [c for c in REQUIRED_RECORD_COLUMNS if c not in column_names(path)]
            if missing:
                raise FileFormatError(f"{path}: missing column(s) {', '.join(missing)}")
            upload_id = upload_id or file_upload_id(path, mode)
            description = description or path.name
            if arrow is not False:
                arrow_batches = (
                    (rows, pb.RecordBatch(arrow_ipc=payload))
                    for rows, payload in read_arrow_payloads(path, chunk_rows=arrow_rows)
                )
                return self._send_upload(upload_id, mode_value, description, arrow_batches, on_batch, timeout)
            batches: Iterable[Sequence[RecordInput]] = read_records(path, chunk_rows=batch_size)
        else:
            upload_id = upload_id or f"upload-{uuid.uuid4().hex}"
            batches = _batched(records, batch_size)
        record_batches = ((len(b), pb.RecordBatch(records=[make_record(r) for r in b])) for b in batches)
        return self._send_upload(upload_id, mode_value, description, record_batches, on_batch, timeout)

    def _send_upload(
        self,
        upload_id: str,
        mode_value: int,
        description: str,
        batches: Iterable[tuple[int, pb.RecordBatch]],
        on_batch: Callable[[int], None] | None,
        timeout: float | None,
    ) -> UploadResult:
        """Stream header, `(rows, batch)` pairs (read lazily) and the end message; one upload, all or nothing."""
        reader_errors: list[BaseException] = []

        def stream() -> Iterator[pb.UploadRecordsRequest]:
            yield pb.UploadRecordsRequest(
                header=pb.UploadHeader(
                    upload_id=upload_id, mode=pb.UploadMode.ValueType(mode_value), description=description
                )
            )
            sent = 0
            try:
                for rows, batch in batches:
                    yield pb.UploadRecordsRequest(batch=batch)
                    sent += rows
                    if on_batch:
                        on_batch(rows)
            except Exception as exc:  # kept to re-raise: gRPC only reports "Exception iterating requests"
                reader_errors.append(exc)
                raise
            yield pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=sent))

        try:
            resp = self._call(self._stub.UploadRecords, stream(), timeout)
        except IdcheckError:
            if reader_errors:  # the stream never sent its end message: nothing was applied
                raise reader_errors[0] from None
            raise
        return UploadResult.from_proto(resp)

    def cancel(
        self,
        keys: Iterable[tuple[str, str] | tuple[str, str, int]],
        reason: str = "",
        *,
        timeout: float | None = None,
    ) -> CancelResult:
        """Cancel records the caller owns: keys are (state, number) or (state, number, document_class)."""
        req = pb.CancelRecordsRequest(
            keys=[
                pb.DocumentKey(
                    issuing_state=k[0],
                    document_number=k[1],
                    document_class=pb.DocumentClass.ValueType(k[2] if len(k) > 2 else 0),
                )
                for k in keys
            ],
            reason=reason,
        )
        resp = self._call(self._stub.CancelRecords, req, timeout)
        return CancelResult(resp.cancelled, resp.already_cancelled, resp.register_sequence)

    def get(self, state: str, number: str, document_class: int = 0, *, timeout: float | None = None) -> RecordView:
        """One record the caller owns, with its history."""
        req = pb.GetRecordRequest(
            key=pb.DocumentKey(
                issuing_state=state, document_number=number, document_class=pb.DocumentClass.ValueType(document_class)
            )
        )
        resp = self._call(self._stub.GetRecord, req, timeout)
        return RecordView(resp.record, tuple(resp.history))


_END = object()  # ends a check stream's requests


class CheckStream:
    """An open check stream (`RegisterClient.check_stream`). `check` sends one document and returns its answer, or
    raises the IdcheckError the server gave for that document (InvalidArgument for a wrong MRZ, ResourceExhausted
    beyond the rate limit...), after which the stream goes on. A check not answered within its timeout cancels the
    stream (DeadlineExceeded); so does anything that breaks the stream itself, and later checks then raise too.
    One check at a time: threads sharing a stream take turns. `close` (or leaving the `with` block) ends it."""

    def __init__(self, method: Callable[..., Any], metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self.timeout = timeout
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # one check (or the close) at a time
        self._closed = False
        self._broken = False
        # The watchdog cancels the call when the check (or the close) in progress passes its deadline: one thread
        # for the stream's life rather than a timer started for every check.
        self._watch = threading.Condition()
        self._deadline: float | None = None
        self._timed_out = False
        self._call = method(iter(self._requests.get, _END), metadata=metadata)
        threading.Thread(target=self._watchdog, name="idcheck-check-stream", daemon=True).start()

    def check(
        self,
        *,
        state: str = "",
        number: str = "",
        document_class: int = 0,
        birth_date: str = "",
        mrz: str = "",
        reference: str = "",
    ) -> CheckAnswer:
        """Check one document, typed (state, number) or as a whole MRZ, as `RegisterClient.check` does."""
        request = check_request(state, number, document_class, birth_date, mrz, reference)
        with self._lock:
            if self._closed:
                raise ValueError("the check stream is closed")
            self._requests.put(request)
            self._arm()
            try:
                answer = next(self._call)
            except grpc.RpcError as err:
                self._broken = True
                self._requests.put(_END)  # the call is over: let grpc's thread that sends requests end
                if self._timed_out:
                    raise DeadlineExceeded(
                        f"no answer within {self.timeout:g}s: the check stream was cancelled",
                        code=grpc.StatusCode.DEADLINE_EXCEEDED,
                    ) from None
                raise from_rpc_error(err) from None
            except StopIteration:
                self._broken = True
                raise IdcheckError("the server ended the check stream", code=grpc.StatusCode.UNAVAILABLE) from None
            finally:
                self._disarm()
        if answer.WhichOneof("outcome") == "error":
            raise from_status(answer.error)
        r = answer.response
        return CheckAnswer.from_proto(r.result, r.register_sequence, r.upstream_contact_time)

    @property
    def broken(self) -> bool:
        """The stream itself failed (cancelled, refused, timed out, cut, ended by the server): no later check will be
        answered on it. A check refused on its own (a wrong MRZ) leaves it whole."""
        return self._broken

    def _arm(self) -> None:
        with self._watch:
            self._deadline = time.monotonic() + self.timeout
            self._watch.notify()

    def _disarm(self) -> None:
        with self._watch:
            self._deadline = None

    def _watchdog(self) -> None:
        with self._watch:
            while not self._closed:
                if self._deadline is None:
                    self._watch.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._watch.wait(left)
                    continue
                self._timed_out = True
                self._deadline = None
                self._call.cancel()

    def close(self) -> None:
        """End the stream: half-close it and wait (at most the timeout) until the server has ended it too."""
        with self._lock:
            if self._closed:
                return
            self._requests.put(_END)
            self._arm()
            try:
                for _ in self._call:
                    pass
            except grpc.RpcError:
                pass  # already broken, cancelled, or no end within the timeout: nothing more to end
            finally:
                with self._watch:
                    self._closed = True
                    self._deadline = None
                    self._watch.notify()

    def __enter__(self) -> CheckStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _batched(records: Iterable[Any], size: int) -> Iterator[Sequence[Any]]:
    """Accept a flat iterable of records or an iterable of batches."""
    it = iter(records)
    first = next(it, None)
    if first is None:
        return
    if isinstance(first, list | tuple):
        yield first
        yield from it
        return
    it = itertools.chain([first], it)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


__all__ = [
    "CancelResult",
    "CheckAnswer",
    "IdcheckError",
    "MatchInfo",
    "RecordView",
    "RegisterClient",
    "Rejected",
    "UploadResult",
]
