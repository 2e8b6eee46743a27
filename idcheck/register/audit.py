"""Reading the audit log: who may see which checks, time ranges, and paging.

Operators see every check, verify and identify (optionally one member's searches). A member sees the checks
that matched its own records, and the verify and identify calls that matched its own templates, whoever asked:
the owner of a record or template learns where its document or subject was presented.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from idcheck.icao import StateCodeError, canonical_state
from idcheck.register.errors import InvalidRequest
from idcheck.store import AuditRow, RegisterStore

MAX_PAGE = 10_000
DEFAULT_PAGE = 1_000
# Document checks, then verify (1:1) and identify (1:N) calls of the biometric gallery.
VERDICTS = ("HIT", "POSSIBLE_MATCH", "CLEAR", "MATCH", "NO_MATCH", "CANDIDATES", "NO_CANDIDATES")


@dataclass(frozen=True)
class AuditPage:
    """Audit rows, oldest first, and the token for the next page ('' when this is the last)."""

    rows: list[AuditRow]
    next_page_token: str


def parse_position(text: str) -> tuple[int, int]:
    """`call:position` of a page token or a hit cursor; ValueError unless both are 64-bit integers (the store's)."""
    call, position = (int(x) for x in text.split(":"))
    if not (-(2**63) <= call < 2**63 and -(2**63) <= position < 2**63):
        raise ValueError("beyond 64-bit integers")
    return call, position


def parse_time(value: str, field: str) -> str:
    """An RFC 3339 time or a date, as the store writes times (UTC, milliseconds, Z)."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(text)
            if moment.tzinfo is None:
                raise InvalidRequest.single(field, f"{value!r} has no time zone (add Z for UTC)")
        utc = moment.astimezone(dt.UTC)
    except ValueError:
        raise InvalidRequest.single(field, f"{value!r} is not an RFC 3339 time or a YYYY-MM-DD date") from None
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: in UTC, before the calendar starts
        raise InvalidRequest.single(field, f"{value!r} falls outside years 1 to 9999 in UTC") from None
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def list_audit(
    store: RegisterStore,
    *,
    role: str,
    member: str,
    since: str,
    until: str = "",
    caller_member: str = "",
    verdicts: Sequence[str] = (),
    limit: int = 0,
    page_token: str = "",
) -> AuditPage:
    """One page of the audit log as `member` in `role` may see it (operator: all; member: its records' hits)."""
    if not since.strip():
        raise InvalidRequest.single("since", "a start time is required (RFC 3339 or YYYY-MM-DD)")
    start = parse_time(since, "since")
    end = parse_time(until, "until") if until.strip() else "9999-12-31T23:59:59.999Z"
    if not 0 <= limit <= MAX_PAGE:
        raise InvalidRequest.single("limit", f"between 1 and {MAX_PAGE} (0 for {DEFAULT_PAGE})")
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise InvalidRequest.single("verdicts", f"unknown verdict {bad[0]!r} (use {', '.join(VERDICTS)})")
    after = (0, -1)
    if page_token:
        try:
            call, position = parse_position(page_token)
        except ValueError:
            raise InvalidRequest.single("page_token", "not a token returned by ListAudit") from None
        after = (call, position)
    owner, asked_by = "", ""
    if role == "member":
        owner = member  # a member sees where its own documents were presented, whoever asked
    elif caller_member.strip():
        try:
            asked_by = canonical_state(caller_member)
        except StateCodeError as exc:
            raise InvalidRequest.single("caller_member", str(exc)) from None
    page = limit or DEFAULT_PAGE
    found = store.list_audit(
        since=start, until=end, caller_member=asked_by, owner=owner, verdicts=verdicts, after=after, limit=page + 1
    )
    more = len(found) > page
    found = found[:page]
    token = f"{found[-1][0]}:{found[-1][1]}" if more and found else ""
    return AuditPage([row for _, _, row in found], token)
