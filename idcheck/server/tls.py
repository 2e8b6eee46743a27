"""Mutual TLS for the server: credentials from the federation's CA, and the caller's identity from its certificate.

The server presents its certificate and requires a client certificate signed by the CA
(``require_client_auth=True``), so a caller without one, with an expired one or with one from another CA
never completes the handshake. The member code and role are then read from the certificate's URI subject
alternative name, ``idcheck://member/NZL/role/border`` (see :mod:`idcheck.security.certs`); request
metadata is not consulted.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from idcheck.security.certs import CA_CERT, SERVER_CERT, SERVER_KEY, Identity, identity_from_uris
from idcheck.server.auth import Unauthenticated
from idcheck.server.config import ConfigError

# Keys grpc puts in ServicerContext.auth_context() for the peer's certificate.
SAN_KEY = "x509_subject_alternative_name"
PEM_KEY = "x509_pem_cert"


@dataclass(frozen=True)
class TlsFiles:
    """The three files the server needs: its certificate and key, and the CA that signs client certificates."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def resolve(cls, tls_dir: Path | None, cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
        """The files named by the settings (explicit paths win over `tls_dir`), or None when TLS is off.

        Raises ConfigError when TLS is half-configured or a file is missing."""
        if tls_dir is None and cert is None and key is None and ca is None:
            return None
        base = Path(tls_dir) if tls_dir is not None else None
        chosen = {
            "tls_cert": cert or (base / SERVER_CERT if base else None),
            "tls_key": key or (base / SERVER_KEY if base else None),
            "tls_ca": ca or (base / CA_CERT if base else None),
        }
        missing = [name for name, path in chosen.items() if path is None]
        if missing:
            raise ConfigError(f"TLS needs tls_cert, tls_key and tls_ca (or tls_dir); missing {', '.join(missing)}")
        for name, path in chosen.items():
            if not Path(str(path)).is_file():
                raise ConfigError(f"{name}: no such file {path}")
        return cls(Path(str(chosen["tls_cert"])), Path(str(chosen["tls_key"])), Path(str(chosen["tls_ca"])))

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate signed by the CA."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )


def _text(values: Sequence[bytes | str]) -> tuple[str, ...]:
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values)


@functools.lru_cache(maxsize=4096)
def _identity_of_sans(sans: tuple[str, ...]) -> Identity | None:
    return identity_from_uris(sans)


_pem_identities: dict[str, Identity | None] = {}


def _identity_of_pem(pem: bytes) -> Identity | None:
    # Only reached when grpc does not list the SANs; parsed once per certificate (SHA-256 fingerprint).
    fingerprint = hashlib.sha256(pem).hexdigest()
    if fingerprint not in _pem_identities:
        from cryptography import x509

        from idcheck.security.certs import identity_of

        if len(_pem_identities) >= 4096:
            _pem_identities.clear()
        _pem_identities[fingerprint] = identity_of(x509.load_pem_x509_certificate(pem))
    return _pem_identities[fingerprint]


def peer_identity(auth: Mapping[str, Sequence[bytes | str]]) -> Identity | None:
    """The identity in a peer's (already verified) client certificate, given the call's auth context."""
    sans = auth.get(SAN_KEY)
    if sans:
        return _identity_of_sans(_text(sans))
    pems = auth.get(PEM_KEY)
    if pems:
        return _identity_of_pem(pems[0] if isinstance(pems[0], bytes) else str(pems[0]).encode())
    return None


def certificate_identity(context: grpc.ServicerContext) -> tuple[str, str]:
    """(member, role) of the caller from its client certificate; request metadata is ignored.

    Raises Unauthenticated when the certificate (signed by our CA, or the handshake would have failed) names
    no idcheck identity, e.g. a server certificate used as a client certificate."""
    identity = peer_identity(context.auth_context() or {})
    if identity is None:
        raise Unauthenticated("the client certificate names no idcheck member and role")
    return identity.member, identity.role
