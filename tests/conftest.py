"""Shared fixtures: real server processes on ephemeral loopback ports with temporary data directories."""

from __future__ import annotations

import atexit
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from idcheck.client.channel import TlsOptions
from idcheck.client.register import RegisterClient
from idcheck.cpus import CLAIMS_ENV
from idcheck.security import certs

SERVING = re.compile(r"serving on (\S+)")

# The servers the tests start claim their CPUs among themselves (idcheck/cpus.py), not among the machine's other
# idcheck servers (a `make run` left running would move them).
os.environ[CLAIMS_ENV] = tempfile.mkdtemp(prefix="idcheck-test-cpus-")
atexit.register(shutil.rmtree, os.environ[CLAIMS_ENV], ignore_errors=True)


@dataclass
class ServerProcess:
    """A running `idcheck serve` process."""

    proc: subprocess.Popen[str]
    address: str
    data_dir: Path
    output: list[str] = field(default_factory=list)

    def client(self, member: str = "UTO", role: str = "member", **kw: object) -> RegisterClient:
        return RegisterClient(self.address, member=member, role=role, **kw)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def log(self) -> str:
        return "".join(self.output)


def serve_settings(data_dir: Path, unset: str) -> list[list[str]]:
    """The settings `idcheck serve` prints before it starts, each line split in words, from a server started with
    the environment variable `unset` removed and an address it cannot listen on (it stops there, exit status 2)."""
    env = {k: v for k, v in os.environ.items() if k != unset}
    done = subprocess.run(
        [sys.executable, "-m", "idcheck.server", "--listen", "bad-address", "--data", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr  # a configuration error: the settings come before it
    return [line.split() for line in done.stdout.splitlines()]


def wait_until(condition: Callable[[], bool], seconds: float = 10.0, step: float = 0.05) -> bool:
    """Poll `condition` until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def start_server(data_dir: Path, *args: str, timeout: float = 60.0, module: str = "idcheck.server") -> ServerProcess:
    """Start `python -m <module>` (the server, or `idcheck.server.mirror`) on 127.0.0.1:0 and wait until it says
    where it serves."""
    cmd = [sys.executable, "-m", module, "--listen", "127.0.0.1:0", "--data", str(data_dir), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("IDCHECK_") or k == CLAIMS_ENV}  # settings: flags only
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = SERVING.search(line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{module} did not start in time:\n" + "".join(output))
    if not found:
        proc.wait(5)
        raise RuntimeError(f"{module} exited with {proc.returncode}:\n" + "".join(output))
    return ServerProcess(proc, found[0], data_dir, output)


# Tables that hold the register's and the gallery's durable state (the audit log is left out: answered checks
# legitimately add to it). Hostile-input tests compare digests before and after a refused call.
DURABLE_TABLES = (
    "records", "changes", "uploads", "template_subjects", "templates", "template_documents", "template_changes",
    "hit_outcomes",
)  # fmt: skip


def store_digest(data_dir: Path) -> str:
    """SHA-256 over every row of the durable tables of the register in `data_dir` (read while it serves)."""
    import hashlib
    import sqlite3

    digest = hashlib.sha256()
    with sqlite3.connect(f"file:{data_dir / 'register.db'}?mode=ro", uri=True) as db:
        present = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in DURABLE_TABLES:
            if table in present:
                digest.update(table.encode())
                for row in sorted(repr(r) for r in db.execute(f"SELECT * FROM {table}")):  # some have no rowid
                    digest.update(row.encode())
    return digest.hexdigest()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers (stopped at the end of the test); call with extra `idcheck serve` arguments."""
    started: list[ServerProcess] = []

    def factory(*args: str, data_dir: Path | None = None) -> ServerProcess:
        server = start_server(data_dir or tmp_path / "data", *args)
        started.append(server)
        return server

    yield factory
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """One server on an empty register."""
    return server_factory()


# --- mutual TLS ------------------------------------------------------------------------------------------

# Member certificates written by the `pki` fixture: (member, role).
PKI_MEMBERS = (
    ("NZL", "member"),
    ("NZL", "border"),
    ("NZL", "operator"),
    ("FJI", "member"),
    ("FJI", "border"),
    ("WSM", "border"),
)


@dataclass(frozen=True)
class Pki:
    """A federation CA with a server certificate and member certificates, plus certificates to be refused."""

    dir: Path
    expired: TlsOptions  # NZL member, signed by our CA, validity ended yesterday
    wrong_ca: TlsOptions  # NZL member, signed by another CA
    no_identity: TlsOptions  # signed by our CA, client auth, subject "NZL member" but no idcheck URI
    server_as_client: TlsOptions  # signed by our CA for server auth only

    def tls(self, member: str, role: str) -> TlsOptions:
        return TlsOptions.from_dir(self.dir, member=member, role=role)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Real certificates generated once per test session (ECDSA P-256, a few milliseconds each)."""
    base = tmp_path_factory.mktemp("pki")
    certs.init_ca(base)
    certs.issue_server(base, ["127.0.0.1", "localhost", "::1"])
    for member, role in PKI_MEMBERS:
        certs.issue_member(base, member, role)
    now = datetime.datetime.now(datetime.UTC)
    certs.issue_member(
        base,
        "NZL",
        "member",
        stem="expired",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    # Signed by our CA but naming no identity: a client certificate whose subject looks like NZL's, without the
    # idcheck URI (the subject must not be trusted), and a server certificate reused as a client one.
    _issue_client_without_identity(base, "no-identity")
    certs.issue_server(base, ["intruder.example"], stem="server-as-client")
    other = tmp_path_factory.mktemp("other-ca")
    certs.init_ca(other, name="not the federation")
    certs.issue_member(other, "NZL", "member", stem="wrong-ca")
    return Pki(
        dir=base,
        expired=TlsOptions(base / "expired.pem", base / "expired.key", base / "ca.pem"),
        wrong_ca=TlsOptions(other / "wrong-ca.pem", other / "wrong-ca.key", base / "ca.pem"),
        no_identity=TlsOptions(base / "no-identity.pem", base / "no-identity.key", base / "ca.pem"),
        server_as_client=TlsOptions(base / "server-as-client.pem", base / "server-as-client.key", base / "ca.pem"),
    )


def _issue_client_without_identity(base: Path, stem: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((base / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((base / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = [("O", NameOID.ORGANIZATION_NAME, "NZL"), ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME, "member")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for _, oid, value in name]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://elsewhere/NZL/member")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (base / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (base / f"{stem}.key").write_bytes(key_pem)


@pytest.fixture
def tls_server(server_factory: Callable[..., ServerProcess], pki: Pki) -> ServerProcess:
    """One server on an empty register, listening with mutual TLS on 127.0.0.1 (certificates from `pki`)."""
    return server_factory("--tls-dir", str(pki.dir))
