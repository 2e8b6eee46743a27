"""Per-member request rate limit: one token bucket per authenticated member.

Each member's bucket holds up to `burst` tokens and refills at `per_second` tokens a second; every RPC takes
one token. A call that finds the bucket empty is refused (RESOURCE_EXHAUSTED, mapped in `server/errors.py`)
with the time until a token is available, so a well-behaved client knows when to retry. Buckets are per
member, so one member's runaway client never slows another member's border checks.

Memory is bounded: callers are authenticated before they reach the limiter, and a member is a known ICAO
state code, so there are at most a few hundred buckets. `max_members` is a second guard: when it is reached,
buckets that have refilled completely (indistinguishable from a new one) are dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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


class RateLimiter:
    """Token buckets keyed by member code; thread-safe, O(1) per call. `per_second` 0 disables the limit."""

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_members: int = 4096,
    ) -> None:
        if per_second < 0:
            raise ValueError("per_second must not be negative")
        if per_second > 0 and burst < 1:
            raise ValueError("burst must be at least 1 when the rate limit is enabled")
        self.per_second = float(per_second)
        self.burst = int(burst)
        self._clock = clock
        self._max_members = max_members
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
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(member)
            if bucket is None:
                if len(self._buckets) >= self._max_members:
                    self._drop_full(now)
                bucket = self._buckets[member] = _Bucket(float(self.burst), now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_second)
                bucket.updated = now
            # The tolerance absorbs float rounding, so that waiting exactly `retry_after` always succeeds.
            if bucket.tokens >= 1.0 - 1e-9:
                bucket.tokens = max(0.0, bucket.tokens - 1.0)
                return
            retry_after = (1.0 - bucket.tokens) / self.per_second
        raise RateLimited(member, retry_after, self.per_second, self.burst)

    def _drop_full(self, now: float) -> None:
        """Forget buckets that have refilled to `burst` (a new bucket would be the same). Caller holds the lock."""
        full = [m for m, b in self._buckets.items() if b.tokens + (now - b.updated) * self.per_second >= self.burst]
        for member in full:
            del self._buckets[member]

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


__all__ = ["RateLimited", "RateLimiter"]
