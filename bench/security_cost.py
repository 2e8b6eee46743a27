"""What mutual TLS and the audit log cost a single check.

Starts four real `idcheck serve` processes on copies of one synthetic register (plaintext or mutual TLS, audit
written or not: `--benchmark-no-audit`), then times `CheckDocument` at concurrency 1 against each, in rounds
that visit the four servers in turn (so that a change in the machine's load during the run hits every variant
alike), and the same for manifests (1,000 queries per call, where the audit log records every query), sent
through `CheckDocuments` or, with `--manifest-rpc CheckManifest`, as one Arrow table. Queries mix listed
documents (HIT), OCR variants (POSSIBLE_MATCH) and unlisted ones (CLEAR), as in load.py. Prints p50/p99 per
variant and writes them, with the machine's load average, to bench/results/.

"Audit off" stops the writing only: each check still builds its audit rows and hands them to the writer thread,
which counts and drops them. The difference therefore measures the SQLite writing of the audit log on the
shared interpreter, not the (small) cost of building the rows.

    python bench/security_cost.py                              # 100,000 records, 3 rounds of 4 x 5 s
    python bench/security_cost.py --records 20000 --rounds 1 --seconds 1    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from load import build_register, make_queries, start_server, upload  # noqa: E402

from idcheck.client.bench import LocalServer  # noqa: E402
from idcheck.client.channel import TlsOptions  # noqa: E402
from idcheck.client.files import ipc_bytes  # noqa: E402
from idcheck.client.operations import OperationsClient  # noqa: E402
from idcheck.security import certs  # noqa: E402
from idcheck.v1 import register_pb2 as pb  # noqa: E402
from idcheck.v1 import register_pb2_grpc  # noqa: E402

RESULTS = BENCH / "results"
MEMBER = "NZL"
METADATA = (("x-idcheck-member", MEMBER), ("x-idcheck-role", "member"))  # ignored by the TLS servers


@dataclass
class Variant:
    name: str
    tls: bool
    audit: bool
    proc: subprocess.Popen[str] | None = None
    target: str = ""
    checks: int = 0  # checks sent, warm-up included
    manifests: int = 0  # manifest calls sent, warm-up included
    channel: grpc.Channel | None = None
    stub: register_pb2_grpc.DocumentRegisterStub | None = None


def make_pki(directory: Path) -> None:
    certs.init_ca(directory)
    certs.issue_server(directory, ["127.0.0.1", "localhost"])
    certs.issue_member(directory, MEMBER, "member")
    certs.issue_member(directory, "AUS", "operator")


def seed(data_dir: Path, records: int) -> np.ndarray:
    """Upload the synthetic register through a plaintext server, then stop it (the store is then complete)."""
    proc, target = start_server(data_dir)
    channel = grpc.insecure_channel(target)
    try:
        numbers = build_register(records)
        up = upload(register_pb2_grpc.DocumentRegisterStub(channel), METADATA, numbers)
        print(f"register: {records:,} records uploaded in {up['seconds']:.1f}s", flush=True)
    finally:
        channel.close()
        proc.terminate()
        proc.wait(60)
    return numbers


def start(variant: Variant, data_dir: Path, pki: Path) -> None:
    server = LocalServer(
        data_dir,
        [*(["--tls-dir", str(pki)] if variant.tls else []), *([] if variant.audit else ["--benchmark-no-audit"])],
        log_level="ERROR",  # the benchmark mode's start-up warning is expected here
    )
    proc, target = server.proc, server.address
    if variant.tls:
        creds = TlsOptions.from_dir(pki, member=MEMBER, role="member").credentials()
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    variant.proc, variant.channel, variant.target = proc, channel, target
    variant.stub = register_pb2_grpc.DocumentRegisterStub(channel)


def run_checks(variant: Variant, queries: list[pb.DocumentQuery], offset: int, seconds: float) -> list[float]:
    """Checks one after another for `seconds`; returns each call's latency in seconds."""
    stub = variant.stub
    assert stub is not None
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    i = offset
    while time.perf_counter() < deadline:
        request = pb.CheckDocumentRequest(query=queries[i % len(queries)])
        i += 1
        t0 = time.perf_counter()
        stub.CheckDocument(request, metadata=METADATA, timeout=5)
        samples.append(time.perf_counter() - t0)
    variant.checks += len(samples)
    return samples


def run_manifests(variant: Variant, calls: list[Any], offset: int, seconds: float, rpc: str) -> list[float]:
    """Manifest calls (`rpc`: CheckDocuments or CheckManifest) one after another for `seconds`; returns each call's
    latency in seconds."""
    stub = variant.stub
    assert stub is not None
    method = getattr(stub, rpc)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    i = offset
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        method(calls[i % len(calls)], metadata=METADATA, timeout=30)
        samples.append(time.perf_counter() - t0)
        i += 1
    variant.manifests += len(samples)
    return samples


def server_statistics(variant: Variant, pki: Path) -> dict[str, object]:
    """The server's own counters (operator statistics), checked against the checks this script sent."""
    tls = TlsOptions.from_dir(pki, member="AUS", role="operator") if variant.tls else None
    with OperationsClient(variant.target, member="AUS", role="operator", tls=tls) as client:
        t0 = time.perf_counter()
        stats = client.statistics()
        elapsed = time.perf_counter() - t0
    sent = {"check": variant.checks, "manifest": variant.manifests}
    assert {k: stats.calls_by_kind[k] for k in sent} == sent, (variant.name, stats.calls_by_kind, sent)
    assert stats.audit_enabled == variant.audit
    return {
        "checks_counted": stats.calls_by_kind["check"],
        "manifests_counted": stats.calls_by_kind["manifest"],
        "documents_checked": stats.documents_checked,
        "answers_by_verdict": dict(stats.answers_by_verdict),
        "audit_rows_written": stats.audit_rows_written,
        "audit_rows_pending": stats.audit_rows_pending,
        "statistics_call_ms": elapsed * 1000.0,
    }


def summary(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1000.0
    return {
        "checks": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=float, default=100_000, help="register size (default 100,000)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per variant per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the four variants")
    ap.add_argument(
        "--manifest-size", type=int, default=1000, help="also time manifests of this many queries (0: skip)"
    )
    ap.add_argument(
        "--manifest-rpc",
        choices=("CheckDocuments", "CheckManifest"),
        default="CheckDocuments",
        help="how manifests are sent: a message per query, or one Arrow table (default CheckDocuments)",
    )
    ap.add_argument("--output", type=Path, default=None, help="JSON result file (default: bench/results/...)")
    args = ap.parse_args(argv)
    records = int(args.records)
    variants = [
        Variant("plain, audit off", tls=False, audit=False),
        Variant("plain, audit on", tls=False, audit=True),
        Variant("TLS, audit off", tls=True, audit=False),
        Variant("TLS, audit on", tls=True, audit=True),
    ]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="idcheck-security-cost-") as tmp:
        base = Path(tmp)
        make_pki(base / "pki")
        numbers = seed(base / "seed", records)
        queries = make_queries(numbers, 50_000)
        size = args.manifest_size
        starts = range(0, 50_000 - size + 1, size) if size else range(0)
        if args.manifest_rpc == "CheckManifest":
            table = pa.table(
                {
                    "issuing_state": [q.typed.issuing_state for q in queries],
                    "document_number": [q.typed.document_number for q in queries],
                }
            )
            calls: list[Any] = [
                pb.CheckManifestRequest(queries_arrow_ipc=ipc_bytes(table.slice(i, size))) for i in starts
            ]
        else:
            calls = [pb.CheckDocumentsRequest(queries=queries[i : i + size]) for i in starts]
        try:
            for k, v in enumerate(variants):
                data = base / f"data-{k}"
                shutil.copytree(base / "seed", data)
                start(v, data, base / "pki")
            for v in variants:  # warm-up: connections, TLS sessions, first-call paths
                run_checks(v, queries, 0, 0.5)
                if size:
                    run_manifests(v, calls, 0, 0.5, args.manifest_rpc)
            samples: dict[str, list[float]] = {v.name: [] for v in variants}
            per_round: dict[str, list[float]] = {v.name: [] for v in variants}
            manifest_samples: dict[str, list[float]] = {v.name: [] for v in variants}
            for r in range(args.rounds):
                order = variants[r % 4 :] + variants[: r % 4]  # each variant goes first once in four rounds
                for v in order:
                    got = run_checks(v, queries, 1000 * r, args.seconds)
                    samples[v.name] += got
                    per_round[v.name].append(float(np.percentile(np.asarray(got) * 1000.0, 50)))
                    if size:
                        manifest_samples[v.name] += run_manifests(v, calls, 7 * r, args.seconds, args.manifest_rpc)
                print(f"round {r + 1}/{args.rounds} done", flush=True)
            counted = {v.name: server_statistics(v, base / "pki") for v in variants}
        finally:
            for v in variants:
                if v.channel is not None:
                    v.channel.close()
                if v.proc is not None:
                    v.proc.terminate()
                    v.proc.wait(60)
    load_after = os.getloadavg()
    result: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "note": "server and client on one machine over loopback; CPU shared with other work during the run",
        },
        "records": records,
        "manifest_rpc": args.manifest_rpc,
        "rounds": args.rounds,
        "seconds_per_variant_per_round": args.seconds,
        "variants": {},
    }
    print(f"\nCheckDocument, concurrency 1, {records:,} records, {args.rounds} x {args.seconds:g} s per variant")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)")
    print(f"{'variant':<18} {'checks':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  p50 per round")
    for v in variants:
        s = summary(samples[v.name])
        s["p50_per_round_ms"] = per_round[v.name]  # type: ignore[assignment]
        s["server_statistics"] = counted[v.name]  # type: ignore[assignment]
        if size:
            m = summary(manifest_samples[v.name])
            busy = sum(manifest_samples[v.name])
            s["manifest"] = {  # type: ignore[assignment]
                "size": size,
                "calls": m["checks"],
                "documents_per_s": m["checks"] * size / busy,
                "call_p50_ms": m["p50_ms"],
                "call_p99_ms": m["p99_ms"],
            }
        result["variants"][v.name] = s  # type: ignore[index]
        rounds = " ".join(f"{x:.3f}" for x in per_round[v.name])
        print(
            f"{v.name:<18} {s['checks']:>7,} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} {s['p99_ms']:>8.3f} "
            f"{s['max_ms']:>8.2f}  {rounds}"
        )
    if size:
        print(f"\n{args.manifest_rpc}, {size:,} queries per call, concurrency 1")
        print(f"{'variant':<18} {'calls':>7} {'docs/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for v in variants:
            m = result["variants"][v.name]["manifest"]  # type: ignore[index]
            print(
                f"{v.name:<18} {m['calls']:>7,} {m['documents_per_s']:>9,.0f} {m['call_p50_ms']:>8.2f} "
                f"{m['call_p99_ms']:>8.2f}"
            )
    print()
    for v in variants:
        c = counted[v.name]
        print(
            f"{v.name:<18} server counted {c['checks_counted']:,} checks {c['answers_by_verdict']}, "
            f"audit rows written {c['audit_rows_written']:,}; statistics call {c['statistics_call_ms']:.1f} ms"
        )
    suffix = "-checkmanifest" if args.manifest_rpc == "CheckManifest" else ""
    out = args.output or RESULTS / f"security-cost-{records}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
