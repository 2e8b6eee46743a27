"""The register service at several sizes: what an officer and an uploader see as the register grows.

For each size, `idcheck bench` starts a server on a fresh data directory, seeds the synthetic register through
the real upload RPC (durable uploads of up to 5,000,000 rows) and measures single checks at concurrency 1,
manifests of 1,000 (CheckManifest, one caller) and durable uploads of 10,000 rows, each after a warm-up. Every
answer is checked against the register's rules. Sizes run one after the other, each with its own server:

    .venv/bin/python bench/service_scale.py --sizes 1e6 1e7 3e7      # about 10 minutes on 2 cores

Writes each run's `bench/results/bench-<size>-scale.json` (and its plot), then the summary
`bench/results/service-scale.json` and `service-scale.png`: server memory per record, check latency (p50, p99),
manifest documents/s and upload rows/s against register size. The index alone (no gRPC, no store) is measured
by bench/index_scale.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = "single@1,manifest-1000,upload-10000"


def run_size(records: int, duration: float, warmup: float, out: Path) -> dict[str, Any]:
    """One `idcheck bench` run on a register of `records`; its summary."""
    cmd = [
        sys.executable,
        "-m",
        "idcheck.client.cli",
        "bench",
        "--records",
        str(records),
        "--templates",
        "0",
        "--scenarios",
        SCENARIOS,
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--output",
        str(out),
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return summarise(json.loads(out.read_text()))


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of one bench result that the scale curve shows."""
    server = result["server"]
    records = int(server["records"])
    by_name = {s["name"]: s["results"]["idcheck"] for s in result["scenarios"]}
    single, manifest, upload = by_name["single@1"], by_name["manifest-1000@1"], by_name["upload-10000@1"]
    settled = server.get("rss_bytes_after_settling")
    for name, r in by_name.items():
        if r["errors"] or r["wrong_answers"]:
            raise SystemExit(f"{records:,} records, {name}: errors {r['errors']}, wrong answers {r['wrong_answers']}")
    return {
        "records": records,
        "seed_rows_per_s": server["seed_records"]["rows_per_s"],
        "seed_uploads": server["seed_records"].get("uploads", 1),
        "server_rss_mib_after_seeding": round(server["rss_bytes_after_seeding"] / 2**20),
        "server_rss_mib_at_end": round(server["rss_bytes_at_end"] / 2**20),
        "server_rss_bytes_per_record_at_end": round(server["rss_bytes_at_end"] / records, 1),
        # once the server reports no background work left from the scenarios (merges of the uploaded records);
        # None in the result files of runs before it was measured
        "server_rss_mib_after_settling": None if settled is None else round(settled / 2**20),
        "server_rss_bytes_per_record_after_settling": None if settled is None else round(settled / records, 1),
        "single_checks_per_s": round(single["requests_per_s"]),
        "single_p50_ms": single["latency_ms"]["p50"],
        "single_p99_ms": single["latency_ms"]["p99"],
        "manifest_documents_per_s": round(manifest["documents_per_s"]),
        "manifest_call_p50_ms": manifest["latency_ms"]["p50"],
        "manifest_call_p99_ms": manifest["latency_ms"]["p99"],
        "upload_rows_per_s": round(upload["documents_per_s"]),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = [r["records"] / 1e6 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    memory, latency, throughput = axes
    memory.plot(sizes, [r["server_rss_mib_after_seeding"] for r in rows], "o-", label="server RSS after seeding")
    memory.plot(sizes, [r["server_rss_mib_at_end"] for r in rows], "o-", label="server RSS at the end")
    if all(r["server_rss_mib_after_settling"] is not None for r in rows):
        memory.plot(sizes, [r["server_rss_mib_after_settling"] for r in rows], "o-", label="... once idle")
    memory.plot(sizes, [r["records"] * 100 / 2**20 for r in rows], "--", color="grey", label="100 bytes per record")
    memory.set_ylabel("MiB")
    memory.set_ylim(bottom=0)
    latency.plot(sizes, [r["single_p50_ms"] for r in rows], "o-", label="CheckDocument p50")
    latency.plot(sizes, [r["single_p99_ms"] for r in rows], "o-", label="CheckDocument p99")
    latency.axhline(1.0, color="grey", linestyle="--", label="p99 target 1 ms")
    latency.set_ylabel("latency at concurrency 1 (ms)")
    latency.set_ylim(bottom=0)
    throughput.plot(sizes, [r["manifest_documents_per_s"] / 1e3 for r in rows], "o-", label="manifest docs/s")
    throughput.plot(sizes, [r["seed_rows_per_s"] / 1e3 for r in rows], "o-", label="bulk upload rows/s")
    throughput.plot(sizes, [r["upload_rows_per_s"] / 1e3 for r in rows], "o-", label="uploads of 10,000 rows/s")
    throughput.set_ylabel("thousands per second")
    throughput.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("register size (million records)")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"idcheck register service against register size ({os.cpu_count()} cores)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=lambda v: int(float(v)), default=[1_000_000, 10_000_000])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each scenario (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "service-scale.json")
    parser.add_argument(
        "--from-results",
        nargs="+",
        type=Path,
        help="summarise these `idcheck bench` result files (runs of the scenarios above) instead of running",
    )
    args = parser.parse_args(argv)
    if args.from_results:
        rows = [summarise(json.loads(p.read_text())) for p in args.from_results]
    else:
        rows = [run_size(n, args.duration, args.warmup, args.out.parent / f"bench-{n}-scale.json") for n in args.sizes]
    rows.sort(key=lambda r: r["records"])
    for r in rows:
        print(json.dumps(r), flush=True)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "scenarios": SCENARIOS,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.out}")
    if plot(rows, args.out.with_suffix(".png")):
        print(f"plot: {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
