"""End to end: the WatchChanges feed over gRPC (roles, snapshot, changes, heartbeats) and a mirror over mutual TLS."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idcheck.client.channel import open_channel
from idcheck.client.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from idcheck.client.mirror import ReplicationClient
from idcheck.client.register import RegisterClient
from idcheck.register.replication import decode_table
from idcheck.security import certs
from tests.conftest import Pki, ServerProcess
from tests.server.test_mirror_e2e import rec, start_mirror, wait_until


def mirror_certificate(pki: Pki, member: str = "NZL") -> None:
    """A mirror-role certificate in the session's PKI (issued once)."""
    if not (pki.dir / f"{member.lower()}-mirror.pem").exists():
        certs.issue_member(pki.dir, member, "mirror")


def first_message(client: ReplicationClient, from_sequence: int = 0) -> object:
    with client.watch_changes(from_sequence, timeout=20) as feed:
        return next(iter(feed))


def test_only_mirror_and_operator_roles_may_watch_changes(tls_server: ServerProcess, pki: Pki) -> None:
    mirror_certificate(pki)
    with RegisterClient(tls_server.address, tls=pki.tls("NZL", "member")) as nzl:
        nzl.upload([rec("NZL", "RP000001", surname="SECRETNAME")], upload_id="r1")
    for role in ("border", "member"):
        with ReplicationClient(tls_server.address, tls=pki.tls("NZL", role)) as client:
            with pytest.raises(PermissionDenied) as err:
                first_message(client)
            assert err.value.reason == "ROLE_DENIED" and "SECRETNAME" not in err.value.message
    for role in ("mirror", "operator"):
        with ReplicationClient(tls_server.address, tls=pki.tls("NZL", role)) as client:
            message = first_message(client)
        assert message.WhichOneof("item") == "snapshot"  # type: ignore[attr-defined]
        snapshot = message.snapshot  # type: ignore[attr-defined]
        assert snapshot.last and snapshot.sequence == 1 and snapshot.total_rows == 1
        assert decode_table(snapshot.records).column("surname").to_pylist() == ["SECRETNAME"]


def test_the_feed_sends_a_snapshot_then_live_changes_then_heartbeats(server: ServerProcess) -> None:
    with server.client("NZL", "member") as nzl:
        nzl.upload([rec("NZL", f"FD{i:06d}") for i in range(3)], upload_id="f1")
        with ReplicationClient(server.address, member="NZL", role="mirror") as client:
            with pytest.raises(InvalidArgument) as err:
                first_message(client, 99)
            assert err.value.violations[0][0] == "from_sequence"
            with client.watch_changes(0, heartbeat=0.2, timeout=30) as feed:
                stream = iter(feed)
                snapshot = next(stream)
                assert snapshot.WhichOneof("item") == "snapshot" and snapshot.snapshot.rows == 3
                beat = next(stream)
                assert beat.WhichOneof("item") == "heartbeat" and beat.heartbeat.sequence == 3
                nzl.cancel([("NZL", "FD000001")], reason="found")
                committed = time.monotonic()
                changes = next(m for m in stream if m.WhichOneof("item") == "changes").changes
                assert time.monotonic() - committed < 5
                assert (changes.rows, changes.resume_sequence, changes.through_sequence) == (1, 4, 4)
                table = decode_table(changes.records)
                assert table.column("number_canonical").to_pylist() == ["FD000001"]
                assert table.column("status").to_pylist() == [6]  # CANCELLED
            # a subscriber that holds sequence 3 gets only the change after it, no snapshot
            with client.watch_changes(3, timeout=30) as feed:
                assert next(iter(feed)).WhichOneof("item") == "changes"


def test_a_mirror_follows_over_mutual_tls_and_serves_with_its_own_certificate(
    tls_server: ServerProcess, pki: Pki, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    mirror_certificate(pki)
    with RegisterClient(tls_server.address, tls=pki.tls("NZL", "member")) as nzl:
        nzl.upload([rec("NZL", "TLSM00001")], upload_id="t1")
    common = ("--tls-dir", str(pki.dir), "--upstream-tls-dir", str(pki.dir), "--max-staleness", "5")
    mirror = start_mirror(tls_server.address, tmp_path / "mirror", *common, "--upstream-member", "NZL")
    try:
        with RegisterClient(mirror.address, tls=pki.tls("WSM", "border")) as border:
            assert wait_until(lambda: border.check(state="NZL", number="TLSM00001").verdict == "HIT", 30), mirror.log
            assert border.check(state="NZL", number="TLSM00001").upstream_contact_time
        with ReplicationClient(mirror.address, tls=pki.tls("NZL", "mirror")) as client:
            with pytest.raises(FailedPrecondition) as err:  # a mirror does not feed others
                first_message(client)
            assert tls_server.address in err.value.message
    finally:
        mirror.stop()
    # with a border certificate instead of a mirror one the upstream refuses the feed: the mirror never serves
    wrong = ("--upstream-cert", str(pki.dir / "nzl-border.pem"))
    refused = start_mirror(tls_server.address, tmp_path / "refused", *common, *wrong)
    try:
        assert wait_until(lambda: "PERMISSION_DENIED" in refused.log, 20), refused.log
        with open_channel(refused.address, tls=pki.tls("WSM", "border")) as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        refused.stop()


def test_replication_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """Smoke run of bench/replication.py on a tiny register: it measures what it says (correctness only)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "replication.json"
    bench = Path(__file__).resolve().parents[2] / "bench" / "replication.py"
    args = ["--records", "3000", "--lag-seconds", "1", "--upload-batch", "50", "--out", str(out)]
    subprocess.run([sys.executable, str(bench), *args], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["build"]["records"] == 3000 and result["build"]["sequence"] == 3000
    assert "3000 records at sequence 3000" in result["catch_up"]["snapshot_log"]
    run = result["lag_runs"][0]
    assert run["uploads"] > 0 and run["not_seen"] == 0 and run["lag"]["count"] == run["uploads"]
