"""WatchHits without polling: a caught-up watch is woken by the audit writer's commit, a hit is committed at once
while someone watches, and a cancelled watch lets go of its worker at once.

Each server here is told to re-check only every 10 minutes (`--watch-recheck-seconds 600`): anything a watch
receives within the test's few seconds reached it by notification, not by polling."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import pytest

from idcheck.client.audit import AuditClient, HitWatch
from idcheck.client.operations import OperationsClient
from idcheck.v1 import audit_pb2
from tests.conftest import ServerProcess, wait_until

NEVER = "600"  # seconds: longer than any test here waits


def rec(state: str, number: str) -> dict[str, object]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": 1,
        "status": 2,
        "event_date": "2025-01-15",
    }


def start(server_factory: Callable[..., ServerProcess], *args: str) -> ServerProcess:
    server = server_factory("--watch-recheck-seconds", NEVER, *args)
    with server.client("NZL", "member") as nzl:
        nzl.upload([rec("NZL", "LA000001")], upload_id="n")
    return server


def follow(server: ServerProcess) -> tuple[HitWatch, queue.Queue[audit_pb2.HitNotification]]:
    """An open watch of NZL's hits, pumped into a queue by a thread."""
    got: queue.Queue[audit_pb2.HitNotification] = queue.Queue()
    watch = AuditClient(server.address, member="NZL", role="member").watch_hits(timeout=60)

    def pump() -> None:
        for n in watch:
            got.put(n)

    threading.Thread(target=pump, daemon=True).start()
    return watch, got


def statistics(server: ServerProcess) -> object:
    with OperationsClient(server.address, member="AUS", role="operator") as op:
        return op.statistics()


def test_a_caught_up_watch_is_woken_by_the_commit_of_a_hit(server_factory: Callable[..., ServerProcess]) -> None:
    server = start(server_factory)
    watch, got = follow(server)
    try:
        with server.client("FJI", "border") as fji:
            first = fji.check(state="NZL", number="LA000001").query_id
            assert got.get(timeout=10).query_id == first
            # caught up and asleep again: the next hit wakes it too
            second = fji.check(state="NZL", number="LA000001").query_id
            assert got.get(timeout=10).query_id == second
    finally:
        watch.cancel()


def test_a_hit_is_committed_at_once_while_its_owner_watches(server_factory: Callable[..., ServerProcess]) -> None:
    # Audit rows are otherwise committed only every 10 minutes: a hit reaching the watch was committed early.
    server = start(server_factory, "--audit-interval", NEVER)
    watch, got = follow(server)
    try:
        with server.client("FJI", "border") as fji:
            first = fji.check(state="NZL", number="LA000001").query_id
            assert got.get(timeout=10).query_id == first  # the watch is live
            for _ in range(3):
                fji.check(state="NZL", number="ZZ9")
            stats = statistics(server)  # CLEAR rows wait for the interval, even with a watcher
            assert (stats.audit_rows_pending, stats.audit_rows_written) == (3, 1)
            hit = fji.check(state="NZL", number="LA000001").query_id
            assert got.get(timeout=10).query_id == hit
        stats = statistics(server)
        assert (stats.audit_rows_pending, stats.audit_rows_written) == (0, 5)  # committed with the hit
    finally:
        watch.cancel()


def test_a_cancelled_watch_ends_at_once(server_factory: Callable[..., ServerProcess]) -> None:
    server = start(server_factory)
    watch, _ = follow(server)
    assert wait_until(lambda: statistics(server).rpcs_in_flight == 2)
    watch.cancel()
    # with a 10-minute re-check, only the cancellation's wake-up can end the server's side of the stream
    assert wait_until(lambda: statistics(server).rpcs_in_flight == 1)


@pytest.mark.parametrize("catch_up_only", [True, False])
def test_a_watch_started_after_a_check_sees_it(
    server_factory: Callable[..., ServerProcess], catch_up_only: bool
) -> None:
    server = start(server_factory, "--audit-interval", NEVER)
    with server.client("FJI", "border") as fji:
        hit = fji.check(state="NZL", number="LA000001").query_id
    with (
        AuditClient(server.address, member="NZL", role="member") as a,
        a.watch_hits(follow=not catch_up_only, timeout=20) as watch,
    ):
        assert next(iter(watch)).query_id == hit
