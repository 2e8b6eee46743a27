"""Records of the register: what a member reports about one travel document, and how a row is validated.

A record's key is (issuing state, canonical document number, document class). Its owner is the member
that first reported it; only the owner may change or cancel it. Validation here is the single place that
decides whether a row can enter the register: the server, the bulk loader and the demo seeder all use it.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from idcheck.icao import (
    DocumentClass,
    DocumentNumberError,
    StateCodeError,
    canonical_number,
    canonical_state,
)

MAX_NUMBER_LENGTH = 24
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
        return self not in (RecordStatus.CANCELLED, RecordStatus.UNSPECIFIED)


class RecordError(ValueError):
    """A row that cannot enter the register; `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DocumentKey:
    """Identity of one document: canonical issuing state, canonical number, document class."""

    issuing_state: str
    number: str
    document_class: DocumentClass


@dataclass(frozen=True, slots=True)
class Holder:
    """Optional holder data as the owner reported it (dates ISO 8601, empty when unknown)."""

    surname: str = ""
    given_names: str = ""
    birth_date: str = ""
    nationality: str = ""
    expiry_date: str = ""


@dataclass(frozen=True, slots=True)
class RecordData:
    """A validated record as submitted by its owner."""

    key: DocumentKey
    number_printed: str
    status: RecordStatus
    event_date: str
    holder: Holder = Holder()
    instructions: str = ""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as held by the register."""

    record_id: int
    data: RecordData
    owner: str
    recorded_at: str
    sequence: int


@dataclass(frozen=True, slots=True)
class RecordChange:
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
    try:
        state = canonical_state(issuing_state)
    except StateCodeError as exc:
        raise RecordError(f"{field}.issuing_state", str(exc)) from None
    number = _number(document_number, f"{field}.document_number")
    try:
        cls = DocumentClass(int(document_class))
    except ValueError:
        raise RecordError(f"{field}.document_class", f"unknown document class {document_class!r}") from None
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
    """Turn one uploaded row into a RecordData, or raise RecordError for its first bad field."""
    key = parse_key(issuing_state, document_number, document_class)
    if key.document_class == DocumentClass.UNSPECIFIED:
        raise RecordError("key.document_class", "document class is required (passport, id card, visa or other)")
    try:
        st = RecordStatus(int(status))
    except ValueError:
        raise RecordError("status", f"unknown status {status!r}") from None
    if st == RecordStatus.UNSPECIFIED:
        raise RecordError("status", "status is required (LOST, STOLEN, STOLEN_BLANK, REVOKED, INVALIDATED)")
    today = today or dt.date.today()
    event = _date(event_date, "event_date", required=True)
    if event > today + dt.timedelta(days=1):
        raise RecordError("event_date", f"{event_date} is in the future")
    if event < EARLIEST_EVENT:
        raise RecordError("event_date", f"{event_date} is before {EARLIEST_EVENT.isoformat()}")
    birth = _date(birth_date, "holder.birth_date")
    if birth and birth > today:
        raise RecordError("holder.birth_date", f"{birth_date} is in the future")
    expiry = _date(expiry_date, "holder.expiry_date")
    nat = ""
    if nationality.strip():
        try:
            nat = canonical_state(nationality)
        except StateCodeError as exc:
            raise RecordError("holder.nationality", str(exc)) from None
    holder = Holder(
        surname=_text(surname, "holder.surname", MAX_NAME_LENGTH),
        given_names=_text(given_names, "holder.given_names", MAX_NAME_LENGTH),
        birth_date=birth.isoformat() if birth else "",
        nationality=nat,
        expiry_date=expiry.isoformat() if expiry else "",
    )
    return RecordData(
        key=key,
        number_printed=document_number.strip().upper(),
        status=st,
        event_date=event.isoformat(),
        holder=holder,
        instructions=_text(instructions, "instructions", MAX_INSTRUCTIONS_LENGTH),
    )


def _number(value: str, field: str) -> str:
    try:
        number = canonical_number(value)
    except DocumentNumberError as exc:
        raise RecordError(field, str(exc)) from None
    if len(number) > MAX_NUMBER_LENGTH:
        raise RecordError(field, f"document number longer than {MAX_NUMBER_LENGTH} characters")
    return number


def _date(value: str, field: str, *, required: bool = False) -> dt.date | None:
    value = value.strip()
    if not value:
        if required:
            raise RecordError(field, "date is required (YYYY-MM-DD)")
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RecordError(field, f"{value!r} is not a date (YYYY-MM-DD)") from None


def _text(value: str, field: str, limit: int) -> str:
    value = " ".join(value.split())
    if len(value) > limit:
        raise RecordError(field, f"longer than {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise RecordError(field, "contains control characters")
    return value
