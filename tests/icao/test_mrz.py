"""Reading and writing the five Doc 9303 MRZ layouts."""

from __future__ import annotations

import datetime
import pickle

import pytest

from idcheck.icao import (
    MRZ,
    DocumentClass,
    MRZError,
    MRZFormat,
    compose_mrz,
    document_class,
    parse_mrz,
)
from idcheck.icao.dates import resolve_birth_date, resolve_expiry_date

TODAY = datetime.date(2025, 6, 1)

# Specimens printed in Doc 9303 (Utopia, the fictional state). Every check digit below was verified with our
# own check_digit(); the TD3, TD1 and TD2 texts are those of Parts 4, 5 and 6, the visas those of Part 7
# (confirmed against several independent MRZ libraries' test suites), and the long-number TD1 and TD2 texts
# those of Part 11, Appendix D.2.
TD3_SPECIMEN = [
    "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<",
    "L898902C36UTO7408122F1204159ZE184226B<<<<<10",
]
TD1_SPECIMEN = [
    "I<UTOD231458907<<<<<<<<<<<<<<<",
    "7408122F1204159UTO<<<<<<<<<<<6",
    "ERIKSSON<<ANNA<MARIA<<<<<<<<<<",
]
TD2_SPECIMEN = [
    "I<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<",
    "D231458907UTO7408122F1204159<<<<<<<6",
]
MRVA_SPECIMEN = [
    "V<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<",
    "L8988901C4XXX4009078F96121096ZE184226B<<<<<<",
]
MRVB_SPECIMEN = [
    "V<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<",
    "L8988901C4XXX4009078F9612109<<<<<<<<",
]
TD1_LONG_NUMBER = [
    "I<UTOD23145890<7349<<<<<<<<<<<",
    "3407127M9507122UTO<<<<<<<<<<<2",
    "STEVENSON<<PETER<JOHN<<<<<<<<<",
]
TD2_LONG_NUMBER = [
    "I<UTOSTEVENSON<<PETER<JOHN<<<<<<<<<<",
    "D23145890<UTO3407127M95071227349<<<8",
]


def _replace(line: str, column: int, char: str) -> str:
    """``line`` with the character at 1-based ``column`` replaced."""
    return line[: column - 1] + char + line[column:]


# --- the specimens, every field -------------------------------------------------------------------------


def test_td3_passport_specimen() -> None:
    mrz = parse_mrz(TD3_SPECIMEN, today=TODAY)
    assert mrz == MRZ(
        format=MRZFormat.TD3,
        document_type="P",
        issuing_state="UTO",
        document_number="L898902C3",
        nationality="UTO",
        birth_date="740812",
        sex="F",
        expiry_date="120415",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        optional_data="ZE184226B",
        checks={
            "document_number": True,
            "birth_date": True,
            "expiry_date": True,
            "optional_data": True,
            "composite": True,
        },
        birth_date_resolved=datetime.date(1974, 8, 12),
        expiry_date_resolved=datetime.date(2012, 4, 15),
    )
    assert list(mrz.checks) == ["document_number", "birth_date", "expiry_date", "optional_data", "composite"]
    assert mrz.valid
    assert mrz.failed_checks == ()


def test_td1_card_specimen() -> None:
    mrz = parse_mrz(TD1_SPECIMEN, today=TODAY)
    assert mrz == MRZ(
        format=MRZFormat.TD1,
        document_type="I",
        issuing_state="UTO",
        document_number="D23145890",
        nationality="UTO",
        birth_date="740812",
        sex="F",
        expiry_date="120415",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        optional_data="",
        checks={"document_number": True, "birth_date": True, "expiry_date": True, "composite": True},
        birth_date_resolved=datetime.date(1974, 8, 12),
        expiry_date_resolved=datetime.date(2012, 4, 15),
    )
    assert list(mrz.checks) == ["document_number", "birth_date", "expiry_date", "composite"]
    assert mrz.valid


def test_td2_card_specimen() -> None:
    mrz = parse_mrz(TD2_SPECIMEN, today=TODAY)
    assert mrz == MRZ(
        format=MRZFormat.TD2,
        document_type="I",
        issuing_state="UTO",
        document_number="D23145890",
        nationality="UTO",
        birth_date="740812",
        sex="F",
        expiry_date="120415",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        optional_data="",
        checks={"document_number": True, "birth_date": True, "expiry_date": True, "composite": True},
        birth_date_resolved=datetime.date(1974, 8, 12),
        expiry_date_resolved=datetime.date(2012, 4, 15),
    )
    assert mrz.valid


def test_mrv_a_visa_specimen() -> None:
    mrz = parse_mrz(MRVA_SPECIMEN, today=TODAY)
    assert mrz == MRZ(
        format=MRZFormat.MRVA,
        document_type="V",
        issuing_state="UTO",
        document_number="L8988901C",
        nationality="XXX",
        birth_date="400907",
        sex="F",
        expiry_date="961210",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        optional_data="6ZE184226B",
        checks={"document_number": True, "birth_date": True, "expiry_date": True},
        birth_date_resolved=datetime.date(1940, 9, 7),
        expiry_date_resolved=datetime.date(1996, 12, 10),
    )
    assert list(mrz.checks) == ["document_number", "birth_date", "expiry_date"]  # no composite on visas
    assert mrz.valid


def test_mrv_b_visa_specimen() -> None:
    mrz = parse_mrz(MRVB_SPECIMEN, today=TODAY)
    assert mrz == MRZ(
        format=MRZFormat.MRVB,
        document_type="V",
        issuing_state="UTO",
        document_number="L8988901C",
        nationality="XXX",
        birth_date="400907",
        sex="F",
        expiry_date="961210",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        optional_data="",
        checks={"document_number": True, "birth_date": True, "expiry_date": True},
        birth_date_resolved=datetime.date(1940, 9, 7),
        expiry_date_resolved=datetime.date(1996, 12, 10),
    )
    assert mrz.valid


def test_to_dict_is_the_json_object_of_the_command_line() -> None:
    assert parse_mrz(TD3_SPECIMEN, today=TODAY).to_dict() == {
        "format": "TD3",
        "document_type": "P",
        "issuing_state": "UTO",
        "document_number": "L898902C3",
        "nationality": "UTO",
        "birth_date": "740812",
        "sex": "F",
        "expiry_date": "120415",
        "surname": "ERIKSSON",
        "given_names": "ANNA MARIA",
        "optional_data": "ZE184226B",
        "checks": {
            "document_number": True,
            "birth_date": True,
            "expiry_date": True,
            "optional_data": True,
            "composite": True,
        },
        "valid": True,
    }


def test_mrz_is_frozen_and_hashable() -> None:
    mrz = parse_mrz(TD3_SPECIMEN, today=TODAY)
    with pytest.raises(AttributeError):
        mrz.document_number = "X"  # type: ignore[misc]
    assert hash(mrz) == hash(parse_mrz(TD3_SPECIMEN, today=TODAY))


# --- input forms ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "\n".join(TD3_SPECIMEN),
        "  \n" + "\r\n".join(TD3_SPECIMEN) + "\n\n",
        "\n".join(TD3_SPECIMEN).lower(),
        [f"  {TD3_SPECIMEN[0]}\t", TD3_SPECIMEN[1].lower()],
        tuple(TD3_SPECIMEN),
        [TD3_SPECIMEN[0], "", TD3_SPECIMEN[1]],
    ],
)
def test_input_as_text_or_lines_with_whitespace_and_lower_case(text: str | list[str]) -> None:
    assert parse_mrz(text, today=TODAY) == parse_mrz(TD3_SPECIMEN, today=TODAY)


def test_today_defaults_to_the_current_date() -> None:
    mrz = parse_mrz(TD3_SPECIMEN)
    assert mrz.birth_date_resolved == datetime.date(1974, 8, 12)


# --- errors that say where ------------------------------------------------------------------------------


def test_character_outside_the_alphabet_names_line_and_column() -> None:
    lines = [TD3_SPECIMEN[0], _replace(TD3_SPECIMEN[1], 14, "#")]
    with pytest.raises(MRZError) as caught:
        parse_mrz(lines)
    err = caught.value
    assert (err.line, err.column) == (2, 14)
    assert str(err) == "line 2, column 14: character '#' is not allowed (A-Z, 0-9 and < only)"


def test_non_ascii_letters_are_not_upper_cased_into_valid_ones() -> None:
    # "ß".upper() is "SS": accepting it would shift every later column.
    with pytest.raises(MRZError) as caught:
        parse_mrz([_replace(TD3_SPECIMEN[0], 7, "ß"), TD3_SPECIMEN[1]])
    assert (caught.value.line, caught.value.column) == (1, 7)


@pytest.mark.parametrize("count", [0, 1, 4])
def test_wrong_line_count_is_an_error_of_the_whole_input(count: int) -> None:
    lines = (TD1_SPECIMEN + TD1_SPECIMEN)[:count]
    with pytest.raises(MRZError, match=f"not {count}") as caught:
        parse_mrz(lines)
    assert (caught.value.line, caught.value.column) == (None, None)


def test_short_line_names_the_first_missing_column() -> None:
    with pytest.raises(MRZError) as caught:
        parse_mrz([TD3_SPECIMEN[0], TD3_SPECIMEN[1][:-1]])
    assert (caught.value.line, caught.value.column) == (2, 44)
    assert "43 characters" in str(caught.value)
    assert "44" in str(caught.value)


def test_long_line_names_the_first_extra_column() -> None:
    with pytest.raises(MRZError) as caught:
        parse_mrz([TD1_SPECIMEN[0], TD1_SPECIMEN[1], TD1_SPECIMEN[2] + "<"])
    assert (caught.value.line, caught.value.column) == (3, 31)


def test_two_lines_of_an_unknown_width() -> None:
    with pytest.raises(MRZError) as caught:
        parse_mrz([TD1_SPECIMEN[0], TD1_SPECIMEN[1]])
    assert caught.value.line == 1
    assert "44" in str(caught.value)
    assert "36" in str(caught.value)


def test_sex_outside_m_f_x_filler_is_an_error_at_its_column() -> None:
    with pytest.raises(MRZError) as caught:
        parse_mrz([TD3_SPECIMEN[0], _replace(TD3_SPECIMEN[1], 21, "Q")])
    assert (caught.value.line, caught.value.column) == (2, 21)
    with pytest.raises(MRZError) as caught:
        parse_mrz([TD1_SPECIMEN[0], _replace(TD1_SPECIMEN[1], 8, "1"), TD1_SPECIMEN[2]])
    assert (caught.value.line, caught.value.column) == (2, 8)


@pytest.mark.parametrize(("printed", "sex"), [("M", "M"), ("F", "F"), ("X", "X"), ("<", "X")])
def test_sex(printed: str, sex: str) -> None:
    assert parse_mrz([TD3_SPECIMEN[0], _replace(TD3_SPECIMEN[1], 21, printed)]).sex == sex


def test_mrz_error_survives_pickling() -> None:
    err = MRZError("character '#' is not allowed", line=2, column=14)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.line, copy.column, str(copy)) == (2, 14, str(err))


# --- check digits: reported, not raised -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "char", "failed"),
    [
        (10, "7", ("document_number", "composite")),  # number check digit
        (1, "K", ("document_number", "composite")),  # a character of the number
        (20, "3", ("birth_date", "composite")),
        (16, "9", ("birth_date", "composite")),
        (28, "0", ("expiry_date", "composite")),
        (30, "F", ("optional_data", "composite")),
        (43, "2", ("optional_data", "composite")),
        (44, "1", ("composite",)),
    ],
)
def test_td3_failing_checks_are_reported_by_name(column: int, char: str, failed: tuple[str, ...]) -> None:
    mrz = parse_mrz([TD3_SPECIMEN[0], _replace(TD3_SPECIMEN[1], column, char)], today=TODAY)
    assert mrz.failed_checks == failed
    assert not mrz.valid
    assert mrz.document_type == "P"  # the rest is still read


@pytest.mark.parametrize("column", [10, 20, 28, 43, 44])
def test_a_letter_in_a_check_digit_position_fails_that_check(column: int) -> None:
    mrz = parse_mrz([TD3_SPECIMEN[0], _replace(TD3_SPECIMEN[1], column, "A")], today=TODAY)
    assert not mrz.valid


def test_filler_check_digit_is_accepted_for_an_unused_personal_number_only() -> None:
    empty = compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state="UTO",
        document_number="L898902C3",
        nationality="UTO",
        birth_date="740812",
        sex="F",
        expiry_date="120415",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
    )
    assert empty[1][28:43] == "<" * 15
    assert parse_mrz(empty).valid
    # The digit 0 (the check digit of an all-filler field) is accepted as well.
    zero = _replace(empty[1], 43, "0")
    zero = zero[:43] + str(_composite_digit(zero))
    assert parse_mrz([empty[0], zero]).checks["optional_data"]
    # A used personal number needs its real digit: '<' fails.
    filler = _replace(TD3_SPECIMEN[1], 43, "<")
    assert not parse_mrz([TD3_SPECIMEN[0], filler]).checks["optional_data"]


def _composite_digit(line: str) -> int:
    from idcheck.icao import check_digit

    return check_digit(line[0:10] + line[13:20] + line[21:43])


def test_td1_composite_covers_both_optional_data_fields() -> None:
    # B is 11: A (10) would replace a filler (0) undetected, the blind spot of 7-3-1 check digits.
    one = _replace(TD1_SPECIMEN[0], 20, "B")  # optional data of line 1
    mrz = parse_mrz([one, *TD1_SPECIMEN[1:]])
    assert mrz.failed_checks == ("composite",)
    assert mrz.optional_data == "B"
    two = _replace(TD1_SPECIMEN[1], 25, "B")  # optional data of line 2
    assert parse_mrz([TD1_SPECIMEN[0], two, TD1_SPECIMEN[2]]).failed_checks == ("composite",)


def test_visa_optional_data_has_no_check() -> None:
    line = _replace(MRVA_SPECIMEN[1], 39, "Q")
    mrz = parse_mrz([MRVA_SPECIMEN[0], line])
    assert mrz.valid
    assert mrz.optional_data == "6ZE184226BQ"


# --- layout detection -----------------------------------------------------------------------------------


def test_document_code_starting_with_v_is_a_visa() -> None:
    passport = [_replace(MRVA_SPECIMEN[0], 1, "P"), MRVA_SPECIMEN[1]]
    assert parse_mrz(passport).format is MRZFormat.TD3
    card = [_replace(TD2_SPECIMEN[0], 1, "V"), TD2_SPECIMEN[1]]
    assert parse_mrz(card).format is MRZFormat.MRVB


# --- long document numbers ------------------------------------------------------------------------------


def test_td1_long_document_number() -> None:
    mrz = parse_mrz(TD1_LONG_NUMBER, today=TODAY)
    assert mrz.format is MRZFormat.TD1
    assert mrz.document_number == "D23145890734"
    assert mrz.optional_data == ""
    assert mrz.surname == "STEVENSON"
    assert mrz.given_names == "PETER JOHN"
    assert mrz.sex == "M"
    assert (mrz.birth_date, mrz.expiry_date) == ("340712", "950712")
    assert mrz.valid


def test_td2_long_document_number() -> None:
    mrz = parse_mrz(TD2_LONG_NUMBER, today=TODAY)
    assert mrz.format is MRZFormat.TD2
    assert mrz.document_number == "D23145890734"
    assert mrz.optional_data == ""
    assert mrz.valid


def test_long_document_number_is_checked_against_its_real_check_digit() -> None:
    wrong = _replace(TD1_LONG_NUMBER[0], 19, "8")  # the real check digit, after the continuation
    mrz = parse_mrz([wrong, *TD1_LONG_NUMBER[1:]])
    assert mrz.document_number == "D23145890734"
    assert "document_number" in mrz.failed_checks
    changed = _replace(TD2_LONG_NUMBER[1], 31, "5")  # a character of the continuation
    mrz = parse_mrz([TD2_LONG_NUMBER[0], changed])
    assert mrz.document_number == "D23145890735"
    assert "document_number" in mrz.failed_checks


def test_optional_data_after_a_long_document_number_excludes_the_number() -> None:
    lines = compose_mrz(
        MRZFormat.TD1,
        document_type="ID",
        issuing_state="D",
        document_number="T22000129XY7",
        nationality="D",
        birth_date="640812",
        sex="F",
        expiry_date="310101",
        surname="MUSTERMANN",
        given_names="ERIKA",
        optional_data="ABC",
        optional_data_2="Q1",
    )
    assert lines[0] == ("IDD<<T22000129<XY7" + str(_check("T22000129XY7")) + "<ABC").ljust(30, "<")
    mrz = parse_mrz(lines)
    assert mrz.document_number == "T22000129XY7"
    assert mrz.optional_data == "ABC Q1"
    assert mrz.issuing_state == "D"
    assert mrz.valid


def _check(field: str) -> int:
    from idcheck.icao import check_digit

    return check_digit(field)


def test_filler_check_digit_without_a_continuation_fails_the_number_check() -> None:
    # Number check-digit position holds '<' but the optional data does not continue the number.
    lines = ["I<UTOD23145890<<<<<<<<<<<<<<<<", *TD1_SPECIMEN[1:]]
    mrz = parse_mrz(lines)
    assert mrz.document_number == "D23145890"
    assert "document_number" in mrz.failed_checks


# --- names and optional data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "surname", "given"),
    [
        ("ERIKSSON<<ANNA<MARIA", "ERIKSSON", "ANNA MARIA"),
        ("VAN<DER<BERG<<JAN", "VAN DER BERG", "JAN"),
        ("ERIKSSON", "ERIKSSON", ""),
        ("<<ANNA", "", "ANNA"),
        ("", "", ""),
    ],
)
def test_names_split_at_double_filler(field: str, surname: str, given: str) -> None:
    line = "P<UTO" + field.ljust(39, "<")
    mrz = parse_mrz([line, TD3_SPECIMEN[1]])
    assert (mrz.surname, mrz.given_names) == (surname, given)


# --- dates ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("printed", "resolved"),
    [
        ("740812", datetime.date(1974, 8, 12)),
        ("250601", datetime.date(2025, 6, 1)),  # born today
        ("250602", datetime.date(1925, 6, 2)),  # tomorrow's date 100 years ago: never in the future
        ("000229", datetime.date(2000, 2, 29)),
        ("991231", datetime.date(1999, 12, 31)),
        ("991331", None),  # month 13
        ("740230", None),  # 30 February
        ("74<<<<", None),  # unknown month and day
        ("7408<<", None),
        ("74081A", None),
        ("7408", None),
    ],
)
def test_birth_date_resolution(printed: str, resolved: datetime.date | None) -> None:
    assert resolve_birth_date(printed, TODAY) == resolved


@pytest.mark.parametrize(
    ("printed", "resolved"),
    [
        ("120415", datetime.date(2012, 4, 15)),
        ("350101", datetime.date(2035, 1, 1)),
        ("441231", datetime.date(2044, 12, 31)),  # today.year + 19: the latest year in the window
        ("450101", datetime.date(1945, 1, 1)),  # today.year - 80: the earliest
        ("961210", datetime.date(1996, 12, 10)),
        ("000229", datetime.date(2000, 2, 29)),
        ("960229", datetime.date(1996, 2, 29)),
        ("970229", None),  # 1997 is not a leap year
        ("12<<<<", None),
        ("121315", None),
    ],
)
def test_expiry_date_resolution(printed: str, resolved: datetime.date | None) -> None:
    assert resolve_expiry_date(printed, TODAY) == resolved


def test_unresolvable_dates_are_none_not_errors() -> None:
    line = TD3_SPECIMEN[1][:13] + "74<<<<" + TD3_SPECIMEN[1][19:21] + "991315" + TD3_SPECIMEN[1][27:]
    mrz = parse_mrz([TD3_SPECIMEN[0], line], today=TODAY)
    assert (mrz.birth_date, mrz.expiry_date) == ("74<<<<", "991315")
    assert mrz.birth_date_resolved is None
    assert mrz.expiry_date_resolved is None
    assert {"birth_date", "expiry_date"} <= set(mrz.failed_checks)


# --- writing ----------------------------------------------------------------------------------------------


ANNA = {"surname": "Eriksson", "given_names": "Anna Maria", "sex": "F", "issuing_state": "UTO"}
ANNA_CARD = {**ANNA, "document_type": "I", "document_number": "D23145890", "nationality": "UTO"}
ANNA_VISA = {**ANNA, "document_type": "V", "document_number": "L8988901C", "nationality": "XXX"}
ANNA_DATES = {"birth_date": "740812", "expiry_date": "120415"}
VISA_DATES = {"birth_date": "400907", "expiry_date": "961210"}
PETER = {
    "surname": "Stevenson",
    "given_names": "Peter John",
    "sex": "M",
    "document_type": "I",
    "issuing_state": "UTO",
    "document_number": "D23145890734",
    "nationality": "UTO",
    "birth_date": "340712",
    "expiry_date": "950712",
}


@pytest.mark.parametrize(
    ("fmt", "fields", "expected"),
    [
        (
            MRZFormat.TD3,
            {
                **ANNA,
                **ANNA_DATES,
                "document_type": "P",
                "document_number": "L898902C3",
                "nationality": "UTO",
                "optional_data": "ZE184226B",
            },
            TD3_SPECIMEN,
        ),
        (MRZFormat.TD1, {**ANNA_CARD, **ANNA_DATES}, TD1_SPECIMEN),
        (MRZFormat.TD2, {**ANNA_CARD, **ANNA_DATES}, TD2_SPECIMEN),
        (MRZFormat.MRVA, {**ANNA_VISA, **VISA_DATES, "optional_data": "6ZE184226B"}, MRVA_SPECIMEN),
        (MRZFormat.MRVB, {**ANNA_VISA, **VISA_DATES}, MRVB_SPECIMEN),
        (MRZFormat.TD1, PETER, TD1_LONG_NUMBER),
        (MRZFormat.TD2, PETER, TD2_LONG_NUMBER),
    ],
)
def test_compose_reproduces_the_specimens(fmt: MRZFormat, fields: dict[str, str], expected: list[str]) -> None:
    assert compose_mrz(fmt, **fields) == expected


def test_compose_transliterates_names_only_by_case_and_separators() -> None:
    lines = compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state="GBR",
        document_number="123456789",
        nationality="GBR",
        birth_date="800101",
        sex="M",
        expiry_date="300101",
        surname="O'Brien-Smith",
        given_names="Mary  Anne",
        optional_data="",
    )
    assert lines[0] == "P<GBRO<BRIEN<SMITH<<MARY<ANNE".ljust(44, "<")
    mrz = parse_mrz(lines)
    assert (mrz.surname, mrz.given_names) == ("O BRIEN SMITH", "MARY ANNE")


def test_compose_truncates_long_names_to_the_field() -> None:
    lines = compose_mrz(
        MRZFormat.TD1,
        document_type="I",
        issuing_state="UTO",
        document_number="1",
        nationality="UTO",
        birth_date="800101",
        sex="X",
        expiry_date="300101",
        surname="Wolfeschlegelsteinhausenbergerdorff",
        given_names="Hubert",
    )
    assert lines[2] == "WOLFESCHLEGELSTEINHAUSENBERGER"
    assert lines[1][7] == "<"  # unspecified sex is written as a filler
    assert parse_mrz(lines).sex == "X"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"surname": "Müller"}, "'ü'"),
        ({"document_number": "AB-123"}, "'-'"),
        ({"document_number": "1234567890"}, "longer than the 9"),
        ({"birth_date": "7408"}, "6 characters"),
        ({"sex": "Q"}, "M, F, X"),
        ({"document_type": "V"}, "visa"),
        ({"optional_data": "A" * 15}, "longer than the 14"),
        ({"optional_data_2": "A"}, "only written in TD1"),
        ({"issuing_state": "UTOP"}, "longer than the 3"),
    ],
)
def test_compose_rejects_values_it_cannot_write(changes: dict[str, str], message: str) -> None:
    fields = {
        "document_type": "P",
        "issuing_state": "UTO",
        "document_number": "L898902C3",
        "nationality": "UTO",
        "birth_date": "740812",
        "sex": "F",
        "expiry_date": "120415",
        "surname": "ERIKSSON",
        "given_names": "ANNA",
    }
    with pytest.raises(MRZError, match=message):
        compose_mrz(MRZFormat.TD3, **{**fields, **changes})


def test_compose_rejects_a_long_number_that_leaves_no_room() -> None:
    with pytest.raises(MRZError, match="does not fit"):
        compose_mrz(
            MRZFormat.TD2,
            document_type="I",
            issuing_state="UTO",
            document_number="D2314589012345",
            nationality="UTO",
            birth_date="740812",
            sex="F",
            expiry_date="120415",
            surname="ERIKSSON",
            given_names="ANNA",
            optional_data="X",
        )


# --- document classes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "doc_class"),
    [
        ("P", DocumentClass.PASSPORT),
        ("PN", DocumentClass.PASSPORT),
        ("P<", DocumentClass.PASSPORT),
        ("V", DocumentClass.VISA),
        ("I", DocumentClass.ID_CARD),
        ("ID", DocumentClass.ID_CARD),
        ("AC", DocumentClass.ID_CARD),
        ("C", DocumentClass.ID_CARD),
        ("X", DocumentClass.OTHER),
        ("", DocumentClass.UNSPECIFIED),
        ("<<", DocumentClass.UNSPECIFIED),
    ],
)
def test_document_class_from_document_code(code: str, doc_class: DocumentClass) -> None:
    assert document_class(code) is doc_class
