"""Machine readable zones (MRZ) of travel documents, as laid down in ICAO Doc 9303.

Five layouts are read and written:

======  =====  ================================================  ===========================
format  lines  document                                          check digits
======  =====  ================================================  ===========================
TD1     3x30   ID cards and other official travel documents      number, birth, expiry, composite
TD2     2x36   ID cards and other official travel documents      number, birth, expiry, composite
TD3     2x44   passports                                         number, birth, expiry, optional, composite
MRVA    2x44   visas, format A (Doc 9303 Part 7)                 number, birth, expiry
MRVB    2x36   visas, format B (Doc 9303 Part 7)                 number, birth, expiry
======  =====  ================================================  ===========================

A two-line MRZ whose document code starts with ``V`` is a visa; any other is a TD2 card or TD3 passport.

What is an error and what is a finding:

* :class:`MRZError` is raised when the text is not an MRZ at all: wrong number of lines, wrong line length, a
  character outside ``A-Z 0-9 <``, or a sex other than ``M``, ``F``, ``X`` or ``<``. The message names the
  line and column.
* A check digit that does not match (or is not a digit) is a finding: it is reported in :attr:`MRZ.checks`
  and the MRZ is still returned, because a border officer needs to see what the document says.
* Issuing-state and nationality codes are returned as printed (fillers removed) and not validated here; use
  :mod:`idcheck.icao.states` to decide whether a code is known.
* Dates are returned as printed and resolved to full dates as described in :mod:`idcheck.icao.dates`; an
  unresolvable date gives ``None``.

Long document numbers (TD1, TD2): when the number is longer than 9 characters, the first 9 are in the
number field, its check-digit position holds ``<``, and the rest of the number starts the optional data,
followed by the real check digit and a ``<``. The full number is returned and checked against that digit;
the optional data returned is what follows.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from idcheck.icao.checkdigit import check_digit_unchecked
from idcheck.icao.dates import resolve_birth_date, resolve_expiry_date

__all__ = ["MRZ", "MRZError", "MRZFormat", "compose_mrz", "parse_mrz"]


class MRZError(ValueError):
    """Text that cannot be read as an MRZ; ``line`` and ``column`` (1-based) say where, when they apply."""

    def __init__(self, reason: str, *, line: int | None = None, column: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        if line is not None and column is not None:
            where = f"line {line}, column {column}: "
        elif line is not None:
            where = f"line {line}: "
        else:
            where = ""
        super().__init__(where + reason)

    def __reduce__(self) -> tuple[object, ...]:
        # Keep line and column across pickling (e.g. to a worker process).
        return (_rebuild_error, (self.reason, self.line, self.column))


def _rebuild_error(reason: str, line: int | None, column: int | None) -> MRZError:
    return MRZError(reason, line=line, column=column)


class MRZFormat(enum.StrEnum):
    """The Doc 9303 MRZ layouts."""

    TD1 = "TD1"
    TD2 = "TD2"
    TD3 = "TD3"
    MRVA = "MRVA"
    MRVB = "MRVB"


_LINE_LENGTH = {
    MRZFormat.TD1: 30,
    MRZFormat.TD2: 36,
    MRZFormat.TD3: 44,
    MRZFormat.MRVA: 44,
    MRZFormat.MRVB: 36,
}
_LINE_COUNT = {MRZFormat.TD1: 3, MRZFormat.TD2: 2, MRZFormat.TD3: 2, MRZFormat.MRVA: 2, MRZFormat.MRVB: 2}
_DESCRIPTION = {
    MRZFormat.TD1: "TD1 card",
    MRZFormat.TD2: "TD2 card",
    MRZFormat.TD3: "TD3 passport",
    MRZFormat.MRVA: "MRV-A visa",
    MRZFormat.MRVB: "MRV-B visa",
}

_DIGITS = "0123456789"
_ALLOWED = "A-Z, 0-9 and < only"
_VALID_LINE = re.compile(r"[A-Z0-9<]*")
_VALID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<")
# Upper-cases ASCII letters only, leaving any other character for the validity check to report.
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SEX = {"M": "M", "F": "F", "X": "X", "<": "X"}


@dataclass(frozen=True, slots=True)
class MRZ:
    """The fields and check-digit results of one machine readable zone."""

    format: MRZFormat
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
    checks: dict[str, bool] = field(hash=False)
    birth_date_resolved: datetime.date | None
    expiry_date_resolved: datetime.date | None

    @property
    def valid(self) -> bool:
        """Whether every check digit of this layout matches."""
        return all(self.checks.values())

    @property
    def failed_checks(self) -> tuple[str, ...]:
        """Names of the checks that failed, in MRZ order."""
        return tuple(name for name, passed in self.checks.items() if not passed)

    def to_dict(self) -> dict[str, object]:
        """The MRZ as a JSON-ready object: dates as printed, checks by name and the overall verdict."""
        return {
            "format": self.format.value,
            "document_type": self.document_type,
            "issuing_state": self.issuing_state,
            "document_number": self.document_number,
            "nationality": self.nationality,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "expiry_date": self.expiry_date,
            "surname": self.surname,
            "given_names": self.given_names,
            "optional_data": self.optional_data,
            "checks": dict(self.checks),
            "valid": self.valid,
        }


# --- reading ---------------------------------------------------------------------------------------------


def _split_lines(text: str | Sequence[str]) -> list[str]:
    raw = text.splitlines() if isinstance(text, str) else [part for item in text for part in item.splitlines()]
    lines = []
    for number, line in enumerate(filter(None, map(str.strip, raw)), start=1):
        # str.upper() is only safe on ASCII: it turns "ß" into "SS" and would shift every later column.
        line = line.upper() if line.isascii() else line.translate(_UPPER)
        if _VALID_LINE.fullmatch(line) is None:
            column, char = next((i, c) for i, c in enumerate(line, start=1) if c not in _VALID_CHARS)
            raise MRZError(f"character {char!r} is not allowed ({_ALLOWED})", line=number, column=column)
        lines.append(line)
    return lines


def _detect_format(lines: list[str]) -> MRZFormat:
    if len(lines) == 3:
        fmt = MRZFormat.TD1
    elif len(lines) == 2:
        first = lines[0]
        if len(first) == 44:
            fmt = MRZFormat.MRVA if first[0] == "V" else MRZFormat.TD3
        elif len(first) == 36:
            fmt = MRZFormat.MRVB if first[0] == "V" else MRZFormat.TD2
        else:
            raise MRZError(
                f"line is {len(first)} characters long; a two-line MRZ has lines of 44 (TD3 passport, "
                "MRV-A visa) or 36 (TD2 card, MRV-B visa)",
                line=1,
            )
    else:
        raise MRZError(
            f"an MRZ has 2 lines (TD2, TD3, visas) or 3 lines (TD1), not {len(lines)}",
        )
    expected = _LINE_LENGTH[fmt]
    for number, line in enumerate(lines, start=1):
        if len(line) != expected:
            # The column is where the line first goes wrong: the first missing or the first extra character.
            raise MRZError(
                f"line is {len(line)} characters long; {_DESCRIPTION[fmt]} lines have {expected}",
                line=number,
                column=min(len(line), expected) + 1,
            )
    return fmt


def _check(data: str, digit: str) -> bool:
    return digit == _DIGITS[check_digit_unchecked(data)]


def _text(raw: str) -> str:
    """Free text of a field: fillers become spaces, surrounding fillers dropped."""
    return raw.replace("<", " ").strip()


def _code(raw: str) -> str:
    """A code or number: fillers removed."""
    return raw.replace("<", "")


def _names(raw: str) -> tuple[str, str]:
    surname, _, given = raw.partition("<<")
    return " ".join(surname.replace("<", " ").split()), " ".join(given.replace("<", " ").split())


def _sex(char: str, line: int, column: int) -> str:
    sex = _SEX.get(char)
    if sex is None:
        raise MRZError(f"sex must be M, F, X or <, not {char!r}", line=line, column=column)
    return sex


def _long_number(first_nine: str, optional: str) -> tuple[str, str, str]:
    """Split a TD1/TD2 optional-data field that continues a long document number.

    Returns (full number field, its check digit character, rest of the optional data).
    """
    run = optional.partition("<")[0]
    return first_nine + run[:-1], run[-1], optional[len(run) :]


def parse_mrz(text: str | Sequence[str], *, today: datetime.date | None = None) -> MRZ:
    """Read an MRZ given as one string with newlines or as separate lines.

    Surrounding whitespace is stripped and lower case is accepted. ``today`` (default: the current date)
    anchors the century of two-digit years. Raises :class:`MRZError` when the text is not an MRZ; failing
    check digits are reported in :attr:`MRZ.checks`.
    """
    lines = _split_lines(text)
    fmt = _detect_format(lines)
    if today is None:
        today = datetime.date.today()
    if fmt is MRZFormat.TD1:
        return _parse_td1(lines, today)
    return _parse_two_line(fmt, lines[0], lines[1], today)


def _parse_td1(lines: list[str], today: datetime.date) -> MRZ:
    one, two, three = lines
    number, number_digit, optional_1 = one[5:14], one[14], one[15:30]
    if number_digit == "<" and optional_1[0] != "<":
        number, number_digit, optional_1 = _long_number(number, optional_1)
    birth, expiry = two[0:6], two[8:14]
    composite = one[5:30] + two[0:7] + two[8:15] + two[18:29]
    checks = {
        "document_number": _check(number, number_digit),
        "birth_date": _check(birth, two[6]),
        "expiry_date": _check(expiry, two[14]),
        "composite": _check(composite, two[29]),
    }
    surname, given_names = _names(three)
    optional = " ".join(part for part in (_text(optional_1), _text(two[18:29])) if part)
    return MRZ(
        format=MRZFormat.TD1,
        document_type=_code(one[0:2]),
        issuing_state=_code(one[2:5]),
        document_number=_code(number),
        nationality=_code(two[15:18]),
        birth_date=birth,
        sex=_sex(two[7], 2, 8),
        expiry_date=expiry,
        surname=surname,
        given_names=given_names,
        optional_data=optional,
        checks=checks,
        birth_date_resolved=resolve_birth_date(birth, today),
        expiry_date_resolved=resolve_expiry_date(expiry, today),
    )


def _parse_two_line(fmt: MRZFormat, one: str, two: str, today: datetime.date) -> MRZ:
    # Line 2 of TD2, TD3 and both visas shares positions 1-28; they differ from position 29 on.
    number, number_digit = two[0:9], two[9]
    birth, expiry = two[13:19], two[21:27]
    if fmt is MRZFormat.TD3:
        optional = two[28:42]
    elif fmt is MRZFormat.TD2:
        optional = two[28:35]
        if number_digit == "<" and optional[0] != "<":
            number, number_digit, optional = _long_number(number, optional)
    else:  # visas: optional data to the end of the line, no composite check digit
        optional = two[28:]
    checks = {
        "document_number": _check(number, number_digit),
        "birth_date": _check(birth, two[19]),
        "expiry_date": _check(expiry, two[27]),
    }
    if fmt is MRZFormat.TD3:
        # An unused personal-number field may carry '<' instead of its check digit (Doc 9303 Part 4).
        checks["optional_data"] = (two[42] == "<" and optional == "<" * 14) or _check(optional, two[42])
        checks["composite"] = _check(two[0:10] + two[13:20] + two[21:43], two[43])
    elif fmt is MRZFormat.TD2:
        checks["composite"] = _check(two[0:10] + two[13:20] + two[21:35], two[35])
    surname, given_names = _names(one[5:])
    return MRZ(
        format=fmt,
        document_type=_code(one[0:2]),
        issuing_state=_code(one[2:5]),
        document_number=_code(number),
        nationality=_code(two[10:13]),
        birth_date=birth,
        sex=_sex(two[20], 2, 21),
        expiry_date=expiry,
        surname=surname,
        given_names=given_names,
        optional_data=_text(optional),
        checks=checks,
        birth_date_resolved=resolve_birth_date(birth, today),
        expiry_date_resolved=resolve_expiry_date(expiry, today),
    )


# --- writing ---------------------------------------------------------------------------------------------

_NAME_SEPARATORS = str.maketrans({"-": " ", "'": " ", "<": " "})
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ<")
_NUMBER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _mrz_value(value: str, what: str, allowed: frozenset[str] = _VALID_CHARS) -> str:
    """Upper-case ``value`` (ASCII), turn spaces into fillers and reject anything else outside ``allowed``."""
    text = value.strip().translate(_UPPER).replace(" ", "<")
    bad = next((c for c in text if c not in allowed), None)
    if bad is not None:
        raise MRZError(f"{what} {value!r}: character {bad!r} cannot be written in an MRZ")
    return text


def _fit(text: str, width: int, what: str) -> str:
    if len(text) > width:
        raise MRZError(f"{what} {text!r} is longer than the {width} characters of its field")
    return text.ljust(width, "<")


def _name_part(value: str, what: str) -> str:
    # Spaces, hyphens and apostrophes each become one filler; runs collapse so that "<<" only ever
    # separates the surname from the given names.
    return _mrz_value(" ".join(value.translate(_NAME_SEPARATORS).split()), what, _NAME_CHARS)


def _name_field(surname: str, given_names: str, width: int) -> str:
    primary = _name_part(surname, "surname")
    secondary = _name_part(given_names, "given names")
    name = f"{primary}<<{secondary}" if secondary else primary
    return name[:width].ljust(width, "<")


def _digit(data: str) -> str:
    return _DIGITS[check_digit_unchecked(data)]


def compose_mrz(
    fmt: MRZFormat,
    *,
    document_type: str,
    issuing_state: str,
    document_number: str,
    nationality: str,
    birth_date: str,
    sex: str,
    expiry_date: str,
    surname: str,
    given_names: str,
    optional_data: str = "",
    optional_data_2: str = "",
) -> list[str]:
    """Build the lines of a valid MRZ, check digits included.

    Names are only upper-cased, with spaces, hyphens and apostrophes written as ``<``, and truncated to fit.
    Every other field must fit its place; ``optional_data_2`` is the line-2 optional data of TD1 only.
    Document numbers longer than 9 characters continue in the optional data (TD1 and TD2 only). Raises
    :class:`MRZError` for a value that cannot be written.
    """
    fmt = MRZFormat(fmt)
    doc_type = _fit(_mrz_value(document_type, "document type").strip("<"), 2, "document type")
    is_visa_code = doc_type[0] == "V"
    if fmt in (MRZFormat.MRVA, MRZFormat.MRVB) and not is_visa_code:
        raise MRZError(f"document type {document_type!r}: a visa document code starts with V")
    if fmt in (MRZFormat.TD2, MRZFormat.TD3) and is_visa_code:
        raise MRZError(f"document type {document_type!r}: a code starting with V is read as a visa")
    state = _fit(_mrz_value(issuing_state, "issuing state").strip("<"), 3, "issuing state")
    nation = _fit(_mrz_value(nationality, "nationality").strip("<"), 3, "nationality")
    number = _mrz_value(document_number.strip().strip("<"), "document number", _NUMBER_CHARS)
    birth = _mrz_value(birth_date, "birth date")
    expiry = _mrz_value(expiry_date, "expiry date")
    for what, date in (("birth date", birth), ("expiry date", expiry)):
        if len(date) != 6:
            raise MRZError(f"{what} {date!r} must be 6 characters, YYMMDD")
    sex_char = _mrz_value(sex, "sex") or "<"
    if sex_char not in _SEX:
        raise MRZError(f"sex {sex!r} must be M, F, X or <")
    sex_char = "<" if sex_char == "X" else sex_char  # Doc 9303 writes unspecified sex as a filler
    optional = _mrz_value(optional_data, "optional data")
    optional_2 = _mrz_value(optional_data_2, "optional data 2")
    if optional_2 and fmt is not MRZFormat.TD1:
        raise MRZError(f"optional data 2 is only written in TD1, not {fmt.value}")

    if len(number) > 9 and fmt in (MRZFormat.TD1, MRZFormat.TD2):
        # Long number: the first 9 characters, a filler where the check digit goes, then the rest of the
        # number, its check digit and a filler at the start of the optional data.
        number_field = number[:9] + "<"
        optional = number[9:] + _digit(number) + "<" + optional
        if len(optional) > (15 if fmt is MRZFormat.TD1 else 7):
            raise MRZError(
                f"document number {number!r} with optional data {optional_data!r} does not fit the "
                f"optional data field of {fmt.value}"
            )
    else:
        number_field = _fit(number, 9, "document number")
        number_field += _digit(number_field)
    birth_field = birth + _digit(birth)
    expiry_field = expiry + _digit(expiry)
    width = _LINE_LENGTH[fmt]

    if fmt is MRZFormat.TD1:
        one = doc_type + state + number_field + _fit(optional, 15, "optional data")
        two = birth_field + sex_char + expiry_field + nation + _fit(optional_2, 11, "optional data 2")
        two += _digit(one[5:30] + two[0:7] + two[8:15] + two[18:29])
        return [one, two, _name_field(surname, given_names, width)]

    one = doc_type + state + _name_field(surname, given_names, width - 5)
    two = number_field + nation + birth_field + sex_char + expiry_field
    if fmt is MRZFormat.TD3:
        personal = _fit(optional, 14, "optional data")
        two += personal + ("<" if personal == "<" * 14 else _digit(personal))
        two += _digit(two[0:10] + two[13:20] + two[21:43])
    elif fmt is MRZFormat.TD2:
        two += _fit(optional, 7, "optional data")
        two += _digit(two[0:10] + two[13:20] + two[21:35])
    else:
        two += _fit(optional, width - 28, "optional data")
    return [one, two]
