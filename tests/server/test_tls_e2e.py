"""End to end over mutual TLS: identity from client certificates, the role/RPC matrix, refused certificates."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idcheck.client.audit import AuditClient
from idcheck.client.biometrics import BiometricsClient
from idcheck.client.channel import TlsOptions, open_channel
from idcheck.client.errors import PermissionDenied, Unauthenticated, Unavailable
from idcheck.client.mirror import ReplicationClient
from idcheck.client.operations import OperationsClient
from idcheck.client.register import RegisterClient
from idcheck.security import certs
from idcheck.server.config import ConfigError
from idcheck.server.tls import TlsFiles, peer_identity
from idcheck.v1 import audit_pb2, biometrics_pb2, operations_pb2, register_pb2, replication_pb2
from tests.conftest import Pki, ServerProcess

STOLEN, LOST = 2, 1
ROLES = ("border", "member", "operator", "mirror")


def rec(state: str, number: str, status: int = STOLEN, **extra: str) -> dict[str, object]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": 1,
        "status": status,
        "event_date": "2025-01-15",
        **extra,
    }


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


def healthy(address: str, tls: TlsOptions) -> bool:
    with open_channel(address, tls=tls) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return resp.status == health_pb2.HealthCheckResponse.SERVING


def reg(server: ServerProcess, pki: Pki, cert_member: str, cert_role: str, **kw: Any) -> RegisterClient:
    return RegisterClient(server.address, tls=pki.tls(cert_member, cert_role), **kw)


def bio(server: ServerProcess, pki: Pki, cert_member: str, cert_role: str, **kw: Any) -> BiometricsClient:
    return BiometricsClient(server.address, tls=pki.tls(cert_member, cert_role), **kw)


# Who may call what, written out here (not read from the server's table) so that a wrong table fails the test.
# The calls run in this order; within an RPC the refused roles go first, so a refused call that changed
# anything would make the member's call after it fail.
MATRIX: dict[str, set[str]] = {
    "/idcheck.v1.DocumentRegister/UploadRecords": {"member"},
    "/idcheck.v1.DocumentRegister/CheckDocument": {"border", "member"},
    "/idcheck.v1.DocumentRegister/CheckDocumentStream": {"border", "member"},
    "/idcheck.v1.DocumentRegister/CheckDocuments": {"border", "member"},
    "/idcheck.v1.DocumentRegister/CheckManifest": {"border", "member"},
    "/idcheck.v1.DocumentRegister/GetRecord": {"member"},
    "/idcheck.v1.DocumentRegister/CancelRecords": {"member"},
    "/idcheck.v1.AuditLog/ListAudit": {"operator", "member"},
    "/idcheck.v1.AuditLog/WatchHits": {"member"},
    "/idcheck.v1.AuditLog/ConfirmHit": {"member"},
    "/idcheck.v1.AuditLog/GetHitOutcome": {"border", "member"},
    "/idcheck.v1.Biometrics/EnrolTemplates": {"member"},
    "/idcheck.v1.Biometrics/Verify": {"border", "member"},
    "/idcheck.v1.Biometrics/Identify": {"border", "member"},
    "/idcheck.v1.Biometrics/RemoveTemplates": {"member"},
    "/idcheck.v1.Operations/GetStatistics": {"operator"},
    "/idcheck.v1.Replication/WatchChanges": {"mirror", "operator"},
}


# The query id of a hit on NZL's record, found by the member's WatchHits call and used by the calls after it.
_HIT: dict[str, str] = {}


def _calls(role: str) -> dict[str, Callable[[RegisterClient, BiometricsClient], None]]:
    """One real call per RPC as NZL in `role`, asserting its answer when it is allowed."""
    number, subject = "TLS000001", "NZL-TLS-1"

    def upload(r: RegisterClient, b: BiometricsClient) -> None:
        assert r.upload([rec("NZL", number, surname="SECRETNAME")], upload_id=f"matrix-{role}").created == 1

    def check(r: RegisterClient, b: BiometricsClient) -> None:
        assert r.check(state="NZL", number=number).verdict == "HIT"

    def check_stream(r: RegisterClient, b: BiometricsClient) -> None:
        with r.check_stream() as stream:
            assert [stream.check(state="NZL", number=n).verdict for n in (number, "ZZ1")] == ["HIT", "CLEAR"]

    def check_many(r: RegisterClient, b: BiometricsClient) -> None:
        answers = list(r.check_many([{"state": "NZL", "number": number}, {"state": "NZL", "number": "ZZ1"}]))
        assert [a.verdict for a in answers] == ["HIT", "CLEAR"]

    def check_manifest(r: RegisterClient, b: BiometricsClient) -> None:
        answer = r.check_manifest([{"state": "NZL", "number": number}, {"state": "NZL", "number": "ZZ1"}])
        assert [answer.verdict(i) for i in range(len(answer))] == ["HIT", "CLEAR"]

    def get(r: RegisterClient, b: BiometricsClient) -> None:
        assert r.get("NZL", number).record.holder.surname == "SECRETNAME"

    def cancel(r: RegisterClient, b: BiometricsClient) -> None:
        assert r.cancel([("NZL", number)], reason="found").cancelled == 1

    def audit(r: RegisterClient, b: BiometricsClient) -> None:
        # the member sees the checks that hit its record; the operator sees those and the CLEAR ones too
        entries = list(AuditClient(r.target, channel=r._channel).entries("2000-01-01"))
        assert any(e.document_number == number and e.verdict == "HIT" for e in entries)
        assert (role == "operator") == any(e.verdict == "CLEAR" for e in entries)

    def watch_hits(r: RegisterClient, b: BiometricsClient) -> None:
        with AuditClient(r.target, channel=r._channel).watch_hits(follow=False) as watch:
            hits = [h for h in watch if h.document_number == number and h.verdict == "HIT"]
        assert hits
        _HIT["query_id"] = hits[0].query_id

    def confirm_hit(r: RegisterClient, b: BiometricsClient) -> None:
        outcome = AuditClient(r.target, channel=r._channel).confirm_hit(_HIT.get("query_id", "none"), "CONFIRMED")
        assert outcome.outcome == "CONFIRMED"

    def hit_outcome(r: RegisterClient, b: BiometricsClient) -> None:
        assert AuditClient(r.target, channel=r._channel).hit_outcome(_HIT["query_id"]).outcome == "CONFIRMED"

    def enrol(r: RegisterClient, b: BiometricsClient) -> None:
        assert b.enrol([{"subject_id": subject, "vector": vector(1)}]).subjects_created == 1

    def verify(r: RegisterClient, b: BiometricsClient) -> None:
        assert b.verify(vector(1), subject_id=subject).decision == "MATCH"

    def identify(r: RegisterClient, b: BiometricsClient) -> None:
        assert [c.subject_id for c in b.identify(vector(1)).candidates] == [subject]

    def remove(r: RegisterClient, b: BiometricsClient) -> None:
        assert b.remove(subject_ids=[subject]).removed == 1

    def watch_changes(r: RegisterClient, b: BiometricsClient) -> None:
        # the whole register from the start: a snapshot (the one record is cancelled by now: no active rows)
        with ReplicationClient(r.target, channel=r._channel).watch_changes(0, timeout=10) as feed:
            first = next(iter(feed))
        assert first.WhichOneof("item") == "snapshot" and first.snapshot.last and first.snapshot.sequence >= 2

    def statistics(r: RegisterClient, b: BiometricsClient) -> None:
        stats = OperationsClient(r.target, channel=r._channel).statistics()
        # the one record, cancelled; one verify each by border and member
        assert stats.records_by_status["CANCELLED"] == 1 and stats.calls_by_kind["verify"] == 2

    return {
        "/idcheck.v1.DocumentRegister/UploadRecords": upload,
        "/idcheck.v1.DocumentRegister/CheckDocument": check,
        "/idcheck.v1.DocumentRegister/CheckDocumentStream": check_stream,
        "/idcheck.v1.DocumentRegister/CheckDocuments": check_many,
        "/idcheck.v1.DocumentRegister/CheckManifest": check_manifest,
        "/idcheck.v1.DocumentRegister/GetRecord": get,
        "/idcheck.v1.DocumentRegister/CancelRecords": cancel,
        "/idcheck.v1.AuditLog/ListAudit": audit,
        "/idcheck.v1.AuditLog/WatchHits": watch_hits,
        "/idcheck.v1.AuditLog/ConfirmHit": confirm_hit,
        "/idcheck.v1.AuditLog/GetHitOutcome": hit_outcome,
        "/idcheck.v1.Biometrics/EnrolTemplates": enrol,
        "/idcheck.v1.Biometrics/Verify": verify,
        "/idcheck.v1.Biometrics/Identify": identify,
        "/idcheck.v1.Biometrics/RemoveTemplates": remove,
        "/idcheck.v1.Operations/GetStatistics": statistics,
        "/idcheck.v1.Replication/WatchChanges": watch_changes,
    }


def test_matrix_covers_every_rpc_of_every_service() -> None:
    rpcs = {
        f"/{service.full_name}/{method.name}"
        for service in (
            register_pb2.DESCRIPTOR.services_by_name["DocumentRegister"],
            biometrics_pb2.DESCRIPTOR.services_by_name["Biometrics"],
            audit_pb2.DESCRIPTOR.services_by_name["AuditLog"],
            operations_pb2.DESCRIPTOR.services_by_name["Operations"],
            replication_pb2.DESCRIPTOR.services_by_name["Replication"],
        )
        for method in service.methods
    }
    assert set(MATRIX) == rpcs


def test_every_role_against_every_rpc_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    if not (pki.dir / "nzl-mirror.pem").exists():
        certs.issue_member(pki.dir, "NZL", "mirror")
    clients = {role: (reg(tls_server, pki, "NZL", role), bio(tls_server, pki, "NZL", role)) for role in ROLES}
    outcomes: dict[tuple[str, str], str] = {}
    try:
        for rpc, allowed in MATRIX.items():
            for role in sorted(ROLES, key=lambda r: r in allowed):  # refused roles first
                r, b = clients[role]
                try:
                    _calls(role)[rpc](r, b)
                    outcomes[rpc, role] = "OK"
                except PermissionDenied as err:
                    assert err.reason == "ROLE_DENIED"
                    # no data in the refusal: neither the record, the holder nor the subject
                    assert not {"TLS000001", "SECRETNAME", "NZL-TLS-1"} & set(err.message.split())
                    outcomes[rpc, role] = "PERMISSION_DENIED"
    finally:
        for r, b in clients.values():
            r.close()
            b.close()
    expected = {(rpc, role): "OK" if role in allowed else "PERMISSION_DENIED" for rpc, allowed in MATRIX.items()
                for role in ROLES}  # fmt: skip
    assert outcomes == expected
    assert healthy(tls_server.address, pki.tls("NZL", "operator"))  # health stays open to every role


def test_member_cannot_cancel_replace_or_read_another_members_records(tls_server: ServerProcess, pki: Pki) -> None:
    with reg(tls_server, pki, "NZL", "member") as nzl, reg(tls_server, pki, "FJI", "member") as fji:
        nzl.upload([rec("NZL", "LA123456", surname="SMITH", instructions="Call NCB Wellington")], upload_id="n1")
        fji.upload([rec("FJI", "F1234567")], upload_id="f1")
        with pytest.raises(PermissionDenied) as cancel_err:
            fji.cancel([("NZL", "LA123456")], reason="not mine")
        with pytest.raises(PermissionDenied) as get_err:
            fji.get("NZL", "LA123456")
        for err in (cancel_err.value, get_err.value):
            assert err.reason == "NOT_OWNER"
            assert "SMITH" not in err.message and "Wellington" not in err.message and "NZL" not in err.message
        # replacing NZL's record by uploading its key is refused row by row; replace-all leaves it alone
        replaced = fji.upload([rec("NZL", "LA123456", LOST)], upload_id="f2")
        assert replaced.rejected == 1 and replaced.created == 0
        fji.upload([rec("FJI", "F7654321")], upload_id="f3", mode="replace-all")
        view = nzl.get("NZL", "LA123456")
        assert len(view.history) == 1 and view.record.status == STOLEN
        assert nzl.check(state="NZL", number="LA123456").verdict == "HIT"


def test_metadata_identity_is_ignored_with_tls(tls_server: ServerProcess, pki: Pki) -> None:
    with reg(tls_server, pki, "NZL", "member") as nzl:
        nzl.upload([rec("NZL", "LA123456")], upload_id="n1")
    # A border certificate claiming member rights in metadata stays a border caller.
    with reg(tls_server, pki, "FJI", "border", member="FJI", role="member") as claims_member:
        with pytest.raises(PermissionDenied) as err:
            claims_member.upload([rec("FJI", "F1234567")], upload_id="x")
        assert err.value.reason == "ROLE_DENIED"
        assert claims_member.check(state="NZL", number="LA123456").verdict == "HIT"  # what border may do
    # FJI's member certificate claiming to be NZL in metadata stays FJI.
    with reg(tls_server, pki, "FJI", "member", member="NZL", role="member") as claims_nzl:
        with pytest.raises(PermissionDenied) as err:
            claims_nzl.cancel([("NZL", "LA123456")])
        assert err.value.reason == "NOT_OWNER"
    # An operator certificate claiming border rights cannot check.
    with (
        reg(tls_server, pki, "NZL", "operator", member="NZL", role="border") as operator,
        pytest.raises(PermissionDenied),
    ):
        operator.check(state="NZL", number="LA123456")


@pytest.mark.parametrize("which", ["expired", "wrong_ca", "no_client_certificate", "plaintext"])
def test_refused_client_certificates_fail_the_handshake(tls_server: ServerProcess, pki: Pki, which: str) -> None:
    if which == "plaintext":
        client = RegisterClient(tls_server.address, member="NZL", role="member", timeout=5)
    elif which == "no_client_certificate":
        creds = grpc.ssl_channel_credentials(root_certificates=(pki.dir / "ca.pem").read_bytes())
        client = RegisterClient(tls_server.address, channel=grpc.secure_channel(tls_server.address, creds), timeout=5)
    else:
        client = RegisterClient(tls_server.address, tls=getattr(pki, which), timeout=5)
    with client, pytest.raises(Unavailable):
        client.check(state="NZL", number="LA123456")
    assert tls_server.proc.poll() is None
    assert healthy(tls_server.address, pki.tls("WSM", "border"))
    with reg(tls_server, pki, "WSM", "border") as good:
        assert good.check(state="NZL", number="LA123456").verdict == "CLEAR"


def test_certificate_without_identity_is_unauthenticated(tls_server: ServerProcess, pki: Pki) -> None:
    # Signed by our CA, subject O=NZL OU=member, metadata claiming NZL member: still nobody without the URI.
    with (
        RegisterClient(tls_server.address, tls=pki.no_identity, member="NZL", role="member") as client,
        pytest.raises(Unauthenticated) as err,
    ):
        client.check(state="NZL", number="LA123456")
    assert err.value.reason == "NO_IDENTITY"
    # A server certificate of our CA is not a client certificate: refused at the handshake.
    with (
        RegisterClient(tls_server.address, tls=pki.server_as_client, timeout=5) as client,
        pytest.raises(Unavailable),
    ):
        client.check(state="NZL", number="LA123456")
    assert healthy(tls_server.address, pki.tls("WSM", "border"))


def test_tls_server_may_listen_beyond_loopback(server_factory: Callable[..., ServerProcess], pki: Pki) -> None:
    server = server_factory("--listen", "0.0.0.0:0", "--tls-dir", str(pki.dir))
    assert "mutual TLS" in server.log
    port = server.address.rsplit(":", 1)[1]
    assert healthy(f"127.0.0.1:{port}", pki.tls("NZL", "border"))


def test_plaintext_server_warns_and_refuses_anything_but_loopback(server: ServerProcess, tmp_path: Path) -> None:
    assert "WITHOUT TLS" in server.log and "insecure, loopback only" in server.log
    proc = subprocess.run(
        [sys.executable, "-m", "idcheck.server", "--listen", "0.0.0.0:0", "--data", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in proc.stderr and "TLS" in proc.stderr
    assert not (tmp_path / "d" / "register.db").exists()


def test_half_configured_or_missing_tls_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_key"):
        TlsFiles.resolve(None, pki.dir / "server.pem", None, pki.dir / "ca.pem")
    with pytest.raises(ConfigError, match="no such file"):
        TlsFiles.resolve(tmp_path, None, None, None)
    files = TlsFiles.resolve(pki.dir, None, None, None)
    assert files is not None and files.ca == pki.dir / "ca.pem"
    assert TlsFiles.resolve(None, None, None, None) is None


def test_identity_is_read_from_the_certificate_when_grpc_lists_no_sans(pki: Pki) -> None:
    pem = (pki.dir / "fji-border.pem").read_bytes()
    assert peer_identity({"x509_pem_cert": [pem]}) == certs.Identity("FJI", "border")
    assert peer_identity({"x509_subject_alternative_name": [b"idcheck://member/NZL/role/member"]}) == (
        certs.Identity("NZL", "member")
    )
    server_pem = (pki.dir / "server.pem").read_bytes()
    assert peer_identity({"x509_pem_cert": [server_pem]}) is None
    # two identities in one certificate, or an unknown role, name nobody
    assert certs.identity_from_uris(["idcheck://member/NZL/role/member", "idcheck://member/FJI/role/member"]) is None
    assert certs.identity_from_uris(["idcheck://member/NZL/role/admin"]) is None
