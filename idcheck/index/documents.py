"""The document key index: a compact, columnar, in-memory index of the records that can hit.

Sized for a register of a hundred million documents on one machine. No Python object is kept per record;
each active record is a row of five numpy columns (about 28 bytes):

    folded    uint64  key of the confusion-folded canonical number (rows sorted by it)
    number    uint64  key of the canonical number itself
    state     uint16  code of the issuing state (codes in `states`, assigned as states appear)
    cls       int8    DocumentClass
    record_id int64   the record in the store

A number of up to 12 characters is packed exactly into its key (base 37: 37**12 < 2**63), so equal keys
mean equal numbers. A longer one (rare: the limit is 24) is hashed into the upper half of the key space;
two long numbers could then share a key, which can only add a candidate, never hide one. The register
therefore re-checks every candidate against the stored record before answering, and nothing in the index
decides alone that a document is listed.

Lookups search the sorted `folded` column (O(log n); vectorised for manifests) and then apply the matching
rules of design.md to the few rows found. Changes arrive in change-log order:

* a record already in the base columns only flips its `dead` flag (a record's key never changes, only its
  status), so a cancel or a re-activation costs one binary search;
* a new record goes to a small overlay dictionary, merged into fresh base columns in the background once it
  grows (or at once, for a bulk upload of many new records).

Readers take no lock: they read the current view (base, dead flags, overlay) from one attribute, writers
replace overlay tuples whole, and a merge installs a complete new view in one assignment. Changes applied
while a background merge runs are replayed onto its result before it is installed, so none is dropped.

A snapshot of the base columns (`.npy` files tagged with the sequence they cover, written atomically) lets a
restart memory-map the index instead of rebuilding it, then replay the change log after that sequence.
Several server processes that map the same snapshot share one copy of it in the page cache.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import os
import shutil
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcheck.arrow_buffers import same_length_ascii
from idcheck.cpus import on_every_cpu
from idcheck.icao import CONFUSION_TABLE, DocumentClass, folded_key
from idcheck.records import KeyColumns, RecordStatus, StoredRecord

log = logging.getLogger(__name__)


class MatchKind(enum.IntEnum):
    """How a record matched a query. Values match `idcheck.v1.MatchKind`."""

    UNSPECIFIED = 0
    EXACT = 1
    OCR_VARIANT = 2
    STATE_MISMATCH = 3
    STATE_MISSING = 4
    CLASS_MISMATCH = 5


class Match(NamedTuple):
    """One record that matched, and how (as the register answers it, with the stored record)."""

    kind: MatchKind
    record: StoredRecord


class Candidate(NamedTuple):
    """One index row that matched a query, and how: to be confirmed against the stored record."""

    kind: MatchKind
    record_id: int


class Lookup(NamedTuple):
    """A canonical query: state ('' when unknown), canonical number, class (UNSPECIFIED matches all)."""

    issuing_state: str
    number: str
    document_class: DocumentClass = DocumentClass.UNSPECIFIED


# -- number keys ------------------------------------------------------------------------------------

PACKED_LENGTH = 12  # numbers up to this length are packed exactly
_MAX_WIDTH = 24  # records hold at most 24 characters; longer query numbers are hashed on their first 24
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CODE_OF = {c: i + 1 for i, c in enumerate(_ALPHABET)}
_CODES = np.zeros(256, np.uint8)  # byte -> code (0: padding)
for _c, _v in _CODE_OF.items():
    _CODES[ord(_c)] = _v
_FOLDED_CODES = _CODES.copy()  # byte -> code of the character it folds to
for _c, _to in CONFUSION_TABLE.items():
    _FOLDED_CODES[ord(_c)] = _CODE_OF[_to]
_POWERS = np.array([37**i for i in reversed(range(PACKED_LENGTH))], np.uint64)
_CHUNK = 1 << 20
_MASK = (1 << 64) - 1
_TOP = 1 << 63
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _packed(codes: np.ndarray) -> np.ndarray:
    """Base-37 value of each row of an (n, PACKED_LENGTH) matrix of character codes; uint64."""
    if len(codes) < 4096:  # numpy's integer matmul costs least for a few rows
        return codes.astype(np.uint64) @ _POWERS
    # Horner's rule column by column: about 3 times faster than the integer matmul on large batches (1M rows:
    # 13 instead of 39 ms), which numpy runs without BLAS.
    keys = codes[:, 0].astype(np.uint64)
    base = np.uint64(37)
    for i in range(1, codes.shape[1]):
        keys *= base
        keys += codes[:, i]
    return keys


def _pack(text: str) -> int:
    key = 0
    for ch in text:
        key = key * 37 + _CODE_OF.get(ch, 0)
    return key * 37 ** (PACKED_LENGTH - len(text))


def _mix(head: int, tail: int) -> int:
    x = ((head * _GOLDEN) & _MASK) ^ tail
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK
    return (x ^ (x >> 31)) | _TOP


def number_key(canonical: str) -> int:
    """Key of a canonical number (exact for up to 12 characters, a hash with the top bit set beyond)."""
    if len(canonical) <= PACKED_LENGTH:
        return _pack(canonical)
    text = canonical[:_MAX_WIDTH]
    return _mix(_pack(text[:PACKED_LENGTH]), _pack(text[PACKED_LENGTH:]))


def number_keys(canonicals: Sequence[str] | np.ndarray, *, fold: bool = False) -> np.ndarray:
    """`number_key` of every number (of its folded form with `fold`), vectorised; uint64."""
    n = len(canonicals)
    if n == 0:
        return np.zeros(0, np.uint64)
    if n > _CHUNK:  # bounded temporaries for bulk loads (the code matrix is 12 bytes a row, then 96)
        return np.concatenate([number_keys(canonicals[i : i + _CHUNK], fold=fold) for i in range(0, n, _CHUNK)])
    raw = np.asarray(canonicals, dtype=f"S{_MAX_WIDTH}") if not isinstance(canonicals, np.ndarray) else canonicals
    if raw.dtype.itemsize < _MAX_WIDTH:
        raw = raw.astype(f"S{_MAX_WIDTH}")
    chars = raw.view(np.uint8).reshape(n, -1)[:, :_MAX_WIDTH]
    lut = _FOLDED_CODES if fold else _CODES
    keys = _packed(lut[chars[:, :PACKED_LENGTH]])
    long_rows = np.flatnonzero(chars[:, PACKED_LENGTH])
    if len(long_rows):
        head = keys[long_rows]
        tail = _packed(lut[chars[long_rows, PACKED_LENGTH:]])
        x = (head * np.uint64(_GOLDEN)) ^ tail
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
        keys[long_rows] = (x ^ (x >> np.uint64(31))) | np.uint64(_TOP)
    return keys


def exact_number_keys(chars: np.ndarray) -> np.ndarray | None:
    """`number_key` of numbers given as an (n, PACKED_LENGTH) uint8 matrix of their bytes, each right-padded with
    zero bytes, when every one is packed exactly (1 to PACKED_LENGTH characters, all A-Z or 0-9); else None.

    Exact keys order as the numbers do (byte order: a shorter number before its extensions) and differ exactly
    when the numbers do, so sorting or comparing them sorts or compares the numbers."""
    if chars.ndim != 2 or chars.shape[1] != PACKED_LENGTH:
        raise ValueError(f"expected an (n, {PACKED_LENGTH}) byte matrix")
    keys = np.empty(len(chars), np.uint64)
    step = 1 << 18  # bounded temporaries that stay in the CPU cache (10M rows: 0.6 s instead of 2.1 in one piece)
    for start in range(0, len(chars), step):
        part = chars[start : start + step]
        padding = part == 0
        codes = _CODES[part]
        if padding[:, 0].any() or ((codes == 0) & ~padding).any() or (padding[:, :-1] & ~padding[:, 1:]).any():
            return None  # an empty number, a byte outside A-Z and 0-9, or a zero byte inside a number
        keys[start : start + step] = _packed(codes)
    return keys


def folded_number_key(canonical: str) -> int:
    """Key of the confusion-folded form of a canonical number."""
    return number_key(folded_key(canonical))


# -- the index --------------------------------------------------------------------------------------

COLUMNS = ("folded", "number", "state", "cls", "record_id")
_DTYPES = {"folded": np.uint64, "number": np.uint64, "state": np.uint16, "cls": np.int8, "record_id": np.int64}


# `_Base.search` searches in two levels a batch of at least `_TWO_LEVEL_KEYS` keys (measured: 100 keys cost about
# the same either way, 10 keys 3-4 times more in two levels) in a column of at least `_TWO_LEVEL_ROWS` keys (2 MB:
# a smaller one mostly stays in the caches, where one level costs less), with blocks of at least `_MIN_BLOCK` keys.
_TWO_LEVEL_KEYS = 128
_TWO_LEVEL_ROWS = 1 << 18
_MIN_BLOCK = 64


@dataclass(frozen=True)
class _Base:
    """Sorted columns of the records known at `sequence` (read-only once built; possibly memory-mapped)."""

    folded: np.ndarray
    number: np.ndarray
    state: np.ndarray
    cls: np.ndarray
    record_id: np.ndarray
    sequence: int

    @classmethod
    def empty(cls) -> _Base:
        folded, number, state, classes, record_id = (np.zeros(0, _DTYPES[c]) for c in COLUMNS)
        return cls(folded, number, state, classes, record_id, sequence=0)

    def __len__(self) -> int:
        return len(self.folded)

    def nbytes(self) -> int:
        return sum(getattr(self, c).nbytes for c in COLUMNS)

    def search(self, keys: np.ndarray) -> np.ndarray:
        """`folded.searchsorted(keys, "left")` for `keys` in ascending order (uint64).

        A batch is searched in two levels: first a sample of every `block`-th key of the column, small enough to
        stay in the CPU's caches, then the block each key falls in, all keys of the batch one step at a time. A
        plain binary search walks the whole column for each key, and misses the caches on most of its steps: a
        manifest of 1,000 numbers cost 0.39-0.41 ms at 1,000,000 records and 0.83-0.84 ms at 10,000,000, against
        0.14-0.15 and 0.21-0.22 ms in two levels (2026-12-07, 2 cores, random keys, caches evicted before each
        batch). The steps have a fixed cost, which shows when the column is in the caches already: the same 1,000
        keys searched again and again took 25 against 55 µs at 1,000,000 records, and at 100,000 (evicted or not)
        one level was as fast or faster. So below `_TWO_LEVEL_KEYS` keys or `_TWO_LEVEL_ROWS` rows, one level."""
        folded = self.folded
        if len(keys) < _TWO_LEVEL_KEYS or len(folded) < max(_TWO_LEVEL_ROWS, 2 * _MIN_BLOCK):
            return folded.searchsorted(keys, "left")
        block, top = self._sample
        # top[b] = folded[b * block]: the first key >= k is after row (b - 1) * block, where b is the first sample
        # >= k, and at or before row b * block. From `lo`, a row whose key is below k (or row 0), steps of
        # block / 2, block / 4, ... 1 move `lo` to the last such row of the block; the answer is the row after it.
        lo = np.maximum(top.searchsorted(keys, "left") - 1, 0) * block
        last = len(folded) - 1
        step = block
        while step > 1:
            step //= 2
            lo += step * (folded[np.minimum(lo + step, last)] < keys)  # rows past the end read as the last row
        return np.minimum(lo + (folded[np.minimum(lo, last)] < keys), last + 1)

    @functools.cached_property
    def _sample(self) -> tuple[int, np.ndarray]:
        """(block, every block-th key of `folded`), built at the first batch searched: at most 16,000 keys (8,000
        to 16,000 from 1,000,000 records on), so that the sample stays in the CPU's caches as the column grows; a
        copy, of 1/block of the column's bytes. Blocks of 64 keys at 1,000,000 records and
        1,024 at 10,000,000 (of blocks of 64 to 4,096 keys, measured as in `search`, 64-256 were the fastest at
        1,000,000 records, 512-1,024 at 10,000,000 and 1,024-2,048 at 30,000,000, where this gives 2,048)."""
        block = max(_MIN_BLOCK, 1 << max(0, (len(self.folded) >> 14) - 1).bit_length())
        return block, np.ascontiguousarray(self.folded[::block])


class _Entry(NamedTuple):
    """An overlay row: a record added since the base columns were built."""

    record_id: int
    number: int
    state: int
    cls: int


class _View(NamedTuple):
    base: _Base
    dead: np.ndarray  # bool per base row: cancelled since the base was built
    overlay: dict[int, tuple[_Entry, ...]]  # folded key -> rows


@dataclass(frozen=True, slots=True)
class _Changes:
    """Encoded changes, in change-log order."""

    record_id: np.ndarray
    folded: np.ndarray
    number: np.ndarray
    state: np.ndarray
    cls: np.ndarray
    active: np.ndarray

    def __len__(self) -> int:
        return len(self.record_id)


@dataclass(frozen=True)
class PreparedChanges:
    """Changes made ready for the index ahead of their commit (DocumentIndex.prepare_columns)."""

    changes: KeyColumns
    encoded: _Changes | None  # None: no changes, or `rebuilt` was computed from them
    version: int  # the index's version they were prepared against
    rebuilt: _Base | None  # the new base columns, when the changes are many new records


@dataclass(frozen=True)
class DocumentIndexSettings:
    """When the overlay is merged and snapshots are written."""

    merge_threshold: int = 65_536  # overlay rows (or new rows in one change) that trigger a merge
    snapshot_dir: Path | None = None  # where snapshots go; None: never written
    snapshot_min_changes: int = 100_000  # changes since the last snapshot before a merge writes a new one
    snapshots_kept: int = 2
    write_snapshots: bool = True  # False: only map snapshots another process writes (serve --workers)


class DocumentIndex:
    """Active records by folded document number, in numpy columns plus a small overlay."""

    def __init__(self, settings: DocumentIndexSettings | None = None) -> None:
        self.settings = settings or DocumentIndexSettings()
        self._view = _View(_Base.empty(), np.zeros(0, bool), {})
        self._states: list[str] = [""]  # code 0 is never a record's state
        self._state_code: dict[str, int] = {}
        self._dead_count = 0
        self._overlay_count = 0
        self.sequence = 0
        self.snapshot_sequence = 0  # sequence of the newest snapshot written or loaded
        self._lock = threading.Lock()  # serialises writers (readers never take it)
        self._pending: list[_Changes] | None = None  # changes recorded while a background merge runs
        self._merger: threading.Thread | None = None
        self._snapshotter: threading.Thread | None = None  # the last snapshot written after a bulk rebuild
        self._generation = 0  # bumped whenever new base columns are installed
        self._version = 0  # bumped by every change to the view (what a PreparedChanges was computed against)
        self._rebuilt: _Base | None = None
        self._snapshot_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._view.base) - self._dead_count + self._overlay_count

    # -- reading --------------------------------------------------------------------------------------

    def lookup(self, query: Lookup) -> tuple[Candidate, ...]:
        """Candidates for one query, exact ones first. Cancelled records are never in the index."""
        view = self._view
        folded = np.uint64(folded_number_key(query.number))
        rows: list[_Entry] = []
        base = view.base
        lo = int(base.folded.searchsorted(folded, "left"))
        if lo < len(base) and base.folded[lo] == folded:
            hi = int(base.folded.searchsorted(folded, "right"))
            rows.extend(_base_rows(view, lo, hi))
        if view.overlay:
            rows.extend(view.overlay.get(int(folded), ()))
        return self._candidates(query, number_key(query.number), rows) if rows else ()

    def lookup_many(self, queries: Sequence[Lookup]) -> list[tuple[Candidate, ...]]:
        """Candidates for each query, in order; the base columns are searched for the whole batch at once."""
        out: list[tuple[Candidate, ...]] = [()] * len(queries)
        found = self.lookup_sparse([q.number for q in queries], lambda rows: [queries[i] for i in rows])
        for i, candidates in found.items():
            out[i] = candidates
        return out

    def lookup_sparse(
        self, numbers: Sequence[str] | np.ndarray | pa.Array, queries_of: Callable[[list[int]], Sequence[Lookup]]
    ) -> dict[int, tuple[Candidate, ...]]:
        """Candidates of the queries that have any, by position: `numbers[i]` is the canonical number of query i,
        and `queries_of(positions)` the Lookups of those positions, in order, asked once, only for the few positions
        whose folded number is in the index (a columnar manifest builds no Lookup for the others)."""
        out: dict[int, tuple[Candidate, ...]] = {}
        if not len(numbers):
            return out
        view = self._view
        base = view.base
        if not isinstance(numbers, np.ndarray) or numbers.dtype.kind != "S":
            numbers = _number_bytes(numbers)  # once: the exact keys of the rows found are read from it too
        folded = number_keys(numbers, fold=True)
        found: dict[int, list[_Entry]] = {}
        if len(base):
            # Searched in key order: successive binary searches then walk the same few cache lines of the
            # column (at 10 million keys, 80 MB, each unordered search is a string of cache misses).
            order = np.argsort(folded)
            lo = np.empty(len(folded), np.int64)
            lo[order] = base.search(folded[order])
            inside = np.flatnonzero(lo < len(base))
            inside = inside[base.folded[lo[inside]] == folded[inside]]
            if len(inside):
                for i, row in _base_entries(view, inside, lo[inside], folded[inside]):
                    found.setdefault(i, []).append(row)
        if view.overlay:
            get = view.overlay.get
            for i, f in enumerate(folded.tolist()):
                extra = get(f)
                if extra:
                    found.setdefault(i, []).extend(extra)
        if found:
            hit = list(found)
            exact = number_keys(numbers[hit]).tolist()
            for i, query, key in zip(hit, queries_of(hit), exact, strict=True):
                candidates = self._candidates(query, key, found[i])
                if candidates:
                    out[i] = candidates
        return out

    def _candidates(self, query: Lookup, number: int, rows: Iterable[_Entry]) -> tuple[Candidate, ...]:
        state = self._state_code.get(query.issuing_state, -1) if query.issuing_state else 0
        found = []
        for row in rows:
            kind = _classify_row(state, number, int(query.document_class), row)
            if kind is not None:
                found.append(Candidate(kind, row.record_id))
        found.sort()
        return tuple(found)

    def record_ids(self) -> np.ndarray:
        """Ids of every active record, sorted (for comparing an index with a rebuild)."""
        view = self._view
        ids = [view.base.record_id[~view.dead[: len(view.base)]]]
        ids.append(np.fromiter((e.record_id for rows in list(view.overlay.values()) for e in rows), np.int64))
        return np.sort(np.concatenate(ids))

    def memory_bytes(self) -> int:
        """Bytes held by the columns (memory-mapped ones included) and an estimate for the overlay."""
        view = self._view
        return view.base.nbytes() + view.dead.nbytes + 200 * self._overlay_count

    # -- writing --------------------------------------------------------------------------------------

    def apply(self, records: Iterable[StoredRecord], sequence: int | None = None) -> None:
        """Bring records to their current state, in change-log order: add active ones, drop cancelled ones."""
        records = list(records)
        self.apply_columns(KeyColumns.from_records(records), sequence)

    def apply_columns(self, changes: KeyColumns, sequence: int | None = None) -> None:
        """`apply` for changes in column form (a bulk upload, a start-up load, a replicated batch)."""
        if sequence is None:
            sequence = int(changes.sequence.max()) if len(changes) else self.sequence
        self.apply_prepared(self.prepare_columns(changes), sequence)

    def prepare_columns(self, changes: KeyColumns) -> PreparedChanges:
        """The costly part of `apply_columns`, done ahead while the changes are still being committed (a bulk
        upload's SQLite inserts run on one core; this runs on the other): the changes encoded and, when they are
        many new records, the index's new base columns. Readers see nothing of it until `apply_prepared`; a
        change to the index in between (a background merge installing its columns, another writer) makes
        `apply_prepared` apply the encoded changes to the index as it then is."""
        with self._lock:
            encoded = self._encode(changes) if len(changes) else None
            rebuilt = None
            if encoded is not None and len(encoded) >= self.settings.merge_threshold:  # fewer never rebuild
                new = np.flatnonzero(self._positions(self._view.base, encoded) < 0)
                if len(new) == len(encoded):
                    rebuilt = self._rebuilt_base(encoded, new, 0)  # its sequence is set when it is installed
                    encoded = None  # not kept beside the new columns (as many bytes again): encoded again if needed
            return PreparedChanges(changes, encoded, self._version, rebuilt)

    def apply_prepared(self, prepared: PreparedChanges, sequence: int) -> None:
        """Make changes from `prepare_columns` visible, the index then covering `sequence`."""
        with self._lock:
            sequence = max(self.sequence, sequence)
            if len(prepared.changes):
                if prepared.rebuilt is not None and prepared.version == self._version:
                    self._install(dataclasses.replace(prepared.rebuilt, sequence=sequence))
                    self._rebuilt = self._view.base
                else:
                    encoded = prepared.encoded if prepared.encoded is not None else self._encode(prepared.changes)
                    self._apply_encoded(encoded, rebuild_at=sequence)
                    if self._pending is not None:
                        self._pending.append(encoded)
            self.sequence = sequence
            if self._overlay_count >= self.settings.merge_threshold or (
                self._dead_count >= max(self.settings.merge_threshold, len(self._view.base) // 10)
            ):
                self._start_merge()
            rebuilt, self._rebuilt = self._rebuilt, None
        if rebuilt is not None and self._snapshot_due(rebuilt):
            snapshotter = threading.Thread(
                target=on_every_cpu(self._maybe_snapshot), args=(rebuilt,), name="index-snapshot", daemon=True
            )
            self._snapshotter = snapshotter
            snapshotter.start()

    def _encode(self, changes: KeyColumns) -> _Changes:
        codes = self._state_code
        given = changes.issuing_state
        if isinstance(given, pa.Array):  # a bulk upload's: Arrow finds the few distinct codes
            encoded = given if pa.types.is_dictionary(given.type) else given.dictionary_encode()
            distinct, inverse = encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)
        elif isinstance(given, np.ndarray):  # many rows: map the few distinct codes, not every row
            distinct, inverse = _distinct(given)
        else:
            distinct, inverse = list(set(given)), None
        for value in distinct:
            if value not in codes:
                if len(self._states) >= 65_535:
                    raise ValueError("more than 65,534 issuing states")
                codes[value] = len(self._states)
                self._states.append(value)
        if inverse is not None:
            states = np.array([codes[v] for v in distinct], np.uint16)[inverse.reshape(-1)]
        else:
            states = np.fromiter((codes[s] for s in given), np.uint16, len(changes))
        numbers = _number_bytes(changes.number)
        active = ~np.isin(changes.status, (RecordStatus.CANCELLED, RecordStatus.UNSPECIFIED))
        return _Changes(
            np.asarray(changes.record_id, np.int64),
            number_keys(numbers, fold=True),
            number_keys(numbers),
            states,
            np.asarray(changes.document_class, np.int8),
            active,
        )

    def _apply_encoded(self, ch: _Changes, *, rebuild_at: int | None) -> None:
        """Apply encoded changes to the current view (writer lock held). Many new records at once rebuild the
        base columns, which then cover `rebuild_at`; None: never rebuild (replaying onto a merge)."""
        self._version += 1
        view = self._view
        positions = self._positions(view.base, ch)
        in_base = positions >= 0
        if in_base.any():
            rows = positions[in_base]
            touched = np.sort(rows)  # distinct (np.unique of many distinct values is ~10x slower in numpy 2.4)
            touched = touched[np.concatenate(([True], touched[1:] != touched[:-1]))]
            before = int(view.dead[touched].sum())
            view.dead[rows] = ~ch.active[in_base]  # repeated rows: the last change in the batch wins
            self._dead_count += int(view.dead[touched].sum()) - before
        new = np.flatnonzero(~in_base)
        if not len(new):
            return
        if rebuild_at is not None and len(new) >= self.settings.merge_threshold:
            self._rebuild(ch, new, rebuild_at)
            return
        overlay = view.overlay
        get = overlay.get
        count = self._overlay_count
        # Python values of the whole batch at once (tolist), not numpy scalars one by one: `apply` of 10,000 new
        # records took 11.2 instead of 20.0 ms (bench/test_bench_index.py; 20 ms was two fifths of a 10,000-row upload).
        columns = (ch.folded, ch.record_id, ch.number, ch.state, ch.cls, ch.active)
        for folded, rid, number, state, cls, active in zip(*(c[new].tolist() for c in columns), strict=True):
            rows_now = get(folded)
            if rows_now is None:  # a key the overlay does not hold yet: the common case
                if active:
                    overlay[folded] = (_Entry(rid, number, state, cls),)
                    count += 1
                continue
            kept = tuple(e for e in rows_now if e.record_id != rid)
            count -= len(rows_now) - len(kept)
            if active:
                kept = (*kept, _Entry(rid, number, state, cls))
                count += 1
            if kept:
                overlay[folded] = kept
            else:
                del overlay[folded]
        self._overlay_count = count

    @staticmethod
    def _positions(base: _Base, ch: _Changes) -> np.ndarray:
        """Row of each change's record in `base`, -1 where it is not there."""
        positions = np.full(len(ch), -1, np.int64)
        if len(base):
            lo = base.folded.searchsorted(ch.folded, "left")
            hi = base.folded.searchsorted(ch.folded, "right")
            one = np.flatnonzero(hi - lo == 1)
            hit = one[base.record_id[lo[one]] == ch.record_id[one]]
            positions[hit] = lo[hit]
            for i in np.flatnonzero(hi - lo > 1).tolist():
                at = np.flatnonzero(base.record_id[lo[i] : hi[i]] == ch.record_id[i])
                if len(at):
                    positions[i] = lo[i] + at[0]
        return positions

    def _rebuild(self, ch: _Changes, new: np.ndarray, sequence: int) -> None:
        """Merge the overlay and many new records into fresh base columns now (writer lock held)."""
        base = self._rebuilt_base(ch, new, sequence)
        self._install(base)
        self._rebuilt = base

    def _rebuilt_base(self, ch: _Changes, new: np.ndarray, sequence: int) -> _Base:
        """Fresh base columns: the current view with the new records `new` of `ch` (writer lock held; the view
        is not changed)."""
        # Within one batch a record may appear more than once: keep its last change only. (A load from the
        # store lists each record once, in record id order: nothing to sort out then.)
        ids = ch.record_id[new]
        if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
            latest = new
        else:
            order = new[::-1]
            _, first = np.unique(ch.record_id[order], return_index=True)
            latest = np.sort(order[first])
        latest = latest[ch.active[latest]]
        if len(latest) == len(ch):  # every change is a new active record (a first big upload): no gather
            extra = {c: getattr(ch, c) for c in COLUMNS}
        else:
            extra = {c: getattr(ch, c)[latest] for c in COLUMNS}
        view = self._view
        if view.overlay:  # overlay rows of records this batch changes are superseded by the batch
            changed = set(ch.record_id[new].tolist())
            overlay = {f: tuple(e for e in rows if e.record_id not in changed) for f, rows in view.overlay.items()}
            view = _View(view.base, view.dead, overlay)
        return _merge(view, extra, sequence)

    def _install(self, base: _Base) -> None:
        """Make `base` the current columns; any background merge in flight is now outdated (lock held)."""
        self._view = _View(base, np.zeros(len(base), bool), {})
        self._version += 1
        self._dead_count = 0
        self._overlay_count = 0
        self._generation += 1
        self._pending = None

    # -- merging --------------------------------------------------------------------------------------

    def merge(self) -> None:
        """Fold the overlay and the cancelled rows into fresh base columns now (and snapshot if due)."""
        with self._lock:
            base = _merge(self._view, None, self.sequence)
            self._install(base)
        self._maybe_snapshot(base)

    def _start_merge(self) -> None:
        if self._merger is not None and self._merger.is_alive():
            return
        view, sequence = self._view, self.sequence
        frozen = _View(view.base, view.dead.copy(), dict(view.overlay))
        self._pending = []
        generation = self._generation
        self._merger = threading.Thread(
            target=on_every_cpu(self._merge_in_background),
            args=(frozen, sequence, generation),
            name="index-merge",
            daemon=True,
        )
        self._merger.start()

    def _merge_in_background(self, frozen: _View, sequence: int, generation: int) -> None:
        try:
            base = _merge(frozen, None, sequence)
        except BaseException:
            log.exception("index merge failed; the overlay stays in use")
            with self._lock:
                if self._generation == generation:
                    self._pending = None
            return
        with self._lock:
            if self._generation != generation:
                return  # a rebuild installed newer columns meanwhile; this result is outdated
            pending = self._pending or []
            self._install(base)
            for ch in pending:  # changes applied while merging, replayed onto the merged columns
                self._apply_encoded(ch, rebuild_at=None)
        self._maybe_snapshot(base)

    def background_tasks(self) -> int:
        """Merges and snapshot writes running now (0 or 1 of each; a merge writes its snapshot itself)."""
        return sum(t is not None and t.is_alive() for t in (self._merger, self._snapshotter))

    def wait_idle(self) -> None:
        """Block until no background merge or snapshot is running (tests, shutdown)."""
        for thread in (self._merger, self._snapshotter):
            if thread is not None:
                thread.join()
        with self._snapshot_lock:
            pass

    # -- snapshots ------------------------------------------------------------------------------------

    def _snapshot_due(self, base: _Base) -> bool:
        due = base.sequence - self.snapshot_sequence >= self.settings.snapshot_min_changes
        return self.settings.snapshot_dir is not None and self.settings.write_snapshots and due

    def _maybe_snapshot(self, base: _Base) -> None:
        if not self._snapshot_due(base):
            return
        try:
            self.write_snapshot(base)
        except OSError:
            log.exception("could not write an index snapshot; the next start will rebuild from the store")

    def write_snapshot(self, base: _Base | None = None) -> Path:
        """Write the base columns (by default: a fresh merge of the current state) as a snapshot; atomic.

        Files are written into a temporary directory, fsynced, described by a manifest (sequence, sizes,
        CRC-32 of each file) written last, and the directory is renamed into place.
        """
        directory = self.settings.snapshot_dir
        if directory is None:
            raise ValueError("no snapshot directory configured")
        if base is None:
            with self._lock:
                base = _merge(self._view, None, self.sequence)
        with self._snapshot_lock:
            states = list(self._states)
            directory.mkdir(parents=True, exist_ok=True)
            final = directory / f"documents-{base.sequence:015d}"
            if final.exists():
                return final
            tmp = directory / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
            files = {}
            for name in COLUMNS:
                path = tmp / f"{name}.npy"
                with open(path, "wb") as f:
                    np.save(f, getattr(base, name))
                    f.flush()
                    os.fsync(f.fileno())
                files[name] = {"bytes": path.stat().st_size, "crc32": _crc32(path)}
            manifest = {"format": 1, "sequence": base.sequence, "rows": len(base), "states": states, "files": files}
            with open(tmp / "manifest.json", "w") as f:
                json.dump(manifest, f)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(directory)
            self.snapshot_sequence = max(self.snapshot_sequence, base.sequence)
            self._prune_snapshots(directory)
        log.info("index snapshot written at sequence %d (%d records) in %s", base.sequence, len(base), final)
        return final

    def _prune_snapshots(self, directory: Path) -> None:
        for old in sorted(directory.glob("documents-*"))[: -self.settings.snapshots_kept]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in directory.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def load_snapshot(self, *, max_sequence: int) -> int:
        """Map the newest valid snapshot covering at most `max_sequence`; its sequence, or 0 if none is usable.

        A snapshot with a missing or unreadable manifest, a file of the wrong size or checksum (torn), or a
        sequence beyond the store's (stale store, or a snapshot from elsewhere) is skipped with a warning.
        """
        directory = self.settings.snapshot_dir
        if directory is None or not directory.is_dir():
            return 0
        for path in sorted(directory.glob("documents-*"), reverse=True):
            try:
                base, states = _read_snapshot(path, max_sequence)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring index snapshot %s: %s", path.name, exc)
                continue
            with self._lock:
                self._states = states
                self._state_code = {s: i for i, s in enumerate(states) if i}
                self._install(base)
                self.sequence = base.sequence
                self.snapshot_sequence = base.sequence
            log.info("index snapshot %s mapped (%d records)", path.name, len(base))
            return base.sequence
        return 0


def padded_bytes(values: pa.Array | pa.ChunkedArray, width: int) -> np.ndarray | None:
    """The bytes of Arrow strings as an (n, width) uint8 matrix, each value right-padded with zero bytes, read
    out of Arrow's buffers (no Python object per value); None when a value does not fit: longer than `width`
    characters, or of more bytes than characters (padding counts characters)."""
    if isinstance(values, pa.Array) and values.type == pa.string() and not values.null_count and len(values):
        chars = _same_length_bytes(values, width)
        if chars is not None:
            return chars
    try:
        fixed = pc.cast(pc.utf8_rpad(values, width, "\0"), pa.binary(width))
    except pa.ArrowInvalid:
        return None
    chunks = fixed.chunks if isinstance(fixed, pa.ChunkedArray) else [fixed]
    parts = [np.frombuffer(c.buffers()[1], np.uint8, len(c) * width, c.offset * width) for c in chunks if len(c)]
    if not parts:
        return np.zeros((0, width), np.uint8)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(-1, width)


def _same_length_bytes(values: pa.Array, width: int) -> np.ndarray | None:
    """`padded_bytes` of a utf8 array without nulls whose values are all ASCII and of one length (document numbers
    of one format, as a manifest or an upload of one issuer mostly is) read straight from its buffers, three times
    faster than pyarrow's pad and cast; None otherwise."""
    chars = same_length_ascii(values)
    if chars is None or chars.shape[1] > width:
        return None  # multi-byte characters or longer values: pyarrow's path tells whether they fit
    out = np.zeros((len(values), width), np.uint8)
    out[:, : chars.shape[1]] = chars
    return out


def _number_bytes(numbers: Sequence[str] | np.ndarray | pa.Array) -> np.ndarray:
    """Numbers as a numpy bytes array of _MAX_WIDTH characters (what number_keys reads); an Arrow array of
    numbers that fit becomes one without a Python string per number."""
    if isinstance(numbers, pa.Array):
        chars = padded_bytes(numbers, _MAX_WIDTH)
        if chars is not None:
            return chars.view(f"S{_MAX_WIDTH}").reshape(-1)
        numbers = numbers.to_pylist()
    return np.asarray(numbers, dtype=f"S{_MAX_WIDTH}")


def _distinct(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct strings of a numpy string array and each row's index among them (short ASCII codes such as
    issuing states are packed into integers first: sorting integers is many times faster than strings)."""
    if values.dtype.kind == "U" and values.dtype.itemsize <= 4 * 7:
        width = values.dtype.itemsize // 4
        chars = values.view(np.uint32).reshape(len(values), width)
        if len(values) and int(chars.max()) < 128:
            packed = np.zeros(len(values), np.uint64)
            for i in range(width):
                packed = (packed << np.uint64(8)) | chars[:, i].astype(np.uint64)
            _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
            return [str(values[i]) for i in first], inverse
    distinct, inverse = np.unique(values, return_inverse=True)
    return [str(v) for v in distinct], inverse


def _base_rows(view: _View, lo: int, hi: int) -> list[_Entry]:
    base, dead = view.base, view.dead
    return [
        _Entry(int(base.record_id[p]), int(base.number[p]), int(base.state[p]), int(base.cls[p]))
        for p in range(lo, hi)
        if not dead[p]
    ]


def _base_entries(
    view: _View, queries: np.ndarray, first: np.ndarray, folded: np.ndarray
) -> Iterable[tuple[int, _Entry]]:
    """(query, live base row) for every base row whose folded key is that of the query: `first` is the first
    row of each query's run of equal keys, `folded` its key. Gathered in numpy for all queries at once (a
    manifest finds a few dozen rows: reading them element by element cost more than the search)."""
    base = view.base
    # A run of equal keys is mostly one row (a number listed once): then the row after each first one has another
    # key, which one read of the column tells; a binary search over the whole column for the end of each run
    # (cache misses all the way down) only when some run is longer.
    after = np.minimum(first + 1, len(base) - 1)
    if not ((base.folded[after] == folded) & (after > first)).any():
        rows, owners = first, queries
    else:
        counts = base.folded.searchsorted(folded, "right") - first
        owners = np.repeat(queries, counts)
        starts = np.cumsum(counts) - counts
        rows = np.arange(len(owners)) - np.repeat(starts, counts) + np.repeat(first, counts)
    live = ~view.dead[rows]
    if not live.all():
        rows, owners = rows[live], owners[live]
    entries = map(
        _Entry,
        base.record_id[rows].tolist(),
        base.number[rows].tolist(),
        base.state[rows].tolist(),
        base.cls[rows].tolist(),
    )
    return zip(owners.tolist(), entries, strict=True)


def _classify_row(state: int, number: int, cls: int, row: _Entry) -> MatchKind | None:
    # The matching rules of `classify`, on codes and keys (state 0: the query has no state).
    same_number = row.number == number
    if state == 0:
        return MatchKind.STATE_MISSING if same_number else None
    if row.state == state:
        if not same_number:
            return MatchKind.OCR_VARIANT
        if cls in (DocumentClass.UNSPECIFIED, row.cls):
            return MatchKind.EXACT
        return MatchKind.CLASS_MISMATCH
    return MatchKind.STATE_MISMATCH if same_number else None


def _merge(view: _View, extra: dict[str, np.ndarray] | None, sequence: int) -> _Base:
    """Fresh sorted columns: live base rows, the overlay and `extra` rows."""
    base = view.base
    live = ~view.dead[: len(base)]
    everyone = bool(live.all())
    parts = {c: [getattr(base, c) if everyone else getattr(base, c)[live]] for c in COLUMNS}
    entries = [(f, e) for f, rows in view.overlay.items() for e in rows]
    if entries:
        parts["folded"].append(np.fromiter((f for f, _ in entries), np.uint64, len(entries)))
        parts["number"].append(np.fromiter((e.number for _, e in entries), np.uint64, len(entries)))
        parts["state"].append(np.fromiter((e.state for _, e in entries), np.uint16, len(entries)))
        parts["cls"].append(np.fromiter((e.cls for _, e in entries), np.int8, len(entries)))
        parts["record_id"].append(np.fromiter((e.record_id for _, e in entries), np.int64, len(entries)))
    if extra:
        for c in COLUMNS:
            parts[c].append(extra[c].astype(_DTYPES[c], copy=False))
    # No copy of a lone non-empty part (sorting below makes the new arrays; a first big upload's columns are then
    # not copied twice).
    kept = {c: [p for p in parts[c] if len(p)] or parts[c][:1] for c in COLUMNS}
    columns = {c: np.concatenate(kept[c]) if len(kept[c]) > 1 else kept[c][0] for c in COLUMNS}
    # The live base rows are already sorted: a stable sort of sorted runs is close to a linear merge.
    order = np.argsort(columns["folded"], kind="stable")
    del parts, kept, extra
    # Column by column, each unsorted copy dropped once sorted (when nothing else holds it): less at the peak.
    return _Base(**{c: np.ascontiguousarray(columns.pop(c)[order]) for c in COLUMNS}, sequence=sequence)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_snapshot(path: Path, max_sequence: int) -> tuple[_Base, list[str]]:
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != 1:
        raise ValueError(f"unknown snapshot format {manifest.get('format')!r}")
    sequence = int(manifest["sequence"])
    if sequence > max_sequence:
        raise ValueError(f"covers sequence {sequence}, beyond the store's {max_sequence}")
    columns = {}
    for name in COLUMNS:
        file = path / f"{name}.npy"
        expected = manifest["files"][name]
        if file.stat().st_size != expected["bytes"] or _crc32(file) != expected["crc32"]:
            raise ValueError(f"{name}.npy does not match its manifest (torn or altered)")
        array = np.load(file, mmap_mode="r")
        if array.dtype != _DTYPES[name] or array.shape != (manifest["rows"],):
            raise ValueError(f"{name}.npy has the wrong type or length")
        # A plain ndarray over the same mapping (it keeps the memmap, and so the mapping, alive): np.memmap's
        # Python-level __getitem__ costs about a microsecond per element read, and lookups read elements.
        columns[name] = array.view(np.ndarray)
    states = list(manifest["states"])
    return _Base(**columns, sequence=sequence), states


def classify(query: Lookup, record: StoredRecord) -> MatchKind | None:
    """The matching rules: how `record` relates to `query`, if at all (None also when the folded numbers differ).

    Same state and number with a compatible class is EXACT (a HIT). Everything else is at most a possible
    match: another class, an OCR variant under the same state, the same number under another or a missing
    state. An OCR variant under another or a missing state is too loose to show the officer.
    """
    key = record.data.key
    same_number = key.number == query.number
    if not same_number and folded_key(key.number) != folded_key(query.number):
        return None
    if not query.issuing_state:
        return MatchKind.STATE_MISSING if same_number else None
    if key.issuing_state == query.issuing_state:
        if not same_number:
            return MatchKind.OCR_VARIANT
        if query.document_class in (DocumentClass.UNSPECIFIED, key.document_class):
            return MatchKind.EXACT
        return MatchKind.CLASS_MISMATCH
    return MatchKind.STATE_MISMATCH if same_number else None
