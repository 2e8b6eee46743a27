"""Validation of one uploaded row: `idcheck.records.validate_record` and `parse_key`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from idcheck.icao import DocumentClass
from idcheck.records import (
    MAX_INSTRUCTIONS_LENGTH,
    MAX_NAME_LENGTH,
    MAX_NUMBER_LENGTH,
    DocumentKey,
    RecordError,
    RecordStatus,
    parse_key,
    validate_record,
)

TODAY = dt.date(2025, 6, 1)


def valid(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "issuing_state": "NZL",
        "document_number": "LA123456",
        "document_class": 1,
        "status": 2,
        "event_date": "2024-03-01",
        "surname": "NGATA",
        "given_names": "ARI",
        "birth_date": "1980-01-31",
        "nationality": "NZL",
        "expiry_date": "2030-01-01",
        "instructions": "Seize the document.",
        "today": TODAY,
    }
    row.update(overrides)
    return row


def rejected_field(**overrides: Any) -> str:
    with pytest.raises(RecordError) as exc:
        validate_record(**valid(**overrides))
    return exc.value.field


def test_valid_row_becomes_record_data() -> None:
    data = validate_record(**valid())
    assert data.key == DocumentKey("NZL", "LA123456", DocumentClass.PASSPORT)
    assert data.status == RecordStatus.STOLEN
    assert data.event_date == "2024-03-01"
    assert data.holder.surname == "NGATA"
    assert data.holder.birth_date == "1980-01-31"
    assert data.holder.nationality == "NZL"
    assert data.holder.expiry_date == "2030-01-01"
    assert data.instructions == "Seize the document."


def test_optional_holder_data_may_be_empty() -> None:
    data = validate_record(
        **valid(surname="", given_names="", birth_date="", nationality="", expiry_date="", instructions="")
    )
    assert data.holder.surname == data.holder.birth_date == data.holder.nationality == data.holder.expiry_date == ""


# -- key ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("NZL", "NZL"), ("nzl", "NZL"), (" NZL ", "NZL"), ("D", "D"), ("D<<", "D"), ("DEU", "D"), ("deu", "D")],
)
def test_issuing_state_is_canonicalised(given: str, canonical: str) -> None:
    assert validate_record(**valid(issuing_state=given)).key.issuing_state == canonical


@pytest.mark.parametrize("state", ["", "   ", "<<<", "ZZZ", "NZ", "NZLX", "ÑZL"])
def test_bad_issuing_state_is_rejected_on_the_key_field(state: str) -> None:
    assert rejected_field(issuing_state=state) == "key.issuing_state"


@pytest.mark.parametrize(
    ("printed", "canonical"),
    [
        ("LA123456", "LA123456"),
        ("la123456", "LA123456"),
        ("LA 123 456", "LA123456"),
        ("LA-123-456", "LA123456"),
        ("L898902C3<", "L898902C3"),
        ("  x.1/2  ", "X12"),
    ],
)
def test_document_number_is_canonicalised_and_printed_form_kept(printed: str, canonical: str) -> None:
    data = validate_record(**valid(document_number=printed))
    assert data.key.number == canonical
    assert data.number_printed == printed.strip().upper()


@pytest.mark.parametrize("number", ["", "  ", "<<<", "-", "LA_123", "LA#1", "ÄB12", "straße"])
def test_bad_document_number_is_rejected(number: str) -> None:
    assert rejected_field(document_number=number) == "key.document_number"


def test_document_number_length_limit() -> None:
    assert validate_record(**valid(document_number="A" * MAX_NUMBER_LENGTH)).key.number == "A" * MAX_NUMBER_LENGTH
    # Separators do not count; characters do.
    assert validate_record(**valid(document_number="-".join("A" * MAX_NUMBER_LENGTH))).key.number == "A" * 24
    assert rejected_field(document_number="A" * (MAX_NUMBER_LENGTH + 1)) == "key.document_number"


@pytest.mark.parametrize("cls", [1, 2, 3, 4])
def test_every_document_class_is_accepted(cls: int) -> None:
    assert validate_record(**valid(document_class=cls)).key.document_class == DocumentClass(cls)


@pytest.mark.parametrize("cls", [0, 5, -1, 99])
def test_document_class_is_required_and_known(cls: int) -> None:
    assert rejected_field(document_class=cls) == "key.document_class"


def test_parse_key_names_the_given_field_and_allows_unspecified_class() -> None:
    assert parse_key("deu", "c01-x00", 0) == DocumentKey("D", "C01X00", DocumentClass.UNSPECIFIED)
    with pytest.raises(RecordError) as exc:
        parse_key("NZL", "", 1, field="keys[3]")
    assert exc.value.field == "keys[3].document_number"
    with pytest.raises(RecordError) as exc:
        parse_key("QQQ", "A1", 1, field="keys[0]")
    assert exc.value.field == "keys[0].issuing_state"
    with pytest.raises(RecordError) as exc:
        parse_key("NZL", "A1", 7, field="keys[0]")
    assert exc.value.field == "keys[0].document_class"


# -- status -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [1, 2, 3, 4, 5, 6])
def test_every_status_is_accepted(status: int) -> None:
    assert validate_record(**valid(status=status)).status == RecordStatus(status)


@pytest.mark.parametrize("status", [0, 7, -1])
def test_status_is_required_and_known(status: int) -> None:
    assert rejected_field(status=status) == "status"


def test_only_cancelled_and_unspecified_never_hit() -> None:
    assert {s for s in RecordStatus if not s.hits} == {RecordStatus.CANCELLED, RecordStatus.UNSPECIFIED}


# -- dates --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["", "  "])
def test_event_date_is_required(event: str) -> None:
    assert rejected_field(event_date=event) == "event_date"


@pytest.mark.parametrize("event", ["2024-13-01", "2024-02-30", "01/03/2024", "yesterday"])
def test_event_date_must_be_a_date(event: str) -> None:
    assert rejected_field(event_date=event) == "event_date"


def test_event_date_today_is_accepted() -> None:
    assert validate_record(**valid(event_date=TODAY.isoformat())).event_date == TODAY.isoformat()


@pytest.mark.parametrize("days", [2, 30, 3650])
def test_event_date_in_the_future_is_rejected(days: int) -> None:
    assert rejected_field(event_date=(TODAY + dt.timedelta(days=days)).isoformat()) == "event_date"


def test_event_date_not_before_1900() -> None:
    assert validate_record(**valid(event_date="1900-01-01")).event_date == "1900-01-01"
    assert rejected_field(event_date="1899-12-31") == "event_date"


def test_birth_date_not_in_the_future() -> None:
    assert validate_record(**valid(birth_date=TODAY.isoformat())).holder.birth_date == TODAY.isoformat()
    assert rejected_field(birth_date=(TODAY + dt.timedelta(days=1)).isoformat()) == "holder.birth_date"


@pytest.mark.parametrize("birth", ["1980-02-30", "31.01.1980", "800131"])
def test_birth_date_must_be_a_date(birth: str) -> None:
    assert rejected_field(birth_date=birth) == "holder.birth_date"


def test_expiry_date_may_be_past_or_future_but_must_be_a_date() -> None:
    assert validate_record(**valid(expiry_date="2001-01-01")).holder.expiry_date == "2001-01-01"
    assert validate_record(**valid(expiry_date="2040-01-01")).holder.expiry_date == "2040-01-01"
    assert rejected_field(expiry_date="2040-00-01") == "holder.expiry_date"


# -- nationality and text -----------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "canonical"), [("nzl", "NZL"), ("D<<", "D"), ("DEU", "D"), ("XXA", "XXA")])
def test_nationality_is_canonicalised(given: str, canonical: str) -> None:
    assert validate_record(**valid(nationality=given)).holder.nationality == canonical


@pytest.mark.parametrize("nat", ["ZZZ", "NZ", "<<X"])
def test_unknown_nationality_is_rejected(nat: str) -> None:
    assert rejected_field(nationality=nat) == "holder.nationality"


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("surname", MAX_NAME_LENGTH),
        ("given_names", MAX_NAME_LENGTH),
        ("instructions", MAX_INSTRUCTIONS_LENGTH),
    ],
)
def test_text_length_limits(field: str, limit: int) -> None:
    expected_field = field if field == "instructions" else f"holder.{field}"
    data = validate_record(**valid(**{field: "A" * limit}))
    assert len(data.instructions if field == "instructions" else getattr(data.holder, field)) == limit
    assert rejected_field(**{field: "A" * (limit + 1)}) == expected_field


def test_text_whitespace_is_collapsed() -> None:
    data = validate_record(**valid(surname="  VAN   DER\tBERG ", instructions="Seize.\n\nCall NCP."))
    assert data.holder.surname == "VAN DER BERG"
    assert data.instructions == "Seize. Call NCP."


_TEXT_FIELDS = {"surname": "holder.surname", "given_names": "holder.given_names", "instructions": "instructions"}


@pytest.mark.parametrize("field", sorted(_TEXT_FIELDS))
@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b"])
def test_c0_control_characters_in_text_are_rejected(field: str, control: str) -> None:
    assert rejected_field(**{field: f"A{control}B"}) == _TEXT_FIELDS[field]


@pytest.mark.parametrize("control", ["\x7f", "\x9b"])
def test_del_and_c1_control_characters_in_text_are_rejected(control: str) -> None:
    # DEL and the C1 controls are Unicode category Cc like the C0 ones; \x9b is a one-byte terminal escape (CSI)
    # that would reach every officer's screen through the instructions or holder names.
    for field, expected_field in _TEXT_FIELDS.items():
        assert rejected_field(**{field: f"A{control}B"}) == expected_field


def test_first_bad_field_is_reported_in_row_order() -> None:
    assert rejected_field(issuing_state="ZZZ", status=0, event_date="") == "key.issuing_state"
    assert rejected_field(status=0, event_date="") == "status"
    assert rejected_field(event_date="", birth_date="x") == "event_date"


def test_printed_number_with_padding_beyond_the_limit_is_rejected() -> None:
    from idcheck.records import MAX_PRINTED_NUMBER_LENGTH, RecordError, validate_record

    padded = "A" + " " * MAX_PRINTED_NUMBER_LENGTH + "1"
    with pytest.raises(RecordError) as err:
        validate_record(
            issuing_state="NZL", document_number=padded, document_class=1, status=2, event_date="2025-01-01"
        )
    assert err.value.field == "key.document_number"
    ok = validate_record(
        issuing_state="NZL", document_number="LA 123-456", document_class=1, status=2, event_date="2025-01-01"
    )
    assert ok.number_printed == "LA 123-456" and ok.key.number == "LA123456"
