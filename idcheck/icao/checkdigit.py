"""Doc 9303 check digits (Part 3, section 4.9).

Each character gets a value (``<`` is 0, digits are themselves, ``A``-``Z`` are 10-35), the values are
multiplied by the repeating weights 7, 3, 1 and the check digit is the sum modulo 10.

The value of every character is looked up in a 256-entry byte table so a field is weighted in one pass of
C code (``bytes.translate`` then ``map(mul, ...)``): this is on the hot path of every MRZ parse.
"""

from __future__ import annotations

import re
from itertools import cycle
from operator import mul

__all__ = ["MRZ_CHARACTERS", "check_digit", "check_digit_unchecked"]

#: The characters an MRZ may hold.
MRZ_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<"

_INVALID = 0xFF


def _value_table() -> bytes:
    table = bytearray([_INVALID]) * 256
    table[ord("<")] = 0
    for digit in range(10):
        table[ord("0") + digit] = digit
    for index in range(26):
        table[ord("A") + index] = 10 + index
    return bytes(table)


_VALUES = _value_table()
# Far longer than any MRZ field (the longest, the TD1 composite, is 50 characters); map() stops at the shorter
# of the two sequences. Longer strings (never in an MRZ) fall back to an endless cycle of weights.
_WEIGHTS = (7, 3, 1) * 40
_VALID_FIELD = re.compile(r"[A-Z0-9<]*")


def check_digit_unchecked(field: str) -> int:
    """Check digit of a field already known to hold only ``A-Z``, ``0-9`` and ``<`` (no validation)."""
    weights = _WEIGHTS if len(field) <= len(_WEIGHTS) else cycle((7, 3, 1))
    return sum(map(mul, field.encode("ascii").translate(_VALUES), weights)) % 10


def check_digit(field: str) -> int:
    """Check digit (0-9) of an MRZ field; raises :class:`MRZError` for a character outside A-Z, 0-9 and <."""
    if _VALID_FIELD.fullmatch(field) is None:
        # Imported here: mrz.py builds on this module, and MRZError belongs with the parser.
        from idcheck.icao.mrz import MRZError

        position, char = next((i, c) for i, c in enumerate(field) if c not in MRZ_CHARACTERS)
        raise MRZError(
            f"character {char!r} at position {position + 1} of {field!r} is not allowed (A-Z, 0-9 and < only)"
        )
    return check_digit_unchecked(field)
