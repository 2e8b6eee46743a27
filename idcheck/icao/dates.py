"""Two-digit-year MRZ dates (YYMMDD) resolved to full dates.

The MRZ prints dates as YYMMDD, so the century has to be inferred, relative to a reference day ``today``:

* a **birth date** is never in the future: it resolves to the latest date with those digits that is on or
  before ``today`` (so a holder is between 0 and 99 years old);
* an **expiry date** resolves to the year in the 100-year window ``[today.year - 80, today.year + 19]``:
  documents expire at most ~20 years ahead, and an expiry 80 years back is still worth reporting as expired.

A date with unknown parts (``<``, as Doc 9303 prints them), other non-digits, or an impossible day or month
(month 13, 30 February, 29 February of a resolved non-leap year) resolves to ``None``.
"""

from __future__ import annotations

import datetime

__all__ = ["EXPIRY_YEARS_AHEAD", "EXPIRY_YEARS_BACK", "resolve_birth_date", "resolve_expiry_date"]

EXPIRY_YEARS_BACK = 80
EXPIRY_YEARS_AHEAD = 19


def _split(printed: str) -> tuple[int, int, int] | None:
    if len(printed) != 6 or not printed.isascii() or not printed.isdigit():
        return None
    return int(printed[0:2]), int(printed[2:4]), int(printed[4:6])


def _date(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def resolve_birth_date(printed: str, today: datetime.date) -> datetime.date | None:
    """Full birth date of a YYMMDD birth date: the latest such date not after ``today``, else None."""
    parts = _split(printed)
    if parts is None:
        return None
    yy, month, day = parts
    year = today.year - today.year % 100 + yy
    if year > today.year or (year == today.year and (month, day) > (today.month, today.day)):
        year -= 100
    return _date(year, month, day)


def resolve_expiry_date(printed: str, today: datetime.date) -> datetime.date | None:
    """Full expiry date of a YYMMDD expiry date, its year in ``[today.year - 80, today.year + 19]``."""
    parts = _split(printed)
    if parts is None:
        return None
    yy, month, day = parts
    earliest = today.year - EXPIRY_YEARS_BACK
    year = earliest - earliest % 100 + yy
    if year < earliest:
        year += 100
    return _date(year, month, day)
