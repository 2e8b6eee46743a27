"""The change feed and a mirror applying it, without gRPC: consistency at every position, snapshots, restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcheck.records import RecordStatus
from idcheck.register import Caller, InvalidRequest, RawRecord, Register
from idcheck.register.replication import (
    ChangeFeed,
    ChangePage,
    FeedItem,
    Heartbeat,
    Replica,
    ReplicationError,
    SnapshotPart,
    decode_table,
    encode_rows,
)
from idcheck.store.sqlite import RECORD_FIELDS
from idcheck.uploads import UploadMode

NZL = Caller("NZL", "member", "test")
FJI = Caller("FJI", "member", "test")
UPSTREAM = "upstream.example:50051"


def raw(number: str, status: int = 2, *, state: str = "NZL", **holder: str) -> RawRecord:
    return RawRecord(state, number, 1, status, "2024-01-01", **holder)


def upload(register: Register, caller: Caller, upload_id: str, rows: list[RawRecord], replace: bool = False) -> int:
    mode = UploadMode.REPLACE_ALL if replace else UploadMode.INCREMENTAL
    session = register.begin_upload(caller, upload_id, mode, "test")
    session.add(rows)
    return session.commit().register_sequence


class Upstream:
    """A register plus the content digest it had at each sequence, to compare a mirror with."""

    def __init__(self, path: Path) -> None:
        self.register = Register.open(path)
        self.digests: dict[int, tuple[int, str]] = {0: self.register.store.content_digest()}

    def record(self) -> int:
        seq = self.register.store.last_sequence
        self.digests[seq] = self.register.store.content_digest()
        return seq

    def upload(self, caller: Caller, upload_id: str, rows: list[RawRecord], replace: bool = False) -> int:
        upload(self.register, caller, upload_id, rows, replace)
        return self.record()

    def cancel(self, caller: Caller, numbers: list[str]) -> int:
        self.register.cancel(caller, [(caller.member, n, 1) for n in numbers], "found")
        return self.record()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = Upstream(tmp_path / "upstream")
    yield up
    up.register.close()


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    rep = Replica.open(tmp_path / "mirror", UPSTREAM)
    yield rep
    rep.close()


def apply(replica: Replica, item: FeedItem) -> None:
    if isinstance(item, SnapshotPart):
        replica.snapshot(item)
    elif isinstance(item, ChangePage):
        replica.changes(item)
    else:
        replica.heartbeat(item)


def take_until_caught_up(feed: ChangeFeed, replica: Replica, *, heartbeat: float = 60.0) -> list[FeedItem]:
    """Apply feed items from the replica's position until it is consistent at the upstream's head."""
    head = feed.register.store.last_sequence
    items = []
    follow = feed.follow(replica.resume_sequence, heartbeat=heartbeat)
    try:
        while replica.freshness().sequence < head:
            item = next(follow)
            apply(replica, item)
            items.append(item)
    finally:
        follow.close()
    return items


def seed(up: Upstream) -> None:
    """A history with creations, updates, cancellations and a REPLACE_ALL, from two members."""
    up.upload(NZL, "n1", [raw(f"N{i:05d}", surname="SMITH") for i in range(30)])
    up.upload(FJI, "f1", [raw(f"F{i:05d}", state="FJI") for i in range(20)])
    up.upload(NZL, "n2", [raw(f"N{i:05d}", 1, instructions="call NCB") for i in range(0, 30, 3)])  # updates
    up.cancel(NZL, ["N00001", "N00002"])
    up.upload(FJI, "f2", [raw(f"F{i:05d}", state="FJI") for i in range(10, 25)], replace=True)  # cancels F0-9


def test_records_cross_the_wire_unchanged(upstream: Upstream) -> None:
    seed(upstream)
    with upstream.register.store.feed_view() as view:
        rows = view.changed_rows(0, 1000)
    assert len(rows) == 55
    table = decode_table(encode_rows(rows))
    assert tuple(table.schema.names) == RECORD_FIELDS
    assert [tuple(r.values()) for r in table.to_pylist()] == [tuple(r) for r in rows]
    assert decode_table(encode_rows([])).num_rows == 0


def test_mirror_from_zero_takes_a_snapshot_and_equals_the_upstream(upstream: Upstream, replica: Replica) -> None:
    seed(upstream)
    feed = ChangeFeed(upstream.register, snapshot_rows=7)
    items = take_until_caught_up(feed, replica)
    assert all(isinstance(i, SnapshotPart) for i in items)
    assert [i.batch for i in items] == list(range(len(items))) and len(items) == 7  # 43 active records, 7 a batch
    assert items[-1].last and items[-1].total_rows == 43
    assert replica.register.store.content_digest() == upstream.digests[upstream.register.store.last_sequence]
    assert replica.register.sequence == upstream.register.sequence


def test_every_consistent_point_is_exactly_the_upstreams_register_at_that_sequence(
    upstream: Upstream, replica: Replica
) -> None:
    upstream.upload(NZL, "n0", [raw("N99999")])
    take_until_caught_up(ChangeFeed(upstream.register), replica)  # via snapshot, to position 1
    seed(upstream)
    feed = ChangeFeed(upstream.register, page_rows=4)
    follow = feed.follow(replica.resume_sequence, heartbeat=60)
    first = next(follow)
    apply(replica, first)
    assert isinstance(first, ChangePage) and first.through_sequence == 0  # one read, several pages
    read_at = upstream.register.store.last_sequence
    # Changes committed while the read is being sent: the pages still describe the register at `read_at`.
    upstream.upload(NZL, "late", [raw("N00003", 3), raw("N00004", 6 - 2), raw("LATE1")])
    upstream.cancel(NZL, ["N00005"])
    consistent: list[int] = []
    seqs = [int(s) for s in decode_table(first.records).column("seq").to_pylist()]
    try:
        while replica.freshness().sequence < upstream.register.store.last_sequence:
            item = next(follow)
            assert isinstance(item, ChangePage)
            seqs += decode_table(item.records).column("seq").to_pylist()
            apply(replica, item)
            if item.through_sequence:
                consistent.append(item.through_sequence)
                assert replica.register.store.content_digest() == upstream.digests[item.through_sequence]
                assert replica.register.sequence == item.through_sequence
    finally:
        follow.close()
    assert consistent == [read_at, upstream.register.store.last_sequence]
    assert seqs == sorted(set(seqs))  # no duplicates: strictly increasing
    # no gaps: the sequences not sent are exactly those overwritten by a later change of the same record
    with upstream.register.store.feed_view() as view:
        current = {int(r[-1]) for r in view.changed_rows(1, 10_000)}
    assert current <= set(seqs)


def test_a_mirror_beyond_the_window_gets_a_snapshot_that_drops_what_was_cancelled(
    upstream: Upstream, replica: Replica
) -> None:
    upstream.upload(NZL, "n1", [raw(f"N{i:05d}") for i in range(20)])
    take_until_caught_up(ChangeFeed(upstream.register), replica)
    assert replica.register.store.content_digest()[0] == 20
    upstream.cancel(NZL, [f"N{i:05d}" for i in range(5)])
    upstream.upload(NZL, "n2", [raw(f"M{i:05d}") for i in range(10)])  # 15 changes behind
    items = take_until_caught_up(ChangeFeed(upstream.register, window=10), replica)
    assert isinstance(items[0], SnapshotPart)
    assert replica.register.store.content_digest() == upstream.digests[upstream.register.store.last_sequence]
    assert replica.register.store.content_digest()[0] == 25
    # the dropped records no longer hit on the mirror
    results, _ = replica.register.check(NZL, [_query("N00001")])
    assert results[0].verdict.name == "CLEAR"
    # within the window the same gap is sent as changes
    upstream.cancel(NZL, ["N00010"])
    items = take_until_caught_up(ChangeFeed(upstream.register, window=10), replica)
    assert [type(i) for i in items] == [ChangePage]
    assert replica.register.store.content_digest() == upstream.digests[upstream.register.store.last_sequence]


def _query(number: str, state: str = "NZL"):  # type: ignore[no-untyped-def]
    from idcheck.register import Query

    return Query(issuing_state=state, document_number=number)


def test_mirror_answers_checks_like_the_upstream(upstream: Upstream, replica: Replica) -> None:
    seed(upstream)
    take_until_caught_up(ChangeFeed(upstream.register), replica)
    queries = [_query(n) for n in ("N00000", "N00001", "N00003", "NOOOO3", "X1")] + [_query("F00012", "FJI")]
    queries.append(_query("F00012", ""))
    ours, seq_mirror = replica.register.check(NZL, queries)
    theirs, seq_up = upstream.register.check(NZL, queries)
    assert seq_mirror == seq_up
    strip = [(r.verdict, r.matches, r.officer_action) for r in ours]
    assert strip == [(r.verdict, r.matches, r.officer_action) for r in theirs]
    assert {r.verdict.name for r in ours} == {"HIT", "CLEAR", "POSSIBLE_MATCH"}


def test_a_position_beyond_the_upstream_is_refused(upstream: Upstream) -> None:
    upstream.upload(NZL, "n1", [raw("N1")])
    with pytest.raises(InvalidRequest) as err:
        next(ChangeFeed(upstream.register).follow(5))
    assert err.value.violations[0][0] == "from_sequence"


def test_mirror_resumes_from_its_stored_position_after_a_restart(upstream: Upstream, tmp_path: Path) -> None:
    seed(upstream)
    path = tmp_path / "restarted"
    first = Replica.open(path, UPSTREAM)
    take_until_caught_up(ChangeFeed(upstream.register), first)
    held = first.freshness()
    first.close()
    upstream.upload(NZL, "more", [raw("AFTER1"), raw("N00007", 4)])
    again = Replica.open(path, UPSTREAM)
    try:
        assert again.resume_sequence == held.sequence and again.freshness() == held
        assert again.register.sequence == held.sequence  # the index says where the mirror stands
        items = take_until_caught_up(ChangeFeed(upstream.register), again)
        assert [type(i) for i in items] == [ChangePage]  # no new snapshot: only what changed since
        assert items[0].rows == 2
        assert again.register.store.content_digest() == upstream.digests[upstream.register.store.last_sequence]
    finally:
        again.close()


def test_a_data_directory_with_a_register_of_its_own_is_not_mirrored_into(upstream: Upstream, tmp_path: Path) -> None:
    upstream.upload(NZL, "n1", [raw("N1")])
    upstream.register.close()
    try:
        with pytest.raises(ReplicationError, match="register of its own"):
            Replica.open(tmp_path / "upstream", UPSTREAM)
    finally:
        upstream.register = Register.open(tmp_path / "upstream")


def test_batches_out_of_order_or_repeated_are_refused(upstream: Upstream, replica: Replica) -> None:
    upstream.upload(NZL, "n1", [raw("N1")])
    take_until_caught_up(ChangeFeed(upstream.register), replica)
    upstream.upload(NZL, "n2", [raw("N2"), raw("N3")])
    with upstream.register.store.feed_view() as view:
        rows = view.changed_rows(1, 10)
    with upstream.register.store.feed_view() as view:
        again = view.changed_rows(0, 10)
    with pytest.raises(ReplicationError):  # a repeated row (sequence 1 again)
        replica.changes(ChangePage(3, 3, 3, encode_rows(again)))
    with pytest.raises(ReplicationError):  # out of order
        replica.changes(ChangePage(2, 2, 0, encode_rows(rows[::-1])))
    with pytest.raises(ReplicationError):  # a heartbeat claiming a sequence the mirror does not hold
        replica.heartbeat(Heartbeat(3, "2026-01-01T00:00:00.000Z"))
    assert replica.freshness().sequence == 1  # nothing applied
    replica.changes(ChangePage(2, 3, 3, encode_rows(rows)))
    assert replica.register.store.content_digest() == upstream.register.store.content_digest()


def test_a_waiting_subscriber_is_woken_by_a_commit_and_gets_heartbeats_when_idle(upstream: Upstream) -> None:
    upstream.upload(NZL, "n1", [raw("N1")])
    feed = ChangeFeed(upstream.register)
    got: list[tuple[float, FeedItem]] = []
    stop = threading.Event()

    def subscriber() -> None:
        for item in feed.follow(1, heartbeat=0.3, active=lambda: not stop.is_set()):
            got.append((time.monotonic(), item))

    thread = threading.Thread(target=subscriber)
    thread.start()
    try:
        time.sleep(0.8)
        assert [type(i) for _, i in got][:2] == [Heartbeat, Heartbeat]
        assert all(i.sequence == 1 for _, i in got)
        committed = time.monotonic()
        upstream.upload(NZL, "n2", [raw("N2")])
        deadline = time.monotonic() + 5
        while not any(isinstance(i, ChangePage) for _, i in got) and time.monotonic() < deadline:
            time.sleep(0.01)
        arrived, page = next((t, i) for t, i in got if isinstance(i, ChangePage))
        assert isinstance(page, ChangePage) and page.through_sequence == 2
        assert arrived - committed < 0.4  # woken by the commit, not by the 0.5 s recheck
    finally:
        stop.set()
        feed.close()
        thread.join(5)
    assert not thread.is_alive()


def test_cancelled_records_replicate_as_cancelled(upstream: Upstream, replica: Replica) -> None:
    upstream.upload(NZL, "n1", [raw("N1"), raw("N2")])
    take_until_caught_up(ChangeFeed(upstream.register), replica)
    upstream.cancel(NZL, ["N1"])
    take_until_caught_up(ChangeFeed(upstream.register), replica)
    record, _ = replica.register.store.get_record("NZL", replica.register.store.records_by_ids([1])[1].data.key)
    assert record.data.status == RecordStatus.CANCELLED
    results, seq = replica.register.check(NZL, [_query("N1"), _query("N2")])
    assert [r.verdict.name for r in results] == ["CLEAR", "HIT"] and seq == 3
