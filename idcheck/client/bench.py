"""`idcheck bench`: latency and throughput of a register server, with the baselines a member would otherwise build.

The tool either starts its own server (`python -m idcheck.server` as a subprocess on a fresh temporary data
directory, rate limit off, `--workers N` when asked) and seeds it with a synthetic register through the real
RPCs (one bulk upload, templates enrolled 10,000 per call), or targets a running server (`--target HOST:PORT`,
with the TLS options of the other subcommands).

Each scenario runs closed-loop callers (each sends its next request when the previous answer arrives) for
`--duration` seconds or `--requests` calls, after a warm-up. The callers are threads spread over worker
processes (`--processes`, default one per core), each caller with its own connection (on a server of several
workers, placed so that the callers spread evenly over them: `Backends._placed`): a Python caller spends tens
of microseconds of CPU per call under one interpreter lock, so a single process driving 16 or 64 callers would
measure the client, not the server. The CPU each side used while measuring is reported with the figures.
The same worker processes and the same keys drive the baselines:

    redis   the key set in a private `redis-server` (system package, redis-py with the hiredis reply parser, as
            redis-py recommends installing it): GET per check, MGET per manifest
    sqlite  the key set in an SQLite table with an index, in process: SELECT per check, IN-list per manifest,
            and for uploads INSERTs in one durable transaction (WAL, synchronous=FULL), as the register does
    faiss   the same gallery in an in-process FAISS index of the kind the server uses (exact inner product up to
            50,000 templates, IVF-SQ8 with nprobe 64 above): search per identify; a dot product with the
            subject's templates per verify

A baseline whose server or library is missing is skipped with a message. Every answer is checked against the
synthetic register (a listed number must HIT, an OCR variant must be a POSSIBLE_MATCH, the rest CLEAR;
baselines match keys exactly, so for them only HITs count), and wrong answers are counted apart from errors.

Results: a table on stdout, progress on stderr, a JSON file and a PNG plot (latency percentiles per scenario,
throughput against concurrency and against manifest size). Ctrl-C stops the scenario running, and prints and
writes what was measured so far.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idcheck.client.channel import MAX_MESSAGE_BYTES, TlsOptions, open_channel
from idcheck.client.errors import IdcheckError, from_status
from idcheck.client.files import ipc_bytes
from idcheck.cpus import CLAIMS_ENV
from idcheck.icao import CANONICAL_STATES, folded_key
from idcheck.synthetic import distinct_numbers, synthetic_numbers
from idcheck.v1 import biometrics_pb2 as bpb
from idcheck.v1 import biometrics_pb2_grpc, operations_pb2, operations_pb2_grpc, register_pb2_grpc
from idcheck.v1 import register_pb2 as pb

# manifest: CheckManifest (an Arrow table in, a verdict byte per row out); documents: CheckDocuments (a protobuf
# message per query and per answer).
# health: the standard Health.Check, no work behind it: what the gRPC stack alone allows on this machine.
# stream: single checks over CheckDocumentStream, one stream per caller held open for the whole scenario (as an
# e-gate holds one), the next check sent when the previous answer arrives.
KINDS = ("single", "stream", "manifest", "documents", "verify", "identify", "upload", "health")
SIZED = ("manifest", "documents", "upload")
DEFAULT_SCENARIOS = ",".join(
    (
        "single@1,single@16,single@64,stream@1,stream@16",
        "manifest-10,manifest-100,manifest-1000,verify,identify,upload-10000",
    )
)
BASELINES = ("redis", "sqlite", "faiss")
# Which baselines answer which kind of scenario.
BASELINES_FOR = {
    "single": ("redis", "sqlite"),
    "stream": ("redis", "sqlite"),  # what a border system would otherwise do for one check: a GET, a SELECT
    "manifest": ("redis", "sqlite"),
    "documents": ("redis", "sqlite"),
    "verify": ("faiss",),
    "identify": ("faiss",),
    "upload": ("sqlite",),
    "health": (),
}
QUERY_POOL = 50_000  # distinct check queries cycled through by the callers
PROBE_POOL = 1_000  # distinct biometric probes
LISTED_SHARE, VARIANT_SHARE = 0.02, 0.01  # of the queries: listed numbers (HIT), OCR variants (POSSIBLE_MATCH)
NUMBER_PATTERN = "LL#######"
MAX_BATCH = 10_000  # records per upload message and templates per enrol call (the server's default limits)
EXACT_UP_TO, IVF_NPROBE = 50_000, 64  # the server's default `approximate_above` and `ivf_nprobe`
VERIFY_THRESHOLD = 0.3845  # the server's default verify threshold (for the faiss baseline's decision)
PERCENTILES = (50.0, 95.0, 99.0, 99.9)
PLACEMENT_TRIES = 64  # connections opened at most to reach a caller's worker (at 8 workers, 1 in 5,000 fails)
# Points of the latency percentile curve kept in the JSON file (and plotted).
CURVE = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.8, 99.9, 99.95, 99.99, 100.0)
_FOLD_LETTERS = str.maketrans("0185", "OIBS")  # an OCR misreading of a digit, for POSSIBLE_MATCH queries
V_CLEAR, V_HIT, V_POSSIBLE = pb.VERDICT_CLEAR, pb.VERDICT_HIT, pb.VERDICT_POSSIBLE_MATCH
# Bulk uploads travel as Arrow IPC streams where the contract has them (`RecordBatch.arrow_ipc`), as an
# operator's `idcheck upload` of a file would; else as protobuf records.
ARROW_UPLOADS = "arrow_ipc" in pb.RecordBatch.DESCRIPTOR.fields_by_name
ARROW_BATCH = 100_000  # rows per arrow_ipc payload (the server's default max_rows_per_arrow_batch)
SEED_UPLOAD_ROWS = 5_000_000  # records per seeding upload (the server's default max_rows_per_upload)
_FOLD_TABLE = bytes(ord(folded_key(chr(c))) for c in range(128)) + bytes(range(128, 256))  # folded_key on bytes


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (the message says why)."""


# --- scenarios -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One measured load: `kind`, documents (or rows) per call, concurrent callers."""

    kind: str
    size: int = 1
    concurrency: int = 1

    @property
    def name(self) -> str:
        sized = self.kind in SIZED
        return f"{self.kind}{f'-{self.size}' if sized else ''}@{self.concurrency}"

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """`single@16`, `manifest-1000` (concurrency 1), `manifest-100@4`, `verify`, `identify@2`, `upload-5000`."""
        m = re.fullmatch(r"(?P<kind>[a-z]+)(?:-(?P<size>\d+))?(?:@(?P<conc>\d+))?", text.strip())
        if not m or m["kind"] not in KINDS:
            raise BenchError(f"unknown scenario {text!r} (use {', '.join(KINDS)}, e.g. single@16, manifest-1000@2)")
        kind = m["kind"]
        sized = kind in SIZED
        if m["size"] and not sized:
            raise BenchError(f"scenario {text!r}: only {', '.join(SIZED)} take a size")
        size = int(m["size"] or (1000 if sized else 1))
        conc = int(m["conc"] or 1)
        if not 1 <= size <= (1_000_000 if kind == "upload" else MAX_BATCH) or not 1 <= conc <= 1024:
            raise BenchError(f"scenario {text!r}: size or concurrency out of range")
        return cls(kind, size, conc)


def parse_scenarios(text: str) -> list[Scenario]:
    out = [Scenario.parse(part) for part in text.split(",") if part.strip()]
    if not out:
        raise BenchError("no scenario given")
    return out


# --- the synthetic register and the queries sent to it ------------------------------------------------------


@dataclass
class Workload:
    """Keys, queries with the verdict each must get, and biometric probes: everything the callers send.

    Sent once to every worker process (pickled), so it holds plain arrays and strings."""

    state: str
    query_numbers: list[str]
    query_states: list[str]  # issuing state of each query (`query_states`)
    expected: np.ndarray  # int8 pb.Verdict per query
    probes: np.ndarray  # float32 (n, dimension); empty without templates
    probe_rows: np.ndarray  # gallery row (= identity) of each probe's mate
    run_token: str  # unique per run: upload scenario numbers and ids
    arrow_uploads: bool = ARROW_UPLOADS  # records as Arrow IPC (else protobuf) in uploads

    @property
    def probe_subjects(self) -> list[str]:
        return [subject_id(int(r)) for r in self.probe_rows]


def subject_id(identity: int) -> str:
    return f"bench-{identity}"


def listed_numbers(n: int, seed: int) -> np.ndarray:
    """The `n` distinct document numbers of the synthetic register, sorted (reproducible for a seed)."""
    if n == 0:
        return np.empty(0, dtype=f"S{len(NUMBER_PATTERN)}")
    out = distinct_numbers(NUMBER_PATTERN, n, np.random.default_rng(seed), draw=int(n * 1.02) + 100)
    if len(out) < n:
        raise BenchError(f"cannot draw {n:,} distinct numbers of pattern {NUMBER_PATTERN}")
    return out


def make_queries(
    listed: np.ndarray,
    count: int,
    seed: int,
    *,
    listed_share: float = LISTED_SHARE,
    variant_share: float = VARIANT_SHARE,
) -> tuple[list[str], np.ndarray]:
    """Check queries: a `listed_share` of listed numbers (2 % by default), a `variant_share` of OCR misreadings of
    listed numbers (1 %), the rest drawn fresh; and the verdict each must get, computed from the register's own
    rules (exact number: HIT; same confusion-folded number: POSSIBLE_MATCH; otherwise CLEAR). A fresh number can
    still happen to be listed: the verdicts say so."""
    check_query_mix(listed_share, variant_share)
    rng = np.random.default_rng(seed + 1)
    kinds = rng.random(count)
    fresh = synthetic_numbers(NUMBER_PATTERN, count, rng).astype(str)
    numbers = list(fresh)
    if len(listed):
        picks = listed[rng.integers(0, len(listed), count)].astype(str)
        for i in np.flatnonzero(kinds < listed_share + variant_share):
            number = str(picks[i])
            numbers[i] = number if kinds[i] < listed_share else _misread(number)
    # Looked up in sorted numpy byte strings, not in sets of Python strings (which took ~2.5 GB and 25 s for a
    # register of 10 million).
    asked = np.array(numbers, dtype=listed.dtype if len(listed) else "S1")
    hit = _is_in(asked, np.sort(listed))
    possible = _is_in(_fold_bytes(asked), np.sort(_fold_bytes(listed)))
    expected = np.where(hit, V_HIT, np.where(possible, V_POSSIBLE, V_CLEAR)).astype(np.int8)
    return numbers, expected


def query_states(member: str, expected: np.ndarray, count: int, seed: int) -> list[str]:
    """An issuing state for each query: the member's own; with `count` above 1, each query that must be CLEAR gets
    the member's own or one of the first `count` - 1 other canonical ICAO codes (alphabetically), all about equally
    often, as the travellers of an international flight carry many issuing states. A listed number, its OCR
    misreading or a fresh number that happens to be listed keeps the member's state, and so the verdict computed
    for it."""
    if count < 1:
        raise BenchError(f"--query-states {count}: at least 1 (the member's own state)")
    states = [member] * len(expected)
    if count == 1:
        return states
    others = sorted(CANONICAL_STATES - {member})
    if count - 1 > len(others):
        raise BenchError(f"--query-states {count}: at most {len(others) + 1} known ICAO codes")
    rng = np.random.default_rng(seed + 3)
    pool = [member, *others[: count - 1]]
    for i in np.flatnonzero(expected == V_CLEAR).tolist():
        states[i] = pool[int(rng.integers(0, count))]
    return states


def check_query_mix(listed_share: float, variant_share: float) -> None:
    """Raise BenchError unless both shares are fractions from 0 to 1 that add up to 1 at most."""
    for name, share in (("listed", listed_share), ("OCR variant", variant_share)):
        if not 0.0 <= share <= 1.0:  # NaN fails too
            raise BenchError(f"the {name} share of the queries must be from 0 to 1, not {share}")
    if listed_share + variant_share > 1.0:
        raise BenchError(
            f"the listed ({listed_share}) and OCR variant ({variant_share}) shares of the queries add up to more than 1"
        )


def _is_in(values: np.ndarray, sorted_pool: np.ndarray) -> np.ndarray:
    """Whether each value is in the sorted array `sorted_pool` (both numpy byte strings)."""
    if not len(sorted_pool):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_pool, values), len(sorted_pool) - 1)
    return sorted_pool[at] == values


def _fold_bytes(numbers: np.ndarray) -> np.ndarray:
    """`folded_key` of every number of a numpy byte-string array (folding maps one character to one)."""
    return np.frombuffer(numbers.tobytes().translate(_FOLD_TABLE), numbers.dtype)


def _misread(number: str) -> str:
    """The number with its last confusable digit read as the letter it is mistaken for (0->O, 1->I, 8->B, 5->S)."""
    for pos in range(len(number) - 1, 1, -1):
        if number[pos] in "0185":
            return number[:pos] + number[pos].translate(_FOLD_LETTERS) + number[pos + 1 :]
    return number


# --- a server of our own -------------------------------------------------------------------------------------

SERVING = re.compile(r"serving on (\S+)")


class LocalServer:
    """`python -m idcheck.server` on a fresh data directory, in a process group of its own (Ctrl-C in the terminal
    reaches the benchmark, which stops the server itself after writing its results).

    Not in a session of its own: the kernel's autogroup scheduler (Linux, `kernel.sched_autogroup_enabled`) gives
    each session a CPU share of its own, and a server in one and its load generator in another answered 15-20 %
    fewer calls (h2load, 2 workers, CLEAR calls: 5,987 and 6,351 against 7,444 and 7,791/s, alternating; both in
    sessions of their own, 6,969-7,303/s either way). A production server's clients are on other machines."""

    def __init__(
        self, data_dir: Path, extra: Sequence[str], *, timeout: float = 600.0, log_level: str = "WARNING"
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "idcheck.server",
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(data_dir),
            "--log-level",
            log_level,
            # one member sending as fast as it can: measure the server, not the per-member rate limit
            "--rate-limit-per-second",
            "0",
            *extra,
        ]
        # The operator's settings are not the bench's; where servers claim their CPUs is the machine's (idcheck.cpus).
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDCHECK_") or k == CLAIMS_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        self.command = cmd
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, process_group=0
        )
        found: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                m = SERVING.search(line)
                if m and not found:
                    found.append(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True, name="server-log").start()
        if not ready.wait(timeout) or not found:
            self.stop()
            raise BenchError("the server did not start:\n" + "".join(self.log[-30:]))
        self.address = found[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_rebuilds(self, timeout: float = 3600.0, quiet: float = 3.0) -> int:
        """Wait until every background rebuild of the template index the server started (logged at INFO) has
        been swapped in and none started for `quiet` seconds; returns how many there were."""
        deadline = time.monotonic() + timeout
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            text = "".join(self.log)
            started, done = text.count("template index rebuild:"), text.count("template index rebuilt:")
            failed = text.count("template index rebuild failed")
            if started != done + failed or started != seen:
                seen, quiet_since = started, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                return done
            time.sleep(0.25)
        raise BenchError("the server's template index was still rebuilding after an hour")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def settle(
    conn: Connection,
    channel: grpc.Channel,
    *,
    timeout: float = 1800.0,
    after: str = "seeding",
    stop: Callable[[], bool] | None = None,
) -> float | None:
    """Wait until the server reports no background work (GetStatistics.background_tasks: the index merge and
    snapshot, the WAL checkpoint and the template index rebuild that seeding, or `after` whatever else, set off),
    so that the scenarios measure the server answering, not the server digesting the seed. Under `serve --workers
    N` every worker must say so: each answer names its worker, and the question goes out over fresh connections
    (which the kernel spreads over the workers) until every worker's latest answer is 0. Returns the seconds
    waited; None when the server does not say (GetStatistics needs the operator role: a development server takes
    it from metadata, a TLS one from the certificate), or when `stop()` turns true (Ctrl-C) before it does."""
    metadata = _operator(conn)
    started = time.monotonic()
    log(f"waiting for the server's background work after {after} (index merge and snapshot, WAL checkpoint) ...")
    busy: dict[int, int] = {}  # worker -> its latest background_tasks
    polls = 0
    while True:
        fresh = conn.channel(own_connection=True) if polls else None  # the first question on `channel`
        polls += 1
        try:
            stub = operations_pb2_grpc.OperationsStub(fresh or channel)
            stats = stub.GetStatistics(operations_pb2.GetStatisticsRequest(), metadata=metadata, timeout=120)
        except grpc.RpcError as err:
            log(f"not waiting: GetStatistics answered {_error_code(err)} (it needs the operator role)")
            return None
        finally:
            if fresh is not None:
                fresh.close()
        busy[stats.worker] = stats.background_tasks
        waited = time.monotonic() - started
        workers = max(stats.worker_processes, 1)  # 0: a server from before the field, one process
        if len(busy) >= workers and not any(busy.values()):
            log(f"the server is idle after {waited:.1f}s" + (f" ({workers} workers)" if workers > 1 else ""))
            return round(waited, 1)
        if waited > timeout:
            log(f"the server still has background work after {waited:.0f}s: measuring anyway")
            return round(waited, 1)
        if stop is not None and stop():
            log(f"not waiting any longer: interrupted after {waited:.1f}s")
            return None
        # A worker not heard from yet is asked again soon, over the next fresh connection.
        time.sleep(0.2 if any(busy.values()) else 0.02)


def server_has_flag(flag: str) -> bool:
    """Whether `idcheck serve` accepts `flag` (e.g. --workers, which a newer server has)."""
    out = subprocess.run(
        [sys.executable, "-m", "idcheck.server", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    return re.search(rf"(^|\s){re.escape(flag)}\b", out.stdout) is not None


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time of processes and all their descendants (0 for those gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


# --- seeding through the real RPCs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """How a caller reaches the register: address, mutual TLS files (or None), development identity."""

    target: str
    tls: TlsOptions | None
    member: str
    role: str

    def channel(self, *, own_connection: bool = False) -> grpc.Channel:
        """A channel to the register; `own_connection`: never share a TCP connection with another channel of
        this process (gRPC otherwise reuses one per target)."""
        if not own_connection:
            return open_channel(self.target, tls=self.tls)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.secure_channel(self.target, self.tls.credentials(), options=options)

    def aio_channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel of its own connection (for the stream scenarios' callers)."""
        options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=options)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-idcheck-member", self.member), ("x-idcheck-role", self.role))


def _operator(conn: Connection) -> tuple[tuple[str, str], ...]:
    """Metadata asking for the operator role (GetStatistics): a development server takes the caller's identity from
    it, a TLS one from the certificate."""
    return (("x-idcheck-member", conn.member), ("x-idcheck-role", "operator"))


def upload_stream(
    state: str, numbers: Sequence[str], upload_id: str, description: str, *, arrow: bool = ARROW_UPLOADS
) -> Iterator[pb.UploadRecordsRequest]:
    """An UploadRecords stream: the header, the records (stolen passports of `state`) in batches built as they
    are sent (Arrow IPC streams of 100,000 rows, or 10,000 protobuf records), the end."""
    yield pb.UploadRecordsRequest(
        header=pb.UploadHeader(upload_id=upload_id, mode=pb.UPLOAD_MODE_INCREMENTAL, description=description)
    )
    if arrow:
        import pyarrow as pa

        for start in range(0, len(numbers), ARROW_BATCH):
            chunk = numbers[start : start + ARROW_BATCH]
            n = len(chunk)
            table = pa.table(
                {
                    "issuing_state": pa.array([state] * n, pa.string()),
                    "document_number": pa.array(chunk, pa.string()),
                    "document_class": pa.array(np.full(n, 1, np.int8)),
                    "status": pa.array(np.full(n, pb.RECORD_STATUS_STOLEN, np.int8)),
                    "event_date": pa.array(["2025-06-01"] * n, pa.string()),
                }
            )
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            yield pb.UploadRecordsRequest(batch=pb.RecordBatch(arrow_ipc=sink.getvalue().to_pybytes()))
    else:
        for start in range(0, len(numbers), MAX_BATCH):
            yield pb.UploadRecordsRequest(
                batch=pb.RecordBatch(
                    records=[
                        pb.Record(
                            key=pb.DocumentKey(
                                issuing_state=state, document_number=n, document_class=pb.DOCUMENT_CLASS_PASSPORT
                            ),
                            status=pb.RECORD_STATUS_STOLEN,
                            event_date="2025-06-01",
                        )
                        for n in numbers[start : start + MAX_BATCH]
                    ]
                )
            )
    yield pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=len(numbers)))


def seed_records(
    conn: Connection,
    channel: grpc.Channel,
    listed: np.ndarray,
    seed: int,
    *,
    arrow: bool,
    part_rows: int = SEED_UPLOAD_ROWS,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Upload the synthetic register in durable all-or-nothing uploads of at most `part_rows` records (one upload
    up to the server's default limit). Their ids are fixed by size, seed and part, so seeding a running server
    again replays them and changes nothing; `progress` is told the records seeded after each part."""
    stub = register_pb2_grpc.DocumentRegisterStub(channel)
    n = len(listed)
    starts = list(range(0, n, max(1, part_rows))) or [0]
    t0 = time.perf_counter()
    accepted, replayed, parts = 0, [], []
    for k, start in enumerate(starts):
        numbers = listed[start : start + part_rows].astype(str).tolist()
        upload_id = f"bench-seed-{n}-{seed}" if len(starts) == 1 else f"bench-seed-{n}-{seed}-{k + 1}of{len(starts)}"
        t = time.perf_counter()
        resp = stub.UploadRecords(
            upload_stream(conn.member, numbers, upload_id, "idcheck bench register", arrow=arrow),
            metadata=conn.metadata,
            timeout=7200,
        )
        parts.append(round(time.perf_counter() - t, 3))
        if resp.accepted != len(numbers):
            raise BenchError(
                f"seeding: the server accepted {resp.accepted:,} of {len(numbers):,} records ({upload_id})"
            )
        accepted += resp.accepted
        replayed.append(resp.replayed)
        if progress is not None:
            progress(start + len(numbers))
    seconds = time.perf_counter() - t0
    return {
        "rows": accepted,
        "seconds": round(seconds, 3),
        "rows_per_s": round(accepted / seconds) if seconds else 0,
        "replayed": all(replayed),
        "encoding": "arrow_ipc" if arrow else "protobuf",
        "uploads": len(starts),
        "upload_seconds": parts,
    }


def seed_templates(
    conn: Connection, channel: grpc.Channel, vectors: np.ndarray, progress: Callable[[int], None]
) -> dict[str, Any]:
    """Enrol the gallery, 10,000 templates per call: row i is subject `bench-i`. A gallery an earlier run with the
    same seed enrolled on a running server (its last subject verifies with its own template) is not enrolled
    twice."""
    stub = biometrics_pb2_grpc.BiometricsStub(channel)
    last = np.ascontiguousarray(vectors[-1], dtype="<f4")
    try:
        resp = stub.Verify(
            bpb.VerifyRequest(
                subject_id=subject_id(len(vectors) - 1),
                modality=bpb.MODALITY_FACE,
                probe=bpb.FeatureVector(dimension=len(last), data=last.tobytes()),
            ),
            metadata=conn.metadata,
            timeout=30,
        )
        if resp.score > 0.999:
            return {"templates": len(vectors), "seconds": 0.0, "templates_per_s": 0, "already_enrolled": True}
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
    t0 = time.perf_counter()
    for start in range(0, len(vectors), MAX_BATCH):
        chunk = np.ascontiguousarray(vectors[start : start + MAX_BATCH], dtype="<f4")
        req = bpb.EnrolTemplatesRequest(
            templates=[
                bpb.TemplateEnrolment(
                    subject_id=subject_id(start + j),
                    modality=bpb.MODALITY_FACE,
                    vector=bpb.FeatureVector(dimension=chunk.shape[1], data=chunk[j].tobytes()),
                )
                for j in range(len(chunk))
            ]
        )
        stub.EnrolTemplates(req, metadata=conn.metadata, timeout=600)
        progress(start + len(chunk))
    seconds = time.perf_counter() - t0
    return {"templates": len(vectors), "seconds": round(seconds, 3), "templates_per_s": round(len(vectors) / seconds)}


# --- baselines -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisBaseline:
    """A private `redis-server` (no persistence) on a free loopback port, loaded with the register's keys."""

    name = "redis"

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise BenchError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        try:
            import redis
        except ImportError:
            raise BenchError("the redis Python package is not installed (pip install 'redis[hiredis]')") from None
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--protected-mode",
                "no",
                "--logfile",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,  # as our own server: out of reach of Ctrl-C, in the bench's session (see LocalServer)
        )
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.05)
        self.version = str(self.client.info("server").get("redis_version", "?"))
        self.parser = redis_parser()

    def load(self, state: str, listed: np.ndarray) -> float:
        t0 = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(listed), MAX_BATCH):
            pipe.mset({f"{state}:{n}": b"STOLEN" for n in listed[start : start + MAX_BATCH].astype(str)})
            pipe.execute()
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def redis_parser() -> str:
    """Which parser redis-py reads replies with: "hiredis" (C, which redis-py recommends installing) or "python".

    It decides what the Redis baseline measures on a manifest: an MGET of 1,000 keys cost this machine's caller
    1.1 ms of CPU with hiredis and 2.3-2.4 ms without (2026-12-07), and the pure-Python parser halved the keys/s
    the baseline reached."""
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis" if HIREDIS_AVAILABLE else "python"


SQLITE_SCHEMA = """
CREATE TABLE records (issuing_state TEXT NOT NULL, document_number TEXT NOT NULL, status INTEGER NOT NULL);
CREATE INDEX records_key ON records (issuing_state, document_number);
"""


def build_sqlite(path: Path, state: str, listed: np.ndarray) -> float:
    """The register's keys in an indexed SQLite table (WAL, synchronous=FULL, like the register's store)."""
    t0 = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SQLITE_SCHEMA)
    with db:
        db.executemany("INSERT INTO records VALUES (?, ?, 2)", ((state, n) for n in listed.astype(str).tolist()))
    db.close()
    return time.perf_counter() - t0


@dataclass
class FaissBaseline:
    """The gallery in an in-process FAISS index of the kind the server builds for its size."""

    index: Any
    vectors: np.ndarray
    description: str
    build_seconds: float

    @classmethod
    def build(cls, vectors: np.ndarray) -> FaissBaseline:
        import faiss

        faiss.omp_set_num_threads(1)  # this thread builds; each caller thread sets its own (see _faiss_identify)
        t0 = time.perf_counter()
        n, d = vectors.shape
        index: Any
        if n <= EXACT_UP_TO:
            index = faiss.IndexFlatIP(d)
            description = f"IndexFlatIP (exact), {n:,} templates"
        else:
            nlist = max(1, round(math.sqrt(n * math.sqrt(2))))
            index = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
            index.train(vectors[np.random.default_rng(0).choice(n, min(n, 256 * nlist), replace=False)])
            faiss.extract_index_ivf(index).nprobe = IVF_NPROBE
            description = f"IVF{nlist},SQ8 nprobe {IVF_NPROBE}, {n:,} templates"
        index.add(vectors)
        return cls(index, vectors, description, time.perf_counter() - t0)


# --- callers: one request of a scenario, for each backend ----------------------------------------------------


@dataclass
class Tally:
    """What one caller thread saw besides latencies."""

    answers: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    documents: int = 0


Call = Callable[[int, Tally], None]
# A backend's factory for one scenario: called in each caller thread with the thread's global number k.
NewCall = Callable[[int], Call]


@dataclass(frozen=True)
class Endpoints:
    """Where the worker processes find each backend."""

    conn: Connection
    redis_port: int | None = None
    sqlite_path: str | None = None


VERDICT_NAMES = {v: pb.Verdict.Name(v).removeprefix("VERDICT_") for v in pb.Verdict.values()}  # as audited


def _tally_manifest(t: Tally, resp: Any, got: np.ndarray, want: np.ndarray) -> None:
    """Count one manifest answer (CheckManifest or CheckDocuments): its documents, verdicts and wrong answers."""
    t.wrong += int(np.count_nonzero(got != want)) if len(got) == len(want) else len(want)
    t.documents += len(got)
    t.answers["HIT"] += resp.hits
    t.answers["POSSIBLE_MATCH"] += resp.possible_matches
    t.answers["CLEAR"] += resp.clear


class _StreamCaller:
    """A caller's check stream (CheckDocumentStream) on its own grpc.aio channel: opened at its first check (again
    after a failure), ended by `close`; a call writes one request and reads its answer."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Any, reqs: list[Any], expected: np.ndarray) -> None:
        self._channel = channel
        self._stub = register_pb2_grpc.DocumentRegisterStub(channel)
        self._metadata, self._reqs, self._expected = metadata, reqs, expected
        self._call: Any = None

    async def __call__(self, i: int, t: Tally) -> None:
        if self._call is None:
            self._call = self._stub.CheckDocumentStream(metadata=self._metadata)
        j = i % len(self._reqs)
        try:
            await self._call.write(self._reqs[j])
            answer = await self._call.read()
        except grpc.RpcError:
            self._call = None  # the stream is over: the next call opens a new one
            raise
        if answer is grpc.aio.EOF:
            self._call = None
            raise BenchError("the server ended the check stream")
        if answer.WhichOneof("outcome") != "response":
            raise from_status(answer.error)
        v = answer.response.result.verdict
        t.answers[VERDICT_NAMES.get(v, str(v))] += 1
        t.documents += 1
        if v != self._expected[j]:
            t.wrong += 1

    async def close(self) -> None:
        """End the stream (if open) and close the channel."""
        if self._call is not None:
            call, self._call = self._call, None
            with contextlib.suppress(grpc.RpcError):
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
        await self._channel.close()


class Backends:
    """Per worker process: the channel, clients and prebuilt requests, made once and reused by every scenario."""

    def __init__(self, endpoints: Endpoints, workload: Workload, faiss_baseline: FaissBaseline | None = None):
        self.endpoints = endpoints
        self.workload = workload
        self.faiss = faiss_baseline
        self._channels: dict[int, grpc.Channel] = {}
        self._placing = True  # callers' connections are placed on workers while the server says which one answers
        self._redis: Any = None
        self._cache: dict[Any, Any] = {}
        self._local = threading.local()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def factory(self, backend: str, scenario: Scenario) -> NewCall:
        # A baseline answers a stream's checks as it answers single ones (it has no streams of its own).
        kind = "single" if backend != "idcheck" and scenario.kind == "stream" else scenario.kind
        return getattr(self, f"_{backend}_{kind}")(scenario)

    def _per_caller(self, make: Callable[[Any, Any], Call]) -> NewCall:
        """Each caller k gets its own channel, i.e. its own connection, as separate border systems have (and as
        `serve --workers` needs: the kernel spreads connections, not calls, over the workers); kept for the
        next scenarios."""

        def new_call(k: int) -> Call:
            channel = self._channel(k)
            return make(register_pb2_grpc.DocumentRegisterStub(channel), biometrics_pb2_grpc.BiometricsStub(channel))

        return new_call

    def _channel(self, k: int) -> grpc.Channel:
        """Caller k's own channel (kept for the next scenarios), placed on a worker (`_placed`)."""
        if k not in self._channels:
            self._channels[k] = self._placed(k)
        return self._channels[k]

    def _placed(self, k: int) -> grpc.Channel:
        """A connection of caller k's own, on worker k mod N + 1 of a server running `serve --workers N`.

        The kernel hands each new connection to one of the workers at random (SO_REUSEPORT hashes its addresses),
        and every call on it goes to that worker: a few callers can all land on one worker and leave the other
        cores idle (4 callers on 2 workers: one run in 8), and the run then measures one worker, not the server. So
        a caller's connection is opened again until the worker it reaches (GetStatistics names it; the operator
        role, as `settle` asks it) is its own, as many border systems' connections spread over the workers. When
        the server does not say, the connection stays wherever the kernel put it."""
        conn = self.endpoints.conn
        channel = conn.channel(own_connection=True)
        for _ in range(PLACEMENT_TRIES if self._placing else 0):
            try:
                stats = operations_pb2_grpc.OperationsStub(channel).GetStatistics(
                    operations_pb2.GetStatisticsRequest(), metadata=_operator(conn), timeout=60
                )
            except grpc.RpcError:
                stats = None
            if self._stays(k, stats):
                return channel
            channel.close()
            channel = conn.channel(own_connection=True)
        if self._placing:
            log(f"caller {k}: no connection reached its worker in {PLACEMENT_TRIES} tries; kept another")
        return channel

    async def _placed_aio(self, k: int) -> grpc.aio.Channel:
        """`_placed` for a stream caller's grpc.aio connection."""
        conn = self.endpoints.conn
        channel = conn.aio_channel()
        for _ in range(PLACEMENT_TRIES if self._placing else 0):
            try:
                stats = await operations_pb2_grpc.OperationsStub(channel).GetStatistics(
                    operations_pb2.GetStatisticsRequest(), metadata=_operator(conn), timeout=60
                )
            except grpc.RpcError:
                stats = None
            if self._stays(k, stats):
                return channel
            await channel.close()
            channel = conn.aio_channel()
        if self._placing:
            log(f"caller {k}: no connection reached its worker in {PLACEMENT_TRIES} tries; kept another")
        return channel

    def _stays(self, k: int, stats: operations_pb2.Statistics | None) -> bool:
        """Whether caller k's connection, whose GetStatistics answered `stats` (None: refused, by a server that
        does not take this caller for an operator or cannot say), is placed: it reached worker k mod N + 1, or
        the server has one worker, or does not say (then no other connection is asked either)."""
        if stats is None:
            self._placing = False
            return True
        workers = max(stats.worker_processes, 1)
        return workers == 1 or stats.worker == k % workers + 1

    def _cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _queries(self) -> list[pb.DocumentQuery]:
        w = self.workload
        return self._cached(
            "queries",
            lambda: [
                pb.DocumentQuery(typed=pb.TypedQuery(issuing_state=s, document_number=n))
                for s, n in zip(w.query_states, w.query_numbers, strict=True)
            ],
        )

    def _batches(self, size: int) -> list[slice]:
        n = len(self.workload.query_numbers)
        return [slice(s, s + size) for s in range(0, n - size + 1, size)]

    def _idcheck_single(self, scenario: Scenario) -> NewCall:
        reqs = self._cached("single", lambda: [pb.CheckDocumentRequest(query=q) for q in self._queries()])
        expected, md = self.workload.expected, self.endpoints.conn.metadata

        def make(reg: Any, _bio: Any) -> Call:
            method = reg.CheckDocument

            def call(i: int, t: Tally) -> None:
                j = i % len(reqs)
                v = method(reqs[j], metadata=md, timeout=30).result.verdict
                t.answers[VERDICT_NAMES.get(v, str(v))] += 1
                t.documents += 1
                if v != expected[j]:
                    t.wrong += 1

            return call

        return self._per_caller(make)

    async def stream_callers(self, first: int, count: int) -> list[_StreamCaller]:
        """Callers `first` .. `first + count - 1` of a stream scenario, each on its own grpc.aio channel placed on its
        worker (`_placed`; see run_stream_share); made inside the event loop that runs them."""
        reqs = self._cached("single", lambda: [pb.CheckDocumentRequest(query=q) for q in self._queries()])
        conn = self.endpoints.conn
        channels = await asyncio.gather(*(self._placed_aio(first + j) for j in range(count)))
        return [_StreamCaller(channel, conn.metadata, reqs, self.workload.expected) for channel in channels]

    def _idcheck_manifest(self, scenario: Scenario) -> NewCall:
        batches = self._batches(scenario.size)
        w = self.workload

        def payloads() -> list[bytes]:
            numbers = w.query_numbers
            table = pa.table({"issuing_state": w.query_states, "document_number": numbers})
            return [ipc_bytes(table.slice(b.start, b.stop - b.start)) for b in batches]

        reqs = self._cached(
            ("manifest", scenario.size), lambda: [pb.CheckManifestRequest(queries_arrow_ipc=p) for p in payloads()]
        )
        expected, md = w.expected, self.endpoints.conn.metadata

        def make(reg: Any, _bio: Any) -> Call:
            method = reg.CheckManifest

            def call(i: int, t: Tally) -> None:
                j = i % len(reqs)
                resp = method(reqs[j], metadata=md, timeout=60)
                _tally_manifest(t, resp, np.frombuffer(resp.verdicts, np.uint8), expected[batches[j]])

            return call

        return self._per_caller(make)

    def _idcheck_documents(self, scenario: Scenario) -> NewCall:
        queries, batches = self._queries(), self._batches(scenario.size)
        reqs = self._cached(
            ("documents", scenario.size), lambda: [pb.CheckDocumentsRequest(queries=queries[b]) for b in batches]
        )
        expected, md = self.workload.expected, self.endpoints.conn.metadata

        def make(reg: Any, _bio: Any) -> Call:
            method = reg.CheckDocuments

            def call(i: int, t: Tally) -> None:
                j = i % len(reqs)
                resp = method(reqs[j], metadata=md, timeout=60)
                got = np.fromiter((r.verdict for r in resp.results), dtype=np.int8, count=len(resp.results))
                _tally_manifest(t, resp, got, expected[batches[j]])

            return call

        return self._per_caller(make)

    def _idcheck_health(self, scenario: Scenario) -> NewCall:
        request = health_pb2.HealthCheckRequest(service="")

        def new_call(k: int) -> Call:
            check = health_pb2_grpc.HealthStub(self._channel(k)).Check

            def call(i: int, t: Tally) -> None:
                if check(request, timeout=30).status != health_pb2.HealthCheckResponse.SERVING:
                    t.wrong += 1

            return call

        return new_call

    def _probe_requests(self, kind: str) -> list[Any]:
        w = self.workload
        if not len(w.probes):
            raise BenchError(f"{kind}: no templates were seeded (give --templates N)")

        def make() -> list[Any]:
            vectors = [bpb.FeatureVector(dimension=p.shape[0], data=p.astype("<f4").tobytes()) for p in w.probes]
            if kind == "verify":
                return [
                    bpb.VerifyRequest(subject_id=s, modality=bpb.MODALITY_FACE, probe=v)
                    for s, v in zip(w.probe_subjects, vectors, strict=True)
                ]
            return [bpb.IdentifyRequest(modality=bpb.MODALITY_FACE, probe=v, max_candidates=10) for v in vectors]

        return self._cached(kind, make)

    def _idcheck_verify(self, scenario: Scenario) -> NewCall:
        reqs, md = self._probe_requests("verify"), self.endpoints.conn.metadata

        def make(_reg: Any, bio: Any) -> Call:
            def call(i: int, t: Tally) -> None:
                resp = bio.Verify(reqs[i % len(reqs)], metadata=md, timeout=30)
                t.answers["MATCH" if resp.decision == bpb.DECISION_MATCH else "NO_MATCH"] += 1
                t.documents += 1

            return call

        return self._per_caller(make)

    def _idcheck_identify(self, scenario: Scenario) -> NewCall:
        reqs, md = self._probe_requests("identify"), self.endpoints.conn.metadata
        subjects = self.workload.probe_subjects

        def make(_reg: Any, bio: Any) -> Call:
            def call(i: int, t: Tally) -> None:
                j = i % len(reqs)
                resp = bio.Identify(reqs[j], metadata=md, timeout=30)
                # below the identify threshold nothing is returned (a low-quality gallery capture): not an error
                top = resp.candidates[0].subject_id if resp.candidates else None
                t.answers["NO_CANDIDATE" if top is None else "TOP1_MATE" if top == subjects[j] else "OTHER_FIRST"] += 1
                t.documents += 1

            return call

        return self._per_caller(make)

    def _idcheck_upload(self, scenario: Scenario) -> NewCall:
        w, md, size = self.workload, self.endpoints.conn.metadata, scenario.size

        def make(reg: Any, _bio: Any) -> Call:
            def call(i: int, t: Tally) -> None:
                numbers = upload_numbers(w.run_token, i, size)
                upload_id = f"bench-{uuid.uuid4().hex}"
                stream = upload_stream(w.state, numbers, upload_id, "idcheck bench upload", arrow=w.arrow_uploads)
                resp = reg.UploadRecords(stream, metadata=md, timeout=3600)
                t.wrong += size - resp.accepted
                t.documents += resp.accepted
                t.answers["CREATED"] += resp.created
                t.answers["UPDATED"] += resp.updated + resp.unchanged

            return call

        return self._per_caller(make)

    def _redis_client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis(host="127.0.0.1", port=self.endpoints.redis_port or 6379)
        return self._redis

    def _redis_keys(self) -> list[bytes]:
        w = self.workload
        return self._cached(
            "redis-keys", lambda: [f"{s}:{n}".encode() for s, n in zip(w.query_states, w.query_numbers, strict=True)]
        )

    def _redis_single(self, scenario: Scenario) -> NewCall:
        r, keys, hit = self._redis_client(), self._redis_keys(), self.workload.expected == V_HIT

        def call(i: int, t: Tally) -> None:
            j = i % len(keys)
            found = r.get(keys[j]) is not None
            t.answers["FOUND" if found else "NOT_FOUND"] += 1
            t.documents += 1
            if found != hit[j]:
                t.wrong += 1

        return lambda _k: call

    def _redis_manifest(self, scenario: Scenario) -> NewCall:
        r, keys, hit = self._redis_client(), self._redis_keys(), self.workload.expected == V_HIT
        batches = self._batches(scenario.size)

        def call(i: int, t: Tally) -> None:
            b = batches[i % len(batches)]
            found = np.fromiter((v is not None for v in r.mget(keys[b])), dtype=bool, count=b.stop - b.start)
            n = int(found.sum())
            t.answers["FOUND"] += n
            t.answers["NOT_FOUND"] += len(found) - n
            t.documents += len(found)
            t.wrong += int(np.count_nonzero(found != hit[b]))

        return lambda _k: call

    def _sqlite(self) -> sqlite3.Connection:
        # one connection per caller thread, as an application server would hold one per worker
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.endpoints.sqlite_path or "", check_same_thread=False)
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def _redis_documents(self, scenario: Scenario) -> NewCall:
        return self._redis_manifest(scenario)  # the same keys, whatever the idcheck side's message format

    def _sqlite_single(self, scenario: Scenario) -> NewCall:
        w, hit = self.workload, self.workload.expected == V_HIT
        sql = "SELECT status FROM records WHERE issuing_state = ? AND document_number = ?"

        states = w.query_states

        def new_call(_k: int) -> Call:
            db = self._sqlite()

            def call(i: int, t: Tally) -> None:
                j = i % len(w.query_numbers)
                found = db.execute(sql, (states[j], w.query_numbers[j])).fetchone() is not None
                t.answers["FOUND" if found else "NOT_FOUND"] += 1
                t.documents += 1
                if found != hit[j]:
                    t.wrong += 1

            return call

        return new_call

    def _sqlite_manifest(self, scenario: Scenario) -> NewCall:
        w, hit, batches = self.workload, self.workload.expected == V_HIT, self._batches(scenario.size)
        states = w.query_states
        mixed = len(set(states)) > 1
        if mixed:
            # Queries of several issuing states (--query-states): the (state, number) pairs joined to the indexed
            # table, one index seek a pair (SQLite plans `(state, number) IN (VALUES ...)` as a scan of the table).
            sql = (
                f"WITH q(s, n) AS (VALUES {','.join(['(?, ?)'] * scenario.size)}) "
                "SELECT r.issuing_state, r.document_number FROM q "
                "JOIN records AS r ON r.issuing_state = q.s AND r.document_number = q.n"
            )
        else:
            sql = (
                "SELECT document_number FROM records WHERE issuing_state = ? AND document_number IN "
                f"({','.join('?' * scenario.size)})"
            )

        def new_call(_k: int) -> Call:
            db = self._sqlite()

            def call(i: int, t: Tally) -> None:
                b = batches[i % len(batches)]
                numbers = w.query_numbers[b]
                if mixed:
                    keys: list[Any] = list(zip(states[b], numbers, strict=True))
                    found_set = set(db.execute(sql, [value for key in keys for value in key]).fetchall())
                else:
                    keys = numbers
                    found_set = {row[0] for row in db.execute(sql, (w.state, *numbers))}
                found = np.fromiter((key in found_set for key in keys), dtype=bool, count=len(numbers))
                t.answers["FOUND"] += int(found.sum())
                t.answers["NOT_FOUND"] += len(numbers) - int(found.sum())
                t.documents += len(numbers)
                t.wrong += int(np.count_nonzero(found != hit[b]))

            return call

        return new_call

    def _sqlite_documents(self, scenario: Scenario) -> NewCall:
        return self._sqlite_manifest(scenario)

    def _sqlite_upload(self, scenario: Scenario) -> NewCall:
        w, size = self.workload, scenario.size

        def new_call(_k: int) -> Call:
            db = self._sqlite()

            def call(i: int, t: Tally) -> None:
                numbers = upload_numbers(w.run_token, i, size)
                with db:  # one transaction, committed (fsynced, synchronous=FULL) before the next upload
                    db.executemany("INSERT INTO records VALUES (?, ?, 2)", ((w.state, n) for n in numbers))
                t.documents += size
                t.answers["CREATED"] += size

            return call

        return new_call

    def _faiss_identify(self, scenario: Scenario) -> NewCall:
        if self.faiss is None:
            raise BenchError("no FAISS baseline built")
        index, probes, rows = self.faiss.index, self.workload.probes, self.workload.probe_rows

        def call(i: int, t: Tally) -> None:
            j = i % len(probes)
            _scores, ids = index.search(probes[j : j + 1], 10)
            t.answers["TOP1_MATE" if ids[0, 0] == rows[j] else "OTHER_FIRST"] += 1
            t.documents += 1

        def new_call(_k: int) -> Call:
            import faiss

            # OpenMP's thread count is per calling thread: one per search, as the server's faiss_threads default
            faiss.omp_set_num_threads(1)
            return call

        return new_call

    def _faiss_verify(self, scenario: Scenario) -> NewCall:
        if self.faiss is None:
            raise BenchError("no FAISS baseline built")
        vectors, probes, rows = self.faiss.vectors, self.workload.probes, self.workload.probe_rows

        def call(i: int, t: Tally) -> None:
            j = i % len(probes)
            # the subject's templates (one per subject here), compared with the probe
            score = float(np.max(vectors[rows[j] : rows[j] + 1] @ probes[j]))
            t.answers["MATCH" if score >= VERIFY_THRESHOLD else "NO_MATCH"] += 1
            t.documents += 1

        return lambda _k: call


def upload_numbers(run_token: str, call_index: int, size: int) -> list[str]:
    """Distinct document numbers for the upload scenario: a run token, the call, a row (never a seeded number)."""
    prefix = f"U{run_token}{call_index:05d}"
    return [f"{prefix}{k:06d}" for k in range(size)]


# --- running a scenario: closed-loop caller threads ----------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One worker's share of a scenario run."""

    backend: str
    scenario: Scenario
    first_thread: int  # global number of this worker's first caller thread
    threads: int
    total_threads: int
    duration: float | None
    requests: int | None
    warmup: float


@dataclass
class Share:
    """What one worker measured."""

    latencies: np.ndarray  # seconds, successful calls
    errors: dict[str, int]
    answers: dict[str, int]
    wrong: int
    documents: int
    end: float  # time.monotonic() when its last caller stopped
    warmup_errors: int = 0


def _error_code(err: BaseException) -> str:
    if isinstance(err, grpc.RpcError) and hasattr(err, "code"):
        return str(err.code().name)
    if isinstance(err, IdcheckError):  # a check refused inside a stream
        return err.code.name
    return type(err).__name__


class _Pace:
    """When caller `k` stops measuring: after its share of `--requests`, at the end of `--duration` (counted from
    `go_at`), or at Ctrl-C (`stop`); the clock and the flag are read every 20 ms, not every call."""

    def __init__(self, job: Job, k: int, go_at: Any, stop: Any) -> None:
        self.quota = math.inf
        if job.requests is not None:
            self.quota = job.requests // job.total_threads + (k < job.requests % job.total_threads)
        self.deadline = go_at.value + job.duration if job.duration is not None else math.inf
        self.stop = stop
        self._next_check = 0.0

    def going(self, calls_made: int) -> bool:
        if calls_made >= self.quota:
            return False
        now = time.monotonic()
        if now >= self._next_check:
            if self.stop.is_set() or now >= self.deadline:
                return False
            self._next_check = now + 0.02
        return True


def run_share(
    job: Job,
    new_call: NewCall,
    go: Any,
    stop: Any,
    go_at: Any,
    progress: Any,
    on_ready: Callable[[], None],
) -> Share:
    """Run `job.threads` closed-loop callers: warm up, wait for `go`, then call until the duration, the request
    count or `stop`. `progress[k]` holds the calls made by global thread k (read by the progress line)."""
    results: list[tuple[list[float], Counter[str], Tally, float]] = [None] * job.threads  # type: ignore[list-item]
    warmup_errors = [0] * job.threads
    barrier = threading.Barrier(job.threads + 1)
    start_local = threading.Event()
    failures: list[BaseException] = []

    def caller(local: int) -> None:
        k = job.first_thread + local
        samples: list[float] = []
        errors: Counter[str] = Counter()
        tally = Tally()
        try:
            call = new_call(k)
            warm_until = time.monotonic() + job.warmup
            i = 10_000_000 + k  # warm-up requests: the same kind, further along the pool
            while time.monotonic() < warm_until and not stop.is_set():
                try:
                    call(i, Tally())
                except Exception:
                    warmup_errors[local] += 1
                i += job.total_threads
        except BaseException as exc:  # reported by the worker after the barrier
            failures.append(exc)
            call = None  # type: ignore[assignment]
        barrier.wait()
        start_local.wait()
        pace = _Pace(job, k, go_at, stop)
        perf = time.perf_counter
        i, n = k, 0
        while call is not None and pace.going(n):
            t0 = perf()
            try:
                call(i, tally)
                samples.append(perf() - t0)
            except Exception as err:
                errors[_error_code(err)] += 1
            i += job.total_threads
            n += 1
            progress[k] = n
        results[local] = (samples, errors, tally, time.monotonic())

    threads = [threading.Thread(target=caller, args=(j,), daemon=True) for j in range(job.threads)]
    for t in threads:
        t.start()
    barrier.wait()
    if failures:
        stop.set()
        start_local.set()
        for t in threads:
            t.join()
        raise failures[0]
    on_ready()
    go.wait()
    start_local.set()
    for t in threads:
        t.join()
    return _share(results, warmup_errors)


CallerResult = tuple[list[float], Counter[str], Tally, float]  # latencies, errors, tally, when it stopped


def _share(results: Sequence[CallerResult], warmup_errors: Sequence[int]) -> Share:
    errors: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for _s, e, tally, _end in results:
        errors.update(e)
        answers.update(tally.answers)
    return Share(
        latencies=np.fromiter(itertools.chain.from_iterable(r[0] for r in results), dtype=np.float64),
        errors=dict(errors),
        answers=dict(answers),
        wrong=sum(r[2].wrong for r in results),
        documents=sum(r[2].documents for r in results),
        end=max(r[3] for r in results),
        warmup_errors=sum(warmup_errors),
    )


def run_stream_share(
    job: Job,
    backends: Backends,
    go: Any,
    stop: Any,
    go_at: Any,
    progress: Any,
    on_ready: Callable[[], None],
) -> Share:
    """`run_share` for a stream scenario against idcheck: the callers are asyncio tasks on one event loop, each with
    its own connection (a grpc.aio channel) and its own check stream, held open for the scenario. A sync caller
    sends a stream's messages through a thread of grpc's of its own (the one reading its request iterator), which
    cost about twice the load generator's CPU per check (sync 225-255 against aio 94-182 us a check, 1 and 8
    streams, 2026-12-07): on two cores the load generator, not the server, then set the pace."""
    results: list[CallerResult] = [None] * job.threads  # type: ignore[list-item]
    warmup_errors = [0] * job.threads

    async def main() -> None:
        callers = await backends.stream_callers(job.first_thread, job.threads)
        start = asyncio.Event()
        warmed = [asyncio.Event() for _ in callers]

        async def caller(local: int) -> None:
            k = job.first_thread + local
            call = callers[local]
            warm_until = time.monotonic() + job.warmup
            i = 10_000_000 + k  # warm-up requests: the same kind, further along the pool
            while time.monotonic() < warm_until and not stop.is_set():
                try:
                    await call(i, Tally())
                except Exception:
                    warmup_errors[local] += 1
                i += job.total_threads
            warmed[local].set()
            await start.wait()
            samples: list[float] = []
            errors: Counter[str] = Counter()
            tally = Tally()
            pace = _Pace(job, k, go_at, stop)
            perf = time.perf_counter
            i, n = k, 0
            while pace.going(n):
                t0 = perf()
                try:
                    await call(i, tally)
                    samples.append(perf() - t0)
                except Exception as err:
                    errors[_error_code(err)] += 1
                i += job.total_threads
                n += 1
                progress[k] = n
            results[local] = (samples, errors, tally, time.monotonic())
            await call.close()

        tasks = [asyncio.create_task(caller(j)) for j in range(job.threads)]
        try:
            for event in warmed:
                await event.wait()
            on_ready()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            start.set()
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for c in callers:
                with contextlib.suppress(Exception):
                    await c.close()  # a caller that failed before its own close

    asyncio.run(main())
    return _share(results, warmup_errors)


MAX_THREADS = 4096  # progress slots


def _worker_main(
    wid: int,
    endpoints: Endpoints,
    workload: Workload,
    jobs: Any,
    results: Any,
    go: Any,
    stop: Any,
    go_at: Any,
    progress: Any,
) -> None:
    """A load-generating worker process: runs the jobs it is sent until it gets None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    backends = Backends(endpoints, workload)
    try:
        while (job := jobs.get()) is not None:
            try:
                ready = lambda: results.put(("ready", wid, None))  # noqa: E731
                if job.backend == "idcheck" and job.scenario.kind == "stream":
                    share = run_stream_share(job, backends, go, stop, go_at, progress, ready)
                else:
                    factory = backends.factory(job.backend, job.scenario)
                    share = run_share(job, factory, go, stop, go_at, progress, ready)
                results.put(("done", wid, share))
            except BaseException as exc:
                results.put(("failed", wid, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        backends.close()


class WorkerPool:
    """Load-generating processes (spawned: no gRPC state crosses a fork), reused by every scenario."""

    def __init__(self, processes: int, endpoints: Endpoints, workload: Workload) -> None:
        ctx = mp.get_context("spawn")
        self.go, self.stop = ctx.Event(), ctx.Event()
        self.go_at = ctx.Value("d", 0.0, lock=False)
        self.progress = ctx.Array("q", MAX_THREADS, lock=False)
        self.results = ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(processes)]
        self.procs = [
            ctx.Process(
                target=_worker_main,
                args=(
                    w,
                    endpoints,
                    workload,
                    self.jobs[w],
                    self.results,
                    self.go,
                    self.stop,
                    self.go_at,
                    self.progress,
                ),
                daemon=True,
                name=f"bench-worker-{w}",
            )
            for w in range(processes)
        ]
        for p in self.procs:
            p.start()

    @property
    def size(self) -> int:
        return len(self.procs)

    def close(self) -> None:
        for q in self.jobs:
            with contextlib.suppress(Exception):
                q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


# --- measuring and reporting ---------------------------------------------------------------------------------


def summarise(
    shares: list[Share], started: float, scenario: Scenario, interrupted: bool, processes: int
) -> dict[str, Any]:
    lat = np.concatenate([s.latencies for s in shares]) if shares else np.empty(0)
    end = max((s.end for s in shares), default=started)
    seconds = max(end - started, 1e-9)
    errors: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for s in shares:
        errors.update(s.errors)
        answers.update(s.answers)
    out: dict[str, Any] = {
        "requests": len(lat),
        "seconds": round(seconds, 6),
        "requests_per_s": round(len(lat) / seconds, 1),
        "errors": dict(errors),
        "wrong_answers": sum(s.wrong for s in shares),
        "warmup_errors": sum(s.warmup_errors for s in shares),
        "answers": dict(answers),
        "processes": processes,
        "interrupted": interrupted,
    }
    if scenario.kind in SIZED:
        out["documents"] = sum(s.documents for s in shares)
        out["documents_per_s"] = round(out["documents"] / seconds, 1)
    if len(lat):
        ms = lat * 1000.0
        out["latency_ms"] = {
            **{_pct_name(p): round(float(np.percentile(ms, p)), 4) for p in PERCENTILES},
            "max": round(float(ms.max()), 4),
            "mean": round(float(ms.mean()), 4),
        }
        out["latency_curve_ms"] = [
            [p, round(float(v), 4)] for p, v in zip(CURVE, np.percentile(ms, CURVE), strict=True)
        ]
    return out


def _pct_name(p: float) -> str:
    return "p" + f"{p:g}".replace(".", "")  # p50, p95, p99, p999


def throughput(result: dict[str, Any]) -> float:
    return float(result.get("documents_per_s", result["requests_per_s"]))


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """Ours divided by theirs: throughput (above 1: we are faster) and latencies (above 1: we are slower)."""

    def div(a: float | None, b: float | None) -> float | None:
        return float(f"{a / b:.4g}") if a is not None and b else None

    lo, lt = ours.get("latency_ms", {}), theirs.get("latency_ms", {})
    return {
        "throughput": div(throughput(ours), throughput(theirs)),
        "p50": div(lo.get("p50"), lt.get("p50")),
        "p99": div(lo.get("p99"), lt.get("p99")),
    }


def format_result(label: str, scenario: Scenario, r: dict[str, Any]) -> str:
    lat = r.get("latency_ms")
    rate = f"{r['requests_per_s']:>10,.0f} req/s"
    if "documents_per_s" in r:
        rate += f" {r['documents_per_s']:>11,.0f} {'rows' if scenario.kind == 'upload' else 'docs'}/s"
    else:
        rate += " " * 17
    if lat:
        times = "  ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p95", "p99", "p999", "max"))
    else:
        times = "no successful call"
    errors = ", ".join(f"{k} {v:,}" for k, v in sorted(r["errors"].items())) or "no errors"
    wrong = f", {r['wrong_answers']:,} WRONG answers" if r["wrong_answers"] else ""
    if r.get("warmup_errors"):
        wrong += f", {r['warmup_errors']:,} errors in the warm-up"
    partial = " (interrupted)" if r.get("interrupted") else ""
    cpu = ""
    if "client_cpu_cores" in r:
        server = f", server {r['server_cpu_cores']:.2f}" if "server_cpu_cores" in r else ""
        if "server_cpu_us_per_call" in r:
            server += f" ({r['server_cpu_us_per_call']:,.0f} us a call)"
        cpu = f"  cpu cores: client {r['client_cpu_cores']:.2f}{server}"
    return f"  {label:<8}{rate}  ms: {times}  {errors}{wrong}{cpu}{partial}"


def format_ratio(backend: str, q: dict[str, float | None]) -> str:
    def x(v: float | None) -> str:
        return f"{v:.3g}x" if v is not None else "n/a"

    return (
        f"  {'':<8}idcheck/{backend}: throughput {x(q['throughput'])}, p50 {x(q['p50'])}, p99 {x(q['p99'])} "
        "(throughput above 1 and latency below 1 favour idcheck)"
    )


class Progress:
    """One line on stderr, rewritten in place on a terminal, every 2 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text)
            sys.stderr.flush()
        elif force or now - self.last >= 2.0:
            print(text, file=sys.stderr, flush=True)
            self.last = now

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def log(text: str) -> None:
    print(f"idcheck bench: {text}", file=sys.stderr, flush=True)


# --- the plot ------------------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per scenario with the latency percentile curve of each backend; on the right, throughput against
    concurrency (single checks) and against manifest size (documents/s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"idcheck": ("-", "tab:blue"), "redis": ("--", "tab:red"), "sqlite": (":", "tab:green")}
    styles["faiss"] = ("-.", "tab:purple")
    styles["idcheck, stream"] = ("-", "tab:orange")
    scenarios = [sc for sc in result["scenarios"] if any(r.get("latency_curve_ms") for r in sc["results"].values())]
    rows = max(2, math.ceil(len(scenarios) / 3))
    fig = plt.figure(figsize=(20, 3.4 * rows + 0.6))
    grid = fig.add_gridspec(rows, 4, width_ratios=[1, 1, 1, 1.25])
    ticks = [0, 50, 90, 99, 99.9, 99.99]
    for n, sc in enumerate(scenarios):
        ax = fig.add_subplot(grid[n // 3, n % 3])
        for backend, r in sc["results"].items():
            curve = r.get("latency_curve_ms")
            if curve:
                style, colour = styles.get(backend, ("-", "black"))
                ax.plot([_nines(p) for p, _ in curve], [v for _, v in curve], style, color=colour, label=backend)
        ax.set_xticks([_nines(p) for p in ticks], [f"{p:g}" for p in ticks], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(sc["name"] + ("  (interrupted)" if sc["results"].get("idcheck", {}).get("interrupted") else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        if n % 3 == 0:
            ax.set_ylabel("latency (ms)")
        if n // 3 == rows - 1 or n + 3 >= len(scenarios):
            ax.set_xlabel("percentile")

    for row, (kind, key, xlabel, ylabel) in enumerate(
        (
            ("single", "concurrency", "concurrent callers", "checks/s"),
            ("manifest", "size", "documents per call", "documents/s"),
        )
    ):
        ax = fig.add_subplot(grid[row, 3])
        series: dict[str, list[tuple[int, float]]] = {}
        for sc in result["scenarios"]:
            if sc["kind"] != kind and not (kind == "single" and sc["kind"] == "stream"):
                continue
            for backend, r in sc["results"].items():
                if r["requests"] and (sc["kind"] == kind or backend == "idcheck"):  # baselines: no stream of their own
                    label = backend if sc["kind"] == kind else f"{backend}, stream"
                    label = label if kind == "single" else f"{backend}, {sc['concurrency']} caller(s)"
                    series.setdefault(label, []).append((sc[key], throughput(r)))
        for label, pts in series.items():
            pts.sort()
            style, colour = styles.get(label, styles.get(label.split(",")[0], ("-", "black")))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{'Single checks' if kind == 'single' else 'Manifests'}: throughput")
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    server = result["server"]
    fig.suptitle(
        f"idcheck bench: {server['records']:,} records, {server['templates']:,} templates, "
        f"{result['machine']['cpus']} cores, {result['started_at'][:16]} UTC; latency percentiles per scenario "
        "(log ms), throughput" + ("  (INTERRUPTED: partial)" if result["interrupted"] else ""),
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _nines(p: float) -> float:
    """Percentile on a 'number of nines' scale: 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3 (100 drawn at 4.5)."""
    return 4.5 if p >= 100 else -math.log10(1 - p / 100)


# --- the command ---------------------------------------------------------------------------------------------


def _count(text: str) -> int:
    """A count that may be written 1e6 or 1_000_000."""
    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        value = -1
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"not a fraction from 0 to 1: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `idcheck bench`."""
    parser.add_argument(
        "--target",
        default=None,
        metavar="HOST:PORT",
        help="benchmark this running server (default: start one on a fresh temporary data directory)",
    )
    parser.add_argument(
        "--records",
        type=_count,
        default=None,
        help="synthetic records to seed (1e6 notation; default 100,000 "
        "for a server of our own, 0 with --target: an upload with a fixed id, so seeding a target twice is a replay)",
    )
    parser.add_argument(
        "--templates",
        type=_count,
        default=None,
        help="synthetic face templates to enrol (default 10,000 for a "
        "server of our own, 0 with --target; verify and identify need them)",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated, KIND[-SIZE][@CONCURRENCY], KIND one of {', '.join(KINDS)} (default: "
        f"{DEFAULT_SCENARIOS}; without upload when --target is given)",
    )
    parser.add_argument("--duration", type=_seconds, default=10.0, help="seconds each scenario runs (default 10)")
    parser.add_argument("--requests", type=_count, default=None, help="calls per scenario instead of --duration")
    parser.add_argument("--warmup", type=_seconds, default=1.0, help="warm-up seconds before each scenario (default 1)")
    parser.add_argument(
        "--processes",
        type=_count,
        default=None,
        help=f"load-generating processes (default: one per core, {os.cpu_count()} here; never more than callers)",
    )
    parser.add_argument("--baselines", action="store_true", help="also run Redis, SQLite and raw FAISS baselines")
    parser.add_argument("--workers", type=_count, default=None, help="start our own server with `--workers N`")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for our own server (repeat: --server-arg=--threads --server-arg=32)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic register (default 7)")
    parser.add_argument(
        "--listed-share",
        type=_fraction,
        default=LISTED_SHARE,
        metavar="FRACTION",
        help=f"share of the check queries that are listed numbers, each a HIT (default {LISTED_SHARE}; a border "
        "post's real traffic finds far fewer, and every document found costs the register more than a CLEAR)",
    )
    parser.add_argument(
        "--variant-share",
        type=_fraction,
        default=VARIANT_SHARE,
        metavar="FRACTION",
        help=f"share that are OCR misreadings of listed numbers, each a POSSIBLE_MATCH (default {VARIANT_SHARE})",
    )
    parser.add_argument(
        "--query-states",
        type=_count,
        default=1,
        metavar="N",
        help="issuing states of the queries that must be CLEAR: the member's own (1, the default) or N ICAO codes "
        "drawn evenly, as the passengers of an international flight hold (listed numbers and their misreadings keep "
        "the member's state)",
    )
    parser.add_argument(
        "--seed-upload-rows",
        type=_count,
        default=SEED_UPLOAD_ROWS,
        help=f"records per seeding upload (default {SEED_UPLOAD_ROWS:,}, the server's default max_rows_per_upload; "
        "a larger register is seeded in several uploads)",
    )
    parser.add_argument(
        "--no-seed",
        action="store_true",
        help="with --target: upload and enrol nothing, the register of --records/--templates/--seed is there "
        "already (e.g. a read-only mirror of a register an earlier run seeded)",
    )
    parser.add_argument(
        "--protobuf-uploads",
        action="store_true",
        help="send uploads (seeding and the upload scenario) as protobuf records, not Arrow IPC batches",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON result file; the plot is written next to it with .png (default: idcheck-bench-<time>.json)",
    )
    group = parser.add_argument_group("connection (with --target, or --tls-dir for a server of our own)")
    group.add_argument(
        "--member",
        default=os.environ.get("IDCHECK_MEMBER") or "NZL",
        metavar="CODE",
        help="member that owns the synthetic records, also their issuing state (default NZL)",
    )
    group.add_argument("--role", default="member", choices=("border", "member", "operator"), help="default member")
    group.add_argument(
        "--tls-dir",
        type=Path,
        default=os.environ.get("IDCHECK_TLS_DIR") or None,
        metavar="DIR",
        help="mutual TLS: ca.pem and <member>-<role>.pem or client.pem (a server of our own uses DIR/server.pem)",
    )
    group.add_argument("--tls-cert", type=Path, default=None, metavar="FILE", help="client certificate (key: .key)")


class _Interrupt:
    """Ctrl-C: the first one stops the run after the scenario in progress is cut short; a second one aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.hooks: list[Callable[[], None]] = []
        self._previous: Any = None

    def __enter__(self) -> _Interrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        for hook in self.hooks:
            hook()
        print("\nidcheck bench: interrupted: finishing with what was measured (Ctrl-C again to abort)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """`idcheck bench`; returns the exit status (0, 130 when interrupted, 2 for bad options or a failed start)."""
    try:
        return Bench(args).run()
    except BenchError as exc:
        print(f"idcheck bench: {exc}", file=sys.stderr)
        return 2


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        own = args.target is None
        self.records = args.records if args.records is not None else (100_000 if own else 0)
        self.templates = args.templates if args.templates is not None else (10_000 if own else 0)
        default = DEFAULT_SCENARIOS if own else DEFAULT_SCENARIOS.replace(",upload-10000", "")
        self.scenarios = parse_scenarios(args.scenarios or default)
        if args.no_seed and own:
            raise BenchError("--no-seed needs --target: a server of our own starts empty")
        if args.requests is not None and args.requests < 1:
            raise BenchError("--requests must be at least 1")
        check_query_mix(args.listed_share, args.variant_share)
        self.duration = None if args.requests is not None else args.duration
        self.processes = args.processes or os.cpu_count() or 1
        self.arrow = ARROW_UPLOADS and not args.protobuf_uploads
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        self.output = args.output or Path(f"idcheck-bench-{stamp}.json")
        self.tls: TlsOptions | None = None
        if args.tls_dir is not None or args.tls_cert is not None:
            base = args.tls_dir if args.tls_dir is not None else args.tls_cert.parent
            self.tls = TlsOptions.from_dir(base, member=args.member, role=args.role, cert=args.tls_cert)
        self.interrupt = _Interrupt()
        self.result: dict[str, Any] = {}
        self.server: LocalServer | None = None
        self.redis: RedisBaseline | None = None
        self.faiss: FaissBaseline | None = None
        self.available: set[str] = set()

    def run(self) -> int:
        args = self.args
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.interrupt)
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="idcheck-bench-")))
            self.result = {
                "tool": "idcheck bench",
                "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "command": sys.argv,
                "machine": {
                    "cpus": os.cpu_count(),
                    "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_at_start": list(os.getloadavg()),
                },
                "settings": {
                    "duration_s": self.duration,
                    "requests": args.requests,
                    "warmup_s": args.warmup,
                    "processes": self.processes,
                    "query_pool": QUERY_POOL,
                    "query_mix": {"listed": args.listed_share, "ocr_variant": args.variant_share},
                    "query_states": args.query_states,
                    "seed": args.seed,
                    "upload_encoding": "arrow_ipc" if self.arrow else "protobuf",
                },
                "server": {"records": self.records, "templates": self.templates},
                "baselines": {},
                "scenarios": [],
                "interrupted": False,
            }
            completed = False
            try:
                self._prepare(stack, tmp)
                for n, scenario in enumerate(self.scenarios, 1):
                    if self.interrupt.event.is_set():
                        break
                    self._run_scenario(n, scenario)
                completed = True
                if not self.interrupt.event.is_set():
                    self._memory_at_end()
            finally:
                # Written whenever something was measured, also after Ctrl-C or a failure in a later scenario.
                self.result["interrupted"] = self.interrupt.event.is_set()
                self.result["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
                if self.result["scenarios"] or completed:
                    self._report()
                elif self.result["interrupted"]:
                    log("interrupted before any scenario was measured: nothing written")
        return 130 if self.result["interrupted"] else 0

    # -- preparation --

    def _prepare(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        args, server_info = self.args, self.result["server"]
        kinds = {s.kind for s in self.scenarios}
        t0 = time.perf_counter()
        listed = listed_numbers(self.records, args.seed)
        numbers, expected = make_queries(
            listed, QUERY_POOL, args.seed, listed_share=args.listed_share, variant_share=args.variant_share
        )
        vectors = probes = np.empty((0, 512), dtype=np.float32)
        probe_rows = np.empty(0, dtype=np.int64)
        if self.templates:
            from idcheck.biometrics.synthetic import FaceGenerator

            gen = FaceGenerator(seed=args.seed)
            vectors = gen.gallery(self.templates, 1, seed=1).vectors
            rng = np.random.default_rng(args.seed + 2)
            probe_rows = np.sort(rng.choice(self.templates, size=min(PROBE_POOL, self.templates), replace=False))
            probes = np.ascontiguousarray(gen.probes(probe_rows, seed=3).vectors, dtype=np.float32)
        if ({"verify", "identify"} & kinds) and not self.templates:
            log("no templates (--templates 0): verify and identify scenarios will be skipped")
        states = query_states(args.member, expected, args.query_states, args.seed)
        workload = Workload(
            args.member, numbers, states, expected, probes, probe_rows, uuid.uuid4().hex[:4].upper(), self.arrow
        )
        log(
            f"synthetic register: {self.records:,} records, {self.templates:,} templates, {QUERY_POOL:,} queries "
            f"({int(np.sum(expected == V_HIT)):,} must HIT, {int(np.sum(expected == V_POSSIBLE)):,} POSSIBLE_MATCH) "
            f"made in {time.perf_counter() - t0:.1f}s"
        )
        # the server
        if args.target is None:
            extra = list(args.server_arg)
            if args.workers is not None:
                if not server_has_flag("--workers"):
                    raise BenchError("this server has no --workers option: run without --workers")
                extra += ["--workers", str(args.workers)]
            if self.tls is not None:
                extra += ["--tls-dir", str(args.tls_dir or self.tls.ca.parent)]
            if self.templates > EXACT_UP_TO:
                extra += ["--snapshot-changes", str(max(100_000, self.templates))]  # no snapshot while seeding
            log("starting a server on a fresh data directory ...")
            # INFO: the template index logs its background rebuilds, which the benchmark waits for
            server = LocalServer(tmp / "data", extra, log_level="INFO" if self.templates > EXACT_UP_TO else "WARNING")
            stack.callback(server.stop)
            target = server.address
            server_info.update({"started": True, "command": server.command[1:], "workers": args.workers})
            self.server = server
        else:
            target = args.target
            server_info.update({"started": False, "target": target})
        conn = Connection(target, self.tls, args.member, args.role)
        server_info["address"] = target
        server_info["tls"] = self.tls is not None
        channel = conn.channel()
        stack.callback(channel.close)
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            raise BenchError(f"cannot reach the register at {target}") from None
        if self.records and args.no_seed:
            log(f"not seeding (--no-seed): the answers are checked against the {self.records:,} records seeded earlier")
        elif self.records:
            parts = max(1, math.ceil(self.records / max(1, args.seed_upload_rows)))
            how = "one durable upload" if parts == 1 else f"{parts} durable uploads"
            log(f"seeding {self.records:,} records ({how}) ...")
            try:
                bar = Progress()
                server_info["seed_records"] = up = seed_records(
                    conn,
                    channel,
                    listed,
                    args.seed,
                    arrow=self.arrow,
                    part_rows=args.seed_upload_rows,
                    progress=lambda done: bar.show(f"seeded {done:,} / {self.records:,} records"),
                )
                bar.done()
            except grpc.RpcError as err:
                raise BenchError(f"seeding records failed: {_error_code(err)}: {err.details()}") from None
            log(f"seeded in {up['seconds']:.1f}s ({up['rows_per_s']:,} rows/s){', replayed' if up['replayed'] else ''}")
        if self.templates and not args.no_seed:
            log(f"enrolling {self.templates:,} templates ...")
            bar = Progress()
            try:
                server_info["seed_templates"] = en = seed_templates(
                    conn, channel, vectors, lambda n: bar.show(f"enrolled {n:,} / {self.templates:,} templates")
                )
            except grpc.RpcError as err:
                raise BenchError(f"enrolling templates failed: {_error_code(err)}: {err.details()}") from None
            bar.done()
            if en.get("already_enrolled"):
                log("the gallery of an earlier run with the same seed is there: not enrolled again")
            else:
                log(f"enrolled in {en['seconds']:.1f}s ({en['templates_per_s']:,} templates/s)")
            if self.server is not None and self.templates > EXACT_UP_TO:
                log("waiting for the server's background rebuilds of the template index ...")
                server_info["template_index_rebuilds"] = self.server.wait_for_rebuilds()
        if (self.records or self.templates) and not args.no_seed:
            server_info["settle_seconds"] = settle(conn, channel, stop=self.interrupt.event.is_set)
        if self.server is not None:
            server_info["rss_bytes_after_seeding"] = rss_bytes(self.server.pid)
        # baselines
        endpoints = Endpoints(conn)
        if args.baselines:
            endpoints = self._baselines(stack, tmp, conn, listed, vectors, kinds)
        if self.interrupt.event.is_set():
            return
        workers = min(self.processes, max(s.concurrency for s in self.scenarios))
        log(f"starting {workers} load-generating process(es) ...")
        self.pool = WorkerPool(workers, endpoints, workload)
        stack.callback(self.pool.close)
        self.interrupt.hooks.append(self.pool.stop.set)
        self.local = Backends(endpoints, workload, self.faiss)  # in-process backends (faiss)
        self.workload = workload

    def _baselines(
        self,
        stack: contextlib.ExitStack,
        tmp: Path,
        conn: Connection,
        listed: np.ndarray,
        vectors: np.ndarray,
        kinds: set[str],
    ) -> Endpoints:
        info = self.result["baselines"]
        redis_port = sqlite_path = None
        if kinds & {"single", "stream", "manifest", "documents"}:
            try:
                r = RedisBaseline(tmp)
                stack.callback(r.stop)
                seconds = r.load(conn.member, listed)
                redis_port, self.redis = r.port, r
                self.available.add("redis")
                info["redis"] = {
                    "available": True,
                    "version": r.version,
                    "parser": r.parser,
                    "load_seconds": round(seconds, 2),
                }
                log(
                    f"baseline redis {r.version} (redis-py, {r.parser} parser): "
                    f"{len(listed):,} keys loaded in {seconds:.1f}s"
                )
                if r.parser != "hiredis":
                    log(
                        "baseline redis: redis-py parses replies in Python without the hiredis package, about half as "
                        "fast on MGET as the deployment redis-py recommends (pip install hiredis)"
                    )
            except BenchError as exc:
                info["redis"] = {"available": False, "reason": str(exc)}
                log(f"baseline redis skipped: {exc}")
        if kinds & {"single", "stream", "manifest", "documents", "upload"}:
            path = tmp / "baseline.db"
            seconds = build_sqlite(path, conn.member, listed)
            sqlite_path = str(path)
            self.available.add("sqlite")
            info["sqlite"] = {"available": True, "version": sqlite3.sqlite_version, "load_seconds": round(seconds, 2)}
            log(f"baseline sqlite {sqlite3.sqlite_version}: {len(listed):,} rows loaded in {seconds:.1f}s")
        if kinds & {"verify", "identify"}:
            if not len(vectors):
                info["faiss"] = {"available": False, "reason": "no templates (--templates 0)"}
            else:
                try:
                    self.faiss = FaissBaseline.build(vectors)
                    self.available.add("faiss")
                    info["faiss"] = {
                        "available": True,
                        "index": self.faiss.description,
                        "build_seconds": round(self.faiss.build_seconds, 2),
                        "threads": "in the benchmark process, one OpenMP thread per search",
                    }
                    log(f"baseline faiss: {self.faiss.description}, built in {self.faiss.build_seconds:.1f}s")
                except ImportError:
                    info["faiss"] = {"available": False, "reason": "faiss is not installed"}
                    log("baseline faiss skipped: faiss is not installed")
        return Endpoints(conn, redis_port, sqlite_path)

    # -- scenarios --

    def _run_scenario(self, n: int, scenario: Scenario) -> None:
        if scenario.kind in ("verify", "identify") and not self.templates:
            log(f"{scenario.name}: skipped (no templates)")
            return
        entry: dict[str, Any] = {
            "name": scenario.name,
            "kind": scenario.kind,
            "size": scenario.size,
            "concurrency": scenario.concurrency,
            "results": {},
            "ratios": {},
        }
        self.result["scenarios"].append(entry)
        print(f"[{n}/{len(self.scenarios)}] {scenario.name}", flush=True)
        backends = ["idcheck"] + [b for b in BASELINES_FOR[scenario.kind] if b in self.available]
        for backend in backends:
            if self.interrupt.event.is_set():
                break
            r = self._measure(f"[{n}/{len(self.scenarios)}] {scenario.name} {backend}", backend, scenario)
            if r is None:
                continue
            entry["results"][backend] = r
            print(format_result(backend, scenario, r), flush=True)
            if backend != "idcheck" and "idcheck" in entry["results"]:
                entry["ratios"][backend] = q = ratios(entry["results"]["idcheck"], r)
                print(format_ratio(backend, q), flush=True)
        if self.args.baselines:
            for b in BASELINES_FOR[scenario.kind]:
                if b not in self.available and b not in entry["results"]:
                    reason = self.result["baselines"].get(b, {}).get("reason", "not available")
                    entry.setdefault("skipped", {})[b] = reason

    def _measure(self, label: str, backend: str, scenario: Scenario) -> dict[str, Any] | None:
        args, pool = self.args, self.pool
        threads = scenario.concurrency
        if backend == "faiss":
            return self._measure_in_process(label, backend, scenario)
        workers = min(pool.size, threads)
        split = [threads // workers + (w < threads % workers) for w in range(workers)]
        server_pids = self._server_pids(backend)
        client_pids = [p.pid for p in pool.procs[:workers] if p.pid is not None]
        cpu_before = (0.0, 0.0)
        pool.go.clear()
        pool.stop.clear()
        for k in range(threads):
            pool.progress[k] = 0
        first = 0
        for w, count in enumerate(split):
            job = Job(backend, scenario, first, count, threads, self.duration, args.requests, args.warmup)
            pool.jobs[w].put(job)
            first += count
        bar = Progress()
        bar.show(f"{label}: warming up ({args.warmup:g}s) ...", force=True)
        ready, shares, failed = 0, list[Share](), list[str]()
        started = None
        while len(shares) + len(failed) < workers:
            if started is None and (ready == workers or self.interrupt.event.is_set()):
                cpu_before = (cpu_seconds(server_pids), cpu_seconds(client_pids))
                started = time.monotonic()
                pool.go_at.value = started
                pool.go.set()
            try:
                what, _worker, payload = pool.results.get(timeout=0.25)
            except queue.Empty:
                if not all(p.is_alive() for p in pool.procs[:workers]):
                    raise BenchError("a load-generating process died") from None
                if started is not None:
                    done = sum(pool.progress[k] for k in range(threads))
                    elapsed = max(time.monotonic() - started, 1e-9)
                    goal = f"{elapsed:.0f}/{self.duration:g}s" if self.duration else f"{done:,}/{args.requests:,}"
                    bar.show(f"{label}: {goal}, {done:,} calls, {done / elapsed:,.0f}/s")
                continue
            if what == "ready":
                ready += 1
            elif what == "done":
                shares.append(payload)
            else:
                failed.append(payload)
                if started is None:  # the others wait for `go`: release them, and stop them
                    pool.stop.set()
                    ready = workers
        bar.done()
        pool.go.clear()
        if failed:
            log(f"{label}: failed:\n{failed[0]}")
            return None
        assert started is not None
        out = summarise(shares, started, scenario, self.interrupt.event.is_set(), workers)
        # CPU used while measuring, in cores: shows which side of a two-core machine was the bottleneck
        seconds = max(out["seconds"], 1e-3)
        out["client_cpu_cores"] = round((cpu_seconds(client_pids) - cpu_before[1]) / seconds, 2)
        if server_pids:
            server_cpu = cpu_seconds(server_pids) - cpu_before[0]
            out["server_cpu_cores"] = round(server_cpu / seconds, 2)
            # What one call cost the server: what sizes a deployment (calls a second a core can answer), whatever
            # limited the calls a second of this run.
            if out["requests"]:
                out["server_cpu_us_per_call"] = round(server_cpu / out["requests"] * 1e6, 1)
        return out

    def _server_pids(self, backend: str) -> list[int]:
        """The processes answering `backend`'s calls, when they run on this machine and we know them."""
        if backend == "idcheck" and self.server is not None:
            return [self.server.pid]
        if backend == "redis" and self.redis is not None:
            return [self.redis.proc.pid]
        return []

    def _measure_in_process(self, label: str, backend: str, scenario: Scenario) -> dict[str, Any] | None:
        """FAISS baselines: caller threads in this process over the one in-memory index (FAISS releases the GIL)."""
        args, threads = self.args, scenario.concurrency
        go, stop = threading.Event(), self.pool.stop
        stop.clear()
        go_at = type("GoAt", (), {"value": 0.0})()
        progress = [0] * threads
        job = Job(backend, scenario, 0, threads, threads, self.duration, args.requests, args.warmup)
        factory = self.local.factory(backend, scenario)
        out: list[Share] = []
        failure: list[BaseException] = []
        ready = threading.Event()

        def body() -> None:
            try:
                out.append(run_share(job, factory, go, stop, go_at, progress, ready.set))
            except BaseException as exc:
                failure.append(exc)
                ready.set()

        worker = threading.Thread(target=body, daemon=True)
        worker.start()
        bar = Progress()
        bar.show(f"{label}: warming up ({args.warmup:g}s) ...", force=True)
        ready.wait()
        cpu_before = time.process_time()
        go_at.value = started = time.monotonic()
        go.set()
        while worker.is_alive():
            worker.join(0.25)
            elapsed = max(time.monotonic() - started, 1e-9)
            bar.show(f"{label}: {elapsed:.0f}s, {sum(progress):,} calls, {sum(progress) / elapsed:,.0f}/s")
        bar.done()
        if failure:
            log(f"{label}: failed: {failure[0]}")
            return None
        result = summarise(out, started, scenario, self.interrupt.event.is_set(), 1)
        # this whole process, callers and all: the index search is the client here
        result["client_cpu_cores"] = round((time.process_time() - cpu_before) / max(result["seconds"], 1e-3), 2)
        return result

    def _memory_at_end(self) -> None:
        """Resident memory of our own server as the last scenario left it, then again once it reports no
        background work (index merges and snapshots of the records the scenarios uploaded, checkpoints): the first
        figure can catch a merge holding the old and the new index columns at once."""
        if self.server is None:
            return
        server = self.result["server"]
        server["rss_bytes_at_end"] = rss_bytes(self.server.pid)
        conn = self.local.endpoints.conn
        channel = conn.channel(own_connection=True)
        try:
            server["settle_seconds_at_end"] = settle(
                conn, channel, timeout=600, after="the scenarios", stop=self.interrupt.event.is_set
            )
        finally:
            channel.close()
        server["rss_bytes_after_settling"] = rss_bytes(self.server.pid)

    # -- results --

    def _report(self) -> None:
        result = self.result
        if self.server is not None and "rss_bytes_at_end" not in result["server"]:  # interrupted, or failed
            result["server"]["rss_bytes_at_end"] = rss_bytes(self.server.pid)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps(result, indent=2) + "\n")
        png = self.output.with_suffix(".png")
        try:
            plot(result, png)
            result_png = str(png)
        except ImportError:
            result_png = "not drawn: matplotlib is not installed"
        print(summary_table(result), flush=True)
        print(f"results: {self.output}\nplot:    {result_png}", flush=True)


def summary_table(result: dict[str, Any]) -> str:
    """The closing table: one line per scenario and backend."""
    head = (
        f"{'scenario':<18}{'backend':<9}{'req/s':>11}{'docs/s':>12}"
        + "".join(f"{_pct_name(p):>9}" for p in PERCENTILES)
        + f"{'max':>9}  errors / wrong"
    )
    lines = ["", "summary (latency in ms)" + ("  INTERRUPTED: partial figures" if result["interrupted"] else ""), head]
    for sc in result["scenarios"]:
        for backend, r in sc["results"].items():
            lat = r.get("latency_ms", {})
            docs = f"{r['documents_per_s']:>12,.0f}" if "documents_per_s" in r else f"{'':>12}"
            times = "".join(f"{lat.get(_pct_name(p), float('nan')):>9.3f}" for p in PERCENTILES)
            errors = sum(r["errors"].values())
            lines.append(
                f"{sc['name']:<18}{backend:<9}{r['requests_per_s']:>11,.0f}{docs}{times}"
                f"{lat.get('max', float('nan')):>9.2f}  {errors:,} / {r['wrong_answers']:,}"
                + ("  (interrupted)" if r.get("interrupted") else "")
            )
        for b, reason in sc.get("skipped", {}).items():
            lines.append(f"{sc['name']:<18}{b:<9}skipped: {reason}")
    return "\n".join(lines)


__all__ = ["Scenario", "Workload", "add_arguments", "make_queries", "parse_scenarios", "run", "summary_table"]
