"""Batched audit writing: checks enqueue rows, one background thread commits them in groups.

A check must not wait for a disk flush, so audit rows are committed by a writer thread every
`interval` seconds (or sooner when `max_batch` rows are waiting). The audit connection uses
`synchronous=NORMAL`: a process crash loses nothing that was committed, and a power cut can lose at most
the rows of the last commits, i.e. about `interval` seconds of audit rows. Record changes never go
through here; they are committed with `synchronous=FULL` by the store.

Checks queue their rows without waking the writer thread: it takes the whole queue once per `interval` (or when a
control message or a full batch wakes it). Woken by each check, it cost a thread switch per check on the serving
CPU: measured on 2026-12-07 (2 cores, 1,000,000 records, one caller, three alternating pairs, /proc), a
`CheckDocument` call took 380-398 against 423-463 µs of server CPU, and one caller's rate rose from 1,312-1,360 to
1,414-1,459 checks/s; a streamed check 212-228 against 225-246 µs.

The writer also keeps the service's counters of answered calls (by kind and by verdict): it sees every call
anyway, and counting on its thread keeps them off the check path. After each commit it wakes the threads
waiting in `wait_for_commit` (hit watchers), and while one waits a batch holding a HIT or POSSIBLE_MATCH is
committed at once (at most every `PROMPT_COMMIT_GAP` seconds) instead of at the end of the interval.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import operator
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from idcheck.store.sqlite import AuditCall, AuditClear, AuditDocument, RegisterStore, connect, utc_now

log = logging.getLogger(__name__)

# Verdicts a hit watcher is told about (idcheck.register.hits.HIT_VERDICTS).
_HIT_VERDICTS: Final = ("HIT", "POSSIBLE_MATCH")
# Least time between two commits brought forward for a waiting hit watcher: bounds the commit rate (and its
# cost on the shared interpreter) when many checks hit while someone watches.
PROMPT_COMMIT_GAP: Final = 0.01
# Seconds between audit commits (the server's `audit_interval`). Each commit holds the serving CPU for 7-11 us per
# call it writes (0.67-1.02 ms for 90 single checks, in one process), and a check arriving then waits for it. One
# caller waits on at most one commit per call, so one caller's p99 stays clear of the commits while there are
# fewer of them than 1 % of its calls: measured on 2026-12-07 (2 cores, 1,000,000 records, `idcheck bench
# --target` at one caller, about 1,900 CheckDocument calls/s, three alternating rounds), 0.05 s (20 commits/s)
# gave p99 1.69-1.70 ms, 0.1 s p99 0.76-0.80 ms and 0.2 s 0.72-0.76 ms; p99.9 2.7-3.4, 3.9-4.1 and 4.4-4.7 ms;
# 16 callers the same throughput each way. (0.05 s had been chosen from h2load runs, whose 2,800 calls/s at one
# caller put 20 commits a second under 1 % of the calls: the p99.9 fell, the p99 stayed under 1 ms; a Python
# caller is slower.)
# The interval also bounds what a power cut can lose of the audit log: a tenth of a second.
AUDIT_INTERVAL: Final = 0.1
# A queued call: its ordinary rows and, for a manifest, its packed plain CLEARs.
_Item = tuple[AuditCall, Sequence[AuditDocument], AuditClear | None]


@dataclass(frozen=True, slots=True)
class AuditCounts:
    """The audit writer's counters since it started (see `AuditWriter.counts`)."""

    enabled: bool
    calls_queued: int  # submitted, not yet taken by the writer thread
    rows_pending: int  # document rows taken, waiting for the next commit
    calls_written: int
    rows_written: int
    write_failures: int
    calls_set_aside: int  # could never be written: in `rejected_path` (see AuditWriter._write_pending)
    calls_by_kind: Mapping[str, int]  # check, manifest, verify, identify
    answers_by_verdict: Mapping[str, int]  # per document (a manifest counts each of its queries)


class AuditWriter:
    """Background writer of audit rows into the register store.

    `write=False` is for benchmarks only: rows are still handed over and counted, but never committed, so the
    audit log (and everything read from it: ListAudit, WatchHits, hit outcomes) stays empty.
    """

    def __init__(
        self, store: RegisterStore, *, interval: float = AUDIT_INTERVAL, max_batch: int = 50_000, write: bool = True
    ) -> None:
        self._store = store
        self._interval = interval
        self._max_batch = max_batch
        self._write = write
        # Calls wait in the queue without waking the writer thread (a wake-up per check would be a thread switch
        # per check on the serving CPU); it takes them all each `interval`, or at once when `_wake` is set: for a
        # control message (flush, counts, a hit watcher, stop), or when `max_batch` rows may be waiting.
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._unseen_rows = 0  # rows submitted since the writer last took the queue (approximate: a wake-up hint)
        # Audit rows are appended: a small page cache holds the right edge of its B-trees (a large one only
        # grows the process by the size of the audit log it has touched).
        self._conn = connect(store.path, synchronous="NORMAL", cache_mib=8)
        self.rejected_path = store.path.parent / "audit-rejected.jsonl"  # calls that can never be written
        self._call_ids = itertools.count(store.last_audit_call_id() + 1)
        self._closed = False
        # Counters: changed only by the writer thread, under this lock so that a reader sees them together.
        self._counts_lock = threading.Lock()
        self._calls_by_kind: collections.Counter[str] = collections.Counter()
        self._verdicts: collections.Counter[str] = collections.Counter()
        self._rows_pending = 0
        self._calls_written = 0
        self._rows_written = 0
        self._failures = 0
        self._set_aside_count = 0
        # Commit notification: `_generation` counts commits; waiters sleep on `_committed`.
        self._committed = threading.Condition()
        self._generation = 0
        self._waiting = 0
        self._pending_hits = 0  # HIT and POSSIBLE_MATCH rows waiting for the next commit (writer thread)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        """False when rows are counted but not written (benchmarking only)."""
        return self._write

    def next_call_id(self) -> int:
        """A fresh call id for `submit` (ids follow the order calls are numbered, not committed)."""
        return next(self._call_ids)

    def submit(self, call: AuditCall, documents: Sequence[AuditDocument], clear: AuditClear | None = None) -> None:
        """Queue one check call and its documents for the next commit (never blocks on disk).

        `clear` holds a manifest's plain CLEAR documents packed (`documents` are the others); they are packed into
        their stored form on the writer thread, off the check path."""
        self._queue.put((call, documents, clear))
        self._unseen_rows += len(documents) + (0 if clear is None else len(clear.positions))
        if self._waiting or self._unseen_rows >= self._max_batch:  # a hit watcher waits, or a full batch
            self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far is committed."""
        done = threading.Event()
        self._signal(done)
        return done.wait(timeout)

    def counts(self, timeout: float = 2.0) -> AuditCounts:
        """The counters, including every call submitted before this one (without forcing a commit)."""
        seen = _Counted()
        self._signal(seen)
        seen.wait(timeout)
        with self._counts_lock:
            return AuditCounts(
                enabled=self._write,
                calls_queued=self._queue.qsize(),
                rows_pending=self._rows_pending,
                calls_written=self._calls_written,
                rows_written=self._rows_written,
                write_failures=self._failures,
                calls_set_aside=self._set_aside_count,
                calls_by_kind=dict(self._calls_by_kind),
                answers_by_verdict=dict(self._verdicts),
            )

    @property
    def commits(self) -> int:
        """Number of commits so far: read it before looking at the log, then `wait_for_commit` on it."""
        return self._generation

    def wait_for_commit(self, seen: int, timeout: float, stop: Callable[[], bool] | None = None) -> int:
        """Wait until a commit after `seen` (a value of `commits`), `stop()` is true or `timeout` passes;
        returns `commits` then. Reading `commits` before the log and waiting on it afterwards misses nothing."""
        with self._committed:
            self._waiting += 1
            # Hits that arrived while nobody waited, counted (`_pending_hits`) or still queued unseen by the writer
            # (a call submitted just before `_waiting` went up did not wake it): have the writer look, and commit
            # the hits among them now. Unseen rows are read first: a call the writer takes between the two reads
            # is counted in `_pending_hits` by the time it is read, or sees `_waiting` up itself.
            if self._unseen_rows or self._pending_hits:
                self._signal(_PROMPT)
            try:
                self._committed.wait_for(lambda: self._generation != seen or (stop is not None and stop()), timeout)
            finally:
                self._waiting -= 1
            return self._generation

    def wake_waiters(self) -> None:
        """Wake every `wait_for_commit` to look at its `stop` (e.g. when a watching stream is cancelled)."""
        with self._committed:
            self._committed.notify_all()

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._signal(_STOP)
        self._thread.join(timeout=10)
        self._conn.close()
        self.wake_waiters()

    def _signal(self, item: object) -> None:
        """Queue a control message and wake the writer for it."""
        self._queue.put(item)
        self._wake.set()

    def _take(self) -> list[object]:
        """Everything queued (writer thread)."""
        self._unseen_rows = 0
        items = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        return items

    def _count(self, call: AuditCall, documents: Sequence[AuditDocument], clear: AuditClear | None) -> tuple[int, int]:
        """Count one call (writer thread); returns (its documents, how many of them are hits). Packed documents
        count as the CLEAR rows they are read back as."""
        cleared = 0 if clear is None else len(clear.positions)
        kind = documents[0].query_kind if documents else ""
        if kind not in ("verify", "identify"):
            kind = "check" if call.single else "manifest"
        verdicts = self._verdicts
        with self._counts_lock:
            before = verdicts["HIT"] + verdicts["POSSIBLE_MATCH"]
            self._calls_by_kind[kind] += 1
            verdicts.update(map(_VERDICT_OF, documents))
            if cleared:
                verdicts["CLEAR"] += cleared
            if self._write:
                self._rows_pending += len(documents) + cleared
            return len(documents) + cleared, verdicts["HIT"] + verdicts["POSSIBLE_MATCH"] - before

    def _run(self) -> None:
        pending: list[_Item] = []
        rows = 0
        waiters: list[threading.Event] = []
        deadline = 0.0
        last_commit = 0.0
        stop = False
        while not stop:
            asleep = time.monotonic()
            timeout = max(0.0, deadline - asleep) if pending else self._interval
            self._wake.wait(timeout)
            self._wake.clear()  # before taking the queue: a message queued from here on sets it again
            for item in self._take():
                if item is _STOP:
                    stop = True
                elif isinstance(item, tuple):
                    documents, hits = self._count(*item)
                    if self._write:
                        if not pending:  # queued at the earliest when the writer went to sleep
                            deadline = asleep + self._interval
                        pending.append(item)
                        rows += documents
                        self._pending_hits += hits
                        if hits and self._waiting:  # a hit watcher is waiting: do not make it wait for the interval
                            deadline = min(deadline, last_commit + PROMPT_COMMIT_GAP)
                elif item is _PROMPT:
                    if self._pending_hits:  # not for other rows: they wait for the interval, watcher or not
                        deadline = min(deadline, last_commit + PROMPT_COMMIT_GAP)
                elif isinstance(item, _Counted):
                    item.set()
                elif isinstance(item, threading.Event):
                    waiters.append(item)
            due = stop or waiters or rows >= self._max_batch or time.monotonic() >= deadline
            if pending and due:
                left = self._write_pending(pending)
                if left:  # keep the thread alive: a full disk must not stop checks
                    log.error("%d audit calls not written; retrying in %.1fs", len(left), self._interval)
                    deadline = time.monotonic() + self._interval
                else:
                    last_commit = time.monotonic()
                    self._pending_hits = 0
                pending, rows = left, sum(map(_documents, left))
            if not pending:
                for w in waiters:
                    w.set()
                waiters = []

    def _write_pending(self, pending: list[_Item]) -> list[_Item]:
        """Commit the pending calls in one transaction; returns those left for a later attempt.

        A failure of the store itself (`sqlite3.OperationalError`: a locked database, a full or failing disk) leaves
        every call for the next attempt. Any other failure comes from a call that can never be written (a malformed
        one); retrying it would hold every later call back, forever. Each call is then tried in a transaction of
        its own, in order: one that fails alone is set aside in `audit-rejected.jsonl` next to the database, with
        the error, and logged, so that nothing is dropped silently; the others are committed.
        """
        try:
            self._commit(pending)
            return []
        except sqlite3.OperationalError:
            log.exception("audit write of %d calls failed", len(pending))
            with self._counts_lock:
                self._failures += 1
            return pending
        except Exception:
            log.exception("audit write of %d calls failed; writing them one by one", len(pending))
            with self._counts_lock:
                self._failures += 1
        left: list[_Item] = []
        for item in pending:
            try:
                self._commit([item])
            except sqlite3.OperationalError:
                left.append(item)
            except Exception as exc:
                if not self._set_aside(item, exc):
                    left.append(item)
        return left

    def _commit(self, batch: Sequence[_Item]) -> None:
        renumbered, next_free = self._store.write_audit(batch, self._conn)
        if renumbered:
            self._realign(batch, next_free)
        documents = sum(map(_documents, batch))
        with self._counts_lock:
            self._calls_written += len(batch)
            self._rows_written += documents
            self._rows_pending -= documents
        with self._committed:
            self._generation += 1
            self._committed.notify_all()

    def _realign(self, batch: Sequence[_Item], next_free: int) -> None:
        """Bring the provisional numbering back in line with the file after `batch` had calls renumbered.

        Calls answered at the same time on several threads often reach the queue in another order than they were
        numbered in: the batch then holds the very ids the file gave them, in another order, and the numbering is
        in line (resetting it there would hand out again the ids of the calls still being answered, which the next
        commit renumbers, and so on for as long as calls keep coming: under load nearly every call was). Otherwise
        (a call set aside, another process writing to the same file) the numbering restarts at the file's next id,
        after the ids handed out since the batch's last one, which belong to calls still to come."""
        provisional = sorted(item[0].call_id for item in batch)
        if provisional == list(range(next_free - len(batch), next_free)):
            return
        ahead = next(self._call_ids) - provisional[-1] - 1
        self._call_ids = itertools.count(next_free + max(0, ahead))

    def _set_aside(self, item: _Item, exc: Exception) -> bool:
        """Append a call that cannot be written to the rejected-audit file (fsynced); False if that fails too."""
        call, documents, clear = item
        entry = {
            "set_aside_at": utc_now(),
            "error": f"{type(exc).__name__}: {exc}",
            "call": call._asdict(),
            "documents": [d._asdict() for d in documents],
            "clear": None
            if clear is None
            else {
                "positions": np.asarray(clear.positions).tolist(),
                "states": _as_list(clear.states),
                "numbers": _as_list(clear.numbers),
            },
        }
        try:
            with open(self.rejected_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except Exception:
            log.exception("could not set aside audit call %s", call.call_uid)
            return False
        log.error(
            "audit call %s (%d documents) cannot be written (%s); set aside in %s",
            call.call_uid,
            _documents(item),
            entry["error"],
            self.rejected_path,
        )
        with self._counts_lock:
            self._rows_pending -= _documents(item)
            self._set_aside_count += 1
        return True


def _documents(item: _Item) -> int:
    """Documents of one queued call: its rows and its packed plain CLEARs."""
    clear = item[2]
    return len(item[1]) + (len(clear.positions) if clear is not None else 0)


def _as_list(values: object) -> list[object]:
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)  # type: ignore[call-overload]


class _Counted(threading.Event):
    """Set by the writer thread when it reaches this marker: every call queued before it is counted."""


_VERDICT_OF: Final = operator.attrgetter("verdict")
_STOP: Final = object()
_PROMPT: Final = object()  # commit soon: a hit watcher started waiting while hits were pending
