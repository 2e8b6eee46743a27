"""Certificates for mutual TLS: the federation's CA, server certificates and member certificates.

A member certificate names who is calling in one URI subject alternative name,

    idcheck://member/NZL/role/border

where ``NZL`` is the ICAO state code of the member authority and ``border`` its role (border, member,
operator or mirror). The subject (``CN=NZL border``, ``O=NZL``, ``OU=border``) repeats it for people reading the
certificate; the server trusts only the URI, and only in a certificate signed by the federation's CA.

This module is pure (files and the ``cryptography`` package, no gRPC): the command line uses it to create a
CA and certificates for demonstrations and tests, and the server uses :func:`identity_from_uris` to read
an identity. Keys are ECDSA P-256, written unencrypted with mode 0600.

A TLS directory holds ``ca.pem`` (and ``ca.key`` where the CA lives), ``server.pem``/``server.key`` and one
``<member>-<role>.pem``/``.key`` pair per member certificate; ``client.pem``/``client.key`` is the default
client pair of that directory (the last one issued with ``--default``, or the only one).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

URI_SCHEME = "idcheck"
ROLES = ("border", "member", "operator", "mirror")
CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
CLIENT_CERT, CLIENT_KEY = "client.pem", "client.key"

_IDENTITY_URI = re.compile(r"^idcheck://member/([A-Za-z]{1,3})/role/([a-z]+)$")


class CertificateError(ValueError):
    """A certificate that cannot be made or read as asked (the message says why)."""


@dataclass(frozen=True)
class Identity:
    """Who a member certificate speaks for: an ICAO state code and a role."""

    member: str
    role: str

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}://member/{self.member}/role/{self.role}"


def identity_from_uris(uris: Iterable[str]) -> Identity | None:
    """The identity named by the certificate's URI SANs, or None when there is none (or more than one)."""
    found = {Identity(m.group(1).upper(), m.group(2)) for m in (_IDENTITY_URI.match(u.strip()) for u in uris) if m}
    if len(found) != 1:
        return None
    identity = found.pop()
    return identity if identity.role in ROLES else None


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The identity in a parsed certificate's URI SANs (None for a server or foreign certificate)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return identity_from_uris(san.get_values_for_type(x509.UniformResourceIdentifier))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertificateError(
            f"no CA in {directory} ({exc.filename} missing): run `idcheck certs init-ca` first"
        ) from None
    except ValueError as exc:
        raise CertificateError(f"unreadable CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path}: expected an EC private key")
    return cert, key


def _validity(
    days: float, not_before: datetime.datetime | None, not_after: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    start = not_before or _now() - datetime.timedelta(minutes=5)  # tolerate small clock skew
    end = not_after or start + datetime.timedelta(days=days)
    if end <= start:
        raise CertificateError("a certificate must end after it starts")
    return start, end


def init_ca(
    directory: Path, *, name: str = "idcheck federation CA", days: float = 3650, overwrite: bool = False
) -> Path:
    """Create the federation's CA (ca.pem, ca.key) in `directory`; returns the certificate's path."""
    directory = Path(directory)
    if (directory / CA_CERT).exists() and not overwrite:
        raise CertificateError(f"{directory / CA_CERT} exists; refusing to replace the CA (every certificate would)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days, None, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), private=True)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def _leaf(
    directory: Path,
    subject: x509.Name,
    san: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    stem: str,
    days: float,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> tuple[Path, Path]:
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, not_before, not_after)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_server(
    directory: Path,
    hosts: Sequence[str],
    *,
    stem: str = "server",
    days: float = 825,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """A server certificate for `hosts` (DNS names or IP addresses), signed by the CA in `directory`."""
    if not hosts:
        raise CertificateError("a server certificate needs at least one --host (DNS name or IP address)")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    return _leaf(directory, subject, names, ExtendedKeyUsageOID.SERVER_AUTH, stem, days, not_before, not_after)


def issue_member(
    directory: Path,
    member: str,
    role: str,
    *,
    stem: str | None = None,
    days: float = 365,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """A client certificate for `member` (ICAO state code) acting as `role`, signed by the CA in `directory`.

    Written as ``<member>-<role>.pem``/``.key`` unless `stem` says otherwise; returns (certificate, key)."""
    member = member.strip().upper()
    if not re.fullmatch(r"[A-Z]{1,3}", member):
        raise CertificateError(f"member must be an ICAO state code (1-3 letters), not {member!r}")
    if role not in ROLES:
        raise CertificateError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    identity = Identity(member, role)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, member),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{member} {role}"),
        ]
    )
    return _leaf(
        directory,
        subject,
        [x509.UniformResourceIdentifier(identity.uri)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        stem or f"{member.lower()}-{role}",
        days,
        not_before,
        not_after,
    )


def describe(path: Path) -> str:
    """One line about a certificate file: subject, identity or hosts, validity."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    identity = identity_of(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(v) for v in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        hosts = []
    what = identity.uri if identity else (f"hosts {', '.join(hosts)}" if hosts else cert.subject.rfc4514_string())
    return f"{path}: {what}, valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
