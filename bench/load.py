"""First load script for the document register, kept for `make bench-service` and its figures in the README.

`idcheck bench` (idcheck/client/bench.py) is the benchmark tool that grew out of it: more scenarios, load from
several processes, baselines (Redis, SQLite, raw FAISS), JSON and PNG results.

Starts `idcheck serve` on a fresh data directory (or targets a running server with --target), uploads a
synthetic register through the real UploadRecords RPC, then measures:

  upload      rows/s of the upload, from first message sent to durable acknowledgement
  single      CheckDocument at concurrency 1: p50/p95/p99/max latency
  manifest    CheckManifest with --manifest-size queries per call (an Arrow table): documents/s, call latency
  documents   the same manifests through CheckDocuments (a protobuf message per query and per answer)

Queries mix listed documents (HIT), OCR variants (POSSIBLE_MATCH) and unlisted ones (CLEAR).
Results are printed and written as JSON to bench/results/.

    python bench/load.py --records 1000000
    python bench/load.py --records 20000 --seconds 2      # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

from idcheck.client.bench import LocalServer, upload_stream
from idcheck.client.files import ipc_bytes
from idcheck.synthetic import distinct_numbers, synthetic_numbers
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
MEMBER = "NZL"
PATTERN = "LL#######"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000.0
    return {
        "count": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "p999_ms": float(np.percentile(a, 99.9)),
        "max_ms": float(a.max()),
    }


def start_server(data_dir: Path, tls_dir: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """A server on a fresh data directory, rate limit off (the bench tool's LocalServer): (process, address).
    The other bench scripts start theirs with this too."""
    server = LocalServer(data_dir, ["--tls-dir", str(tls_dir)] if tls_dir else [])
    return server.proc, server.address


def build_register(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return distinct_numbers(PATTERN, n, rng, draw=int(n * 1.02) + 100)


def upload(
    stub: register_pb2_grpc.DocumentRegisterStub,
    md: tuple[tuple[str, str], ...],
    numbers: np.ndarray,
) -> dict[str, float]:
    """The register in one durable upload of Arrow batches (the bulk path `idcheck upload` takes)."""
    listed = numbers.astype(str).tolist()
    t0 = time.perf_counter()
    resp = stub.UploadRecords(
        upload_stream(MEMBER, listed, f"bench-{len(listed)}-{time.time_ns()}", "bench", arrow=True),
        metadata=md,
        timeout=3600,
    )
    elapsed = time.perf_counter() - t0
    assert resp.created == len(numbers), resp
    return {"rows": len(numbers), "seconds": elapsed, "rows_per_s": len(numbers) / elapsed}


def make_queries(numbers: np.ndarray, count: int, seed: int = 11) -> list[pb.DocumentQuery]:
    """2% listed, 1% OCR variants of listed numbers, the rest unlisted."""
    rng = np.random.default_rng(seed)
    fresh = synthetic_numbers(PATTERN, count, rng)
    kinds = rng.random(count)
    picks = numbers[rng.integers(0, len(numbers), count)]
    out = []
    for i in range(count):
        if kinds[i] < 0.02:
            number = picks[i].decode()
        elif kinds[i] < 0.03:
            number = picks[i].decode().replace("0", "O", 1).replace("1", "I", 1)
        else:
            number = fresh[i].decode()
        out.append(pb.DocumentQuery(typed=pb.TypedQuery(issuing_state=MEMBER, document_number=number)))
    return out


def single(
    stub: register_pb2_grpc.DocumentRegisterStub,
    md: tuple[tuple[str, str], ...],
    queries: list[pb.DocumentQuery],
    seconds: float,
) -> dict[str, float]:
    for q in queries[:200]:  # warm-up
        stub.CheckDocument(pb.CheckDocumentRequest(query=q), metadata=md, timeout=5)
    samples: list[float] = []
    verdicts: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        q = queries[i % len(queries)]
        i += 1
        t0 = time.perf_counter()
        resp = stub.CheckDocument(pb.CheckDocumentRequest(query=q), metadata=md, timeout=5)
        samples.append(time.perf_counter() - t0)
        verdicts[resp.result.verdict] = verdicts.get(resp.result.verdict, 0) + 1
    out = percentiles(samples)
    out["requests_per_s"] = len(samples) / seconds
    out["verdicts"] = {pb.Verdict.Name(pb.Verdict.ValueType(k)): v for k, v in verdicts.items()}  # type: ignore[assignment]
    return out


def manifest(
    stub: register_pb2_grpc.DocumentRegisterStub,
    md: tuple[tuple[str, str], ...],
    queries: list[pb.DocumentQuery],
    size: int,
    seconds: float,
    concurrency: int = 1,
    rpc: str = "CheckManifest",
) -> dict[str, float]:
    """Manifests of `size` through CheckManifest (an Arrow table per call, a verdict byte per document back) or
    CheckDocuments (a protobuf message per query and per answer)."""
    starts = range(0, len(queries) - size + 1, size)
    if rpc == "CheckManifest":
        states = [q.typed.issuing_state for q in queries]
        numbers = [q.typed.document_number for q in queries]
        table = pa.table({"issuing_state": states, "document_number": numbers})
        calls: list[Any] = [pb.CheckManifestRequest(queries_arrow_ipc=ipc_bytes(table.slice(s, size))) for s in starts]
    else:
        calls = [pb.CheckDocumentsRequest(queries=queries[s : s + size]) for s in starts]
    method = getattr(stub, rpc)

    def documents(resp: Any) -> int:
        return len(resp.verdicts) if rpc == "CheckManifest" else len(resp.results)

    for c in calls[:3]:
        method(c, metadata=md, timeout=30)
    samples: list[float] = []
    totals = {"docs": 0, "hits": 0}
    lock = threading.Lock()
    t_start = time.perf_counter()
    deadline = t_start + seconds

    def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            c = calls[i % len(calls)]
            i += concurrency
            t0 = time.perf_counter()
            resp = method(c, metadata=md, timeout=30)
            elapsed = time.perf_counter() - t0
            with lock:
                samples.append(elapsed)
                totals["docs"] += documents(resp)
                totals["hits"] += resp.hits

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    out: dict[str, Any] = dict(percentiles(samples))
    out.update(
        {
            "rpc": rpc,
            "manifest_size": size,
            "concurrency": concurrency,
            "documents": totals["docs"],
            "documents_per_s": totals["docs"] / elapsed,
            "hits": totals["hits"],
        }
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=float, default=1_000_000, help="register size to upload (e.g. 1e6)")
    ap.add_argument("--target", help="HOST:PORT of a running server (default: start one on a fresh data dir)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each check scenario")
    ap.add_argument("--manifest-size", type=int, default=1000)
    ap.add_argument(
        "--manifest-concurrency", type=int, nargs="+", default=[1, 2], help="concurrent manifest callers to measure"
    )
    ap.add_argument("--output", type=Path, default=None, help="JSON result file (default: bench/results/...)")
    ap.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="mutual TLS: the server uses DIR/server.pem, the client DIR/nzl-member.pem (or client.pem) "
        "(make one with `idcheck certs`)",
    )
    args = ap.parse_args(argv)
    n = int(args.records)

    tmp = None
    server = None
    target = args.target
    if not target:
        tmp = tempfile.TemporaryDirectory(prefix="idcheck-bench-")
        server = LocalServer(Path(tmp.name), ["--tls-dir", str(args.tls_dir)] if args.tls_dir else [])
        target = server.address
    md = (("x-idcheck-member", MEMBER), ("x-idcheck-role", "member"))  # ignored by a TLS server
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    if args.tls_dir:
        from idcheck.client.channel import TlsOptions

        creds = TlsOptions.from_dir(args.tls_dir, member=MEMBER, role="member").credentials()
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    stub = register_pb2_grpc.DocumentRegisterStub(channel)
    try:
        print(f"register of {n:,} synthetic records on {target}{' (mutual TLS)' if args.tls_dir else ''}", flush=True)
        numbers = build_register(n)
        result: dict[str, object] = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "records": n,
            "tls": bool(args.tls_dir),
        }
        up = upload(stub, md, numbers)
        result["upload"] = up
        print(
            f"upload:   {up['rows']:,} rows in {up['seconds']:.2f}s = {up['rows_per_s']:,.0f} rows/s (durable)",
            flush=True,
        )
        queries = make_queries(numbers, 100_000)
        s = single(stub, md, queries, args.seconds)
        result["single_c1"] = s
        print(
            f"single:   c=1 {s['requests_per_s']:,.0f} req/s  p50 {s['p50_ms']:.3f} ms  p95 {s['p95_ms']:.3f} ms  "
            f"p99 {s['p99_ms']:.3f} ms  max {s['max_ms']:.2f} ms  {s['verdicts']}",
            flush=True,
        )
        for rpc, key in (("CheckManifest", "manifest"), ("CheckDocuments", "documents")):
            for conc in args.manifest_concurrency:
                m = manifest(stub, md, queries, args.manifest_size, args.seconds, conc, rpc)
                result[f"{key}_c{conc}"] = m
                print(
                    f"{key + ':':10}{args.manifest_size} per call ({rpc}), c={conc}: "
                    f"{m['documents_per_s']:,.0f} documents/s  call p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms",
                    flush=True,
                )
        out = args.output or RESULTS / f"load-{n}{'-tls' if args.tls_dir else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"written {out}")
    finally:
        channel.close()
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
