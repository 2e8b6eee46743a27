"""The document key index: in-memory lookup of the records that can hit, derived from the store.

Every active record is filed under the confusion-folded form of its canonical number, so one dictionary
lookup finds exact matches, OCR variants (same folded key, different number) and the same number under
another issuing state. The matching rules of design.md are applied to that short candidate list.

Readers take no lock: each folded key maps to an immutable tuple that writers replace whole, so a check
sees either the old or the new candidates, never a half-edited list. Writers (`apply`) are serialised by
the caller in change-log order. The interface (`apply`, `lookup`, `lookup_many`, `sequence`, `len`) is
what a compact columnar implementation for 100 million records has to provide.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from idcheck.icao import DocumentClass, folded_key, folded_keys
from idcheck.records import StoredRecord


class MatchKind(enum.IntEnum):
    """How a record matched a query. Values match `idcheck.v1.MatchKind`."""

    UNSPECIFIED = 0
    EXACT = 1
    OCR_VARIANT = 2
    STATE_MISMATCH = 3
    STATE_MISSING = 4
    CLASS_MISMATCH = 5


class Match(NamedTuple):
    """One record that matched, and how."""

    kind: MatchKind
    record: StoredRecord


class Lookup(NamedTuple):
    """A canonical query: state ('' when unknown), canonical number, class (UNSPECIFIED matches all)."""

    issuing_state: str
    number: str
    document_class: DocumentClass = DocumentClass.UNSPECIFIED


class DocumentIndex:
    """Active records by folded document number."""

    def __init__(self) -> None:
        self._by_folded: dict[str, tuple[StoredRecord, ...]] = {}
        self._folded_of: dict[int, str] = {}
        self.sequence = 0

    def __len__(self) -> int:
        return len(self._folded_of)

    def apply(self, records: Iterable[StoredRecord], sequence: int | None = None) -> None:
        """Bring records to their current state, in change-log order: add active ones, drop cancelled ones."""
        for record in records:
            self._discard(record.record_id)
            if record.data.status.hits:
                folded = folded_key(record.data.key.number)
                self._by_folded[folded] = (*self._by_folded.get(folded, ()), record)
                self._folded_of[record.record_id] = folded
            if sequence is None and record.sequence > self.sequence:
                self.sequence = record.sequence
        if sequence is not None:
            self.sequence = max(self.sequence, sequence)

    def _discard(self, record_id: int) -> None:
        folded = self._folded_of.pop(record_id, None)
        if folded is None:
            return
        rest = tuple(r for r in self._by_folded[folded] if r.record_id != record_id)
        if rest:
            self._by_folded[folded] = rest
        else:
            del self._by_folded[folded]

    def lookup(self, query: Lookup) -> tuple[Match, ...]:
        """Matches for one query, exact ones first. Cancelled records are never in the index."""
        candidates = self._by_folded.get(folded_key(query.number))
        return _matches(query, candidates) if candidates else ()

    def lookup_many(self, queries: Sequence[Lookup]) -> list[tuple[Match, ...]]:
        """Matches for each query, in order (numbers folded in one pass for the whole batch)."""
        get = self._by_folded.get
        out: list[tuple[Match, ...]] = []
        for query, folded in zip(queries, folded_keys([q.number for q in queries]), strict=True):
            candidates = get(folded)
            out.append(_matches(query, candidates) if candidates else ())
        return out


def _matches(query: Lookup, candidates: tuple[StoredRecord, ...]) -> tuple[Match, ...]:
    found = []
    for record in candidates:
        kind = classify(query, record)
        if kind is not None:
            found.append(Match(kind, record))
    found.sort(key=lambda m: (m.kind, m.record.record_id))
    return tuple(found)


def classify(query: Lookup, record: StoredRecord) -> MatchKind | None:
    """The matching rules: how `record` (already sharing the folded number) relates to `query`, if at all.

    Same state and number with a compatible class is EXACT (a HIT). Everything else is at most a possible
    match: another class, an OCR variant under the same state, the same number under another or a missing
    state. An OCR variant under another or a missing state is too loose to show the officer.
    """
    key = record.data.key
    same_number = key.number == query.number
    if not query.issuing_state:
        return MatchKind.STATE_MISSING if same_number else None
    if key.issuing_state == query.issuing_state:
        if not same_number:
            return MatchKind.OCR_VARIANT
        if query.document_class in (DocumentClass.UNSPECIFIED, key.document_class):
            return MatchKind.EXACT
        return MatchKind.CLASS_MISMATCH
    return MatchKind.STATE_MISMATCH if same_number else None
