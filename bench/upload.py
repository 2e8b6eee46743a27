"""Bulk upload benchmark: rows/s of `idcheck upload FILE.parquet` end to end through a real server.

Writes a synthetic record file (Parquet, cached under the system temp directory), starts `idcheck serve` on a
fresh data directory, and uploads the file with the real client (Arrow IPC batches, the bulk path). Measures,
from the first message sent to the durable acknowledgement:

  rows/s            end to end (client reading and encoding the file, network, server validation, SQLite
                    transaction with its fsync, in-memory index update)
  server RSS        peak resident memory of the server process during the upload (sampled every 0.1 s) and
                    its resident memory before the upload
  client RSS        peak resident memory of this process during the upload

With --breakdown the same file is then pushed through the pipeline in this process, stage by stage, to show
where the time goes (read+encode on the client; decode+validate, key sort, store commit, index update on the
server side). Results are printed and written as JSON to bench/results/upload-<rows>.json.

    python bench/upload.py --rows 1000000 --breakdown
    python bench/upload.py --rows 10000000
    python bench/upload.py --rows 50000          # a quick smoke run
    python bench/upload.py --rows 10000000 --workers 2   # through `idcheck serve --workers 2`
    python bench/upload.py --rows 10000000 --states 200  # documents of 200 issuing states (the several-state sort)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import idcheck  # noqa: F401  (before Arrow loads: the breakdown then uses the server's allocator, idcheck.memory)

# isort: split
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from idcheck.client.bench import LocalServer, cpu_seconds
from idcheck.client.files import read_arrow_payloads
from idcheck.client.register import RegisterClient
from idcheck.icao.states import KNOWN_STATES
from idcheck.synthetic import distinct_numbers

RESULTS = Path(__file__).resolve().parent / "results"
MEMBER = "NZL"
_STATUSES = np.array(["stolen", "lost", "revoked", "stolen_blank", "invalidated"], dtype=object)
_CLASSES = np.array(["passport", "id_card", "visa", "other"], dtype=object)
_SURNAMES = np.array(["SMITH", "NGATA", "O'BRIEN", "TAMA", "LEE", "WILLIAMS", "PATEL", "NGUYEN"], dtype=object)


def issuing_states(states: int) -> np.ndarray:
    """The member's own state first, then `states` - 1 others (known ICAO codes, in a fixed order)."""
    others = sorted(code for code in KNOWN_STATES if len(code) == 3 and code != MEMBER)
    if not 1 <= states <= len(others) + 1:
        raise SystemExit(f"--states must be between 1 and {len(others) + 1}")
    return np.array([MEMBER, *others[: states - 1]], dtype=object)


def write_records(
    path: Path, rows: int, *, holder: bool, states: int = 1, seed: int = 3, chunk: int = 1_000_000
) -> None:
    """A record file of `rows` distinct documents of one member, in random order, written in chunks. With
    `states` > 1, 70 % of the documents are the member's own state's and the rest spread evenly over the others
    (documents of other states lost or stolen in the member's territory)."""
    rng = np.random.default_rng(seed)
    numbers = distinct_numbers("LL#######", rows, rng, draw=int(rows * 1.02) + 100)
    if len(numbers) < rows:
        raise SystemExit(f"could not draw {rows} distinct numbers")
    rng.shuffle(numbers)
    codes = issuing_states(states)
    weights = np.full(len(codes), 0.3 / max(1, len(codes) - 1))
    weights[0] = 1.0 if len(codes) == 1 else 0.7
    today = dt.date.today()
    dates = np.array([(today - dt.timedelta(days=int(d))).isoformat() for d in range(3650)], dtype=object)
    tmp = path.with_suffix(".partial")
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        cols = {
            "issuing_state": pa.array(rng.choice(codes, n, p=weights), pa.string()),
            "document_number": pa.array(numbers[start : start + n].astype(str).astype(object), pa.string()),
            "document_class": pa.array(rng.choice(_CLASSES, n, p=[0.7, 0.2, 0.05, 0.05]), pa.string()),
            "status": pa.array(rng.choice(_STATUSES, n, p=[0.5, 0.4, 0.05, 0.03, 0.02]), pa.string()),
            "event_date": pa.array(dates[rng.integers(0, len(dates), n)], pa.string()),
        }
        if holder:
            cols["surname"] = pa.array(rng.choice(_SURNAMES, n), pa.string())
            cols["birth_date"] = pa.array(dates[rng.integers(len(dates) // 2, len(dates), n)], pa.string())
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=256_000)
    assert writer is not None
    writer.close()
    tmp.rename(path)


def machine_speed() -> dict[str, float]:
    """Seconds this machine takes right now for two fixed pieces of work (best of three): a numpy sort of 4,000,000
    random 64-bit integers and 2,000,000 turns of a Python loop. The same machine has run the same upload 20 %
    faster or slower from one hour to the next; these put a run's figures beside the machine's speed at the time."""
    keys = np.random.default_rng(0).integers(0, 2**62, 4_000_000)
    sort_s, loop_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        np.sort(keys)
        t1 = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i & 7
        t2 = time.perf_counter()
        sort_s.append(t1 - t0)
        loop_s.append(t2 - t1)
    return {"numpy_sort_4m_s": round(min(sort_s), 4), "python_loop_2m_s": round(min(loop_s), 4)}


def rss_bytes(pid: int | str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples the resident memory of some processes every `interval` seconds; `peak` per pid."""

    def __init__(self, pids: list[int | str], interval: float = 0.1) -> None:
        self.peak = {p: rss_bytes(p) for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for p in self.peak:
                with contextlib.suppress(OSError):  # the process may have just exited
                    self.peak[p] = max(self.peak[p], rss_bytes(p))

    def stop(self) -> dict[int | str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def server_processes(pid: int) -> list[int]:
    """The server's process and, under `serve --workers`, its workers (the supervisor's children)."""
    found = [pid]
    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as fh:
        found += [int(child) for child in fh.read().split()]
    return found


def end_to_end(
    path: Path, rows: int, chunk_rows: int, *, replace_again: bool = False, workers: int = 1
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="idcheck-upload-bench-") as tmp:
        extra = ["--max-rows-per-upload", str(max(rows, 5_000_000))]
        server = LocalServer(Path(tmp) / "data", [*extra, *(["--workers", str(workers)] if workers != 1 else [])])
        proc, address = server.proc, server.address
        try:
            deadline = time.monotonic() + 60
            while len(pids := server_processes(proc.pid)) < (1 if workers == 1 else workers + 1):
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.1)
            server_before = sum(rss_bytes(p) for p in pids)
            with RegisterClient(address, member=MEMBER, role="member") as client:
                sampler = PeakRss([*pids, "self"])
                sent = [0]
                # the server's process and its workers (cpu_seconds counts descendants)
                server_cpu, client_cpu = cpu_seconds([proc.pid]), time.process_time()
                t0 = time.perf_counter()
                result = client.upload(
                    path,
                    upload_id=f"bench-{rows}-{time.time_ns()}",
                    arrow_rows=chunk_rows,
                    on_batch=lambda n: sent.__setitem__(0, sent[0] + n),
                )
                elapsed = time.perf_counter() - t0
                server_cpu = cpu_seconds([proc.pid]) - server_cpu
                client_cpu = time.process_time() - client_cpu
                peaks = sampler.stop()
                # the register answers from the new records at once
                middle = pq.read_table(path, columns=["issuing_state", "document_number"]).slice(rows // 2, 1)
                check = client.check(state=middle.column(0)[0].as_py(), number=middle.column(1)[0].as_py())
                again: dict[str, float] = {}
                if replace_again:
                    # the daily full list: the same rows again as REPLACE_ALL under a new id, every key already held
                    server_cpu2 = cpu_seconds([proc.pid])
                    t1 = time.perf_counter()
                    second = client.upload(path, upload_id=f"again-{time.time_ns()}", mode="replace-all")
                    again = {
                        "seconds": round(time.perf_counter() - t1, 3),
                        "rows_per_s": round(rows / (time.perf_counter() - t1)),
                        "server_cpu_seconds": round(cpu_seconds([proc.pid]) - server_cpu2, 3),
                    }
                    assert (second.unchanged, second.cancelled, second.created) == (rows, 0, 0), second
            db = Path(tmp) / "data" / "register.db"
            wal = db.with_name("register.db-wal")
            sizes = {"db_bytes": db.stat().st_size, "wal_bytes": wal.stat().st_size if wal.exists() else 0}
        finally:
            server.stop()
    assert result.created == rows and result.rejected == 0, result
    assert check.verdict == "HIT"
    return {
        "rows": rows,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(rows / elapsed),
        "server_cpu_seconds": round(server_cpu, 3),
        "client_cpu_seconds": round(client_cpu, 3),
        "server_rss_before_bytes": server_before,
        # under --workers: the sum of each process's own peak (an upper bound of their peak together)
        "server_rss_peak_bytes": sum(peaks[p] for p in pids),
        "server_processes": len(pids),
        "client_rss_peak_bytes": peaks["self"],
        **sizes,
        **({"replace_all_same_rows_again": again} if again else {}),
    }


class _Stages:
    """Wall-clock and CPU seconds (this process, all threads) of named stages: under a shared, loaded machine
    the CPU figure is the one that says what a stage costs."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = {
            "wall": round(time.perf_counter() - wall, 3),
            "cpu": round(time.process_time() - cpu, 3),
            "rss_after_mib": round(rss_bytes("self") / 2**20),
            "arrow_mib": round(pa.total_allocated_bytes() / 2**20),
        }


def breakdown(path: Path, rows: int, chunk_rows: int) -> dict[str, dict[str, float]]:
    """The pipeline in this process, stage by stage (wall and CPU seconds)."""
    from idcheck.register import Caller, Limits, Register
    from idcheck.register import columns as columnar

    stage = _Stages()
    with stage("client_read_encode"):
        payloads = list(read_arrow_payloads(path, chunk_rows=chunk_rows))
    with tempfile.TemporaryDirectory(prefix="idcheck-upload-breakdown-") as tmp:
        register = Register.open(Path(tmp), limits=Limits(max_rows_per_upload=max(rows, 5_000_000)))
        try:
            session = register.begin_upload(Caller(MEMBER, "member"), "breakdown", 1)
            with stage("server_decode_validate"):
                for _, payload in payloads:
                    session.add_arrow(payload)
            del payloads
            with stage("server_key_sort"):
                session.columns, duplicates = columnar.key_order_combined(pa.concat_tables(session._chunks))
            session._chunks = []
            session.rejections.extend(duplicates)
            store_commit = register.store.commit_upload

            def timed_commit(*args: object, **kwargs: object) -> object:
                with stage("store_commit"):
                    return store_commit(*args, **kwargs)  # type: ignore[arg-type]

            register.store.commit_upload = timed_commit  # type: ignore[method-assign,assignment]
            with stage("store_commit_and_index_apply"):
                outcome = register._commit_upload(session)
            assert outcome.created == rows, outcome
        finally:
            register.close()
    total = stage.seconds.pop("store_commit_and_index_apply")
    stage.seconds["index_apply"] = {k: round(total[k] - stage.seconds["store_commit"][k], 3) for k in ("wall", "cpu")}
    stage.seconds["index_apply"].update(rss_after_mib=total["rss_after_mib"], arrow_mib=total["arrow_mib"])
    return stage.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000, help="rows per Arrow message (default 50,000)")
    parser.add_argument("--holder", action="store_true", help="add surname and birth date columns to every row")
    parser.add_argument(
        "--states",
        type=int,
        default=1,
        help="issuing states in the file (default 1, the member's own; N > 1: 70 %% "
        "the member's own state, the rest spread over N - 1 others)",
    )
    parser.add_argument("--breakdown", action="store_true", help="also time each stage in this process")
    parser.add_argument("--no-end-to-end", action="store_true", help="only the in-process breakdown")
    parser.add_argument(
        "--replace-again", action="store_true", help="then send the same rows again as REPLACE_ALL (all unchanged)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="run the server as `idcheck serve --workers N` (default 1)"
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "idcheck-bench-files")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    args.cache.mkdir(parents=True, exist_ok=True)
    variant = f"{'-holder' if args.holder else ''}{f'-states{args.states}' if args.states != 1 else ''}"
    path = args.cache / f"records-{args.rows}{variant}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        write_records(path, args.rows, holder=args.holder, states=args.states)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    report: dict[str, object] = {
        "benchmark": "upload",
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "holder_columns": args.holder,
        "issuing_states": args.states,
        "chunk_rows": args.chunk_rows,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
            "speed": machine_speed(),
        },
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if not args.no_end_to_end:
        report["end_to_end"] = e2e = end_to_end(
            path, args.rows, args.chunk_rows, replace_again=args.replace_again, workers=args.workers
        )
        print_end_to_end(args.rows, e2e)
    if args.breakdown:
        report["breakdown_seconds"] = breakdown(path, args.rows, args.chunk_rows)
        print("breakdown (s):", json.dumps(report["breakdown_seconds"]))
    report["machine"]["load_avg_after"] = os.getloadavg()  # type: ignore[index]
    workers = f"-workers{args.workers}" if args.workers != 1 else ""
    stem = f"upload-{args.rows}{variant}{workers}"
    out = args.out or RESULTS / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {out}")
    return 0


def print_end_to_end(rows: int, e2e: dict[str, Any]) -> None:
    mib = {k: v / 2**20 for k, v in e2e.items() if k.endswith("rss_before_bytes") or k.endswith("peak_bytes")}
    print(
        f"upload {rows:,} rows: {e2e['seconds']}s, {e2e['rows_per_s']:,} rows/s; server "
        f"({e2e['server_processes']} process{'es' if e2e['server_processes'] != 1 else ''}) RSS "
        f"{mib['server_rss_before_bytes']:.0f} MiB before, peak {mib['server_rss_peak_bytes']:.0f} MiB; "
        f"client peak {mib['client_rss_peak_bytes']:.0f} MiB; CPU server {e2e['server_cpu_seconds']}s, "
        f"client {e2e['client_cpu_seconds']}s"
    )
    if "replace_all_same_rows_again" in e2e:
        print(f"same rows again as REPLACE_ALL (all unchanged): {e2e['replace_all_same_rows_again']}")


if __name__ == "__main__":
    raise SystemExit(main())
