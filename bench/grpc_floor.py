"""What a `CheckDocument` call and a `CheckManifest` call cost the server beyond grpc-python's own cost of a call.

Two servers in turn, each one process answering on one CPU, each sent the same unary calls by h2load (nghttp2's
load generator, in C) over the same connections for the same time:

- `empty`: a bare `grpc.server` (16 threads, no interceptors) whose one method answers every request with an
  empty message: grpc-python's floor, the CPU any unary call costs a server written with it;
- `check`: the register (`idcheck serve`, one worker, on a seeded data directory), every call a CLEAR check of an
  unlisted number, each answer checked in the audit log as `bench/h2load.py` checks it.

Then the same pair for a manifest: `empty-manifest`, the empty server sent the bytes of a `CheckManifestRequest` of
1,000 unlisted numbers (an Arrow table of about 20 KB), and `manifest`, the register answering that manifest, its
1,000 CLEARs counted in the audit log for every call.

For each: calls/s, the server's CPU per call (from /proc), and h2load's figures; then what the register adds to the
floor. This is why one process answers a few thousand `CheckDocument` calls a second while check streams, which
pay for a call once per stream, answer several times more; and it shows how much of a manifest's cost is
grpc-python's and how much the register's own (README "Performance").

    apt-get install nghttp2-client
    .venv/bin/python bench/grpc_floor.py --records 1e6      # about a minute and a half on 2 cores

Writes `bench/results/grpc-floor.json`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2load  # bench/h2load.py: the h2load runs, the seeding and the audit check

from idcheck.client.bench import cpu_seconds, free_port
from idcheck.v1 import register_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
EMPTY_METHOD = "/floor.Empty/Call"
MANIFEST = 1_000  # documents in the manifest of the `manifest` pair


def serve_empty(port: int, cpu: int) -> None:
    """The empty server (run in a process of its own): answers EMPTY_METHOD with an empty message until killed."""
    os.sched_setaffinity(0, {cpu})  # as `idcheck serve` answers calls on one CPU

    def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b""

    service, method = EMPTY_METHOD.strip("/").split("/")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(answer)}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def measure_empty(args: argparse.Namespace, tmp: Path, body: bytes, name: str) -> dict[str, Any]:
    """h2load against the empty server, each call sending `body` (one framed gRPC message): calls/s and its CPU per
    call."""
    port = free_port()
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-empty", str(port), "--cpu", str(cpu)],
        stdout=subprocess.PIPE,
        text=True,
        process_group=0,  # in the benchmark's session, as LocalServer starts the register (autogroup scheduling)
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "serving":
            raise SystemExit("the empty server did not start")
        body_file = tmp / f"{name}.bin"
        body_file.write_bytes(body)
        scenario = h2load.Scenario(name, "", body, 0, args.connections, 1, collections.Counter(), seconds=args.duration)
        before = cpu_seconds([proc.pid])
        result = h2load.run_h2load(f"127.0.0.1:{port}", scenario, body_file, path=EMPTY_METHOD)
        result["server_cpu_seconds"] = round(cpu_seconds([proc.pid]) - before, 3)
    finally:
        proc.kill()
        proc.wait()
    if result["failed"] or result["errored"] or not result["succeeded"]:
        raise SystemExit(f"h2load's calls to the empty server failed: {json.dumps(result)}")
    return _per_call(name, result)


def measure_check(args: argparse.Namespace, data: Path, tmp: Path, listed: np.ndarray) -> dict[str, Any]:
    """h2load's CLEAR CheckDocument calls against the register (one process), checked in its audit log."""
    options = argparse.Namespace(
        latency_calls=1,
        calls=None,
        streams=None,
        connections=args.connections,
        stream_connections=1,
        in_flight=1,
        seconds=args.duration,
    )
    scenario = next(s for s in h2load.scenarios(listed, options) if s.name == "unary-clear")
    body = tmp / "clear.bin"
    body.write_bytes(scenario.body)
    result = h2load.measure(data, 1, scenario, body)
    if not result["correct"]:
        raise SystemExit(f"the register's answers were not all audited as CLEAR: {json.dumps(result['audit_rows'])}")
    return _per_call("check", result)


def manifest_request(listed: np.ndarray) -> bytes:
    """A framed CheckManifestRequest of MANIFEST unlisted numbers, none of them an OCR misreading of a listed one."""
    payload = h2load.manifest_ipc(h2load.unlisted_numbers(listed, MANIFEST))
    return h2load.frame(pb.CheckManifestRequest(queries_arrow_ipc=payload))


def measure_manifest(args: argparse.Namespace, data: Path, tmp: Path, body: bytes) -> dict[str, Any]:
    """h2load's CheckManifest calls of MANIFEST CLEAR documents against the register (one process), every document
    of every call checked in its audit log."""
    scenario = h2load.Scenario(
        "manifest",
        "CheckManifest",
        body,
        0,
        args.connections,
        1,
        collections.Counter({"CLEAR": MANIFEST}),
        seconds=args.duration,
    )
    body_file = tmp / "manifest.bin"
    body_file.write_bytes(body)
    result = h2load.measure(data, 1, scenario, body_file)
    if not result["correct"]:
        raise SystemExit(f"the manifests' documents were not all audited as CLEAR: {json.dumps(result['audit_rows'])}")
    return _per_call("manifest", result)


def _per_call(name: str, result: dict[str, Any]) -> dict[str, Any]:
    calls = result["succeeded"]
    return {
        "server": name,
        "calls": calls,
        "seconds": result["seconds"],
        "calls_per_s": round(calls / result["seconds"]),
        "server_cpu_seconds": result["server_cpu_seconds"],
        "server_cpu_us_per_call": round(result["server_cpu_seconds"] / calls * 1e6, 1),
        "h2load_cpu_seconds": result["h2load_cpu_seconds"],
        "request_ms": result["request_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=lambda s: int(float(s)), default=100_000, help="records of the register")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of h2load per server")
    parser.add_argument("--connections", type=int, default=32, help="h2load connections, one call at a time on each")
    parser.add_argument("--data", type=Path, default=None, help="data directory to keep (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--serve-empty", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_empty is not None:
        serve_empty(args.serve_empty, args.cpu)
        return 0
    if args.records < 1 or args.connections < 1 or not args.duration >= 0.001:
        parser.error("--records and --connections must be at least 1, --duration at least 0.001 seconds")
    if shutil.which("h2load") is None:
        print("h2load is not installed: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="idcheck-floor-") as name:
        tmp = Path(name)
        data = args.data or tmp / "data"
        listed = h2load.seed(data, args.records)
        manifest = manifest_request(listed)
        empty = measure_empty(args, tmp, b"\0\0\0\0\0", "empty")  # one gRPC message of 0 bytes
        check = measure_check(args, data, tmp, listed)
        empty_manifest = measure_empty(args, tmp, manifest, "empty-manifest")
        checked_manifest = measure_manifest(args, data, tmp, manifest)
    runs = [empty, check, empty_manifest, checked_manifest]
    for r in runs:
        print(
            f"{r['server']:14s} {r['calls_per_s']:>7,} calls/s, {r['server_cpu_us_per_call']:6.1f} µs of server CPU "
            f"a call ({r['calls']:,} calls in {r['seconds']:.2f}s), request mean {r['request_ms']['mean']:.2f} ms",
            flush=True,
        )
    added = round(check["server_cpu_us_per_call"] - empty["server_cpu_us_per_call"], 1)
    print(f"the register's check adds {added} µs of server CPU to grpc-python's cost of a call")
    added_manifest = round(checked_manifest["server_cpu_us_per_call"] - empty_manifest["server_cpu_us_per_call"], 1)
    print(
        f"the register's manifest of {MANIFEST:,} adds {added_manifest} µs of server CPU to grpc-python's cost of a "
        f"call of its {len(manifest):,} bytes"
    )
    result = h2load.result_file(
        "grpc-floor",
        args.records,
        "h2load",
        ["h2load", "--version"],
        grpcio=grpc.__version__,
        connections=args.connections,
        runs=runs,
        check_minus_empty_us_per_call=added,
        manifest_documents=MANIFEST,
        manifest_request_bytes=len(manifest),
        manifest_minus_empty_us_per_call=added_manifest,
    )
    h2load.write_result(result, args.output or RESULTS / "grpc-floor.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
