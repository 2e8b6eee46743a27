"""The durable register: SQLite in WAL mode, the source of truth for records, the change log and uploads.

Durability: the write connection runs with `journal_mode=WAL` and `synchronous=FULL`. In WAL mode FULL
makes every COMMIT fsync the write-ahead log before it returns, so a change is on stable storage before
the server acknowledges it: neither a process crash nor a power cut can lose an acknowledged write.
(`NORMAL` would only survive a process crash; the last commits could vanish with the power.) Checks
never read SQLite: they are answered from the in-memory index derived from it.

All changes go through one write connection under one lock, so sequence numbers are assigned without
gaps and in commit order. An upload is applied in a single transaction with set-based SQL over a staging
table, which keeps a million-row upload in the order of seconds.
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import itertools
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcheck.arrow_buffers import utf8_offsets
from idcheck.cpus import on_every_cpu
from idcheck.icao import DocumentClass
from idcheck.records import DocumentKey, Holder, KeyColumns, RecordChange, RecordData, RecordStatus, StoredRecord
from idcheck.store.errors import AmbiguousKey, NotOwner, RecordNotFound
from idcheck.store.schema import migrate
from idcheck.uploads import Rejection, UploadColumns, UploadMode, UploadOutcome

log = logging.getLogger(__name__)

CANCELLED = int(RecordStatus.CANCELLED)

_RECORD_COLUMNS = (
    "record_id, issuing_state, number_canonical, doc_class, number_printed, owner, status, event_date, "
    "surname, given_names, birth_date, nationality, expiry_date, instructions, recorded_at, seq"
)

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging (
    row_index        INTEGER PRIMARY KEY,
    issuing_state    TEXT    NOT NULL,
    number_canonical TEXT    NOT NULL,
    doc_class        INTEGER NOT NULL,
    number_printed   TEXT    NOT NULL DEFAULT '',
    status           INTEGER NOT NULL DEFAULT 0,
    event_date       TEXT    NOT NULL DEFAULT '',
    surname          TEXT    NOT NULL DEFAULT '',
    given_names      TEXT    NOT NULL DEFAULT '',
    birth_date       TEXT    NOT NULL DEFAULT '',
    nationality      TEXT    NOT NULL DEFAULT '',
    expiry_date      TEXT    NOT NULL DEFAULT '',
    instructions     TEXT    NOT NULL DEFAULT '',
    -- 0: row to apply; 1: rejected before the store, key kept only to protect it from REPLACE_ALL;
    -- 2: rejected by the store (owned by another member, or cancelling an unknown record).
    kind             INTEGER NOT NULL DEFAULT 0,
    record_id        INTEGER,
    existing_owner   TEXT,
    existing_recorded_at TEXT,
    op               INTEGER NOT NULL DEFAULT 1,  -- 0 unchanged, 1 create, 2 update (set by the join)
    seq              INTEGER
);
CREATE TEMP TABLE IF NOT EXISTS replaced (record_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
-- Bulk path (UploadColumns): the upload's keys in key order, to find the records they already name, and the
-- member's records a REPLACE_ALL upload keeps.
CREATE TEMP TABLE IF NOT EXISTS bulk_keys (
    pos              INTEGER PRIMARY KEY,
    issuing_state    TEXT    NOT NULL,
    number_canonical TEXT    NOT NULL,
    doc_class        INTEGER NOT NULL
);
CREATE TEMP TABLE IF NOT EXISTS bulk_keep (record_id INTEGER PRIMARY KEY);
"""

_STORE_OTHER_OWNER = "the document is recorded by another member; only its owner may change it"
_STORE_NO_RECORD = "CANCELLED given for a document that has no record to cancel"
# Upload columns written to `records`, in the order of the INSERT below; the holder and instruction columns
# are left out of the statement when the whole upload leaves them empty (their default is '').
_BULK_DATA_COLUMNS = (
    ("number_printed", "number_printed"),
    ("status", "status"),
    ("event_date", "event_date"),
    ("surname", "surname"),
    ("given_names", "given_names"),
    ("birth_date", "birth_date"),
    ("nationality", "nationality"),
    ("expiry_date", "expiry_date"),
    ("instructions", "instructions"),
)
_OPTIONAL_TEXT = frozenset(("surname", "given_names", "birth_date", "nationality", "expiry_date", "instructions"))
# The last sequence of the change log: its per-change rows and the ranges of records created by bulk uploads.
_LAST_SEQ_SQL = (
    "SELECT MAX(COALESCE((SELECT MAX(seq) FROM changes), 0), COALESCE((SELECT MAX(last_seq) FROM created_ranges), 0))"
)
# The records created by bulk uploads are in neither the seq nor the owner index (schema.py, 8 -> 9): each read
# that needs those indexes also reads them through their ranges. A range's records are its actor's, and keep the
# range's sequence until a `changes` row.


def _in_ranges(lowest: str = "g.first_record_id") -> str:
    """Every range `g` joined to the records `r` it created, from the record id `lowest` (an expression of `g`)."""
    return (
        f"created_ranges AS g CROSS JOIN records AS r ON r.record_id BETWEEN {lowest} "
        "AND g.first_record_id + (g.last_seq - g.first_seq)"
    )


_IN_RANGES = _in_ranges()
_RANGE_SEQ = "g.first_seq + (r.record_id - g.first_record_id)"  # sequence of a record `r` of range `g`
# The records of the member `:member` (record_id, status and key): by the owner index, and by their ranges.
_OWNED = (
    "SELECT record_id, status, issuing_state, number_canonical, doc_class FROM records "
    "WHERE owner = :member AND created_status IS NULL UNION ALL "
    f"SELECT r.record_id, r.status, r.issuing_state, r.number_canonical, r.doc_class FROM {_IN_RANGES} "
    "WHERE g.actor = :member AND r.created_status IS NOT NULL"
)
# The newest record change: the change log's, or on a mirror (no change log) the newest indexed record's.
_NEWEST_RECORD_SEQ_SQL = (
    f"SELECT MAX(COALESCE((SELECT MAX(seq) FROM records WHERE created_status IS NULL), 0), ({_LAST_SEQ_SQL}))"
)
_BACKGROUND_CHECKPOINT_ROWS = 100_000  # bulk uploads of this many rows leave their checkpoint to a thread
_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default
_COUNTED_STATUSES = [s for s in RecordStatus if s != RecordStatus.UNSPECIFIED]  # what a stored record can have
_COUNT_BY_STATUS_SQL = (
    "SELECT " + ", ".join(f"COUNT(*) FILTER (WHERE status = {int(s)})" for s in _COUNTED_STATUSES) + " FROM records"
)
_BULK_CHUNK = 65_536  # rows per INSERT statement (one JSON parameter each) and per key-matching batch
_BULK_CACHE_KIB = 256 * 1024  # SQLite page cache while a large upload is written
_CHANGE_OP = {False: "UPDATED", True: "CANCELLED"}  # change-log operation of an update, by "status is CANCELLED"


def utc_now() -> str:
    """RFC 3339 UTC timestamp with milliseconds, as stored everywhere in the register."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditCall(NamedTuple):
    """One check, verify or identify call in the audit log (its documents are `AuditDocument` rows).

    `register_seq` is the register sequence a check was answered at, or the template sequence of a verify or
    identify."""

    call_id: int
    call_uid: str
    at: str
    caller_member: str
    caller_role: str
    peer: str
    register_seq: int
    documents: int
    single: bool


class AuditDocument(NamedTuple):
    """One checked document of a call (or the one probe of a verify or identify), as inserted.

    `matched_records` holds comma-separated record ids for document checks ('typed', 'mrz') and template ids
    for 'verify' and 'identify'; `subject_id` is the subject a verify claimed.
    """

    call_id: int
    position: int
    query_kind: str
    issuing_state: str
    document_number: str
    verdict: str
    matched_records: str
    subject_id: str = ""


class AuditClear(NamedTuple):
    """The documents of one manifest call answered with a plain CLEAR (typed query, no match), packed.

    They are stored as one `audit_clear` row per call instead of one `audit` row each (see schema migration 5 ->
    6), and read back as ordinary rows: query_kind 'typed', verdict 'CLEAR', no matched records, no subject.
    """

    positions: np.ndarray  # int64, ascending, positions in the call (the other documents are AuditDocument rows)
    states: Sequence[str] | pa.Array  # canonical issuing state of each ('' when the query gave none)
    numbers: Sequence[str] | pa.Array  # canonical document number of each


# What the audit writer hands to `write_audit`: a call, its ordinary rows and (manifests) its packed CLEARs.
AuditItem = tuple[AuditCall, Sequence[AuditDocument]] | tuple[AuditCall, Sequence[AuditDocument], AuditClear | None]


class AuditRow(NamedTuple):
    """One checked document as read back from the audit log (the `audit_log` view)."""

    query_id: str
    at: str
    caller_member: str
    caller_role: str
    peer: str
    query_kind: str
    issuing_state: str
    document_number: str
    verdict: str
    matched_records: str
    register_seq: int
    subject_id: str = ""


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What a cancel did, and the records it changed (in sequence order)."""

    cancelled: int
    already_cancelled: int
    register_sequence: int
    changed: tuple[StoredRecord, ...]


# Page size of a new database file: SQLite's default, 4 KiB, chosen against 16 KiB on 2026-12-06 (2 cores). With
# 16 KiB pages a 10,000,000-row upload ran at 212,000 rows/s instead of 177,000 (one pair of runs; 1,000,000 rows:
# 222,000 against 218,000) and a one-row upload or cancel took 0.1 ms more (p50 0.45 -> 0.60 ms), but the server
# answered manifests of 1,000 about 13 % slower (8 of 9 alternating `idcheck bench --records 1e6` runs; the same
# manifests in one process showed no difference, so where it comes from is not known yet): checks come first. An
# existing file keeps the page size it was created with (SQLite changes it only on VACUUM, never in WAL mode).
PAGE_SIZE = 4096


def connect(path: Path, *, synchronous: str = "FULL", cache_mib: int = 64) -> sqlite3.Connection:
    """Open the register database with the settings every connection needs (and a page cache of `cache_mib`)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL mode: takes effect only on a new, empty file
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
    return conn


def side_connection(path: Path) -> sqlite3.Connection:
    """A further connection to a database `connect` has set up (WAL mode is kept in the file): a reader, a feed
    view, a checkpointer. It waits for locks as the writer does and changes no other setting."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class ReaderConnections:
    """One read connection per thread to a database file (WAL readers never wait for the writer), all closed
    together with the store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        """This thread's reader, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = side_connection(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class Checkpointer:
    """Copies a big commit's pages from the WAL into the database file in a thread of its own.

    SQLite does this (an automatic checkpoint) inside the COMMIT that takes the WAL past 1,000 pages, so the
    writer pays it before it can acknowledge: 2.5 s of the 41 s a 10,000,000-row upload spent in the store. A
    commit is durable once its WAL frames are fsynced, so a bulk upload commits without the automatic
    checkpoint and leaves it to this thread (PASSIVE: readers and writers carry on meanwhile; what it cannot
    copy yet, the next automatic checkpoint does)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.done = 0  # background checkpoints finished since start, and how many of them failed
        self.failed = 0

    def start(self) -> None:
        """Checkpoint in the background now (unless one is running: the next commit's automatic one follows)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=on_every_cpu(self._run), name="wal-checkpoint", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait(self) -> None:
        """Until the running checkpoint, if any, is over."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        try:
            conn = side_connection(self._path)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            self.failed += 1
            log.warning(
                "background WAL checkpoint of %s failed (the next commit checkpoints)", self._path, exc_info=True
            )
        self.done += 1


class RegisterStore:
    """Durable records, change log, uploads and audit log in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path)
        migrate(self._conn)
        self._conn.executescript(_STAGING)
        self._lock = threading.Lock()
        self._checkpointer = Checkpointer(self.path)
        self._readers = ReaderConnections(self.path)
        self._last_seq = self._query_last_seq(self._conn)
        self._status_counts: tuple[int | None, dict[str, int]] | None = None  # (newest record seq, counts)

    # -- reading ------------------------------------------------------------------------------------

    @property
    def last_sequence(self) -> int:
        """Sequence number of the last committed change (0 for an empty register)."""
        return self._last_seq

    @staticmethod
    def _query_last_seq(conn: sqlite3.Connection) -> int:
        return int(conn.execute(_LAST_SEQ_SQL).fetchone()[0])

    def background_tasks(self) -> int:
        """WAL checkpoints running in the background now (0 or 1)."""
        return int(self._checkpointer.running)

    def _reader(self) -> sqlite3.Connection:
        return self._readers.get()

    def iter_records(self, *, active_only: bool = True, batch_size: int = 50_000) -> Iterator[StoredRecord]:
        """Every record (by default only those that can hit), in record id order, for rebuilding the index."""
        where = f"WHERE status <> {CANCELLED}" if active_only else ""
        conn = self._reader()
        conn.execute("BEGIN")  # one consistent snapshot across batches
        try:
            cur = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM records {where} ORDER BY record_id")
            while rows := cur.fetchmany(batch_size):
                yield from map(_row_to_record, rows)
        finally:
            conn.execute("COMMIT")

    def count_records(self) -> dict[str, int]:
        """Record counts by status name.

        Counting reads every record (seconds at tens of millions), so the counts are kept with the sequence of the
        newest record change they cover and counted again only after a change (any process's: the sequence is
        read from the file, in the same snapshot as the counts)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            newest = conn.execute(_NEWEST_RECORD_SEQ_SQL).fetchone()[0]
            cached = self._status_counts
            if cached is not None and cached[0] == newest:
                return dict(cached[1])
            # One pass over the records, counting each status as it goes (GROUP BY sorted them first, in a
            # temporary B-tree).
            found = conn.execute(_COUNT_BY_STATUS_SQL).fetchone()
        finally:
            conn.execute("COMMIT")
        counts = {s.name: int(n) for s, n in zip(_COUNTED_STATUSES, found, strict=True) if n}
        self._status_counts = (newest, counts)
        return dict(counts)

    def find_upload(self, member: str, upload_id: str) -> UploadOutcome | None:
        """The stored outcome of a committed upload, or None."""
        row = (
            self._reader()
            .execute("SELECT result FROM uploads WHERE member = ? AND upload_id = ?", (member, upload_id))
            .fetchone()
        )
        return UploadOutcome.from_json(row[0], replayed=True) if row else None

    def get_record(self, member: str, key: DocumentKey) -> tuple[StoredRecord, list[RecordChange]]:
        """One record and its history; only its owner may read it."""
        conn = self._reader()
        record = self._resolve(conn, key, "key")
        if record.owner != member:
            raise NotOwner("the record is owned by another member", field="key")
        rows = conn.execute(
            "SELECT seq, op, status, actor, changed_at, upload_id, reason FROM change_log "
            "WHERE record_id = ? ORDER BY seq",
            (record.record_id,),
        ).fetchall()
        history = [RecordChange(s, op, RecordStatus(st), a, at, u, r) for s, op, st, a, at, u, r in rows]
        return record, history

    def note_sequence(self, sequence: int) -> None:
        """Another process sharing this file has committed through `sequence` (serve --workers)."""
        self._last_seq = max(self._last_seq, sequence)

    def records_by_ids(self, ids: Sequence[int]) -> dict[int, StoredRecord]:
        """Current state of the given records, by id (what the officer sees of the index's candidates)."""
        return {r.record_id: r for r in self._records_by_id(self._reader(), ids)}

    def key_columns(self, *, since: int = 0, batch_size: int = 100_000) -> tuple[KeyColumns, int]:
        """Key, status and sequence of the records changed after `since` (all active ones when 0), in columns,
        with the last sequence they cover: one consistent read, for loading or catching up the index."""
        # A record's seq is its latest change's: the records changed after `since` come in three parts.
        active = f"status NOT IN ({CANCELLED}, {int(RecordStatus.UNSPECIFIED)})"
        fields = "r.record_id, r.issuing_state, r.number_canonical, r.doc_class, r.status, r.seq"
        if since:
            queries = [select for select, _ in _changed_after(fields)]
        else:
            queries = [f"SELECT {fields} FROM records AS r WHERE {active}"]
        conn = self._reader()
        ids: list[int] = []
        states: list[str] = []
        numbers: list[str] = []
        classes: list[int] = []
        statuses: list[int] = []
        seqs: list[int] = []
        conn.execute("BEGIN")  # the rows and the sequence they cover come from one snapshot of the file
        try:
            last = self._query_last_seq(conn)
            for query in queries:
                cur = conn.execute(query, {"after": int(since)})
                while rows := cur.fetchmany(batch_size):
                    i, st, n, c, s, q = zip(*rows, strict=True)
                    ids += i
                    states += st
                    numbers += n
                    classes += c
                    statuses += s
                    seqs += q
        finally:
            conn.execute("COMMIT")
        if since:  # the parts one after the other: in sequence order
            order = np.argsort(np.array(seqs, np.int64), kind="stable").tolist()
            ids, states, numbers, classes, statuses, seqs = (
                [v[k] for k in order] for v in (ids, states, numbers, classes, statuses, seqs)
            )
        columns = KeyColumns(
            np.array(ids, np.int64),
            states,
            numbers,
            np.array(classes, np.int8),
            np.array(statuses, np.int8),
            np.array(seqs, np.int64),
        )
        return columns, last

    def audit_rows(self, *, limit: int = 1000) -> list[AuditRow]:
        """The most recent audit rows, newest last."""
        conn = self._reader()
        conn.execute("BEGIN")  # the window and the rows are read from one snapshot
        try:
            wanted = limit if limit >= 0 else _UNBOUNDED
            while True:
                # The last calls holding `wanted` documents: the rows are read from them only, never sorted
                # from the whole log (packed documents have no index to read backwards).
                lowest, exhausted = _call_window(conn.execute(_AUDIT_CALLS_NEWEST), wanted, 0)
                if lowest is None:
                    return []
                rows = conn.execute(
                    "SELECT query_id, at, caller_member, caller_role, peer, query_kind, issuing_state, "
                    "document_number, verdict, matched_records, register_seq, subject_id FROM audit_log "
                    "WHERE call_id >= ? ORDER BY call_id DESC, position DESC LIMIT ?",
                    (lowest, limit),
                ).fetchall()
                if len(rows) >= limit or exhausted:
                    return [AuditRow(*r) for r in reversed(rows)]
                wanted *= 2  # calls that hold fewer documents than they say: look further back
        finally:
            conn.execute("COMMIT")

    def list_audit(
        self,
        *,
        since: str,
        until: str,
        caller_member: str = "",
        owner: str = "",
        verdicts: Sequence[str] = (),
        after: tuple[int, int] = (0, -1),
        limit: int = 1000,
    ) -> list[tuple[int, int, AuditRow]]:
        """Audit rows with `since <= at < until`, oldest first, after the (call id, position) `after`.

        `caller_member` keeps one member's searches; `owner` keeps the searches that matched a record of that
        member (whoever asked), or for verify and identify one of its templates. Template ownership is read from
        the ENROLLED entries of the template change log (template id = their sequence number), which outlive a
        removal, so a member keeps seeing the searches that matched a template it has since removed.
        Returns (call id, position, row) for paging.
        """
        if owner or (verdicts and "CLEAR" not in verdicts):
            # Packed documents are plain CLEARs that matched nothing: neither filter ever keeps one.
            where, params = self._audit_filters(since, until, caller_member, owner, verdicts)
            rows = (
                self._reader()
                .execute(
                    f"SELECT {_AUDIT_COLUMNS} FROM audit_calls AS c JOIN audit AS a ON a.call_id = c.call_id "
                    f"WHERE (a.call_id, a.position) > (?, ?) AND {where} ORDER BY a.call_id, a.position LIMIT ?",
                    [*after, *params, limit],
                )
                .fetchall()
            )
            return [(r[0], r[1], AuditRow(*r[2:])) for r in rows]
        conn = self._reader()
        conn.execute("BEGIN")  # the windows and the rows are read from one snapshot
        try:
            return self._list_audit_windows(conn, since, until, caller_member, verdicts, after, limit)
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _audit_filters(
        since: str, until: str, caller_member: str, owner: str, verdicts: Sequence[str]
    ) -> tuple[str, list[object]]:
        """WHERE terms (on `audit_calls AS c` and `audit AS a`) and their parameters for `list_audit`."""
        where = ["c.at >= ?", "c.at < ?"]
        params: list[object] = [since, until]
        if caller_member:
            where.append("c.caller_member = ?")
            params.append(caller_member)
        if owner:
            where.append(
                "a.matched_records <> '' AND CASE WHEN a.query_kind IN ('verify', 'identify') "
                "THEN EXISTS (SELECT 1 FROM json_each('[' || a.matched_records || ']') AS j "
                "JOIN template_changes AS t ON t.seq = j.value WHERE t.op = 'ENROLLED' AND t.actor = ?) "
                "ELSE EXISTS (SELECT 1 FROM json_each('[' || a.matched_records || ']') AS j "
                "JOIN records AS r ON r.record_id = j.value WHERE r.owner = ?) END"
            )
            params.extend((owner, owner))
        if verdicts:
            where.append(f"a.verdict IN ({','.join('?' * len(verdicts))})")
            params.extend(verdicts)
        return " AND ".join(where), params

    def _list_audit_windows(
        self,
        conn: sqlite3.Connection,
        since: str,
        until: str,
        caller_member: str,
        verdicts: Sequence[str],
        after: tuple[int, int],
        limit: int,
    ) -> list[tuple[int, int, AuditRow]]:
        """`list_audit` over both the `audit` rows and the packed CLEARs.

        The two cannot be merged by an index (a packed document's position is inside its JSON), so rows are read
        a window of calls at a time: the calls from the cursor on whose `documents` add up to what the page still
        needs, found by walking audit_calls in call id order (as the plain query walks `audit`), then the rows of
        that window only, sorted. A page costs about its size plus the calls the filters skip, however long the
        log. A window that yields less (a verdict filter) is followed by the next one.
        """
        where, params = self._audit_filters(since, until, caller_member, "", verdicts)
        packed_where, packed_params = self._audit_filters(since, until, caller_member, "", ())
        # `+c.at`: walk calls by id (no sort), never by the time index, which would sort the whole time range.
        window_where = "+c.at >= ? AND +c.at < ?" + (" AND +c.caller_member = ?" if caller_member else "")
        page_sql = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit_calls AS c JOIN audit AS a ON a.call_id = c.call_id "
            f"WHERE a.call_id BETWEEN ? AND ? AND (a.call_id, a.position) > (?, ?) AND {where} "
            f"UNION ALL SELECT {_PACKED_COLUMNS} FROM {_PACKED_FROM} "
            f"WHERE k.call_id BETWEEN ? AND ? AND (k.call_id, d.value ->> 0) > (?, ?) AND {packed_where} "
            "ORDER BY 1, 2 LIMIT ?"
        )
        wanted = limit if limit >= 0 else _UNBOUNDED
        found: list[tuple[int, int, AuditRow]] = []
        cursor = after
        while len(found) < wanted:
            calls = conn.execute(
                f"SELECT c.call_id, c.documents FROM audit_calls AS c WHERE c.call_id >= ? AND {window_where} "
                "ORDER BY c.call_id",
                [cursor[0], *packed_params],
            )
            last, exhausted = _call_window(calls, wanted - len(found), cursor[0], cursor[1] + 1)
            if last is None:
                break
            rows = conn.execute(
                page_sql,
                [cursor[0], last, *cursor, *params, cursor[0], last, *cursor, *packed_params, wanted - len(found)],
            ).fetchall()
            found.extend((r[0], r[1], AuditRow(*r[2:])) for r in rows)
            if exhausted:
                break
            cursor = (last + 1, -1)
        return found

    def find_audit_row(self, query_id: str) -> tuple[AuditRow, frozenset[str]] | None:
        """The audit row of one query id (a call uid, or `uid-position` in a manifest) and the owners of the
        records it matched (document checks only), or None when there is no such query."""
        uid, _, position = query_id.partition("-")
        if position and not position.isdigit():
            return None
        key = (uid, 0 if position else 1, int(position) if position else 0)
        found = (
            self._reader()
            .execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_calls AS c JOIN audit AS a ON a.call_id = c.call_id "
                "WHERE c.call_uid = ? AND c.single = ? AND a.position = ? "
                f"UNION ALL SELECT {_PACKED_COLUMNS} FROM {_PACKED_FROM} "
                "WHERE c.call_uid = ? AND c.single = ? AND d.value ->> 0 = ?",
                (*key, *key),
            )
            .fetchone()
        )
        if found is None:
            return None
        row = AuditRow(query_id, *found[3:])
        owners: frozenset[str] = frozenset()
        if row.matched_records and row.query_kind not in ("verify", "identify"):
            owners = frozenset(
                r[0]
                for r in self._reader().execute(
                    "SELECT DISTINCT r.owner FROM json_each(?) AS j JOIN records AS r ON r.record_id = j.value",
                    (f"[{row.matched_records}]",),
                )
            )
        return row, owners

    def hit_outcome(self, query_id: str) -> tuple[str, str, str, str] | None:
        """(outcome, note, decided_by, decided_at) recorded for a hit, or None while it is pending."""
        found = (
            self._reader()
            .execute("SELECT outcome, note, decided_by, decided_at FROM hit_outcomes WHERE query_id = ?", (query_id,))
            .fetchone()
        )
        return None if found is None else (found[0], found[1], found[2], found[3])

    def record_hit_outcome(self, query_id: str, outcome: str, note: str, member: str) -> bool:
        """Store the decision on a hit durably; False (nothing changed) when one is already recorded."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO hit_outcomes (query_id, outcome, note, decided_by, decided_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (query_id, outcome, note, member, utc_now()),
            )
            return cur.rowcount == 1

    def audit_count(self) -> int:
        """Number of checked documents in the audit log (rows and packed CLEARs)."""
        return int(
            self._reader()
            .execute("SELECT (SELECT COUNT(*) FROM audit) + (SELECT COALESCE(SUM(count), 0) FROM audit_clear)")
            .fetchone()[0]
        )

    def last_audit_call_id(self) -> int:
        """Highest call id in the audit log (0 when empty)."""
        return int(self._reader().execute("SELECT COALESCE(MAX(call_id), 0) FROM audit_calls").fetchone()[0])

    # -- writing ------------------------------------------------------------------------------------

    def commit_upload(
        self,
        member: str,
        upload_id: str,
        mode: UploadMode,
        description: str,
        rows: Sequence[tuple[int, RecordData]] | UploadColumns,
        rejections: Sequence[Rejection],
        protected_keys: Sequence[tuple[int, DocumentKey]],
        received: int,
        prepare: Callable[[KeyColumns], None] | None = None,
    ) -> tuple[UploadOutcome, list[StoredRecord] | KeyColumns]:
        """Apply one upload atomically and durably.

        `rows` are the validated rows with their index in the upload; `rejections` the rows refused before
        reaching the store; `protected_keys` the keys of those rejected rows that could be read, which a
        REPLACE_ALL upload must not cancel (the member meant to keep them). Rows that touch another
        member's record are rejected here. Returns the outcome and the changed records in sequence order.
        If the upload id already committed, nothing is applied and the stored outcome is returned.

        Two forms of `rows`: a sequence of `(row index, RecordData)` (small uploads; sequence numbers follow row
        order; the changes come back as StoredRecords), or `UploadColumns` (the bulk path for large uploads:
        rows in key order, written with executemany from the columns without a Python object per row; sequence
        numbers follow key order, created records first, then updated ones, then REPLACE_ALL cancellations;
        the changes come back as `KeyColumns`, empty when nothing changed).

        `prepare` (bulk path): called, in another thread while the rows are being inserted, with the changes the
        upload will return if every row creates a record, so that the caller can get the index ready meanwhile
        (the very same object is returned then; otherwise different changes are). Its exceptions are the
        caller's: it must not raise.
        """
        bulk = isinstance(rows, UploadColumns)
        now = utc_now()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                prior = conn.execute(
                    "SELECT result FROM uploads WHERE member = ? AND upload_id = ?", (member, upload_id)
                ).fetchone()
                if prior:
                    conn.execute("ROLLBACK")
                    replayed = UploadOutcome.from_json(prior[0], replayed=True)
                    return replayed, (_no_key_columns() if bulk else [])
                if isinstance(rows, UploadColumns):
                    # A larger page cache while a big upload is written (the indexes then spill to the WAL less
                    # often mid-transaction); a fixed amount, given back afterwards.
                    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
                    if len(rows) >= 100_000:
                        conn.execute(f"PRAGMA cache_size=-{_BULK_CACHE_KIB}")
                    try:
                        outcome, key_columns = self._apply_bulk(
                            conn,
                            member,
                            upload_id,
                            mode,
                            description,
                            rows,
                            rejections,
                            protected_keys,
                            received,
                            now,
                            prepare,
                        )
                    finally:
                        conn.execute(f"PRAGMA cache_size={int(cache)}")
                    first_seq = int(key_columns.sequence.min()) if len(key_columns) else None
                    last_seq = int(key_columns.sequence.max()) if len(key_columns) else None
                    self._insert_upload_row(
                        conn, member, upload_id, mode, description, received, outcome, now, first_seq, last_seq
                    )
                    if len(rows) >= _BACKGROUND_CHECKPOINT_ROWS:
                        self._commit_checkpointing_later(conn)
                    else:
                        conn.execute("COMMIT")
                    self._last_seq = outcome.register_sequence
                    return outcome, key_columns
                outcome, changed = self._apply_upload(
                    conn,
                    member,
                    upload_id,
                    mode,
                    description,
                    rows,
                    rejections,
                    protected_keys,
                    received,
                    now,
                )
                first_seq = changed[0].sequence if changed else None
                last_seq = changed[-1].sequence if changed else None
                self._insert_upload_row(
                    conn, member, upload_id, mode, description, received, outcome, now, first_seq, last_seq
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.execute("DROP INDEX IF EXISTS temp.staging_key")
                conn.execute("DELETE FROM staging")
                conn.execute("DELETE FROM replaced")
                conn.execute("DELETE FROM bulk_keys")
                conn.execute("DELETE FROM bulk_keep")
            self._last_seq = outcome.register_sequence
            return outcome, changed

    def _commit_checkpointing_later(self, conn: sqlite3.Connection) -> None:
        """COMMIT without SQLite's automatic checkpoint (durable once the WAL is fsynced), then copy the pages into
        the database file in the background (Checkpointer)."""
        conn.execute("PRAGMA wal_autocheckpoint=0")
        try:
            conn.execute("COMMIT")
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        self._checkpointer.start()

    @staticmethod
    def _insert_upload_row(
        conn: sqlite3.Connection,
        member: str,
        upload_id: str,
        mode: UploadMode,
        description: str,
        received: int,
        outcome: UploadOutcome,
        now: str,
        first_seq: int | None,
        last_seq: int | None,
    ) -> None:
        conn.execute(
            "INSERT INTO uploads (member, upload_id, mode, description, received, accepted, rejected, "
            "first_seq, last_seq, committed_at, result) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                member,
                upload_id,
                mode.name,
                description,
                received,
                outcome.accepted,
                outcome.rejected,
                first_seq,
                last_seq,
                now,
                outcome.to_json(),
            ),
        )

    def _apply_bulk(
        self,
        conn: sqlite3.Connection,
        member: str,
        upload_id: str,
        mode: UploadMode,
        description: str,
        columns: UploadColumns,
        rejections: Sequence[Rejection],
        protected_keys: Sequence[tuple[int, DocumentKey]],
        received: int,
        now: str,
        prepare: Callable[[KeyColumns], None] | None = None,
    ) -> tuple[UploadOutcome, KeyColumns]:
        """The bulk path of commit_upload (inside its transaction): rows in key order, set-based change log.

        Fast case first: when no row cancels, all rows are inserted as new records under a savepoint; the
        unique key index refuses the batch at the first key the register already holds, and then (only then)
        the keys are matched against the records to sort rows into created, updated, unchanged and rejected.
        """
        n = len(columns)
        if n > _BULK_CHUNK and columns.table.column(0).num_chunks > 1:
            # One array per column (the upload arrived in batches of a few thousand rows): every take() below
            # (the writer's chunks, the changes for the index) costs about a third of a take() from many
            # chunks (10M rows: 13 s less in the thread gathering rows for SQLite, whose memory traffic also
            # slowed the inserts on the other core). An upload session has done it already, beside its key sort
            # (columns.key_order_combined); this is for other callers.
            columns = UploadColumns(columns.table.combine_chunks(), columns.order)
        base = self._query_last_seq(conn)
        max_id = self._max_record_id(conn)
        status = columns.column("status").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
        op: np.ndarray | None = None  # per row: 0 unchanged, 1 create, 2 update, 3 other owner, 4 cancels nothing
        matched_ids = np.zeros(n, np.int64)
        all_new: KeyColumns | None = None  # the changes if every row creates a record
        all_created = False  # every row was inserted as a new record (the fast case)
        if n and not (status == CANCELLED).any():
            ahead = _Ahead()
            if prepare is not None and n > _BULK_CHUNK:

                def changes_if_all_new() -> KeyColumns:
                    changes = _changed_key_columns(columns, status, np.arange(n), max_id + 1, base + 1)
                    # Not before a first chunk went in: an upload of keys already held (sent again, a monthly
                    # REPLACE_ALL) usually fails there, and then nothing is prepared for nothing.
                    if ahead.going():
                        prepare(changes)
                    return changes

                ahead.start(changes_if_all_new)
            conn.execute("SAVEPOINT bulk_all_new")
            try:
                self._insert_created(
                    conn, columns.table, columns.positions(), member, now, max_id, base, ahead.settled.set
                )
                op = np.ones(n, np.int8)
                all_created = True
            except sqlite3.IntegrityError:
                ahead.fail()
                conn.execute("ROLLBACK TO bulk_all_new")
            finally:
                if op is not None:
                    all_new = ahead.result()
                else:
                    ahead.discard()
            conn.execute("RELEASE bulk_all_new")
        if op is None:
            # Some rows name records already held: every row is matched, in key order, gathered once.
            columns = UploadColumns(columns.in_key_order())
            op, matched_ids = self._match_keys(conn, columns.table, member, status)
            created_idx = np.flatnonzero(op == 1)
            if len(created_idx):
                self._insert_created(conn, columns.table, created_idx, member, now, max_id, base)
        # In the fast case the row positions and numbers below are n-long ranges (80 MB each at 10M rows, most of
        # their cost the kernel handing out fresh pages): made only if they are used.
        created_rows = None if all_created else np.flatnonzero(op == 1)  # None: every row
        updated_idx = np.zeros(0, np.int64) if all_created else np.flatnonzero(op == 2)
        n_created, n_updated = n if created_rows is None else len(created_rows), len(updated_idx)
        updated_ids = matched_ids[updated_idx]
        updated_seqs = base + n_created + 1 + np.arange(n_updated, dtype=np.int64)
        if n_created:
            conn.execute(  # one row for every record created (schema.py, 6 -> 7)
                "INSERT INTO created_ranges (first_seq, last_seq, first_record_id, actor, upload_id, reason, "
                "changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (base + 1, base + n_created, max_id + 1, member, upload_id, description, now),
            )
        if n_updated:
            self._update_existing(
                conn, columns.table, updated_idx, updated_ids, updated_seqs, member, upload_id, description, now
            )
        next_seq = base + n_created + n_updated
        cancelled = 0
        cancelled_cols: tuple[list[Any], ...] = ([], [], [], [], [])
        if mode == UploadMode.REPLACE_ALL:
            kept_rows = matched_ids[(op == 0) | (op == 2)]
            keep: list[int] = []
            for _, k in protected_keys:
                found = conn.execute(
                    "SELECT record_id FROM records WHERE issuing_state = ? AND number_canonical = ? AND doc_class = ?"
                    " AND owner = ?",
                    (k.issuing_state, k.number, int(k.document_class), member),
                ).fetchone()
                if found:
                    keep.append(found[0])
            conn.executemany(
                "INSERT OR IGNORE INTO bulk_keep (record_id) VALUES (?)",
                itertools.chain(((int(i),) for i in kept_rows), ((i,) for i in keep)),
            )
            conn.execute(
                f"""
                INSERT INTO replaced (record_id, seq)
                SELECT record_id, :next + ROW_NUMBER() OVER (ORDER BY record_id) FROM ({_OWNED}) AS r
                WHERE r.status <> {CANCELLED} AND r.record_id <= :max_id
                  AND r.record_id NOT IN (SELECT record_id FROM bulk_keep)
                """,
                {"next": next_seq, "member": member, "max_id": max_id},
            )
            conn.execute(
                f"UPDATE records SET status = {CANCELLED}, seq = x.seq FROM replaced AS x "
                "WHERE records.record_id = x.record_id"
            )
            cur = conn.execute(
                f"""
                INSERT INTO changes (seq, record_id, op, status, actor, upload_id, reason, changed_at)
                SELECT seq, record_id, 'CANCELLED', {CANCELLED}, ?, ?, ?, ? FROM replaced ORDER BY seq
                """,
                (member, upload_id, "not in REPLACE_ALL upload", now),
            )
            cancelled = cur.rowcount
            if cancelled:
                rows = conn.execute(
                    "SELECT r.record_id, r.issuing_state, r.number_canonical, r.doc_class, r.seq FROM replaced AS x "
                    "JOIN records AS r ON r.record_id = x.record_id ORDER BY x.seq"
                ).fetchall()
                cancelled_cols = tuple(map(list, zip(*rows, strict=True)))  # type: ignore[assignment]
        other_owner, no_record = np.flatnonzero(op == 3), np.flatnonzero(op == 4)
        store_rejections: list[Rejection] = []
        if len(other_owner) or len(no_record):  # the row numbers in key order: a gather of every row
            row_index = columns.column("row_index").to_numpy()
            store_rejections += [Rejection(int(row_index[i]), "key", _STORE_OTHER_OWNER) for i in other_owner]
            store_rejections += [Rejection(int(row_index[i]), "status", _STORE_NO_RECORD) for i in no_record]
        n_unchanged = 0 if all_created else int((op == 0).sum())
        outcome = _upload_outcome(
            upload_id, received, n_created, n_updated, n_unchanged, cancelled, next_seq, rejections, store_rejections
        )
        if all_new is not None and not cancelled:
            return outcome, all_new  # what `prepare` was given
        created_ids = max_id + 1 + np.arange(n_created, dtype=np.int64)
        created_seqs = base + 1 + np.arange(n_created, dtype=np.int64)
        changed_idx = np.concatenate([np.arange(n) if created_rows is None else created_rows, updated_idx])
        ids = np.concatenate([created_ids, updated_ids])
        seqs = np.concatenate([created_seqs, updated_seqs])
        return outcome, _changed_key_columns(columns, status, changed_idx, ids, seqs, cancelled_cols)

    @staticmethod
    def _insert_created(
        conn: sqlite3.Connection,
        t: pa.Table,
        idx: np.ndarray | None,
        member: str,
        now: str,
        max_id: int,
        base: int,
        after_chunk: Callable[[], None] | None = None,
    ) -> None:
        """Insert rows `idx` of `t` (all rows when None), in that order, as new records numbered from max_id and
        base (`after_chunk` is called after each chunk's INSERT). Raises sqlite3.IntegrityError when a key is
        already held."""
        n = t.num_rows if idx is None else len(idx)

        def rows(start: int) -> pa.Table:  # the next chunk (a gather when idx is given: done in the JSON thread)
            if idx is None:
                return t.slice(start, _BULK_CHUNK)
            return t.take(pa.array(idx[start : start + _BULK_CHUNK], pa.int64()))

        names = ["issuing_state", "number"]
        sql_cols = ["issuing_state", "number_canonical", "doc_class"]
        for column, sql in _BULK_DATA_COLUMNS:
            if column in _OPTIONAL_TEXT and (
                t.num_rows == 0 or pc.max(pc.binary_length(t.column(column))).as_py() == 0
            ):
                continue  # empty throughout `t`: the column default ('') is what would be written
            names.append(column)
            sql_cols.append(sql)
        # Each chunk travels as ONE parameter: a JSON array built by Arrow string kernels, which SQLite unpacks
        # with json_each. No Python object per row or per value (executemany bound ~15 values per row from
        # Python objects and cost about a third more CPU per row).
        fields = ", ".join(f"value ->> {i}" for i in range(len(names) + 1))
        status_field = f"value ->> {names.index('status') + 1}"  # JSON rows hold the class after the number
        json_statement = (
            f"INSERT INTO records (record_id, seq, owner, recorded_at, created_status, {', '.join(sql_cols)}) "
            f"SELECT ? + key, ? + key, ?, ?, {status_field}, {fields} FROM json_each(?)"
        )
        lean = len(names) == len(_LEAN_NAMES)  # no optional text anywhere in the upload

        def encode(start: int) -> list[tuple[int, str, tuple[str, ...]]]:
            """The next chunk's INSERTs: (first row within the chunk, statement, its parameters after the
            four the chunk's position gives)."""
            part = rows(start)
            batches = _lean_batches(part) if lean else None
            return batches if batches is not None else [(0, json_statement, (_json_rows(part, names),))]

        def insert(start: int, batches: list[tuple[int, str, tuple[str, ...]]]) -> None:
            for offset, statement, parameters in batches:
                first = start + offset
                conn.execute(statement, (max_id + 1 + first, base + 1 + first, member, now, *parameters))
            if after_chunk is not None:
                after_chunk()

        if n <= _BULK_CHUNK:
            if n:
                insert(0, encode(0))
            return
        # SQLite runs a chunk's INSERT without the GIL, and Arrow's kernels gather the next chunk's rows and build
        # its parameters without it too: overlapped on two cores, they cost little wall time.
        with ThreadPoolExecutor(1, thread_name_prefix="bulk-json") as pool:
            ahead = pool.submit(encode, 0)
            for start in range(0, n, _BULK_CHUNK):
                batches = ahead.result()
                if start + _BULK_CHUNK < n:
                    ahead = pool.submit(encode, start + _BULK_CHUNK)
                insert(start, batches)

    @staticmethod
    def _match_keys(
        conn: sqlite3.Connection, t: pa.Table, member: str, status: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Match the upload's keys against the records: (op per row, matched record id per row)."""
        n = t.num_rows

        def keys() -> Iterator[tuple[Any, ...]]:
            for start in range(0, n, _BULK_CHUNK):
                part = t.slice(start, _BULK_CHUNK)
                yield from zip(
                    range(start, start + part.num_rows),
                    part.column("issuing_state").to_pylist(),
                    part.column("number").to_pylist(),
                    part.column("document_class").to_pylist(),
                    strict=True,
                )

        conn.executemany(
            "INSERT INTO bulk_keys (pos, issuing_state, number_canonical, doc_class) VALUES (?,?,?,?)", keys()
        )
        cur = conn.execute(
            "SELECT k.pos, r.record_id, r.owner, r.number_printed, r.status, r.event_date, r.surname, r.given_names, "
            "r.birth_date, r.nationality, r.expiry_date, r.instructions FROM bulk_keys AS k JOIN records AS r "
            "ON r.issuing_state = k.issuing_state AND r.number_canonical = k.number_canonical "
            "AND r.doc_class = k.doc_class ORDER BY k.pos"
        )
        op = np.where(status == CANCELLED, 4, 1).astype(np.int8)
        matched_ids = np.zeros(n, np.int64)
        fields = [c for c, _ in _BULK_DATA_COLUMNS]
        # In batches: a daily full list matches every row, and millions of fetched rows must not pile up at once.
        while found := cur.fetchmany(_BULK_CHUNK):
            pos = np.fromiter((f[0] for f in found), np.int64, len(found))
            mine = t.take(pa.array(pos)).select(fields)
            ours = list(zip(*(mine.column(c).to_pylist() for c in fields), strict=True))
            for p, f, row in zip(pos.tolist(), found, ours, strict=True):
                matched_ids[p] = f[1]
                if f[2] != member:
                    op[p] = 3
                elif row == f[3:]:
                    op[p] = 0
                else:
                    op[p] = 2
        return op, matched_ids

    @staticmethod
    def _update_existing(
        conn: sqlite3.Connection,
        t: pa.Table,
        idx: np.ndarray,
        ids: np.ndarray,
        seqs: np.ndarray,
        member: str,
        upload_id: str,
        description: str,
        now: str,
    ) -> None:
        fields = [c for c, _ in _BULK_DATA_COLUMNS]
        for start in range(0, len(idx), _BULK_CHUNK):
            part = t.take(pa.array(idx[start : start + _BULK_CHUNK], pa.int64())).select(fields)
            values = list(zip(*(part.column(c).to_pylist() for c in fields), strict=True))
            chunk_seqs = seqs[start : start + _BULK_CHUNK].tolist()
            chunk_ids = ids[start : start + _BULK_CHUNK].tolist()
            conn.executemany(
                "UPDATE records SET number_printed = ?, status = ?, event_date = ?, surname = ?, given_names = ?, "
                "birth_date = ?, nationality = ?, expiry_date = ?, instructions = ?, seq = ? WHERE record_id = ?",
                ((*v, s, i) for v, s, i in zip(values, chunk_seqs, chunk_ids, strict=True)),
            )
            status_at = fields.index("status")
            conn.executemany(
                "INSERT INTO changes (seq, record_id, op, status, actor, upload_id, reason, changed_at) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (
                    (s, i, _CHANGE_OP[v[status_at] == CANCELLED], v[status_at], member, upload_id, description, now)
                    for v, s, i in zip(values, chunk_seqs, chunk_ids, strict=True)
                ),
            )

    def _apply_upload(
        self,
        conn: sqlite3.Connection,
        member: str,
        upload_id: str,
        mode: UploadMode,
        description: str,
        rows: Sequence[tuple[int, RecordData]],
        rejections: Sequence[Rejection],
        protected_keys: Sequence[tuple[int, DocumentKey]],
        received: int,
        now: str,
    ) -> tuple[UploadOutcome, list[StoredRecord]]:
        base = self._query_last_seq(conn)
        conn.executemany(
            "INSERT INTO staging (row_index, issuing_state, number_canonical, doc_class, number_printed, status, "
            "event_date, surname, given_names, birth_date, nationality, expiry_date, instructions) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                (
                    i,
                    r.key.issuing_state,
                    r.key.number,
                    int(r.key.document_class),
                    r.number_printed,
                    int(r.status),
                    r.event_date,
                    r.holder.surname,
                    r.holder.given_names,
                    r.holder.birth_date,
                    r.holder.nationality,
                    r.holder.expiry_date,
                    r.instructions,
                )
                for i, r in rows
            ),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO staging (row_index, issuing_state, number_canonical, doc_class, kind) "
            "VALUES (?,?,?,?,1)",
            ((i, k.issuing_state, k.number, int(k.document_class)) for i, k in protected_keys),
        )
        conn.execute(
            """
            UPDATE staging SET record_id = r.record_id, existing_owner = r.owner, existing_recorded_at = r.recorded_at,
                op = 2 * (r.number_printed IS NOT staging.number_printed OR r.status IS NOT staging.status
                    OR r.event_date IS NOT staging.event_date OR r.surname IS NOT staging.surname
                    OR r.given_names IS NOT staging.given_names OR r.birth_date IS NOT staging.birth_date
                    OR r.nationality IS NOT staging.nationality OR r.expiry_date IS NOT staging.expiry_date
                    OR r.instructions IS NOT staging.instructions)
            FROM records AS r
            WHERE r.issuing_state = staging.issuing_state AND r.number_canonical = staging.number_canonical
              AND r.doc_class = staging.doc_class
            """
        )
        store_rejections = [
            Rejection(i, "key", "the document is recorded by another member; only its owner may change it")
            for (i,) in conn.execute(
                "SELECT row_index FROM staging WHERE kind = 0 AND existing_owner IS NOT NULL AND existing_owner <> ?",
                (member,),
            )
        ]
        store_rejections += [
            Rejection(i, "status", "CANCELLED given for a document that has no record to cancel")
            for (i,) in conn.execute(
                f"SELECT row_index FROM staging WHERE kind = 0 AND record_id IS NULL AND status = {CANCELLED}"
            )
        ]
        if store_rejections:
            conn.executemany(
                "UPDATE staging SET kind = 2 WHERE row_index = ?", ((r.row_index,) for r in store_rejections)
            )
        conn.execute(
            """
            UPDATE staging SET seq = ? + x.rn,
                record_id = CASE WHEN staging.op = 1 THEN ? + x.created ELSE staging.record_id END
            FROM (SELECT row_index AS ri, ROW_NUMBER() OVER (ORDER BY row_index) AS rn,
                         SUM(op = 1) OVER (ORDER BY row_index) AS created
                  FROM staging WHERE kind = 0 AND op IN (1, 2)) AS x
            WHERE staging.row_index = x.ri
            """,
            (base, self._max_record_id(conn)),
        )
        conn.execute(
            """
            INSERT INTO records (record_id, issuing_state, number_canonical, doc_class, number_printed, owner,
                status, event_date, surname, given_names, birth_date, nationality, expiry_date, instructions,
                recorded_at, seq)
            SELECT record_id, issuing_state, number_canonical, doc_class, number_printed, ?, status, event_date,
                surname, given_names, birth_date, nationality, expiry_date, instructions, ?, seq
            FROM staging WHERE kind = 0 AND op = 1 ORDER BY row_index
            """,
            (member, now),
        )
        conn.execute(
            """
            UPDATE records SET number_printed = s.number_printed, status = s.status, event_date = s.event_date,
                surname = s.surname, given_names = s.given_names, birth_date = s.birth_date,
                nationality = s.nationality, expiry_date = s.expiry_date, instructions = s.instructions,
                seq = s.seq
            FROM staging AS s WHERE s.kind = 0 AND s.op = 2 AND records.record_id = s.record_id
            """
        )
        conn.execute(
            f"""
            INSERT INTO changes (seq, record_id, op, status, actor, upload_id, reason, changed_at)
            SELECT seq, record_id,
                CASE WHEN op = 1 THEN 'CREATED' WHEN status = {CANCELLED} THEN 'CANCELLED' ELSE 'UPDATED' END,
                status, ?, ?, ?, ?
            FROM staging WHERE kind = 0 AND op IN (1, 2)
            """,
            (member, upload_id, description, now),
        )
        counts = dict(conn.execute("SELECT op, COUNT(*) FROM staging WHERE kind = 0 GROUP BY op").fetchall())
        created, updated, unchanged = counts.get(1, 0), counts.get(2, 0), counts.get(0, 0)
        next_seq = base + created + updated
        cancelled = 0
        if mode == UploadMode.REPLACE_ALL:
            # Built after the bulk insert (cheaper than maintaining it row by row); dropped after the upload.
            conn.execute("CREATE INDEX temp.staging_key ON staging (issuing_state, number_canonical, doc_class)")
            conn.execute(
                f"""
                INSERT INTO replaced (record_id, seq)
                SELECT record_id, :next + ROW_NUMBER() OVER (ORDER BY record_id) FROM ({_OWNED}) AS r
                WHERE r.status <> {CANCELLED} AND NOT EXISTS (
                    SELECT 1 FROM staging AS s WHERE s.kind IN (0, 1) AND s.issuing_state = r.issuing_state
                      AND s.number_canonical = r.number_canonical AND s.doc_class = r.doc_class)
                """,
                {"next": next_seq, "member": member},
            )
            conn.execute(
                f"UPDATE records SET status = {CANCELLED}, seq = x.seq FROM replaced AS x "
                "WHERE records.record_id = x.record_id"
            )
            cur = conn.execute(
                f"""
                INSERT INTO changes (seq, record_id, op, status, actor, upload_id, reason, changed_at)
                SELECT seq, record_id, 'CANCELLED', {CANCELLED}, ?, ?, ?, ? FROM replaced
                """,
                (member, upload_id, "not in REPLACE_ALL upload", now),
            )
            cancelled = cur.rowcount
        # The changed records as they now stand, in sequence order: built from the rows in hand rather than
        # read back; only records cancelled by REPLACE_ALL are read (their data was not in the upload).
        data_of = dict(rows)
        changed = [
            StoredRecord(rid, data_of[i], member, recorded_at or now, seq)
            for i, rid, seq, recorded_at in conn.execute(
                "SELECT row_index, record_id, seq, existing_recorded_at FROM staging "
                "WHERE kind = 0 AND op IN (1, 2) ORDER BY seq"
            )
        ]
        if cancelled:
            changed += [
                _row_to_record(r)
                for r in conn.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM records WHERE record_id IN (SELECT record_id FROM replaced) "
                    "ORDER BY seq"
                )
            ]
        outcome = _upload_outcome(
            upload_id, received, created, updated, unchanged, cancelled, next_seq, rejections, store_rejections
        )
        return outcome, changed

    def cancel(self, member: str, keys: Sequence[DocumentKey], reason: str) -> CancelOutcome:
        """Cancel records the member owns; all or nothing (unknown key or another owner: nothing changes)."""
        now = utc_now()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                targets: dict[int, StoredRecord] = {}
                for i, key in enumerate(keys):
                    record = self._resolve(conn, key, f"keys[{i}]")
                    if record.owner != member:
                        raise NotOwner("the record is owned by another member", field=f"keys[{i}]")
                    targets[record.record_id] = record
                seq = self._query_last_seq(conn)
                already = 0
                changed_ids: list[int] = []
                for record in targets.values():
                    if record.data.status == RecordStatus.CANCELLED:
                        already += 1
                        continue
                    seq += 1
                    conn.execute(
                        f"UPDATE records SET status = {CANCELLED}, seq = ? WHERE record_id = ?",
                        (seq, record.record_id),
                    )
                    conn.execute(
                        "INSERT INTO changes (seq, record_id, op, status, actor, reason, changed_at) "
                        "VALUES (?, ?, 'CANCELLED', ?, ?, ?, ?)",
                        (seq, record.record_id, CANCELLED, member, reason, now),
                    )
                    changed_ids.append(record.record_id)
                changed = self._records_by_id(conn, changed_ids)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._last_seq = seq
            return CancelOutcome(len(changed_ids), already, seq, tuple(changed))

    def write_audit(self, calls: Sequence[AuditItem], conn: sqlite3.Connection | None = None) -> tuple[int, int]:
        """Append check calls and their documents in one transaction (the audit writer's own connection).

        Each item is (call, documents) or (call, documents, packed plain CLEARs). Call ids are final only here:
        each call gets the next id after the highest in the file, in commit order, so the ids have no gaps and a
        call committed later always has a higher id (a reader that has seen call N never later finds a new call
        below it, which is what makes WatchHits cursors gap-free). Callers number calls provisionally; when a
        provisional id is already right (the usual case) its rows are inserted as they are, otherwise the call
        and its rows are renumbered. Query ids do not depend on call ids.
        Returns (calls renumbered, next free call id).
        """
        c = conn or self._conn
        # Packed before the write lock is taken (and on the caller's thread: the audit writer's).
        packed = [_pack_clear(item[2]) if len(item) > 2 and item[2] is not None else None for item in calls]
        c.execute("BEGIN IMMEDIATE")
        try:
            next_id = int(c.execute("SELECT COALESCE(MAX(call_id), 0) FROM audit_calls").fetchone()[0]) + 1
            final: list[AuditCall] = []
            rows: list[Sequence[Any]] = []
            clear_rows: list[tuple[int, int, str]] = []
            renumbered = 0
            for item, pack in zip(calls, packed, strict=True):
                call, docs = item[0], item[1]
                if call.call_id != next_id:
                    renumbered += 1
                    call = call._replace(call_id=next_id)
                    rows.extend([(next_id, *d[1:]) for d in docs])  # plain tuples: a manifest's found rows are many
                else:
                    rows.extend(docs)
                final.append(call)
                if pack is not None and pack[0]:
                    clear_rows.append((next_id, *pack))
                next_id += 1
            _insert_rows(c, _INSERT_AUDIT_CALLS, final)
            _insert_rows(c, _INSERT_AUDIT, rows)
            _insert_rows(c, _INSERT_AUDIT_CLEAR, clear_rows)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return renumbered, next_id

    def close(self) -> None:
        """Close every connection this store opened (the write connection, each thread's reader, a running
        background checkpoint's)."""
        with self._lock:  # commits start background checkpoints holding this lock: none starts after the wait
            self._checkpointer.wait()
            self._readers.close()
            self._conn.close()

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _resolve(conn: sqlite3.Connection, key: DocumentKey, field: str) -> StoredRecord:
        if key.document_class == DocumentClass.UNSPECIFIED:
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE issuing_state = ? AND number_canonical = ?",
                (key.issuing_state, key.number),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records "
                "WHERE issuing_state = ? AND number_canonical = ? AND doc_class = ?",
                (key.issuing_state, key.number, int(key.document_class)),
            ).fetchall()
        if not rows:
            raise RecordNotFound(f"no record for {key.issuing_state} {key.number}", field=field)
        if len(rows) > 1:
            raise AmbiguousKey(
                f"{key.issuing_state} {key.number} is recorded under several document classes; give the class",
                field=f"{field}.document_class",
            )
        return _row_to_record(rows[0])

    @staticmethod
    def _max_record_id(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COALESCE(MAX(record_id), 0) FROM records").fetchone()[0])

    @staticmethod
    def _records_by_id(conn: sqlite3.Connection, ids: Sequence[int]) -> list[StoredRecord]:
        if not ids:
            return []
        out: list[StoredRecord] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out += map(
                _row_to_record,
                conn.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE record_id IN ({marks})", chunk),
            )
        out.sort(key=lambda r: r.sequence)
        return out

    # -- replication: the change feed (upstream side) and applying it (mirror side) ---------------------

    def feed_view(self) -> FeedView:
        """A consistent read-only view for the change feed: one read transaction on a connection of its own, so
        that every page a subscriber gets from it shows the register at the same sequence (`FeedView.head`),
        whatever commits meanwhile. Use it as a context manager; it is closed on exit."""
        return FeedView(side_connection(self.path))

    def replica_state(self) -> ReplicaState | None:
        """This database's position in the change feed of the upstream it mirrors, or None when it mirrors
        nothing (an upstream, or a new mirror). On a mirror the store's last sequence becomes the position at
        which it is consistent (a mirror keeps no change log of its own)."""
        row = (
            self._reader()
            .execute("SELECT upstream, resume_seq, through_seq, contact_at FROM replication WHERE id = 1")
            .fetchone()
        )
        if row is None:
            return None
        state = ReplicaState(row[0], int(row[1]), int(row[2]), row[3])
        self._last_seq = state.through_sequence
        return state

    def apply_replicated(
        self, upstream: str, rows: Sequence[Sequence[Any]], resume: int, through: int, contact_at: str = ""
    ) -> None:
        """Store records replicated from `upstream` (rows in `RECORD_FIELDS` order, each a record's current
        state with the upstream's record id and sequence) and the mirror's new position, in one durable
        transaction. `through` (0: unchanged) is the sequence at which the register now equals the upstream's;
        `resume` the highest sequence stored."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT_RECORD, rows)
                self._save_replica_state(conn, upstream, resume, through, contact_at)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if through:
                self._last_seq = through

    def begin_snapshot(self) -> None:
        """Start receiving a snapshot: forget the record ids of any snapshot begun before."""
        with self._lock:
            self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS snapshot_ids (record_id INTEGER PRIMARY KEY)")
            self._conn.execute("DELETE FROM snapshot_ids")

    def apply_snapshot_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Store one batch of a snapshot (durably, position unchanged: a snapshot interrupted half-way is sent
        again whole) and remember its record ids for `finish_snapshot`."""
        with self._lock:
            conn = self._conn
            conn.executemany("INSERT OR IGNORE INTO snapshot_ids (record_id) VALUES (?)", ((r[0],) for r in rows))
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT_RECORD, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def finish_snapshot(self, upstream: str, sequence: int, contact_at: str = "") -> list[StoredRecord]:
        """Complete a snapshot at `sequence`: the records held here that were not in it (cancelled upstream since
        this mirror last heard) are deleted, and the position becomes `sequence`. Returns the deleted records
        that could still hit, marked CANCELLED, for the index to drop."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                gone = [
                    _row_to_record(r)
                    for r in conn.execute(
                        f"SELECT {_RECORD_COLUMNS} FROM records WHERE status <> {CANCELLED} "
                        "AND record_id NOT IN (SELECT record_id FROM snapshot_ids)"
                    )
                ]
                conn.execute("DELETE FROM records WHERE record_id NOT IN (SELECT record_id FROM snapshot_ids)")
                self._save_replica_state(conn, upstream, sequence, sequence, contact_at)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.execute("DELETE FROM snapshot_ids")
            self._last_seq = sequence
        return [r._replace(data=r.data._replace(status=RecordStatus.CANCELLED)) for r in gone]

    def record_contact(self, upstream: str, resume: int, through: int, contact_at: str) -> None:
        """Remember when the mirror last knew it held every upstream change (a heartbeat), durably."""
        with self._lock:
            self._save_replica_state(self._conn, upstream, resume, through, contact_at)

    def content_digest(self) -> tuple[int, str]:
        """(number of active records, SHA-256 over them in record id order, every column): two registers with
        the same digest answer every check the same way. Read in one transaction."""
        import hashlib

        digest = hashlib.sha256()
        count = 0
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            cur = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM records WHERE status <> {CANCELLED} ORDER BY record_id")
            while rows := cur.fetchmany(10_000):
                count += len(rows)
                for row in rows:
                    digest.update(repr(tuple(row)).encode())
                    digest.update(b"\n")
        finally:
            conn.execute("COMMIT")
        return count, digest.hexdigest()

    @staticmethod
    def _save_replica_state(
        conn: sqlite3.Connection, upstream: str, resume: int, through: int, contact_at: str
    ) -> None:
        conn.execute(
            "INSERT INTO replication (id, upstream, resume_seq, through_seq, contact_at, updated_at) "
            "VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET upstream = excluded.upstream, "
            "resume_seq = excluded.resume_seq, through_seq = MAX(through_seq, excluded.through_seq), "
            "contact_at = CASE WHEN excluded.contact_at <> '' THEN excluded.contact_at ELSE contact_at END, "
            "updated_at = excluded.updated_at",
            (upstream, resume, through, contact_at, utc_now()),
        )


_JSON_ESCAPES = (
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\t", "\\t"),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\f", "\\f"),
    ("\v", "\\u000b"),
)
_JSON_SPECIAL = '[\\\\"\\x00-\\x1f]'


def _json_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each value as a JSON string literal (quoted, escaped)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pc.any(pc.match_substring_regex(column, _JSON_SPECIAL)).as_py():
        for raw, escaped in _JSON_ESCAPES:
            column = pc.replace_substring(column, raw, escaped)
        if pc.any(pc.match_substring_regex(column, "[\\x00-\\x1f]")).as_py():
            raise ValueError("control character in validated upload text")  # validation lets none through
    return pc.binary_join_element_wise('"', column, '"', "")


def _json_rows(part: pa.Table, names: Sequence[str]) -> str:
    """Rows of `part` as a JSON array of arrays: [state, number, class, <names[2:]>...] per row (integers for
    class and status, strings for the rest), built with Arrow string kernels and read out of the result's data
    buffer in one piece."""
    values = [_json_text(part.column("issuing_state")), _json_text(part.column("number"))]
    values.append(pc.cast(part.column("document_class"), pa.string()).combine_chunks())
    for name in names[2:]:
        col = part.column(name)
        values.append(pc.cast(col, pa.string()).combine_chunks() if name == "status" else _json_text(col))
    rows = pc.binary_join_element_wise("[", pc.binary_join_element_wise(*values, ","), "]", "")
    return _json_arrays(rows, [0, len(rows)])[0]


def _json_arrays(items: pa.Array, starts: Sequence[int]) -> list[str]:
    """For each run [a, b) between successive `starts`, the JSON array of the JSON texts `items[a:b]`, read out of
    one Arrow data buffer (no Python object per item)."""
    joined = pc.binary_join_element_wise(items, ",", "")  # each item followed by a comma
    offsets = utf8_offsets(joined)
    data = joined.buffers()[2].to_pybytes()
    return [f"[{data[offsets[a] : offsets[b] - 1].decode()}]" for a, b in itertools.pairwise(starts)]


# A lean row (uploads without names, dates of birth, nationality, expiry or instructions: the usual list of lost
# and stolen numbers) is one JSON string per record read with substr(): class digit, status digit, event date
# (10 characters), then the canonical number; or, when a printed number differs from its canonical one in the
# chunk, the printed number's length in 3 digits and the printed number before the canonical one. The issuing
# state is a parameter of each run of rows that share it (rows come in key order: a few runs per chunk).
# SQLite 3.40's `->>` parses a row's whole JSON array again for every field it reads: six fields cost about
# 2 µs a row, the substr() reads about half of that (1,000,000 rows in key order, all indexes: 2.8-3.3 s of
# inserts -> 2.1-2.3 s).
_LEAN_NAMES = ("issuing_state", "number", "number_printed", "status", "event_date")
_LEAN_PREFIX = (
    "INSERT INTO records (record_id, seq, owner, recorded_at, issuing_state, created_status, doc_class, status, "
    "event_date, number_printed, number_canonical) SELECT ? + key, ? + key, ?, ?, ?, substr(value, 2, 1) + 0, "
    "substr(value, 1, 1) + 0, substr(value, 2, 1) + 0, substr(value, 3, 10), "
)
_LEAN_SAME = _LEAN_PREFIX + "substr(value, 13), substr(value, 13) FROM json_each(?)"
_LEAN_PRINTED = (
    _LEAN_PREFIX + "substr(value, 16, substr(value, 13, 3)), substr(value, 16 + substr(value, 13, 3)) FROM json_each(?)"
)


def _lean_batches(part: pa.Table) -> list[tuple[int, str, tuple[str, ...]]] | None:
    """The INSERTs of `part`'s rows in lean form (see _LEAN_NAMES): (first row, statement, (state, JSON array
    of row strings)) per run of one issuing state; None when a row does not fit the form (a class or status
    above 9, an event date not of 10 characters, a printed number of 1,000 characters or more)."""
    if part.num_rows == 0:
        return []
    digits = []
    for name in ("document_class", "status"):
        values = part.column(name).to_numpy()
        if values.min() < 0 or values.max() > 9:
            return None
        digits.append(pc.cast(part.column(name), pa.string()).combine_chunks())
    event = part.column("event_date").combine_chunks()
    if pc.min_max(pc.utf8_length(event)).as_py() != {"min": 10, "max": 10}:
        return None
    number = part.column("number").combine_chunks()
    printed = part.column("number_printed").combine_chunks()
    pieces = [*digits, event]
    statement = _LEAN_SAME
    if not pc.all(pc.equal(number, printed)).as_py():
        length = pc.utf8_length(printed)
        if pc.max(length).as_py() > 999:
            return None
        pieces += [pc.utf8_lpad(pc.cast(length, pa.string()), 3, "0"), printed]
        statement = _LEAN_PRINTED
    rows = _json_text(pc.binary_join_element_wise(*pieces, number, ""))
    states = part.column("issuing_state").combine_chunks().dictionary_encode()
    codes = states.indices.to_numpy(zero_copy_only=False)
    names = states.dictionary.to_pylist()
    starts = np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1, [len(codes)]]).tolist()
    payloads = _json_arrays(rows, starts)
    return [(a, statement, (names[codes[a]], payload)) for a, payload in zip(starts[:-1], payloads, strict=True)]


def _changed_key_columns(
    columns: UploadColumns,
    status: np.ndarray,
    changed_idx: np.ndarray,
    record_ids: np.ndarray | int,
    sequences: np.ndarray | int,
    cancelled: tuple[list[Any], ...] = ([], [], [], [], []),
) -> KeyColumns:
    """The changes of a bulk upload for the index: rows `changed_idx` (positions in key order) with their record
    ids and sequences (or the first of consecutive ones), then the records a REPLACE_ALL `cancelled` (columns:
    ids, states, numbers, classes, sequences)."""
    n = len(changed_idx)
    if not isinstance(record_ids, np.ndarray):
        record_ids = record_ids + np.arange(n, dtype=np.int64)
    if not isinstance(sequences, np.ndarray):
        sequences = sequences + np.arange(n, dtype=np.int64)
    t = columns.table
    take = pa.array(columns.positions(changed_idx), pa.int64())
    c_ids, c_states, c_numbers, c_classes, c_seqs = cancelled
    return KeyColumns(
        record_id=np.concatenate([record_ids, np.asarray(c_ids, np.int64)]),
        issuing_state=_with_strings(t.column("issuing_state").take(take), c_states),
        number=_with_strings(t.column("number").take(take), c_numbers),
        document_class=np.concatenate(
            [t.column("document_class").take(take).to_numpy(), np.asarray(c_classes, np.int8)]
        ).astype(np.int8),
        status=np.concatenate([status[changed_idx], np.full(len(c_ids), CANCELLED, np.int64)]).astype(np.int8),
        sequence=np.concatenate([sequences, np.asarray(c_seqs, np.int64)]),
    )


class _Ahead:
    """Work started in a thread of its own beside a bulk upload's inserts (nothing when never started)."""

    def __init__(self) -> None:
        self.settled = threading.Event()  # set once the inserts are under way (a first chunk went in) or failed
        self._failed = False
        self._pool: ThreadPoolExecutor | None = None
        self._future: Any = None

    def fail(self) -> None:
        """The inserts failed: the work may stop early."""
        self._failed = True
        self.settled.set()

    def going(self) -> bool:
        """Wait until the inserts are under way or have failed; True in the first case."""
        self.settled.wait()
        return not self._failed

    def start(self, work: Callable[[], KeyColumns]) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bulk-ahead")
        self._future = self._pool.submit(work)

    def result(self) -> KeyColumns | None:
        """Wait for the work; its result (None when never started or when it failed: logged, and the caller
        then does the work itself)."""
        if self._pool is None:
            return None
        try:
            return self._future.result()
        except Exception:
            log.exception("preparing a bulk upload's changes ahead failed; they are worked out after the inserts")
            return None
        finally:
            self._pool.shutdown()
            self._pool = None

    def discard(self) -> None:
        """Wait for the work (it stops early once told the inserts failed) and drop its result."""
        self.fail()
        self.result()


def _with_strings(taken: pa.ChunkedArray, more: Sequence[str]) -> pa.Array:
    """A text column's values taken for the index, then `more` of them: one Arrow array."""
    return pa.chunked_array([*taken.chunks, pa.array(list(more), taken.type)], taken.type).combine_chunks()


def _no_key_columns() -> KeyColumns:
    empty = np.zeros(0, np.int64)
    return KeyColumns(empty, [], [], empty.astype(np.int8), empty.astype(np.int8), empty)


_INSERT_AUDIT_CALLS = (
    "INSERT INTO audit_calls (call_id, call_uid, at, caller_member, caller_role, peer, register_seq, documents, "
    "single) VALUES "
)
_INSERT_AUDIT_CLEAR = "INSERT INTO audit_clear (call_id, count, documents) VALUES "
_INSERT_AUDIT = (
    "INSERT INTO audit (call_id, position, query_kind, issuing_state, document_number, verdict, matched_records, "
    "subject_id) VALUES "
)
# Rows per INSERT of `_insert_rows` at most: 9 parameters a row stay under SQLite's 32,766 parameters a statement.
_ROWS_PER_INSERT = 2048


def _insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> None:
    """Insert `rows` (each as wide as the column list `insert` ends with) with multi-row VALUES statements.

    One statement of many rows runs without the interpreter lock, where executemany hands the lock back and forth
    for every row and stalls the checks being answered; it also costs SQLite less than the JSON text a
    `json_each` statement parses: on 2026-12-07 (2 cores, WAL, 40 commits of 1,160 audit rows) 1.0-1.1 µs a row
    against 2.7 for json.dumps and json_each (2.0-2.2 for executemany). Statements have a power of two rows each
    (2,048 down to 1, by the binary digits of what is left), so that a connection prepares at most 12 texts per
    table and its statement cache (128 by default) keeps them.
    """
    if not rows:
        return
    width = len(rows[0])
    row_marks = "(" + ",".join("?" * width) + ")"
    start, size = 0, _ROWS_PER_INSERT
    while start < len(rows):
        while size > len(rows) - start:
            size >>= 1
        chunk = rows[start : start + size]
        conn.execute(insert + ",".join([row_marks] * size), list(itertools.chain.from_iterable(chunk)))
        start += size


def _upload_outcome(
    upload_id: str,
    received: int,
    created: int,
    updated: int,
    unchanged: int,
    cancelled: int,
    next_seq: int,
    rejections: Sequence[Rejection],
    store_rejections: Sequence[Rejection],
) -> UploadOutcome:
    """The outcome of an upload written from `next_seq` on (both upload paths): the validator's and the store's
    rejections in row order; the cancels of REPLACE_ALL come after the upload's own changes."""
    return UploadOutcome(
        upload_id=upload_id,
        received=received,
        accepted=created + updated + unchanged,
        created=created,
        updated=updated,
        unchanged=unchanged,
        cancelled=cancelled,
        register_sequence=next_seq + cancelled,
        rejections=tuple(sorted([*rejections, *store_rejections], key=lambda r: r.row_index)),
    )


# One audit row as list_audit returns it, from `audit_calls AS c JOIN audit AS a`: call id, position, then the
# AuditRow fields.
_AUDIT_COLUMNS = (
    "a.call_id, a.position, CASE WHEN c.single THEN c.call_uid ELSE c.call_uid || '-' || a.position END, c.at, "
    "c.caller_member, c.caller_role, c.peer, a.query_kind, a.issuing_state, a.document_number, a.verdict, "
    "a.matched_records, c.register_seq, a.subject_id"
)
# The same columns for each packed plain CLEAR (as in the audit_log view).
_PACKED_FROM = "audit_calls AS c JOIN audit_clear AS k ON k.call_id = c.call_id, json_each(k.documents) AS d"
_PACKED_COLUMNS = (
    "k.call_id, d.value ->> 0, CASE WHEN c.single THEN c.call_uid ELSE c.call_uid || '-' || (d.value ->> 0) END, "
    "c.at, c.caller_member, c.caller_role, c.peer, 'typed', d.value ->> 1, d.value ->> 2, 'CLEAR', '', "
    "c.register_seq, ''"
)
_AUDIT_CALLS_NEWEST = "SELECT call_id, documents FROM audit_calls ORDER BY call_id DESC"
_UNBOUNDED = 1 << 62  # a negative limit means no limit (as SQLite's LIMIT -1)


def _call_window(calls: sqlite3.Cursor, wanted: int, first: int, skipped: int = 0) -> tuple[int | None, bool]:
    """Walk `calls` (call id, documents) until they hold `wanted` documents; returns (last call id taken, or None
    when there is none, and whether the calls ran out first). The call `first` counts `skipped` fewer documents
    (those before a page cursor). Only the calls walked are read from the file."""
    last, total = None, 0
    try:
        for call_id, documents in calls:
            last = call_id
            total += max(0, documents - skipped) if call_id == first else documents
            if total >= wanted:
                return last, False
        return last, True
    finally:
        calls.close()


class _RowHeads:
    """The text that starts a packed document after the previous one, `"],[<position>,"`, for every position
    below a bound (grown on demand): looking the heads up by position replaces formatting an integer per document
    in Python. Kept as Python strings (to join with lists) and as an Arrow array (to take with Arrow columns)."""

    LIMIT = 1 << 20  # positions beyond this (never seen: a call holds at most max_queries_per_call documents)
    # are packed by json.dumps rather than kept as heads

    def __init__(self) -> None:
        empty = pa.array([], pa.string())
        self._tables: tuple[np.ndarray, pa.Array, pa.Array] = (np.empty(0, dtype=object), empty, empty)

    def _for(self, positions: np.ndarray) -> tuple[np.ndarray, pa.Array, pa.Array]:
        tables = self._tables
        top = int(positions[-1]) + 1
        if top > len(tables[0]):
            size = min(max(top, 2 * len(tables[0]), 16_384), self.LIMIT)
            heads = [f'"],[{p},"' for p in range(size)]
            tables = (np.array(heads, dtype=object), pa.array(heads, pa.string()), pa.array(['","'] * size))
            self._tables = tables  # replaced whole: a concurrent reader sees the old tables or the new ones
        return tables

    def strings(self, positions: np.ndarray) -> list[str]:
        """Heads of ascending, non-negative `positions` below LIMIT, as Python strings."""
        return self._for(positions)[0][positions].tolist()

    def arrow(self, positions: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """The same as an Arrow string array, and as many separators `","` (ascending positions: n <= top)."""
        _, heads, separators = self._for(positions)
        n = len(positions)
        # Ascending distinct positions ending at n - 1 are 0 .. n - 1 (a manifest whose every document is a plain
        # CLEAR, the common case): their heads are the first n, a slice, no copy.
        at = heads.slice(0, n) if int(positions[-1]) == n - 1 else heads.take(pa.array(positions))
        return at, separators.slice(0, n)


_ROW_HEADS = _RowHeads()
_ROW_QUOTES = 4  # quotes in a packed document's fixed pieces (its head's two, two around the separator)


def _pack_clear(clear: AuditClear) -> tuple[int, str]:
    """(number of documents, `audit_clear.documents` text) of a call's packed plain CLEARs.

    The JSON array of [position, state, number] is assembled by interleaving the values as they are with fixed
    pieces, in C: list slicing and str.join for Python strings, Arrow `take` for Arrow columns (about 0.05 ms for
    1,000 documents either way, against 0.3 ms for json.dumps). That is valid JSON only when no value needs
    escaping, which one pass over the text checks (ASCII, no backslash, no control character, exactly the quotes
    the pieces put there); otherwise, never for canonical values, json.dumps packs them.
    """
    positions = np.asarray(clear.positions, dtype=np.int64)
    states, numbers = clear.states, clear.numbers
    n = len(positions)
    if len(states) != n or len(numbers) != n:
        raise ValueError(f"packed CLEARs: {n} positions, {len(states)} states, {len(numbers)} numbers")
    if n and (positions[0] < 0 or (n > 1 and not bool((positions[1:] > positions[:-1]).all()))):
        raise ValueError("packed CLEARs: positions must be non-negative and ascending")
    arrow = isinstance(states, pa.Array | pa.ChunkedArray) and isinstance(numbers, pa.Array | pa.ChunkedArray)
    if n and positions[-1] < _RowHeads.LIMIT:
        if arrow:
            text = _joined_arrow(positions, _arrow_text(states), _arrow_text(numbers))  # type: ignore[arg-type]
        else:
            text = _joined_strings(positions, _python_text(states), _python_text(numbers))
        if text is not None:
            return n, text
    rows = [[p, s, x] for p, s, x in zip(positions.tolist(), _python_text(states), _python_text(numbers), strict=True)]
    return n, json.dumps(rows, ensure_ascii=False)


def _python_text(values: Sequence[str] | pa.Array | pa.ChunkedArray) -> Sequence[str]:
    return values.to_pylist() if isinstance(values, pa.Array | pa.ChunkedArray) else values


def _arrow_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One chunk of utf8 (int32 offsets), whatever string type and chunking the column came in."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type != pa.string():
        values = values.cast(pa.string())
    if values.null_count:
        raise ValueError("packed CLEARs: a state or number is null")
    return values


def _joined_strings(positions: np.ndarray, states: Sequence[str], numbers: Sequence[str]) -> str | None:
    """The packed text from Python strings, or None when a value would need escaping."""
    n = len(positions)
    parts: list[str | None] = [None] * (4 * n)
    parts[0::4] = _ROW_HEADS.strings(positions)
    parts[1::4] = states
    parts[2::4] = ['","'] * n
    parts[3::4] = numbers
    text = "[" + "".join(parts)[3:] + '"]]'  # type: ignore[arg-type]  # every slot is filled above
    # The first head lost one quote to the slice, and the closing piece brings one.
    plain = text.isascii() and text.count('"') == _ROW_QUOTES * n and "\\" not in text
    return text if plain and np.frombuffer(text.encode("ascii"), np.uint8).min() >= 0x20 else None


@functools.lru_cache(maxsize=64)
def _interleaved(n: int) -> pa.Array:
    """0, n, 2n, 3n, 1, n + 1, ...: the order of rows in four concatenated columns of n rows each, row by row
    (built once for each of the few manifest sizes a deployment's callers send)."""
    return pa.array(np.arange(4 * n, dtype=np.int64).reshape(4, n).T.ravel())


def _joined_arrow(positions: np.ndarray, states: pa.Array, numbers: pa.Array) -> str | None:
    """The packed text from Arrow columns, or None when a value would need escaping: the heads, states,
    separators and numbers are concatenated into one array, taken in row order, and the taken array's data
    buffer is the text."""
    n = len(positions)
    heads, separators = _ROW_HEADS.arrow(positions)
    pieces = pa.concat_arrays([heads, states, separators, numbers])
    rows = pieces.take(_interleaved(n))
    offsets = utf8_offsets(rows)
    data = np.frombuffer(rows.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    if data.min() < 0x20 or data.max() >= 0x80 or np.count_nonzero(data == 0x22) != _ROW_QUOTES * n:
        return None
    if np.count_nonzero(data == 0x5C):  # backslash
        return None
    return "[" + data[3:].tobytes().decode("ascii") + '"]]'


_CLASS_OF = {int(c): c for c in DocumentClass}
_STATUS_OF = {int(s): s for s in RecordStatus}
_NO_HOLDER = Holder()


_new = tuple.__new__  # a NamedTuple built from a tuple of all its fields, without its Python-level __new__


def _row_to_record(row: Sequence[Any]) -> StoredRecord:
    # Every record a check finds passes here, and builds four NamedTuples: through `tuple.__new__` with every field
    # given (as `NamedTuple._make` does, without its length check), each costs less than half of the class call,
    # whose generated `__new__` is a Python function (2026-12-07: about 175 against 400 ns).
    (rid, state, number, cls, printed, owner, status, event, sur, given, birth, nat, exp, instr, at, seq) = row
    holder = _new(Holder, (sur, given, birth, nat, exp)) if (sur or given or birth or nat or exp) else _NO_HOLDER
    key = _new(DocumentKey, (state, number, _CLASS_OF[cls]))
    data = _new(RecordData, (key, printed, _STATUS_OF[status], event, holder, instr))
    return _new(StoredRecord, (rid, data, owner, at, seq))


# -- replication ------------------------------------------------------------------------------------------

# The columns of a record row as the store reads and writes it (and as the change feed carries it).
RECORD_FIELDS: tuple[str, ...] = tuple(name.strip() for name in _RECORD_COLUMNS.split(","))

_RECORD_COLUMNS_OF_R = ", ".join(f"r.{name}" for name in RECORD_FIELDS)  # the same, of a table aliased `r`


def _changed_after(columns: str) -> list[tuple[str, str]]:
    """The records whose latest change is after the parameter `:after`, `columns` of each (a table aliased `r`):
    (SELECT, the ORDER BY that gives it in sequence order) for each of three parts. The records in the seq index;
    the records of bulk uploads changed since (their latest `changes` row); those unchanged since (by their ranges,
    each read from its first record past `:after`, so that a feed page does not read a range from its start)."""
    return [
        (
            f"SELECT {columns} FROM records AS r WHERE r.created_status IS NULL AND r.seq > :after",
            "r.seq",
        ),
        (
            f"SELECT {columns} FROM changes AS c JOIN records AS r ON r.record_id = c.record_id "
            "WHERE c.seq > :after AND r.seq = c.seq AND r.created_status IS NOT NULL",
            "c.seq",
        ),
        (
            f"SELECT {columns} FROM "
            + _in_ranges("MAX(g.first_record_id, g.first_record_id + (:after + 1 - g.first_seq))")
            + f" WHERE g.last_seq > :after AND r.created_status IS NOT NULL AND r.seq = {_RANGE_SEQ}",
            "g.first_seq, r.record_id",
        ),
    ]


_UPSERT_RECORD = (
    f"INSERT INTO records ({_RECORD_COLUMNS}) VALUES ({', '.join('?' * len(RECORD_FIELDS))}) "
    "ON CONFLICT (record_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in RECORD_FIELDS if name != "record_id")
)


class ReplicaState(NamedTuple):
    """A mirror's position in its upstream's change feed (see idcheck.register.replication)."""

    upstream: str
    resume_sequence: int  # every upstream row up to this sequence is stored: ask the feed from here
    through_sequence: int  # the register equals the upstream's at this sequence
    contact_at: str  # RFC 3339 UTC: when the mirror last knew it held every upstream change ('' never)


class FeedView:
    """One read transaction over the register for the change feed (from `RegisterStore.feed_view`).

    `head` is the last sequence this view sees; every read through it shows the register at that sequence."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.execute("BEGIN")
        # The first read fixes the transaction's snapshot of the database.
        self.head = int(conn.execute(_LAST_SEQ_SQL).fetchone()[0])

    def __enter__(self) -> FeedView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._conn.execute("COMMIT")
        finally:
            self._conn.close()

    def changed_rows(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to `limit` records whose latest change is after `after`, in their current state, in sequence order
        (rows in `RECORD_FIELDS` order; the last field is the sequence)."""
        seq_at = len(RECORD_FIELDS) - 1
        parts = [
            self._conn.execute(f"{select} ORDER BY {order} LIMIT :limit", {"after": after, "limit": limit}).fetchall()
            for select, order in _changed_after(_RECORD_COLUMNS_OF_R)
        ]
        return list(itertools.islice(heapq.merge(*parts, key=lambda row: row[seq_at]), limit))

    def active_count(self) -> int:
        """Number of records that can hit."""
        return int(self._conn.execute(f"SELECT COUNT(*) FROM records WHERE status <> {CANCELLED}").fetchone()[0])

    def active_rows(self, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
        """Every record that can hit, in record id order, in lists of at most `batch_size` rows."""
        cur = self._conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE status <> {CANCELLED} ORDER BY record_id"
        )
        while rows := cur.fetchmany(batch_size):
            yield rows
