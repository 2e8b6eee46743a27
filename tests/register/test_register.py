"""The register facade: checks, upload sessions, cancels and reads over a real store and index."""

from __future__ import annotations

from pathlib import Path

import pytest

from idcheck.icao import MRZFormat, compose_mrz
from idcheck.index import MatchKind
from idcheck.register import InvalidRequest, LimitExceeded, Limits, Query, Register, Verdict
from idcheck.store import NotOwner, RecordNotFound
from idcheck.uploads import UploadMode
from tests.register.conftest import BORDER, FJI, NZL, raw, upload

REPLACE_ALL = UploadMode.REPLACE_ALL


def verdicts(register: Register, *queries: Query) -> list[Verdict]:
    results, _ = register.check(BORDER, list(queries))
    return [r.verdict for r in results]


def audited(register: Register) -> int:
    assert register.audit.flush()
    return register.store.audit_count()


# -- checks -------------------------------------------------------------------------------------------


def test_uploaded_record_is_hit_with_the_owners_instructions(register: Register) -> None:
    session = register.begin_upload(NZL, "u1", UploadMode.INCREMENTAL)
    session.add([raw("LA123456", instructions="Seize the document.")])
    session.commit()
    (result,), seq = register.check(BORDER, [Query("NZL", "la 123-456", 1)])
    assert seq == register.sequence == 1
    assert result.verdict == Verdict.HIT
    assert [(m.kind, m.record.owner) for m in result.matches] == [(MatchKind.EXACT, "NZL")]
    assert result.officer_action.startswith("HIT: document reported STOLEN by NZL on 2024-01-01.")
    assert "Seize the document." in result.officer_action


def test_unlisted_document_is_clear(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA123456")])
    (result,), _ = register.check(BORDER, [Query("NZL", "LA654321", 1)])
    assert result.verdict == Verdict.CLEAR and result.matches == ()
    assert result.officer_action.startswith("CLEAR")


def test_near_matches_are_possible_matches_never_hits(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA123456")])
    assert (
        verdicts(
            register,
            Query("NZL", "LA12345G", 1),  # OCR variant
            Query("FJI", "LA123456", 1),  # other state
            Query("", "LA123456", 1),  # no state
            Query("NZL", "LA123456", 2),  # other class
        )
        == [Verdict.POSSIBLE_MATCH] * 4
    )


def test_cancelled_record_never_hits(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA123456"), raw("LB000001")])
    outcome = register.cancel(NZL, [("NZL", "LA123456", 1)], "recovered")
    assert outcome.cancelled == 1 and register.sequence == 3
    assert verdicts(register, Query("NZL", "LA123456"), Query("", "LA123456"), Query("NZL", "LB000001")) == [
        Verdict.CLEAR,
        Verdict.CLEAR,
        Verdict.HIT,
    ]
    record, history = register.get(NZL, "nzl", "la123456", 1)
    assert record.data.status.name == "CANCELLED"
    assert [c.operation for c in history] == ["CREATED", "CANCELLED"]


def test_german_record_is_found_under_d_and_deu(register: Register) -> None:
    upload(register, NZL, "u1", [raw("C01X00T47", state="DEU")])
    assert (
        verdicts(register, Query("D", "C01X00T47"), Query("D<<", "C01X00T47"), Query("deu", "C01X00T47"))
        == [Verdict.HIT] * 3
    )


def test_mrz_with_iso_code_deu_finds_record_reported_under_d(register: Register) -> None:
    # DEU and D name the same state (icao.states aliases them), whichever way the document is presented.
    upload(register, NZL, "u1", [raw("C01X00T47", state="D")])
    mrz = compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state="DEU",
        document_number="C01X00T47",
        nationality="DEU",
        birth_date="830812",
        sex="F",
        expiry_date="310101",
        surname="MUSTERMANN",
        given_names="ERIKA",
    )
    (result,), _ = register.check(BORDER, [Query(mrz="\n".join(mrz))])
    assert result.verdict == Verdict.HIT
    assert [m.kind for m in result.matches] == [MatchKind.EXACT]


def test_differing_birth_date_on_a_hit_warns_of_impostor(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA123456", birth_date="1980-01-31")])
    (same, other), _ = register.check(
        BORDER, [Query("NZL", "LA123456", 1, "1980-01-31"), Query("NZL", "LA123456", 1, "1981-01-31")]
    )
    assert same.verdict == other.verdict == Verdict.HIT
    assert "impostor" not in same.officer_action
    assert "impostor" in other.officer_action


def test_check_writes_one_audit_row_per_query(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA123456")])
    register.check(BORDER, [Query("NZL", "LA123456"), Query("NZL", "X1"), Query("", "LA123456")])
    register.check(BORDER, [Query("NZL", "LA123456")], field="query")
    assert audited(register) == 4
    rows = register.store.audit_rows()
    assert [(r.issuing_state, r.document_number, r.verdict) for r in rows] == [
        ("NZL", "LA123456", "HIT"),
        ("NZL", "X1", "CLEAR"),
        ("", "LA123456", "POSSIBLE_MATCH"),
        ("NZL", "LA123456", "HIT"),
    ]
    assert {(r.caller_member, r.caller_role, r.peer, r.register_seq) for r in rows} == {
        ("AUS", "border", "ipv4:127.0.0.1:5000", 1)
    }
    assert rows[0].matched_records == rows[3].matched_records != ""
    assert len({r.query_id for r in rows}) == 4


def test_query_ids_are_unique_and_returned_with_results(register: Register) -> None:
    results, _ = register.check(BORDER, [Query("NZL", "A1"), Query("NZL", "A2")])
    (single,), _ = register.check(BORDER, [Query("NZL", "A3")], field="query")
    audited(register)
    ids = [r.query_id for r in (*results, single)]
    assert len(set(ids)) == 3
    assert [r.query_id for r in register.store.audit_rows()] == ids


def test_too_many_queries_is_invalid_request(tmp_path: Path) -> None:
    register = Register.open(tmp_path, limits=Limits(max_queries_per_call=3))
    try:
        with pytest.raises(InvalidRequest) as exc:
            register.check(BORDER, [Query("NZL", f"A{i}") for i in range(4)])
        assert [f for f, _ in exc.value.violations] == ["queries"]
        with pytest.raises(InvalidRequest):
            register.check(BORDER, [])
        assert len(register.check(BORDER, [Query("NZL", f"A{i}") for i in range(3)])[0]) == 3
        assert audited(register) == 3
    finally:
        register.close()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (Query("ZZZ", "A1"), "query.typed.issuing_state"),
        (Query("NZL", ""), "query.typed.document_number"),
        (Query("NZL", "A_1"), "query.typed.document_number"),
        (Query("NZL", "A" * 25), "query.typed.document_number"),
        (Query("NZL", "A1", 9), "query.typed.document_class"),
        (Query("NZL", "A1", 1, "1980-02-30"), "query.typed.birth_date"),
        (Query(mrz="P<NZLSMITH"), "query.mrz"),
    ],
)
def test_bad_single_query_names_its_field(register: Register, query: Query, field: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        register.check(BORDER, [query], field="query")
    assert [f for f, _ in exc.value.violations] == [field]
    assert audited(register) == 0


# -- MRZ queries --------------------------------------------------------------------------------------


def td3(number: str, state: str = "NZL") -> list[str]:
    return compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state=state,
        document_number=number,
        nationality=state,
        birth_date="800131",
        sex="M",
        expiry_date="300101",
        surname="NGATA",
        given_names="ARI",
    )


def test_mrz_query_of_listed_passport_is_hit(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA1234567")])
    (result,), _ = register.check(BORDER, [Query(mrz="\n".join(td3("LA1234567")))])
    assert result.verdict == Verdict.HIT
    assert result.query.kind == "mrz" and result.query.birth_date == "1980-01-31"
    assert "check digit" not in result.officer_action


def test_mrz_with_failing_check_digit_still_looks_up_and_says_so(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA1234567")])
    one, two = td3("LA1234567")
    wrong = str((int(two[9]) + 1) % 10)  # the document number's check digit
    (result,), _ = register.check(BORDER, [Query(mrz=f"{one}\n{two[:9]}{wrong}{two[10:]}")])
    assert result.verdict == Verdict.HIT
    assert result.query.mrz is not None and "document_number" in result.query.mrz.failed_checks
    assert "MRZ check digit failed" in result.officer_action
    assert "document_number" in result.officer_action


def test_mrz_with_failing_check_digit_on_clear_document_is_reported(register: Register) -> None:
    one, two = td3("LA1234567")
    wrong = str((int(two[19]) + 1) % 10)  # the birth date's check digit
    (result,), _ = register.check(BORDER, [Query(mrz=f"{one}\n{two[:19]}{wrong}{two[20:]}")])
    assert result.verdict == Verdict.CLEAR
    assert "MRZ check digit failed" in result.officer_action and "birth_date" in result.officer_action


def test_mrz_with_unknown_issuing_state_is_searched_without_state(register: Register) -> None:
    upload(register, NZL, "u1", [raw("LA1234567")])
    (result,), _ = register.check(BORDER, [Query(mrz="\n".join(td3("LA1234567", state="ZZZ")))])
    assert result.query.lookup.issuing_state == ""
    assert result.query.state_as_read == "ZZZ"
    assert result.verdict == Verdict.POSSIBLE_MATCH
    assert [m.kind for m in result.matches] == [MatchKind.STATE_MISSING]
    assert "'ZZZ'" in result.officer_action and "not a known ICAO code" in result.officer_action
    audited(register)
    assert register.store.audit_rows()[-1].issuing_state == "ZZZ"


def test_mrz_with_unknown_issuing_state_and_no_record_is_clear_but_flagged(register: Register) -> None:
    (result,), _ = register.check(BORDER, [Query(mrz="\n".join(td3("LA1234567", state="ZZZ")))])
    assert result.verdict == Verdict.CLEAR
    assert "not a known ICAO code" in result.officer_action


# -- uploads ------------------------------------------------------------------------------------------


def test_upload_batch_larger_than_limit_is_invalid_request(tmp_path: Path) -> None:
    register = Register.open(tmp_path, limits=Limits(max_records_per_batch=3))
    try:
        session = register.begin_upload(NZL, "u1", UploadMode.INCREMENTAL)
        with pytest.raises(InvalidRequest) as exc:
            session.add([raw(f"A{i}") for i in range(4)])
        assert [f for f, _ in exc.value.violations] == ["batch.records"]
        session.add([raw(f"A{i}") for i in range(3)])
        assert session.commit().created == 3
    finally:
        register.close()


def test_upload_over_row_limit_is_limit_exceeded(tmp_path: Path) -> None:
    register = Register.open(tmp_path, limits=Limits(max_records_per_batch=3, max_rows_per_upload=5))
    try:
        session = register.begin_upload(NZL, "u1", UploadMode.INCREMENTAL)
        session.add([raw(f"A{i}") for i in range(3)])
        with pytest.raises(LimitExceeded):
            session.add([raw(f"B{i}") for i in range(3)])
        ok = register.begin_upload(NZL, "u2", UploadMode.INCREMENTAL)
        ok.add([raw(f"A{i}") for i in range(3)])
        ok.add([raw(f"B{i}") for i in range(2)])  # exactly the limit
        assert ok.commit().created == 5
    finally:
        register.close()


def test_duplicate_keys_in_one_upload_are_rejected(register: Register) -> None:
    session = register.begin_upload(NZL, "u1", UploadMode.INCREMENTAL)
    session.add([raw("LA123456"), raw("LB1"), raw("la-123 456", 1)])
    session.add([raw("LB1", 4), raw("LB1", cls=2)])  # another class is another document
    outcome = session.commit()
    assert outcome.created == 3
    assert [(r.row_index, r.field, r.reason) for r in outcome.rejections] == [
        (2, "key", "duplicate of row 0 in this upload"),
        (3, "key", "duplicate of row 1 in this upload"),
    ]
    record, _ = register.get(NZL, "NZL", "LA123456", 1)
    assert record.data.status.name == "STOLEN"


def test_bad_rows_are_listed_and_good_rows_committed(register: Register) -> None:
    session = register.begin_upload(NZL, "u1", UploadMode.INCREMENTAL)
    session.add([raw("A1"), raw("A2", event="2024-02-30"), raw("A3", state="ZZZ")])
    session.add([raw("A4", status=0), raw("A5", cls=0), raw("A6")])
    outcome = session.commit()
    assert (outcome.received, outcome.accepted, outcome.created) == (6, 2, 2)
    assert [(r.row_index, r.field) for r in outcome.rejections] == [
        (1, "event_date"),
        (2, "key.issuing_state"),
        (3, "status"),
        (4, "key.document_class"),
    ]
    assert verdicts(register, Query("NZL", "A1"), Query("NZL", "A2"), Query("NZL", "A6")) == [
        Verdict.HIT,
        Verdict.CLEAR,
        Verdict.HIT,
    ]


def test_replace_all_keeps_records_whose_row_was_rejected(register: Register) -> None:
    upload(register, NZL, "u1", [raw("A1"), raw("A2"), raw("A3")])
    outcome = upload(register, NZL, "u2", [raw("A1"), raw("A2", event="not a date")], REPLACE_ALL)
    assert outcome.cancelled == 1
    assert verdicts(register, Query("NZL", "A1"), Query("NZL", "A2"), Query("NZL", "A3")) == [
        Verdict.HIT,
        Verdict.HIT,
        Verdict.CLEAR,
    ]


def test_upload_touching_another_members_record_is_rejected(register: Register) -> None:
    upload(register, NZL, "u1", [raw("A1")])
    outcome = upload(register, FJI, "f1", [raw("A1", 6), raw("F1", state="FJI")])
    assert [(r.row_index, r.field) for r in outcome.rejections] == [(0, "key")]
    assert verdicts(register, Query("NZL", "A1")) == [Verdict.HIT]


def test_replayed_upload_returns_first_outcome_and_changes_nothing(register: Register) -> None:
    first = upload(register, NZL, "u1", [raw("A1"), raw("A2")])
    session = register.begin_upload(NZL, "u1", REPLACE_ALL)
    assert session.previous_outcome() is not None
    session.add([raw("B1")])
    again = session.commit()
    assert again.replayed and (again.created, again.register_sequence) == (first.created, first.register_sequence)
    assert register.sequence == 2
    assert verdicts(register, Query("NZL", "A1"), Query("NZL", "B1")) == [Verdict.HIT, Verdict.CLEAR]


@pytest.mark.parametrize(
    ("upload_id", "mode", "description", "fields"),
    [
        ("", 1, "", ["header.upload_id"]),
        ("x" * 129, 1, "", ["header.upload_id"]),
        ("bad\nid", 1, "", ["header.upload_id"]),
        ("u1", 0, "", ["header.mode"]),
        ("u1", 7, "", ["header.mode"]),
        ("u1", 2, "d" * 1001, ["header.description"]),
        ("", 0, "d" * 1001, ["header.upload_id", "header.mode", "header.description"]),
    ],
)
def test_bad_upload_header_is_invalid_request(
    register: Register, upload_id: str, mode: int, description: str, fields: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        register.begin_upload(NZL, upload_id, mode, description)
    assert [f for f, _ in exc.value.violations] == fields


# -- cancel and read ----------------------------------------------------------------------------------


def test_cancel_of_another_members_record_changes_nothing(register: Register) -> None:
    upload(register, NZL, "u1", [raw("A1")])
    upload(register, FJI, "f1", [raw("F1", state="FJI")])
    with pytest.raises(NotOwner):
        register.cancel(FJI, [("FJI", "F1", 1), ("NZL", "A1", 1)], "mine")
    assert verdicts(register, Query("NZL", "A1"), Query("FJI", "F1")) == [Verdict.HIT, Verdict.HIT]
    assert register.sequence == 2
    with pytest.raises(RecordNotFound):
        register.cancel(FJI, [("FJI", "F1", 1), ("FJI", "F2", 1)], "x")
    assert verdicts(register, Query("FJI", "F1")) == [Verdict.HIT]


def test_cancel_with_bad_keys_lists_every_bad_field(register: Register) -> None:
    with pytest.raises(InvalidRequest) as exc:
        register.cancel(NZL, [("NZL", "A1", 1), ("ZZZ", "A1", 1), ("NZL", "", 1), ("NZL", "A1", 9)], "x")
    assert [f for f, _ in exc.value.violations] == [
        "keys[1].issuing_state",
        "keys[2].document_number",
        "keys[3].document_class",
    ]
    with pytest.raises(InvalidRequest):
        register.cancel(NZL, [], "x")
    with pytest.raises(InvalidRequest):
        register.cancel(NZL, [("NZL", "A1", 1)], "r" * 1001)


def test_get_is_only_for_the_owner(register: Register) -> None:
    upload(register, NZL, "u1", [raw("A1")])
    record, history = register.get(NZL, "NZL", "A1", 0)
    assert record.owner == "NZL" and [c.operation for c in history] == ["CREATED"]
    with pytest.raises(NotOwner):
        register.get(FJI, "NZL", "A1", 1)
    with pytest.raises(InvalidRequest):
        register.get(NZL, "NZL", "A 1 _", 1)


def test_reopened_register_answers_from_the_store(tmp_path: Path) -> None:
    register = Register.open(tmp_path)
    upload(register, NZL, "u1", [raw("A1"), raw("A2")])
    register.cancel(NZL, [("NZL", "A2", 1)], "x")
    register.close()
    register = Register.open(tmp_path)
    try:
        assert register.sequence == 3
        assert len(register.index) == 1
        assert verdicts(register, Query("NZL", "A1"), Query("NZL", "A2")) == [Verdict.HIT, Verdict.CLEAR]
    finally:
        register.close()
