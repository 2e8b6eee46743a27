"""`idcheck mirror`: an on-site, read-only copy of the register that follows the upstream's change feed.

The mirror keeps its own durable register (a normal register database written only by the feed, with its
position in the upstream's feed) and answers CheckDocument, CheckDocuments and CheckManifest from it, exactly
as the upstream would at the same sequence, with health and reflection. When the link drops it goes on answering
from what it holds; every answer says how fresh it is (`register_sequence` and `upstream_contact_time`), and its health
turns NOT_SERVING once the last contact with the upstream is older than `max_staleness` seconds (checks are
still answered: health tells load balancers and monitoring, the answers tell officers). It reconnects with
exponential backoff and jitter and resumes from its stored position, also after a restart.

Every other RPC of our services (uploads, cancels, record reads, biometrics, the audit log, the change feed) is
refused with FAILED_PRECONDITION naming the upstream: they are answered there.

Configuration: the server settings `idcheck serve` has that apply here (listen, data, TLS, threads, ...; TOML
table [server]) and the mirror's own (`MirrorConfig`; TOML table [mirror]); flags win over IDCHECK_*
environment variables, which win over the TOML file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from idcheck import cpus
from idcheck.client.channel import TlsOptions, open_channel
from idcheck.register import Limits
from idcheck.register.replication import ChangePage, Heartbeat, Replica, ReplicationError, SnapshotPart
from idcheck.server.auth import metadata_identity
from idcheck.server.config import ConfigError, ServerConfig, add_arguments, load, parse_listen
from idcheck.server.errors import GuardInterceptor
from idcheck.server.handlers import InterceptedServer
from idcheck.server.limits import ConcurrencyLimiter
from idcheck.server.register import DocumentRegisterServicer
from idcheck.server.signals import StopSignals
from idcheck.v1 import register_pb2, register_pb2_grpc, replication_pb2, replication_pb2_grpc

log = logging.getLogger("idcheck.mirror")

REGISTER_SERVICE = register_pb2.DESCRIPTOR.services_by_name["DocumentRegister"].full_name
SERVED = frozenset(
    f"/{REGISTER_SERVICE}/{name}"
    for name in ("CheckDocument", "CheckDocumentStream", "CheckDocuments", "CheckManifest")
)

# The server settings that mean something on a mirror (the rest of ServerConfig is about uploads, biometrics...).
SERVER_SETTINGS = (
    "listen",
    "data_dir",
    "serving_cpu",
    "threads",
    "max_message_bytes",
    "max_queries_per_call",
    "audit_interval",
    "grace_seconds",
    "rate_limit_per_second",
    "rate_limit_burst",
    "queue_calls",
    "queue_seconds",
    "max_check_streams",
    "log_level",
    "tls_dir",
    "tls_cert",
    "tls_key",
    "tls_ca",
)


# -- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MirrorConfig:
    """What a mirror needs beyond the server settings: its upstream, how to reach it, how stale it may get."""

    upstream: str = ""
    # Health turns NOT_SERVING when the last contact with the upstream is older than this (seconds).
    max_staleness: float = 60.0
    # Mutual TLS to the upstream: ca.pem and the mirror's client certificate (role mirror) from this directory:
    # upstream_cert if given, else <upstream_member>-mirror.pem, else client.pem. Unset: plaintext (loopback).
    upstream_tls_dir: Path | None = None
    upstream_cert: Path | None = None
    upstream_server_name: str = ""
    # The member the mirror states on a plaintext (development) link; with TLS its certificate says who it is.
    upstream_member: str = "UTO"
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0

    def describe(self) -> str:
        return "\n".join(f"  {f.name:<22} {getattr(self, f.name)}" for f in fields(self))

    def heartbeat(self) -> float:
        """Seconds between the upstream's heartbeats: several per staleness bound, at most 5 s."""
        return min(5.0, max(0.1, self.max_staleness / 4))


_MIRROR_HELP = {
    "upstream": "HOST:PORT of the register to follow (required)",
    "max_staleness": "seconds without contact with the upstream after which health turns NOT_SERVING (default 60)",
    "upstream_tls_dir": "mutual TLS to the upstream: directory with ca.pem and the mirror's client certificate",
    "upstream_cert": "the mirror's client certificate (PEM, key beside it as .key) instead of the one in the dir",
    "upstream_server_name": "name to check the upstream's certificate against (default: the host of --upstream)",
    "upstream_member": "member code stated on a plaintext (development) link to the upstream (default UTO)",
    "reconnect_initial": "first reconnection delay in seconds (doubled each failure, with jitter; default 0.5)",
    "reconnect_max": "longest reconnection delay in seconds (default 30)",
}


def add_mirror_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `idcheck mirror`: the server settings that apply, then the mirror's own."""
    add_arguments(parser, only=SERVER_SETTINGS)
    for f in fields(MirrorConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=_MIRROR_HELP[f.name])


def load_mirror(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> MirrorConfig:
    """The mirror settings from flags, then IDCHECK_* environment, then the TOML file's [mirror] table."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None) or env.get("IDCHECK_CONFIG")
    if config_file:
        try:
            table = tomllib.loads(Path(config_file).read_text()).get("mirror", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"configuration file {config_file}: {exc}") from None
        for name, value in table.items():
            _set_mirror(values, name, value, str(config_file))
    for f in fields(MirrorConfig):
        var = "IDCHECK_" + f.name.upper()
        if var in env:
            _set_mirror(values, f.name, env[var], var)
    if args is not None:
        for f in fields(MirrorConfig):
            if getattr(args, f.name, None) is not None:
                _set_mirror(values, f.name, getattr(args, f.name), "--" + f.name.replace("_", "-"))
    config = MirrorConfig(**values)
    if not config.upstream:
        raise ConfigError("the upstream register is required: --upstream HOST:PORT (or IDCHECK_UPSTREAM)")
    parse_listen(config.upstream)  # HOST:PORT
    if config.max_staleness <= 0 or config.reconnect_initial <= 0 or config.reconnect_max < config.reconnect_initial:
        raise ConfigError("max_staleness and reconnect_initial must be positive, reconnect_max >= reconnect_initial")
    return config


def _set_mirror(values: dict[str, Any], name: str, raw: object, source: str) -> None:
    types = {f.name: f for f in fields(MirrorConfig)}
    if name not in types:
        raise ConfigError(f"{source}: unknown mirror setting {name!r} (known: {', '.join(sorted(types))})")
    default = types[name].default
    try:
        if default is None:  # optional paths
            value: object = Path(str(raw)) if str(raw).strip() else None
        elif isinstance(default, float):
            value = float(str(raw))
        else:
            value = str(raw).strip()
    except ValueError:
        raise ConfigError(f"{source}: {name} = {raw!r} is not a number") from None
    values[name] = value


def upstream_tls(config: MirrorConfig) -> TlsOptions | None:
    """The mirror's client TLS files for the upstream link, or None for plaintext."""
    if config.upstream_tls_dir is None and config.upstream_cert is None:
        return None
    base = config.upstream_tls_dir or Path(str(config.upstream_cert)).parent
    options = TlsOptions.from_dir(base, member=config.upstream_member, role="mirror", cert=config.upstream_cert)
    if config.upstream_server_name:
        options = TlsOptions(options.cert, options.key, options.ca, config.upstream_server_name)
    return options


# -- refusing what a mirror does not answer -----------------------------------------------------------------


def _method_kinds() -> dict[str, tuple[bool, bool]]:
    """(client streaming, server streaming) of every RPC of our services, from the generated descriptors."""
    kinds: dict[str, tuple[bool, bool]] = {}
    for name in ("register", "biometrics", "audit", "replication", "operations"):
        try:
            module = importlib.import_module(f"idcheck.v1.{name}_pb2")
        except ImportError:
            continue
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                kinds[f"/{service.full_name}/{method.name}"] = (method.client_streaming, method.server_streaming)
    return kinds


class ReadOnlyInterceptor(grpc.ServerInterceptor):
    """Refuses every RPC of our services but the checks with FAILED_PRECONDITION naming the upstream.

    It sits after the guard, so a caller is authenticated and its role checked first (a border system asking for
    an upload is told PERMISSION_DENIED, as upstream would); then it is told where the RPC is answered."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._kinds = _method_kinds()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        kind = self._kinds.get(method)
        if kind is None or method in SERVED:
            return continuation(handler_call_details)
        name = method.rsplit("/", 1)[-1]
        status = status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION,
            message=(
                f"this is a read-only mirror of the register at {self.upstream}: it answers CheckDocument, "
                f"CheckDocumentStream, CheckDocuments and CheckManifest only; send {name} to {self.upstream}"
            ),
        )
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason="READ_ONLY_MIRROR", domain="idcheck.v1", metadata={"upstream": self.upstream}
            )
        )
        status.details.append(info)
        refusal = rpc_status.to_status(status)

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort_with_status(refusal)

        client_streaming, server_streaming = kind
        if client_streaming and server_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if client_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        if server_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


class RefusedMethods(grpc.GenericRpcHandler):
    """Finds every RPC of our services a mirror does not register (Biometrics, AuditLog, ...), so that the
    interceptors applied to found methods (idcheck.server.handlers: the guard, then `ReadOnlyInterceptor`) see
    it and refuse it naming the upstream, rather than gRPC answering UNIMPLEMENTED. The handler found is never
    run: `ReadOnlyInterceptor` puts its refusal in its place."""

    def __init__(self) -> None:
        self._kinds = _method_kinds()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method not in self._kinds or method in SERVED:
            return None
        return grpc.unary_unary_rpc_method_handler(_never_run)


def _never_run(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.INTERNAL, "a refused method ran")  # ReadOnlyInterceptor replaces this handler


# -- following the upstream --------------------------------------------------------------------------------


class Follower:
    """The thread that keeps the replica following the upstream's change feed, reconnecting after failures
    (exponential backoff with jitter) and resuming from the replica's stored position."""

    def __init__(self, replica: Replica, config: MirrorConfig, tls: TlsOptions | None) -> None:
        self.replica = replica
        self.config = config
        self.tls = tls
        self.heartbeat = config.heartbeat()
        # No message for this long on an open stream means the link is dead even if TCP has not noticed.
        self.silence_limit = 3 * self.heartbeat + 2.0
        self.last_error = "not connected yet"
        self.connected = False
        self.reconnects = 0
        self._stop = threading.Event()
        self._call: Any = None
        self._last_message = time.monotonic()
        self._thread = threading.Thread(target=cpus.on_every_cpu(self._run), name="mirror-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(10)

    def watchdog(self) -> None:
        """Cancel a stream that has been silent for longer than the heartbeats allow (called by the monitor)."""
        call = self._call  # also a call whose connection hangs before its first message
        if call is not None and time.monotonic() - self._last_message > self.silence_limit:
            log.warning("no message from upstream %s for %.1fs: dropping the link", self.config.upstream,
                        time.monotonic() - self._last_message)  # fmt: skip
            self.last_error = f"no message for {self.silence_limit:.1f}s"
            call.cancel()

    def backoff(self, attempt: int) -> float:
        """Delay before reconnection attempt `attempt` (0-based): exponential, capped, with equal jitter."""
        ceiling = min(self.config.reconnect_max, self.config.reconnect_initial * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def _run(self) -> None:
        attempt = 0
        metadata = () if self.tls else (("x-idcheck-member", self.config.upstream_member), ("x-idcheck-role", "mirror"))
        while not self._stop.is_set():
            channel = None
            try:
                channel = open_channel(self.config.upstream, tls=self.tls)
                stub = replication_pb2_grpc.ReplicationStub(channel)
                request = replication_pb2.WatchChangesRequest(
                    from_sequence=self.replica.resume_sequence, heartbeat_seconds=self.heartbeat
                )
                self._last_message = time.monotonic()
                self._call = stub.WatchChanges(request, metadata=metadata)
                if self._stop.is_set():
                    break
                for message in self._call:
                    self._last_message = time.monotonic()
                    if not self.connected:
                        self.connected = True
                        log.info("following upstream %s from sequence %d", self.config.upstream, request.from_sequence)
                    self._apply(message)
                    self._last_message = time.monotonic()  # a long apply is not the link's silence
                    attempt = 0
                    self.last_error = ""
                self.last_error = "the upstream ended the stream (stopping?)"
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                self.last_error = (
                    f"{code.name if code else 'ERROR'}: {err.details() if hasattr(err, 'details') else err}"
                )
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    log.error(
                        "upstream %s refuses this mirror (%s): its client certificate must have the role mirror "
                        "(idcheck certs issue --role mirror), or operator",
                        self.config.upstream,
                        self.last_error,
                    )
                elif code == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("upstream %s refuses this mirror's position: %s", self.config.upstream, self.last_error)
            except ReplicationError as err:
                self.last_error = f"feed refused: {err}"
                log.error("change feed from %s: %s", self.config.upstream, err)
            except Exception as err:  # a store failure, an unexpected message: log it, retry after a pause
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("mirror failed to apply the change feed from %s", self.config.upstream)
            finally:
                self._call = None
                self.connected = False
                self.replica.abandon_snapshot()
                if channel is not None:
                    channel.close()
            if self._stop.is_set():
                break
            delay = self.backoff(attempt)
            attempt += 1
            self.reconnects += 1
            log.warning("link to upstream %s lost (%s); reconnecting in %.2fs", self.config.upstream,
                        self.last_error, delay)  # fmt: skip
            self._stop.wait(delay)

    def _apply(self, message: replication_pb2.WatchChangesResponse) -> None:
        item = message.WhichOneof("item")
        if item == "changes":
            c = message.changes
            self.replica.changes(ChangePage(c.rows, c.resume_sequence, c.through_sequence, c.records))
        elif item == "heartbeat":
            self.replica.heartbeat(Heartbeat(message.heartbeat.sequence, message.heartbeat.upstream_time))
        elif item == "snapshot":
            s = message.snapshot
            self.replica.snapshot(SnapshotPart(s.sequence, s.batch, s.last, s.rows, s.total_rows, s.records))
        else:
            raise ReplicationError(f"unknown feed message {item!r}")


# -- the server ---------------------------------------------------------------------------------------------


@dataclass
class RunningMirror:
    """A started mirror."""

    server: grpc.Server
    replica: Replica
    follower: Follower
    health: health.HealthServicer
    port: int
    address: str
    config: MirrorConfig
    tls: bool = False
    serving: bool = False
    overload: ConcurrencyLimiter | None = None
    cpu: int | None = None  # the CPU it answers calls on (None: not pinned)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="mirror-health", daemon=True)
        self._monitor.start()

    def check_health(self) -> bool:
        """Set health from the staleness of the replica (and log changes with the reason); True when serving."""
        fresh = self.replica.freshness()
        age = fresh.age()
        serving = age is not None and age <= self.config.max_staleness
        if serving != self.serving:
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in (REGISTER_SERVICE, ""):
                self.health.set(name, status)
            if serving:
                log.info(
                    "mirror SERVING: in step with upstream %s at sequence %d", self.config.upstream, fresh.sequence
                )
            else:
                last = f"{age:.1f}s ago ({fresh.contact_at})" if age is not None else "never"
                log.warning(
                    "mirror NOT_SERVING: last contact with upstream %s %s, bound %gs; at sequence %d; link: %s",
                    self.config.upstream,
                    last,
                    self.config.max_staleness,
                    fresh.sequence,
                    self.follower.last_error or "connected, catching up",
                )
            self.serving = serving
        return serving

    def _watch(self) -> None:
        tick = min(0.5, max(0.05, self.config.max_staleness / 10))
        while not self._stop.wait(tick):
            self.follower.watchdog()
            self.check_health()

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop following, refuse new calls, let in-flight ones finish within `grace`, close the register."""
        self._stop.set()
        for name in (REGISTER_SERVICE, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.follower.stop()
        from idcheck.server.app import stop_serving  # as start_mirror imports it: see there

        stop_serving(self.server, grace, self.overload)
        self._monitor.join(5)
        self.replica.close()


def start_mirror(config: ServerConfig, mirror: MirrorConfig) -> RunningMirror:
    """Open the mirror's register, start following the upstream and serving checks."""
    # Imported here: `idcheck certs` and other commands build the CLI parser (with this module's flags)
    # without loading the server.
    from idcheck.server.app import bind, listen_security, pin_serving_cpu, rate_limiter, shedder, worker_threads
    from idcheck.server.tls import certificate_identity

    host, tls = listen_security(config, "a mirror")
    cpu = pin_serving_cpu(config)  # as on the register; the follower applies changes on every CPU
    client_tls = upstream_tls(mirror)
    limits = Limits(max_queries_per_call=config.max_queries_per_call)
    limiter = rate_limiter(config)
    overload = shedder(config)  # as on the register: beyond the work slots and queue, refused at once
    try:
        replica = Replica.open(config.data_dir, mirror.upstream, limits=limits, audit_interval=config.audit_interval)
    except ReplicationError as exc:
        raise ConfigError(str(exc)) from None
    try:
        workers = worker_threads(overload)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=workers * 16,
        )
        # The interceptors wrap each method's handler once, as it is added (idcheck.server.handlers); the RPCs of
        # the services a mirror does not serve are found by RefusedMethods so that they reach the refusal.
        services = InterceptedServer(
            server,
            [
                GuardInterceptor(certificate_identity if tls is not None else metadata_identity, limiter, overload),
                ReadOnlyInterceptor(mirror.upstream),
            ],
        )
        register_pb2_grpc.add_DocumentRegisterServicer_to_server(
            DocumentRegisterServicer(replica.register, upstream_contact=lambda: replica.freshness().contact_at),
            services,
        )
        services.add_generic_rpc_handlers((RefusedMethods(),))
        health_servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
        reflection.enable_server_reflection((REGISTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), services)
        for name in (REGISTER_SERVICE, ""):
            health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        bound, address = bind(server, config, host, tls)
        follower = Follower(replica, mirror, client_tls)
        server.start()
        follower.start()
    except BaseException:
        replica.close()
        raise
    running = RunningMirror(
        server, replica, follower, health_servicer, bound, address, mirror, tls is not None, overload=overload, cpu=cpu
    )
    running.check_health()
    return running


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m idcheck.server.mirror` (the same as `idcheck mirror`)."""
    parser = argparse.ArgumentParser(prog="idcheck mirror", description="Serve an on-site mirror of the register.")
    add_mirror_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Follow the upstream and serve until SIGINT or SIGTERM."""
    try:
        config = load(args)
        mirror = load_mirror(args)
    except ConfigError as exc:
        print(f"idcheck mirror: {exc}", file=sys.stderr)
        return 2
    from idcheck.server.app import configure_logging

    configure_logging(config)
    print("idcheck mirror: configuration", flush=True)
    print("\n".join(line for line in config.describe().splitlines() if line.split()[0] in SERVER_SETTINGS), flush=True)
    print(mirror.describe(), flush=True)
    try:
        running = start_mirror(config, mirror)
    except ConfigError as exc:
        print(f"idcheck mirror: {exc}", file=sys.stderr)
        return 2
    fresh = running.replica.freshness()
    security = "mutual TLS, identity from client certificates" if running.tls else "insecure, loopback only"
    print(
        f"idcheck mirror: register {config.data_dir / 'register.db'}: {len(running.replica.register.index)} active "
        f"records, consistent with {mirror.upstream} at sequence {fresh.sequence} "
        f"(last contact {fresh.contact_at or 'never'})",
        flush=True,
    )
    stops = StopSignals()  # before "serving on": a SIGTERM sent as soon as that is seen stops gracefully
    print(f"idcheck mirror: CPUs: {cpus.describe(running.cpu)}", flush=True)
    print(f"idcheck mirror: serving on {running.address} ({security}); following {mirror.upstream}", flush=True)
    stops.wait()
    print(f"idcheck mirror: stopping (grace {config.grace_seconds:g}s)", flush=True)
    running.stop(config.grace_seconds)
    print("idcheck mirror: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
