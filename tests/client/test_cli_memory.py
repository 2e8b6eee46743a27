"""Arrow's allocator in idcheck's processes: the C library's malloc unless the operator chose one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from tests.conftest import serve_settings

_SNIPPET = "import idcheck, pyarrow as pa; print('POOL', pa.default_memory_pool().backend_name)"


def _pool(env_pool: str | None, snippet: str = _SNIPPET) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_pool
    done = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stdout.splitlines() if line.startswith("POOL ")).split()[1]


def test_a_process_that_loads_idcheck_first_allocates_arrow_memory_with_malloc() -> None:
    assert _pool(None, "import pyarrow as pa; print('POOL', pa.default_memory_pool().backend_name)") != "system"
    assert _pool(None) == "system"


def test_a_pool_the_operator_chose_is_kept() -> None:
    chosen = "jemalloc" if "jemalloc" in pa.supported_memory_backends() else "mimalloc"
    assert _pool(chosen) == chosen


def test_the_server_states_its_allocator_at_start(tmp_path: Path) -> None:
    lines = serve_settings(tmp_path, "ARROW_DEFAULT_MEMORY_POOL")
    assert any(line[:2] == ["arrow_allocator", "system"] for line in lines), lines
