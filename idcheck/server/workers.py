"""`idcheck serve --workers N`: N server processes on one port, sharing one store and one index snapshot.

Python answers a check on one core at a time; a node with several cores runs several server processes.
The supervisor (this module) prepares the data directory once: it opens the register, seeds the demo if
asked, and makes sure an index snapshot covering the whole register is on disk, so that every worker maps
the same snapshot files (one copy of the index in the page cache, not N) instead of rebuilding its own.
It then forks the workers before any gRPC object exists (gRPC does not survive fork()).

Each worker is the ordinary server, listening with SO_REUSEPORT on the same port; the kernel spreads
connections across them. Writes from any worker are serialised by the store (SQLite); every worker catches
up with the others' commits before answering (see idcheck.register.peers), so a record uploaded through one
worker hits on the next check, whichever worker answers. Worker 1 alone writes index snapshots.

What stays per worker: the per-member rate limit (each worker grants the configured rate, so a member may
reach N times it), Operations statistics, and WatchHits notifications (a hit audited by another worker
reaches a waiting stream at its next recheck, within watch_recheck_seconds).

A worker that dies is started again after a short pause; one that keeps dying (5 times in a minute) stops
the node. SIGTERM or SIGINT stop every worker gracefully.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from idcheck.register.peers import REGISTER, TEMPLATES, SequenceBoard, SequenceChannel
from idcheck.server.config import ConfigError, ServerConfig, parse_listen
from idcheck.server.limits import SharedBuckets

log = logging.getLogger("idcheck.server.workers")

RESTART_PAUSE = 1.0
RESTARTS_ALLOWED = 5  # within RESTART_WINDOW seconds, per worker
RESTART_WINDOW = 60.0


@dataclass(frozen=True)
class Peers:
    """What a worker shares with the others: the sequence board and its slot on it, and the members' rate-limit
    buckets (None when the limit is off)."""

    board: SequenceBoard
    slot: int
    count: int
    buckets: SharedBuckets | None = None

    @property
    def writes_snapshots(self) -> bool:
        return self.slot == 0

    @property
    def label(self) -> str:
        return f"worker {self.slot + 1}/{self.count}"

    def register(self) -> SequenceChannel:
        return self.board.channel(REGISTER)

    def templates(self) -> SequenceChannel:
        return self.board.channel(TEMPLATES)


def worker_count(config: ServerConfig) -> int:
    """Processes to run: `workers`, or one per core when it is 0."""
    if config.workers < 0:
        raise ConfigError(f"workers must be 0 (one per core) or more, not {config.workers}")
    return config.workers or os.cpu_count() or 1


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) the address the workers will share, so that port 0 becomes one fixed port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host if host != "localhost" else "127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"could not listen on {host}:{port} ({exc.strerror})") from None
    return sock, sock.getsockname()[1]


def supervise(
    config: ServerConfig,
    *,
    prepare: Callable[[ServerConfig], None],
    serve: Callable[[ServerConfig, Peers], int],
) -> int:
    """Prepare the data directory, run the workers until SIGTERM/SIGINT, and return the exit status."""
    count = worker_count(config)
    host, port = parse_listen(config.listen)
    reservation, port = _reserve_port(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    config = dataclasses.replace(config, listen=f"{shown_host}:{port}")
    prepare(config)
    board = SequenceBoard(count)
    buckets = SharedBuckets() if config.rate_limit_per_second > 0 else None  # one limit per member, not per worker
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: dict[int, int] = {}  # pid -> slot
    deaths: dict[int, list[float]] = {slot: [] for slot in range(count)}

    def spawn(slot: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # A stop signal arriving around fork() must not run the supervisor's handler in the new worker (which
        # would then never stop): block them, and let the worker take them with the default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's loop
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _die_with_parent()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                reservation.close()
                board.slot = slot
                code = serve(config, Peers(board, slot, count, buckets))
            except BaseException:
                log.exception("worker %d failed", slot + 1)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        children[pid] = slot

    print(f"idcheck serve: starting {count} workers on {config.listen}", flush=True)
    for slot in range(count):
        spawn(slot)
    status = 0
    try:
        while not stopping:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.2)
                continue
            slot = children.pop(pid)
            if stopping:
                break
            code = os.waitstatus_to_exitcode(wait_status)
            now = time.monotonic()
            deaths[slot] = [t for t in deaths[slot] if now - t < RESTART_WINDOW] + [now]
            if len(deaths[slot]) > RESTARTS_ALLOWED:
                print(f"idcheck serve: worker {slot + 1} keeps failing (exit {code}); stopping", flush=True)
                status = 1
                break
            print(f"idcheck serve: worker {slot + 1} exited ({code}); starting it again", flush=True)
            time.sleep(RESTART_PAUSE)
            spawn(slot)
    finally:
        _stop_all(children, config.grace_seconds)
        reservation.close()
    print("idcheck serve: all workers stopped", flush=True)
    return status


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to send this worker SIGTERM if the supervisor dies (even by SIGKILL): no orphans."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop path is all there is
        pass
    if os.getppid() == 1:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_all(children: dict[int, int], grace: float) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            children.pop(pid)
    deadline = time.monotonic() + grace + 10
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.1)
    for pid in list(children):  # past the grace period
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
