"""Sequences shared by the worker processes of one node (`idcheck serve --workers N`).

The workers share one store (SQLite serialises their writes) and each keeps its own in-memory indexes. After
a commit, a worker publishes the sequence it reached here; before answering, a worker whose index is behind
the newest published sequence catches up from the store. A traveller's document uploaded through one worker
is therefore found by the next check, whichever worker answers it.

The board lives in an anonymous shared memory mapping created before the workers are forked. Each worker
writes only its own slot, so no lock is needed between processes; readers take the maximum over the slots.
"""

from __future__ import annotations

import mmap
import struct

REGISTER = 0  # kinds of sequence: the register's change log ...
TEMPLATES = 1  # ... and the template change log
_KINDS = 2


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
