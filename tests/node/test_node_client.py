"""Issue 9: an independent Node.js client (@grpc/grpc-js + @grpc/proto-loader, built only from proto/) against a
live server. It proves the contract works for a client that shares no code with ours."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "client.test.mjs"
LOCKFILE = HERE / "package-lock.json"
# npm ci writes its own copy of the lockfile here; older than ours (or missing) means node_modules is stale.
INSTALLED_LOCK = HERE / "node_modules" / ".package-lock.json"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm are not installed: the independent Node.js client test cannot run")
    return node, npm


def _stale() -> bool:
    if not INSTALLED_LOCK.is_file():
        return True
    installed = INSTALLED_LOCK.stat().st_mtime
    return any(p.stat().st_mtime > installed for p in (LOCKFILE, HERE / "package.json"))


def _ensure_dependencies(npm: str) -> None:
    if not _stale():
        return
    proc = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"npm ci failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


def test_node_client_exercises_the_contract(server: ServerProcess) -> None:
    node, npm = _tools()
    _ensure_dependencies(npm)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDCHECK_")}
    env["IDCHECK_ADDRESS"] = server.address
    env.pop("NODE_OPTIONS", None)
    proc = subprocess.run(
        [node, str(SCRIPT)],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"node client failed with exit code {proc.returncode}\n--- stdout ---\n{proc.stdout}\n"
        f"--- stderr ---\n{proc.stderr}\n--- server log ---\n{server.log}"
    )
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.MULTILINE)
    assert passed and int(passed.group(1)) > 0 and "\n# fail 0\n" in proc.stdout, proc.stdout
