"""The per-member token bucket: refill, burst, disabled limit, isolation between members, concurrency."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from idcheck.server.app import rate_limiter
from idcheck.server.config import ConfigError, ServerConfig
from idcheck.server.limits import RateLimited, RateLimiter, SharedBuckets


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def take(limiter: RateLimiter, member: str, n: int) -> int:
    """How many of `n` calls from `member` were admitted."""
    admitted = 0
    for _ in range(n):
        try:
            limiter.acquire(member)
            admitted += 1
        except RateLimited:
            pass
    return admitted


def test_burst_is_admitted_at_once_then_refused_with_time_until_next_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 5, clock=clock)
    assert take(limiter, "NZL", 5) == 5
    with pytest.raises(RateLimited) as refused:
        limiter.acquire("NZL")
    assert refused.value.member == "NZL"
    assert refused.value.retry_after == pytest.approx(0.1)
    assert "NZL" in str(refused.value)


def test_bucket_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 5, clock=clock)
    assert take(limiter, "NZL", 5) == 5
    clock.now += 0.25  # 2.5 tokens
    assert take(limiter, "NZL", 5) == 2
    with pytest.raises(RateLimited) as refused:
        limiter.acquire("NZL")
    assert refused.value.retry_after == pytest.approx(0.05)  # half a token left
    clock.now += refused.value.retry_after
    limiter.acquire("NZL")
    clock.now += 3600  # a long idle time refills only up to the burst
    assert take(limiter, "NZL", 10) == 5


def test_refused_calls_take_no_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1, clock=clock)
    limiter.acquire("NZL")
    for _ in range(100):
        with pytest.raises(RateLimited):
            limiter.acquire("NZL")
    clock.now += 1.0
    limiter.acquire("NZL")


def test_zero_rate_disables_the_limit() -> None:
    limiter = RateLimiter(0, 0, clock=FakeClock())
    assert not limiter.enabled
    assert take(limiter, "NZL", 100_000) == 100_000
    assert len(limiter) == 0


def test_members_have_separate_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 3, clock=clock)
    assert take(limiter, "NZL", 10) == 3
    assert take(limiter, "FJI", 10) == 3  # NZL's exhaustion does not touch FJI
    assert take(limiter, "WSM", 1) == 1


def test_unusable_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1, 10)
    with pytest.raises(ValueError):
        RateLimiter(10, 0)


def test_memory_is_bounded_by_dropping_refilled_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, 1, clock=clock, max_members=3)
    for member in ("NZL", "FJI", "WSM"):
        limiter.acquire(member)
    clock.now += 1.0  # all three are full again: forgetting them changes nothing
    limiter.acquire("AUS")
    assert len(limiter) == 1
    limiter.acquire("NZL")  # a new bucket, full


def test_concurrent_calls_never_admit_more_than_the_burst() -> None:
    limiter = RateLimiter(1e-6, 500)  # practically no refill during the test
    admitted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(member: str) -> None:
        start.wait()
        n = take(limiter, member, 100)
        with lock:
            admitted.append(n)

    threads = [threading.Thread(target=worker, args=("NZL" if i % 2 else "FJI",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 8 threads x 100 calls per member, 500 tokens each: exactly 500 admitted per member, 1000 in all.
    assert sum(admitted) == 1000


def test_configuration_builds_the_limiter_or_none_when_disabled() -> None:
    default = rate_limiter(ServerConfig())
    assert default is not None and (default.per_second, default.burst) == (1000.0, 2000)
    assert rate_limiter(ServerConfig(rate_limit_per_second=0, rate_limit_burst=0)) is None
    with pytest.raises(ConfigError):
        rate_limiter(ServerConfig(rate_limit_per_second=5, rate_limit_burst=0))


# --- buckets shared by worker processes (serve --workers) ------------------------------------------------


def test_shared_buckets_keep_the_same_rules() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 5, clock=clock, shared=SharedBuckets(16))
    assert take(limiter, "NZL", 6) == 5
    with pytest.raises(RateLimited) as refused:
        limiter.acquire("NZL")
    assert refused.value.retry_after == pytest.approx(0.1)
    clock.now += 0.25
    assert take(limiter, "NZL", 5) == 2
    assert take(limiter, "FJI", 10) == 5  # members apart
    clock.now += 3600
    assert take(limiter, "NZL", 10) == 5  # never beyond the burst
    assert len(limiter) == 2


def test_shared_buckets_are_one_limit_across_forked_processes() -> None:
    buckets = SharedBuckets(64)
    limiter = RateLimiter(1e-6, 40, shared=buckets)  # practically no refill during the test
    ctx = multiprocessing.get_context("fork")
    admitted = ctx.Queue()

    def worker() -> None:
        admitted.put(take(limiter, "NZL", 30))

    processes = [ctx.Process(target=worker) for _ in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(30)
    counts = [admitted.get(timeout=5) for _ in processes]
    assert sum(counts) == 40  # 3 x 30 calls against one bucket of 40, not 3 buckets
    assert take(limiter, "NZL", 5) == 0 and take(limiter, "FJI", 5) == 5  # and this process sees the same


def test_a_full_shared_table_drops_refilled_buckets_then_admits_without_one() -> None:
    clock = FakeClock()
    buckets = SharedBuckets(2)
    limiter = RateLimiter(1, 1, clock=clock, shared=buckets)
    limiter.acquire("NZL")
    limiter.acquire("FJI")
    limiter.acquire("WSM")  # both others still refilling: admitted without a bucket, counted
    assert buckets.overflowed == 1 and len(limiter) == 2
    clock.now += 5  # NZL and FJI full again: their slots are freed for newcomers
    limiter.acquire("WSM")
    assert buckets.overflowed == 1
    with pytest.raises(RateLimited):
        limiter.acquire("WSM")  # WSM now has a bucket of its own
    assert take(limiter, "NZL", 3) == 1  # a fresh, full bucket


def test_a_worker_killed_inside_a_take_does_not_block_the_others() -> None:
    buckets = SharedBuckets(8)
    limiter = RateLimiter(1e-6, 5, shared=buckets)
    ctx = multiprocessing.get_context("fork")
    holding = ctx.Event()

    def die_holding_the_lock() -> None:
        with buckets._locked():
            holding.set()
            time.sleep(60)  # killed here

    child = ctx.Process(target=die_holding_the_lock)
    child.start()
    assert holding.wait(10)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(10)
    started = time.monotonic()
    assert take(limiter, "NZL", 6) == 5  # the kernel released the dead worker's lock
    assert time.monotonic() - started < 5
