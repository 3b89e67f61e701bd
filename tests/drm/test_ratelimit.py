"""drm.ratelimit: per-session token buckets, bounded memory."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drm.ratelimit import RateLimiter


def test_burst_then_refill_at_rate() -> None:
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.allow("s", 100.0) for _ in range(4)] == [True, True, True, False]
    assert rl.take("s", 100.0) == pytest.approx(0.5)  # one token takes 1/rate seconds
    assert not rl.allow("s", 100.4)
    assert rl.allow("s", 100.5)
    assert not rl.allow("s", 100.5)
    assert [rl.allow("s", 200.0) for _ in range(4)] == [True, True, True, False]  # never above burst


def test_sessions_are_independent() -> None:
    rl = RateLimiter(rate=1.0, burst=1)
    assert rl.allow("a", 0.0) and not rl.allow("a", 0.0)
    assert rl.allow("b", 0.0)


def test_a_clock_stepping_back_mints_nothing() -> None:
    rl = RateLimiter(rate=1.0, burst=2)
    assert rl.allow("s", 1000.0) and rl.allow("s", 1000.0)
    assert not rl.allow("s", 10.0)
    assert not rl.allow("s", 1000.5)
    assert rl.allow("s", 1001.0)


def test_memory_is_bounded_least_recent_dropped_first() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_keys=100)
    for i in range(10_000):
        rl.allow(f"s{i}", 0.0)
    assert len(rl) == 100
    assert not rl.allow("s9999", 0.0)  # recent: still remembered (empty bucket)
    assert rl.allow("s0", 0.0)  # long gone: a fresh, full bucket


@pytest.mark.parametrize(("rate", "burst", "max_keys"), [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, 0),
                                                         (math.nan, 1, 1)])
def test_bad_parameters(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst, max_keys)


@settings(deadline=None)
@given(rate=st.floats(0.1, 100), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, gaps: list[float]) -> None:
    rl = RateLimiter(rate, burst)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        if rl.allow("s", now):
            allowed += 1
        assert allowed <= burst + rate * now + 1e-6


@settings(deadline=None)
@given(rate=st.floats(0.1, 100), burst=st.integers(1, 20), start=st.floats(0, 1e6))
def test_retry_after_is_exact(rate: float, burst: int, start: float) -> None:
    rl = RateLimiter(rate, burst)
    for _ in range(burst):
        assert rl.allow("s", start)
    wait = rl.take("s", start)
    assert wait > 0
    assert rl.allow("s", start + wait * 1.0001 + 1e-9)
