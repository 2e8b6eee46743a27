"""`idcheck serve`: open the register, start the gRPC server with health and reflection, stop gracefully."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from idcheck.biometrics import Gallery, GallerySettings
from idcheck.index.templates import IndexSettings
from idcheck.register import Limits, Register
from idcheck.register.demo import seed_demo
from idcheck.server.audit import AuditLogServicer
from idcheck.server.auth import is_loopback, metadata_identity
from idcheck.server.biometrics import BiometricsServicer
from idcheck.server.config import ConfigError, ServerConfig, add_arguments, load, parse_listen
from idcheck.server.errors import GuardInterceptor
from idcheck.server.limits import RateLimiter
from idcheck.server.register import DocumentRegisterServicer
from idcheck.server.tls import TlsFiles, certificate_identity
from idcheck.v1 import audit_pb2, audit_pb2_grpc, biometrics_pb2, biometrics_pb2_grpc, register_pb2, register_pb2_grpc

log = logging.getLogger("idcheck.server")

SERVICE_NAMES = (
    register_pb2.DESCRIPTOR.services_by_name["DocumentRegister"].full_name,
    biometrics_pb2.DESCRIPTOR.services_by_name["Biometrics"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditLog"].full_name,
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

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, let in-flight ones finish within `grace`, then flush and close the register and
        the gallery (which saves its index snapshot)."""
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
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


def rate_limiter(config: ServerConfig) -> RateLimiter | None:
    """The per-member rate limiter of `config`, or None when the limit is disabled (0 requests/s)."""
    if config.rate_limit_per_second == 0:
        return None
    if config.rate_limit_burst < 1:
        raise ConfigError("rate_limit_burst must be at least 1 when rate_limit_per_second is set")
    return RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)


# A check allocates a few objects per document; collecting the young generation every 700 allocations
# (the default) costs more than the checks themselves on large manifests.
GC_THRESHOLDS = (50_000, 20, 100)


def start(config: ServerConfig) -> RunningServer:
    """Open the register named by `config` and start serving it. Raises ConfigError for unusable settings."""
    host, _port = parse_listen(config.listen)
    tls = TlsFiles.resolve(config.tls_dir, config.tls_cert, config.tls_key, config.tls_ca)
    if tls is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {config.listen}: without TLS the server accepts only loopback addresses "
            "(127.0.0.1, ::1, localhost), because callers state their own identity in development mode; "
            "give tls_dir (or tls_cert, tls_key and tls_ca) to serve other machines with mutual TLS"
        )
    if tls is None:
        log.warning(
            "serving WITHOUT TLS on loopback %s: callers state their own member and role in metadata "
            "(development mode); use tls_dir for mutual TLS",
            config.listen,
        )
    credentials = tls.server_credentials() if tls is not None else None
    limits = Limits(
        max_queries_per_call=config.max_queries_per_call,
        max_records_per_batch=config.max_records_per_batch,
        max_rows_per_upload=config.max_rows_per_upload,
    )
    settings = gallery_settings(config)
    limiter = rate_limiter(config)
    gc.set_threshold(*GC_THRESHOLDS)
    register = Register.open(config.data_dir, limits=limits, audit_interval=config.audit_interval)
    gallery: Gallery | None = None
    try:
        gallery = Gallery.open(config.data_dir, settings, audit=register.audit)
        if config.demo and register.sequence == 0:
            outcomes = seed_demo(register)
            log.info("seeded demo register: %d records", sum(o.created for o in outcomes))
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="rpc"),
            interceptors=[GuardInterceptor(certificate_identity if tls is not None else metadata_identity, limiter)],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=config.threads * 64,
        )
        register_pb2_grpc.add_DocumentRegisterServicer_to_server(DocumentRegisterServicer(register), server)
        biometrics_pb2_grpc.add_BiometricsServicer_to_server(BiometricsServicer(gallery), server)
        audit_pb2_grpc.add_AuditLogServicer_to_server(AuditLogServicer(register), server)
        health_servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if credentials is not None:
            bound = server.add_secure_port(config.listen, credentials)
        else:
            bound = server.add_insecure_port(config.listen)
        if bound == 0:
            raise ConfigError(f"could not listen on {config.listen} (address in use or not available)")
        server.start()
        for name in (*SERVICE_NAMES, ""):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        if gallery is not None:
            gallery.store.close()  # no snapshot: the server never served
        register.close()
        raise
    address = f"{host if ':' not in host else f'[{host}]'}:{bound}"
    return RunningServer(server, register, health_servicer, bound, address, gallery, tls is not None)


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
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    print("idcheck serve: configuration", flush=True)
    print(config.describe(), flush=True)
    started = time.perf_counter()
    try:
        running = start(config)
    except ConfigError as exc:
        print(f"idcheck serve: {exc}", file=sys.stderr)
        return 2
    reg = running.register
    counts = reg.store.count_records()
    print(
        f"idcheck serve: register {config.data_dir / 'register.db'}: {len(reg.index)} active records "
        f"({sum(counts.values())} in all), sequence {reg.sequence}, loaded in {reg.load_seconds:.2f}s",
        flush=True,
    )
    gallery = running.gallery
    stats = gallery.index.stats()
    print(
        f"idcheck serve: biometric gallery: {stats.ntotal} templates, {stats.kind} index, template sequence "
        f"{stats.sequence}, {gallery.load_report}, loaded in {gallery.load_seconds:.2f}s",
        flush=True,
    )
    security = "mutual TLS, identity from client certificates" if running.tls else "insecure, loopback only"
    print(
        f"idcheck serve: serving on {running.address} ({security}) "
        f"in {time.perf_counter() - started:.2f}s; Ctrl-C to stop",
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(3600):
        pass
    print(f"idcheck serve: stopping (grace {config.grace_seconds:g}s)", flush=True)
    running.stop(config.grace_seconds)
    print("idcheck serve: stopped", flush=True)
    return 0
