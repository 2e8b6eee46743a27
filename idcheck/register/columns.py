"""Columnar validation of uploaded rows: whole Arrow batches checked at once with pyarrow.compute and numpy.

An upload can carry its rows as Arrow IPC streams (`RecordBatch.arrow_ipc`, see register.proto). This module
decodes such a payload, checks its schema, and validates every row with the same verdicts and reasons as
`idcheck.records.validate_record`, without a Python call per row on the common path:

* state codes, nationality codes and dates repeat a lot, so they are decided once per *distinct* value (the
  column is dictionary-encoded) with the very functions the row path uses (`canonical_state`,
  `datetime.date.fromisoformat`), and the answers are spread back over the rows;
* document numbers are canonicalised with one regex replace and one ASCII upper-casing per column and checked
  with one anchored regex (the alphabet and length rules of `canonical_number`);
* classes and statuses are compared as integer arrays; text fields are accepted as they are when they are
  already in normal form (printable ASCII, single spaces, nothing to trim) and short enough.

A row that fails any of these fast tests (a bad field, or merely a text that needs whitespace folding) is
handed to `validate_record` itself, which gives the verdict, the reason and the normalised values. So the
columnar path never decides a rejection on its own: its reasons are the row path's by construction, and the
property test in tests/register/test_columns.py checks that the fast path accepts exactly what the row path
accepts, with the same values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from idcheck.arrow_buffers import same_length_ascii, utf8_offsets
from idcheck.icao import DocumentClass, StateCodeError, canonical_state
from idcheck.index.documents import PACKED_LENGTH, exact_number_keys, padded_bytes
from idcheck.records import (
    EARLIEST_EVENT,
    MAX_INSTRUCTIONS_LENGTH,
    MAX_NAME_LENGTH,
    MAX_NUMBER_LENGTH,
    MAX_PRINTED_NUMBER_LENGTH,
    DocumentKey,
    RecordData,
    RecordError,
    parse_key,
    validate_record,
)
from idcheck.register.errors import InvalidRequest
from idcheck.uploads import (
    ACCEPTED_SCHEMA,
    RECORD_INTEGER_COLUMNS,
    RECORD_TEXT_COLUMNS,
    REQUIRED_RECORD_COLUMNS,
    Rejection,
    UploadColumns,
)

FIELD = "batch.arrow_ipc"
# Uploads of at least this many rows are made one array per column in a thread beside their key sort
# (key_order_combined); the store's bulk path does it for uploads above its chunk (idcheck.store.sqlite).
COMBINE_BESIDE_SORT_ROWS = 100_000


_VALID_CLASSES = np.array([int(c) for c in DocumentClass if c != DocumentClass.UNSPECIFIED], np.int64)
_VALID_STATUSES = np.arange(1, 7, dtype=np.int64)  # LOST .. CANCELLED
_NUMBER_FILLERS = r"[< \t\r\n\f\v\-./]"  # what canonical_number drops
_NUMBER_FORM = rf"^[A-Z0-9]{{1,{MAX_NUMBER_LENGTH}}}$"
# Text already in the form validate_record would give it: printable ASCII, no leading, trailing or double space.
_NEEDS_FOLDING = r"[^ -~]|^ | $|  "


@dataclass(frozen=True)
class ValidatedColumns:
    """The outcome of validating one batch: accepted rows (ACCEPTED_SCHEMA), rejections, protected keys."""

    accepted: pa.Table
    rejections: list[Rejection]
    protected: list[tuple[int, DocumentKey]]
    slow_rows: int  # rows that went through validate_record (for diagnostics and benchmarks)


def decode_arrow_ipc(
    payload: bytes,
    *,
    max_rows: int,
    field: str = FIELD,
    check_schema: Callable[[pa.Schema], None] | None = None,
) -> pa.Table:
    """The table in one Arrow IPC payload; InvalidRequest naming `field` when it cannot be used.

    `check_schema` (default: an upload batch's) raises InvalidRequest for columns the caller cannot take."""
    try:
        reader = ipc.open_stream(pa.py_buffer(payload))
        schema = reader.schema
        (check_schema or _check_schema)(schema)
        batches = []
        rows = 0
        for batch in reader:
            rows += batch.num_rows
            if rows > max_rows:
                raise InvalidRequest.single(field, f"more than {max_rows} rows in one message; split the batch")
            batch.validate(full=True)  # offsets in bounds, text valid UTF-8: nothing unchecked reaches pyarrow.compute
            batches.append(batch)
    except InvalidRequest:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidRequest.single(field, f"not a readable Arrow IPC stream: {exc}") from None
    return pa.Table.from_batches(batches, schema=schema)


def _check_schema(schema: pa.Schema) -> None:
    # The columns of an Arrow upload payload are the record-file columns (idcheck.uploads).
    problems = schema_problems(schema, RECORD_TEXT_COLUMNS, RECORD_INTEGER_COLUMNS, "the enum number")
    missing = [n for n in REQUIRED_RECORD_COLUMNS if n not in schema.names]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if problems:
        raise InvalidRequest.single(FIELD, "; ".join(problems))


def schema_problems(
    schema: pa.Schema, text_columns: Sequence[str], integer_columns: Sequence[str], integer_meaning: str
) -> list[str]:
    """What is wrong with the columns of an Arrow payload: duplicated or unknown names, text columns that are
    not utf8, integer columns (holding `integer_meaning`) that are not integers."""
    names = schema.names
    allowed = set(text_columns) | set(integer_columns)
    problems = []
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        problems.append(f"duplicate column(s) {', '.join(duplicated)}")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    for f in schema:
        if f.name in text_columns and not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            problems.append(f"column {f.name} must be utf8 text, not {f.type}")
        if f.name in integer_columns and not pa.types.is_integer(f.type):
            problems.append(f"column {f.name} must be an integer ({integer_meaning}), not {f.type}")
    return problems


def text_column(table: pa.Table, name: str) -> pa.Array:
    """A text column as one utf8 array, nulls (and a missing column) as empty strings."""
    n = table.num_rows
    if name not in table.column_names:
        return pa.repeat(pa.scalar("", pa.string()), n)
    col = table.column(name).combine_chunks() if table.num_rows else pa.array([], pa.string())
    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    return pc.fill_null(col, "") if col.null_count else col


def integer_column(table: pa.Table, name: str, field: str = FIELD) -> np.ndarray:
    """An integer column as int64, nulls as 0; InvalidRequest naming `field` for a value beyond int64."""
    col = table.column(name)
    if col.type != pa.int64():
        try:
            col = col.cast(pa.int64())  # every integer type but uint64 widens losslessly
        except pa.ArrowInvalid:
            raise InvalidRequest.single(field, f"column {name} holds a value beyond the int64 range") from None
    return pc.fill_null(col, 0).to_numpy()


class DistinctVerdicts:
    """What `per_distinct` decided for each value of each column, kept across the batches of one upload, which
    repeat the same few thousand dates and state codes batch after batch (an upload of 10,000,000 rows in
    batches of 50,000 parsed the same 3,650 event dates 200 times). The verdicts of the dates depend on the day
    of validation, so they hold for one `today`; at most `limit` values are kept per column (beyond that, new
    values are decided as they come)."""

    def __init__(self, today: dt.date, limit: int = 100_000) -> None:
        self.today = today
        self.limit = limit
        self._columns: dict[str, dict[str, str | None]] = {}

    def column(self, name: str, today: dt.date) -> dict[str, str | None] | None:
        """The verdicts of column `name` (None when they were decided for another day)."""
        if today != self.today:
            return None
        return self._columns.setdefault(name, {})

    def sizes(self) -> dict[str, int]:
        return {name: len(values) for name, values in self._columns.items()}


def per_distinct(
    col: pa.Array,
    decide: Callable[[str], str | None],
    known: dict[str, str | None] | None = None,
    limit: int = 0,
    as_is: Callable[[pa.Array], bool] | None = None,
) -> tuple[np.ndarray, pa.Array]:
    """Apply `decide` once per distinct value: (ok per row, output per row); None from `decide` means bad. `known`
    holds verdicts decided before (DistinctVerdicts), and takes new ones while it has fewer than `limit`. `as_is`
    tells, for a utf8 column without nulls, only when every value of it is one `decide` keeps as it is (`decide(v)
    == v`): the column is then its own output, found column-wise instead of deciding each distinct value in Python
    (an international manifest's state codes, its travellers' dates of birth)."""
    if _all_empty(col):
        out = decide("")
        return np.full(len(col), out is not None), pa.repeat(pa.scalar(out or "", pa.string()), len(col))
    single = _single_value(col)
    if single is not None and single == decide(single):
        # One value in every row, kept as it is (a manifest's one issuing state, canonical already): the column is
        # the output, without a dictionary built over every row. Not recorded in `known`.
        return np.ones(len(col), bool), col
    if as_is is not None and col.type == pa.string() and not col.null_count and as_is(col):
        # Every row a value kept as it is. Not recorded in `known`.
        return np.ones(len(col), bool), col
    encoded = col.dictionary_encode()
    outputs: list[str] = []
    ok = []
    values = encoded.dictionary.to_pylist()
    for value in values:
        if known is None:
            out = decide(value)
        elif value in known:
            out = known[value]
        else:
            out = decide(value)
            if len(known) < limit:
                known[value] = out
        ok.append(out is not None)
        outputs.append(out if out is not None else "")
    if all(ok) and outputs == values and col.type == pa.string() and not col.null_count:
        # Every value is kept as it is (a manifest's state codes, canonical already): the column is the output,
        # without building it again row by row (a `take` of 1,000 rows costs more than the rest of this).
        return np.ones(len(col), bool), col
    indices = encoded.indices
    ok_rows = np.asarray(ok, bool)[indices.to_numpy()] if len(ok) else np.zeros(len(col), bool)
    return ok_rows, pa.array(outputs, pa.string()).take(indices)


def in_value_set(options: pc.SetLookupOptions) -> Callable[[pa.Array], bool]:
    """`per_distinct`'s `as_is` for values kept as they are listed in `options`: one hash lookup a row in C (1,000
    state codes of 270: about 30 µs, against 86 µs deciding each distinct code in Python; 2026-12-08)."""

    def every_value_in(col: pa.Array) -> bool:
        return bool(pc.all(pc.is_in(col, options=options)).as_py())

    return every_value_in


# Days of each month by its number (February of a common year).
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int32)


def iso_dates(col: pa.Array) -> bool:
    """Whether every value of a utf8 column is a date written as ISO 8601 writes it, YYYY-MM-DD (what
    `datetime.date.isoformat` gives back for it), read from the column's buffers: the dates of birth of a
    manifest's travellers, 1,000 checked in about 55 µs instead of about 670 µs one by one in Python (2026-12-08)."""
    chars = same_length_ascii(col)
    if chars is None or chars.shape[1] != 10 or (chars[:, 4] != 0x2D).any() or (chars[:, 7] != 0x2D).any():
        return False
    digits = chars[:, [0, 1, 2, 3, 5, 6, 8, 9]] - np.uint8(0x30)  # a byte below "0" wraps above 9
    if (digits > 9).any():
        return False
    d = digits.astype(np.int32)
    year = ((d[:, 0] * 10 + d[:, 1]) * 10 + d[:, 2]) * 10 + d[:, 3]
    month = d[:, 4] * 10 + d[:, 5]
    day = d[:, 6] * 10 + d[:, 7]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    last_day = _MONTH_DAYS[np.minimum(month, 12)] + (leap & (month == 2))
    return bool(((year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= last_day)).all())


def _single_value(col: pa.Array) -> str | None:
    """The value of a utf8 column without nulls whose every row holds the same non-empty ASCII text (read from its
    buffers), else None."""
    chars = same_length_ascii(col)
    if chars is None or not chars.shape[1] or not (chars == chars[0]).all():
        return None
    return chars[0].tobytes().decode("ascii")


def _all_empty(col: pa.Array) -> bool:
    if len(col) == 0:
        return True
    if col.type == pa.string():  # the text of every value lies between the first and the last offset
        offsets = utf8_offsets(col)
        return int(offsets[-1]) == int(offsets[0])
    return pc.max(pc.binary_length(col)).as_py() == 0


def _canonical_as_is(col: pa.Array) -> bool:
    """Whether every value of a utf8 column is a canonical number already (1 to MAX_NUMBER_LENGTH bytes, each
    A-Z or 0-9): read from the column's buffers, without a compute kernel (a manifest's common case)."""
    n = len(col)
    if not n or col.null_count or col.type != pa.string():
        return False
    offsets = utf8_offsets(col)
    lengths = np.diff(offsets)
    if int(lengths.min()) < 1 or int(lengths.max()) > MAX_NUMBER_LENGTH:
        return False
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(col.buffers()[2], np.uint8, last - first, first)
    # A byte is a digit or a capital letter when its distance from "0" is under 10 or from "A" under 26 (uint8
    # arithmetic wraps below zero): four times faster than a lookup table here.
    return bool((((data - np.uint8(48)) < 10) | ((data - np.uint8(65)) < 26)).all())


def canonical_number_column(raw: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """canonical_number of every number, unchecked, and whether it is valid (A-Z and 0-9 only, 1 to
    MAX_NUMBER_LENGTH characters) as a bool array.

    The common number is already canonical once upper-cased (letters and digits only): one ASCII test decides it
    (a regex over the column costs ten times more). Only the others have their fillers dropped by a regex
    replace and their form checked by the anchored regex of `canonical_number`'s alphabet and length rules.
    """
    if _canonical_as_is(raw):
        return raw, np.ones(len(raw), bool)
    upper = pc.ascii_upper(raw)
    ok = pc.and_(pc.ascii_is_alnum(upper), pc.less_equal(pc.binary_length(upper), MAX_NUMBER_LENGTH))
    if pc.all(ok).as_py() is not False:  # every row (or none at all)
        return upper, ok.to_numpy(zero_copy_only=False)
    rest = pc.invert(ok)
    stripped = pc.replace_substring_regex(upper.filter(rest), _NUMBER_FILLERS, "")
    canonical = pc.replace_with_mask(upper, rest, stripped)
    valid = ok.to_numpy(zero_copy_only=False).copy()
    valid[rest.to_numpy(zero_copy_only=False)] = pc.match_substring_regex(stripped, _NUMBER_FORM).to_numpy(
        zero_copy_only=False
    )
    return canonical, valid


def _parse(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        return None


def state_or_none(value: str) -> str | None:
    """The canonical state code, or None when `value` is not a known code."""
    try:
        return canonical_state(value)
    except StateCodeError:
        return None


def _normal_text(col: pa.Array, limit: int) -> np.ndarray:
    """Rows whose text validate_record would keep as it is (and accept)."""
    if _all_empty(col):
        return np.ones(len(col), bool)
    needs = pc.match_substring_regex(col, _NEEDS_FOLDING).to_numpy(zero_copy_only=False)
    short = pc.less_equal(pc.binary_length(col), limit).to_numpy(zero_copy_only=False)
    return ~needs & short


def validate_columns(
    table: pa.Table, first_row: int, today: dt.date, verdicts: DistinctVerdicts | None = None
) -> ValidatedColumns:
    """Validate every row of `table` (row i is row `first_row + i` of the upload) as validate_record would.
    `verdicts`: what earlier batches of the same upload decided per distinct value (dates, state codes)."""

    def distinct(name: str, decide: Callable[[str], str | None]) -> tuple[np.ndarray, pa.Array]:
        if verdicts is None:
            return per_distinct(raw[name], decide)
        return per_distinct(raw[name], decide, verdicts.column(name, today), verdicts.limit)

    n = table.num_rows
    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    if n == 0:
        return ValidatedColumns(ACCEPTED_SCHEMA.empty_table(), [], [], 0)
    raw = {name: text_column(table, name) for name in RECORD_TEXT_COLUMNS}
    cls = integer_column(table, "document_class")
    status = integer_column(table, "status")

    state_ok, state = distinct("issuing_state", state_or_none)
    canon, number_ok = canonical_number_column(raw["document_number"])
    printed = pc.ascii_upper(pc.ascii_trim_whitespace(raw["document_number"]))
    printed_ok = pc.less_equal(pc.binary_length(printed), MAX_PRINTED_NUMBER_LENGTH).to_numpy(zero_copy_only=False)

    latest = today + dt.timedelta(days=1)

    def event(value: str) -> str | None:
        d = _parse(value) if value else None
        return d.isoformat() if d is not None and EARLIEST_EVENT <= d <= latest else None

    def birth(value: str) -> str | None:
        if not value.strip():
            return ""
        d = _parse(value)
        return d.isoformat() if d is not None and d <= today else None

    def expiry(value: str) -> str | None:
        if not value.strip():
            return ""
        d = _parse(value)
        return d.isoformat() if d is not None else None

    def nationality(value: str) -> str | None:
        return state_or_none(value) if value.strip() else ""

    event_ok, event_iso = distinct("event_date", event)
    birth_ok, birth_iso = distinct("birth_date", birth)
    expiry_ok, expiry_iso = distinct("expiry_date", expiry)
    nat_ok, nat = distinct("nationality", nationality)

    fast = (
        state_ok
        & number_ok
        & printed_ok
        & (cls >= _VALID_CLASSES.min())
        & (cls <= _VALID_CLASSES.max())
        & (status >= _VALID_STATUSES.min())
        & (status <= _VALID_STATUSES.max())
        & event_ok
        & birth_ok
        & expiry_ok
        & nat_ok
        & _normal_text(raw["surname"], MAX_NAME_LENGTH)
        & _normal_text(raw["given_names"], MAX_NAME_LENGTH)
        & _normal_text(raw["instructions"], MAX_INSTRUCTIONS_LENGTH)
    )
    fast_idx = np.flatnonzero(fast)
    columns = {
        "row_index": pa.array(rows[fast_idx]),
        "issuing_state": state,
        "number": canon,
        "document_class": pa.array(cls.astype(np.int8)),
        "number_printed": printed,
        "status": pa.array(status.astype(np.int8)),
        "event_date": event_iso,
        "surname": raw["surname"],
        "given_names": raw["given_names"],
        "birth_date": birth_iso,
        "nationality": nat,
        "expiry_date": expiry_iso,
        "instructions": raw["instructions"],
    }
    if len(fast_idx) == n:
        accepted = pa.table({k: v for k, v in columns.items()}, schema=ACCEPTED_SCHEMA)
        return ValidatedColumns(accepted, [], [], 0)
    take = pa.array(fast_idx)
    accepted_fast = pa.table(
        {k: (v if k == "row_index" else v.take(take)) for k, v in columns.items()}, schema=ACCEPTED_SCHEMA
    )
    slow_idx = np.flatnonzero(~fast)
    slow = _validate_rows(raw, cls, status, slow_idx, rows, today)
    accepted = pa.concat_tables([accepted_fast, slow.accepted]) if slow.accepted.num_rows else accepted_fast
    return ValidatedColumns(accepted, slow.rejections, slow.protected, len(slow_idx))


def _validate_rows(
    raw: dict[str, pa.Array],
    cls: np.ndarray,
    status: np.ndarray,
    idx: np.ndarray,
    rows: np.ndarray,
    today: dt.date,
) -> ValidatedColumns:
    """The row path for the rows the fast path did not accept: exact verdicts, reasons and values."""
    take = pa.array(idx)
    values = {name: col.take(take).to_pylist() for name, col in raw.items()}
    out: dict[str, list] = {name: [] for name in ACCEPTED_SCHEMA.names}
    rejections: list[Rejection] = []
    protected: list[tuple[int, DocumentKey]] = []
    for j, i in enumerate(idx.tolist()):
        row = int(rows[i])
        c, s = int(cls[i]), int(status[i])
        state, number = values["issuing_state"][j], values["document_number"][j]
        try:
            data = validate_record(
                issuing_state=state,
                document_number=number,
                document_class=c,
                status=s,
                event_date=values["event_date"][j],
                surname=values["surname"][j],
                given_names=values["given_names"][j],
                birth_date=values["birth_date"][j],
                nationality=values["nationality"][j],
                expiry_date=values["expiry_date"][j],
                instructions=values["instructions"][j],
                today=today,
            )
        except RecordError as exc:
            rejections.append(Rejection(row, exc.field, exc.reason))
            key = _protected_key(state, number, c)
            if key is not None:
                protected.append((row, key))
            continue
        h = data.holder
        for name, value in (
            ("row_index", row),
            ("issuing_state", data.key.issuing_state),
            ("number", data.key.number),
            ("document_class", int(data.key.document_class)),
            ("number_printed", data.number_printed),
            ("status", int(data.status)),
            ("event_date", data.event_date),
            ("surname", h.surname),
            ("given_names", h.given_names),
            ("birth_date", h.birth_date),
            ("nationality", h.nationality),
            ("expiry_date", h.expiry_date),
            ("instructions", data.instructions),
        ):
            out[name].append(value)
    accepted = pa.table({name: pa.array(out[name], ACCEPTED_SCHEMA.field(name).type) for name in out})
    return ValidatedColumns(accepted, rejections, protected, len(idx))


def _protected_key(state: str, number: str, cls: int) -> DocumentKey | None:
    # A REPLACE_ALL upload must not cancel a record just because this row of it had a bad field.
    try:
        key = parse_key(state, number, cls)
    except RecordError:
        return None
    return key if key.document_class != DocumentClass.UNSPECIFIED else None


def accepted_from_records(rows: Sequence[tuple[int, RecordData]]) -> pa.Table:
    """Rows validated one by one (`(row index, RecordData)`) as an ACCEPTED_SCHEMA table."""
    cols: dict[str, list] = {name: [] for name in ACCEPTED_SCHEMA.names}
    for i, d in rows:
        h = d.holder
        cols["row_index"].append(i)
        cols["issuing_state"].append(d.key.issuing_state)
        cols["number"].append(d.key.number)
        cols["document_class"].append(int(d.key.document_class))
        cols["number_printed"].append(d.number_printed)
        cols["status"].append(int(d.status))
        cols["event_date"].append(d.event_date)
        cols["surname"].append(h.surname)
        cols["given_names"].append(h.given_names)
        cols["birth_date"].append(h.birth_date)
        cols["nationality"].append(h.nationality)
        cols["expiry_date"].append(h.expiry_date)
        cols["instructions"].append(d.instructions)
    return pa.table({name: pa.array(cols[name], ACCEPTED_SCHEMA.field(name).type) for name in cols})


def _integer_key_order(accepted: pa.Table) -> tuple[np.ndarray, np.ndarray] | None:
    """The order of `in_key_order` and, in that order, whether each row repeats the key of the row before, found
    with integers: the rank of the state code, the exact 64-bit key of the number, the class (a numpy sort of
    integers instead of Arrow's sort of strings: 4.3 s instead of 6.9 at 10M rows). None when a number is too
    long to be packed exactly (the string sort then decides)."""
    chars = padded_bytes(accepted.column("number"), PACKED_LENGTH)
    numbers = exact_number_keys(chars) if chars is not None else None
    if numbers is None:  # a number longer than PACKED_LENGTH, or one that does not pack exactly
        return None
    states = accepted.column("issuing_state").combine_chunks().dictionary_encode()
    rank = np.argsort(np.argsort(np.array(states.dictionary.to_pylist(), dtype=object), kind="stable"))
    state_ranks = rank[states.indices.to_numpy(zero_copy_only=False)]
    classes = accepted.column("document_class").to_numpy()
    row_index = accepted.column("row_index").to_numpy()
    # A member mostly lists documents of its own state and of one class: a key the same on every row orders
    # nothing and is left out (of the sort and of the comparisons after it).
    classes_vary, states_vary = (len(key) > 0 and key.min() != key.max() for key in (classes, state_ranks))
    varying = [key for key, varies in ((classes, classes_vary), (state_ranks, states_vary)) if varies]
    # By number, then class and row among equal numbers; with several states, then a stable sort by state
    # rank, which keeps that order within each state (numpy sorts one or two bytes a row stably by radix: 10M
    # rows of 200 states took 3.0-3.7 s here, against 4.9-6.1 s with numpy's lexsort of state, number, class).
    order, k = _stable_number_order(numbers, classes if classes_vary else None, row_index)
    if states_vary:
        small = np.uint8 if len(rank) <= 256 else np.uint16
        order = order[np.argsort(state_ranks[order].astype(small), kind="stable")]
        k = numbers[order]
    same = np.zeros(len(order), bool)
    same[1:] = k[1:] == k[:-1]
    for key in varying:
        v = key[order]
        same[1:] &= v[1:] == v[:-1]
    return order, same


def _stable_number_order(
    numbers: np.ndarray, classes: np.ndarray | None, row_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The order by number, then class (unless None), then row index, and the numbers in that order, from the
    unstable sort of the numbers alone (10M keys: 0.9 s, against 1.5 s for a stable sort and 2.3 s for numpy's
    lexsort of numbers and classes): rows of equal numbers, rare in an upload (repeats, or one number in two
    classes), are put in class and row order after."""
    order = np.argsort(numbers)
    k = numbers[order]
    tie = np.zeros(len(order), bool)
    tie[1:] = k[1:] == k[:-1]
    if tie.any():
        tie[:-1] |= tie[1:]  # every member of a run of equal numbers, the first one too
        members = order[tie]
        by = [row_index[members]] if classes is None else [row_index[members], classes[members]]
        order[tie] = members[np.lexsort((*by, k[tie]))]
    return order, k


def key_order(accepted: pa.Table) -> tuple[UploadColumns, list[Rejection]]:
    """The accepted rows with their order by document key, one row per key (the earliest row of each key), and
    the rejections of the repeats with the row path's reason. Key order is the order the store inserts in (its
    unique index and record ids then grow at their ends); the rows themselves are not gathered into that order
    here (see UploadColumns)."""
    n = accepted.num_rows
    if n == 0:
        return UploadColumns(accepted), []
    found = _integer_key_order(accepted)
    if found is not None:
        order, same = found
    else:
        # Sorting a table of many chunks (one per uploaded batch) merges chunk by chunk and was ~3 times slower
        # at 10M rows: sort the four key columns made contiguous.
        keys = accepted.select(["issuing_state", "number", "document_class", "row_index"]).combine_chunks()
        order = pc.sort_indices(
            keys,
            sort_keys=[
                ("issuing_state", "ascending"),
                ("number", "ascending"),
                ("document_class", "ascending"),
                ("row_index", "ascending"),
            ],
        ).to_numpy()
        take = pa.array(order, pa.int64())
        state, number = keys.column("issuing_state").take(take), keys.column("number").take(take)
        cls = keys.column("document_class").to_numpy()[order]
        del keys
        same = np.zeros(n, bool)
        if n > 1:
            same[1:] = (
                pc.equal(state.slice(1), state.slice(0, n - 1)).to_numpy(zero_copy_only=False)
                & pc.equal(number.slice(1), number.slice(0, n - 1)).to_numpy(zero_copy_only=False)
                & (cls[1:] == cls[:-1])
            )
    if not same.any():
        return UploadColumns(accepted, order), []
    first = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
    row_index = accepted.column("row_index").to_numpy()[order]
    rejections = [
        Rejection(int(row_index[i]), "key", f"duplicate of row {int(row_index[first[i]])} in this upload")
        for i in np.flatnonzero(same).tolist()
    ]
    return UploadColumns(accepted, order[~same]), rejections


def key_order_combined(accepted: pa.Table) -> tuple[UploadColumns, list[Rejection]]:
    """`key_order`, with the rows made one array per column meanwhile (an upload arrives in batches of a few
    thousand rows, and the store gathers rows faster from one array than from many: RegisterStore._apply_bulk).
    The copy (1.5 to 2 s at 10M rows, most of it the kernel handing out fresh pages) runs in a thread beside the
    sort, which keeps one core busy and leaves the other free (Arrow copies without holding the GIL)."""
    if accepted.num_rows < COMBINE_BESIDE_SORT_ROWS or accepted.column(0).num_chunks <= 1:
        return key_order(accepted)
    with ThreadPoolExecutor(1, thread_name_prefix="upload-combine") as pool:
        combined = pool.submit(accepted.combine_chunks)
        ordered, rejections = key_order(accepted)
        return UploadColumns(combined.result(), ordered.order), rejections


def in_key_order(accepted: pa.Table) -> tuple[pa.Table, list[Rejection]]:
    """`key_order`, with the rows gathered into key order in one table."""
    columns, rejections = key_order(accepted)
    return columns.in_key_order(), rejections
