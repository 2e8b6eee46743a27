"""Sequences shared by the worker processes of one node (`idcheck serve --workers N`).

The workers share one store (SQLite serialises their writes) and each keeps its own in-memory indexes. After
a commit, a worker publishes the sequence it reached here; before answering, a worker whose index is behind
the newest published sequence catches up from the store. A traveller's document uploaded through one worker
is therefore found by the next check, whichever worker answers it.

The board lives in an anonymous shared memory mapping created before the workers are forked. Each worker
writes only its own slot, so no lock is needed between processes; readers take the maximum over the slots.
"""

from __future__ import annotations

import logging
import mmap
import struct
import threading
from collections.abc import Callable

REGISTER = 0  # kinds of sequence: the register's change log ...
TEMPLATES = 1  # ... and the template change log
_KINDS = 2

log = logging.getLogger(__name__)


class SequenceBoard:
    """The latest committed sequence of each kind, per worker slot, in memory shared across fork()."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a sequence board needs at least one slot")
        self.slots = slots
        self.slot = 0  # the slot this process writes: set in each worker after fork()
        self._memory = mmap.mmap(-1, 8 * slots * _KINDS)  # MAP_SHARED | MAP_ANONYMOUS: inherited by children
        self._all = struct.Struct(f"{slots}q")

    def publish(self, kind: int, sequence: int) -> None:
        """This process committed (or caught up) through `sequence`."""
        offset = 8 * (kind * self.slots + self.slot)
        if sequence > struct.unpack_from("q", self._memory, offset)[0]:
            struct.pack_into("q", self._memory, offset, sequence)

    def latest(self, kind: int) -> int:
        """The newest sequence any worker has published."""
        return max(self._all.unpack_from(self._memory, 8 * kind * self.slots))

    def channel(self, kind: int) -> SequenceChannel:
        return SequenceChannel(self, kind)


class SequenceChannel:
    """One kind of sequence on a board, as a register or a gallery sees it."""

    def __init__(self, board: SequenceBoard, kind: int) -> None:
        self._board = board
        self._kind = kind

    def publish(self, sequence: int) -> None:
        self._board.publish(self._kind, sequence)

    def latest(self) -> int:
        return self._board.latest(self._kind)


class PeerFollower:
    """Keeps one process's index in step with the other workers' commits.

    `catch_up_if_behind` runs `catch_up` (under `lock`, the writers' lock of the register or gallery) when another
    worker has published a sequence beyond `current()`: before answering, since a check just after another
    worker's commit must see it. A thread also does so every `interval` seconds, so that the look before answering
    usually finds nothing left to do and no request waits for a big catch-up (seconds after another worker took
    an upload of millions of rows)."""

    def __init__(
        self,
        channel: SequenceChannel,
        current: Callable[[], int],
        catch_up: Callable[[], None],
        lock: threading.Lock,
        *,
        interval: float = 0.05,
        name: str = "peer-follower",
    ) -> None:
        self._channel = channel
        self._current = current
        self._catch_up = catch_up
        self._lock = lock
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop looking (waits for a catch-up in progress to finish)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def catch_up_if_behind(self) -> None:
        """Apply what the other workers committed beyond this process's sequence, if anything."""
        if self._channel.latest() > self._current():
            with self._lock:
                self._catch_up()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.catch_up_if_behind()
            except Exception:  # the next request catches up in its own thread, and reports what fails
                log.exception("catching up with the other workers in the background failed; retrying")
                self._stop.wait(1.0)
