"""Shared fixtures: real server processes on ephemeral loopback ports with temporary data directories."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from idcheck.client.register import RegisterClient

SERVING = re.compile(r"serving on (\S+)")


@dataclass
class ServerProcess:
    """A running `idcheck serve` process."""

    proc: subprocess.Popen[str]
    address: str
    data_dir: Path
    output: list[str] = field(default_factory=list)

    def client(self, member: str = "UTO", role: str = "member", **kw: object) -> RegisterClient:
        return RegisterClient(self.address, member=member, role=role, **kw)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def log(self) -> str:
        return "".join(self.output)


def start_server(data_dir: Path, *args: str, timeout: float = 60.0) -> ServerProcess:
    """Start `python -m idcheck.server` on 127.0.0.1:0 and wait until it says where it serves."""
    cmd = [sys.executable, "-m", "idcheck.server", "--listen", "127.0.0.1:0", "--data", str(data_dir), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("IDCHECK_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = SERVING.search(line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start in time:\n" + "".join(output))
    if not found:
        proc.wait(5)
        raise RuntimeError(f"server exited with {proc.returncode}:\n" + "".join(output))
    return ServerProcess(proc, found[0], data_dir, output)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers (stopped at the end of the test); call with extra `idcheck serve` arguments."""
    started: list[ServerProcess] = []

    def factory(*args: str, data_dir: Path | None = None) -> ServerProcess:
        server = start_server(data_dir or tmp_path / "data", *args)
        started.append(server)
        return server

    yield factory
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """One server on an empty register."""
    return server_factory()
