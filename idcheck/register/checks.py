"""Border checks: turning what an officer or reader captured into a lookup, and matches into a verdict.

A query is either typed (issuing state, number, optional class and birth date) or a whole MRZ. An MRZ
is parsed and its check digits verified first; a failing check digit is reported, never fatal, and the
lookup runs on what was read. An MRZ whose issuing state is not a known code is searched with the state
treated as missing (it may be a misread or a forgery: the officer is told).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from typing import NamedTuple

from idcheck.icao import (
    MRZ,
    DocumentClass,
    DocumentNumberError,
    MRZError,
    StateCodeError,
    canonical_number,
    canonical_numbers,
    canonical_state,
    document_class,
    is_known_state,
    parse_mrz,
)
from idcheck.index import Lookup, Match, MatchKind
from idcheck.records import MAX_NUMBER_LENGTH, RecordStatus

MAX_MRZ_LENGTH = 200
CLEAR_ACTION = "CLEAR: no record for this document. Continue normal processing."


class Verdict(enum.IntEnum):
    """The answer for one document. Values match `idcheck.v1.Verdict`."""

    UNSPECIFIED = 0
    CLEAR = 1
    HIT = 2
    POSSIBLE_MATCH = 3


class Query(NamedTuple):
    """One document to check, as received (exactly one of `mrz` or `document_number` is used)."""

    issuing_state: str = ""
    document_number: str = ""
    document_class: int = 0
    birth_date: str = ""
    mrz: str = ""
    client_reference: str = ""


class PreparedQuery(NamedTuple):
    """A validated query: the canonical lookup plus what was read from the MRZ."""

    lookup: Lookup
    kind: str  # "typed" or "mrz"
    mrz: MRZ | None
    birth_date: str  # ISO, '' when unknown
    state_as_read: str  # issuing state as given, when it was not a known code ('' otherwise)
    client_reference: str


class CheckResult(NamedTuple):
    """The answer to one query."""

    verdict: Verdict
    matches: tuple[Match, ...]
    query: PreparedQuery
    query_id: str
    officer_action: str


def prepare(query: Query, field: str, *, typed_field: str = "typed") -> PreparedQuery:
    """Validate one query; raises QueryError naming the offending field: `field.mrz` for an MRZ query, else
    `field.typed.<name>` (`field.<name>` when `typed_field` is '', as for a row of a columnar manifest)."""
    if query.mrz:
        return _prepare_mrz(query, f"{field}.mrz")
    return _prepare_typed(query, f"{field}.{typed_field}" if typed_field else field)


_CLASSES = tuple(DocumentClass)
INVALID_LOOKUP = Lookup("", "", DocumentClass.UNSPECIFIED)  # placeholder for a query that failed validation


def prepare_columns(
    queries: Sequence[Query], field: str, *, single: bool = False
) -> tuple[list[Lookup], dict[int, PreparedQuery], list[tuple[str, str]]]:
    """Validate a manifest column-wise: the lookup of every query, the full preparation of the queries that
    need one (MRZ, birth date, or any that did not fit the fast path), and every violation.

    Field names are `field[i]...`, or `field...` for a single query. The common case (typed queries with
    valid numbers and known states) is canonicalised for the whole manifest at once; any query that does
    not fit it goes through `prepare` one by one, which also finds the precise error.
    """
    typed_numbers = [q.document_number for q in queries if not q.mrz]
    try:
        canonical = iter(canonical_numbers(typed_numbers))
    except DocumentNumberError:
        canonical = None
    lookups: list[Lookup] = []
    special: dict[int, PreparedQuery] = {}
    violations: list[tuple[str, str]] = []
    for i, q in enumerate(queries):
        number = next(canonical) if canonical is not None and not q.mrz else ""
        state: str | None = ""
        if q.issuing_state:
            try:
                state = canonical_state(q.issuing_state)  # memoised in idcheck.icao
            except StateCodeError:
                state = None  # the slow path below reports it
        cls = q.document_class
        if number and state is not None and len(number) <= MAX_NUMBER_LENGTH and 0 <= cls < 5 and not q.birth_date:
            lookups.append(Lookup(state, number, _CLASSES[cls]))
            continue
        try:
            p = prepare(q, field if single else f"{field}[{i}]")
        except QueryError as exc:
            violations.append((exc.field, exc.description))
            lookups.append(INVALID_LOOKUP)  # keeps positions aligned with the queries
            continue
        lookups.append(p.lookup)
        special[i] = p
    return lookups, special, violations


def prepare_many(
    queries: Sequence[Query], field: str, *, single: bool = False
) -> tuple[list[PreparedQuery], list[tuple[str, str]]]:
    """Validate a manifest: a PreparedQuery per query, and every violation as (field, description)."""
    lookups, special, violations = prepare_columns(queries, field, single=single)
    prepared = [
        special.get(i) or PreparedQuery(lookup, "typed", None, "", "", q.client_reference)
        for i, (lookup, q) in enumerate(zip(lookups, queries, strict=True))
        if lookup is not INVALID_LOOKUP
    ]
    return prepared, violations


class QueryError(ValueError):
    """A query that cannot be checked; `field` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def _prepare_typed(query: Query, field: str) -> PreparedQuery:
    state = ""
    if query.issuing_state.strip():
        try:
            state = canonical_state(query.issuing_state)
        except StateCodeError as exc:
            raise QueryError(f"{field}.issuing_state", str(exc)) from None
    if not query.document_number.strip():
        raise QueryError(f"{field}.document_number", "document number is required")
    try:
        number = canonical_number(query.document_number)
    except DocumentNumberError as exc:
        raise QueryError(f"{field}.document_number", str(exc)) from None
    if len(number) > MAX_NUMBER_LENGTH:
        raise QueryError(f"{field}.document_number", f"longer than {MAX_NUMBER_LENGTH} characters")
    try:
        cls = DocumentClass(int(query.document_class))
    except ValueError:
        raise QueryError(f"{field}.document_class", f"unknown document class {query.document_class}") from None
    birth = ""
    if query.birth_date.strip():
        try:
            birth = dt.date.fromisoformat(query.birth_date.strip()).isoformat()
        except ValueError:
            raise QueryError(f"{field}.birth_date", f"{query.birth_date!r} is not a date (YYYY-MM-DD)") from None
    return PreparedQuery(Lookup(state, number, cls), "typed", None, birth, "", query.client_reference)


def _prepare_mrz(query: Query, field: str) -> PreparedQuery:
    if len(query.mrz) > MAX_MRZ_LENGTH:
        raise QueryError(field, f"longer than {MAX_MRZ_LENGTH} characters; an MRZ has at most 90")
    try:
        mrz = parse_mrz(query.mrz)
    except MRZError as exc:
        raise QueryError(field, str(exc)) from None
    try:
        number = canonical_number(mrz.document_number)
    except DocumentNumberError:
        raise QueryError(field, "the MRZ holds no document number") from None
    state, as_read = "", mrz.issuing_state
    if is_known_state(mrz.issuing_state):
        state, as_read = canonical_state(mrz.issuing_state), ""
    birth = mrz.birth_date_resolved.isoformat() if mrz.birth_date_resolved else ""
    lookup = Lookup(state, number, document_class(mrz.document_type))
    return PreparedQuery(lookup, "mrz", mrz, birth, as_read, query.client_reference)


def verdict_of(matches: tuple[Match, ...]) -> Verdict:
    """HIT when any match is exact; POSSIBLE_MATCH for near matches only; CLEAR otherwise."""
    if not matches:
        return Verdict.CLEAR
    return Verdict.HIT if matches[0].kind == MatchKind.EXACT else Verdict.POSSIBLE_MATCH


_STATUS_WORDS = {status: status.name.replace("_", " ") for status in RecordStatus}  # STOLEN_BLANK: "STOLEN BLANK"
_KIND_TEXT = {
    MatchKind.OCR_VARIANT: "a number differing only by characters OCR confuses",
    MatchKind.STATE_MISMATCH: "the same number issued by another state",
    MatchKind.STATE_MISSING: "the same number (issuing state not given)",
    MatchKind.CLASS_MISMATCH: "the same number recorded for another class of document",
}


def officer_action(verdict: Verdict, matches: tuple[Match, ...], query: PreparedQuery) -> str:
    """One or two sentences telling the officer what to do."""
    parts: list[str] = []
    if verdict == Verdict.HIT:
        record = matches[0].record
        data = record.data
        parts.append(f"HIT: document reported {_STATUS_WORDS[data.status]} by {record.owner} on {data.event_date}.")
        parts.append(
            data.instructions
            or "Retain the document, refer the traveller to secondary inspection and contact the reporting member."
        )
        if query.birth_date and data.holder.birth_date and query.birth_date != data.holder.birth_date:
            parts.append("The recorded holder's date of birth differs from the traveller's: possible impostor.")
    elif verdict == Verdict.POSSIBLE_MATCH:
        kinds = sorted({m.kind for m in matches})
        described = "; ".join(_KIND_TEXT.get(k, k.name) for k in kinds)
        parts.append(
            f"POSSIBLE MATCH ({described}): compare the document with the record before acting; this is not a hit."
        )
    else:
        parts.append(CLEAR_ACTION)
    if query.mrz is not None and not query.mrz.valid:
        failed = ", ".join(query.mrz.failed_checks)
        parts.append(
            f"MRZ check digit failed ({failed}): the document may be forged or misread; re-read and inspect it."
        )
    if query.state_as_read:
        parts.append(f"Issuing state {query.state_as_read!r} in the MRZ is not a known ICAO code.")
    return " ".join(parts)
