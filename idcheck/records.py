"""Records of the register: what a member reports about one travel document, and how a row is validated.

A record's key is (issuing state, canonical document number, document class). Its owner is the member
that first reported it; only the owner may change or cancel it. Validation here is the single place that
decides whether a row can enter the register: the server, the bulk loader and the demo seeder all use it.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from idcheck.icao import (
    DocumentClass,
    DocumentNumberError,
    StateCodeError,
    canonical_number,
    canonical_state,
)

MAX_NUMBER_LENGTH = 24
MAX_PRINTED_NUMBER_LENGTH = 48  # with the spaces and dashes people type
MAX_NAME_LENGTH = 120
MAX_INSTRUCTIONS_LENGTH = 1000
EARLIEST_EVENT = dt.date(1900, 1, 1)


class RecordStatus(enum.IntEnum):
    """Why a document is listed. Values match `idcheck.v1.RecordStatus`."""

    UNSPECIFIED = 0
    LOST = 1
    STOLEN = 2
    STOLEN_BLANK = 3
    REVOKED = 4
    INVALIDATED = 5
    CANCELLED = 6

    @property
    def hits(self) -> bool:
        """A cancelled record never hits."""
        return self in HITTING


#: The statuses of records that match checks (a cancelled record never hits).
HITTING: frozenset[RecordStatus] = frozenset(RecordStatus) - {RecordStatus.CANCELLED, RecordStatus.UNSPECIFIED}


class RecordError(ValueError):
    """A row that cannot enter the register; `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DocumentKey(NamedTuple):
    """Identity of one document: canonical issuing state, canonical number, document class."""

    issuing_state: str
    number: str
    document_class: DocumentClass


class Holder(NamedTuple):
    """Optional holder data as the owner reported it (dates ISO 8601, empty when unknown)."""

    surname: str = ""
    given_names: str = ""
    birth_date: str = ""
    nationality: str = ""
    expiry_date: str = ""


class RecordData(NamedTuple):
    """A validated record as submitted by its owner."""

    key: DocumentKey
    number_printed: str
    status: RecordStatus
    event_date: str
    holder: Holder = Holder()
    instructions: str = ""


class StoredRecord(NamedTuple):
    """A record as held by the register."""

    record_id: int
    data: RecordData
    owner: str
    recorded_at: str
    sequence: int


@dataclass(frozen=True, slots=True)
class KeyColumns:
    """Records as columns: what the document index needs of each one (its key, status and sequence).

    Bulk changes (an upload of millions of rows, a start-up load, a replicated batch) travel to the index in
    this form, so that no Python object per record is built. Row i of every column describes one record.
    """

    record_id: np.ndarray  # int64
    issuing_state: Sequence[str] | np.ndarray | pa.Array  # canonical state codes (Arrow: a bulk upload's)
    number: Sequence[str] | np.ndarray | pa.Array  # canonical document numbers (str, numpy bytes or Arrow strings)
    document_class: np.ndarray  # int8, DocumentClass values
    status: np.ndarray  # int8, RecordStatus values
    sequence: np.ndarray  # int64, sequence of each record's latest change

    def __len__(self) -> int:
        return len(self.record_id)

    @classmethod
    def from_records(cls, records: Sequence[StoredRecord]) -> KeyColumns:
        """Columns of a few records in hand (a cancel, a small upload)."""
        return cls(
            np.fromiter((r.record_id for r in records), np.int64, len(records)),
            [r.data.key.issuing_state for r in records],
            [r.data.key.number for r in records],
            np.fromiter((r.data.key.document_class for r in records), np.int8, len(records)),
            np.fromiter((r.data.status for r in records), np.int8, len(records)),
            np.fromiter((r.sequence for r in records), np.int64, len(records)),
        )


class RecordChange(NamedTuple):
    """One entry of a record's history (a row of the change log)."""

    sequence: int
    operation: str
    status: RecordStatus
    actor: str
    changed_at: str
    upload_id: str
    reason: str


def parse_key(issuing_state: str, document_number: str, document_class: int, *, field: str = "key") -> DocumentKey:
    """Validate and canonicalise a document key; raises RecordError naming the field."""
    state = _state(issuing_state, f"{field}.issuing_state")
    number = _number(document_number, f"{field}.document_number")
    cls = _CLASSES.get(document_class)
    if cls is None:
        raise RecordError(
            f"{field}.document_class",
            f"unknown document class {document_class!r} (use PASSPORT, ID_CARD, VISA or OTHER)",
        )
    return DocumentKey(state, number, cls)


def validate_record(
    *,
    issuing_state: str,
    document_number: str,
    document_class: int,
    status: int,
    event_date: str,
    surname: str = "",
    given_names: str = "",
    birth_date: str = "",
    nationality: str = "",
    expiry_date: str = "",
    instructions: str = "",
    today: dt.date | None = None,
) -> RecordData:
    """Turn one uploaded row into a RecordData, or raise RecordError for its first bad field.

    Runs for every uploaded row, so the common case is kept cheap: state codes and dates are memoised,
    empty optional fields are not examined.
    """
    key = parse_key(issuing_state, document_number, document_class)
    if key.document_class == DocumentClass.UNSPECIFIED:
        raise RecordError("key.document_class", "document class is required (passport, id card, visa or other)")
    st = _STATUSES.get(status)
    if st is None:
        raise RecordError(
            "status", f"unknown status {status!r} (use LOST, STOLEN, STOLEN_BLANK, REVOKED, INVALIDATED or CANCELLED)"
        )
    if st == RecordStatus.UNSPECIFIED:
        raise RecordError("status", "status is required (LOST, STOLEN, STOLEN_BLANK, REVOKED, INVALIDATED)")
    today = today or dt.date.today()
    found = _parse_date(event_date) if event_date else None
    if found is None:
        if event_date.strip():
            raise RecordError("event_date", f"{event_date!r} is not a date (YYYY-MM-DD)")
        raise RecordError("event_date", "date is required (YYYY-MM-DD)")
    event, event_iso = found
    if event > today + dt.timedelta(days=1):
        raise RecordError("event_date", f"{event_date} is in the future")
    if event < EARLIEST_EVENT:
        raise RecordError("event_date", f"{event_date} is before {EARLIEST_EVENT.isoformat()}")
    holder = _EMPTY_HOLDER
    if surname or given_names or birth_date or nationality or expiry_date:
        birth = _date(birth_date, "holder.birth_date")
        if birth and birth > today:
            raise RecordError("holder.birth_date", f"{birth_date} is in the future")
        expiry = _date(expiry_date, "holder.expiry_date")
        nat = ""
        if nationality.strip():
            nat = _state(nationality, "holder.nationality")
        holder = Holder(
            surname=_text(surname, "holder.surname", MAX_NAME_LENGTH),
            given_names=_text(given_names, "holder.given_names", MAX_NAME_LENGTH),
            birth_date=birth.isoformat() if birth else "",
            nationality=nat,
            expiry_date=expiry.isoformat() if expiry else "",
        )
    printed = document_number.strip().upper()
    if len(printed) > MAX_PRINTED_NUMBER_LENGTH:
        raise RecordError("key.document_number", f"longer than {MAX_PRINTED_NUMBER_LENGTH} characters as printed")
    return RecordData(
        key=key,
        number_printed=printed,
        status=st,
        event_date=event_iso,
        holder=holder,
        instructions=_text(instructions, "instructions", MAX_INSTRUCTIONS_LENGTH),
    )


_STATUSES: dict[object, RecordStatus] = {int(s): s for s in RecordStatus}
_CLASSES: dict[object, DocumentClass] = {int(c): c for c in DocumentClass}
_EMPTY_HOLDER = Holder()
# C0 and C1 control characters and DEL; tabs and line breaks are allowed and folded into spaces.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _state(code: str, field: str) -> str:
    try:
        return canonical_state(code)  # memoised in idcheck.icao
    except StateCodeError as exc:
        raise RecordError(field, str(exc)) from None


def _number(value: str, field: str) -> str:
    try:
        number = canonical_number(value)
    except DocumentNumberError as exc:
        raise RecordError(field, str(exc)) from None
    if len(number) > MAX_NUMBER_LENGTH:
        raise RecordError(field, f"document number longer than {MAX_NUMBER_LENGTH} characters")
    return number


def _date(value: str, field: str) -> dt.date | None:
    if not value:
        return None
    found = _parse_date(value)
    if found is None:
        if not value.strip():
            return None
        raise RecordError(field, f"{value!r} is not a date (YYYY-MM-DD)")
    return found[0]


@lru_cache(maxsize=65536)
def _parse_date(value: str) -> tuple[dt.date, str] | None:
    """The date and its ISO form (memoised: uploads repeat the same few thousand dates)."""
    try:
        date = dt.date.fromisoformat(value.strip())
    except ValueError:
        return None
    return date, date.isoformat()


def _text(value: str, field: str, limit: int) -> str:
    if not value:
        return value
    if _CONTROL.search(value):
        raise RecordError(field, "contains control characters")
    value = " ".join(value.split())
    if len(value) > limit:
        raise RecordError(field, f"longer than {limit} characters")
    return value
