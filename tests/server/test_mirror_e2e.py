"""End to end: `idcheck mirror` processes following a real upstream server over loopback."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idcheck.client.biometrics import BiometricsClient
from idcheck.client.errors import FailedPrecondition, PermissionDenied
from idcheck.client.register import CheckAnswer
from idcheck.store import RegisterStore
from idcheck.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)
from tests.conftest import ServerProcess, start_server, wait_until

STOLEN, LOST, REVOKED = 2, 1, 4
SPECIMEN_MRZ = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10"


def start_mirror(upstream: str, data_dir: Path, *args: str, timeout: float = 60.0) -> ServerProcess:
    """Start `python -m idcheck.server.mirror` on 127.0.0.1:0 following `upstream`; wait until it serves."""
    reconnect = ("--reconnect-initial", "0.2", "--reconnect-max", "1")
    return start_server(
        data_dir, "--upstream", upstream, *reconnect, *args, timeout=timeout, module="idcheck.server.mirror"
    )


@pytest.fixture
def mirror_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start mirrors (stopped at the end of the test): `factory(upstream_address, *args, data_dir=...)`."""
    started: list[ServerProcess] = []

    def factory(upstream: str, *args: str, data_dir: Path | None = None) -> ServerProcess:
        mirror = start_mirror(upstream, data_dir or tmp_path / "mirror", *args)
        started.append(mirror)
        return mirror

    yield factory
    for m in started:
        m.stop()


def rec(state: str, number: str, status: int = STOLEN, **extra: str) -> dict[str, object]:
    return {"issuing_state": state, "document_number": number, "document_class": 1, "status": status,
            "event_date": "2025-01-15", **extra}  # fmt: skip


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def probe(server: ServerProcess) -> CheckAnswer:
    with server.client("AUS", "border") as c:
        return c.check(state="UTO", number="PROBE0001")


def upstream_sequence(server: ServerProcess) -> int:
    return probe(server).register_sequence


def caught_up(mirror: ServerProcess, upstream: ServerProcess, seconds: float = 30.0) -> bool:
    target = upstream_sequence(upstream)
    return wait_until(lambda: probe(mirror).register_sequence >= target, seconds)


def comparable(answers: list[CheckAnswer]) -> list[CheckAnswer]:
    """The answers without what differs per call (query id) or says who answered (mirror freshness)."""
    return [dataclasses.replace(a, query_id="", upstream_contact_time="") for a in answers]


def digest(data_dir: Path) -> tuple[int, str]:
    store = RegisterStore(data_dir / "register.db")
    try:
        return store.content_digest()
    finally:
        store.close()


QUERIES: list[dict[str, object]] = [
    {"state": "NZL", "number": "LA0000001"},  # HIT
    {"state": "NZL", "number": "LA000000I"},  # OCR variant: POSSIBLE_MATCH
    {"state": "", "number": "LA0000002"},  # state missing
    {"state": "FJI", "number": "LA0000003"},  # state mismatch
    {"state": "NZL", "number": "LA0000004"},  # cancelled: CLEAR
    {"state": "NZL", "number": "LA0000005"},  # updated to REVOKED
    {"state": "FJI", "number": "FJ0000001"},
    {"state": "WSM", "number": "NOTLISTED1"},
    {"mrz": SPECIMEN_MRZ},
]


def seed(up: ServerProcess) -> None:
    with up.client("NZL", "member") as nzl, up.client("UTO", "member") as uto:
        nzl.upload([rec("NZL", f"LA{i:07d}", surname="SMITH", instructions="Call NCB Wellington") for i in range(40)],
                   upload_id="n1")  # fmt: skip
        nzl.upload([rec("NZL", "LA0000005", REVOKED)], upload_id="n2")
        nzl.cancel([("NZL", "LA0000004")], reason="found")
        uto.upload([rec("UTO", "L898902C3")], upload_id="u1")
    with up.client("FJI", "member") as fji:
        fji.upload([rec("FJI", f"FJ{i:07d}", LOST) for i in range(10)], upload_id="f1")


def test_mirror_answers_checks_exactly_as_the_upstream_at_the_same_sequence(
    server_factory: Callable[..., ServerProcess], mirror_factory: Callable[..., ServerProcess]
) -> None:
    up = server_factory()
    seed(up)
    mirror = mirror_factory(up.address, "--max-staleness", "10")
    assert caught_up(mirror, up), mirror.log
    with up.client("AUS", "border") as a, mirror.client("AUS", "border") as b:
        theirs, ours = list(a.check_many(QUERIES)), list(b.check_many(QUERIES))
        assert comparable(ours) == comparable(theirs)
        assert {x.verdict for x in ours} == {"HIT", "POSSIBLE_MATCH", "CLEAR"}
        assert ours[0].register_sequence == theirs[0].register_sequence > 0
        assert all(x.upstream_contact_time for x in ours) and not any(x.upstream_contact_time for x in theirs)
        single = [b.check(state="NZL", number="LA0000001"), a.check(state="NZL", number="LA0000001")]
        assert comparable(single[:1]) == comparable(single[1:])
        with b.check_stream() as stream:  # a check stream too, with the mirror's freshness on every answer
            streamed = [stream.check(**q) for q in QUERIES]  # type: ignore[arg-type]
        assert comparable(streamed) == comparable(theirs) and all(x.upstream_contact_time for x in streamed)
        manifests = [b.check_manifest(QUERIES), a.check_manifest(QUERIES)]  # the columnar manifest too
        assert manifests[0].verdict_codes == manifests[1].verdict_codes
        assert comparable(list(manifests[0].details.values())) == comparable(list(manifests[1].details.values()))
        assert manifests[0].upstream_contact_time and not manifests[1].upstream_contact_time
        # a change on the upstream reaches the mirror within seconds, and the answers agree again
        committed = time.monotonic()
        with up.client("NZL", "member") as nzl:
            nzl.cancel([("NZL", "LA0000001")], reason="recovered")
        assert wait_until(lambda: b.check(state="NZL", number="LA0000001").verdict == "CLEAR", 20)
        lag = time.monotonic() - committed
        assert lag < 20
        assert comparable(list(b.check_many(QUERIES))) == comparable(list(a.check_many(QUERIES)))
    assert wait_until(lambda: health_status(mirror.address) == health_pb2.HealthCheckResponse.SERVING, 5), mirror.log


def test_writes_and_other_rpcs_sent_to_a_mirror_are_refused_naming_the_upstream(
    server_factory: Callable[..., ServerProcess], mirror_factory: Callable[..., ServerProcess]
) -> None:
    up = server_factory()
    seed(up)
    mirror = mirror_factory(up.address)
    assert caught_up(mirror, up)
    with mirror.client("NZL", "member") as nzl:
        refusals = []
        for attempt in (
            lambda: nzl.upload([rec("NZL", "NEW0001")], upload_id="m1"),
            lambda: nzl.cancel([("NZL", "LA0000002")], reason="found"),
            lambda: nzl.get("NZL", "LA0000002"),
            lambda: BiometricsClient(mirror.address, member="NZL", role="member").remove(subject_ids=["S1"]),
        ):
            with pytest.raises(FailedPrecondition) as err:
                attempt()
            refusals.append(err.value)
        assert all(up.address in e.message and "read-only mirror" in e.message for e in refusals)
        assert all(e.reason == "READ_ONLY_MIRROR" for e in refusals)
    with mirror.client("AUS", "border") as border, pytest.raises(PermissionDenied):
        border.upload([rec("AUS", "NEW0002")], upload_id="b1")  # the role is checked first, as upstream does
    assert digest(mirror.data_dir) == digest(up.data_dir)  # nothing changed
    with up.client("NZL", "member") as nzl:
        assert nzl.get("NZL", "LA0000002").record.holder.surname == "SMITH"  # the upstream answers them


def test_streaming_rpcs_of_services_a_mirror_does_not_serve_are_refused_too(
    server_factory: Callable[..., ServerProcess], mirror_factory: Callable[..., ServerProcess]
) -> None:
    """The services a mirror does not register at all (the audit log's hit watch, the change feed, statistics)
    still reach its read-only refusal after authentication, whatever their streaming kind; a method of no service
    is UNIMPLEMENTED, and the mirror goes on answering checks."""
    up = server_factory()
    seed(up)
    mirror = mirror_factory(up.address)
    assert caught_up(mirror, up)

    def metadata(role: str) -> tuple[tuple[str, str], ...]:
        return (("x-idcheck-member", "NZL"), ("x-idcheck-role", role))

    with grpc.insecure_channel(mirror.address) as channel:
        attempts = [
            lambda: list(
                audit_pb2_grpc.AuditLogStub(channel).WatchHits(
                    audit_pb2.WatchHitsRequest(), metadata=metadata("member"), timeout=10
                )
            ),
            lambda: list(
                replication_pb2_grpc.ReplicationStub(channel).WatchChanges(
                    replication_pb2.WatchChangesRequest(), metadata=metadata("operator"), timeout=10
                )
            ),
            lambda: operations_pb2_grpc.OperationsStub(channel).GetStatistics(
                operations_pb2.GetStatisticsRequest(), metadata=metadata("operator"), timeout=10
            ),
        ]
        for attempt in attempts:
            with pytest.raises(grpc.RpcError) as refused:
                attempt()
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
            assert up.address in (refused.value.details() or "")
        with pytest.raises(grpc.RpcError) as denied:  # authenticated and role-checked first
            list(
                replication_pb2_grpc.ReplicationStub(channel).WatchChanges(
                    replication_pb2.WatchChangesRequest(), metadata=metadata("border"), timeout=10
                )
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary("/idcheck.v1.Nothing/Nothing")(b"", metadata=metadata("member"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with mirror.client("NZL", "border") as nzl:
        assert nzl.check(state="NZL", number="LA0000002").verdict == "HIT"


def test_mirror_goes_on_answering_when_the_upstream_stops_and_reports_its_staleness(
    server_factory: Callable[..., ServerProcess], mirror_factory: Callable[..., ServerProcess]
) -> None:
    up = server_factory()
    seed(up)
    mirror = mirror_factory(up.address, "--max-staleness", "2")
    assert caught_up(mirror, up)
    assert wait_until(lambda: health_status(mirror.address) == health_pb2.HealthCheckResponse.SERVING, 10)
    with mirror.client("AUS", "border") as b:
        before = list(b.check_many(QUERIES))
        stopping = time.monotonic()
        up.stop()
        assert wait_until(lambda: health_status(mirror.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 15)
        # not before the bound: 2 s from the last contact, which heartbeats kept within 0.5 s of the stop
        assert time.monotonic() - stopping >= 1.0
        after = list(b.check_many(QUERIES))
    assert comparable(after) == comparable(before)  # still answering, from what it holds
    contact = after[0].upstream_contact_time
    assert contact >= before[0].upstream_contact_time
    time.sleep(0.5)
    with mirror.client("AUS", "border") as b:
        assert b.check(state="NZL", number="LA0000001").upstream_contact_time == contact  # no contact since
    assert re.search(r"mirror NOT_SERVING: last contact with upstream \S+ [\d.]+s ago .*bound 2s", mirror.log)


def test_changes_made_while_the_mirror_was_down_or_cut_off_arrive_and_both_registers_end_equal(
    tmp_path: Path, server_factory: Callable[..., ServerProcess], mirror_factory: Callable[..., ServerProcess]
) -> None:
    up = server_factory()
    seed(up)
    mirror = mirror_factory(up.address, "--max-staleness", "5")
    assert caught_up(mirror, up)
    # 1. the mirror is down while the upstream changes; restarted, it resumes from its stored position
    mirror.stop()
    with up.client("NZL", "member") as nzl:
        nzl.upload([rec("NZL", f"DOWN{i:05d}") for i in range(25)], upload_id="while-down")
        nzl.cancel([("NZL", "LA0000010"), ("NZL", "LA0000011")], reason="found")
    mirror = mirror_factory(up.address, "--max-staleness", "5", data_dir=mirror.data_dir)
    assert caught_up(mirror, up), mirror.log
    assert "receiving a snapshot" not in mirror.log  # resumed with the changes, no snapshot
    # 2. the link is lost (upstream stopped); changes made meanwhile arrive after it comes back on the same port
    port = up.address.rsplit(":", 1)[1]
    up.stop()
    assert wait_until(lambda: "link to upstream" in mirror.log and "lost" in mirror.log, 15)
    with RegisterStoreWriter(up.data_dir) as offline:
        offline_changes = offline.upload_and_cancel()
    up = server_factory("--listen", f"127.0.0.1:{port}", data_dir=up.data_dir)
    with up.client("FJI", "member") as fji:
        fji.upload([rec("FJI", f"BACK{i:05d}", LOST) for i in range(5)], upload_id="after")
    assert caught_up(mirror, up, 45), mirror.log
    assert offline_changes > 0
    with up.client("AUS", "border") as a, mirror.client("AUS", "border") as b:
        queries = [*QUERIES, {"state": "NZL", "number": "DOWN00003"}, {"state": "NZL", "number": "OFFLINE001"}]
        assert comparable(list(b.check_many(queries))) == comparable(list(a.check_many(queries)))
    up.stop()
    mirror.stop()
    assert digest(mirror.data_dir) == digest(up.data_dir)
    assert digest(up.data_dir)[0] == 40 - 1 + 1 + 10 + 25 - 2 + 1 - 1 + 5


class RegisterStoreWriter:
    """Changes to a stopped upstream's register, made with the core directly (as an operator's tool would)."""

    def __init__(self, data_dir: Path) -> None:
        from idcheck.register import Register

        self.register = Register.open(data_dir)

    def __enter__(self) -> RegisterStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.register.close()

    def upload_and_cancel(self) -> int:
        from idcheck.register import Caller, RawRecord
        from idcheck.uploads import UploadMode

        nzl = Caller("NZL", "member", "test")
        session = self.register.begin_upload(nzl, "offline", UploadMode.INCREMENTAL, "offline")
        session.add([RawRecord("NZL", "OFFLINE001", 1, 2, "2025-01-01")])
        session.commit()
        self.register.cancel(nzl, [("NZL", "LA0000012", 1)], "found")
        return self.register.store.last_sequence


def test_a_new_mirror_of_a_register_larger_than_the_change_window_takes_the_snapshot_path(
    server_factory: Callable[..., ServerProcess], mirror_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    up = server_factory("--replication-window", "20")
    seed(up)
    mirror = mirror_factory(up.address)
    assert caught_up(mirror, up)
    assert re.search(r"receiving a snapshot of 50 records at sequence \d+", mirror.log), mirror.log
    # a few changes later (within the window) a restarted mirror gets only the changes
    mirror.stop()
    with up.client("NZL", "member") as nzl:
        nzl.upload([rec("NZL", f"NEW{i:04d}") for i in range(5)], upload_id="n3")
    mirror = mirror_factory(up.address, data_dir=mirror.data_dir)
    assert caught_up(mirror, up)
    assert "receiving a snapshot" not in mirror.log
    # far behind (more than the window): a snapshot again, which also drops what was cancelled meanwhile
    mirror.stop()
    with up.client("NZL", "member") as nzl:
        nzl.cancel([("NZL", f"LA{i:07d}") for i in range(20, 40)], reason="batch recovered")
        nzl.upload([rec("NZL", f"LATE{i:04d}") for i in range(5)], upload_id="n4")
    mirror = mirror_factory(up.address, data_dir=mirror.data_dir)
    assert caught_up(mirror, up)
    assert "receiving a snapshot" in mirror.log and "(20 dropped)" in mirror.log
    up.stop()
    mirror.stop()
    assert digest(mirror.data_dir) == digest(up.data_dir)


def test_mirror_refuses_to_start_in_a_data_directory_holding_a_register_of_its_own(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    up = server_factory()
    seed(up)
    up.stop()
    with pytest.raises(RuntimeError, match="holds a register of its own"):
        start_mirror("127.0.0.1:1", up.data_dir)


def test_reconnect_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    from idcheck.server.mirror import Follower, MirrorConfig

    config = MirrorConfig(upstream="127.0.0.1:1", reconnect_initial=0.5, reconnect_max=8.0)
    follower = Follower.__new__(Follower)  # only the delay rule, no replica or thread
    follower.config = config
    for attempt, ceiling in enumerate([0.5, 1, 2, 4, 8, 8, 8]):
        delays = [follower.backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, so mirrors cut off together do not return together


def test_mirror_settings_come_from_flags_then_environment_then_the_toml_file(tmp_path: Path) -> None:
    import argparse

    from idcheck.server.config import ConfigError
    from idcheck.server.mirror import add_mirror_arguments, load_mirror

    toml = tmp_path / "mirror.toml"
    toml.write_text('[server]\nlisten = "127.0.0.1:0"\n[mirror]\nupstream = "a:1"\nmax_staleness = 9\n')
    parser = argparse.ArgumentParser()
    add_mirror_arguments(parser)
    assert load_mirror(parser.parse_args(["--config", str(toml)]), env={}).max_staleness == 9
    env = {"IDCHECK_UPSTREAM": "b:2", "IDCHECK_MAX_STALENESS": "7"}
    from_env = load_mirror(parser.parse_args(["--config", str(toml)]), env=env)
    assert (from_env.upstream, from_env.max_staleness) == ("b:2", 7)
    flags = load_mirror(parser.parse_args(["--config", str(toml), "--upstream", "c:3"]), env=env)
    assert (flags.upstream, flags.max_staleness) == ("c:3", 7)
    with pytest.raises(ConfigError, match="upstream register is required"):
        load_mirror(parser.parse_args([]), env={})
    toml.write_text('[mirror]\nupstream = "a:1"\nstaleness = 3\n')
    with pytest.raises(ConfigError, match="unknown mirror setting"):
        load_mirror(parser.parse_args([]), env={"IDCHECK_CONFIG": str(toml)})


class FreezableProxy:
    """A TCP relay to the upstream that can stop passing bytes while keeping every connection open: a link that
    has died without either end noticing (no FIN, no RST), as a satellite or radio link does."""

    def __init__(self, target: str) -> None:
        import socket

        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._sockets: list[object] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.02)  # hold the bytes, keep the connection
                dst.sendall(data)
        except OSError:
            pass
        finally:
            src.close()  # closing a closed socket does nothing
            dst.close()

    def close(self) -> None:
        self.frozen.clear()
        for s in self._sockets:
            s.close()  # type: ignore[attr-defined]


def test_a_link_that_goes_silent_is_dropped_and_reestablished(
    server_factory: Callable[..., ServerProcess], mirror_factory: Callable[..., ServerProcess]
) -> None:
    up = server_factory()
    seed(up)
    proxy = FreezableProxy(up.address)
    try:
        mirror = mirror_factory(proxy.address, "--max-staleness", "2")  # heartbeats every 0.5 s
        assert caught_up(mirror, up)
        proxy.frozen.set()
        with up.client("NZL", "member") as nzl:
            nzl.upload([rec("NZL", "SILENT0001")], upload_id="silent")
        assert wait_until(lambda: health_status(mirror.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 15)
        assert wait_until(lambda: "no message from upstream" in mirror.log, 15), mirror.log
        with mirror.client("AUS", "border") as b:
            assert b.check(state="NZL", number="SILENT0001").verdict == "CLEAR"  # not arrived, still answering
            proxy.frozen.clear()
            assert wait_until(lambda: b.check(state="NZL", number="SILENT0001").verdict == "HIT", 30), mirror.log
        assert wait_until(lambda: health_status(mirror.address) == health_pb2.HealthCheckResponse.SERVING, 10)
    finally:
        proxy.close()
