"""Replication: the register's change feed (upstream side) and a mirror that applies it (`Replica`).

The feed sends records in their current state, in the order of their latest change: the store keeps every
record's current state (`records.seq` is the sequence of its latest change), not each past state. A
subscriber at position P is brought up to date from one read transaction that sees the register at some
sequence H: every record whose latest change is after P, in ascending sequence. Having applied them all, it
holds exactly the upstream's register at H; the sequences it never saw are the changes overwritten by a later
change of the same record. Then it waits for the next commit and does the same from H (the live phase). A
subscriber at 0, or more than `window` changes behind, gets a snapshot of the active records first.

Records travel as Arrow IPC streams (`RECORD_SCHEMA`, the store's record columns), so that a snapshot of a
million records is a few hundred messages and the mirror hands the index whole columns.

A mirror (`Replica`) is an ordinary register database whose records come only from the feed: rows are
upserted under the upstream's record ids and sequences, and its position (`replication` table) is stored in
the same transaction, so a restart resumes exactly where it stopped. Its index takes each batch of changes
(a snapshot whole, at its end); it reports the last sequence at which the mirror was consistent, never a later
one. Between two consistent points (the pages of one large read, or after a crash in the middle of one) a
mirror may already answer with some later changes: never with less than that sequence.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from idcheck.records import KeyColumns
from idcheck.register.errors import InvalidRequest, RegisterError
from idcheck.register.register import Limits, Register
from idcheck.store import AUDIT_INTERVAL, utc_now
from idcheck.store.sqlite import RECORD_FIELDS, ReplicaState

log = logging.getLogger(__name__)

RECORD_SCHEMA = pa.schema(
    [
        ("record_id", pa.int64()),
        ("issuing_state", pa.string()),
        ("number_canonical", pa.string()),
        ("doc_class", pa.int8()),
        ("number_printed", pa.string()),
        ("owner", pa.string()),
        ("status", pa.int8()),
        ("event_date", pa.string()),
        ("surname", pa.string()),
        ("given_names", pa.string()),
        ("birth_date", pa.string()),
        ("nationality", pa.string()),
        ("expiry_date", pa.string()),
        ("instructions", pa.string()),
        ("recorded_at", pa.string()),
        ("seq", pa.int64()),
    ]
)
assert tuple(RECORD_SCHEMA.names) == RECORD_FIELDS, "the feed's columns must be the store's record columns"
KEY_FIELDS = ["record_id", "issuing_state", "number_canonical", "doc_class", "status", "seq"]  # for the index

DEFAULT_WINDOW = 1_000_000
PAGE_ROWS = 5_000  # rows per ChangeBatch: a few hundred KiB
SNAPSHOT_ROWS = 10_000  # rows per SnapshotBatch: below the 32 MiB message limit even with 1,000-character fields
WAKE_SECONDS = 0.5  # a waiting stream looks this often whether its subscriber or the server is still there


class ReplicationError(RegisterError):
    """The feed broke its promises (a gap, a duplicate, a malformed batch) or the mirror cannot follow it."""


# -- the wire form of records ------------------------------------------------------------------------------


def encode_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """Record rows (in `RECORD_FIELDS` order) as one Arrow IPC stream."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in RECORD_SCHEMA]
    batch = pa.RecordBatch.from_arrays(
        [pa.array(column, type=f.type) for column, f in zip(columns, RECORD_SCHEMA, strict=True)],
        schema=RECORD_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, RECORD_SCHEMA) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_table(data: bytes) -> pa.Table:
    """The records of an Arrow IPC stream; raises ReplicationError unless it has exactly `RECORD_SCHEMA`."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReplicationError(f"unreadable record batch: {exc}") from None
    if not table.schema.equals(RECORD_SCHEMA):
        raise ReplicationError(f"record batch has columns {table.schema.names}, expected {RECORD_SCHEMA.names}")
    return table


def table_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows for the store, in `RECORD_FIELDS` order."""
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True)) if table.num_rows else []


def table_key_columns(table: pa.Table) -> KeyColumns:
    """What the document index needs of the records, taken column by column (no object per record)."""
    return KeyColumns(
        table.column("record_id").to_numpy().astype(np.int64, copy=False),
        table.column("issuing_state").to_pylist(),
        table.column("number_canonical").to_pylist(),
        table.column("doc_class").to_numpy().astype(np.int8, copy=False),
        table.column("status").to_numpy().astype(np.int8, copy=False),
        table.column("seq").to_numpy().astype(np.int64, copy=False),
    )


def _no_columns() -> KeyColumns:
    return KeyColumns(np.zeros(0, np.int64), [], [], np.zeros(0, np.int8), np.zeros(0, np.int8), np.zeros(0, np.int64))


# -- the feed (upstream side) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotPart:
    """One batch of a snapshot of the active records at `sequence` (see replication.proto SnapshotBatch)."""

    sequence: int
    batch: int
    last: bool
    rows: int
    total_rows: int
    records: bytes


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Records changed after the subscriber's position (see replication.proto ChangeBatch)."""

    rows: int
    resume_sequence: int
    through_sequence: int  # 0 unless this page completes a consistent point
    records: bytes


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing new: the upstream is at `sequence`, which the subscriber holds."""

    sequence: int
    upstream_time: str


FeedItem = SnapshotPart | ChangePage | Heartbeat


class ChangeFeed:
    """The change feed of one register, for any number of subscribers (each a `follow` iterator).

    `window`: a subscriber more changes behind than this gets a snapshot instead of the changes (the changes
    since a very old position are most of the register anyway, and a snapshot skips the cancelled records).
    """

    def __init__(
        self,
        register: Register,
        *,
        window: int = DEFAULT_WINDOW,
        page_rows: int = PAGE_ROWS,
        snapshot_rows: int = SNAPSHOT_ROWS,
    ) -> None:
        if window < 1 or page_rows < 1 or snapshot_rows < 1:
            raise ValueError("window, page_rows and snapshot_rows must be at least 1")
        self.register = register
        self.window = window
        self.page_rows = page_rows
        self.snapshot_rows = snapshot_rows
        self._closed = threading.Event()

    def close(self) -> None:
        """End every stream within `WAKE_SECONDS` (the server is stopping)."""
        self._closed.set()

    def follow(
        self, from_sequence: int, *, heartbeat: float = 5.0, active: Callable[[], bool] = lambda: True
    ) -> Iterator[FeedItem]:
        """What a subscriber at `from_sequence` needs, then every change as it commits, until `active()` turns
        false or the feed is closed. A `Heartbeat` follows every `heartbeat` seconds without a change."""
        store = self.register.store
        head = store.last_sequence
        if from_sequence < 0:
            raise InvalidRequest.single("from_sequence", "must not be negative")
        if from_sequence > head:  # this process may not have seen another worker's commit yet: ask the file
            with store.feed_view() as view:
                head = view.head
        if from_sequence > head:
            raise InvalidRequest.single(
                "from_sequence",
                f"{from_sequence} is beyond this register's last sequence {head}: the subscriber follows another "
                "register, or this one lost changes; start the mirror again from an empty data directory",
            )
        position = from_sequence
        if head > 0 and (from_sequence == 0 or head - from_sequence > self.window):
            for part in self._snapshot():
                yield part
                position = part.sequence
        quiet_since = time.monotonic()
        while active() and not self._closed.is_set():
            if store.last_sequence > position:
                for page in self._changes(position):
                    yield page
                    position = page.resume_sequence
                quiet_since = time.monotonic()
                continue
            idle = time.monotonic() - quiet_since
            if idle >= heartbeat:
                yield Heartbeat(position, utc_now())
                quiet_since = time.monotonic()
                continue
            self.register.wait_for_change(position, min(WAKE_SECONDS, heartbeat - idle))

    def _snapshot(self) -> Iterator[SnapshotPart]:
        with self.register.store.feed_view() as view:
            total = view.active_count()
            batches = view.active_rows(self.snapshot_rows)
            rows = next(batches, [])
            n = 0
            while True:
                following = next(batches, None)
                yield SnapshotPart(view.head, n, following is None, len(rows), total, encode_rows(rows))
                if following is None:
                    return
                rows, n = following, n + 1

    def _changes(self, position: int) -> Iterator[ChangePage]:
        with self.register.store.feed_view() as view:
            while position < view.head:
                rows = view.changed_rows(position, self.page_rows)
                if not rows:  # cannot happen: the record changed last carries the head sequence
                    raise ReplicationError(f"no record changed after {position} though the head is {view.head}")
                position = int(rows[-1][-1])
                through = view.head if position >= view.head else 0
                yield ChangePage(len(rows), position, through, encode_rows(rows))


# -- the mirror (subscriber side) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Freshness:
    """How fresh a mirror's answers are: the upstream sequence it is consistent at, and when it last knew it
    held every upstream change ('' if it never did)."""

    sequence: int
    contact_at: str

    def age(self, now: dt.datetime | None = None) -> float | None:
        """Seconds since the last contact (None: never in contact)."""
        if not self.contact_at:
            return None
        now = now or dt.datetime.now(dt.UTC)
        return max(0.0, (now - dt.datetime.fromisoformat(self.contact_at)).total_seconds())


class Replica:
    """A mirror's register, written only by its upstream's change feed.

    The follower hands it the feed's messages in order (`snapshot`, `changes`, `heartbeat`); each is stored
    durably with the new position before the index sees it. One thread feeds it; any thread may read
    `freshness`.
    """

    # A heartbeat's contact time is written to disk at most this often (it also travels with every batch).
    CONTACT_WRITE_SECONDS = 5.0

    def __init__(self, register: Register, upstream: str, state: ReplicaState | None) -> None:
        self.register = register
        self.upstream = upstream
        self._resume = state.resume_sequence if state else 0
        self._fresh = Freshness(state.through_sequence if state else 0, state.contact_at if state else "")
        self._snapshot_next = 0  # batch number expected next within a snapshot
        self._snapshot_keys: list[pa.Table] = []  # its key columns, for the index at its end
        self._contact_written = 0.0
        if self._fresh.sequence > register.sequence:
            register.apply_replicated(_no_columns(), self._fresh.sequence)  # no change log here to say so

    @classmethod
    def open(
        cls,
        data_dir: Path,
        upstream: str,
        *,
        limits: Limits | None = None,
        audit_interval: float = AUDIT_INTERVAL,
    ) -> Replica:
        """Open (or create) the mirror's register in `data_dir`. Raises ReplicationError for a data directory
        that holds a register of its own (its own changes would be mixed with the upstream's)."""
        register = Register.open(data_dir, limits=limits, audit_interval=audit_interval)
        try:
            store = register.store
            state = store.replica_state()  # also makes the store's last sequence the mirror's position
            if state is None and store.last_sequence > 0:
                raise ReplicationError(
                    f"{data_dir} holds a register of its own (at sequence {store.last_sequence}), not a mirror; "
                    "a mirror needs an empty data directory or one a mirror wrote"
                )
            if state is not None and state.upstream != upstream:
                log.warning("%s mirrored %s until now; following %s from the same position", data_dir,
                            state.upstream, upstream)  # fmt: skip
        except BaseException:
            register.close()
            raise
        return cls(register, upstream, state)

    def close(self) -> None:
        self.register.close()

    @property
    def resume_sequence(self) -> int:
        """The position to ask the feed for: every upstream row up to it is stored."""
        return self._resume

    def freshness(self) -> Freshness:
        return self._fresh

    def snapshot(self, part: SnapshotPart) -> None:
        """Apply one snapshot batch; the last one makes the register exactly the snapshot."""
        if part.batch != self._snapshot_next:
            raise ReplicationError(f"snapshot batch {part.batch} arrived, expected batch {self._snapshot_next}")
        store = self.register.store
        if part.batch == 0:
            store.begin_snapshot()
            self._snapshot_keys = []
            log.info("receiving a snapshot of %d records at sequence %d from %s", part.total_rows, part.sequence,
                     self.upstream)  # fmt: skip
        table = decode_table(part.records)
        store.apply_snapshot_rows(table_rows(table))
        self._snapshot_keys.append(table.select(KEY_FIELDS))
        self._snapshot_next = part.batch + 1
        if not part.last:
            return
        now = utc_now()
        gone = store.finish_snapshot(self.upstream, part.sequence, now)
        # The index takes the whole snapshot at once (one bulk apply is much cheaper than one per batch); until
        # then it answers from what it held, confirmed against the stored records.
        keys = pa.concat_tables(self._snapshot_keys) if self._snapshot_keys else RECORD_SCHEMA.empty_table()
        self._snapshot_keys = []
        self.register.apply_replicated(table_key_columns(keys), self._fresh.sequence)
        self.register.apply_replicated(KeyColumns.from_records(gone), part.sequence)
        self._snapshot_next = 0
        self._resume = part.sequence
        self._fresh = Freshness(part.sequence, now)
        self._contact_written = time.monotonic()
        log.info("snapshot applied: %d records at sequence %d (%d dropped)", part.total_rows, part.sequence, len(gone))

    def changes(self, page: ChangePage) -> None:
        """Apply one batch of changed records."""
        if self._snapshot_next:
            raise ReplicationError("changes arrived in the middle of a snapshot")
        table = decode_table(page.records)
        seqs = table.column("seq").to_numpy()
        if len(seqs) != page.rows or not len(seqs):
            raise ReplicationError(f"change batch says {page.rows} rows, holds {len(seqs)}")
        if seqs[0] <= self._resume or (len(seqs) > 1 and not bool(np.all(np.diff(seqs) > 0))):
            raise ReplicationError(f"change batch sequences do not follow {self._resume} in ascending order")
        if int(seqs[-1]) != page.resume_sequence or (page.through_sequence and page.through_sequence != seqs[-1]):
            raise ReplicationError("change batch positions disagree with its rows")
        now = utc_now() if page.through_sequence else ""
        self.register.store.apply_replicated(
            self.upstream, table_rows(table), page.resume_sequence, page.through_sequence, now
        )
        through = page.through_sequence or self._fresh.sequence
        self.register.apply_replicated(table_key_columns(table), through)
        self._resume = page.resume_sequence
        if page.through_sequence:
            self._fresh = Freshness(page.through_sequence, now)
            self._contact_written = time.monotonic()

    def heartbeat(self, beat: Heartbeat) -> None:
        """The upstream has nothing newer than what this mirror holds: it is current as of now."""
        if beat.sequence != self._fresh.sequence or self._snapshot_next:
            raise ReplicationError(
                f"heartbeat at upstream sequence {beat.sequence} while this mirror is consistent at "
                f"{self._fresh.sequence}"
            )
        now = utc_now()
        self._fresh = Freshness(beat.sequence, now)
        if time.monotonic() - self._contact_written >= self.CONTACT_WRITE_SECONDS:
            self.register.store.record_contact(self.upstream, self._resume, beat.sequence, now)
            self._contact_written = time.monotonic()

    def abandon_snapshot(self) -> None:
        """The link broke in the middle of a snapshot: it will be sent again whole."""
        self._snapshot_next = 0
        self._snapshot_keys = []


__all__ = [
    "RECORD_SCHEMA",
    "ChangeFeed",
    "ChangePage",
    "FeedItem",
    "Freshness",
    "Heartbeat",
    "Replica",
    "ReplicationError",
    "SnapshotPart",
    "decode_table",
    "encode_rows",
]
