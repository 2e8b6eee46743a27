"""`idcheck serve`: open the register, start the gRPC server with health and reflection, stop gracefully."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from idcheck import cpus
from idcheck.biometrics import Gallery, GallerySettings
from idcheck.index import DocumentIndexSettings
from idcheck.index.templates import IndexSettings
from idcheck.memory import arrow_allocator
from idcheck.register import Limits, Register
from idcheck.register.demo import seed_demo
from idcheck.register.replication import ChangeFeed
from idcheck.server.audit import AuditLogServicer
from idcheck.server.auth import is_loopback, metadata_identity
from idcheck.server.biometrics import BiometricsServicer
from idcheck.server.config import ConfigError, ServerConfig, add_arguments, load, parse_listen
from idcheck.server.errors import GuardInterceptor
from idcheck.server.handlers import InterceptedServer
from idcheck.server.limits import ConcurrencyLimiter, RateLimiter, SharedBuckets
from idcheck.server.operations import CallCounter, CountingRateLimiter, OperationsServicer
from idcheck.server.register import DocumentRegisterServicer
from idcheck.server.replication import ReplicationServicer
from idcheck.server.signals import StopSignals
from idcheck.server.tls import TlsFiles, certificate_identity
from idcheck.server.workers import Peers, supervise
from idcheck.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    biometrics_pb2,
    biometrics_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    register_pb2,
    register_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)

log = logging.getLogger("idcheck.server")

SERVICE_NAMES = (
    register_pb2.DESCRIPTOR.services_by_name["DocumentRegister"].full_name,
    biometrics_pb2.DESCRIPTOR.services_by_name["Biometrics"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditLog"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
    replication_pb2.DESCRIPTOR.services_by_name["Replication"].full_name,
)


@dataclass
class RunningServer:
    """A started server and what it serves."""

    server: grpc.Server
    register: Register
    health: health.HealthServicer
    port: int
    address: str
    gallery: Gallery
    tls: bool = False
    feed: ChangeFeed | None = None
    overload: ConcurrencyLimiter | None = None
    cpu: int | None = None  # the CPU it serves from (None: not pinned)

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, let in-flight ones finish within `grace`, then flush and close the register and
        the gallery (which saves its index snapshot)."""
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.feed is not None:
            self.feed.close()  # change feed streams end now instead of holding the grace period
        stop_serving(self.server, grace, self.overload)
        try:
            self.gallery.close()
        finally:
            self.register.close()


def gallery_settings(config: ServerConfig) -> GallerySettings:
    """The gallery's settings from the server configuration. Raises ConfigError for unusable values."""
    for name in ("verify_fmr", "identify_fpir"):
        if not 0 < getattr(config, name) < 1:
            raise ConfigError(f"{name} must be between 0 and 1 (exclusive), not {getattr(config, name)}")
    for name in ("verify_threshold", "identify_threshold"):
        if not -1 <= getattr(config, name) <= 1:
            raise ConfigError(f"{name} is a cosine similarity: between -1 and 1, not {getattr(config, name)}")
    if config.template_dimension < 1 or config.faiss_threads < 1 or config.ivf_nprobe < 1:
        raise ConfigError("template_dimension, faiss_threads and ivf_nprobe must be at least 1")
    if config.rebuild_growth <= 1:
        raise ConfigError("rebuild_growth must be greater than 1")
    return GallerySettings(
        index=IndexSettings(
            dimension=config.template_dimension,
            approximate_above=config.approximate_above,
            nprobe=config.ivf_nprobe,
            nlist=config.ivf_nlist,
            rebuild_growth=config.rebuild_growth,
            omp_threads=config.faiss_threads,
        ),
        verify_fmr=config.verify_fmr,
        verify_threshold=config.verify_threshold,
        identify_fpir=config.identify_fpir,
        identify_threshold=config.identify_threshold,
        max_templates_per_call=config.max_templates_per_call,
        max_candidates=max(1, config.max_candidates),
        default_candidates=min(10, max(1, config.max_candidates)),
        snapshot_changes=max(1, config.snapshot_changes),
        snapshot_seconds=config.snapshot_seconds,
    )


def rate_limiter(config: ServerConfig, shared: SharedBuckets | None = None) -> RateLimiter | None:
    """The per-member rate limiter of `config`, or None when the limit is disabled (0 requests/s); with `shared`,
    its buckets are those of every worker process."""
    if config.rate_limit_per_second == 0:
        return None
    if config.rate_limit_burst < 1:
        raise ConfigError("rate_limit_burst must be at least 1 when rate_limit_per_second is set")
    # Counts refusals for the statistics.
    return CountingRateLimiter(config.rate_limit_per_second, config.rate_limit_burst, shared=shared)


def shedder(config: ServerConfig) -> ConcurrencyLimiter:
    """The overload limiter of `config`: `threads` work slots, `queue_calls` waiting places (0: `threads`),
    `max_streams` response streams (0: threads / 4, at least 2), `max_check_streams` check streams. Raises
    ConfigError for unusable values."""
    if config.threads < 1:
        raise ConfigError("threads must be at least 1")
    if config.max_check_streams < 0:
        raise ConfigError("max_check_streams must not be negative")
    queue = config.queue_calls or config.threads
    streams = config.max_streams or max(2, config.threads // 4)
    return ConcurrencyLimiter(
        config.threads, queue, config.queue_seconds, streams, check_streams=config.max_check_streams
    )


def pin_serving_cpu(config: ServerConfig, worker: int = 0) -> int | None:
    """Keep this process's threads on the CPU `config.serving_cpu` names for worker number `worker` (0-based;
    idcheck/cpus.py: with auto, the CPU the fewest other idcheck servers of this machine serve from), before the
    register's and gRPC's threads start (they inherit it). Returns that CPU, None when not pinned; raises ConfigError
    for a setting that names none."""
    try:
        cpu = cpus.claim(config.serving_cpu, worker)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cpu is not None:
        cpus.serve_on(cpu)
    return cpu


def stop_serving(server: grpc.Server, grace: float | None, limiter: ConcurrencyLimiter | None) -> None:
    """Refuse new calls and let in-flight ones finish within `grace`; open check streams end without waiting for
    it when idle (a gate waiting for its next traveller), after their answer when working on a check."""
    stopped = server.stop(grace)
    if limiter is not None:
        limiter.end_check_streams()
    stopped.wait()


def worker_threads(limiter: ConcurrencyLimiter) -> int:
    """Threads of the server's pool: one per work slot, waiting place, stream and check stream, plus spare ones
    that refuse calls beyond the limits and answer health checks at once, even when all the others are taken."""
    return limiter.slots + limiter.queue + limiter.streams + limiter.check_streams + max(2, limiter.slots // 4)


# What `idcheck/__init__.py` sets GRPC_EXPERIMENTS to, unless the operator set it: the EventEngine listener off.
# With it on (grpcio 1.85's default for Python since 1.80), each call's bytes pass through EventEngine threads
# before the server's polling thread and its worker see them; off, the polling thread reads them itself (gRPC's
# classic engine). Measured on 2026-12-07, 2 cores, the same 1,000,000-record server started with each setting in
# turn (`idcheck bench --target ... --no-seed --scenarios single@1,single@16`, five alternating pairs): one
# caller 1,243-1,343 against 1,058-1,184 checks/s, p50 0.72-0.77 against 0.81-0.89 ms. More callers were not
# slowed (three more pairs: 16 callers 1,705-1,744 against 1,606-1,733/s, 64 callers 1,569-1,613 against
# 1,487-1,601/s, manifests of 1,000 at 4 callers 263,706-272,828 against 265,100-288,860 documents/s), nor were
# 10,000,000-row uploads (bench/upload.py, two pairs). A bench that starts its own server gave a smaller gain at
# one caller (two pairs: p50 0.757-0.770 against 0.785-0.835 ms). The other EventEngine experiments (endpoints,
# callback completion queue) made no difference, nor did a grpc.aio server on the same register (server CPU per
# call at one caller: 560-575 against 544-555 us).
GRPC_EXPERIMENTS = "-event_engine_listener"


# A check allocates a few objects per document; collecting the young generation every 700 allocations
# (the default) costs more than the checks themselves on large manifests.
GC_THRESHOLDS = (50_000, 20, 100)


def listen_security(config: ServerConfig, what: str = "the server") -> tuple[str, TlsFiles | None]:
    """The host of `config.listen` and the TLS files to serve it with (None: plaintext). Raises ConfigError for
    plaintext on an address other than loopback, and warns about plaintext on loopback."""
    host, _port = parse_listen(config.listen)
    tls = TlsFiles.resolve(config.tls_dir, config.tls_cert, config.tls_key, config.tls_ca)
    if tls is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {config.listen}: without TLS {what} accepts only loopback addresses "
            "(127.0.0.1, ::1, localhost), because callers state their own identity in development mode; "
            "give tls_dir (or tls_cert, tls_key and tls_ca) to serve other machines with mutual TLS"
        )
    if tls is None:
        log.warning(
            "serving WITHOUT TLS on loopback %s: callers state their own member and role in metadata "
            "(development mode); use tls_dir for mutual TLS",
            config.listen,
        )
    return host, tls


def bind(server: grpc.Server, config: ServerConfig, host: str, tls: TlsFiles | None) -> tuple[int, str]:
    """Add the listening port (mutual TLS when `tls`); the port bound and the address to show."""
    if tls is not None:
        bound = server.add_secure_port(config.listen, tls.server_credentials())
    else:
        bound = server.add_insecure_port(config.listen)
    if bound == 0:
        raise ConfigError(f"could not listen on {config.listen} (address in use or not available)")
    return bound, f"{host if ':' not in host else f'[{host}]'}:{bound}"


def configure_logging(config: ServerConfig) -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def start(config: ServerConfig, peers: Peers | None = None) -> RunningServer:
    """Open the register named by `config` and start serving it. Raises ConfigError for unusable settings.
    With `peers`, this is one of several worker processes sharing the port and the store."""
    host, tls = listen_security(config)
    cpu = pin_serving_cpu(config, peers.slot if peers is not None else 0)
    limits = Limits(
        max_queries_per_call=config.max_queries_per_call,
        max_records_per_batch=config.max_records_per_batch,
        max_rows_per_upload=config.max_rows_per_upload,
    )
    settings = gallery_settings(config)
    limiter = rate_limiter(config, peers.buckets if peers is not None else None)
    overload = shedder(config)
    gc.set_threshold(*GC_THRESHOLDS)
    if config.benchmark_no_audit:
        log.warning(
            "BENCHMARK MODE: benchmark_no_audit is set, the AUDIT LOG IS NOT WRITTEN: checks, verifies and "
            "identifies go unrecorded; WatchHits, ListAudit and hit outcomes see nothing. Benchmarks only, never in "
            "service."
        )
    register = Register.open(
        config.data_dir,
        limits=limits,
        audit_interval=config.audit_interval,
        audit_write=not config.benchmark_no_audit,
        index_settings=DocumentIndexSettings(
            merge_threshold=config.index_merge_threshold,
            snapshot_dir=config.data_dir / "snapshots",
            snapshot_min_changes=config.index_snapshot_changes,
            write_snapshots=peers is None or peers.writes_snapshots,
        ),
    )
    gallery: Gallery | None = None
    try:
        gallery = Gallery.open(config.data_dir, settings, audit=register.audit)
        if peers is not None:
            register.follow(peers.register())
            gallery.follow(peers.templates(), writes_snapshots=peers.writes_snapshots)
        if config.demo and register.sequence == 0:
            outcomes = seed_demo(register)
            log.info("seeded demo register: %d records", sum(o.created for o in outcomes))
        workers = worker_threads(overload)
        calls = CallCounter()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 1 if peers is not None else 0),  # workers share the port
            ],
            # Last line of defence, for floods faster than the spare threads can refuse: grpc itself then refuses
            # (RESOURCE_EXHAUSTED without a retry hint) before a call is even queued for a thread.
            maximum_concurrent_rpcs=workers * 16,
        )
        # The interceptors wrap each method's handler once, as it is added (idcheck.server.handlers), rather than
        # on every call on gRPC's polling thread; every service of the server is added through `services`.
        services = InterceptedServer(
            server,
            [
                calls,  # first: counts calls the guard refuses too
                GuardInterceptor(certificate_identity if tls is not None else metadata_identity, limiter, overload),
            ],
        )
        register_pb2_grpc.add_DocumentRegisterServicer_to_server(DocumentRegisterServicer(register), services)
        biometrics_pb2_grpc.add_BiometricsServicer_to_server(BiometricsServicer(gallery), services)
        audit_pb2_grpc.add_AuditLogServicer_to_server(
            AuditLogServicer(register, watch_recheck=config.watch_recheck_seconds), services
        )
        operations_pb2_grpc.add_OperationsServicer_to_server(
            OperationsServicer(
                register,
                gallery,
                calls,
                rate_limiter=limiter if isinstance(limiter, CountingRateLimiter) else None,
                shedder=overload,
                worker=(peers.slot + 1, peers.count) if peers is not None else (1, 1),
            ),
            services,
        )
        feed = ChangeFeed(register, window=config.replication_window)
        replication_pb2_grpc.add_ReplicationServicer_to_server(ReplicationServicer(feed), services)
        health_servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), services)
        bound, address = bind(server, config, host, tls)
        server.start()
        for name in (*SERVICE_NAMES, ""):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        if gallery is not None:
            gallery.store.close()  # no snapshot: the server never served
        register.close()
        raise
    return RunningServer(
        server, register, health_servicer, bound, address, gallery, tls is not None, feed, overload, cpu
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `idcheck serve`."""
    parser = argparse.ArgumentParser(prog="idcheck serve", description="Serve the idcheck register over gRPC.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"idcheck serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    print("idcheck serve: configuration", flush=True)
    print(config.describe(), flush=True)
    print(f"  {'arrow_allocator':<22} {arrow_allocator()} (ARROW_DEFAULT_MEMORY_POOL)", flush=True)
    print(f"  {'grpc_experiments':<22} {os.environ.get('GRPC_EXPERIMENTS', '')} (GRPC_EXPERIMENTS)", flush=True)
    if config.workers != 1:
        try:
            return supervise(config, prepare=prepare_workers, serve=serve)
        except ConfigError as exc:
            print(f"idcheck serve: {exc}", file=sys.stderr)
            return 2
    return serve(config)


def prepare_workers(config: ServerConfig) -> None:
    """Before the workers are forked: seed the demo if asked, and make sure an index snapshot covers the whole
    register and the template gallery, so that every worker maps the same files instead of rebuilding."""
    register = Register.open(
        config.data_dir,
        index_settings=DocumentIndexSettings(
            merge_threshold=config.index_merge_threshold, snapshot_dir=config.data_dir / "snapshots"
        ),
    )
    try:
        if config.demo and register.sequence == 0:
            seed_demo(register)
        if len(register.index) and register.index.snapshot_sequence < register.sequence:
            register.index.write_snapshot()
        Gallery.open(config.data_dir, gallery_settings(config)).close()  # closing saves its snapshot
    finally:
        register.close()


def serve(config: ServerConfig, peers: Peers | None = None) -> int:
    """Serve until SIGINT or SIGTERM (one process; or one worker of several, with `peers`)."""
    who = f"idcheck serve: {peers.label}" if peers is not None else "idcheck serve"
    started = time.perf_counter()
    try:
        running = start(config, peers)
    except ConfigError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 2
    reg = running.register
    print(
        f"{who}: register {config.data_dir / 'register.db'}: {len(reg.index)} active records, "
        f"sequence {reg.sequence}, loaded in {reg.load_seconds:.2f}s "
        + (
            f"(index snapshot at sequence {reg.loaded_from_snapshot} plus the change log)"
            if reg.loaded_from_snapshot
            else "(index built from the store)"
        ),
        flush=True,
    )
    print(f"{who}: CPUs: {cpus.describe(running.cpu)}", flush=True)
    gallery = running.gallery
    stats = gallery.index.stats()
    print(
        f"{who}: biometric gallery: {stats.ntotal} templates, {stats.kind} index, template sequence "
        f"{stats.sequence}, {gallery.load_report}, loaded in {gallery.load_seconds:.2f}s",
        flush=True,
    )
    security = "mutual TLS, identity from client certificates" if running.tls else "insecure, loopback only"
    stops = StopSignals()  # before "serving on": a SIGTERM sent as soon as that is seen stops gracefully
    print(
        f"{who}: serving on {running.address} ({security}) in {time.perf_counter() - started:.2f}s; Ctrl-C to stop",
        flush=True,
    )
    stops.wait()
    print(f"{who}: stopping (grace {config.grace_seconds:g}s)", flush=True)
    running.stop(config.grace_seconds)
    print(f"{who}: stopped", flush=True)
    return 0
