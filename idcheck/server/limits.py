"""Admission limits: a per-member request rate limit, and overload shedding for the whole server.

Rate limit: one token bucket per authenticated member.

Each member's bucket holds up to `burst` tokens and refills at `per_second` tokens a second; every RPC takes
one token. A call that finds the bucket empty is refused (RESOURCE_EXHAUSTED, mapped in `server/errors.py`)
with the time until a token is available, so a well-behaved client knows when to retry. Buckets are per
member, so one member's runaway client never slows another member's border checks.

Memory is bounded: callers are authenticated before they reach the limiter, and a member is a known ICAO
state code, so there are at most a few hundred buckets. `max_members` is a second guard: when it is reached,
buckets that have refilled completely (indistinguishable from a new one) are dropped.

Under `serve --workers N` the buckets live in memory shared by the worker processes (`SharedBuckets`, made
before they are forked, behind one lock across processes), so a member's limit is the same whichever worker
its connections land on, and however many there are.

Overload shedding (`ConcurrencyLimiter`, README "Limits and overload"): at most `slots` calls are worked on at
once; up to `queue` more may wait for a slot, each for at most `max_wait` seconds and never past its own
deadline; any call beyond that is refused at once (RESOURCE_EXHAUSTED with a retry hint) instead of queueing
without bound. A call whose deadline passes while it waits is not worked on. Long-lived response streams
(WatchHits, WatchChanges) do not take a work slot, so followers can never starve border checks; they have
their own small cap (`streams`) and are refused beyond it. A check stream (CheckDocumentStream) holds a thread
for as long as it is open and has a cap of its own (`check_streams`); each check it carries takes a work slot
like a CheckDocument call.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass


class RateLimited(Exception):
    """A member called faster than its rate limit allows; `retry_after` seconds until a token is available."""

    def __init__(self, member: str, retry_after: float, per_second: float, burst: int) -> None:
        super().__init__(
            f"rate limit exceeded for member {member} ({per_second:g} requests/s, burst {burst}); "
            f"retry in {retry_after:.3f}s"
        )
        self.member = member
        self.retry_after = retry_after
        self.per_second = per_second
        self.burst = burst


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


def _refill(tokens: float, updated: float, now: float, per_second: float, burst: int) -> float:
    return min(float(burst), tokens + max(0.0, now - updated) * per_second)


def _take(tokens: float, per_second: float) -> tuple[float, float | None]:
    """(tokens left, None) when a token is taken, else (tokens, seconds until one is available)."""
    # The tolerance absorbs float rounding, so that waiting exactly `retry_after` always succeeds.
    if tokens >= 1.0 - 1e-9:
        return max(0.0, tokens - 1.0), None
    return tokens, (1.0 - tokens) / per_second


class SharedBuckets:
    """Token buckets in anonymous shared memory, for the worker processes of one server (made before fork()).

    A fixed table of `max_members` slots, each the member code (up to 24 bytes of UTF-8), its tokens and the time
    they were counted (`time.monotonic`, one clock for every process of the machine); a slot is found by
    probing from the CRC-32 of the code. One lock covers a whole take: a POSIX record lock on an unlinked file,
    which the kernel releases when its holder dies (a worker killed in the middle of a take must not leave the
    others waiting forever, as a semaphore would), with a thread lock in front of it (record locks are held by
    processes, not threads). A table full of members whose buckets are still refilling admits the newcomers
    without a bucket (counted in `overflowed`): the limit protects the service from a runaway member, it is not an
    identity check. Member codes are state codes; two codes alike in their first 24 bytes would share a bucket.
    """

    _SLOT = struct.Struct("24sdd")

    def __init__(self, max_members: int = 4096) -> None:
        if max_members < 1:
            raise ValueError("max_members must be at least 1")
        self.slots = max_members
        self._memory = mmap.mmap(-1, self._SLOT.size * max_members)  # MAP_SHARED | MAP_ANONYMOUS: inherited
        # Inherited across fork() and kept open as long as the buckets: only its record lock is used.
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115
        self._thread_lock = threading.Lock()
        self.overflowed = 0  # calls admitted without a bucket, table full (this process)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.lockf(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._lock_file, fcntl.LOCK_UN)

    def take(self, member: str, now: float, per_second: float, burst: int) -> float | None:
        """Take a token from `member`'s bucket: None when taken, else the seconds until one is available."""
        code = member.encode()[:24]
        with self._locked():
            slot = self._find(code, now, per_second, burst)
            if slot is None:
                self.overflowed += 1
                return None
            name, tokens, updated = self._SLOT.unpack_from(self._memory, slot)
            tokens = float(burst) if name != code.ljust(24, b"\0") else _refill(tokens, updated, now, per_second, burst)
            tokens, retry_after = _take(tokens, per_second)
            self._SLOT.pack_into(self._memory, slot, code, tokens, now)
            return retry_after

    def _find(self, code: bytes, now: float, per_second: float, burst: int) -> int | None:
        """Offset of `code`'s slot, or of a free one for it (lock held); None when the table is full of others."""
        padded = code.ljust(24, b"\0")
        start = zlib.crc32(code) % self.slots
        for attempt in range(2):
            for i in range(self.slots):
                offset = ((start + i) % self.slots) * self._SLOT.size
                name = self._memory[offset : offset + 24]
                if name == padded or name == bytes(24):
                    return offset
            if attempt == 0:
                self._drop_full(now, per_second, burst)
        return None

    def _drop_full(self, now: float, per_second: float, burst: int) -> None:
        """Free the slots of buckets that have refilled to `burst`, compacting the probe chains (lock held)."""
        kept = []
        for slot in range(self.slots):
            name, tokens, updated = self._SLOT.unpack_from(self._memory, slot * self._SLOT.size)
            if name != bytes(24) and _refill(tokens, updated, now, per_second, burst) < burst:
                kept.append((name, tokens, updated))
        self._memory[:] = bytes(len(self._memory))
        for name, tokens, updated in kept:
            start = zlib.crc32(name.rstrip(b"\0")) % self.slots
            for i in range(self.slots):
                offset = ((start + i) % self.slots) * self._SLOT.size
                if self._memory[offset : offset + 24] == bytes(24):
                    self._SLOT.pack_into(self._memory, offset, name, tokens, updated)
                    break

    def __len__(self) -> int:
        with self._locked():
            return sum(
                self._memory[s * self._SLOT.size : s * self._SLOT.size + 24] != bytes(24) for s in range(self.slots)
            )


class RateLimiter:
    """Token buckets keyed by member code; thread-safe, O(1) per call. `per_second` 0 disables the limit.

    With `shared`, the buckets are those of every worker process of the server (see SharedBuckets)."""

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_members: int = 4096,
        shared: SharedBuckets | None = None,
    ) -> None:
        if per_second < 0:
            raise ValueError("per_second must not be negative")
        if per_second > 0 and burst < 1:
            raise ValueError("burst must be at least 1 when the rate limit is enabled")
        self.per_second = float(per_second)
        self.burst = int(burst)
        self._clock = clock
        self._max_members = max_members
        self._shared = shared
        self._buckets: dict[str, _Bucket] = {}
        # One lock for all buckets: the work under it is a few float operations, far below the cost of an RPC.
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def acquire(self, member: str) -> None:
        """Take one token from `member`'s bucket, or raise RateLimited with the time until one is available."""
        if not self.enabled:
            return
        if self._shared is not None:
            retry_after = self._shared.take(member, self._clock(), self.per_second, self.burst)
        else:
            with self._lock:
                now = self._clock()
                bucket = self._buckets.get(member)
                if bucket is None:
                    if len(self._buckets) >= self._max_members:
                        self._drop_full(now)
                    bucket = self._buckets[member] = _Bucket(float(self.burst), now)
                else:
                    bucket.tokens = _refill(bucket.tokens, bucket.updated, now, self.per_second, self.burst)
                    bucket.updated = now
                bucket.tokens, retry_after = _take(bucket.tokens, self.per_second)
        if retry_after is not None:
            raise RateLimited(member, retry_after, self.per_second, self.burst)

    def _drop_full(self, now: float) -> None:
        """Forget buckets that have refilled to `burst` (a new bucket would be the same). Caller holds the lock."""
        full = [m for m, b in self._buckets.items() if b.tokens + (now - b.updated) * self.per_second >= self.burst]
        for member in full:
            del self._buckets[member]

    def __len__(self) -> int:
        if self._shared is not None:
            return len(self._shared)
        with self._lock:
            return len(self._buckets)


class Overloaded(Exception):
    """The server is working on as many calls as it may (and its queue is full); retry in `retry_after` s."""

    def __init__(self, what: str, retry_after: float, limit: int) -> None:
        super().__init__(f"server overloaded: {what}; retry in {retry_after:.3f}s")
        self.what = what
        self.retry_after = retry_after
        self.limit = limit


class CallExpired(Exception):
    """The call's deadline passed (or its caller went away) before a work slot was free: it was not worked on."""


class ConcurrencyLimiter:
    """Bounds the calls worked on at once (`slots`), the calls waiting for a slot (`queue`, each at most
    `max_wait` seconds) and the long-lived response streams open at once (`streams`). Thread-safe.

    The retry hint of a refusal is the time the calls ahead of it need: a moving average of how long admitted
    calls held their slot, times the calls waiting plus one, divided by the slots; clamped to
    [`MIN_RETRY`, `MAX_RETRY`]. A refused stream is told `STREAM_RETRY` seconds (streams free up rarely)."""

    MIN_RETRY = 0.01
    MAX_RETRY = 5.0
    STREAM_RETRY = 2.0

    def __init__(
        self,
        slots: int,
        queue: int,
        max_wait: float,
        streams: int,
        *,
        check_streams: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1 or queue < 0 or streams < 0 or check_streams < 0 or max_wait < 0:
            raise ValueError(
                "slots must be at least 1; queue, streams, check_streams and max_wait must not be negative"
            )
        self.slots = slots
        self.queue = queue
        self.max_wait = max_wait
        self.streams = streams
        self.check_streams = check_streams
        self._check_stream_ends: set[Callable[[], None]] = set()  # of the open check streams: end_check_streams
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._waiting = 0
        self._open_streams = 0
        self._mean_hold = 0.01  # seconds a call holds its slot, moving average (starts at a typical check)
        self.refused = 0  # calls and streams refused so far (for tests and metrics)

    def _retry_after(self) -> float:
        estimate = self._mean_hold * (self._waiting + 1) / self.slots
        return min(self.MAX_RETRY, max(self.MIN_RETRY, estimate))

    def enter(self, time_left: float, still_wanted: Callable[[], bool] = lambda: True) -> float:
        """Take a work slot, waiting at most `max_wait` seconds and never longer than `time_left` (the call's
        remaining deadline). Returns the clock reading at admission (give it back to `leave`). Raises
        Overloaded when no slot and no queue place is free, or the wait ran out; CallExpired when the deadline
        passed or `still_wanted()` turned false while waiting."""
        if time_left <= 0:
            raise CallExpired("deadline passed before the call was taken up")
        with self._cond:
            if self._running < self.slots:
                self._running += 1
                return self._clock()
            if self._waiting >= self.queue:
                self.refused += 1
                raise Overloaded(
                    f"{self._running} calls in work and {self._waiting} waiting (limits {self.slots} and {self.queue})",
                    self._retry_after(),
                    self.slots,
                )
            self._waiting += 1
            try:
                now = self._clock()
                until_deadline = now + time_left
                until_refused = now + self.max_wait
                while self._running >= self.slots:
                    now = self._clock()
                    if now >= until_deadline:
                        raise CallExpired("deadline passed while the call waited for a work slot")
                    if now >= until_refused:
                        self.refused += 1
                        raise Overloaded(
                            f"no work slot free within {self.max_wait:g}s ({self.slots} calls in work)",
                            self._retry_after(),
                            self.slots,
                        )
                    # Woken by `leave`; the periodic wake-up notices a caller that went away.
                    self._cond.wait(min(until_deadline, until_refused, now + 0.05) - now)
                    if not still_wanted():
                        raise CallExpired("the caller went away while the call waited for a work slot")
                self._running += 1
                return self._clock()
            finally:
                self._waiting -= 1

    def leave(self, admitted_at: float) -> None:
        """Give back a work slot taken by `enter` (pass what `enter` returned)."""
        held = max(0.0, self._clock() - admitted_at)
        with self._cond:
            self._running -= 1
            self._mean_hold += 0.1 * (held - self._mean_hold)
            self._cond.notify()

    def open_stream(self) -> None:
        """Count one more long-lived response stream, or raise Overloaded when `streams` are open."""
        with self._cond:
            if self._open_streams >= self.streams:
                self.refused += 1
                raise Overloaded(
                    f"{self._open_streams} streams open (limit {self.streams})", self.STREAM_RETRY, self.streams
                )
            self._open_streams += 1

    def close_stream(self) -> None:
        with self._cond:
            self._open_streams -= 1

    def open_check_stream(self, end: Callable[[], None]) -> None:
        """Count one more check stream, or raise Overloaded when `check_streams` are open. `end` ends it early (the
        server is stopping: `end_check_streams`); give the same callable back to `close_check_stream`."""
        with self._cond:
            if len(self._check_stream_ends) >= self.check_streams:
                self.refused += 1
                raise Overloaded(
                    f"{len(self._check_stream_ends)} check streams open (limit {self.check_streams})",
                    self.STREAM_RETRY,
                    self.check_streams,
                )
            self._check_stream_ends.add(end)

    def close_check_stream(self, end: Callable[[], None]) -> None:
        with self._cond:
            self._check_stream_ends.discard(end)

    @property
    def open_check_streams(self) -> int:
        with self._cond:
            return len(self._check_stream_ends)

    def end_check_streams(self) -> int:
        """End every open check stream (the server is stopping): a stream waiting for its next request ends now,
        one working on a check once it has sent the answer. Returns how many were open."""
        with self._cond:
            ends = list(self._check_stream_ends)
        for end in ends:
            end()
        return len(ends)

    def load(self) -> tuple[int, int, int]:
        """(calls in work, calls waiting, streams open) right now."""
        with self._cond:
            return self._running, self._waiting, self._open_streams


__all__ = ["CallExpired", "ConcurrencyLimiter", "Overloaded", "RateLimited", "RateLimiter"]
