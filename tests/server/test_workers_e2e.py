"""`idcheck serve --workers 2`: two processes on one port, one store; every worker sees every commit."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.client.bench import Backends, Connection, Endpoints, settle
from idcheck.client.biometrics import BiometricsClient
from idcheck.client.cli import _describe_stats
from idcheck.client.errors import ResourceExhausted
from idcheck.client.register import RegisterClient
from idcheck.v1 import operations_pb2, operations_pb2_grpc
from tests.conftest import ServerProcess

FRESH_CONNECTIONS = 24  # each a new TCP connection, spread by the kernel across the workers
OPERATOR = (("x-idcheck-member", "AUS"), ("x-idcheck-role", "operator"))


def rec(number: str, status: int = 2) -> dict[str, object]:
    return {"issuing_state": "NZL", "document_number": number, "document_class": 1, "status": status,
            "event_date": "2025-01-15"}  # fmt: skip


def verdicts_on_fresh_connections(address: str, number: str) -> set[str]:
    seen = set()
    for _ in range(FRESH_CONNECTIONS):
        with RegisterClient(address, member="AUS", role="border") as c:
            seen.add(c.check(state="NZL", number=number).verdict)
    return seen


def workers(server: ServerProcess) -> list[int]:
    pid = server.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_two_workers_share_the_port_and_every_commit(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--workers", "2")
    assert wait_for(lambda: "worker 1/2: serving on" in server.log and "worker 2/2: serving on" in server.log)
    assert len(workers(server)) == 2

    # A write through one worker is seen by the next check, whichever worker answers it.
    with server.client(member="NZL") as nzl:
        nzl.upload([rec(f"W{i:06d}") for i in range(200)], upload_id="first")
    assert verdicts_on_fresh_connections(server.address, "W000007") == {"HIT"}
    with server.client(member="NZL") as nzl:
        nzl.cancel([("NZL", "W000007")], "recovered")
    assert verdicts_on_fresh_connections(server.address, "W000007") == {"CLEAR"}

    # Check streams held open across a write see it too, whichever worker each is on.
    clients = [RegisterClient(server.address, member="AUS", role="border") for _ in range(6)]
    gates = [c.check_stream() for c in clients]
    try:
        assert {g.check(state="NZL", number="STREAM1").verdict for g in gates} == {"CLEAR"}
        with server.client(member="NZL") as nzl:
            nzl.upload([rec("STREAM1")], upload_id="streamed")
        assert {g.check(state="NZL", number="STREAM1").verdict for g in gates} == {"HIT"}
    finally:
        for g, c in zip(gates, clients, strict=True):
            g.close()
            c.close()

    # Templates too: enrolled through one connection, found by identify on every other.
    gen = FaceGenerator(seed=11)
    gallery = gen.gallery(5, 1, seed=1)
    probes = gen.probes(np.arange(5), seed=2)
    with BiometricsClient(server.address, member="NZL", role="member") as bio:
        bio.enrol([{"subject_id": f"S{i}", "vector": gallery.vectors[i]} for i in range(5)])
    for _ in range(FRESH_CONNECTIONS // 2):
        with BiometricsClient(server.address, member="AUS", role="border") as border:
            assert border.identify(probes.vectors[3], max_candidates=1).candidates[0].subject_id == "S3"

    # A worker that dies is started again; the other serves meanwhile.
    victim = workers(server)[1]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.5)  # connections already queued at the dead worker are reset: clients would retry those
    assert verdicts_on_fresh_connections(server.address, "W000008") == {"HIT"}
    assert wait_for(lambda: "starting it again" in server.log and len(workers(server)) == 2), server.log
    assert victim not in workers(server)
    assert wait_for(lambda: server.log.count("serving on") == 3), server.log
    with server.client(member="NZL") as nzl:
        nzl.upload([rec("AFTER01")], upload_id="after-restart")
    assert verdicts_on_fresh_connections(server.address, "AFTER01") == {"HIT"}

    # SIGTERM stops every worker gracefully.
    children = workers(server)
    assert server.stop(signal.SIGTERM) == 0
    assert "all workers stopped" in server.log
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_each_worker_names_itself_in_its_statistics(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--workers", "2")
    assert wait_for(lambda: "worker 1/2: serving on" in server.log and "worker 2/2: serving on" in server.log)
    conn = Connection(server.address, None, "AUS", "operator")
    seen = set()
    for _ in range(FRESH_CONNECTIONS):
        with conn.channel(own_connection=True) as channel:
            stats = operations_pb2_grpc.OperationsStub(channel).GetStatistics(
                operations_pb2.GetStatisticsRequest(), metadata=conn.metadata, timeout=10
            )
        seen.add((stats.worker, stats.worker_processes))
    assert seen == {(1, 2), (2, 2)}
    assert "worker" in _describe_stats(stats).splitlines()[1]
    with conn.channel() as channel:
        assert settle(conn, channel, timeout=60) is not None  # both workers heard, both idle


def test_bench_callers_connections_are_spread_over_the_workers(server_factory: Callable[..., ServerProcess]) -> None:
    # The kernel hands connections to workers at random; `idcheck bench` places caller k's on worker k mod 2 + 1.
    server = server_factory("--workers", "2")
    assert wait_for(lambda: "worker 1/2: serving on" in server.log and "worker 2/2: serving on" in server.log)
    conn = Connection(server.address, None, "AUS", "border")
    backends = Backends(Endpoints(conn), None)  # type: ignore[arg-type]  # no workload: connections only
    try:
        for k in range(6):
            stub = operations_pb2_grpc.OperationsStub(backends._channel(k))
            for _ in range(3):  # every call on a caller's connection reaches its worker
                stats = stub.GetStatistics(operations_pb2.GetStatisticsRequest(), metadata=OPERATOR, timeout=10)
                assert stats.worker == k % 2 + 1

        async def streams_workers() -> list[int]:  # the stream scenarios' grpc.aio connections, placed alike
            seen = []
            for k in range(4):
                channel = await backends._placed_aio(k)
                stats = await operations_pb2_grpc.OperationsStub(channel).GetStatistics(
                    operations_pb2.GetStatisticsRequest(), metadata=OPERATOR, timeout=10
                )
                seen.append(stats.worker)
                await channel.close()
            return seen

        assert asyncio.run(streams_workers()) == [1, 2, 1, 2]
    finally:
        backends.close()


def test_workers_stop_when_the_supervisor_is_killed(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--workers", "2")
    assert wait_for(lambda: "worker 1/2: serving on" in server.log and "worker 2/2: serving on" in server.log)
    children = workers(server)
    server.stop(signal.SIGKILL)
    # No orphans holding the port and the store: the kernel tells each worker its supervisor died.
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=30)


def test_a_members_rate_limit_is_shared_by_the_workers(server_factory: Callable[..., ServerProcess]) -> None:
    # Six requests at once, then one every five seconds, for the member whatever worker answers it.
    server = server_factory("--workers", "2", "--rate-limit-per-second", "0.2", "--rate-limit-burst", "6")
    admitted = refused = 0
    started = time.monotonic()
    for _ in range(FRESH_CONNECTIONS):  # fresh connections: the kernel spreads them over both workers
        with RegisterClient(server.address, member="FJI", role="border") as c:
            try:
                c.check(state="NZL", number="X1")
                admitted += 1
            except ResourceExhausted as exc:
                assert exc.reason == "RATE_LIMITED" and exc.retry_after
                refused += 1
    refilled = int((time.monotonic() - started) * 0.2) + 1
    assert 6 <= admitted <= 6 + refilled, admitted  # per-worker buckets would have let up to 12 through
    assert admitted + refused == FRESH_CONNECTIONS
    with RegisterClient(server.address, member="WSM", role="border") as other:
        assert other.check(state="NZL", number="X1").verdict == "CLEAR"  # another member has its own bucket
