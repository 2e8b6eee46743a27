"""Property tests: every layout round-trips, check digits catch what 7-3-1 can catch, and nothing but
MRZError escapes the parser."""

from __future__ import annotations

import datetime
import string
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from idcheck.icao import KNOWN_STATES, MRZ, MRZError, MRZFormat, check_digit, compose_mrz, parse_mrz

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LETTERS = string.ascii_uppercase
ALNUM = LETTERS + string.digits
MRZ_ALPHABET = ALNUM + "<"
STATES = sorted(KNOWN_STATES)
VALUES = {c: i for i, c in enumerate("0123456789")} | {c: 10 + i for i, c in enumerate(LETTERS)} | {"<": 0}

FIRST_LETTERS = {
    MRZFormat.TD1: "IAC",
    MRZFormat.TD2: "IAC",
    MRZFormat.TD3: "P",
    MRZFormat.MRVA: "V",
    MRZFormat.MRVB: "V",
}
# Room for optional data (TD1: line 1, line 2).
OPTIONAL_ROOM = {
    MRZFormat.TD1: (15, 11),
    MRZFormat.TD2: (7, 0),
    MRZFormat.TD3: (14, 0),
    MRZFormat.MRVA: (16, 0),
    MRZFormat.MRVB: (8, 0),
}


def words(alphabet: str, max_words: int, max_size: int, *, min_words: int = 1) -> st.SearchStrategy[str]:
    word = st.text(alphabet=alphabet, min_size=1, max_size=max_size)
    return st.lists(word, min_size=min_words, max_size=max_words).map(" ".join)


def fitting_words(alphabet: str, room: int) -> st.SearchStrategy[str]:
    return words(alphabet, 3, 6, min_words=0).filter(lambda text: len(text) <= room)


@st.composite
def printed_dates(draw: st.DrawFn) -> str:
    day = draw(st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2099, 12, 31)))
    printed = day.strftime("%y%m%d")
    # Doc 9303 prints unknown day, or unknown month and day, as fillers.
    unknown = draw(st.sampled_from([0, 0, 0, 2, 4]))
    return printed[: 6 - unknown] + "<" * unknown


@dataclass(frozen=True)
class Fields:
    fmt: MRZFormat
    document_type: str
    issuing_state: str
    document_number: str
    nationality: str
    birth_date: str
    sex: str
    expiry_date: str
    surname: str
    given_names: str
    optional_data: str
    optional_data_2: str

    def compose(self) -> list[str]:
        return compose_mrz(
            self.fmt,
            document_type=self.document_type,
            issuing_state=self.issuing_state,
            document_number=self.document_number,
            nationality=self.nationality,
            birth_date=self.birth_date,
            sex=self.sex,
            expiry_date=self.expiry_date,
            surname=self.surname,
            given_names=self.given_names,
            optional_data=self.optional_data,
            optional_data_2=self.optional_data_2,
        )


@st.composite
def documents(draw: st.DrawFn, fmt: MRZFormat, *, long_number: bool = False) -> Fields:
    room_1, room_2 = OPTIONAL_ROOM[fmt]
    if long_number:
        # The rest of the number, its check digit and a filler start the optional data.
        number = draw(st.text(alphabet=ALNUM, min_size=10, max_size=9 + room_1 - 2))
        room_1 -= len(number) - 9 + 2
    else:
        number = draw(st.text(alphabet=ALNUM, min_size=1, max_size=9))
    return Fields(
        fmt=fmt,
        document_type=draw(st.sampled_from(FIRST_LETTERS[fmt])) + draw(st.sampled_from(["", *LETTERS])),
        issuing_state=draw(st.sampled_from(STATES)),
        document_number=number,
        nationality=draw(st.sampled_from(STATES)),
        birth_date=draw(printed_dates()),
        sex=draw(st.sampled_from("MFX")),
        expiry_date=draw(printed_dates()),
        # At most 2 x 6 + 1 + 2 + 2 x 6 + 1 = 28 characters: fits the shortest name field (TD1, 30).
        surname=draw(words(LETTERS, 2, 6)),
        given_names=draw(words(LETTERS, 2, 6, min_words=0)),
        optional_data=draw(fitting_words(ALNUM, room_1)),
        optional_data_2=draw(fitting_words(ALNUM, room_2)) if room_2 else "",
    )


any_document = st.sampled_from(list(MRZFormat)).flatmap(documents)
long_number_document = st.sampled_from([MRZFormat.TD1, MRZFormat.TD2]).flatmap(
    lambda fmt: documents(fmt, long_number=True)
)


def assert_same_fields(mrz: MRZ, fields: Fields) -> None:
    assert mrz.format is fields.fmt
    assert mrz.document_type == fields.document_type
    assert mrz.issuing_state == fields.issuing_state
    assert mrz.document_number == fields.document_number
    assert mrz.nationality == fields.nationality
    assert mrz.birth_date == fields.birth_date
    assert mrz.sex == fields.sex
    assert mrz.expiry_date == fields.expiry_date
    assert mrz.surname == fields.surname
    assert mrz.given_names == fields.given_names
    assert mrz.optional_data == " ".join(part for part in (fields.optional_data, fields.optional_data_2) if part)


@PROPERTY_SETTINGS
@given(any_document)
def test_every_layout_round_trips_with_every_check_passing(fields: Fields) -> None:
    lines = fields.compose()
    assert len(lines) == (3 if fields.fmt is MRZFormat.TD1 else 2)
    mrz = parse_mrz(lines)
    assert_same_fields(mrz, fields)
    assert mrz.valid, mrz.failed_checks
    expected = ["document_number", "birth_date", "expiry_date"]
    if fields.fmt is MRZFormat.TD3:
        expected.append("optional_data")
    if fields.fmt in (MRZFormat.TD1, MRZFormat.TD2, MRZFormat.TD3):
        expected.append("composite")
    assert list(mrz.checks) == expected
    # The same MRZ as one text, lower case, with surrounding whitespace.
    assert parse_mrz("  " + "\n".join(lines).lower() + "\n") == mrz


@PROPERTY_SETTINGS
@given(long_number_document)
def test_long_document_numbers_round_trip(fields: Fields) -> None:
    lines = fields.compose()
    assert lines[0 if fields.fmt is MRZFormat.TD1 else 1][14 if fields.fmt is MRZFormat.TD1 else 9] == "<"
    mrz = parse_mrz(lines)
    assert_same_fields(mrz, fields)
    assert mrz.valid


# Where each checked field sits: (line index, first column, end column) -> check name, 0-based, end exclusive.
CHECKED_FIELDS: dict[MRZFormat, list[tuple[int, int, int, str]]] = {
    MRZFormat.TD1: [
        (0, 5, 14, "document_number"),
        (0, 15, 30, "composite"),  # optional data, line 1
        (1, 0, 6, "birth_date"),
        (1, 8, 14, "expiry_date"),
        (1, 18, 29, "composite"),  # optional data, line 2
    ],
    MRZFormat.TD2: [(1, 0, 9, "document_number"), (1, 13, 19, "birth_date"), (1, 21, 27, "expiry_date")],
    MRZFormat.TD3: [
        (1, 0, 9, "document_number"),
        (1, 13, 19, "birth_date"),
        (1, 21, 27, "expiry_date"),
        (1, 28, 42, "optional_data"),
    ],
    MRZFormat.MRVA: [(1, 0, 9, "document_number"), (1, 13, 19, "birth_date"), (1, 21, 27, "expiry_date")],
    MRZFormat.MRVB: [(1, 0, 9, "document_number"), (1, 13, 19, "birth_date"), (1, 21, 27, "expiry_date")],
}
# Check-digit positions: (line index, column) -> check name.
CHECK_DIGITS: dict[MRZFormat, list[tuple[int, int, str]]] = {
    MRZFormat.TD1: [
        (0, 14, "document_number"),
        (1, 6, "birth_date"),
        (1, 14, "expiry_date"),
        (1, 29, "composite"),
    ],
    MRZFormat.TD2: [
        (1, 9, "document_number"),
        (1, 19, "birth_date"),
        (1, 27, "expiry_date"),
        (1, 35, "composite"),
    ],
    MRZFormat.TD3: [
        (1, 9, "document_number"),
        (1, 19, "birth_date"),
        (1, 27, "expiry_date"),
        (1, 42, "optional_data"),
        (1, 43, "composite"),
    ],
    MRZFormat.MRVA: [(1, 9, "document_number"), (1, 19, "birth_date"), (1, 27, "expiry_date")],
    MRZFormat.MRVB: [(1, 9, "document_number"), (1, 19, "birth_date"), (1, 27, "expiry_date")],
}
FIELD_OF_CHECK = {
    "document_number": lambda mrz: mrz.document_number,
    "birth_date": lambda mrz: mrz.birth_date,
    "expiry_date": lambda mrz: mrz.expiry_date,
    "optional_data": lambda mrz: mrz.optional_data,
    "composite": lambda mrz: mrz.optional_data,  # only the optional data is mutated for the composite alone
}
COMPOSITE_COVERS: dict[MRZFormat, list[tuple[int, int, int]]] = {
    MRZFormat.TD1: [(0, 5, 30), (1, 0, 7), (1, 8, 15), (1, 18, 29)],
    MRZFormat.TD2: [(1, 0, 10), (1, 13, 20), (1, 21, 35)],
    MRZFormat.TD3: [(1, 0, 10), (1, 13, 20), (1, 21, 43)],
}


def _replace(lines: list[str], line: int, column: int, char: str) -> list[str]:
    changed = list(lines)
    changed[line] = changed[line][:column] + char + changed[line][column + 1 :]
    return changed


@PROPERTY_SETTINGS
@given(any_document, st.data())
def test_changing_a_checked_character_fails_its_check_or_changes_the_field(fields: Fields, data: st.DataObject) -> None:
    lines = fields.compose()
    original = parse_mrz(lines)
    line, start, end, check = data.draw(st.sampled_from(CHECKED_FIELDS[fields.fmt]))
    column = data.draw(st.integers(min_value=start, max_value=end - 1))
    old = lines[line][column]
    new = data.draw(st.sampled_from(MRZ_ALPHABET).filter(lambda c: c != old))
    mutated = parse_mrz(_replace(lines, line, column, new))
    delta = VALUES[new] - VALUES[old]
    if delta % 10:
        # 7, 3 and 1 are all prime to 10: any change of value not a multiple of 10 changes the digit.
        assert not mutated.checks[check]
        in_composite = any(
            line == covered_line and lo <= column < hi for covered_line, lo, hi in COMPOSITE_COVERS.get(fields.fmt, [])
        )
        if in_composite:
            assert not mutated.checks["composite"]
    else:
        # The blind spot of 7-3-1 (e.g. '<' or '0' against 'A', 'K' or 'U'): the field reads differently.
        assert FIELD_OF_CHECK[check](mutated) != FIELD_OF_CHECK[check](original)


@PROPERTY_SETTINGS
@given(any_document, st.data())
def test_changing_a_check_digit_fails_that_check(fields: Fields, data: st.DataObject) -> None:
    lines = fields.compose()
    line, column, check = data.draw(st.sampled_from(CHECK_DIGITS[fields.fmt]))
    old = lines[line][column]
    assume(old != "<")  # the filler check digit of an unused personal number also accepts '0'
    # Not '<': in the number check-digit position of TD1/TD2 it announces a long document number.
    new = data.draw(st.sampled_from(ALNUM).filter(lambda c: c != old))
    mutated = parse_mrz(_replace(lines, line, column, new))
    assert not mutated.checks[check]
    assert not mutated.valid


@PROPERTY_SETTINGS
@given(st.text(alphabet=MRZ_ALPHABET, max_size=60))
def test_check_digit_is_the_weighted_sum_modulo_ten(field: str) -> None:
    weights = [7, 3, 1] * 20
    assert check_digit(field) == sum(VALUES[c] * w for c, w in zip(field, weights, strict=False)) % 10


def _parse_or_mrz_error(text: str | list[str]) -> None:
    try:
        mrz = parse_mrz(text)
    except MRZError as err:
        assert str(err)
        assert err.line is None or err.line >= 1
        assert err.column is None or err.column >= 1
    else:
        assert isinstance(mrz.valid, bool)
        assert mrz.sex in ("M", "F", "X")


@PROPERTY_SETTINGS
@given(st.one_of(st.text(), st.lists(st.text(), max_size=4)))
def test_arbitrary_text_raises_nothing_but_mrz_error(text: str | list[str]) -> None:
    _parse_or_mrz_error(text)


# Near-MRZ input, so that random text reaches past the line checks: 2 or 3 lines of the layout widths
# (give or take one), over the MRZ alphabet with a little lower case and noise.
near_mrz_line = st.sampled_from([29, 30, 31, 35, 36, 37, 43, 44, 45]).flatmap(
    lambda width: st.text(alphabet=st.sampled_from(MRZ_ALPHABET * 4 + "mfx<< #"), min_size=width, max_size=width)
)


@PROPERTY_SETTINGS
@given(st.lists(near_mrz_line, min_size=1, max_size=4))
def test_near_mrz_text_raises_nothing_but_mrz_error(lines: list[str]) -> None:
    _parse_or_mrz_error(lines)


@PROPERTY_SETTINGS
@given(any_document, st.data())
def test_random_characters_in_a_valid_mrz_raise_nothing_but_mrz_error(fields: Fields, data: st.DataObject) -> None:
    lines = fields.compose()
    for _ in range(data.draw(st.integers(min_value=1, max_value=5))):
        line = data.draw(st.integers(min_value=0, max_value=len(lines) - 1))
        column = data.draw(st.integers(min_value=0, max_value=len(lines[line]) - 1))
        lines = _replace(lines, line, column, data.draw(st.sampled_from(MRZ_ALPHABET)))
    _parse_or_mrz_error(lines)
