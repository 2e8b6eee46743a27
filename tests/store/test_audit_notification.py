"""The audit writer wakes hit watchers at each commit, commits hits at once while someone waits, and counts every
call it is handed (also when writing is off for a benchmark)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcheck.store import AuditCall, AuditDocument, AuditWriter, RegisterStore, utc_now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegisterStore]:
    s = RegisterStore(tmp_path / "register.db")
    yield s
    s.close()


def call(writer: AuditWriter, *verdicts: str, single: bool = False) -> tuple[AuditCall, list[AuditDocument]]:
    call_id = writer.next_call_id()
    docs = [AuditDocument(call_id, i, "typed", "NZL", f"LA{i:06d}", v, "1" if v != "CLEAR" else "") for i, v in
            enumerate(verdicts)]  # fmt: skip
    return AuditCall(call_id, uuid.uuid4().hex, utc_now(), "FJI", "border", "peer", 1, len(docs), single), docs


def test_a_waiter_wakes_at_the_next_commit(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0)
    try:
        seen = writer.commits
        woke: list[int] = []
        waiter = threading.Thread(target=lambda: woke.append(writer.wait_for_commit(seen, timeout=60)))
        waiter.start()
        writer.submit(*call(writer, "CLEAR"))
        assert writer.flush()
        waiter.join(10)
        assert woke == [seen + 1]
        # a commit that happened after `commits` was read is not missed by a later wait
        writer.submit(*call(writer, "CLEAR"))
        assert writer.flush()
        assert writer.wait_for_commit(seen + 1, timeout=60) == seen + 2
    finally:
        writer.close()


def test_a_hit_submitted_just_before_a_watcher_waits_is_committed_at_once(store: RegisterStore) -> None:
    """The race of a check submitted as a watch starts waiting: the hit is queued, the writer (asleep for the
    interval) has not seen it, and no waiter was there to wake it. The waiter's arrival must have it committed,
    not left for the interval (10 minutes here)."""
    writer = AuditWriter(store, interval=600.0)
    try:
        seen = writer.commits
        writer.submit(*call(writer, "HIT"))  # nobody waits: the writer is not woken, the hit is not counted yet
        assert writer.wait_for_commit(seen, timeout=30) == seen + 1
        assert store.audit_count() == 1
    finally:
        writer.close()


def test_a_waiter_does_not_bring_forward_rows_that_are_not_hits(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=600.0)
    try:
        seen = writer.commits
        writer.submit(*call(writer, "CLEAR", "CLEAR"))
        assert writer.wait_for_commit(seen, timeout=1) == seen  # woken to look, but nothing to commit early
        assert writer.counts().rows_pending == 2 and store.audit_count() == 0
    finally:
        writer.close()


def test_stop_and_wake_end_a_wait(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0)
    stopped = threading.Event()
    try:
        done: list[int] = []
        waiter = threading.Thread(
            target=lambda: done.append(writer.wait_for_commit(writer.commits, 60, stopped.is_set))
        )
        waiter.start()
        stopped.set()
        writer.wake_waiters()
        waiter.join(10)
        assert done == [0] and not waiter.is_alive()
    finally:
        writer.close()


def test_hits_are_committed_at_once_while_someone_waits(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=600.0)  # otherwise nothing is committed within the test
    try:
        writer.submit(*call(writer, "CLEAR"))
        assert writer.counts().rows_pending == 1
        seen = writer.commits
        writer.submit(*call(writer, "HIT"))  # a hit with nobody waiting: it waits for the interval too
        assert writer.counts().rows_pending == 2 and writer.commits == seen
        # a watcher starting to wait has the pending hit committed (with the rows before it)
        assert writer.wait_for_commit(seen, timeout=60) == seen + 1
        assert writer.counts().rows_written == 2 and store.audit_count() == 2
        # and a hit arriving while it waits is committed too
        result: list[int] = []
        waiter = threading.Thread(target=lambda: result.append(writer.wait_for_commit(seen + 1, timeout=60)))
        waiter.start()
        writer.submit(*call(writer, "CLEAR", "POSSIBLE_MATCH"))
        waiter.join(30)
        assert result == [seen + 2] and store.audit_count() == 4
    finally:
        writer.close()


def test_counts_include_every_call_handed_over(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=600.0)
    try:
        writer.submit(*call(writer, "HIT", single=True))
        writer.submit(*call(writer, "CLEAR", "POSSIBLE_MATCH", "CLEAR"))
        call_id = writer.next_call_id()
        writer.submit(
            AuditCall(call_id, "v", utc_now(), "FJI", "border", "", 1, 1, True),
            [AuditDocument(call_id, 0, "verify", "", "", "MATCH", "7", "NZL-1")],
        )
        counts = writer.counts()
        assert dict(counts.calls_by_kind) == {"check": 1, "manifest": 1, "verify": 1}
        assert dict(counts.answers_by_verdict) == {"HIT": 1, "CLEAR": 2, "POSSIBLE_MATCH": 1, "MATCH": 1}
        assert (counts.rows_pending, counts.rows_written, counts.calls_written) == (5, 0, 0)
        assert writer.flush()
        counts = writer.counts()
        assert (counts.rows_pending, counts.rows_written, counts.calls_written) == (0, 5, 3)
    finally:
        writer.close()


def test_benchmark_mode_counts_but_writes_nothing(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=0.01, write=False)
    try:
        for _ in range(3):
            writer.submit(*call(writer, "HIT", single=True))
        assert writer.flush()
        counts = writer.counts()
        assert not counts.enabled and counts.answers_by_verdict == {"HIT": 3}
        assert (counts.rows_pending, counts.rows_written) == (0, 0) and store.audit_count() == 0
    finally:
        writer.close()
