"""Query preparation, verdicts and the officer's action text (idcheck.register.checks)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idcheck.icao import DocumentClass, MRZFormat, compose_mrz
from idcheck.index import Lookup, Match, MatchKind
from idcheck.records import DocumentKey, Holder, RecordData, RecordStatus, StoredRecord
from idcheck.register.checks import (
    PreparedQuery,
    Query,
    QueryError,
    Verdict,
    officer_action,
    prepare,
    prepare_many,
    verdict_of,
)


def record(status: RecordStatus = RecordStatus.STOLEN, instructions: str = "", birth: str = "") -> StoredRecord:
    data = RecordData(
        DocumentKey("NZL", "LA123456", DocumentClass.PASSPORT),
        "LA123456",
        status,
        "2024-03-01",
        Holder(birth_date=birth),
        instructions,
    )
    return StoredRecord(7, data, "NZL", "2024-03-02T00:00:00.000Z", 3)


def typed(state: str = "NZL", number: str = "LA123456", cls: int = 0, birth: str = "") -> PreparedQuery:
    return prepare(Query(state, number, cls, birth), "query")


def test_typed_query_is_canonicalised() -> None:
    p = prepare(Query(" deu ", "c01-x00 t47", 1, "1980-01-31", client_reference="ref"), "query")
    assert p.lookup == Lookup("D", "C01X00T47", DocumentClass.PASSPORT)
    assert (p.kind, p.mrz, p.birth_date, p.state_as_read, p.client_reference) == (
        "typed",
        None,
        "1980-01-31",
        "",
        "ref",
    )


def test_typed_query_without_state_looks_up_with_state_missing() -> None:
    assert typed(state="  ").lookup.issuing_state == ""


def test_mrz_query_is_read_from_the_mrz() -> None:
    mrz = compose_mrz(
        MRZFormat.TD1,
        document_type="ID",
        issuing_state="UTO",
        document_number="D23145890734",
        nationality="UTO",
        birth_date="740812",
        sex="F",
        expiry_date="300415",
        surname="ERIKSSON",
        given_names="ANNA",
    )
    p = prepare(Query(mrz="\n".join(mrz).lower()), "queries[3]")
    assert p.kind == "mrz"
    assert p.lookup == Lookup("UTO", "D23145890734", DocumentClass.ID_CARD)
    assert p.birth_date == "1974-08-12"
    assert p.mrz is not None and p.mrz.valid


def test_mrz_longer_than_any_mrz_is_refused_before_parsing() -> None:
    with pytest.raises(QueryError) as exc:
        prepare(Query(mrz="P" * 201), "q")
    assert exc.value.field == "q.mrz"


def test_verdict_is_hit_only_for_an_exact_match() -> None:
    r = record()
    assert verdict_of(()) == Verdict.CLEAR
    assert verdict_of((Match(MatchKind.EXACT, r),)) == Verdict.HIT
    assert verdict_of((Match(MatchKind.EXACT, r), Match(MatchKind.OCR_VARIANT, r))) == Verdict.HIT
    for kind in (MatchKind.OCR_VARIANT, MatchKind.STATE_MISMATCH, MatchKind.STATE_MISSING, MatchKind.CLASS_MISMATCH):
        assert verdict_of((Match(kind, r),)) == Verdict.POSSIBLE_MATCH


def test_hit_action_gives_status_owner_date_and_default_instructions() -> None:
    action = officer_action(Verdict.HIT, (Match(MatchKind.EXACT, record(RecordStatus.STOLEN_BLANK)),), typed())
    assert action.startswith("HIT: document reported STOLEN BLANK by NZL on 2024-03-01.")
    assert "secondary inspection" in action


def test_possible_match_action_names_every_kind_and_says_not_a_hit() -> None:
    r = record()
    action = officer_action(
        Verdict.POSSIBLE_MATCH, (Match(MatchKind.OCR_VARIANT, r), Match(MatchKind.CLASS_MISMATCH, r)), typed()
    )
    assert action.startswith("POSSIBLE MATCH")
    assert "OCR" in action and "another class" in action and "not a hit" in action


def test_birth_date_mismatch_only_when_both_are_known() -> None:
    exact = (Match(MatchKind.EXACT, record(birth="1980-01-31")),)
    assert "impostor" in officer_action(Verdict.HIT, exact, typed(birth="1980-02-01"))
    assert "impostor" not in officer_action(Verdict.HIT, exact, typed(birth="1980-01-31"))
    assert "impostor" not in officer_action(Verdict.HIT, exact, typed())
    assert "impostor" not in officer_action(Verdict.HIT, (Match(MatchKind.EXACT, record()),), typed(birth="1980-02-01"))


# -- prepare_many must answer exactly as prepare, query by query --------------------------------------

_states = st.sampled_from(["", " ", "NZL", "nzl", " NZL", "D", "D<<", "DEU", "deu", "UTO", "ZZZ", "N", "ñzl", "XXA"])
_numbers = st.one_of(
    st.sampled_from(["", "  ", "<<", "LA123456", "la 123-456", "L8.98/902C3", "A" * 24, "A" * 25, "A-" * 24 + "A"]),
    st.text(alphabet="AB01 -<.x/_\x1f\t", max_size=8),
)
_classes = st.integers(min_value=-1, max_value=6)
_births = st.sampled_from(["", "", "1980-01-31", "1980-02-30", " "])
_mrzs = st.sampled_from(
    [
        "",
        "",
        "",
        "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10",
        "not an mrz",
    ]
)
_queries = st.lists(st.builds(Query, _states, _numbers, _classes, _births, _mrzs, st.just("ref")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(queries=_queries, single=st.booleans())
def test_prepare_many_equals_prepare_one_by_one(queries: list[Query], single: bool) -> None:
    expected_prepared, expected_violations = [], []
    for i, q in enumerate(queries):
        try:
            expected_prepared.append(prepare(q, "query" if single else f"queries[{i}]"))
        except QueryError as exc:
            expected_violations.append((exc.field, exc.description))
    prepared, violations = prepare_many(queries, "query" if single else "queries", single=single)
    assert violations == expected_violations
    assert prepared == expected_prepared
