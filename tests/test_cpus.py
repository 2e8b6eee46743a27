"""Serving CPUs (idcheck/cpus.py): which CPU a server process serves from, and the work allowed on every CPU.

Affinity is the state of a process, so the pinning itself is tried in child processes, never in the test runner.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from idcheck import cpus
from tests.conftest import ServerProcess, wait_until
from tests.server.test_mirror_e2e import start_mirror

ROOT = Path(__file__).resolve().parents[1]
TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell pinned from free")


def test_claim_names_the_least_used_cpu_or_none(tmp_path: Path) -> None:
    allowed = cpus.allowed()
    try:
        assert cpus.claim("none", claims=tmp_path) is None
        assert list(tmp_path.iterdir()) == []  # no claim without pinning
        # In one process for the test; each server process makes one claim. Least used first, the lowest on a tie.
        assert [cpus.claim("auto", claims=tmp_path) for _ in range(2 * len(allowed))] == allowed * 2
        cpus.release_claims()
        assert cpus.claim("auto", claims=tmp_path) == allowed[0]  # released: free again
        assert cpus.claim(str(allowed[-1]), claims=tmp_path) == allowed[-1]
        assert cpus.claim(f" {allowed[0]} ", 1, claims=tmp_path) == allowed[1 % len(allowed)]  # the first worker's
        # A number is claimed too: `auto` goes where the fewest servers are, counting them.
        claimed = [allowed[0], allowed[-1], allowed[1 % len(allowed)]]
        least = min(allowed, key=lambda c: (claimed.count(c), c))
        assert cpus.claim("auto", claims=tmp_path) == least
    finally:
        cpus.release_claims()
    with pytest.raises(ValueError, match="auto, none or a CPU number"):
        cpus.claim("fast", claims=tmp_path)
    with pytest.raises(ValueError, match="not a CPU this process may use"):
        cpus.claim(str(max(allowed) + 1000), claims=tmp_path)


def test_claims_go_with_their_process_however_it_ends(tmp_path: Path) -> None:
    allowed = cpus.allowed()
    code = f"""
        import sys
        from pathlib import Path
        from idcheck import cpus
        print(cpus.claim("auto", claims=Path({str(tmp_path)!r})), flush=True)
        sys.stdin.read()
        """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert int(child.stdout.readline()) == allowed[0]
        assert cpus.claim("auto", claims=tmp_path) == allowed[1 % len(allowed)]  # the child holds the first
        child.kill()  # no chance to release anything
        child.wait(10)
        assert cpus.claim("auto", claims=tmp_path) == allowed[0]
    finally:
        child.kill()
        cpus.release_claims()


def test_claims_fall_back_to_the_workers_own_cpu_where_they_cannot_be_kept(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a file where the directory should be
    allowed = cpus.allowed()
    assert [cpus.claim("auto", w, claims=blocked / "cpus") for w in range(2)] == [
        allowed[w % len(allowed)] for w in range(2)
    ]
    assert cpus._held == []


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_claims_are_not_kept_in_another_users_directory(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert cpus.claim("auto", claims=theirs) == cpus.allowed()[0]  # as if no other server ran
    assert cpus._held == [] and list(theirs.iterdir()) == []


def run_child(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@TWO_CPUS
def test_pinned_process_keeps_every_thread_on_its_cpu_and_long_work_widens() -> None:
    out = run_child(
        """
        import os, threading
        from idcheck import cpus
        every = sorted(os.sched_getaffinity(0))
        before = threading.Thread(target=threading.Event().wait, args=(30,), daemon=True)
        before.start()  # running before the pin: pinned too
        cpus.serve_on(every[1])
        seen = {}
        def probe(name):
            seen[name] = sorted(os.sched_getaffinity(0))
        after = threading.Thread(target=probe, args=("started after",))
        after.start(); after.join()
        seen["running before"] = sorted(os.sched_getaffinity(before.native_id))
        with cpus.every_cpu():
            seen["inside every_cpu"] = sorted(os.sched_getaffinity(0))
            inner = threading.Thread(target=probe, args=("started inside every_cpu",))
            inner.start(); inner.join()
        seen["after every_cpu"] = sorted(os.sched_getaffinity(0))
        wide = threading.Thread(target=cpus.on_every_cpu(probe), args=("on_every_cpu thread",))
        wide.start(); wide.join()
        for name, mask in seen.items():
            print(f"{name}: {'pinned' if mask == [every[1]] else 'every' if mask == every else mask}")
        """
    )
    assert out.splitlines() == [
        "started after: pinned",
        "running before: pinned",
        "inside every_cpu: every",
        "started inside every_cpu: every",
        "after every_cpu: pinned",
        "on_every_cpu thread: every",
    ]


@TWO_CPUS
def test_faiss_threads_of_a_pinned_process_run_on_every_cpu() -> None:
    """faiss_threads above 1 in a server kept on one CPU: OpenMP's threads are started on every CPU (else they
    would take turns on the serving core), and the calling thread is back on its CPU after each search."""
    out = run_child(
        """
        import os
        from pathlib import Path
        import numpy as np
        from idcheck import cpus
        from idcheck.index.templates import IndexSettings, TemplateIndex
        every = sorted(os.sched_getaffinity(0))
        cpus.serve_on(every[0])
        for threads in (1, 2):
            index = TemplateIndex(IndexSettings(dimension=64, omp_threads=threads))
            vectors = np.random.default_rng(1).standard_normal((20_000, 64)).astype(np.float32)
            index.add(np.arange(len(vectors)), vectors, 1)
            scores, ids = index.search(vectors[:64], 1)
            assert (ids[:, 0] >= 0).all()
            masks = [sorted(os.sched_getaffinity(int(task.name))) for task in Path("/proc/self/task").iterdir()]
            here = sorted(os.sched_getaffinity(0)) == [every[0]]
            print(threads, "every" if every in masks else "none on every CPU", "caller pinned" if here else "moved")
        """
    )
    assert out.splitlines() == ["1 none on every CPU caller pinned", "2 every caller pinned"]


def test_every_cpu_does_nothing_in_a_process_never_pinned() -> None:
    before = os.sched_getaffinity(0)
    with cpus.every_cpu():
        assert os.sched_getaffinity(0) == before
    assert os.sched_getaffinity(0) == before


def thread_cpus(pid: int) -> dict[int, tuple[str, str]]:
    """Each thread of process `pid`: (its name as the kernel knows it, its CPUs as /proc lists them)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = dict(line.split(":\t", 1) for line in (task / "status").read_text().splitlines() if ":\t" in line)
        found[int(task.name)] = (status["Name"].strip(), status["Cpus_allowed_list"].strip())
    return found


def assert_serving_on(pid: int, cpu: int) -> None:
    """gRPC's threads, the main thread and the calls' threads on `cpu`; the few others (background loops that run
    on every CPU by design: idcheck.cpus.on_every_cpu) on every CPU, none anywhere else."""
    threads = thread_cpus(pid)
    every = cpus.allowed()
    everywhere = f"{every[0]}-{every[-1]}" if len(every) > 1 else str(every[0])
    assert threads[pid][1] == str(cpu)
    process = threads[pid][0]  # Python's threads keep the process's name; gRPC's and the allocator's have their own
    assert {mask for name, mask in threads.values() if name != process} == {str(cpu)}
    assert {mask for _name, mask in threads.values()} <= {str(cpu), everywhere}
    assert sum(mask == str(cpu) for _name, mask in threads.values()) > len(threads) // 2


@TWO_CPUS
def test_server_serves_from_one_cpu_unless_told_not_to(server_factory: Callable[..., ServerProcess]) -> None:
    pinned = server_factory()
    cpu = serving_cpu(pinned.log)
    assert f"CPUs: calls answered on CPU {cpu}; bulk uploads and index rebuilds on CPUs" in pinned.log
    with pinned.client("NZL", "border") as c:
        assert c.check(state="NZL", number="X1").verdict == "CLEAR"  # gRPC's threads exist by now
    assert_serving_on(pinned.proc.pid, cpu)
    free = server_factory("--serving-cpu", "none", data_dir=pinned.data_dir.parent / "free")
    assert "CPUs: not pinned" in free.log
    assert str(cpu) not in {mask for _name, mask in thread_cpus(free.proc.pid).values()}


@TWO_CPUS
def test_each_worker_serves_from_a_cpu_of_its_own(server_factory: Callable[..., ServerProcess]) -> None:
    allowed = cpus.allowed()
    server = server_factory("--workers", "2")
    assert wait_until(lambda: server.log.count("serving on 127.0.0.1") >= 2, 60), server.log
    children = [int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()]
    assert sorted(thread_cpus(pid)[pid][1] for pid in children) == sorted(str(c) for c in allowed[:2])
    for pid in children:
        assert_serving_on(pid, int(thread_cpus(pid)[pid][1]))


def test_a_cpu_the_process_may_not_use_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "idcheck.server", "--data", str(tmp_path), "--listen", "127.0.0.1:0",
         "--serving-cpu", "4096"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "serving_cpu 4096 is not a CPU this process may use" in done.stderr


@TWO_CPUS
def test_a_mirror_serves_from_the_cpu_it_is_given(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    allowed = cpus.allowed()
    upstream = server_factory()
    given = allowed[1] if serving_cpu(upstream.log) == allowed[0] else allowed[0]
    mirror = start_mirror(upstream.address, tmp_path / "mirror", "--serving-cpu", str(given))
    try:
        assert f"CPUs: calls answered on CPU {given}" in mirror.log
        with mirror.client("NZL", "border") as c:
            assert c.check(state="NZL", number="X1").verdict == "CLEAR"
        assert_serving_on(mirror.proc.pid, given)
    finally:
        mirror.stop()


@TWO_CPUS
def test_servers_on_one_machine_serve_from_different_cpus(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A register and its mirror on one machine, both `auto`: each on a CPU of its own; a second register too while
    there are CPUs left, then on the least used one. A server's CPU is free again once it has stopped."""
    allowed = cpus.allowed()
    upstream = server_factory()
    mirror = start_mirror(upstream.address, tmp_path / "mirror")
    try:
        used = [serving_cpu(upstream.log), serving_cpu(mirror.log)]
        assert len(set(used)) == 2
        claims = Path(os.environ[cpus.CLAIMS_ENV])  # the test session's own (tests/conftest.py), not the machine's
        assert {f"cpu-{c}-0" for c in used} <= {p.name for p in claims.iterdir()}
        assert_serving_on(mirror.proc.pid, used[1])
        more = server_factory(data_dir=tmp_path / "more")
        used.append(serving_cpu(more.log))
        assert used[2] == min(allowed, key=lambda c: (used[:2].count(c), c))
        more.stop()
    finally:
        mirror.stop()
    again = server_factory(data_dir=tmp_path / "again")
    assert serving_cpu(again.log) != used[0]  # the mirror's CPU (or the third's) is free again


def serving_cpu(log: str) -> int:
    """The CPU a server said it answers calls on."""
    found = re.search(r"CPUs: calls answered on CPU (\d+)", log)
    assert found, log
    return int(found.group(1))
