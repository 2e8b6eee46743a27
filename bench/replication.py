"""Replication benchmark: how long a new mirror takes to catch up, and how far behind it runs under uploads.

Builds an upstream register of --records synthetic records (with the register core, in this process: the
upload path has its own benchmark), starts `idcheck serve` on it and a new `idcheck mirror` from an empty
data directory, then measures:

  catch_up   seconds from starting the mirror process until it answers at the upstream's sequence (a snapshot
             of every active record over the change feed, stored durably and indexed); also the mirror's own
             start-up time, so that the snapshot itself can be told apart
  lag        while one client uploads batches of --upload-batch new records as fast as the upstream accepts
             them, for --lag-seconds: the time from each upload's acknowledgement (committed upstream) until
             the mirror answers at that sequence or later, p50/p99/max. The mirror is polled every
             --poll-ms milliseconds with CheckDocument, so the figures are rounded up by up to that much.

Results are printed and written as JSON to bench/results/replication-<records>.json.

    python bench/replication.py --records 1000000
    python bench/replication.py --records 20000 --lag-seconds 3    # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import build_register, percentiles, start_server

from idcheck.register import Caller, RawRecord, Register
from idcheck.uploads import UploadMode
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
MEMBER = "NZL"
BORDER_MD = (("x-idcheck-member", "AUS"), ("x-idcheck-role", "border"))
MEMBER_MD = (("x-idcheck-member", MEMBER), ("x-idcheck-role", "member"))


def build_upstream(data_dir: Path, n: int, batch: int = 100_000) -> dict[str, float]:
    """A register of `n` active records, written with the core (one upload per `batch` rows)."""
    numbers = build_register(n)
    started = time.perf_counter()
    register = Register.open(data_dir)
    try:
        caller = Caller(MEMBER, "member", "bench")
        for start in range(0, n, batch):
            session = register.begin_upload(caller, f"base-{start}", UploadMode.INCREMENTAL, "bench base")
            chunk = numbers[start : start + batch]
            for sub in range(0, len(chunk), 10_000):
                session.add([RawRecord(MEMBER, x.decode(), 1, 2, "2025-06-01") for x in chunk[sub : sub + 10_000]])
            session.commit()
        sequence = register.store.last_sequence
    finally:
        register.close()
    return {"records": n, "sequence": sequence, "seconds": time.perf_counter() - started}


def start_mirror(upstream: str, data_dir: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    cmd = [
        sys.executable, "-m", "idcheck.server.mirror", "--listen", "127.0.0.1:0", "--data", str(data_dir),
        "--upstream", upstream, "--rate-limit-per-second", "0", "--max-staleness", "30",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"serving on (\S+)", line)
        if m:
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
            return proc, m.group(1), lines
    raise RuntimeError("mirror exited:\n" + "".join(lines))


def sequence_of(stub: register_pb2_grpc.DocumentRegisterStub) -> int:
    query = pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="UTO", document_number="PROBE0001"))
    return stub.CheckDocument(pb.CheckDocumentRequest(query=query), metadata=BORDER_MD, timeout=10).register_sequence


def catch_up(upstream: str, data_dir: Path, target: int) -> tuple[dict[str, Any], subprocess.Popen[str], str]:
    started = time.perf_counter()
    proc, address, lines = start_mirror(upstream, data_dir)
    serving = time.perf_counter() - started
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(address))
    while sequence_of(stub) < target:
        time.sleep(0.05)
    total = time.perf_counter() - started
    snapshot = [line for line in lines if "snapshot applied" in line]
    return (
        {
            "mirror_start_seconds": serving,
            "catch_up_seconds": total,
            "records_per_s": target / (total - serving) if total > serving else 0.0,
            "snapshot_log": snapshot[0].strip() if snapshot else "",
        },
        proc,
        address,
    )


def lag(upstream: str, mirror: str, seconds: float, batch: int, poll_ms: float, first: int) -> dict[str, object]:
    """Upload batches of new records as fast as they are accepted; poll the mirror's sequence meanwhile."""
    up = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(upstream))
    down = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(mirror))
    commits: list[tuple[float, int]] = []
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.append((time.perf_counter(), sequence_of(down)))
            time.sleep(poll_ms / 1000)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.perf_counter()
    n = first
    while time.perf_counter() - started < seconds:
        records = [
            pb.Record(
                key=pb.DocumentKey(
                    issuing_state=MEMBER, document_number=f"RL{i:09d}", document_class=pb.DOCUMENT_CLASS_PASSPORT
                ),
                status=pb.RECORD_STATUS_STOLEN,
                event_date="2025-06-01",
            )
            for i in range(n, n + batch)
        ]
        n += batch
        requests = [
            pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id=f"lag-{n}", mode=pb.UPLOAD_MODE_INCREMENTAL)),
            pb.UploadRecordsRequest(batch=pb.RecordBatch(records=records)),
            pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=batch)),
        ]
        resp = up.UploadRecords(iter(requests), metadata=MEMBER_MD, timeout=600)
        commits.append((time.perf_counter(), resp.register_sequence))
    uploading = time.perf_counter() - started
    last = commits[-1][1]
    deadline = time.perf_counter() + 120
    while (not seen or seen[-1][1] < last) and time.perf_counter() < deadline:
        time.sleep(0.01)
    stop.set()
    poller.join(10)
    times = np.array([t for t, _ in seen])
    seqs = np.maximum.accumulate(np.array([s for _, s in seen]))
    lags = []
    for acked, seq in commits:
        i = int(np.searchsorted(seqs, seq))  # first poll at that sequence or later
        if i < len(seqs):
            lags.append(max(0.0, float(times[i] - acked)))
    return {
        "upload_batch": batch,
        "uploads": len(commits),
        "rows_per_s": len(commits) * batch / uploading,
        "lag": percentiles(lags),
        "not_seen": len(commits) - len(lags),
        "polls": len(seen),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--lag-seconds", type=float, default=15.0)
    parser.add_argument("--upload-batch", default="100,10000", help="comma-separated batch sizes, one run each")
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result: dict[str, object] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "shared CPU: other work ran on the same 2 cores during the measurement",
    }
    with tempfile.TemporaryDirectory(prefix="idcheck-repl-") as tmp:
        base = Path(tmp)
        print(f"building an upstream register of {args.records:,} records ...", flush=True)
        result["build"] = build_upstream(base / "upstream", args.records)
        upstream_proc, upstream = start_server(base / "upstream")
        mirror_proc = None
        try:
            up_stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(upstream))
            target = sequence_of(up_stub)
            print(f"upstream at sequence {target:,}; starting a new mirror from an empty directory ...", flush=True)
            result["catch_up"], mirror_proc, mirror = catch_up(upstream, base / "mirror", target)
            print(json.dumps(result["catch_up"], indent=2), flush=True)
            runs = []
            first = 0
            for batch in (int(b) for b in args.upload_batch.split(",")):
                print(f"lag while uploading batches of {batch:,} rows for {args.lag_seconds:g}s ...", flush=True)
                run = lag(upstream, mirror, args.lag_seconds, batch, args.poll_ms, first)
                first += int(run["uploads"]) * batch  # type: ignore[call-overload]
                runs.append(run)
                print(json.dumps(run, indent=2), flush=True)
            result["lag_runs"] = runs
        finally:
            for proc in (mirror_proc, upstream_proc):
                if proc is not None:
                    proc.terminate()
                    proc.wait(60)
    out = args.out or RESULTS / f"replication-{args.records}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
