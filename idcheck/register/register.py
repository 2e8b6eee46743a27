"""The register: the durable store and the in-memory index kept in step, behind the operations callers use.

Writes go to the store first (durable when it returns) and are then applied to the index, both under one
lock so the index follows the change log in order. Checks read only the index and queue audit rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from idcheck.cpus import every_cpu
from idcheck.icao import DocumentClass
from idcheck.index import (
    Candidate,
    DocumentIndex,
    DocumentIndexSettings,
    Lookup,
    Match,
    PreparedChanges,
    classify,
)
from idcheck.records import (
    HITTING,
    DocumentKey,
    KeyColumns,
    RecordChange,
    RecordData,
    RecordError,
    StoredRecord,
    parse_key,
    validate_record,
)
from idcheck.register import columns, hits, manifest
from idcheck.register.audit import AuditPage, list_audit
from idcheck.register.checks import (
    CLEAR_ACTION,
    CheckResult,
    PreparedQuery,
    Query,
    Verdict,
    officer_action,
    prepare_columns,
    verdict_of,
)
from idcheck.register.errors import InvalidRequest, LimitExceeded
from idcheck.register.peers import PeerFollower, SequenceChannel
from idcheck.register.queryids import new_query_id
from idcheck.store import (
    AUDIT_INTERVAL,
    AuditCall,
    AuditClear,
    AuditDocument,
    AuditWriter,
    CancelOutcome,
    RegisterStore,
    utc_now,
)
from idcheck.uploads import Rejection, UploadColumns, UploadMode, UploadOutcome

log = logging.getLogger(__name__)

MAX_UPLOAD_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: member code, role and network peer (for the audit log)."""

    member: str
    role: str
    peer: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of requests (defaults documented in README)."""

    max_queries_per_call: int = 10_000
    max_records_per_batch: int = 10_000
    max_rows_per_arrow_batch: int = 100_000  # rows in one `RecordBatch.arrow_ipc` payload
    max_rows_per_upload: int = 5_000_000
    max_keys_per_cancel: int = 10_000


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One uploaded row before validation (strings and enum numbers as they came)."""

    issuing_state: str
    document_number: str
    document_class: int
    status: int
    event_date: str
    surname: str = ""
    given_names: str = ""
    birth_date: str = ""
    nationality: str = ""
    expiry_date: str = ""
    instructions: str = ""


class Register:
    """The shared register of one node."""

    def __init__(
        self,
        store: RegisterStore,
        *,
        limits: Limits | None = None,
        audit_interval: float = AUDIT_INTERVAL,
        audit_write: bool = True,
        index_settings: DocumentIndexSettings | None = None,
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.index = DocumentIndex(index_settings)
        self._write_lock = threading.Lock()
        self._peers: SequenceChannel | None = None  # other worker processes sharing the store, if any
        self._follower: PeerFollower | None = None  # catches up with them in the background
        self._changed = threading.Condition()  # notified after each commit (the change feed waits on it)
        started = time.perf_counter()
        # A snapshot of the index (if a valid one exists) plus the records changed after it; else every
        # active record, read from the store in columns.
        self.loaded_from_snapshot = self.index.load_snapshot(max_sequence=store.last_sequence)
        columns, last_sequence = store.key_columns(since=self.loaded_from_snapshot)
        self.index.apply_columns(columns, last_sequence)
        self.load_seconds = time.perf_counter() - started
        self.audit = AuditWriter(store, interval=audit_interval, write=audit_write)  # write=False: benchmarks only

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        limits: Limits | None = None,
        audit_interval: float = AUDIT_INTERVAL,
        audit_write: bool = True,
        index_settings: DocumentIndexSettings | None = None,
    ) -> Register:
        """Open (or create) the register in a data directory (index snapshots in its `snapshots/`)."""
        store = RegisterStore(Path(data_dir) / "register.db")
        if index_settings is None:
            index_settings = DocumentIndexSettings(snapshot_dir=Path(data_dir) / "snapshots")
        return cls(
            store, limits=limits, audit_interval=audit_interval, audit_write=audit_write, index_settings=index_settings
        )

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        self.index.wait_idle()
        self.audit.close()
        self.store.close()

    @property
    def sequence(self) -> int:
        return self.index.sequence

    def background_tasks(self) -> int:
        """Background work running now: the index's merge and snapshot, the store's WAL checkpoint."""
        return self.index.background_tasks() + self.store.background_tasks()

    # -- checks -------------------------------------------------------------------------------------

    def check(
        self, caller: Caller, queries: Sequence[Query], *, field: str = "queries"
    ) -> tuple[list[CheckResult], int]:
        """Check documents; every query is validated before any is answered. Returns results and sequence."""
        batch = self.check_batch(caller, queries, field=field)
        return batch.results(), batch.sequence

    def check_batch(self, caller: Caller, queries: Sequence[Query], *, field: str = "queries") -> CheckBatch:
        """Check documents, answering in columns: plain CLEAR answers are not materialised as objects.

        Every query is validated before any is answered (InvalidRequest lists every bad one). One audit row
        per document is queued for the audit writer; a manifest's plain CLEARs go packed in one AuditClear.
        """
        if not queries:
            raise InvalidRequest.single(field, "at least one query is required")
        if len(queries) > self.limits.max_queries_per_call:
            raise InvalidRequest.single(
                field, f"{len(queries)} queries; at most {self.limits.max_queries_per_call} per call"
            )
        single = field == "query"
        lookups, special, violations = prepare_columns(queries, field, single=single)
        if violations:
            raise InvalidRequest(violations)
        references = [q.client_reference for q in queries]
        self._catch_up_with_peers()
        batch = CheckBatch(self.index.sequence, new_query_id(), single, lookups, references)
        call_id = self.audit.next_call_id()
        documents: list[AuditDocument] = []
        append = documents.append
        # A manifest's plain CLEARs are audited packed (one stored row per call, not one per document).
        cleared: list[int] = []
        cleared_states: list[str] = []
        cleared_numbers: list[str] = []
        clear = Verdict.CLEAR
        index = self.index
        found = [index.lookup(lookups[0])] if len(lookups) == 1 else index.lookup_many(lookups)
        for i, matches in enumerate(self._confirmed(lookups, found)):
            p = special.get(i)
            if not matches and (p is None or (p.mrz is None and not p.state_as_read)):  # plain CLEAR: kept cheap
                batch.verdicts.append(clear)
                lookup = lookups[i]
                if single:
                    append(AuditDocument(call_id, i, "typed", lookup.issuing_state, lookup.number, "CLEAR", ""))
                else:
                    cleared.append(i)
                    cleared_states.append(lookup.issuing_state)
                    cleared_numbers.append(lookup.number)
                continue
            if p is None:
                p = PreparedQuery(lookups[i], "typed", None, "", "", queries[i].client_reference)
            r = answer(p, matches, batch.query_id(i))
            batch.verdicts.append(r.verdict)
            batch.details[i] = r
            append(audit_document(call_id, i, r))
        self.audit.submit(
            AuditCall(
                call_id,
                batch.call_uid,
                utc_now(),
                caller.member,
                caller.role,
                caller.peer,
                batch.sequence,
                len(lookups),
                single,
            ),
            documents,
            AuditClear(np.array(cleared, np.int64), cleared_states, cleared_numbers) if cleared else None,
        )
        return batch

    def _confirmed(self, lookups: Sequence[Lookup], found: list[tuple[Candidate, ...]]) -> list[tuple[Match, ...]]:
        """The index's candidates confirmed against the stored records, which also supply what the officer sees.

        The index keys long numbers by a hash, so a candidate is re-classified on the record itself; a record
        cancelled since the index saw it (the store is never behind the index) is dropped.
        """
        wanted = {c.record_id for candidates in found for c in candidates}
        if not wanted:
            return found  # type: ignore[return-value]  # every entry is the empty tuple
        records = self.store.records_by_ids(sorted(wanted))
        out: list[tuple[Match, ...]] = []
        for lookup, candidates in zip(lookups, found, strict=True):
            if not candidates:
                out.append(())
                continue
            matches = []
            for c in candidates:
                record = records.get(c.record_id)
                if record is None or record.data.status not in HITTING:
                    continue
                kind = classify(lookup, record)
                if kind is not None:
                    matches.append(Match(kind, record))
            if len(matches) > 1:
                matches.sort(key=lambda m: (m.kind, m.record.record_id))
            out.append(tuple(matches))
        return out

    def check_manifest(self, caller: Caller, payload: bytes) -> ManifestBatch:
        """Check a manifest sent as an Arrow IPC table (CheckManifest), answering in columns.

        The same validation, matching, limits and audit as `check_batch`, without an object per document on the
        common path: rows are canonicalised column-wise (idcheck.register.manifest), searched in one vectorised
        pass, and only the rows the index finds are confirmed against the store. Plain CLEAR answers are a verdict
        byte each; their audit rows are handed to the audit writer packed (one AuditClear per call).
        """
        limit = self.limits.max_queries_per_call
        table = manifest.decode(payload, max_rows=limit)
        n = table.num_rows
        if n == 0:
            raise InvalidRequest.single(manifest.FIELD, "at least one query is required")
        queries, violations = manifest.prepare_manifest(table)
        if violations:
            raise InvalidRequest(violations)
        self._catch_up_with_peers()
        batch = ManifestBatch(self.index.sequence, new_query_id(), np.full(n, Verdict.CLEAR, np.uint8))
        found = self.index.lookup_sparse(queries.numbers(), queries.lookups)
        rows = sorted(found)
        confirmed = self._confirmed(queries.lookups(rows), [found[i] for i in rows])
        details = batch.details
        for i, matches in zip(rows, confirmed, strict=True):
            if matches:
                details[i] = answer(queries.preparation(i), matches, batch.query_id(i))
        for i, p in queries.prepared.items():  # an MRZ reading or a warning, even without a match
            if i not in details and (p.mrz is not None or p.state_as_read):
                details[i] = answer(p, (), batch.query_id(i))
        call_id = self.audit.next_call_id()
        documents = []
        for i in sorted(details.keys() | queries.prepared.keys()):  # audited row by row; the rest packed
            r = details.get(i) or answer(queries.prepared[i], (), batch.query_id(i))
            batch.verdicts[i] = r.verdict
            documents.append(audit_document(call_id, i, r))
        if documents:
            plain = np.ones(n, bool)
            plain[[d.position for d in documents]] = False
            mask = pa.array(plain)
            states, numbers = queries.state_column.filter(mask), queries.number_column.filter(mask)
            clear = AuditClear(np.flatnonzero(plain), states, numbers)
        else:  # every document a plain CLEAR (no row was prepared apart either): the columns as they are
            clear = AuditClear(np.arange(n), queries.state_column, queries.number_column)
        self.audit.submit(
            AuditCall(
                call_id, batch.call_uid, utc_now(), caller.member, caller.role, caller.peer, batch.sequence, n, False
            ),
            documents,
            clear,
        )
        return batch

    def confirm_hit(self, caller: Caller, query_id: str, outcome: str, note: str = "") -> hits.HitOutcome:
        """The owner of a matched record confirms or rejects a hit, once per query id."""
        self.audit.flush()
        return hits.confirm_hit(self.store, caller.member, query_id, outcome, note)

    def hit_outcome(self, caller: Caller, query_id: str) -> hits.HitOutcome:
        """The outcome of a hit, for the member that asked or an owner of a matched record."""
        self.audit.flush()
        return hits.hit_outcome(self.store, caller.member, query_id)

    def audit_page(
        self,
        caller: Caller,
        *,
        since: str,
        until: str = "",
        caller_member: str = "",
        verdicts: Sequence[str] = (),
        limit: int = 0,
        page_token: str = "",
    ) -> AuditPage:
        """A page of the audit log as the caller may see it (see idcheck.register.audit). Flushes pending rows
        first, so that a check answered before this call is listed."""
        self.audit.flush()
        return list_audit(
            self.store,
            role=caller.role,
            member=caller.member,
            since=since,
            until=until,
            caller_member=caller_member,
            verdicts=verdicts,
            limit=limit,
            page_token=page_token,
        )

    # -- uploads ------------------------------------------------------------------------------------

    def begin_upload(self, caller: Caller, upload_id: str, mode: int, description: str = "") -> UploadSession:
        """Start an upload; raises InvalidRequest for a bad header."""
        violations = []
        if not upload_id or len(upload_id) > MAX_UPLOAD_ID_LENGTH or not upload_id.isprintable():
            violations.append(("header.upload_id", f"1 to {MAX_UPLOAD_ID_LENGTH} printable characters required"))
        try:
            upload_mode = UploadMode(int(mode))
        except ValueError:
            upload_mode = UploadMode.UNSPECIFIED
        if upload_mode == UploadMode.UNSPECIFIED:
            violations.append(("header.mode", "mode must be INCREMENTAL or REPLACE_ALL"))
        if len(description) > 1000:
            violations.append(("header.description", "longer than 1000 characters"))
        if violations:
            raise InvalidRequest(violations)
        return UploadSession(self, caller, upload_id, upload_mode, description)

    def _commit_upload(self, session: UploadSession) -> UploadOutcome:
        # Arrow uploads (session.columns) take the store's bulk path, which returns the changes as KeyColumns
        # (no Python object per record) for the index's apply_columns; row uploads return StoredRecords.
        # A big upload of new records gets the index ready while SQLite inserts its rows (prepare_columns, on the
        # other core); the index shows it once the commit is durable.
        prepared: list[tuple[KeyColumns, PreparedChanges]] = []

        def prepare(changes: KeyColumns) -> None:
            try:
                prepared.append((changes, self.index.prepare_columns(changes)))
            except Exception:
                log.exception("preparing the index ahead of an upload's commit failed; it is updated after it")

        with self._write_lock:
            outcome, changed = self.store.commit_upload(
                session.caller.member,
                session.upload_id,
                session.mode,
                session.description,
                session.columns if session.columns is not None else session.rows,
                session.rejections,
                session.protected,
                session.received,
                prepare=prepare,
            )
            session.columns = None  # written: free the upload's rows (GBs at 10M rows)
            if len(changed):
                ready = prepared[0][1] if prepared and prepared[0][0] is changed else None
                self._index_commit(changed, outcome.register_sequence, ready)
            prepared.clear()
        if len(changed):
            self._notify_changed()
        return outcome

    # -- cancel and read ----------------------------------------------------------------------------

    def cancel(self, caller: Caller, keys: Sequence[tuple[str, str, int]], reason: str) -> CancelOutcome:
        """Cancel records the caller owns (all or nothing)."""
        if not keys:
            raise InvalidRequest.single("keys", "at least one key is required")
        if len(keys) > self.limits.max_keys_per_cancel:
            raise InvalidRequest.single("keys", f"at most {self.limits.max_keys_per_cancel} keys per call")
        if len(reason) > 1000:
            raise InvalidRequest.single("reason", "longer than 1000 characters")
        parsed, violations = [], []
        for i, (state, number, cls) in enumerate(keys):
            try:
                parsed.append(parse_key(state, number, cls, field=f"keys[{i}]"))
            except RecordError as exc:
                violations.append((exc.field, exc.reason))
        if violations:
            raise InvalidRequest(violations)
        with self._write_lock:
            outcome = self.store.cancel(caller.member, parsed, reason)
            if outcome.changed:
                self._index_commit(outcome.changed, outcome.register_sequence)
        if outcome.changed:
            self._notify_changed()
        return outcome

    # -- replication (idcheck.register.replication) -------------------------------------------------

    def wait_for_change(self, after: int, timeout: float) -> int:
        """Wait until a change with a sequence above `after` is committed, at most `timeout` seconds; returns the
        store's last sequence (the change feed's live phase sleeps here instead of polling)."""
        with self._changed:
            self._changed.wait_for(lambda: self.store.last_sequence > after, timeout)
        self._catch_up_with_peers()  # with --workers, another process may have committed meanwhile
        return self.store.last_sequence

    def _notify_changed(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def apply_replicated(self, changes: KeyColumns, sequence: int) -> None:
        """Bring the index up to records a mirror has just stored from its upstream's feed, and to `sequence`
        (the upstream sequence at which the mirror is now consistent; its last one when not)."""
        with self._write_lock:
            self.index.apply_columns(changes, sequence)
        self._notify_changed()

    # -- worker processes sharing the store (idcheck.register.peers) ------------------------------------

    def follow(self, peers: SequenceChannel) -> None:
        """Share the store with other processes: catch up with their commits before answering, publish ours."""
        self._peers = peers
        peers.publish(self.index.sequence)
        self._follower = PeerFollower(
            peers, lambda: self.index.sequence, self._catch_up, self._write_lock, name="register-peer-follower"
        )
        self._follower.start()

    def _catch_up_with_peers(self) -> None:
        if self._follower is not None:
            self._follower.catch_up_if_behind()

    def _catch_up(self) -> None:
        """Apply every change committed to the store after the index's sequence (write lock held)."""
        columns, last = self.store.key_columns(since=self.index.sequence)
        self.index.apply_columns(columns, last)
        self.store.note_sequence(last)
        if self._peers is not None:
            self._peers.publish(last)

    def _index_commit(
        self, changed: KeyColumns | Sequence[StoredRecord], sequence: int, prepared: PreparedChanges | None = None
    ) -> None:
        """Bring the index up to a commit of this process (write lock held), from the changes `prepared` for it
        when given. With peers, another worker may have committed since the index's sequence: everything after
        it is then read from the store instead (commits are numbered in the order the store serialises them, so
        there was none when this commit's first sequence follows the index's)."""
        first = int(changed.sequence.min()) if isinstance(changed, KeyColumns) else changed[0].sequence
        if self._peers is not None and first != self.index.sequence + 1:
            self._catch_up()  # publishes the new sequence for the other workers
            return
        if prepared is not None:
            self.index.apply_prepared(prepared, sequence)
        elif isinstance(changed, KeyColumns):
            self.index.apply_columns(changed, sequence)
        else:
            self.index.apply(changed, sequence)
        if self._peers is not None:
            self._peers.publish(self.index.sequence)

    def get(self, caller: Caller, state: str, number: str, cls: int) -> tuple[StoredRecord, list[RecordChange]]:
        """One record the caller owns, with its history."""
        try:
            key = parse_key(state, number, cls)
        except RecordError as exc:
            raise InvalidRequest.single(exc.field, exc.reason) from None
        return self.store.get_record(caller.member, key)


@dataclass
class CheckBatch:
    """Answers to one check call, column-wise.

    `verdicts[i]` is the verdict of query i; `details[i]` its full CheckResult whenever it is anything but
    a plain CLEAR of a typed query (matches, an MRZ reading, a warning). A query without details is CLEAR
    with `CLEAR_ACTION` as its officer action, searched as `lookups[i]`.
    """

    sequence: int
    call_uid: str
    single: bool
    lookups: list[Lookup]
    references: list[str]
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    details: dict[int, CheckResult] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lookups)

    def query_id(self, i: int) -> str:
        """Query id of document i: the call's uid for a single check, `uid-i` in a manifest."""
        return self.call_uid if self.single else f"{self.call_uid}-{i}"

    def results(self) -> list[CheckResult]:
        """Every answer as a CheckResult (materialises the plain CLEAR ones too)."""
        out = []
        for i, lookup in enumerate(self.lookups):
            r = self.details.get(i)
            if r is None:
                p = PreparedQuery(lookup, "typed", None, "", "", self.references[i])
                r = CheckResult(Verdict.CLEAR, (), p, self.query_id(i), CLEAR_ACTION)
            out.append(r)
        return out


@dataclass
class ManifestBatch:
    """Answers to one columnar manifest: `verdicts[i]` (a Verdict value) for every row, and the full CheckResult
    of every row that is not a plain CLEAR (see CheckBatch); row i's query id is `call_uid-i`."""

    sequence: int
    call_uid: str
    verdicts: np.ndarray  # uint8
    details: dict[int, CheckResult] = dataclasses.field(default_factory=dict)

    def query_id(self, i: int) -> str:
        return f"{self.call_uid}-{i}"


def answer(p: PreparedQuery, matches: tuple[Match, ...], query_id: str) -> CheckResult:
    """The full answer to one prepared query given its confirmed matches."""
    verdict = verdict_of(matches)
    return CheckResult(verdict, matches, p, query_id, officer_action(verdict, matches, p))


def audit_document(call_id: int, position: int, r: CheckResult) -> AuditDocument:
    """The audit row of one answer given in full (a match, an MRZ, a warning, or a single check's)."""
    p = r.query
    matches = r.matches
    if len(matches) == 1:
        matched = str(matches[0].record.record_id)
    else:
        matched = ",".join(str(m.record.record_id) for m in matches)
    state = p.lookup.issuing_state or p.state_as_read
    return AuditDocument(call_id, position, p.kind, state, p.lookup.number, _VERDICT_NAMES[r.verdict], matched)


_VERDICT_NAMES = {verdict: verdict.name for verdict in Verdict}  # a dict read costs less than the enum's `name`


class UploadSession:
    """One upload in progress: rows are validated as batches arrive and applied only by `commit`."""

    def __init__(self, register: Register, caller: Caller, upload_id: str, mode: UploadMode, description: str) -> None:
        self.register = register
        self.caller = caller
        self.upload_id = upload_id
        self.mode = mode
        self.description = description
        self.received = 0
        self.rows: list[tuple[int, RecordData]] = []
        self.rejections: list[Rejection] = []
        self.protected: list[tuple[int, DocumentKey]] = []
        self._seen: dict[DocumentKey, int] = {}
        self._today = dt.date.today()
        self._verdicts = columns.DistinctVerdicts(self._today)  # per distinct date and state code, across batches
        self._chunks: list[pa.Table] = []  # accepted rows of Arrow batches (idcheck.uploads.ACCEPTED_SCHEMA)
        self.columns: UploadColumns | None = None  # set by commit when the upload carried Arrow batches

    def previous_outcome(self) -> UploadOutcome | None:
        """The stored answer if this upload id already committed (then nothing more needs to be read)."""
        return self.register.store.find_upload(self.caller.member, self.upload_id)

    def add(self, batch: Sequence[RawRecord]) -> None:
        """Validate one batch; bad rows are recorded as rejections, good ones kept for the commit."""
        limits = self.register.limits
        if len(batch) > limits.max_records_per_batch:
            raise InvalidRequest.single(
                "batch.records",
                f"{len(batch)} records in one message; at most {limits.max_records_per_batch}",
            )
        if self.received + len(batch) > limits.max_rows_per_upload:
            raise LimitExceeded(
                f"upload exceeds {limits.max_rows_per_upload} rows; split it into several uploads",
                field="batch",
            )
        for raw in batch:
            index = self.received
            self.received += 1
            try:
                data = validate_record(
                    issuing_state=raw.issuing_state,
                    document_number=raw.document_number,
                    document_class=raw.document_class,
                    status=raw.status,
                    event_date=raw.event_date,
                    surname=raw.surname,
                    given_names=raw.given_names,
                    birth_date=raw.birth_date,
                    nationality=raw.nationality,
                    expiry_date=raw.expiry_date,
                    instructions=raw.instructions,
                    today=self._today,
                )
            except RecordError as exc:
                self.rejections.append(Rejection(index, exc.field, exc.reason))
                self._protect(index, raw)
                continue
            first = self._seen.setdefault(data.key, index)
            if first != index:
                self.rejections.append(Rejection(index, "key", f"duplicate of row {first} in this upload"))
                continue
            self.rows.append((index, data))

    def add_arrow(self, payload: bytes) -> None:
        """Validate one Arrow IPC batch (see RecordBatch.arrow_ipc) column by column; same verdicts as `add`."""
        limits = self.register.limits
        table = columns.decode_arrow_ipc(payload, max_rows=limits.max_rows_per_arrow_batch)
        if self.received + table.num_rows > limits.max_rows_per_upload:
            raise LimitExceeded(
                f"upload exceeds {limits.max_rows_per_upload} rows; split it into several uploads",
                field="batch",
            )
        result = columns.validate_columns(table, self.received, self._today, self._verdicts)
        self.received += table.num_rows
        self.rejections.extend(result.rejections)
        self.protected.extend(result.protected)
        if result.accepted.num_rows:
            self._chunks.append(result.accepted)

    def _protect(self, index: int, raw: RawRecord) -> None:
        # A REPLACE_ALL upload must not cancel a record just because this row of it had a bad field.
        try:
            key = parse_key(raw.issuing_state, raw.document_number, raw.document_class)
        except RecordError:
            return
        if key.document_class != DocumentClass.UNSPECIFIED:
            self.protected.append((index, key))

    def commit(self) -> UploadOutcome:
        """Apply the upload atomically (durable before this returns). Runs on every CPU (`idcheck.cpus`): the key
        sort, the store's writer and its JSON thread, and the index rebuild release the interpreter lock."""
        with every_cpu():
            return self._commit()

    def _commit(self) -> UploadOutcome:
        if self._chunks:
            # Row batches of a mixed upload join the Arrow rows; repeated keys are found across both at once.
            tables = [*self._chunks, columns.accepted_from_records(self.rows)] if self.rows else self._chunks
            # The rows stay where they are; the store gathers them in key order chunk by chunk as it writes.
            self.columns, duplicates = columns.key_order_combined(pa.concat_tables(tables))
            del tables
            self._chunks, self.rows = [], []
            self.rejections.extend(duplicates)
            try:
                return self.register._commit_upload(self)
            finally:
                self.columns = None
                pa.default_memory_pool().release_unused()
        return self.register._commit_upload(self)
