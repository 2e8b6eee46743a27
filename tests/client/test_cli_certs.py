"""`idcheck certs` and the command line over mutual TLS: the README's secure setup, step by step."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from idcheck.client.cli import EXIT_BAD_INPUT, EXIT_HIT, EXIT_OK, EXIT_SERVICE_ERROR, main
from idcheck.security import certs
from tests.conftest import ServerProcess


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    """A CA, a server certificate for loopback and two member certificates, made with the command line."""
    pki = tmp_path / "pki"
    assert main(["certs", "init-ca", str(pki)]) == EXIT_OK
    assert main(["certs", "issue-server", "--host", "127.0.0.1", "--host", "localhost", str(pki)]) == EXIT_OK
    assert main(["certs", "issue", "--member", "nzl", "--role", "member", str(pki)]) == EXIT_OK
    assert main(["certs", "issue", "--member", "FJI", "--role", "border", str(pki)]) == EXIT_OK
    return pki


def test_certs_commands_write_a_ca_server_and_member_certificates(pki_dir: Path) -> None:
    ca = _cert(pki_dir / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("server", "nzl-member", "fji-border"):
        leaf = _cert(pki_dir / f"{name}.pem")
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)  # raises unless signed by the CA
        assert stat.S_IMODE((pki_dir / f"{name}.key").stat().st_mode) == 0o600
    assert certs.identity_of(_cert(pki_dir / "nzl-member.pem")) == certs.Identity("NZL", "member")
    assert certs.identity_of(_cert(pki_dir / "fji-border.pem")) == certs.Identity("FJI", "border")
    assert certs.identity_of(_cert(pki_dir / "server.pem")) is None
    san = _cert(pki_dir / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_certs_refuses_to_replace_a_ca_or_issue_nonsense(
    pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (pki_dir / "ca.pem").read_bytes()
    assert main(["certs", "init-ca", str(pki_dir)]) == EXIT_BAD_INPUT
    assert "refusing to replace" in capsys.readouterr().err
    assert (pki_dir / "ca.pem").read_bytes() == before
    assert main(["certs", "issue", "--member", "NZ1", "--role", "border", str(pki_dir)]) == EXIT_BAD_INPUT
    assert main(["certs", "issue", "--member", "NZL", "--role", "border", str(tmp_path / "no-ca")]) == EXIT_BAD_INPUT
    assert "init-ca" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["certs", "issue", "--member", "NZL", "--role", "admin", str(pki_dir)])


def test_secure_setup_from_the_readme_works_end_to_end(
    pki_dir: Path,
    server_factory: Callable[..., ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_factory("--demo", "--tls-dir", str(pki_dir))
    target = ["--target", server.address]
    # FJI's border certificate, picked by --member/--role in the TLS directory: the specimen passport is a HIT
    check = ["check", *target, "--state", "UTO", "--number", "L898902C3"]
    assert main([*check, "--tls-dir", str(pki_dir), "--member", "FJI", "--role", "border"]) == EXIT_HIT
    # the same through IDCHECK_TLS_DIR, with the certificate named explicitly
    monkeypatch.setenv("IDCHECK_TLS_DIR", str(pki_dir))
    assert main([*check, "--tls-cert", str(pki_dir / "fji-border.pem")]) == EXIT_HIT
    capsys.readouterr()
    # NZL's member certificate uploads and reads back NZL's record; FJI's border certificate may not read it
    csv_file = tmp_path / "nzl.csv"
    csv_file.write_text(
        "issuing_state,document_number,document_class,status,event_date\nNZL,LA123456,passport,stolen,2025-01-15\n"
    )
    assert main(["upload", *target, str(csv_file), "--member", "NZL", "--role", "member"]) == EXIT_OK
    assert main(["get", *target, "--state", "NZL", "--number", "LA123456", "--member", "NZL"]) == EXIT_OK
    capsys.readouterr()
    get_as_border = ["get", *target, "--state", "NZL", "--number", "LA123456", "--member", "FJI", "--role", "border"]
    assert main(get_as_border) == EXIT_SERVICE_ERROR
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    # no certificate for the member/role asked and no client.pem: said plainly, nothing sent
    assert main([*check, "--member", "WSM", "--role", "border"]) == EXIT_BAD_INPUT
    assert "wsm-border.pem or client.pem" in capsys.readouterr().err
    # a plaintext client cannot talk to the TLS server, and is told about certificates
    monkeypatch.delenv("IDCHECK_TLS_DIR")
    assert main(check) == EXIT_SERVICE_ERROR
    assert "cannot reach" in capsys.readouterr().err


def test_certs_command_does_not_import_the_server() -> None:
    code = (
        "import sys; from idcheck.client.cli import main; import tempfile; d = tempfile.mkdtemp(); "
        "assert main(['certs', 'init-ca', d]) == 0; "
        "assert not [m for m in sys.modules if m.startswith(('idcheck.server.app', 'idcheck.server.tls'))], 'server'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
