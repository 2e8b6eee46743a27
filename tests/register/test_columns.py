"""Columnar validation of Arrow upload batches: the same verdicts, reasons and values as the row path."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcheck.icao.states import KNOWN_STATES
from idcheck.records import RecordError, validate_record
from idcheck.register import columns as columns_module
from idcheck.register import manifest as manifest_module
from idcheck.register.columns import ValidatedColumns, decode_arrow_ipc, in_key_order, validate_columns
from idcheck.register.errors import InvalidRequest

TODAY = dt.date(2025, 6, 1)
TEXT = ("issuing_state", "document_number", "event_date", "surname", "given_names", "birth_date", "nationality")
TEXT += ("expiry_date", "instructions")

_dates = st.sampled_from(
    [
        "2024-01-01",
        " 2024-02-29 ",
        "20240101",
        "2024-W01-1",
        "2023-02-29",
        "",
        "  ",
        "1899-12-31",
        "1900-01-01",
        "2999-01-01",
        "2025-06-01",
        "2025-06-02",
        "2025-06-03",
        "01/02/2024",
    ]
) | st.text(max_size=11)
_states = st.sampled_from(
    ["NZL", "nzl", " D<<", "DEU", "D", "XYZ", "", " ", "UTO", "GBD", "ı", "NZL\n", "EUE"]
) | st.text(max_size=4)
_numbers = (
    st.sampled_from(["L898902C3", "l898902c3", " AB-12.34/5 ", "A<<1", "", "<<", "ÄB12", "A" * 24, "A" * 25])
    | st.sampled_from(["1-2-3-4-5-6-7-8-9-0-1-2-3-4-5-6-7-8-9-0-1-2-3-4-5", "a\tb", "X\x00Y", "12 34"])
    | st.text(alphabet="aZ09<-./ \t\nß", max_size=30)
)
_names = st.sampled_from(
    ["", "SMITH", "smith jo", " SMITH  JO ", "A\tB", "X" * 120, "X" * 121, "Ok\x01", "Émile", "a\u00a0b", "x\x85"]
) | st.text(max_size=8)
_instructions = st.sampled_from(["", "Seize document", "x" * 1000, "x" * 1001, "a\nb", "bad\x7f"]) | st.text(max_size=8)
_FIELDS = {
    "issuing_state": _states,
    "document_number": _numbers,
    "document_class": st.integers(-2, 6),
    "status": st.integers(-1, 8),
    "event_date": _dates,
    "surname": _names,
    "given_names": _names,
    "birth_date": _dates,
    "nationality": _states,
    "expiry_date": _dates,
    "instructions": _instructions,
}
_BASES = [
    dict(zip(_FIELDS, ("NZL", "LA123456", 1, 2, "2024-01-01", "", "", "", "", "", ""), strict=True)),
    dict(
        zip(_FIELDS, ("D", "c01x00t47", 2, 6, "2025-06-02", "MUSTER", "ERIKA", "1964-08-12", "D", "", ""), strict=True)
    ),
    dict(zip(_FIELDS, ("UTO", "L898902C3", 3, 1, "1900-01-01", "", "", "", "", "2030-01-01", "Seize"), strict=True)),
]
# A good row with up to three fields replaced by edgy values: most rows are then good or bad in one field only,
# which is where a fast path that is slightly too lenient (or too strict) would show.
_row = st.tuples(
    st.sampled_from(_BASES),
    st.lists(st.sampled_from(list(_FIELDS)), max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: _FIELDS[n] for n in names})
    ),
).map(lambda pair: {**pair[0], **pair[1]})


def table_of(rows: list[dict[str, object]]) -> pa.Table:
    cols: dict[str, pa.Array] = {n: pa.array([r[n] for r in rows], pa.string()) for n in TEXT}
    cols["document_class"] = pa.array([r["document_class"] for r in rows], pa.int16())
    cols["status"] = pa.array([r["status"] for r in rows], pa.int64())
    return pa.table(cols)


def row_verdict(row: dict[str, object]) -> tuple[str, ...]:
    """What validate_record says of one row: the accepted values, or ('REJECTED', field, reason)."""
    try:
        d = validate_record(**row, today=TODAY)  # type: ignore[arg-type]
    except RecordError as exc:
        return ("REJECTED", exc.field, exc.reason)
    h = d.holder
    return (
        d.key.issuing_state,
        d.key.number,
        str(int(d.key.document_class)),
        d.number_printed,
        str(int(d.status)),
        d.event_date,
        h.surname,
        h.given_names,
        h.birth_date,
        h.nationality,
        h.expiry_date,
        d.instructions,
    )


def column_verdicts(table: pa.Table, first_row: int = 0) -> dict[int, tuple[str, ...]]:
    result = validate_columns(table, first_row, TODAY)
    out: dict[int, tuple[str, ...]] = {r.row_index: ("REJECTED", r.field, r.reason) for r in result.rejections}
    for r in result.accepted.to_pylist():
        assert r["row_index"] not in out
        out[r["row_index"]] = (
            r["issuing_state"],
            r["number"],
            str(r["document_class"]),
            r["number_printed"],
            str(r["status"]),
            r["event_date"],
            r["surname"],
            r["given_names"],
            r["birth_date"],
            r["nationality"],
            r["expiry_date"],
            r["instructions"],
        )
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_row, min_size=1, max_size=40), st.integers(0, 10**6))
def test_columnar_verdicts_and_reasons_equal_the_row_path(rows: list[dict[str, object]], first_row: int) -> None:
    got = column_verdicts(table_of(rows), first_row)
    assert sorted(got) == list(range(first_row, first_row + len(rows)))
    for i, row in enumerate(rows):
        assert got[first_row + i] == row_verdict(row), row


_LONG_PRINTED = ["A" + "-" * 46 + "A", "A" + "-" * 47 + "A"]  # 48 and 49 characters as printed, "AA" canonical
_EDGES: dict[str, list[object]] = {
    "issuing_state": ["NZL", "nzl", " D<<", "DEU", "XYZ", "", " ", "ı", "NZL\n", "EUE", "<<<", "N Z L"],
    "document_number": [
        *["l898902c3", " AB-12.34/5 ", "A<<1", "", "<<", "ÄB12", "A" * 24, "A" * 25, "a\tb", "12 34"],
        *["X\x00Y", "-" * 30 + "A", "A" * 24 + " " * 25, *_LONG_PRINTED, "\u2003A1", "A1\x1c"],
    ],
    "document_class": [-1, 0, 1, 4, 5],
    "status": [-1, 0, 1, 6, 7],
    "event_date": [
        *["", " ", "2024-02-29", "2023-02-29", "20240101", "1899-12-31", "1900-01-01", "2025-06-02"],
        *["2025-06-03", " 2024-01-01\t", "2024-1-1", "2024-01-01T00:00"],
    ],
    "surname": [
        *["", " ", "A\tB", " SMITH  JO ", "X" * 120, "X" * 121, "Ok\x01", "Émile", "a\u00a0b", "x\x85"],
        *[" " + "X" * 120, "~"],
    ],
    "birth_date": ["", " ", "2025-06-01", "2025-06-02", "bad"],
    "nationality": ["", " ", "XYZ", "nzl", "D<"],
    "expiry_date": ["", " ", "2099-12-31", "bad"],
    "instructions": ["", "x" * 1000, "x" * 1001, "a\nb", "bad\x7f", "a  b"],
}


def test_every_edge_value_in_every_field_gets_the_row_path_verdict() -> None:
    rows = [{**base, name: value} for base in _BASES for name, values in _EDGES.items() for value in values]
    got = column_verdicts(table_of(rows))
    assert [got[i] for i in range(len(rows))] == [row_verdict(r) for r in rows]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "issuing_state": st.sampled_from(["NZL", "nzl", "D", "FJI", "GBD"]),
                "document_number": st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True),
                "document_class": st.integers(1, 4),
                "status": st.integers(1, 6),
                "event_date": st.dates(dt.date(1900, 1, 1), TODAY).map(dt.date.isoformat),
                "surname": st.sampled_from(["", "SMITH", "O'NEIL JO"]),
                "given_names": st.just(""),
                "birth_date": st.sampled_from(["", "1970-01-01"]),
                "nationality": st.sampled_from(["", "NZL"]),
                "expiry_date": st.sampled_from(["", "2030-12-31"]),
                "instructions": st.sampled_from(["", "Seize document"]),
            }
        ),
        min_size=1,
        max_size=50,
    )
)
def test_clean_rows_are_decided_without_the_row_path(rows: list[dict[str, object]]) -> None:
    result = validate_columns(table_of(rows), 0, TODAY)
    assert result.slow_rows == 0 and result.rejections == []
    assert column_verdicts(table_of(rows)) == {i: row_verdict(r) for i, r in enumerate(rows)}


def test_nulls_count_as_empty_text_and_zero() -> None:
    table = pa.table(
        {
            "issuing_state": ["NZL", "NZL", None],
            "document_number": ["A1", "A2", "A3"],
            "document_class": pa.array([1, None, 1], pa.int8()),
            "status": pa.array([2, 2, 2], pa.int8()),
            "event_date": ["2024-01-01", "2024-01-01", "2024-01-01"],
            "surname": [None, "X", None],
        }
    )
    result = validate_columns(table, 0, TODAY)
    assert result.accepted.column("row_index").to_pylist() == [0]
    assert result.accepted.column("surname").to_pylist() == [""]
    assert [(r.row_index, r.field) for r in result.rejections] == [(1, "key.document_class"), (2, "key.issuing_state")]
    # rejected rows whose key could be read are protected from REPLACE_ALL; row 1 has no class, row 2 no state
    assert result.protected == []


def test_rejected_rows_with_a_readable_key_are_protected() -> None:
    table = table_of(
        [
            {**_good("A1"), "event_date": "not a date"},
            {**_good("A2"), "status": 0},
            {**_good("A3"), "issuing_state": "XYZ"},
        ]
    )
    result = validate_columns(table, 10, TODAY)
    assert [(i, k.number) for i, k in result.protected] == [(10, "A1"), (11, "A2")]


def _good(number: str, state: str = "NZL") -> dict[str, object]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": 1,
        "status": 2,
        "event_date": "2024-01-01",
        "surname": "",
        "given_names": "",
        "birth_date": "",
        "nationality": "",
        "expiry_date": "",
        "instructions": "",
    }


def _mixed_batch(seed: int) -> pa.Table:
    """Rows with good, bad and borderline dates and state codes (tomorrow is the latest event date allowed)."""
    rng = random.Random(seed)
    days = [TODAY - dt.timedelta(days=d) for d in range(0, 40, 3)] + [TODAY + dt.timedelta(days=d) for d in (1, 2)]
    dates = [d.isoformat() for d in days] + ["2025-13-01", "", " 2025-01-02 ", "1900-01-01"]
    states = ["NZL", "FJI", "nzl", "D", "XYZ", ""]
    return table_of(
        [
            _good(f"N{i:05d}", rng.choice(states))
            | {
                "event_date": rng.choice(dates),
                "birth_date": rng.choice(["", *dates]),
                "nationality": rng.choice(states),
            }
            for i in range(300)
        ]
    )


def _outcome(result: ValidatedColumns) -> tuple[object, ...]:
    return result.accepted, sorted((r.row_index, r.field, r.reason) for r in result.rejections), result.slow_rows


def test_verdicts_kept_across_batches_give_the_same_validation() -> None:
    verdicts = columns_module.DistinctVerdicts(TODAY)
    seen: dict[str, set[str]] = {"event_date": set(), "issuing_state": set()}
    for seed in range(4):  # later batches find most of their values decided by earlier ones
        batch = _mixed_batch(seed)
        for name, values in seen.items():
            values.update(batch.column(name).to_pylist())
        cached, plain = (_outcome(validate_columns(batch, 300 * seed, TODAY, v)) for v in (verdicts, None))
        assert cached[0].equals(plain[0]) and cached[1:] == plain[1:]  # type: ignore[attr-defined]
        assert cached[1] and cached[0].num_rows  # type: ignore[attr-defined]
    # each distinct value decided once, whichever batch it first came in
    sizes = verdicts.sizes()
    assert all(sizes[name] == len(values) for name, values in seen.items())


def test_per_distinct_decides_each_value_once_with_known_verdicts() -> None:
    calls: list[str] = []

    def decide(value: str) -> str | None:
        calls.append(value)
        return value.upper() if value != "bad" else None

    known: dict[str, str | None] = {}
    for _ in range(3):
        ok, out = columns_module.per_distinct(pa.array(["a", "b", "a", "bad", "b"]), decide, known, limit=10)
        assert ok.tolist() == [True, True, True, False, True] and out.to_pylist() == ["A", "B", "A", "", "B"]
    assert sorted(calls) == ["a", "b", "bad"] and known == {"a": "A", "b": "B", "bad": None}
    calls.clear()
    columns_module.per_distinct(pa.array(["c", "d", "e"]), decide, known, limit=4)  # room for one more
    assert sorted(calls) == ["c", "d", "e"] and len(known) == 4


def test_per_distinct_keeps_a_column_whose_values_are_their_own_outputs() -> None:
    # A manifest's state codes, canonical already: the column itself is the output (nothing built again).
    canonical = pa.array(["NZL", "FJI", "NZL"])
    ok, out = columns_module.per_distinct(canonical, str.upper)
    assert ok.tolist() == [True, True, True] and out is canonical
    # One value that changes, or one refused: every row is given its own output, as before.
    ok, out = columns_module.per_distinct(pa.array(["NZL", "fji", "NZL"]), str.upper)
    assert ok.tolist() == [True, True, True] and out.to_pylist() == ["NZL", "FJI", "NZL"]
    ok, out = columns_module.per_distinct(pa.array(["NZL", "X"]), lambda v: v if v != "X" else None)
    assert ok.tolist() == [True, False] and out.to_pylist() == ["NZL", ""]


def test_per_distinct_keeps_a_column_of_values_kept_as_they_are_without_deciding_them() -> None:
    # An international manifest's state codes, canonical already: one hash lookup a row, no value decided.
    as_is = columns_module.in_value_set(pc.SetLookupOptions(value_set=pa.array(["", "D", "FJI", "NZL"])))
    asked: list[str] = []

    def decide(value: str) -> str | None:
        asked.append(value)
        return value.upper() if value != "X" else None

    kept = pa.array(["NZL", "FJI", "", "D", "NZL"])
    ok, out = columns_module.per_distinct(kept, decide, as_is=as_is)
    assert asked == [] and out is kept and ok.tolist() == [True] * 5
    # Any other value (one that changes, one refused, one outside the set that is its own output), or another string
    # type: every value decided, the same answers as without the set.
    for values in (["NZL", "fji"], ["NZL", "X"], ["NZL", "AUS"]):
        col = pa.array(values, pa.string())
        got, plain = columns_module.per_distinct(col, decide, as_is=as_is), columns_module.per_distinct(col, decide)
        assert got[0].tolist() == plain[0].tolist() and got[1].equals(plain[1]), values
    large = pa.array(["NZL", "FJI"], pa.large_string())
    ok, out = columns_module.per_distinct(large, decide, as_is=as_is)
    assert ok.tolist() == [True, True] and out.to_pylist() == ["NZL", "FJI"] and "FJI" in asked


_dates = st.one_of(
    st.dates().map(dt.date.isoformat),
    st.sampled_from(
        ["1980-02-30", "1900-02-29", "2000-02-29", "2001-02-29", "0000-01-01", "9999-12-31", "1980-13-01", "1980-00-10"]
    ),
    st.sampled_from(
        ["19800131", "1980-1-31", " 1980-01-31", "1980-01-31 ", "1980/01/31", "1980-01-3a", "", "1980-W05"]
    ),
    st.text(alphabet="0123456789-/ é", min_size=10, max_size=10),
)


@settings(max_examples=500, deadline=None)
@given(values=st.lists(_dates, min_size=1, max_size=6), valid=st.lists(st.dates(), min_size=1, max_size=6))
def test_iso_dates_are_recognised_exactly_when_each_is_its_own_iso_form(
    values: list[str], valid: list[dt.date]
) -> None:
    # The manifest's dates of birth are kept as they are when every one is what date.isoformat() writes for it.
    def own_form(value: str) -> bool:
        return len(value) == 10 and value.isascii() and manifest_module._query_birth(value) == value

    assert columns_module.iso_dates(pa.array(values)) == all(own_form(v) for v in values), values
    assert columns_module.iso_dates(pa.array([d.isoformat() for d in valid]))
    assert columns_module.iso_dates(pa.array(["1999-01-01", *values]).slice(1)) == all(own_form(v) for v in values)


def test_the_manifests_state_codes_kept_as_they_are_are_their_own_canonical_form() -> None:
    kept = manifest_module._STATES_KEPT
    assert "" in kept and "NZL" in kept and "D" in kept and "DEU" not in kept  # DEU is D
    assert all(manifest_module._query_state(code) == code for code in kept)
    assert {c for c in KNOWN_STATES if manifest_module._query_state(c) == c} <= set(kept)


def test_a_column_of_one_value_is_recognised_from_its_buffers() -> None:
    # per_distinct's shortcut for a manifest's one issuing state: no dictionary built for it.
    single_value = columns_module._single_value
    assert single_value(pa.array(["NZL"] * 4)) == "NZL"
    assert single_value(pa.array(["FJI", "NZL", "NZL"]).slice(1)) == "NZL"  # read from the slice's offset
    for values in (["NZL", "NZl"], ["A", "", "AA"], ["A", "AA", ""], ["É", "É"], ["", ""], [None, None], []):
        assert single_value(pa.array(values, pa.string())) is None, values
    assert single_value(pa.array(["NZL", "NZL"], pa.large_string())) is None


def test_per_distinct_decides_a_column_of_one_value_once() -> None:
    asked: list[str] = []

    def upper(value: str) -> str | None:
        asked.append(value)
        return value.upper() if value != "XYZ" else None

    single = pa.array(["NZL"] * 4)
    ok, out = columns_module.per_distinct(single, upper)
    assert asked == ["NZL"] and ok.tolist() == [True] * 4 and out is single
    # One value that changes or is refused, or rows of other lengths adding up to the same bytes: as any column.
    for values, expected_ok, expected in [
        (["nzl", "nzl"], [True, True], ["NZL", "NZL"]),
        (["XYZ", "XYZ"], [False, False], ["", ""]),
        (["A", "", "AA"], [True, True, True], ["A", "", "AA"]),
    ]:
        ok, out = columns_module.per_distinct(pa.array(values), upper)
        assert (ok.tolist(), out.to_pylist()) == (expected_ok, expected), values


def test_verdicts_of_another_day_are_not_used_and_the_cache_is_bounded() -> None:
    day_after = (TODAY + dt.timedelta(days=2)).isoformat()  # an event date valid only from TODAY + 1 on
    batch = table_of([_good("A1") | {"event_date": day_after}])
    tomorrow = TODAY + dt.timedelta(days=1)
    verdicts = columns_module.DistinctVerdicts(tomorrow)
    assert validate_columns(batch, 0, tomorrow, verdicts).accepted.num_rows == 1
    # A verdict of one day is not another day's: the date accepted tomorrow is refused today.
    assert validate_columns(batch, 0, TODAY, verdicts).accepted.num_rows == 0
    small = columns_module.DistinctVerdicts(TODAY, limit=5)
    for seed in range(3):
        batch = _mixed_batch(seed)
        assert _outcome(validate_columns(batch, 0, TODAY, small))[1] == _outcome(validate_columns(batch, 0, TODAY))[1]
    assert max(small.sizes().values()) == 5


def test_repeated_keys_keep_the_first_row_and_reject_the_others_like_the_row_path() -> None:
    rows = [_good("B2"), _good("a1"), _good("A-1"), _good("B2", state="FJI"), _good("A1")]
    accepted = validate_columns(table_of(rows), 0, TODAY).accepted
    ordered, duplicates = in_key_order(accepted)
    assert [(r.row_index, r.field, r.reason) for r in sorted(duplicates, key=lambda r: r.row_index)] == [
        (2, "key", "duplicate of row 1 in this upload"),
        (4, "key", "duplicate of row 1 in this upload"),
    ]
    assert list(
        zip(ordered.column("issuing_state").to_pylist(), ordered.column("number").to_pylist(), strict=True)
    ) == [
        ("FJI", "B2"),
        ("NZL", "A1"),
        ("NZL", "B2"),
    ]
    assert ordered.column("row_index").to_pylist() == [3, 1, 0]


def _by_strings(accepted: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
    """in_key_order with its string sort (what it does when a number is too long for an exact integer key)."""
    original = columns_module._integer_key_order
    columns_module._integer_key_order = lambda table: None
    try:
        ordered, duplicates = in_key_order(accepted)
    finally:
        columns_module._integer_key_order = original
    return ordered, sorted((r.row_index, r.reason) for r in duplicates)


_key_numbers = st.text(alphabet="0129ABYZ", min_size=1, max_size=14)  # prefixes of each other, and some too long


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(
        st.tuples(st.sampled_from(["NZL", "FJI", "AUS", "D", "WSM", "UNO"]), _key_numbers, st.sampled_from([1, 2])),
        max_size=60,
    ),
    shuffle=st.randoms(use_true_random=False),
)
def test_integer_key_order_is_the_string_order(keys: list[tuple[str, str, int]], shuffle: random.Random) -> None:
    rows = [_good(number, state) | {"document_class": cls} for state, number, cls in keys]
    accepted = validate_columns(table_of(rows), 0, TODAY).accepted
    order = list(range(accepted.num_rows))
    shuffle.shuffle(order)  # rows out of row order too, as a mixed upload (Arrow and protobuf batches) has them
    for table in (accepted, accepted.take(pa.array(order, pa.int64()))):
        expected, expected_duplicates = _by_strings(table)
        ordered, duplicates = in_key_order(table)
        assert ordered.equals(expected)
        assert sorted((r.row_index, r.reason) for r in duplicates) == expected_duplicates


@settings(max_examples=150, deadline=None)
@given(numbers=st.lists(st.text(alphabet="01AB", min_size=1, max_size=3), max_size=80))
def test_one_state_and_class_orders_by_number_alone_and_keeps_the_first_of_repeats(numbers: list[str]) -> None:
    # The common upload (a member's own passports): the sort by number alone, repeats many here.
    accepted = validate_columns(table_of([_good(number) for number in numbers]), 0, TODAY).accepted
    expected, expected_duplicates = _by_strings(accepted)
    ordered, duplicates = in_key_order(accepted)
    assert ordered.equals(expected)
    assert sorted((r.row_index, r.reason) for r in duplicates) == expected_duplicates


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.tuples(st.text(alphabet="01AB", min_size=1, max_size=3), st.sampled_from([1, 2, 3])), max_size=80),
    shuffle=st.randoms(use_true_random=False),
)
def test_one_state_orders_by_number_then_class_and_keeps_the_first_of_repeats(
    keys: list[tuple[str, int]], shuffle: random.Random
) -> None:
    # A member's own documents of several classes: the sort by number alone, then class and row among equal numbers.
    rows = [_good(number) | {"document_class": cls} for number, cls in keys]
    accepted = validate_columns(table_of(rows), 0, TODAY).accepted
    order = list(range(accepted.num_rows))
    shuffle.shuffle(order)
    for table in (accepted, accepted.take(pa.array(order, pa.int64()))):
        expected, expected_duplicates = _by_strings(table)
        ordered, duplicates = in_key_order(table)
        assert ordered.equals(expected)
        assert sorted((r.row_index, r.reason) for r in duplicates) == expected_duplicates


def test_several_state_order_holds_at_a_size_where_numpy_sorts_are_not_insertion_sorts() -> None:
    # numpy sorts short arrays by insertion, which is stable whatever `kind` says: 20,000 rows make the stable
    # sort by state (after the sort by number) count, with numbers repeated within and across 30 states and
    # classes, rows shuffled.
    rng = random.Random(11)
    states = ["D", *sorted(code for code in KNOWN_STATES if len(code) == 3)[:29]]
    rows = [
        _good(f"P{rng.randrange(3000):04d}", rng.choice(states)) | {"document_class": rng.choice([1, 2, 3])}
        for _ in range(20_000)
    ]
    accepted = validate_columns(table_of(rows), 0, TODAY).accepted
    assert accepted.num_rows == 20_000
    order = list(range(accepted.num_rows))
    rng.shuffle(order)
    table = accepted.take(pa.array(order, pa.int64()))
    expected, expected_duplicates = _by_strings(table)
    ordered, duplicates = in_key_order(table)
    assert ordered.equals(expected)
    assert sorted((r.row_index, r.reason) for r in duplicates) == expected_duplicates
    assert len(duplicates) > 500  # about 700 repeated keys (20,000 draws of 270,000): the earliest row is kept


def test_integer_key_order_is_used_for_exact_numbers_and_not_beyond() -> None:
    short = validate_columns(table_of([_good("B2"), _good("A1" * 6)]), 0, TODAY).accepted
    found = columns_module._integer_key_order(short)
    assert found is not None and found[0].tolist() == [1, 0]
    long = validate_columns(table_of([_good("B2"), _good("A" * 13)]), 0, TODAY).accepted
    assert columns_module._integer_key_order(long) is None
    assert in_key_order(long)[0].column("number").to_pylist() == ["A" * 13, "B2"]


def test_key_order_combined_gives_key_orders_answer_with_one_array_per_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An upload as it arrives: many batches (chunks), repeats among them.
    rows = [_good(f"N{i % 700:05d}", state=("NZL", "FJI")[i % 3 == 0]) for i in range(1000)]
    batches = [validate_columns(table_of(rows[a : a + 100]), a, TODAY).accepted for a in range(0, 1000, 100)]
    accepted = pa.concat_tables(batches)
    assert accepted.column(0).num_chunks == 10
    expected, expected_rejections = columns_module.key_order(accepted)
    monkeypatch.setattr(columns_module, "COMBINE_BESIDE_SORT_ROWS", 500)
    combined, rejections = columns_module.key_order_combined(accepted)
    assert all(column.num_chunks == 1 for column in combined.table.columns)
    assert combined.table.equals(accepted)  # the same rows, in the same places: the order still applies
    assert expected.order is not None and combined.order is not None
    assert combined.order.tolist() == expected.order.tolist()
    # Rows i and i + 700 share a number; their states agree (both NZL) when i % 3 == 1: 100 repeats.
    assert rejections == expected_rejections and len(rejections) == 100
    assert combined.in_key_order().equals(expected.in_key_order())
    # Below the threshold (or already one chunk) it is key_order itself: no copy.
    monkeypatch.setattr(columns_module, "COMBINE_BESIDE_SORT_ROWS", 5000)
    small, _ = columns_module.key_order_combined(accepted)
    assert small.table is accepted


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_decode_accepts_the_documented_schema() -> None:
    table = table_of([_good("A1"), _good("A2")])
    decoded = decode_arrow_ipc(_ipc(table), max_rows=2)
    assert decoded.num_rows == 2 and decoded.column_names == table.column_names


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"not arrow at all", "not a readable Arrow IPC stream"),
        (_ipc(pa.table({"issuing_state": ["NZL"], "document_number": ["A1"]})), "missing column(s)"),
        (_ipc(table_of([_good("A1")]).append_column("colour", pa.array(["red"]))), "unknown column(s) colour"),
        (_ipc(table_of([_good("A1")]).set_column(2, "document_class", pa.array(["passport"]))), "must be an integer"),
        (_ipc(table_of([_good("A1")]).set_column(4, "event_date", pa.array([20240101]))), "must be utf8 text"),
        (_ipc(table_of([_good(f"A{i}") for i in range(3)])), "more than 2 rows"),
        (_ipc(table_of([_good("A1")]))[:-20], "not a readable Arrow IPC stream"),
    ],
)
def test_bad_payloads_are_invalid_requests_on_the_arrow_field(payload: bytes, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        decode_arrow_ipc(payload, max_rows=2)
    [(field, reason)] = err.value.violations
    assert field == "batch.arrow_ipc" and words in reason


def test_invalid_utf8_is_refused_before_any_compute() -> None:
    good = table_of([_good("A1")])
    bad_text = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(b"\x00\x00\x00\x00\x02\x00\x00\x00"), pa.py_buffer(b"\xff\xfe")]
    )
    payload = _ipc(good.set_column(0, "issuing_state", bad_text))
    with pytest.raises(InvalidRequest) as err:
        decode_arrow_ipc(payload, max_rows=10)
    assert err.value.violations[0][0] == "batch.arrow_ipc"


@pytest.mark.parametrize(
    "values",
    [
        ["AB1234567", "Z", "0" * 24, "X9Y8Z7"],  # canonical already: the column is kept as it is
        ["AB1234567", "ab1234567"],  # lower case
        ["AB1234567", "A" * 25],  # too long
        ["AB1234567", ""],  # empty
        ["AB 123-4567", "AB1234567"],  # fillers
        ["AB1234567", "ÄB1234567"],  # beyond ASCII
        ["AB1234567", "AB1234567\x00"],
    ],
)
def test_canonical_numbers_read_from_the_buffers_equal_the_compute_path(values: list[str]) -> None:
    col = pa.array(["PAD", *values, "PADDING"]).slice(1, len(values))  # offsets in the buffers, as in a batch
    numbers, ok = columns_module.canonical_number_column(col)
    # What the compute kernels decide, with the buffer test off.
    original = columns_module._canonical_as_is
    try:
        columns_module._canonical_as_is = lambda _col: False
        slow_numbers, slow_ok = columns_module.canonical_number_column(col)
    finally:
        columns_module._canonical_as_is = original
    assert numbers.to_pylist() == slow_numbers.to_pylist()
    assert ok.tolist() == slow_ok.tolist()
    assert columns_module._canonical_as_is(col) == (numbers.to_pylist() == values and all(ok))
    assert columns_module._all_empty(col) is False
    assert columns_module._all_empty(pa.array(["X", "", ""]).slice(1)) is True
