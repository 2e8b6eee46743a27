"""The one place clients open gRPC channels: plaintext on loopback (development) or mutual TLS.

    channel = open_channel("register.example:50051", tls=TlsOptions.from_dir("pki", member="NZL", role="border"))

With TLS the client presents a certificate signed by the federation's CA and checks the server's against
the same CA; the server takes the caller's member and role from that certificate (see README "Secure setup").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc

from idcheck.client.errors import from_rpc_error

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
CA_CERT, CLIENT_CERT, CLIENT_KEY = "ca.pem", "client.pem", "client.key"


class TlsConfigError(ValueError):
    """The TLS files asked for cannot be used (the message names the missing file)."""


@dataclass(frozen=True)
class TlsOptions:
    """Client certificate, its key, and the CA certificate that signs the server's certificate.

    `server_name` overrides the name checked against the server certificate (default: the target's host)."""

    cert: Path
    key: Path
    ca: Path
    server_name: str | None = None

    @classmethod
    def from_dir(
        cls,
        directory: str | os.PathLike[str],
        *,
        member: str | None = None,
        role: str | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        ca: str | os.PathLike[str] | None = None,
    ) -> TlsOptions:
        """The files of a TLS directory (as written by `idcheck certs`).

        The client certificate is `cert`/`key` when given, else `<member>-<role>.pem`/`.key` when `member` and
        `role` are given and that file exists, else `client.pem`/`client.key`. The CA is `ca` or `ca.pem`."""
        base = Path(directory)
        if cert is not None:
            cert_path = Path(cert)
            key_path = Path(key) if key is not None else cert_path.with_suffix(".key")
        else:
            stem = f"{member.strip().lower()}-{role.strip().lower()}" if member and role else None
            if stem and (base / f"{stem}.pem").exists():
                cert_path, key_path = base / f"{stem}.pem", base / f"{stem}.key"
            else:
                cert_path, key_path = base / CLIENT_CERT, base / CLIENT_KEY
                if not cert_path.exists():
                    wanted = f"{stem}.pem or {CLIENT_CERT}" if stem else CLIENT_CERT
                    raise TlsConfigError(f"no client certificate in {base}: expected {wanted}")
        return cls(cert_path, key_path, Path(ca) if ca is not None else base / CA_CERT)

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes(),
                private_key=self.key.read_bytes(),
                certificate_chain=self.cert.read_bytes(),
            )
        except FileNotFoundError as exc:
            raise TlsConfigError(f"TLS file not found: {exc.filename}") from None


TlsLike = TlsOptions | str | os.PathLike[str] | None


def as_tls_options(tls: TlsLike) -> TlsOptions | None:
    """A TlsOptions from options, a TLS directory path (its client.pem), or None for plaintext."""
    if tls is None or isinstance(tls, TlsOptions):
        return tls
    return TlsOptions.from_dir(tls)


# Reads are retried by grpc itself when the server is UNAVAILABLE (a connection reset while a worker process
# restarts, a server coming up): a border check should not fail on what a second attempt 50 ms later answers.
# Writes are not retried here: an upload is re-sent under its upload id by the caller, which makes it safe.
_RETRIED_READS = [
    {"service": "idcheck.v1.DocumentRegister", "method": m} for m in ("CheckDocument", "CheckDocuments", "GetRecord")
] + [{"service": "idcheck.v1.Biometrics", "method": m} for m in ("Verify", "Identify")]
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _RETRIED_READS,
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(target: str, *, tls: TlsLike = None) -> grpc.Channel:
    """A channel to `target`: mutual TLS when `tls` is given, plaintext otherwise (loopback servers only)."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
    ]
    tls_options = as_tls_options(tls)
    if tls_options is None:
        return grpc.insecure_channel(target, options=options)
    if tls_options.server_name:
        options.append(("grpc.ssl_target_name_override", tls_options.server_name))
    return grpc.secure_channel(target, tls_options.credentials(), options=options)


DEFAULT_TARGET = "127.0.0.1:50051"


class ServiceClient:
    """What every idcheck service client shares: the channel, the caller's development identity, deadlines,
    and errors turned into `idcheck.client.errors.IdcheckError` subclasses.

    A subclass names its generated stub class in `stub_class` and may change `default_timeout`."""

    stub_class: Callable[[grpc.Channel], Any]
    default_timeout: float = 10.0

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        member: str | None = None,
        role: str | None = None,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        tls: TlsLike = None,
    ) -> None:
        """`tls`: TlsOptions or a TLS directory (its client.pem) for mutual TLS; the server then takes the
        identity from the certificate and ignores `member`/`role`. Without it the channel is plaintext."""
        self.target = target
        self.timeout = self.default_timeout if timeout is None else timeout
        self._own_channel = channel is None
        self._channel = channel or open_channel(target, tls=tls)
        self._stub = self.stub_class(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = tuple(
            (k, v) for k, v in (("x-idcheck-member", member), ("x-idcheck-role", role)) if v
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None


Message = TypeVar("Message")


class StreamWatch(Generic[Message]):
    """An open server stream (WatchHits, WatchChanges): iterate it for messages; `cancel()` (from any thread)
    ends it and the iteration then stops quietly. Other failures raise `IdcheckError` subclasses."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> Iterator[Message]:
        try:
            yield from self._call
        except grpc.RpcError as err:
            if not self._cancelled:
                raise from_rpc_error(err) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()
