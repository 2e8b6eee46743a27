"""Batched audit writing: checks enqueue rows, one background thread commits them in groups.

A check must not wait for a disk flush, so audit rows are committed by a writer thread every
`interval` seconds (or sooner when `max_batch` rows are waiting). The audit connection uses
`synchronous=NORMAL`: a process crash loses nothing that was committed, and a power cut can lose at most
the rows of the last commits, i.e. about `interval` seconds of audit rows. Record changes never go
through here; they are committed with `synchronous=FULL` by the store.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Final

from idcheck.store.sqlite import AuditCall, AuditDocument, RegisterStore, connect

log = logging.getLogger(__name__)


class AuditWriter:
    """Background writer of audit rows into the register store."""

    def __init__(self, store: RegisterStore, *, interval: float = 0.2, max_batch: int = 50_000) -> None:
        self._store = store
        self._interval = interval
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._conn = connect(store.path, synchronous="NORMAL")
        self._call_ids = itertools.count(store.last_audit_call_id() + 1)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def next_call_id(self) -> int:
        """A fresh call id for `submit` (ids follow the order calls are numbered, not committed)."""
        return next(self._call_ids)

    def submit(self, call: AuditCall, documents: Sequence[AuditDocument]) -> None:
        """Queue one check call and its documents for the next commit (never blocks on disk)."""
        self._queue.put((call, documents))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far is committed."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        self._conn.close()

    def _run(self) -> None:
        pending: list[tuple[AuditCall, Sequence[AuditDocument]]] = []
        rows = 0
        waiters: list[threading.Event] = []
        deadline = 0.0
        stop = False
        while not stop:
            timeout = max(0.0, deadline - time.monotonic()) if pending else self._interval
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                stop = True
            elif isinstance(item, tuple):
                if not pending:
                    deadline = time.monotonic() + self._interval
                pending.append(item)
                rows += len(item[1])
            elif isinstance(item, threading.Event):
                waiters.append(item)
            due = stop or waiters or rows >= self._max_batch or time.monotonic() >= deadline
            if pending and due:
                try:
                    renumbered, next_free = self._store.write_audit(pending, self._conn)
                    if renumbered:  # provisional numbering fell out of line: realign it with the file
                        self._call_ids = itertools.count(next_free)
                except Exception:  # keep the thread alive: a full disk must not stop checks
                    log.exception("audit write of %d rows failed; retrying in %.1fs", rows, self._interval)
                    deadline = time.monotonic() + self._interval
                else:
                    pending, rows = [], 0
            if not pending:
                for w in waiters:
                    w.set()
                waiters = []


_STOP: Final = object()
