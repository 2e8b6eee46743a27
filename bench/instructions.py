"""Instructions, not seconds: what the register's own work costs a check, counted by valgrind's callgrind.

On a shared two-core machine the same benchmark run twice minutes apart differs by 30 % or more (README
"Performance"), which hides any change of a few percent. Instructions do not depend on what else the machine is
doing: the same code on the same data counts the same to within 1 % (0.1 % for manifests here). So this is the
measure to compare two versions of the code with (run it in each checkout); it is not a measure of speed (cache
misses and the memory they wait on are not counted, and a cheaper instruction count can still be slower).

Each scenario runs in a process of its own under `valgrind --tool=callgrind`, on a seeded data directory, in one
process without gRPC:

- `manifest-clear`: `Register.check_manifest` of an Arrow manifest of 1,000 unlisted numbers (nothing found);
- `manifest-states`: the same numbers issued by many states, as an international flight's manifest is (every
  known ICAO code that is its own canonical form, drawn at random; the other manifests hold the member's one state);
- `manifest`: the same with the bench's default mix (2 % listed numbers, 1 % OCR misreadings of listed ones);
- `check-clear` and `check-hit`: `Register.check` of one typed number, unlisted or listed (what `CheckDocument`
  asks of the register).

After a warm-up, instructions are counted only while the measured calls run (callgrind's instrumentation is
switched on and off around them with `callgrind_control`), and every thread counts: the audit writer's packing and
inserting of the calls' rows too: the audit is committed every 40 manifests or 200 checks, inside the counted
part, so that what a commit holds and which statements it prepares do not depend on timing, and the garbage
collector runs with the server's thresholds from an empty young generation (see `run_child`).

    apt-get install valgrind
    .venv/bin/python bench/instructions.py --records 1e6     # about a minute on 2 cores

Compare versions on the same data directory (`--data`, seeded once): the counts depend on the register's state
too (a freshly seeded register and one with a long audit log differ by a few percent).

Writes `bench/results/instructions.json`.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2load  # bench/h2load.py: the seeding, the manifests

from idcheck.client.bench import V_CLEAR, V_HIT, listed_numbers, make_queries
from idcheck.icao import CANONICAL_STATES

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("manifest-clear", "manifest-states", "manifest", "check-clear", "check-hit")
MANIFEST = 1_000
VARIANTS = 20  # distinct manifests (or numbers) the calls cycle through
# Calls per audit commit (multiples of VARIANTS: every group holds the same calls, and so the same audit rows). About
# what a busy server's 0.1 s audit interval holds at 2 workers (400-700 manifests/s, 8,000 checks/s); a group of
# manifests stays under the audit writer's max_batch rows (50,000: it would wake the writer on its own).
COMMIT_EVERY_MANIFESTS = 40
COMMIT_EVERY_CHECKS = 200
MEMBER = h2load.MEMBER


def _inputs(scenario: str, records: int) -> list[Any]:
    """What the scenario's calls send, cycled through: manifest payloads or single numbers."""
    listed = listed_numbers(records, h2load.SEED)
    if scenario.startswith("manifest"):
        if scenario in ("manifest-clear", "manifest-states"):  # a fresh number can happen to be listed: not those
            numbers = h2load.unlisted_numbers(listed, MANIFEST * VARIANTS)
        else:
            numbers, _ = make_queries(listed, MANIFEST * VARIANTS, h2load.SEED)
        states = None
        if scenario == "manifest-states":
            codes = sorted(CANONICAL_STATES)
            states = [codes[i] for i in np.random.default_rng(h2load.SEED).integers(0, len(codes), len(numbers))]
        return [
            h2load.manifest_ipc(numbers[i : i + MANIFEST], states[i : i + MANIFEST] if states else None)
            for i in range(0, MANIFEST * VARIANTS, MANIFEST)
        ]
    numbers, expected = make_queries(listed, 1_000, h2load.SEED, listed_share=0.5, variant_share=0.0)
    wanted = V_CLEAR if scenario == "check-clear" else V_HIT
    return [n for n, v in zip(numbers, expected, strict=True) if v == wanted][:VARIANTS]


def _wait_for(path: Path, proc: subprocess.Popen[str], what: str) -> None:
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the measured process ended before {what}: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)


def run_child(data: Path, scenario: str, records: int, calls: int, signals: Path) -> None:
    """The measured process (under callgrind): warm up, signal `ready`, wait for `go`, make the calls (committing
    their audit rows in groups), signal `done`, wait for `stop`."""
    from idcheck.register.checks import Query
    from idcheck.register.register import Caller, Register
    from idcheck.server.app import GC_THRESHOLDS

    # The server's garbage collector settings (a collection of the young generation every 50,000 allocations, not
    # 700): with Python's defaults, a full collection (tens of millions of instructions) fell inside the counted
    # calls of one version of the code and not of another, depending on how many objects each had allocated.
    gc.set_threshold(*GC_THRESHOLDS)
    inputs = _inputs(scenario, records)
    register = Register.open(data, audit_interval=3600.0)
    caller = Caller(MEMBER, "border", "ipv4:127.0.0.1:1")
    if scenario.startswith("manifest"):

        def one(i: int) -> int:
            return int(np.count_nonzero(register.check_manifest(caller, inputs[i % len(inputs)]).verdicts != V_CLEAR))
    else:

        def one(i: int) -> int:
            results, _ = register.check(caller, [Query(MEMBER, inputs[i % len(inputs)])], field="query")
            return int(results[0].verdict != V_CLEAR)

    # The audit writer commits when told to (a flush), never on its timer: what a commit holds then does not depend
    # on how fast the calls run (under callgrind a call can take longer than the audit interval, where a busy
    # server commits tens to hundreds of calls at once). That decides how many calls share a commit's fixed cost,
    # and which INSERT statements the writer prepares: a commit's rows go in statements of a power of two rows each,
    # each prepared once per connection, millions of instructions for one of many rows. The warm-up commits the
    # same calls in the same groups, so every statement the counted calls need is prepared before counting.
    group = min(calls, COMMIT_EVERY_MANIFESTS if scenario.startswith("manifest") else COMMIT_EVERY_CHECKS)

    def committed(start: int, count: int) -> int:
        found = sum(one(i) for i in range(start, start + count))
        register.audit.flush()
        return found

    try:
        committed(0, group)
        if calls % group:
            committed(0, calls % group)
        gc.collect()  # the counted calls start with no young objects: collections then fall at the same calls
        (signals / "ready").touch()
        while not (signals / "go").exists():
            time.sleep(0.02)
        found = sum(committed(start, min(group, calls - start)) for start in range(0, calls, group))
        (signals / "done").write_text(json.dumps({"not_clear": found}))
        while not (signals / "stop").exists():
            time.sleep(0.02)
    finally:
        register.close()


def measure(data: Path, scenario: str, records: int, calls: int, tmp: Path) -> dict[str, Any]:
    """Instructions of `calls` calls of `scenario`, counted in a child process under callgrind."""
    signals = tmp / scenario
    signals.mkdir()
    out = tmp / f"{scenario}.callgrind"
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--child", scenario, "--data", str(data), "--records", str(records),
        "--calls", str(calls), "--signals", str(signals),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(signals / "ready", proc, "its warm-up ended")
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        (signals / "go").touch()
        _wait_for(signals / "done", proc, "its calls ended")
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        (signals / "stop").touch()
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{scenario}: the measured process failed ({proc.returncode}):\n{log}")
    collected = [line for line in log.splitlines() if "Collected :" in line]
    if not collected:
        raise RuntimeError(f"{scenario}: callgrind reported no count:\n{log}")
    instructions = int(collected[-1].rsplit(":", 1)[1].strip().replace(",", ""))
    not_clear = json.loads((signals / "done").read_text())["not_clear"]
    return {
        "scenario": scenario,
        "calls": calls,
        "documents_per_call": MANIFEST if scenario.startswith("manifest") else 1,
        "answers_not_clear": not_clear,
        "instructions": instructions,
        "instructions_per_call": round(instructions / calls),
    }


def code_version() -> str:
    """The commit counted, with "-dirty" when files differ from it ("" outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return commit + ("-dirty" if changed else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=lambda s: int(float(s)), default=1_000_000, help="records of the register")
    parser.add_argument("--calls", type=int, default=200, help="counted calls per scenario (after a warm-up)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--data", type=Path, default=None, help="data directory to keep (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--signals", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_child(args.data, args.child, args.records, args.calls, args.signals)
        return 0
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        parser.error(f"unknown scenario(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(SCENARIOS)}")
    if args.records < 1 or args.calls < 1:
        parser.error("--records and --calls must be at least 1")
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"{' and '.join(missing)} not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    runs = []
    with tempfile.TemporaryDirectory(prefix="idcheck-instructions-") as name:
        tmp = Path(name)
        data = args.data or tmp / "data"
        h2load.seed(data, args.records)
        for scenario in scenarios:
            t = time.perf_counter()
            run = measure(data, scenario, args.records, args.calls, tmp)
            runs.append(run)
            print(
                f"{scenario:15s} {run['instructions_per_call']:>12,} instructions a call "
                f"({run['calls']:,} calls, {run['answers_not_clear']:,} answers not CLEAR; "
                f"{time.perf_counter() - t:.0f}s under callgrind)",
                flush=True,
            )
    result = h2load.result_file(
        "instructions", args.records, "valgrind", ["valgrind", "--version"], code=code_version(), runs=runs
    )
    h2load.write_result(result, args.output or RESULTS / "instructions.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
