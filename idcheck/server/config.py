"""Server configuration: one typed object, filled from flags, then `IDCHECK_*` environment, then a TOML file.

Precedence, highest first: command-line flag, environment variable, TOML file (`--config` or
`IDCHECK_CONFIG`), built-in default. The effective configuration is printed at start-up.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from idcheck.store.audit import AUDIT_INTERVAL


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names its source."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything `idcheck serve` can be told."""

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("data")
    demo: bool = False
    # Server processes sharing the port (SO_REUSEPORT), the store and the index snapshot (README "Every core
    # serving"); 0: one per core. 1 by default: the per-member rate limit and statistics are per process.
    workers: int = 1
    # The CPU each server process serves from (idcheck/cpus.py): "auto" the one the fewest idcheck server processes
    # of this machine serve from (each worker, a mirror, another register: one of its own while there are CPUs
    # enough), "none" no pinning, or the first worker's CPU number. Bulk uploads and index rebuilds run on every CPU
    # whatever this says.
    serving_cpu: str = "auto"
    threads: int = 16
    max_message_bytes: int = 32 * 1024 * 1024
    max_queries_per_call: int = 10_000
    max_records_per_batch: int = 10_000
    max_rows_per_upload: int = 5_000_000
    # Document index (README "Scale"): new records wait in a small overlay until this many are there, then are
    # merged into the index columns in the background; after a merge, a snapshot of the index is written to
    # DATA/snapshots when this many changes happened since the last one (restarts map it and replay the rest).
    index_merge_threshold: int = 65_536
    index_snapshot_changes: int = 100_000
    audit_interval: float = AUDIT_INTERVAL  # idcheck/store/audit.py
    # FOR BENCHMARKING ONLY: answer checks without writing the audit log (warned about loudly at start-up).
    benchmark_no_audit: bool = False
    # A caught-up WatchHits stream sleeps until the next audit commit, and looks at least this often whether
    # its caller is still there (a cancelled stream wakes at once anyway). Their number is capped by max_streams.
    watch_recheck_seconds: float = 1.0
    grace_seconds: float = 10.0
    # Change feed (README "On-site mirror"): a subscriber more than this many changes behind gets a snapshot of
    # the active records instead of every changed record.
    replication_window: int = 1_000_000
    # Per-member request rate limit (README "Configuration"): a token bucket per authenticated member, one
    # token per RPC; health and reflection are exempt. 0 requests/s disables it.
    rate_limit_per_second: float = 1000.0
    rate_limit_burst: int = 2000
    # Overload shedding (README "Limits and overload"): `threads` calls are worked on at once; up to
    # `queue_calls` more wait for a worker (0: as many as `threads`), each at most `queue_seconds` and never past
    # its deadline; beyond that calls are refused at once with RESOURCE_EXHAUSTED and a retry hint. Long-lived
    # response streams (WatchHits) do not take a worker's slot; at most `max_streams` are open (0: threads / 4,
    # at least 2).
    queue_calls: int = 0
    queue_seconds: float = 1.0
    max_streams: int = 0
    # Check streams (CheckDocumentStream: an e-gate or a desk that checks travellers one at a time keeps one open):
    # each holds a thread while it is open, and its checks take work slots like CheckDocument calls.
    max_check_streams: int = 64
    log_level: str = "INFO"
    # Biometric template index (defaults and thresholds explained in README "Biometrics").
    template_dimension: int = 512
    verify_fmr: float = 1e-4
    verify_threshold: float = 0.3845
    identify_fpir: float = 1e-3
    identify_threshold: float = 0.5557
    approximate_above: int = 50_000
    ivf_nprobe: int = 64
    ivf_nlist: int = 0
    rebuild_growth: float = 2.0
    snapshot_changes: int = 100_000
    snapshot_seconds: float = 300.0
    faiss_threads: int = 1
    max_templates_per_call: int = 10_000
    max_candidates: int = 100
    # Mutual TLS (README "Secure setup"): tls_dir holds server.pem, server.key and ca.pem; tls_cert, tls_key
    # and tls_ca name the files one by one (and win over tls_dir). Set, the server listens with mTLS on any
    # address and takes the caller's identity only from its client certificate.
    tls_dir: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @property
    def tls(self) -> bool:
        """True when any TLS setting is given (the server then refuses to start unless all files are there)."""
        return any(p is not None for p in (self.tls_dir, self.tls_cert, self.tls_key, self.tls_ca))

    def describe(self) -> str:
        """Human-readable configuration, one setting per line."""
        return "\n".join(f"  {f.name:<22} {getattr(self, f.name)}" for f in fields(self))


_HELP = {
    "listen": "address to listen on, HOST:PORT (port 0 picks a free one)",
    "data_dir": "directory of the register database",
    "demo": "seed a demo register (ICAO specimens and synthetic records) when the data directory is empty",
    "workers": "server processes sharing the port, the store and the index snapshot (0: one per core)",
    "serving_cpu": "CPU answering calls: auto (the one fewest idcheck servers here use), none, or a CPU number",
    "threads": "calls worked on at once (the pool has more threads: for waiting calls, streams and refusals)",
    "max_message_bytes": "largest request or response message accepted",
    "max_queries_per_call": "largest manifest accepted by CheckDocuments",
    "max_records_per_batch": "largest record batch accepted in one upload message",
    "max_rows_per_upload": "largest upload accepted (rows)",
    "index_merge_threshold": "new records held in the index overlay before they are merged into its columns",
    "index_snapshot_changes": "changes after which a merge also writes an index snapshot for fast restarts",
    "audit_interval": "seconds between audit log commits",
    "benchmark_no_audit": "FOR BENCHMARKING ONLY: do not write the audit log (checks go unrecorded)",
    "watch_recheck_seconds": "longest a caught-up WatchHits stream sleeps between audit commits (they wake it)",
    "grace_seconds": "seconds in-flight calls get to finish at shutdown",
    "replication_window": "changes a mirror may be behind and still get them one by one (beyond: a snapshot)",
    "rate_limit_per_second": "requests per second each member may make (token bucket refill rate; 0 disables)",
    "rate_limit_burst": "requests a member may make at once before the rate limit applies (token bucket size)",
    "queue_calls": "calls that may wait for a busy worker before new ones are refused (0: as many as threads)",
    "queue_seconds": "longest a call waits for a worker before it is refused with a retry hint",
    "max_streams": "long-lived response streams (WatchHits) open at once (0: threads / 4, at least 2)",
    "max_check_streams": "check streams (CheckDocumentStream) open at once; each holds a thread while open",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "template_dimension": "dimension of biometric templates (float32 values per vector)",
    "verify_fmr": "target false-match rate of Verify, stated in every answer",
    "verify_threshold": "score threshold calibrated for verify_fmr (`idcheck calibrate` writes it)",
    "identify_fpir": "target false-positive identification rate of Identify, stated in every answer",
    "identify_threshold": "score threshold calibrated for identify_fpir (`idcheck calibrate` writes it)",
    "approximate_above": "gallery size above which the template index is approximate (IVF-SQ8) instead of exact",
    "ivf_nprobe": "inverted lists searched per probe by the approximate index",
    "ivf_nlist": "inverted lists of the approximate index (0: about the square root of the gallery size)",
    "rebuild_growth": "retrain the approximate index when the gallery grows or shrinks by this factor",
    "snapshot_changes": "write the template index snapshot in the background after this many template changes",
    "snapshot_seconds": "... or this many seconds after an unsaved change",
    "faiss_threads": "OpenMP threads per FAISS call (keep threads x faiss_threads near the core count)",
    "max_templates_per_call": "largest batch of templates accepted by EnrolTemplates",
    "max_candidates": "largest number of candidates Identify may be asked for",
    "tls_dir": "directory with server.pem, server.key and ca.pem: serve with mutual TLS (identity from certificates)",
    "tls_cert": "server certificate (PEM); overrides tls_dir/server.pem",
    "tls_key": "server private key (PEM); overrides tls_dir/server.key",
    "tls_ca": "CA certificate that signs client certificates (PEM); overrides tls_dir/ca.pem",
}


def add_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Register one flag per setting (all default to None so that lower layers can fill them); `only` limits
    them to the settings named (e.g. those `idcheck mirror` uses)."""
    parser.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    for f in fields(ServerConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + ("data" if f.name == "data_dir" else f.name.replace("_", "-"))
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=_HELP[f.name])
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=_HELP[f.name])


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Build the configuration from flags, environment and TOML file."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None) or env.get("IDCHECK_CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"configuration file {path}: {exc}") from None
        table = table.get("server", table)
        for name, value in table.items():
            _set(values, name, value, f"{path}")
    for f in fields(ServerConfig):
        var = "IDCHECK_" + f.name.upper()
        if var in env:
            _set(values, f.name, env[var], var)
    if args is not None:
        for f in fields(ServerConfig):
            value = getattr(args, f.name, None)
            if value is not None:
                _set(values, f.name, value, "--" + f.name.replace("_", "-"))
    return ServerConfig(**values)


def _set(values: dict[str, Any], name: str, raw: object, source: str) -> None:
    types = {f.name: f for f in fields(ServerConfig)}
    if name not in types:
        raise ConfigError(f"{source}: unknown setting {name!r} (known: {', '.join(sorted(types))})")
    default = types[name].default
    try:
        if default is None and "Path" in str(types[name].type):  # optional paths (TLS files)
            value: object = Path(str(raw)) if str(raw).strip() else None
        elif isinstance(default, bool):
            value = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            value = int(str(raw))
        elif isinstance(default, float):
            value = float(str(raw))
        elif isinstance(default, Path):
            value = Path(str(raw))
        else:
            value = str(raw)
    except ValueError:
        raise ConfigError(f"{source}: {name} = {raw!r} is not a valid {type(default).__name__}") from None
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{source}: {name} must not be negative")
    values[name] = value


def parse_listen(listen: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 in brackets)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


__all__: Sequence[str] = ["ConfigError", "ServerConfig", "add_arguments", "load", "parse_listen"]
