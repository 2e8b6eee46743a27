"""Which CPUs a server process's threads run on (Linux CPU affinity).

A server process answers calls on several threads (gRPC's polling thread, the handler threads, the audit writer)
that take turns holding CPython's interpreter lock. Left free to run on every core, they hand the lock to each
other across cores, and each hand-off wakes a thread on another core: measured on 2026-12-07 (2 cores, 1,000,000
records, `idcheck bench --target`, two rounds), one server process kept on one core answered 16 callers 3,809-3,845
single checks/s against 1,673-1,788 when free (check streams: 6,648-6,995 against 2,596-2,977), and one caller
at p50 0.59-0.61 against 0.73-0.76 ms. So `idcheck serve` keeps each process's serving threads on one CPU of its
own (`serving_cpu`, README "Configuration"), and the work that runs for seconds and releases the interpreter lock
(an upload from its first batch to its commit, the index's merge and snapshot, the WAL checkpoint, the template
index's rebuild, a mirror's follower) runs on every CPU (`every_cpu`, `on_every_cpu`): a 2,000,000-row upload into
a server held on one core took 7.4-7.5 against 5.0-5.2 s.

Threads inherit the affinity of the thread that starts them, so `serve_on` is called before the register opens
and the gRPC server starts, and covers the threads that exist already. Elsewhere than Linux it does nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Every CPU this process may use, as it was before `serve_on` narrowed it (None: never narrowed).
_every: set[int] | None = None


def allowed() -> list[int]:
    """The CPUs this process may run on (the machine's, or those a cpuset or `taskset` left it), ascending."""
    if not hasattr(os, "sched_getaffinity"):
        return list(range(os.cpu_count() or 1))
    return sorted(_every if _every is not None else os.sched_getaffinity(0))


def choose(setting: str, worker: int = 0) -> int | None:
    """The CPU `setting` names for worker number `worker` (0-based; 0 for a single process): "auto" the worker's own
    in the allowed CPUs (round robin), "none" None (no pinning), or a CPU number (offset by the worker number).
    Raises ValueError for anything else, or a CPU this process may not use."""
    setting = setting.strip().lower()
    cpus = allowed()
    if setting == "none":
        return None
    if setting == "auto":
        return cpus[worker % len(cpus)]
    try:
        first = int(setting)
    except ValueError:
        raise ValueError(f"serving_cpu must be auto, none or a CPU number, not {setting!r}") from None
    if first not in cpus:
        raise ValueError(f"serving_cpu {first} is not a CPU this process may use ({_listed(cpus)})")
    return cpus[(cpus.index(first) + worker) % len(cpus)]


def serve_on(cpu: int) -> None:
    """Keep this process's threads, those running now and those started later, on `cpu`."""
    global _every
    if not hasattr(os, "sched_setaffinity"):
        return
    if _every is None:
        _every = set(os.sched_getaffinity(0))
    tasks = Path("/proc/self/task")
    for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, {cpu})


@contextlib.contextmanager
def every_cpu() -> Iterator[None]:
    """Let the calling thread, and the threads it starts meanwhile, run on every allowed CPU; then back."""
    if _every is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _every)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def on_every_cpu(target: Callable[_P, _R]) -> Callable[_P, _R]:
    """`target` run under `every_cpu` (for a background thread's target)."""

    @functools.wraps(target)
    def run(*args: Any, **kwargs: Any) -> Any:
        with every_cpu():
            return target(*args, **kwargs)

    return run  # type: ignore[return-value]


def describe(cpu: int | None) -> str:
    """What `idcheck serve` prints about its CPUs."""
    if cpu is None:
        return f"not pinned: threads run on CPUs {_listed(allowed())}"
    return f"calls answered on CPU {cpu}; bulk uploads and index rebuilds on CPUs {_listed(allowed())}"


def _listed(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)
