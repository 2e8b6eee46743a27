"""The background audit writer: check calls queued by the register end up in the audit log."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from idcheck.store import AuditCall, AuditClear, AuditDocument, AuditWriter, RegisterStore, utc_now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegisterStore]:
    s = RegisterStore(tmp_path / "register.db")
    yield s
    s.close()


def call(writer: AuditWriter, documents: int, *, single: bool = False) -> tuple[AuditCall, list[AuditDocument]]:
    call_id = writer.next_call_id()
    docs = [AuditDocument(call_id, i, "typed", "NZL", f"LA{call_id:03d}{i:03d}", "CLEAR", "") for i in range(documents)]
    uid = uuid.uuid4().hex  # as the register does: query ids never depend on call ids
    return AuditCall(call_id, uid, utc_now(), "NZL", "border", "peer", 7, documents, single), docs


def documents_in_table(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT call_id, position FROM audit ORDER BY call_id, position").fetchall()


def wait_for(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


def test_flushed_rows_are_all_in_the_table(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0)  # nothing but flush() commits within the test
    try:
        writer.submit(*call(writer, 3))
        writer.submit(*call(writer, 1, single=True))
        writer.submit(*call(writer, 2))
        assert writer.flush()
        assert store.audit_count() == 6
        assert documents_in_table(store.path) == [(1, 0), (1, 1), (1, 2), (2, 0), (3, 0), (3, 1)]
        writer.submit(*call(writer, 4))
        assert writer.flush()
        assert store.audit_count() == 10
    finally:
        writer.close()


def test_audit_rows_read_back_with_query_ids(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0)
    try:
        manifest, single = call(writer, 2), call(writer, 1, single=True)
        writer.submit(*manifest)
        writer.submit(*single)
        assert writer.flush()
        rows = store.audit_rows()
        first, second = manifest[0].call_uid, single[0].call_uid
        assert [r.query_id for r in rows] == [f"{first}-0", f"{first}-1", second]
        assert {(r.caller_member, r.caller_role, r.peer, r.register_seq) for r in rows} == {
            ("NZL", "border", "peer", 7)
        }
        assert [r.query_id for r in store.audit_rows(limit=2)] == [f"{first}-1", second]
    finally:
        writer.close()


@pytest.mark.parametrize("calls", [1, 2_049, 5_000])
def test_every_row_of_a_large_commit_is_stored_as_given(store: RegisterStore, calls: int) -> None:
    # Rows go in as multi-row INSERTs of 2,048, 1,024, ... 1 rows: counts that need the largest statement, several
    # of them and every smaller size, each value in its column with its type.
    items = []
    for k in range(calls):
        call_id = k + 1
        docs = [
            AuditDocument(call_id, p, "mrz" if p else "typed", "NZL", f"N{call_id}-{p}", "HIT", f"{k},{p}", f"s{p}")
            for p in range(k % 3)
        ]
        items.append((AuditCall(call_id, f"u{k}", utc_now(), "AUS", "border", f"peer{k}", k, len(docs), False), docs))
    assert store.write_audit(items) == (0, calls + 1)
    with sqlite3.connect(store.path) as conn:
        stored_calls = conn.execute("SELECT * FROM audit_calls ORDER BY call_id").fetchall()
        stored_docs = conn.execute("SELECT * FROM audit ORDER BY call_id, position").fetchall()
    assert stored_calls == [tuple(c) for c, _ in items]
    assert stored_docs == [tuple(d) for _, docs in items for d in docs]
    assert all(type(v) is int for row in stored_docs for v in row[:2])


def test_flush_with_nothing_queued_returns_at_once(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0)
    try:
        started = time.monotonic()
        assert writer.flush(timeout=5.0)
        assert time.monotonic() - started < 2.0
        assert store.audit_count() == 0
    finally:
        writer.close()


def test_close_commits_what_is_queued(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0)
    for _ in range(20):
        writer.submit(*call(writer, 5))
    writer.close()
    writer.close()  # a second close is harmless
    assert len(documents_in_table(store.path)) == 100


def test_rows_are_committed_after_the_interval_without_flush(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=0.05)
    try:
        writer.submit(*call(writer, 1))
        wait_for(lambda: store.audit_count() == 1)
        assert store.audit_count() == 1
    finally:
        writer.close()


def test_full_batch_is_committed_before_the_interval(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0, max_batch=10)
    try:
        writer.submit(*call(writer, 10))
        wait_for(lambda: store.audit_count() == 10)
        assert store.audit_count() == 10
    finally:
        writer.close()


def test_call_ids_continue_after_reopening(tmp_path: Path) -> None:
    store = RegisterStore(tmp_path / "register.db")
    writer = AuditWriter(store, interval=30.0)
    writer.submit(*call(writer, 1))
    writer.submit(*call(writer, 1))
    writer.close()
    store.close()
    store = RegisterStore(tmp_path / "register.db")
    writer = AuditWriter(store, interval=30.0)
    try:
        assert store.last_audit_call_id() == 2
        writer.submit(*call(writer, 2))
        assert writer.flush()
        assert documents_in_table(store.path) == [(1, 0), (2, 0), (3, 0), (3, 1)]
    finally:
        writer.close()
        store.close()


def test_two_writers_on_one_database_lose_no_rows(tmp_path: Path) -> None:
    # Two processes on one data directory (e.g. a server and an admin tool): SQLite serialises their
    # commits, and the store itself takes sequence numbers inside its write transaction for this reason.
    first_store, second_store = RegisterStore(tmp_path / "register.db"), RegisterStore(tmp_path / "register.db")
    first, second = AuditWriter(first_store, interval=30.0), AuditWriter(second_store, interval=30.0)
    try:
        first.submit(*call(first, 2))
        second.submit(*call(second, 3))
        assert first.flush(timeout=3.0)
        assert second.flush(timeout=3.0)
        assert first_store.audit_count() == 5
    finally:
        first.close()
        second.close()
        first_store.close()
        second_store.close()


def test_call_ids_are_final_in_commit_order_without_gaps(store: RegisterStore) -> None:
    # Checks provisionally numbered 1, 2, 3 whose rows reach the writer as [2], then [3, 1]: committed ids follow
    # the commit order with no gap, so a reader that saw call N never later finds a new call below N (WatchHits
    # cursors rely on this) and an auditor never sees a hole that looks like lost rows.
    def doc(call_id: int) -> tuple[AuditCall, list[AuditDocument]]:
        d = AuditDocument(call_id, 0, "typed", "NZL", f"LA{call_id}", "HIT", "1")
        return AuditCall(call_id, uuid.uuid4().hex, utc_now(), "NZL", "border", "", 1, 1, True), [d]

    assert store.write_audit([doc(2)]) == (1, 2)  # renumbered to 1
    assert store.write_audit([doc(2), doc(3)]) == (0, 4)  # already in line: inserted as they are
    assert store.write_audit([doc(5), doc(1)]) == (2, 6)  # both out of line: 4 and 5, in commit order
    assert documents_in_table(store.path) == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]
    with sqlite3.connect(store.path) as conn:
        numbers = [n for (n,) in conn.execute("SELECT document_number FROM audit ORDER BY call_id")]
    assert numbers == ["LA2", "LA2", "LA3", "LA5", "LA1"]


def stored_calls(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT call_id, document_number FROM audit ORDER BY call_id, position").fetchall()


def test_calls_submitted_out_of_their_numbering_order_leave_the_numbering_in_line(store: RegisterStore) -> None:
    # Checks answered at once on several threads: numbered 1, 2 and 3, the first two submitted as 2 then 1 and
    # committed while the third is still being answered. The two swap ids; the numbering stays in line, so the
    # third and the next keep theirs (resetting it to the file's next id handed out 3 again, to the fourth, and
    # under load such collisions went on for as long as calls kept coming).
    writer = AuditWriter(store, interval=30.0)
    try:
        first, second, third = call(writer, 1), call(writer, 1), call(writer, 1)
        writer.submit(*second)
        writer.submit(*first)
        assert writer.flush()
        fourth = call(writer, 1)
        writer.submit(*third)
        writer.submit(*fourth)
        assert writer.flush()
        assert stored_calls(store.path) == [(1, "LA002000"), (2, "LA001000"), (3, "LA003000"), (4, "LA004000")]
    finally:
        writer.close()


def test_numbering_realigns_after_another_process_commits_calls(store: RegisterStore) -> None:
    # serve --workers: another process commits call 1 while this one's call 1 is queued and its call 2 is still
    # being answered. This one's calls become 2 and 3; the numbering restarts after them, so the next call is
    # numbered 4 and goes in as it is.
    writer = AuditWriter(store, interval=30.0)
    try:
        first, in_flight = call(writer, 1), call(writer, 1)
        other = AuditCall(1, uuid.uuid4().hex, utc_now(), "AUS", "border", "peer", 7, 1, True)
        assert store.write_audit([(other, [AuditDocument(1, 0, "typed", "AUS", "OTHER", "CLEAR", "")])]) == (0, 2)
        writer.submit(*first)
        assert writer.flush()
        writer.submit(*in_flight)
        later = call(writer, 1)
        writer.submit(*later)
        assert writer.flush()
        assert later[0].call_id == 4
        assert stored_calls(store.path) == [(1, "OTHER"), (2, "LA001000"), (3, "LA002000"), (4, "LA004000")]
    finally:
        writer.close()


def test_a_call_that_can_never_be_written_is_set_aside_and_the_others_committed(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=30.0)
    try:
        first = call(writer, 2)
        bad_call, _ = call(writer, 3)
        # Positions out of order: the packing refuses the call (ValueError), whatever is retried.
        poison = AuditClear(np.array([2, 0, 1]), ["NZL"] * 3, ["A1", "A2", "A3"])
        last = call(writer, 1)
        writer.submit(*first)
        writer.submit(bad_call, [], poison)
        writer.submit(*last)
        assert writer.flush()
        assert store.audit_count() == 3  # both good calls, in the order they came
        assert [
            uid for (uid,) in sqlite3.connect(store.path).execute("SELECT call_uid FROM audit_calls ORDER BY call_id")
        ] == [
            first[0].call_uid,
            last[0].call_uid,
        ]
        [entry] = [json.loads(line) for line in writer.rejected_path.read_text().splitlines()]
        assert entry["call"]["call_uid"] == bad_call.call_uid and entry["error"].startswith("ValueError")
        assert entry["clear"] == {"positions": [2, 0, 1], "states": ["NZL"] * 3, "numbers": ["A1", "A2", "A3"]}
        counts = writer.counts()
        assert counts.rows_pending == 0 and counts.rows_written == 3 and counts.write_failures == 1
        assert counts.calls_set_aside == 1
        writer.submit(*call(writer, 2))  # the writer goes on
        assert writer.flush()
        assert store.audit_count() == 5
    finally:
        writer.close()


def test_a_locked_database_keeps_every_call_for_the_next_attempt(store: RegisterStore) -> None:
    writer = AuditWriter(store, interval=0.05)
    blocker = sqlite3.connect(store.path, timeout=0)
    try:
        writer._conn.execute("PRAGMA busy_timeout = 0")  # fail at once instead of waiting for the lock
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database (as a long upload does)
        writer.submit(*call(writer, 2))
        writer.submit(*call(writer, 1))
        wait_for(lambda: writer.counts().write_failures >= 2)
        assert writer.counts().write_failures >= 2 and store.audit_count() == 0
        blocker.execute("COMMIT")
        assert writer.flush()
        assert store.audit_count() == 3
        assert not writer.rejected_path.exists()  # a locked database is the store's state, never the call's
    finally:
        blocker.close()
        writer.close()
