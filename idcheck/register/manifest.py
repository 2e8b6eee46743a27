"""Manifests sent as columns (CheckManifest): an Arrow table of queries validated and canonicalised at once.

A border system holds a flight's manifest as a table (from the airline's API/PNR feed, a CSV, a Parquet file);
sending it as one Arrow IPC payload spares a protobuf message per passenger on both sides. The rules are
CheckDocuments' (idcheck.register.checks): the common row (a typed query with a known state, a valid number,
perhaps a birth date) is canonicalised for the whole column with pyarrow.compute, its state and birth date
decided once per distinct value; any other row (an MRZ, an odd spelling, a bad value) goes through
`checks.prepare`, the per-query preparation CheckDocuments uses, which gives its answer or its precise error.
So a row is never accepted or refused here on rules of its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcheck.icao import CANONICAL_STATES, DocumentClass
from idcheck.index import Lookup
from idcheck.register.checks import PreparedQuery, Query, QueryError, prepare
from idcheck.register.columns import (
    canonical_number_column,
    decode_arrow_ipc,
    in_value_set,
    integer_column,
    iso_dates,
    per_distinct,
    schema_problems,
    state_or_none,
    text_column,
)
from idcheck.register.errors import InvalidRequest

FIELD = "queries_arrow_ipc"

#: Columns of a columnar manifest (register.proto, CheckManifestRequest); each is optional, but a manifest
#: needs document_number or mrz.
TEXT_COLUMNS = ("issuing_state", "document_number", "birth_date", "mrz", "client_reference")
INTEGER_COLUMNS = ("document_class",)
_ALWAYS_READ = ("issuing_state", "document_number")
_CLASSES = tuple(DocumentClass)


@dataclass(frozen=True)
class ManifestQueries:
    """A validated columnar manifest, kept in columns: Python values are built only for the rows that need them
    (the few the index finds, and those prepared one by one).

    `prepared` holds the full preparation of the rows that needed one (an MRZ, or a value outside the fast path).
    Every other row is a plain typed query: canonical state and number in `state_column` and `number_column`,
    class in `classes`, birth date (ISO or '') in `birth_column`.
    """

    state_column: pa.Array
    number_column: pa.Array
    classes: np.ndarray  # int64, DocumentClass values
    birth_column: pa.Array | None  # None: the manifest has no birth dates
    references: pa.Array | None  # None: the manifest has no client references
    prepared: dict[int, PreparedQuery]
    _lookups: dict[int, Lookup] = field(default_factory=dict)  # built on demand: the index, the confirmation
    # and the full answer of a found row each ask for it

    def __len__(self) -> int:
        return len(self.number_column)

    def numbers(self) -> np.ndarray | pa.Array:
        """The canonical number of every row (what the index is searched with): the number column itself when no
        row was prepared apart (the index reads its bytes without a Python string per row)."""
        if not self.prepared:
            return self.number_column
        numbers = self.number_column.to_numpy(zero_copy_only=False).copy()
        for i, p in self.prepared.items():
            numbers[i] = p.lookup.number
        return numbers

    def lookup(self, i: int) -> Lookup:
        """The canonical lookup of row i."""
        found = self._lookups.get(i)  # a found row's, built by `lookups` when the index asked for it
        return found if found is not None else self.lookups([i])[0]

    def lookups(self, rows: list[int]) -> list[Lookup]:
        """The canonical lookups of `rows` (what the index asks for the rows it finds): the plain typed rows' state
        and number read out of their columns in one `take` each, not as two Arrow scalars a row."""
        built = self._lookups
        plain = [i for i in rows if i not in built and i not in self.prepared]
        if plain:
            at = pa.array(plain, pa.int64())
            states = self.state_column.take(at).to_pylist()
            numbers = self.number_column.take(at).to_pylist()
            classes = self.classes[plain].tolist()
            for i, state, number, cls in zip(plain, states, numbers, classes, strict=True):
                built[i] = Lookup(state, number, _CLASSES[cls])
        return [built[i] if i in built else self.prepared[i].lookup for i in rows]

    def preparation(self, i: int) -> PreparedQuery:
        """The full PreparedQuery of row i (built on demand for a plain typed row)."""
        p = self.prepared.get(i)
        if p is None:
            birth = self.birth_column[i].as_py() if self.birth_column is not None else ""
            reference = self.references[i].as_py() if self.references is not None else ""
            p = PreparedQuery(self.lookup(i), "typed", None, birth, "", reference)
        return p


def decode(payload: bytes, *, max_rows: int) -> pa.Table:
    """The table of a CheckManifestRequest; InvalidRequest (field queries_arrow_ipc) when it cannot be used."""
    if not payload:
        raise InvalidRequest.single(FIELD, "an Arrow IPC stream of queries is required")
    return decode_arrow_ipc(payload, max_rows=max_rows, field=FIELD, check_schema=_check_schema)


def _check_schema(schema: pa.Schema) -> None:
    problems = schema_problems(schema, TEXT_COLUMNS, INTEGER_COLUMNS, "the DocumentClass number")
    if "document_number" not in schema.names and "mrz" not in schema.names:
        problems.append("a document_number or an mrz column is required")
    if problems:
        raise InvalidRequest.single(FIELD, "; ".join(problems))


def _query_state(value: str) -> str | None:
    # As `_prepare_typed`: a blank state means none was given (the lookup then reports STATE_MISSING).
    return state_or_none(value) if value.strip() else ""


# The state column values `_query_state` keeps as they are: no state, and every canonical code (not DEU, which is
# D). A manifest of many issuing states, as an international flight's, mostly holds only these: per_distinct then
# keeps the column without deciding each of its distinct codes in Python.
_STATES_KEPT = tuple(sorted({"", *CANONICAL_STATES}))
_STATES_AS_IS = in_value_set(pc.SetLookupOptions(value_set=pa.array(_STATES_KEPT, pa.string())))


def _query_birth(value: str) -> str | None:
    if not value.strip():
        return ""
    try:
        return dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        return None


def prepare_manifest(table: pa.Table) -> tuple[ManifestQueries, list[tuple[str, str]]]:
    """Validate every row of a columnar manifest: the queries, and every violation as (field, description),
    fields named `queries_arrow_ipc[i].<column>`."""
    n = table.num_rows
    names = table.column_names
    # Optional columns that are absent are left out (a manifest often has no birth dates, MRZs or references): a
    # row prepared apart reads them as empty (`cell`). A missing state or number column reads as empty strings.
    raw = {name: text_column(table, name) for name in TEXT_COLUMNS if name in names or name in _ALWAYS_READ}
    if "document_class" in names:
        classes = np.array(integer_column(table, "document_class", FIELD), np.int64)
    else:
        classes = np.zeros(n, np.int64)
    state_ok, states = per_distinct(raw["issuing_state"], _query_state, as_is=_STATES_AS_IS)
    numbers, fast = canonical_number_column(raw["document_number"])
    fast &= state_ok
    fast &= (classes >= 0) & (classes < len(_CLASSES))
    births = None
    if "birth_date" in names:  # absent columns cost nothing more (manifests often have no birth dates or MRZs)
        birth_ok, births = per_distinct(raw["birth_date"], _query_birth, as_is=iso_dates)
        fast &= birth_ok
    if "mrz" in names:
        fast &= pc.equal(pc.binary_length(raw["mrz"]), 0).to_numpy(zero_copy_only=False)
    queries = ManifestQueries(states, numbers, classes, births, raw.get("client_reference"), {})
    violations: list[tuple[str, str]] = []

    def cell(name: str, i: int) -> str:
        col = raw.get(name)
        return "" if col is None else col[i].as_py()

    for i in np.flatnonzero(~fast).tolist():
        query = Query(
            cell("issuing_state", i),
            cell("document_number", i),
            int(classes[i]),
            cell("birth_date", i),
            cell("mrz", i),
            cell("client_reference", i),
        )
        try:
            p = prepare(query, f"{FIELD}[{i}]", typed_field="")
        except QueryError as exc:
            violations.append((exc.field, exc.description))
            continue
        queries.prepared[i] = p
    return queries, violations
