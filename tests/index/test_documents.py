"""The in-memory document index and the matching rules of design.md."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idcheck.icao import DocumentClass, folded_key
from idcheck.index import DocumentIndex, Lookup, MatchKind, classify
from idcheck.records import DocumentKey, RecordData, RecordStatus, StoredRecord

PASSPORT, ID_CARD = DocumentClass.PASSPORT, DocumentClass.ID_CARD


def stored(
    record_id: int,
    state: str,
    number: str,
    cls: DocumentClass = PASSPORT,
    status: RecordStatus = RecordStatus.STOLEN,
    sequence: int | None = None,
    instructions: str = "",
) -> StoredRecord:
    data = RecordData(
        key=DocumentKey(state, number, cls),
        number_printed=number,
        status=status,
        event_date="2024-01-01",
        instructions=instructions,
    )
    return StoredRecord(record_id, data, "NZL", "2024-01-02T00:00:00.000Z", record_id if sequence is None else sequence)


def kinds(index: DocumentIndex, query: Lookup) -> list[tuple[MatchKind, int]]:
    return [(m.kind, m.record_id) for m in index.lookup(query)]


# -- classify -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (Lookup("NZL", "LA123456", PASSPORT), MatchKind.EXACT),
        (Lookup("NZL", "LA123456"), MatchKind.EXACT),  # no class given: matches every class
        (Lookup("NZL", "LA123456", ID_CARD), MatchKind.CLASS_MISMATCH),
        (Lookup("NZL", "1A123456", PASSPORT), MatchKind.OCR_VARIANT),  # L read as 1
        (Lookup("NZL", "1A123456", ID_CARD), MatchKind.OCR_VARIANT),
        (Lookup("AUS", "LA123456", PASSPORT), MatchKind.STATE_MISMATCH),
        (Lookup("", "LA123456", PASSPORT), MatchKind.STATE_MISSING),
        (Lookup("", "LA123456"), MatchKind.STATE_MISSING),
        (Lookup("AUS", "1A123456", PASSPORT), None),  # OCR variant under another state: too loose
        (Lookup("", "1A123456", PASSPORT), None),  # OCR variant without a state: too loose
    ],
)
def test_classify_applies_matching_rules(query: Lookup, expected: MatchKind | None) -> None:
    assert classify(query, stored(1, "NZL", "LA123456")) == expected


# -- lookups ------------------------------------------------------------------------------------------


def test_exact_number_same_state_and_class_is_exact() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456")])
    assert kinds(index, Lookup("NZL", "LA123456", PASSPORT)) == [(MatchKind.EXACT, 1)]


def test_unlisted_number_has_no_match() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456")])
    assert not index.lookup(Lookup("NZL", "LA123457", PASSPORT))


def test_ocr_variant_is_found_only_under_the_same_state() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "B0S1")])
    assert kinds(index, Lookup("NZL", "8O51", PASSPORT)) == [(MatchKind.OCR_VARIANT, 1)]
    assert not index.lookup(Lookup("AUS", "8O51", PASSPORT))
    assert not index.lookup(Lookup("", "8O51", PASSPORT))


def test_unfolded_lookalikes_are_not_variants() -> None:
    # U/V, T/7, A/4 and E/F are deliberately not folded (icao.numbers).
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "UT4E")])
    for other in ("VT4E", "U74E", "UTAE", "UT4F"):
        assert not index.lookup(Lookup("NZL", other, PASSPORT)), other


def test_same_number_other_state_is_state_mismatch() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456")])
    assert kinds(index, Lookup("FJI", "LA123456", PASSPORT)) == [(MatchKind.STATE_MISMATCH, 1)]


def test_same_number_without_state_is_state_missing() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456", ID_CARD)])
    assert kinds(index, Lookup("", "LA123456", PASSPORT)) == [(MatchKind.STATE_MISSING, 1)]


def test_same_number_other_class_is_class_mismatch() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456", ID_CARD)])
    assert kinds(index, Lookup("NZL", "LA123456", PASSPORT)) == [(MatchKind.CLASS_MISMATCH, 1)]


def test_exact_match_comes_first_among_several() -> None:
    index = DocumentIndex()
    index.apply(
        [
            stored(1, "FJI", "AB0123"),  # same number, other state
            stored(2, "NZL", "ABO123"),  # OCR variant (O for 0)
            stored(3, "NZL", "AB0123", ID_CARD),  # other class
            stored(4, "NZL", "AB0123"),  # the document itself
        ]
    )
    assert kinds(index, Lookup("NZL", "AB0123", PASSPORT)) == [
        (MatchKind.EXACT, 4),
        (MatchKind.OCR_VARIANT, 2),
        (MatchKind.STATE_MISMATCH, 1),
        (MatchKind.CLASS_MISMATCH, 3),
    ]


def test_lookup_many_answers_each_query_in_order() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "AA1"), stored(2, "NZL", "BB2")])
    found = index.lookup_many([Lookup("NZL", "BB2"), Lookup("NZL", "ZZ9"), Lookup("NZL", "AA1")])
    assert [[m.record_id for m in f] for f in found] == [[2], [], [1]]


# -- applying changes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [RecordStatus.CANCELLED, RecordStatus.UNSPECIFIED])
def test_record_that_cannot_hit_is_not_indexed(status: RecordStatus) -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456", status=status)])
    assert len(index) == 0
    assert not index.lookup(Lookup("NZL", "LA123456"))


def test_cancelled_record_is_removed_on_apply() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456"), stored(2, "NZL", "LA123456", ID_CARD)])
    index.apply([stored(1, "NZL", "LA123456", status=RecordStatus.CANCELLED, sequence=3)])
    assert len(index) == 1
    assert kinds(index, Lookup("NZL", "LA123456")) == [(MatchKind.EXACT, 2)]
    index.apply([stored(2, "NZL", "LA123456", ID_CARD, status=RecordStatus.CANCELLED, sequence=4)])
    assert len(index) == 0
    assert not index.lookup(Lookup("NZL", "LA123456"))
    assert not index.lookup(Lookup("", "LA123456"))


def test_reapplied_record_stays_one_candidate() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456", instructions="old")])
    index.apply([stored(1, "NZL", "LA123456", status=RecordStatus.REVOKED, sequence=2, instructions="new")])
    index.apply([stored(1, "NZL", "LA123456", status=RecordStatus.REVOKED, sequence=2, instructions="new")])
    assert kinds(index, Lookup("NZL", "LA123456")) == [(MatchKind.EXACT, 1)]
    assert len(index) == 1


def test_relisted_record_hits_again() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "LA123456")])
    index.apply([stored(1, "NZL", "LA123456", status=RecordStatus.CANCELLED, sequence=2)])
    index.apply([stored(1, "NZL", "LA123456", status=RecordStatus.LOST, sequence=3)])
    assert kinds(index, Lookup("NZL", "LA123456")) == [(MatchKind.EXACT, 1)]


def test_len_counts_active_records() -> None:
    index = DocumentIndex()
    assert len(index) == 0
    index.apply([stored(i, "NZL", f"N{i}") for i in range(1, 6)])
    assert len(index) == 5
    index.apply([stored(3, "NZL", "N3", status=RecordStatus.CANCELLED, sequence=6)])
    assert len(index) == 4


def test_sequence_follows_records_when_not_given() -> None:
    index = DocumentIndex()
    assert index.sequence == 0
    index.apply([stored(1, "NZL", "A1", sequence=5), stored(2, "NZL", "A2", sequence=3)])
    assert index.sequence == 5


def test_sequence_given_explicitly_advances_and_never_goes_back() -> None:
    index = DocumentIndex()
    index.apply([stored(1, "NZL", "A1", sequence=2)], sequence=7)
    assert index.sequence == 7
    index.apply([], sequence=9)
    assert index.sequence == 9
    index.apply([stored(2, "NZL", "A2", sequence=4)], sequence=4)
    assert index.sequence == 9


# -- the index agrees with the rules applied to every record ------------------------------------------

_STATES = ("NZL", "FJI", "D")
_CHARS = "0OQD1IL2Z5S6G8B7UVA"  # mostly characters that fold together, so buckets collide
_numbers = st.text(alphabet=_CHARS, min_size=1, max_size=4)
_records = st.lists(
    st.tuples(
        st.sampled_from(_STATES),
        _numbers,
        st.sampled_from([PASSPORT, ID_CARD]),
        st.sampled_from([RecordStatus.STOLEN, RecordStatus.LOST, RecordStatus.CANCELLED]),
    ),
    max_size=25,
)
_lookups = st.lists(
    st.builds(Lookup, st.sampled_from(("", *_STATES)), _numbers, st.sampled_from(list(DocumentClass))),
    min_size=1,
    max_size=15,
)


@settings(max_examples=150, deadline=None)
@given(records=_records, updates=_records, queries=_lookups)
def test_lookup_equals_rules_applied_to_every_active_record(
    records: list[tuple[str, str, DocumentClass, RecordStatus]],
    updates: list[tuple[str, str, DocumentClass, RecordStatus]],
    queries: list[Lookup],
) -> None:
    # Records are identified by their key, as in the store; `updates` re-applies some keys with a new status.
    ids: dict[tuple[str, str, DocumentClass], int] = {}
    current: dict[int, StoredRecord] = {}
    index = DocumentIndex()
    seq = 0
    for batch in (records, updates):
        changed = []
        for state, number, cls, status in batch:
            rid = ids.setdefault((state, number, cls), len(ids) + 1)
            seq += 1
            current[rid] = stored(rid, state, number, cls, status=status, sequence=seq)
            changed.append(current[rid])
        index.apply(changed)
    active = [r for r in current.values() if r.data.status.hits]
    assert len(index) == len(active)
    assert index.sequence == seq
    expected = []
    for q in queries:
        found = [(classify(q, r), r.record_id) for r in active if folded_key(r.data.key.number) == folded_key(q.number)]
        expected.append(sorted((k, rid) for k, rid in found if k is not None))
    assert [kinds(index, q) for q in queries] == expected
    assert [[(m.kind, m.record_id) for m in found] for found in index.lookup_many(queries)] == expected
