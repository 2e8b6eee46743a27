"""What the server answers when the load generator leaves it the cores: h2load (nghttp2, written in C) as the client.

`idcheck bench` drives the server with Python callers (grpcio), which on this 2-core machine take 0.6 to 0.9 of a
core for single checks: with `serve --workers 2` each worker holds a core, and the load generator competes with
both, so what two workers can answer never shows. h2load sends gRPC calls as the HTTP/2 requests they are (a POST of
length-prefixed protobuf messages with `te: trailers`) for a few microseconds of CPU each.

h2load knows nothing of gRPC: it counts HTTP answers, not gRPC statuses, and never reads an answer. So every run is
checked afterwards in the register's audit log, which has a row for every check answered: a run passes only if its
rows are the checks sent, each with the verdict its query must get (the rules of `idcheck bench`). A check refused
(an overload, a rate limit) or answered wrongly fails the run. A counted run (`--calls`, `--streams`, and the
latency run) must leave exactly its checks' rows; a timed one (`--duration`, the default) at least the rows of every
request h2load saw answered and at most those of every request it started, since it stops at the deadline with
requests in flight that the server may have answered (a stream, in part).

Scenarios, for each worker count, each on a server started for it (so that its audit rows are its own):

- `latency`: `--latency-calls` CheckDocument calls one at a time on one connection (one server process only), each
  call's time from h2load's per-request log: p50, p95, p99, p99.9 of the server's answer without a Python client's
  own time around it. Every call checks the same listed document, as in `unary`.

- `unary`: CheckDocument calls for `--duration` seconds (or `--calls` of them) over `--connections` connections,
  `--in-flight` calls at once on each (HTTP/2 streams). h2load sends one body, so every call checks the same listed
  document: a HIT, the costlier answer (the record confirmed from the store, the officer's action built from it).
- `unary-clear`: the same with an unlisted document: a CLEAR, the answer to nearly every check at a border (97 % of
  the bench's mix), and the cheaper one.
- `stream`: CheckDocumentStreams of 100 checks each (the bench's mix: 2 % listed, 1 % misread, the rest unlisted)
  for `--duration` seconds (or `--streams` of them) over `--stream-connections` connections, one stream on each at a
  time. h2load sends a stream's checks without waiting for their answers (pipelined), as a gate never does: this is
  what the server can answer, not one gate's latency.

With several workers, the kernel hands each new connection to one of them (`SO_REUSEPORT` hashes the connection),
so a run may load one worker more than the other: each run records every worker's CPU time, which shows it. More
connections even it out; the defaults stay within each worker's limits (32 calls worked on or waiting, 64 check
streams) however the kernel spreads them, short of a very uneven spread. A timed run keeps every connection sending
to the end; a counted one gives each connection its share of the requests, so the worker with fewer connections
runs out first and the end of the run is served by one worker alone (its CPU time then shows half the other's).

    apt-get install nghttp2-client                                  # h2load (Debian's package)
    .venv/bin/python bench/h2load.py --records 1e6 --workers 1 2    # about 1.5 minutes on 2 cores

Writes `bench/results/h2load-<records>.json`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf.message import Message

from idcheck.client.bench import (
    V_CLEAR,
    VERDICT_NAMES,
    Connection,
    LocalServer,
    cpu_seconds,
    listed_numbers,
    make_queries,
    seed_records,
    settle,
)
from idcheck.client.files import ipc_bytes
from idcheck.client.register import check_request
from idcheck.v1 import register_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 7
MEMBER = "NZL"
STREAM_CHECKS = 100
SERVICE = "/idcheck.v1.DocumentRegister/"


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    body: bytes
    requests: int  # h2load's requests (calls or streams) in all; 0: as many as `seconds` allows
    connections: int
    in_flight: int
    per_request: collections.Counter[str]  # audit rows by verdict each request must leave
    latency: bool = False  # one call at a time: each call's time logged (percentiles), one server process only
    seconds: float = 0.0  # with requests 0: how long h2load sends (-D), every connection busy to the end

    def h2load_args(self) -> list[str]:
        """How much h2load sends: a request count, or a duration (-D)."""
        return ["-n", str(self.requests)] if self.requests else ["-D", f"{round(self.seconds * 1000)}ms"]


def frame(message: Message) -> bytes:
    """One gRPC message as it travels in an HTTP/2 body: not compressed, its length, its bytes."""
    data = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data


def typed_check(number: str) -> pb.CheckDocumentRequest:
    return check_request(MEMBER, number, 0, "", "", "")


def scenarios(listed: np.ndarray, args: argparse.Namespace) -> list[Scenario]:
    numbers, expected = make_queries(listed, STREAM_CHECKS, SEED)
    hit = listed[len(listed) // 2].decode()
    clear = numbers[int(np.flatnonzero(expected == V_CLEAR)[0])]  # unlisted, and no misreading of a listed one
    per_stream = collections.Counter(VERDICT_NAMES[pb.Verdict.ValueType(int(v))] for v in expected)
    calls = args.calls or 0
    return [
        Scenario(
            "latency",
            "CheckDocument",
            frame(typed_check(hit)),
            args.latency_calls,
            1,
            1,
            collections.Counter({"HIT": 1}),
            latency=True,
        ),
        *(
            Scenario(
                name,
                "CheckDocument",
                frame(typed_check(number)),
                calls,
                min(args.connections, calls) if calls else args.connections,
                args.in_flight,
                collections.Counter({verdict: 1}),
                seconds=args.seconds,
            )
            for name, number, verdict in (("unary", hit, "HIT"), ("unary-clear", clear, "CLEAR"))
        ),
        Scenario(
            "stream",
            "CheckDocumentStream",
            b"".join(frame(typed_check(n)) for n in numbers),
            args.streams or 0,
            # h2load wants a request for each connection at least
            min(args.stream_connections, args.streams) if args.streams else args.stream_connections,
            1,
            per_stream,
            seconds=args.seconds,
        ),
    ]


def audit_verdict(scenario: Scenario, found: collections.Counter[str], run: dict[str, Any]) -> tuple[bool, dict]:
    """Whether the audit rows a run left are the checks it sent, each with its verdict, and the rows it had to
    leave: exactly `per_request` for each request of a counted run; for a timed run, at least that for each request
    answered and at most that for each request started (h2load stops at the deadline with requests in flight, which
    the server may have answered, or, for a stream, answered in part)."""
    bad = run["failed"] or run["errored"] or run["succeeded"] != run["done"]
    if scenario.requests:
        expected = {v: c * scenario.requests for v, c in scenario.per_request.items()}
        return not bad and run["succeeded"] == scenario.requests and found == expected, {"exactly": expected}
    low = {v: c * run["succeeded"] for v, c in scenario.per_request.items()}
    high = {v: c * run["started"] for v, c in scenario.per_request.items()}
    within = set(found) <= set(high) and all(low[v] <= found[v] <= high[v] for v in low)
    return not bad and run["succeeded"] > 0 and within, {"at_least": low, "at_most": high}


_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s)")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx")
_TIME = re.compile(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)")
_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _MS[unit]


def run_h2load(address: str, scenario: Scenario, body: Path, *, path: str | None = None) -> dict[str, Any]:
    """One h2load run; what it reports, and the CPU it took (and for a latency scenario, percentiles of the calls'
    times from h2load's per-request log: the time from sending a call to the end of its answer). `path`: the
    HTTP path called, when not the register's method `scenario.method`."""
    log = body.with_suffix(".log")
    log.unlink(missing_ok=True)  # h2load appends to its log
    cmd = [
        "h2load", *scenario.h2load_args(), "-c", str(scenario.connections), "-m", str(scenario.in_flight),
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", f"x-idcheck-member: {MEMBER}", "-H", "x-idcheck-role: border",
        *([f"--log-file={log}"] if scenario.latency else []),
        f"http://{address}{path or SERVICE + scenario.method}",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = done.stdout
    finished, requests, status, times = (p.search(out) for p in (_FINISHED, _REQUESTS, _STATUS, _TIME))
    if done.returncode != 0 or not (finished and requests and status and times):
        raise SystemExit(f"h2load failed (exit {done.returncode}):\n{out}\n{done.stderr}")
    total, started, finished_requests, succeeded, failed, errored = map(int, requests.groups())
    percentiles = {}
    if scenario.latency:
        ms = np.loadtxt(log, usecols=2, ndmin=1) / 1000  # microseconds until the end of each answer
        percentiles = {f"p{p:g}": round(float(np.percentile(ms, p)), 3) for p in (50, 95, 99, 99.9)}
    return {
        "command": cmd,
        "seconds": _ms(*finished.groups()) / 1000,
        "requests": total,
        "started": started,
        "done": finished_requests,
        "succeeded": succeeded,
        "failed": failed,
        "errored": errored,
        "http_2xx": int(status.group(1)),
        "request_ms": {
            "min": _ms(times.group(1), times.group(2)),
            "max": _ms(times.group(3), times.group(4)),
            "mean": _ms(times.group(5), times.group(6)),
            **percentiles,
        },
        "h2load_cpu_seconds": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 3),
    }


def audit_since(database: Path, call_id: int) -> collections.Counter[str]:
    """Audited documents by verdict of the calls numbered after `call_id`: the rows of the `audit` table, and the plain
    CLEARs a manifest's call stores packed in one `audit_clear` row."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT verdict, COUNT(*) FROM audit WHERE call_id > ? GROUP BY verdict", (call_id,))
        found = collections.Counter(dict(rows.fetchall()))
        packed = conn.execute("SELECT COALESCE(SUM(count), 0) FROM audit_clear WHERE call_id > ?", (call_id,))
        found["CLEAR"] += int(packed.fetchone()[0])
        return +found  # no zero counts: a run of HITs only found {"HIT": n}


def last_call_id(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(call_id), 0) FROM audit_calls").fetchone()[0])


def measure(data: Path, workers: int, scenario: Scenario, body: Path) -> dict[str, Any]:
    """Start a server of `workers` processes on `data`, run the scenario against it, stop it, check its audit."""
    database = data / "register.db"
    server = LocalServer(data, ["--workers", str(workers)])
    try:
        conn = Connection(server.address, None, MEMBER, "border")
        with conn.channel() as channel:
            settle(conn, channel)
        since = last_call_id(database)
        processes = worker_pids(server.pid) if workers > 1 else [server.pid]
        cpu = [cpu_seconds([pid]) for pid in processes]
        result = run_h2load(server.address, scenario, body)
        used = [cpu_seconds([pid]) - before for pid, before in zip(processes, cpu, strict=True)]
        result["server_cpu_seconds"] = round(sum(used), 3)
        result["worker_cpu_seconds"] = [round(u, 3) for u in used]  # the kernel spreads connections, not calls
    finally:
        server.stop()  # the audit writer commits everything before the server ends
    found = audit_since(database, since)
    correct, expected = audit_verdict(scenario, found, result)
    checks = result["succeeded"] * sum(scenario.per_request.values())
    result.update(
        workers=workers,
        scenario=scenario.name,
        checks=checks,
        checks_per_s=round(checks / result["seconds"]),
        server_cores=round(result["server_cpu_seconds"] / result["seconds"], 2),
        h2load_cores=round(result["h2load_cpu_seconds"] / result["seconds"], 2),
        audit_rows=dict(found),
        expected_rows=expected,
        correct=correct,
    )
    return result


def worker_pids(supervisor: int) -> list[int]:
    """The worker processes of `serve --workers N` (the supervisor's children)."""
    return [int(pid) for pid in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()]


def seed(data: Path, records: int) -> np.ndarray:
    """The synthetic register of `records` in `data` (replayed, not added again, when it is there already)."""
    listed = listed_numbers(records, SEED)
    server = LocalServer(data, [])
    try:
        conn = Connection(server.address, None, MEMBER, "member")
        with conn.channel() as channel:
            t = time.perf_counter()
            seeded = seed_records(conn, channel, listed, SEED, arrow=True)
            print(f"seeded {seeded['rows']:,} records in {time.perf_counter() - t:.1f}s", flush=True)
    finally:
        server.stop()
    return listed


def unlisted_numbers(listed: np.ndarray, count: int) -> list[str]:
    """`count` numbers the register answers CLEAR: fresh ones (neither listed nor misreadings of listed ones, as
    `make_queries` draws them), less those that happen to be listed or to fold onto a listed one."""
    numbers, expected = make_queries(listed, 2 * count, SEED, listed_share=0.0, variant_share=0.0)
    clear = [n for n, v in zip(numbers, expected, strict=True) if v == V_CLEAR][:count]
    if len(clear) < count:
        raise SystemExit(f"only {len(clear):,} CLEAR numbers of the {count:,} wanted")
    return clear


def manifest_ipc(numbers: list[str], states: list[str] | None = None) -> bytes:
    """A manifest of typed numbers issued by MEMBER (or by `states`, one a number), as CheckManifest's Arrow IPC
    payload."""
    return ipc_bytes(pa.table({"issuing_state": states or [MEMBER] * len(numbers), "document_number": numbers}))


def result_file(benchmark: str, records: int, tool: str, version_command: list[str], **fields: Any) -> dict[str, Any]:
    """The head every result file of these scripts starts with: what ran, on how many records, when, on what
    machine, and the version of the outside tool it measured with (`tool`, printed by `version_command`)."""
    return {
        "benchmark": benchmark,
        "records": records,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        tool: subprocess.run(version_command, capture_output=True, text=True).stdout.strip(),
        **fields,
    }


def write_result(result: dict[str, Any], out: Path) -> None:
    """Write a result file and say where."""
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=lambda s: int(float(s)), default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes, one run each")
    parser.add_argument(
        "--latency-calls", type=int, default=10_000, help="CheckDocument calls one at a time (latency percentiles)"
    )
    parser.add_argument(
        "--duration",
        dest="seconds",
        type=float,
        default=10.0,
        help="seconds of each unary, unary-clear and stream run (h2load -D: every connection sends to the end)",
    )
    parser.add_argument("--calls", type=int, default=None, help="CheckDocument calls per run, instead of --duration")
    parser.add_argument(
        "--streams", type=int, default=None, help=f"streams of {STREAM_CHECKS:,} checks per run, instead of --duration"
    )
    parser.add_argument(
        "--stream-connections",
        type=int,
        default=64,
        help="connections of the stream runs, one stream each at a time (at most max_check_streams, 64, per worker)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help="connections of the CheckDocument runs (the kernel spreads connections, not calls, over the workers)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=1,
        help="CheckDocument calls at once per connection (in all at most the server's threads plus queue_calls, 32 by "
        "default: beyond, calls are refused with RESOURCE_EXHAUSTED, and the run fails its audit check)",
    )
    parser.add_argument("--data", type=Path, default=None, help="data directory to keep (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("latency_calls", "calls", "streams", "connections", "stream_connections", "in_flight"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.seconds >= 0.001:
        parser.error("--duration must be at least 0.001 seconds")
    if shutil.which("h2load") is None:
        print("h2load is not installed: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="idcheck-h2load-") as tmp:
        data = args.data or Path(tmp) / "data"
        listed = seed(data, args.records)
        runs = []
        for scenario in scenarios(listed, args):
            body = Path(tmp) / f"{scenario.name}.bin"
            body.write_bytes(scenario.body)
            for workers in [min(args.workers)] if scenario.latency else args.workers:
                r = measure(data, workers, scenario, body)
                runs.append(r)
                print(
                    f"{scenario.name:11s} workers {workers}: {r['checks_per_s']:>7,} checks/s "
                    f"({r['checks']:,} in {r['seconds']:.2f}s), server {r['server_cores']:.2f} cores, "
                    f"(workers {'/'.join(f'{c:.1f}' for c in r['worker_cpu_seconds'])} s), "
                    f"h2load {r['h2load_cores']:.2f} cores, request mean {r['request_ms']['mean']:.2f} ms"
                    + "".join(f", {k} {v:.3f} ms" for k, v in r["request_ms"].items() if k.startswith("p"))
                    + ", "
                    f"{'audit rows as expected' if r['correct'] else 'WRONG: ' + json.dumps(r['audit_rows'])}",
                    flush=True,
                )
    result = result_file("h2load", args.records, "h2load", ["h2load", "--version"], runs=runs)
    write_result(result, args.output or RESULTS / f"h2load-{args.records}.json")
    return 0 if all(r["correct"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
