"""Overload shedding (README "Limits and overload"): beyond its work slots and bounded queue the server refuses
at once with RESOURCE_EXHAUSTED and a retry hint, stays healthy, and serves normally after the flood; response
streams cannot starve unary checks; a call whose deadline passes in the queue is not worked on.

The first tests drive `ConcurrencyLimiter` on its own; the others flood real server processes.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idcheck.client.audit import AuditClient, HitWatch
from idcheck.client.errors import ResourceExhausted, from_rpc_error
from idcheck.server.limits import CallExpired, ConcurrencyLimiter, Overloaded
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess, store_digest
from tests.server.test_mirror_e2e import start_mirror

MD = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
NO_RATE_LIMIT = ("--rate-limit-per-second", "0")


# --- the limiter on its own ---------------------------------------------------------------------------


def test_limiter_admits_slots_queues_then_refuses_with_a_retry_hint() -> None:
    limiter = ConcurrencyLimiter(slots=2, queue=1, max_wait=5.0, streams=1)
    first, second = limiter.enter(10), limiter.enter(10)
    admitted: list[float] = []
    waiter = threading.Thread(target=lambda: admitted.append(limiter.enter(10)))
    waiter.start()
    deadline = time.monotonic() + 5
    while limiter.load()[1] != 1:  # the third call waits in the queue
        assert time.monotonic() < deadline
        time.sleep(0.005)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        limiter.enter(10)  # slots and queue full: refused at once, without waiting
    assert time.monotonic() - started < 0.5
    assert ConcurrencyLimiter.MIN_RETRY <= refused.value.retry_after <= ConcurrencyLimiter.MAX_RETRY
    assert refused.value.limit == 2 and limiter.refused == 1
    limiter.leave(first)  # a slot frees: the waiter takes it
    waiter.join(5)
    assert admitted and limiter.load() == (2, 0, 0)
    limiter.leave(second)
    limiter.leave(admitted[0])
    assert limiter.load() == (0, 0, 0)


def test_limiter_does_not_take_up_a_call_whose_deadline_passed() -> None:
    limiter = ConcurrencyLimiter(slots=1, queue=4, max_wait=5.0, streams=1)
    with pytest.raises(CallExpired):
        limiter.enter(0.0)  # already expired: not even a free slot is taken
    held = limiter.enter(10)
    started = time.monotonic()
    with pytest.raises(CallExpired):
        limiter.enter(0.2)  # expires while it waits
    assert 0.15 < time.monotonic() - started < 2
    with pytest.raises(CallExpired):
        limiter.enter(10, still_wanted=lambda: False)  # the caller went away while it waited
    limiter.leave(held)
    assert limiter.load() == (0, 0, 0)


def test_limiter_refuses_a_waiting_call_after_max_wait() -> None:
    limiter = ConcurrencyLimiter(slots=1, queue=4, max_wait=0.2, streams=1)
    held = limiter.enter(10)
    started = time.monotonic()
    with pytest.raises(Overloaded):
        limiter.enter(10)
    assert 0.15 < time.monotonic() - started < 2
    limiter.leave(held)


def test_limiter_streams_have_their_own_cap_and_never_take_work_slots() -> None:
    limiter = ConcurrencyLimiter(slots=1, queue=0, max_wait=1.0, streams=2)
    limiter.open_stream()
    limiter.open_stream()
    with pytest.raises(Overloaded) as refused:
        limiter.open_stream()
    assert refused.value.retry_after == ConcurrencyLimiter.STREAM_RETRY
    limiter.leave(limiter.enter(10))  # a unary call still gets its slot
    limiter.close_stream()
    limiter.open_stream()
    assert limiter.load() == (0, 0, 2)


def test_limiter_check_streams_have_a_cap_apart_from_response_streams_and_end_on_request() -> None:
    limiter = ConcurrencyLimiter(slots=1, queue=0, max_wait=1.0, streams=1, check_streams=2)
    ended: list[str] = []
    ends = {name: (lambda name=name: ended.append(name)) for name in ("a", "b", "c")}
    limiter.open_stream()  # a follower does not count against check streams, nor they against it
    limiter.open_check_stream(ends["a"])
    limiter.open_check_stream(ends["b"])
    with pytest.raises(Overloaded) as refused:
        limiter.open_check_stream(ends["c"])
    assert refused.value.retry_after == ConcurrencyLimiter.STREAM_RETRY and refused.value.limit == 2
    assert limiter.open_check_streams == 2
    limiter.close_check_stream(ends["a"])
    limiter.open_check_stream(ends["c"])
    assert limiter.load() == (0, 0, 1) and limiter.open_check_streams == 2
    assert limiter.end_check_streams() == 2 and sorted(ended) == ["b", "c"]  # the closed one is not ended


def test_retry_hint_grows_with_the_time_calls_hold_their_slot() -> None:
    clock = [100.0]
    limiter = ConcurrencyLimiter(slots=1, queue=0, max_wait=1.0, streams=0, clock=lambda: clock[0])
    for _ in range(50):  # calls that hold their slot for 0.5 s
        admitted = limiter.enter(10)
        clock[0] += 0.5
        limiter.leave(admitted)
    held = limiter.enter(10)
    with pytest.raises(Overloaded) as refused:
        limiter.enter(10)
    assert 0.4 < refused.value.retry_after <= 0.5
    limiter.leave(held)


# --- real servers ---------------------------------------------------------------------------------------


def healthy(channel: grpc.Channel, timeout: float = 5) -> bool:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def seed(server: ServerProcess, n: int) -> None:
    with server.client("NZL", "member") as c:
        records = [
            {"issuing_state": "NZL", "document_number": f"OV{i:07d}", "document_class": 1, "status": 2,
             "event_date": "2025-01-01"}
            for i in range(n)
        ]  # fmt: skip
        assert c.upload(records, upload_id="overload-seed").created == n


def manifest(n: int) -> pb.CheckDocumentsRequest:
    """`n` queries, every tenth for a listed document (a HIT), the others for unlisted ones."""
    return pb.CheckDocumentsRequest(
        queries=[
            pb.DocumentQuery(
                typed=pb.TypedQuery(issuing_state="NZL", document_number=f"OV{i:07d}" if i % 10 == 0 else f"ZZ{i:07d}")
            )
            for i in range(n)
        ]
    )


def assert_manifest_answers(resp: pb.CheckDocumentsResponse, n: int) -> None:
    verdicts = [r.verdict for r in resp.results]
    assert len(verdicts) == n
    assert all(v == pb.VERDICT_HIT for v in verdicts[::10])
    assert sum(v == pb.VERDICT_HIT for v in verdicts) == len(verdicts[::10])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def flood_and_recover(address: str, size: int = 2000) -> None:
    """Flood `address` (2 work slots, 2 waiting places held at most 50 ms) with 24 callers of manifests of `size`
    for 6 s: calls are served or refused at once with OVERLOADED and a retry hint, health answers throughout, and
    everything works as before afterwards."""
    request = manifest(size)
    accepted: list[float] = []
    refused: list[float] = []
    hints: list[float] = []
    unexpected: list[str] = []
    health_latency: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def flood(channel: grpc.Channel) -> None:
        stub = register_pb2_grpc.DocumentRegisterStub(channel)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                resp = stub.CheckDocuments(request, metadata=MD, timeout=30)
            except grpc.RpcError as err:
                took = time.perf_counter() - started
                exc = from_rpc_error(err)
                with lock:
                    if isinstance(exc, ResourceExhausted) and exc.reason == "OVERLOADED" and exc.retry_after:
                        refused.append(took)
                        hints.append(exc.retry_after)
                    else:
                        unexpected.append(f"{exc.code.name} {exc.reason}: {exc.message}")
            else:
                took = time.perf_counter() - started
                assert_manifest_answers(resp, size)
                with lock:
                    accepted.append(took)

    def probe(channel: grpc.Channel) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            assert healthy(channel, timeout=5)
            health_latency.append(time.perf_counter() - started)
            time.sleep(0.1)

    channels = [grpc.insecure_channel(address) for _ in range(4)]
    callers = [threading.Thread(target=flood, args=(channels[i % 4],)) for i in range(24)]
    prober = threading.Thread(target=probe, args=(grpc.insecure_channel(address),))
    for t in (*callers, prober):
        t.start()
    time.sleep(6)
    stop.set()
    for t in (*callers, prober):
        t.join(60)
    if accepted and refused:
        ms = {k: percentile(v, q) * 1000 for k, v, q in
              (("a50", accepted, 0.5), ("a99", accepted, 0.99), ("r50", refused, 0.5), ("r99", refused, 0.99),
               ("h99", health_latency, 0.99))}  # fmt: skip
        print(
            f"\nflood: {len(accepted)} accepted (p50 {ms['a50']:.0f} ms, p99 {ms['a99']:.0f} ms), {len(refused)} "
            f"refused (p50 {ms['r50']:.1f} ms, p99 {ms['r99']:.1f} ms, hints {min(hints) * 1000:.0f}-"
            f"{max(hints) * 1000:.0f} ms), health p99 {ms['h99']:.0f} ms"
        )
    assert not unexpected, unexpected[:5]
    assert accepted, "no call was served during the flood"
    assert refused, "the flood was never shed"
    assert all(0 < h <= ConcurrencyLimiter.MAX_RETRY for h in hints)
    # Refusals come at once (at most the 50 ms queue wait plus scheduling on a shared CPU), not after queueing.
    assert statistics.median(refused) < 0.5 and percentile(refused, 0.9) < 2.0
    assert percentile(accepted, 0.99) < 10.0  # accepted calls do not queue without bound
    assert health_latency and max(health_latency) < 5.0  # health answered throughout
    # After the flood everything works as before.
    with grpc.insecure_channel(address) as channel:
        assert healthy(channel)
        stub = register_pb2_grpc.DocumentRegisterStub(channel)
        assert_manifest_answers(stub.CheckDocuments(request, metadata=MD, timeout=30), size)
        one = pb.CheckDocumentRequest(
            query=pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number="OV0000007"))
        )
        assert stub.CheckDocument(one, metadata=MD, timeout=10).result.verdict == pb.VERDICT_HIT
    for channel in channels:
        channel.close()


SHEDDING = ("--threads", "2", "--queue-calls", "2", "--queue-seconds", "0.05", *NO_RATE_LIMIT)


def test_flood_beyond_capacity_is_shed_quickly_with_retry_hints_and_server_recovers(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # Two work slots, two waiting places held at most 50 ms: a flood of 24 callers is far beyond that.
    server = server_factory(*SHEDDING)
    seed(server, 2000)
    flood_and_recover(server.address)


def test_a_mirror_sheds_a_flood_as_the_register_does(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    upstream = server_factory(*NO_RATE_LIMIT)
    seed(upstream, 2000)
    mirror = start_mirror(upstream.address, tmp_path / "mirror", *SHEDDING)
    try:
        with grpc.insecure_channel(mirror.address) as channel:  # caught up with the upstream's 2,000 records
            stub = register_pb2_grpc.DocumentRegisterStub(channel)
            deadline = time.monotonic() + 30
            while len(stub.CheckDocuments(manifest(2000), metadata=MD, timeout=10).results) != 2000 or (
                stub.CheckDocuments(manifest(2000), metadata=MD, timeout=10).hits != 200
            ):
                assert time.monotonic() < deadline, "the mirror did not catch up"
                time.sleep(0.2)
            while not healthy(channel):  # and says so
                assert time.monotonic() < deadline, "the mirror did not turn SERVING:\n" + "".join(mirror.output)
                time.sleep(0.2)
        flood_and_recover(mirror.address)
    finally:
        mirror.stop()


def test_streams_cannot_starve_checks_and_are_capped_with_a_retry_hint(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--threads", "1", "--max-streams", "2", *NO_RATE_LIMIT)
    with AuditClient(server.address, member="NZL", role="member") as audit, server.client("NZL", "border") as border:
        watches = [audit.watch_hits(timeout=60) for _ in range(2)]
        notified = [threading.Event() for _ in watches]

        def follow(watch: HitWatch, first: threading.Event) -> None:  # as a member's follower would
            for _ in watch:
                first.set()

        for w, e in zip(watches, notified, strict=True):
            threading.Thread(target=follow, args=(w, e), daemon=True).start()
        # A hit on NZL's record reaches both followers: then both streams are open.
        with server.client("NZL", "member") as owner:
            owner.upload(
                [{"issuing_state": "NZL", "document_number": "W1", "document_class": 1, "status": 2,
                  "event_date": "2025-01-01"}]
            )  # fmt: skip
        assert border.check(state="NZL", number="W1").verdict == "HIT"
        assert all(e.wait(20) for e in notified), "the followers never saw the hit"
        refused: ResourceExhausted | None = None
        try:
            list(audit.watch_hits(follow=False, timeout=5))
        except ResourceExhausted as exc:
            refused = exc
        assert refused is not None and refused.reason == "OVERLOADED"
        assert refused.retry_after == pytest.approx(ConcurrencyLimiter.STREAM_RETRY)
        # Two streams are open and the server has a single work slot: checks are still served.
        for i in range(20):
            assert border.check(state="NZL", number=f"S{i}", timeout=5).verdict == "CLEAR"
        watches[0].cancel()
        deadline = time.monotonic() + 10
        while True:  # the cancelled stream gives its place back
            try:
                assert len(list(audit.watch_hits(follow=False, timeout=5))) == 1  # the hit above
                break
            except ResourceExhausted:
                assert time.monotonic() < deadline, "a cancelled stream never gave its place back"
                time.sleep(0.05)
        watches[1].cancel()


def holding_upload(
    upload_id: str, started: threading.Event, release: threading.Event
) -> Iterator[pb.UploadRecordsRequest]:
    yield pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id=upload_id, mode=pb.UPLOAD_MODE_INCREMENTAL))
    yield pb.UploadRecordsRequest(
        batch=pb.RecordBatch(
            records=[
                pb.Record(
                    key=pb.DocumentKey(issuing_state="NZL", document_number=upload_id.upper(), document_class=1),
                    status=2,
                    event_date="2025-01-01",
                )
            ]
        )
    )
    started.set()
    release.wait(30)
    yield pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=1))


def test_queued_upload_whose_deadline_passes_is_not_applied_and_a_long_wait_is_refused(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--threads", "1", "--queue-seconds", "0.3", *NO_RATE_LIMIT)
    with grpc.insecure_channel(server.address) as channel:
        stub = register_pb2_grpc.DocumentRegisterStub(channel)
        started, release = threading.Event(), threading.Event()
        holder = stub.UploadRecords.future(holding_upload("holder1", started, release), metadata=MD, timeout=60)
        assert started.wait(20)
        time.sleep(0.2)
        # Waits for the only slot; its deadline (0.2 s) ends before the queue wait (0.3 s): never worked on.
        never = threading.Event()
        never.set()
        with pytest.raises(grpc.RpcError) as expired:
            stub.UploadRecords(holding_upload("late1", threading.Event(), never), metadata=MD, timeout=0.2)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A check with a generous deadline waits at most the queue wait, then is refused with a hint.
        check = pb.CheckDocumentRequest(
            query=pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number="HOLDER1"))
        )
        begun = time.perf_counter()
        with pytest.raises(grpc.RpcError) as shed:
            stub.CheckDocument(check, metadata=MD, timeout=30)
        waited = time.perf_counter() - begun
        exc = from_rpc_error(shed.value)
        assert isinstance(exc, ResourceExhausted) and exc.reason == "OVERLOADED" and exc.retry_after
        assert 0.25 < waited < 5
        release.set()
        assert holder.result(timeout=20).created == 1
        assert stub.CheckDocument(check, metadata=MD, timeout=10).result.verdict == pb.VERDICT_HIT
        late = pb.GetRecordRequest(key=pb.DocumentKey(issuing_state="NZL", document_number="LATE1", document_class=1))
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetRecord(late, metadata=MD, timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert healthy(channel)


def test_endless_upload_stream_is_cut_at_the_row_limit_and_changes_nothing(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-rows-per-upload", "5000", *NO_RATE_LIMIT)
    before = store_digest(server.data_dir)
    pulled = [0]

    def endless() -> Iterator[pb.UploadRecordsRequest]:
        yield pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id="endless", mode=pb.UPLOAD_MODE_INCREMENTAL))
        n = 0
        while True:
            batch = [
                pb.Record(
                    key=pb.DocumentKey(issuing_state="NZL", document_number=f"E{n + k:08d}", document_class=1),
                    status=2,
                    event_date="2025-01-01",
                )
                for k in range(1000)
            ]
            n += 1000
            pulled[0] += 1
            yield pb.UploadRecordsRequest(batch=pb.RecordBatch(records=batch))

    with grpc.insecure_channel(server.address) as channel:
        stub = register_pb2_grpc.DocumentRegisterStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadRecords(endless(), metadata=MD, timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert from_rpc_error(err.value).reason == "LIMIT_EXCEEDED"
        assert pulled[0] < 100  # the server stopped reading: the client was not drained without bound
        assert store_digest(server.data_dir) == before
        assert healthy(channel)
