"""Hit notifications and hit outcomes.

A member is told of every HIT and POSSIBLE_MATCH on the records it owns, read from the audit log in call id and
position order. Each hit carries its cursor `call_id:position`; the audit writer commits every batch above all
calls committed before it (see RegisterStore.write_audit), so a watch resumed after a cursor misses nothing and
repeats nothing.

The owner of a matched record then confirms or rejects the hit, as the issuing state does after an SLTD hit:
one outcome per query id, recorded durably; a second decision is refused (HitAlreadyDecided) rather than
overwriting what the querying border system may already have acted on. The member that asked the query and the
owners of the records it matched may read the outcome; nobody else.

A watch that has caught up sleeps until the audit writer commits (it wakes every waiting watch after each
commit), so a hit reaches its owner as soon as it is in the log, without polling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from idcheck.register.audit import parse_position
from idcheck.register.errors import HitAlreadyDecided, HitNotFound, InvalidRequest
from idcheck.store import AuditRow, AuditWriter, NotOwner, RegisterStore

HIT_VERDICTS = ("HIT", "POSSIBLE_MATCH")
OUTCOMES = ("CONFIRMED", "REJECTED")
PENDING = "PENDING"
MAX_NOTE_CHARS = 1000
MAX_QUERY_ID_CHARS = 64
_BEGINNING = (0, -1)
_ALL_TIME = ("0000-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z")


@dataclass(frozen=True, slots=True)
class Hit:
    """A HIT or POSSIBLE_MATCH on the watching member's records, with the cursor to resume after it."""

    cursor: str
    row: AuditRow


@dataclass(frozen=True, slots=True)
class HitOutcome:
    """The decision on a hit (PENDING while the owner has not decided)."""

    query_id: str
    outcome: str
    note: str
    decided_by: str
    decided_at: str
    caller_member: str


def parse_cursor(cursor: str) -> tuple[int, int]:
    """(call id, position) of a cursor given with a hit; the beginning of the log for ''."""
    if not cursor.strip():
        return _BEGINNING
    try:
        call, position = parse_position(cursor)
    except ValueError:
        raise InvalidRequest.single("cursor", "not a cursor given with a hit notification") from None
    return call, position


def hits_after(store: RegisterStore, member: str, cursor: str, *, limit: int = 500) -> list[Hit]:
    """At most `limit` hits on `member`'s records after `cursor`, oldest first."""
    found = store.list_audit(
        since=_ALL_TIME[0],
        until=_ALL_TIME[1],
        owner=member,
        verdicts=HIT_VERDICTS,
        after=parse_cursor(cursor),
        limit=limit,
    )
    return [Hit(f"{call}:{position}", row) for call, position, row in found]


def follow(
    store: RegisterStore,
    writer: AuditWriter,
    member: str,
    cursor: str,
    *,
    stop: Callable[[], bool],
    catch_up_only: bool = False,
    recheck: float = 1.0,
) -> Iterator[Hit]:
    """Every hit on `member`'s records after `cursor`, then (unless `catch_up_only`) each new one as soon as the
    audit writer commits it, until `stop()` is true. Waiting ends at each commit, or after `recheck` seconds to
    look at `stop()` again (call `writer.wake_waiters()` to make it look at once)."""
    parse_cursor(cursor)  # a bad cursor is refused before anything is sent
    writer.flush()  # checks answered before the watch began are in the log
    while not stop():
        seen = writer.commits  # before reading: a commit after this read wakes the wait below
        found = hits_after(store, member, cursor)
        for hit in found:
            yield hit
            cursor = hit.cursor
        if not found:
            if catch_up_only:
                return
            writer.wait_for_commit(seen, recheck, stop)


def _find_hit(store: RegisterStore, query_id: str) -> tuple[AuditRow, frozenset[str]]:
    query_id = query_id.strip()
    if not query_id:
        raise InvalidRequest.single("query_id", "a query id is required")
    if len(query_id) > MAX_QUERY_ID_CHARS:
        raise InvalidRequest.single("query_id", f"at most {MAX_QUERY_ID_CHARS} characters")
    found = store.find_audit_row(query_id)
    if found is None or found[0].verdict not in HIT_VERDICTS:
        raise HitNotFound(f"no HIT or POSSIBLE_MATCH with query id {query_id!r}")
    return found


def _outcome(store: RegisterStore, row: AuditRow) -> HitOutcome:
    decided = store.hit_outcome(row.query_id)
    if decided is None:
        return HitOutcome(row.query_id, PENDING, "", "", "", row.caller_member)
    return HitOutcome(row.query_id, *decided, row.caller_member)


def confirm_hit(store: RegisterStore, member: str, query_id: str, outcome: str, note: str = "") -> HitOutcome:
    """Record the owner's decision on a hit; only an owner of a matched record may decide, once."""
    decision = outcome.strip().upper()
    if decision not in OUTCOMES:
        raise InvalidRequest.single("outcome", f"{outcome!r} is not one of {', '.join(OUTCOMES)}")
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidRequest.single("note", f"at most {MAX_NOTE_CHARS} characters")
    row, owners = _find_hit(store, query_id)
    if member not in owners:
        raise NotOwner("only the owner of a record this query matched may confirm or reject it", field="query_id")
    if not store.record_hit_outcome(row.query_id, decision, note, member):
        decided = store.hit_outcome(row.query_id)
        raise HitAlreadyDecided(f"query {row.query_id} was already {decided[0] if decided else 'decided'}")
    return _outcome(store, row)


def hit_outcome(store: RegisterStore, member: str, query_id: str) -> HitOutcome:
    """The outcome of a hit, for the member that asked the query or an owner of a matched record."""
    row, owners = _find_hit(store, query_id)
    if member != row.caller_member and member not in owners:
        raise NotOwner(
            "only the member that asked this query or an owner of a record it matched may read it", field="query_id"
        )
    return _outcome(store, row)
