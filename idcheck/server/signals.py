"""Waiting for SIGINT or SIGTERM in a server's main thread, reliably.

The old way, a handler setting a `threading.Event` the main thread waits on, can leave a server running after
SIGTERM. Python runs a signal's handler only in the main thread, between two bytecodes. When the kernel hands the
signal to another thread (gRPC's own threads take signals too), the main thread sleeping in `Event.wait` is
not woken, and the handler waits for it. And a handler that runs while the main thread holds the Event's
internal lock (entering or leaving `Event.wait`) blocks on that lock for ever.

Here the C-level handler writes the signal's number to a pipe (`signal.set_wakeup_fd`), whichever thread
received it, and the main thread blocks reading that pipe. No lock is involved, and a signal that arrives
before the read stays in the pipe.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM handlers whose arrival `wait()` returns. Install them (in the main thread) before
    announcing readiness. They stay installed after the wait: a second Ctrl-C during the graceful stop that
    follows does not cut it short."""

    def __init__(self) -> None:
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    @staticmethod
    def _on_signal(signum: int, frame: FrameType | None) -> None:
        """Nothing to do here: the signal's number is in the pipe already (and the default action is off)."""

    def wait(self) -> int:
        """Block until SIGINT or SIGTERM (or return at once if one came already); the signal's number."""
        while True:
            signum = os.read(self._read, 1)[0]
            if signum in STOP_SIGNALS:  # other signals with a Python handler reach the pipe too
                return signum
