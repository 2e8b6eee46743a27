"""Which CPUs a server process's threads run on (Linux CPU affinity).

A server process answers calls on several threads (gRPC's polling thread, the handler threads, the audit writer)
that take turns holding CPython's interpreter lock. Left free to run on every core, they hand the lock to each
other across cores, and each hand-off wakes a thread on another core: measured on 2026-12-07 (2 cores, 1,000,000
records, `idcheck bench --target`, two rounds), one server process kept on one core answered 16 callers 3,809-3,845
single checks/s against 1,673-1,788 when free (check streams: 6,648-6,995 against 2,596-2,977), and one caller
at p50 0.59-0.61 against 0.73-0.76 ms. So `idcheck serve` keeps each process's serving threads on one CPU of its
own (`serving_cpu`, README "Configuration"; with `auto`, the CPU the fewest other idcheck servers of the machine
serve from: `claim`), and the work that runs for seconds and releases the interpreter lock
(an upload from its first batch to its commit, the index's merge and snapshot, the WAL checkpoint, the template
index's rebuild, a mirror's follower) runs on every CPU (`every_cpu`, `on_every_cpu`): a 2,000,000-row upload into
a server held on one core took 7.4-7.5 against 5.0-5.2 s.

Threads inherit the affinity of the thread that starts them, so `serve_on` is called before the register opens
and the gRPC server starts, and covers the threads that exist already. Elsewhere than Linux it does nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

try:
    import fcntl
except ImportError:  # not on this platform: no claims (see `claim`)
    fcntl = None  # type: ignore[assignment]

_P = ParamSpec("_P")
_R = TypeVar("_R")

log = logging.getLogger(__name__)

#: The environment variable naming the directory of CPU claims (`claims_dir`).
CLAIMS_ENV = "IDCHECK_CPU_CLAIMS"

# This process's claims (`claim`): open descriptors of the slot files it holds a lock on.
_held: list[int] = []

# Every CPU this process may use, as it was before `serve_on` narrowed it (None: never narrowed).
_every: set[int] | None = None


def allowed() -> list[int]:
    """The CPUs this process may run on (the machine's, or those a cpuset or `taskset` left it), ascending."""
    if not hasattr(os, "sched_getaffinity"):
        return list(range(os.cpu_count() or 1))
    return sorted(_every if _every is not None else os.sched_getaffinity(0))


def claim(setting: str, worker: int = 0, *, claims: Path | None = None) -> int | None:
    """The CPU `setting` names for worker number `worker` (0-based; 0 for a single process), claimed for this
    process's lifetime: "auto" the allowed CPU the fewest idcheck server processes of this machine serve from (the
    lowest of those), "none" None (no pinning, no claim), or a CPU number (offset by the worker number).

    Claims are locks on files in `claims` (default `claims_dir()`), taken one process at a time; the kernel drops a
    process's locks when it ends, however it ends, so a claim never outlives its server. So a register and its
    mirror, or two registers, on one machine serve from different CPUs while there are CPUs enough, and share the
    least used ones after that. Where claims cannot be kept (no file locks, an unwritable directory), "auto" takes
    the worker's own CPU in the allowed ones (round robin), as if no other server ran. Raises ValueError for
    anything else than auto, none or a number, or a CPU this process may not use."""
    setting = setting.strip().lower()
    cpus = allowed()
    if setting == "none":
        return None
    if setting == "auto":
        fixed = None
    else:
        try:
            first = int(setting)
        except ValueError:
            raise ValueError(f"serving_cpu must be auto, none or a CPU number, not {setting!r}") from None
        if first not in cpus:
            raise ValueError(f"serving_cpu {first} is not a CPU this process may use ({_listed(cpus)})")
        fixed = cpus[(cpus.index(first) + worker) % len(cpus)]
    try:
        return _claim(claims if claims is not None else claims_dir(), cpus, fixed)
    except OSError as exc:
        chosen = fixed if fixed is not None else cpus[worker % len(cpus)]
        log.warning("CPU claims not kept (%s); serving from CPU %d without knowing the other servers'", exc, chosen)
        return chosen


def claims_dir() -> Path:
    """Where the servers of this machine (of this user) claim their CPUs: $IDCHECK_CPU_CLAIMS, or a directory of
    the user's in the temporary directory."""
    named = os.environ.get(CLAIMS_ENV, "").strip()
    if named:
        return Path(named)
    return Path(tempfile.gettempdir()) / f"idcheck-{os.getuid()}-cpus"


def release_claims() -> None:
    """Give up this process's claims (they go with the process anyway, however it ends; for tests)."""
    while _held:
        os.close(_held.pop())


def _claim(directory: Path, cpus: list[int], fixed: int | None) -> int:
    """Claim `fixed`, or the least claimed of `cpus`: slot files `cpu-<cpu>-<n>` held by a lock each, chosen while
    holding `choosing.lock` so that two servers starting together count each other."""
    if fcntl is None:
        raise OSError("no file locks on this platform")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid") and directory.stat().st_uid != os.getuid():  # another user's: not ours to trust
        raise OSError(f"{directory} belongs to another user")
    chooser = os.open(directory / "choosing.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(chooser, fcntl.LOCK_EX)
        held: dict[int, set[int]] = {}
        for path in directory.glob("cpu-*-*"):
            parts = path.name.split("-")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and _is_held(path):
                held.setdefault(int(parts[1]), set()).add(int(parts[2]))
        cpu = fixed if fixed is not None else min(cpus, key=lambda c: (len(held.get(c, set())), c))
        taken = held.get(cpu, set())
        free = min(set(range(len(taken) + 1)) - taken)
        fd = os.open(directory / f"cpu-{cpu}-{free}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        _held.append(fd)
        return cpu
    finally:
        os.close(chooser)  # and with it the lock


def _is_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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
