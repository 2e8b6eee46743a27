"""Columnar manifests (CheckManifest) answer exactly as manifests of queries (CheckDocuments) do."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcheck.client.files import ipc_bytes
from idcheck.register import InvalidRequest, Query, Register, Verdict
from idcheck.register.checks import CLEAR_ACTION, QueryError, prepare
from idcheck.register.manifest import FIELD, prepare_manifest
from tests.register.conftest import BORDER, NZL, raw, upload

_states = st.sampled_from(["", " ", "NZL", "nzl", " NZL", "D", "D<<", "DEU", "deu", "UTO", "ZZZ", "N", "ñzl", "FJI"])
_numbers = st.one_of(
    st.sampled_from(
        ["", "  ", "<<", "LA123456", "la 123-456", "LA12345G", "L8.98/902C3", "L898902C3", "A" * 24, "A" * 25]
    ),
    st.text(alphabet="AB01 -<.x/_\x1f\t", max_size=8),
)
_classes = st.integers(min_value=-1, max_value=6)
_births = st.sampled_from(["", "", "1980-01-31", "1980-02-03", "1980-02-30", " ", " 1974-08-12"])
_mrzs = st.sampled_from(
    [
        "",
        "",
        "",
        "",
        " ",
        "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10",
        "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408123F1204159ZE184226B<<<<<10",
        "not an mrz",
    ]
)
_refs = st.sampled_from(["", "pax-1", "seat 12A"])
_queries = st.lists(st.builds(Query, _states, _numbers, _classes, _births, _mrzs, _refs), min_size=1, max_size=12)


def table_of(queries: Sequence[Query]) -> pa.Table:
    return pa.table(
        {
            "issuing_state": [q.issuing_state for q in queries],
            "document_number": [q.document_number for q in queries],
            "document_class": pa.array([q.document_class for q in queries], pa.int32()),
            "birth_date": [q.birth_date for q in queries],
            "mrz": [q.mrz for q in queries],
            "client_reference": [q.client_reference for q in queries],
        }
    )


def columnar_field(field: str) -> str:
    """CheckDocuments' name of a bad field (queries[3].typed.document_number) as CheckManifest names it."""
    return re.sub(r"^queries\[(\d+)\](?:\.typed)?", rf"{FIELD}[\1]", field)


@settings(max_examples=300, deadline=None)
@given(queries=_queries, absent=st.sets(st.sampled_from(["birth_date", "mrz", "client_reference"])))
def test_prepare_manifest_equals_prepare_one_by_one(queries: list[Query], absent: set[str]) -> None:
    # A column the manifest leaves out is as if every row had it empty.
    queries = [q._replace(**dict.fromkeys(absent, "")) for q in queries]
    expected, expected_violations = {}, []
    for i, q in enumerate(queries):
        try:
            expected[i] = prepare(q, f"{FIELD}[{i}]", typed_field="")
        except QueryError as exc:
            expected_violations.append((exc.field, exc.description))
    got, violations = prepare_manifest(table_of(queries).drop_columns(list(absent)))
    assert violations == expected_violations
    for i, p in expected.items():
        assert got.lookup(i) == p.lookup
        assert got.preparation(i) == p


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Register:
    reg = Register.open(tmp_path_factory.mktemp("manifest"), audit_interval=0.05)
    rows = [raw("LA123456", birth_date="1980-02-03"), raw("L898902C3", state="UTO"), raw("RA0OO1", cls=2)]
    rows += [raw(f"FJ{i:05d}", state="FJI", status=1) for i in range(50)]
    upload(reg, NZL, "seed", rows)
    yield reg
    reg.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(queries=_queries)
def test_check_manifest_answers_as_check_batch(listed: Register, queries: list[Query]) -> None:
    try:
        batch = listed.check_batch(BORDER, queries)
    except InvalidRequest as exc:
        with pytest.raises(InvalidRequest) as columnar:
            listed.check_manifest(BORDER, ipc_bytes(table_of(queries)))
        assert columnar.value.violations == [(columnar_field(f), d) for f, d in exc.violations]
        return
    manifest = listed.check_manifest(BORDER, ipc_bytes(table_of(queries)))
    assert manifest.verdicts.tolist() == [int(v) for v in batch.verdicts]
    assert set(manifest.details) == set(batch.details)
    for i, expected in batch.details.items():
        got = manifest.details[i]
        assert got.query_id == manifest.query_id(i)
        assert got._replace(query_id="") == expected._replace(query_id="")
    for i in set(range(len(queries))) - set(batch.details):
        assert manifest.verdicts[i] == Verdict.CLEAR
    assert len({manifest.query_id(i) for i in range(len(queries))}) == len(queries)
    assert CLEAR_ACTION.startswith("CLEAR")


def test_every_document_is_audited_with_its_query_id(listed: Register) -> None:
    queries = [
        Query("NZL", "X1"),
        Query("NZL", "LA123456"),
        Query("FJI", "FJ00001", client_reference="r"),
        Query("", "Q9"),
    ]
    batch = listed.check_manifest(BORDER, ipc_bytes(table_of(queries)))
    listed.audit.flush()
    rows = {r.query_id: r for r in listed.store.audit_rows(limit=100)}
    audited = [rows[batch.query_id(i)] for i in range(len(queries))]
    assert [r.verdict for r in audited] == ["CLEAR", "HIT", "HIT", "CLEAR"]
    assert [(r.issuing_state, r.document_number) for r in audited] == [
        ("NZL", "X1"),
        ("NZL", "LA123456"),
        ("FJI", "FJ00001"),
        ("", "Q9"),
    ]
    assert {(r.caller_member, r.caller_role) for r in audited} == {("AUS", "border")}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "required"),
        (b"not arrow at all", "not a readable Arrow IPC stream"),
        (ipc_bytes(pa.table({"issuing_state": ["NZL"]})), "document_number or an mrz column is required"),
        (ipc_bytes(pa.table({"document_number": ["A1"], "passport_no": ["A1"]})), "unknown column(s) passport_no"),
        (ipc_bytes(pa.table({"document_number": [1]})), "column document_number must be utf8 text"),
        (ipc_bytes(pa.table({"document_number": ["A1"], "document_class": ["1"]})), "must be an integer"),
        (ipc_bytes(pa.table({"document_number": pa.array([], pa.string())})), "at least one query"),
        (ipc_bytes(pa.table({"document_number": ["A1"] * 10_001})), "more than 10000 rows"),
    ],
)
def test_unusable_payloads_are_refused_and_not_audited(listed: Register, payload: bytes, message: str) -> None:
    listed.audit.flush()
    before = listed.store.audit_count()
    with pytest.raises(InvalidRequest) as exc:
        listed.check_manifest(BORDER, payload)
    [(field, description)] = exc.value.violations
    assert field == FIELD and message in description
    listed.audit.flush()
    assert listed.store.audit_count() == before


def test_bad_rows_are_all_reported_by_row_and_column(listed: Register) -> None:
    queries = [Query("NZL", "A1"), Query("QQQ", "A2"), Query(mrz="garbage"), Query("NZL", "A#3"), Query("NZL", "A4", 9)]
    with pytest.raises(InvalidRequest) as exc:
        listed.check_manifest(BORDER, ipc_bytes(table_of(queries)))
    assert [f for f, _ in exc.value.violations] == [
        f"{FIELD}[1].issuing_state",
        f"{FIELD}[2].mrz",
        f"{FIELD}[3].document_number",
        f"{FIELD}[4].document_class",
    ]


def test_missing_optional_columns_and_nulls_are_empty(listed: Register) -> None:
    table = pa.table({"document_number": ["LA123456", None, "la 123 456"], "issuing_state": ["NZL", "NZL", None]})
    with pytest.raises(InvalidRequest) as exc:  # a null number is an empty one
        listed.check_manifest(BORDER, ipc_bytes(table))
    assert [f for f, _ in exc.value.violations] == [f"{FIELD}[1].document_number"]
    batch = listed.check_manifest(BORDER, ipc_bytes(table.filter(pa.array([True, False, True]))))
    assert batch.verdicts.tolist() == [Verdict.HIT, Verdict.POSSIBLE_MATCH]  # no state: STATE_MISSING
