"""Per-session rate limiting of key and licence requests: a token bucket (pure).

Each session (the ``sid`` of its token) has a bucket of ``burst`` tokens that
refills at ``rate`` tokens per second; a request takes one token or is
refused, with the wait until the next token (for ``Retry-After``).  A player
asks for a key or licence a handful of times per track, so a generous bucket
never bothers honest listeners while a token replayed by many clients (or a
script hammering ``/keys``) is slowed to ``rate`` requests per second per
session.

Memory is bounded: at most ``max_keys`` buckets, least recently used dropped
first.  Dropping a bucket forgets at most a deficit: a bucket untouched for
``burst / rate`` seconds is full again, which is exactly what a new one is,
so only sessions busy within that window can gain from eviction, and only
when more than ``max_keys`` sessions are busy at once.

``now`` is an argument (seconds, any epoch, e.g. ``time.monotonic()``); a
clock that steps back never mints tokens.  One limiter per worker process:
with N workers a session may get up to N times the rate (the cache tiers
spread a session's requests over few workers, so in practice far less).
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """Token buckets keyed by session id: ``allow(key, now)`` / ``take(key, now)``."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if not rate > 0:
            raise ValueError(f"rate {rate} must be positive")
        if burst < 1:
            raise ValueError(f"burst {burst} must be at least 1")
        if max_keys < 1:
            raise ValueError(f"max_keys {max_keys} must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last refill)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """Take one token for ``key``: 0.0 when allowed, else the seconds until one is available."""
        entry = self._buckets.pop(key, None)
        if entry is None:
            tokens, last = self.burst, now
        else:
            tokens, last = entry
            if now > last:
                tokens = min(self.burst, tokens + (now - last) * self.rate)
                last = now
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, last)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def allow(self, key: str, now: float) -> bool:
        """Whether ``key`` may make one more request at ``now`` (taking a token if so)."""
        return self.take(key, now) == 0.0
