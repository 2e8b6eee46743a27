"""Arrow's allocator in idcheck's processes: the C library's malloc unless the operator chose one."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from idcheck.memory import use_system_allocator

TD3 = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10"
_SNIPPET = (
    "import sys, pyarrow as pa\n"
    "from idcheck.client.cli import main\n"
    "before = pa.default_memory_pool().backend_name\n"
    "status = main(['mrz', '--json', sys.argv[1]])\n"
    "print('POOL', before, pa.default_memory_pool().backend_name, status)\n"
)


def _pools_of_a_command(env_pool: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_pool
    done = subprocess.run(
        [sys.executable, "-c", _SNIPPET, TD3], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("POOL "))
    return line.split()[1:]


def test_every_idcheck_command_allocates_arrow_memory_with_malloc() -> None:
    before, after, status = _pools_of_a_command(None)
    assert before != "system"  # the wheel's default (mimalloc or jemalloc) ...
    assert (after, status) == ("system", "0")  # ... replaced before the command runs


def test_a_pool_the_operator_chose_is_kept() -> None:
    assert _pools_of_a_command("jemalloc" if "jemalloc" in pa.supported_memory_backends() else "mimalloc")[:2] in (
        ["jemalloc", "jemalloc"],
        ["mimalloc", "mimalloc"],
    )


def test_use_system_allocator_reports_the_backend_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        assert use_system_allocator() == "mimalloc"
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        assert use_system_allocator() == "system"
    finally:
        pa.set_memory_pool(previous)
