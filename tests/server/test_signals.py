"""Stopping on SIGINT/SIGTERM without a lock in the signal handler (idcheck.server.signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # A process that misses its signal would sleep for ever: the timeout kills it (SIGKILL) and fails the test.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=30, cwd=ROOT
    )


def test_a_signal_that_arrives_before_the_wait_is_not_lost() -> None:
    done = _run(
        """
        import os, signal
        from idcheck.server.signals import StopSignals
        stops = StopSignals()
        os.kill(os.getpid(), signal.SIGTERM)  # handled now, before anyone waits
        print(stops.wait(), flush=True)       # returns at once with it
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(int(signal.SIGTERM))]


def test_a_signal_another_thread_receives_still_wakes_the_main_thread() -> None:
    # The kernel may hand a process's signal to any thread that does not block it (gRPC's threads included).
    # Python runs the handler in the main thread only, so the old wait (an Event set by the handler) slept on:
    # with the signal blocked in the main thread, as here, that wait never returned.
    done = _run(
        """
        import os, signal, threading, time
        from idcheck.server.signals import StopSignals
        stops = StopSignals()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # only the thread below can take it
        def send():
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=send).start()
        print("stopped by", stops.wait(), flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stopped", "by", str(int(signal.SIGTERM))]


def test_a_burst_of_signals_while_threads_keep_the_interpreter_busy_stops_once() -> None:
    done = _run(
        """
        import os, signal, threading, time
        from idcheck.server.signals import StopSignals
        def busy():
            end = time.monotonic() + 30
            while time.monotonic() < end:
                sum(range(1000))
        for _ in range(4):
            threading.Thread(target=busy, daemon=True).start()
        def send():
            time.sleep(0.2)
            for _ in range(500):
                os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        stops = StopSignals()
        threading.Thread(target=send, daemon=True).start()
        print("stopped by", stops.wait(), flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stopped by ")
    assert int(done.stdout.split()[-1]) in (int(signal.SIGINT), int(signal.SIGTERM))


def test_the_server_stops_gracefully_on_a_sigterm_sent_as_soon_as_it_says_it_is_serving(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "idcheck.server", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("IDCHECK_")},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "serving on " in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert "stopping (grace" in out and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
