"""The compact document index at scale: resident bytes per record, lookup latency, manifest throughput, and
restart time of a real server from the store alone and from an index snapshot plus the change log.

Each register size is measured in a fresh process, so resident memory is that of the index alone:

    .venv/bin/python bench/index_scale.py --sizes 1e6 1e7 3e7            # index: memory and lookups
    .venv/bin/python bench/index_scale.py --sizes 1e7 --restart         # + a 10M-record server restart

Results go to bench/results/index-scale.json (and a PNG of memory and latency against size when matplotlib is
installed). The records are synthetic: 9-character passport-like numbers under ~190 issuing states.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycountry

from idcheck.icao import DocumentClass
from idcheck.index import DocumentIndex, DocumentIndexSettings, Lookup
from idcheck.records import KeyColumns, RecordStatus

RESULTS = Path(__file__).parent / "results"
MANIFESTS = 200  # manifests of 1,000 documents searched per size
_ALNUM = np.frombuffer(b"0123456789ABCDEFGHIJKLMNPRTUVWXY", np.uint8)  # 32 symbols
STATES = [c.alpha_3 for c in pycountry.countries if c.alpha_3 != "DEU"] + ["D"]  # as the register holds them


def rss_bytes() -> int:
    """Resident memory of this process, after handing freed heap pages back to the system."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def synthetic(n: int, seed: int = 1) -> KeyColumns:
    """n distinct-ish records: numbers as a numpy bytes array, states as a numpy string array."""
    rng = np.random.default_rng(seed)
    chars = _ALNUM[rng.integers(0, len(_ALNUM), size=(n, 9), dtype=np.uint8)]
    numbers = chars.view("S9").reshape(n)
    states = np.array(STATES)[rng.integers(0, len(STATES), n)]
    return KeyColumns(
        np.arange(1, n + 1, dtype=np.int64),
        states,
        numbers,
        np.full(n, int(DocumentClass.PASSPORT), np.int8),
        np.full(n, int(RecordStatus.STOLEN), np.int8),
        np.arange(1, n + 1, dtype=np.int64),
    )


def percentiles(ns: list[int]) -> dict[str, float]:
    a = np.array(ns) / 1000.0
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)), "max_us": float(a.max())}


def measure_index(n: int) -> dict[str, object]:
    """Build an index of n records in this process and measure it."""
    gc.collect()
    before = rss_bytes()
    columns = synthetic(n)
    assert isinstance(columns.number, np.ndarray) and isinstance(columns.issuing_state, np.ndarray)
    rng = np.random.default_rng(2)
    sample = rng.integers(0, n, 20_000)
    present = [Lookup(str(columns.issuing_state[i]), columns.number[i].decode()) for i in sample]
    input_bytes = sum(getattr(columns, c).nbytes for c in ("record_id", "document_class", "status", "sequence"))
    input_bytes += columns.number.nbytes + columns.issuing_state.nbytes
    index = DocumentIndex(DocumentIndexSettings(merge_threshold=65_536))
    started = time.perf_counter()
    index.apply_columns(columns, n)
    build_seconds = time.perf_counter() - started
    del columns
    gc.collect()
    after = rss_bytes()
    assert len(index) > 0.99 * n
    assert all(index.lookup(q) for q in present[:1000]), "a listed number was not found"
    # Unlisted numbers spread over the key space as real ones are, made after the memory is measured (drawn as the
    # register's numbers are: one of them is listed with odds of n in 32**9, a few in a million at 30,000,000).
    absent_numbers = _ALNUM[rng.integers(0, len(_ALNUM), size=(MANIFESTS * 990, 9), dtype=np.uint8)]
    absent = [Lookup("NZL", number.decode()) for number in absent_numbers.view("S9").reshape(-1).tolist()]

    singles: list[int] = []
    for q in present[:10_000] + absent[:10_000]:
        t = time.perf_counter_ns()
        index.lookup(q)
        singles.append(time.perf_counter_ns() - t)
    # One passenger in a hundred listed (far more than real flights). A new manifest each round, as a server sees
    # them; the same one again and again (the figure of this benchmark until 2026-12-07) finds the index's columns
    # in the CPU's caches, which a server's other work leaves them in less.
    manifests = [present[10 * k : 10 * k + 10] + absent[990 * k : 990 * k + 990] for k in range(MANIFESTS)]
    started = time.perf_counter()
    for manifest in manifests:
        index.lookup_many(manifest)
    batch_seconds = time.perf_counter() - started
    manifest = manifests[0]
    started = time.perf_counter()
    for _ in range(MANIFESTS):
        index.lookup_many(manifest)
    repeated_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        index.settings = DocumentIndexSettings(snapshot_dir=Path(tmp))
        started = time.perf_counter()
        index.write_snapshot()
        snapshot_write = time.perf_counter() - started
        started = time.perf_counter()
        mapped = DocumentIndex(DocumentIndexSettings(snapshot_dir=Path(tmp)))
        mapped.load_snapshot(max_sequence=n)
        snapshot_load = time.perf_counter() - started
        assert mapped.lookup_many(manifest) == index.lookup_many(manifest)
    return {
        "records": n,
        "active_records": len(index),
        "build_seconds": round(build_seconds, 2),
        "resident_bytes_per_record": round((after - before) / n, 1),
        "column_bytes_per_record": round(index.memory_bytes() / n, 1),
        "input_bytes_per_record": round(input_bytes / n, 1),
        "single_lookup": percentiles(singles),
        "manifest_1000_docs_per_s": round(MANIFESTS * 1000 / batch_seconds),
        "same_manifest_1000_docs_per_s": round(MANIFESTS * 1000 / repeated_seconds),
        "snapshot_write_seconds": round(snapshot_write, 2),
        "snapshot_map_seconds": round(snapshot_load, 2),
    }


def write_store(path: Path, n: int) -> None:
    """A register database of n synthetic records (written directly, as fast as SQLite allows)."""
    from idcheck.store import RegisterStore

    RegisterStore(path).close()  # schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    columns = synthetic(n)
    assert isinstance(columns.number, np.ndarray) and isinstance(columns.issuing_state, np.ndarray)
    at = "2026-11-23T00:00:00.000Z"
    chunk = 500_000
    db.execute("BEGIN")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        states = columns.issuing_state[start:stop].tolist()
        numbers = [b.decode() for b in columns.number[start:stop].tolist()]
        ids = range(start + 1, stop + 1)
        db.executemany(
            "INSERT OR IGNORE INTO records (record_id, issuing_state, number_canonical, doc_class, number_printed, "
            "owner, status, event_date, recorded_at, seq) VALUES (?, ?, ?, 1, ?, 'NZL', 2, '2026-01-01', ?, ?)",
            ((i, s, num, num, at, i) for i, s, num in zip(ids, states, numbers, strict=True)),
        )
        db.executemany(
            "INSERT INTO changes (seq, record_id, op, status, actor, changed_at) VALUES (?, ?, 'CREATED', 2, 'NZL', ?)",
            ((i, i, at) for i in ids),
        )
    db.execute("COMMIT")
    db.close()


def time_server_start(data: Path) -> tuple[float, str]:
    """Seconds from `idcheck serve` launch to its 'serving on' line, and its register line."""
    cmd = [sys.executable, "-m", "idcheck.server", "--listen", "127.0.0.1:0", "--data", str(data)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    register_line = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if "register " in line and "active records" in line:
            register_line = line.strip()
        if re.search(r"serving on \S+", line):
            break
    seconds = time.perf_counter() - started
    proc.terminate()
    proc.wait(120)
    return seconds, register_line


def measure_restart(n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("IDCHECK_BENCH_TMP")) as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        write_store(data / "register.db", n)
        prepare = time.perf_counter() - started
        cold, cold_line = time_server_start(data)  # builds from the store, then writes a snapshot
        deadline = time.monotonic() + 600
        while not list((data / "snapshots").glob("documents-*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        warm, warm_line = time_server_start(data)
        return {
            "records": n,
            "prepare_store_seconds": round(prepare, 1),
            "start_from_store_seconds": round(cold, 2),
            "start_from_snapshot_seconds": round(warm, 2),
            "cold_log": cold_line,
            "warm_log": warm_line,
        }


def plot(results: list[dict[str, object]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = [r["records"] / 1e6 for r in results]  # type: ignore[operator]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["resident_bytes_per_record"] for r in results], "o-")
    left.set_xlabel("records (millions)")
    left.set_ylabel("resident bytes per record")
    left.set_ylim(0, 110)
    left.axhline(100, color="grey", linestyle="--", label="target 100 B")
    left.legend()
    right.plot(sizes, [r["single_lookup"]["p50_us"] for r in results], "o-", label="single p50")  # type: ignore[index]
    right.plot(sizes, [r["single_lookup"]["p99_us"] for r in results], "o-", label="single p99")  # type: ignore[index]
    right.set_xlabel("records (millions)")
    right.set_ylabel("index lookup latency (µs)")
    right.set_ylim(bottom=0)
    right.legend()
    fig.suptitle("idcheck compact document index (2 cores)")
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=lambda v: int(float(v)), default=[1_000_000])
    parser.add_argument("--restart", action="store_true", help="also time a real server restart at each size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: measure one size
    parser.add_argument("--out", type=Path, default=RESULTS / "index-scale.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_index(args.one)))
        return
    results = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if args.restart:
            result["restart"] = measure_restart(n)
        print(json.dumps(result), flush=True)
        results.append(result)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    report["results"] = results  # type: ignore[assignment]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if plot(results, args.out.with_suffix(".png")):
        print(f"plot: {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
