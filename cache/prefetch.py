"""Prefetch: when segment n of a rendition is requested, fetch the next k in the background.

Listens are sequential, so segment n+1 is the likeliest next request on the
node.  Prefetches run at most ``concurrency`` at a time, only while fewer
than ``busy`` client misses are in flight (client misses come first), skip
segments already cached or recently prefetched, and stop at the rendition's
last segment when the media playlist is cached (no 404 round trips past the
end).  Bookkeeping for the metrics: a prefetched object counts as *used*
when a client asks for it on this worker, *wasted* if nobody did within
``ttl`` seconds (a hit on another worker of the node counts as wasted: the
estimate errs on the pessimistic side).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from legato import urls

log = logging.getLogger("legato.prefetch")

_SEGMENT_LINE = re.compile(rb"^seg-(\d+)\.m4s$", re.MULTILINE)


def last_segment(playlist: bytes) -> int | None:
    """Highest segment number named in a media playlist body (pure)."""
    numbers = [int(m) for m in _SEGMENT_LINE.findall(playlist)]
    return max(numbers) if numbers else None


def next_segments(route: urls.Route, k: int, last: int | None) -> list[str]:
    """Paths of the k segments after ``route`` (pure), not past ``last``."""
    assert route.kind is urls.Kind.SEGMENT and route.segment is not None
    assert route.track is not None and route.rendition is not None
    end = route.segment + k if last is None else min(route.segment + k, last)
    return [urls.segment_path(route.track, route.rendition, n, route.scheme) for n in range(route.segment + 1, end + 1)]


class Prefetcher:
    """Per-worker prefetch scheduler (see the module docstring)."""

    def __init__(self, k: int, concurrency: int, *, fetch: Callable[[str], Awaitable[int]],
                 cached: Callable[[str], bool], playlist: Callable[[str], bytes | None],
                 misses_in_flight: Callable[[], int], busy: int = 64, ttl: float = 300.0,
                 on_outcome: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.k = k
        self._sem = asyncio.Semaphore(concurrency)
        self._fetch = fetch
        self._cached = cached
        self._playlist = playlist
        self._misses = misses_in_flight
        self._busy = busy
        self._ttl = ttl
        self._on_outcome = on_outcome or (lambda outcome, size: None)
        self._clock = clock
        self._recent: OrderedDict[str, float] = OrderedDict()  # asked for prefetch recently
        self._pending: OrderedDict[str, tuple[float, int]] = OrderedDict()  # prefetched, unused: (when, bytes)
        self._last: dict[str, int | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def requested(self, path: str) -> None:
        """A client asked for ``path``: a prefetched object is now used."""
        entry = self._pending.pop(path, None)
        if entry is not None:
            self._on_outcome("used", entry[1])

    def after(self, route: urls.Route) -> None:
        """Schedule prefetches following a client request for segment ``route``."""
        if self.k <= 0 or route.kind is not urls.Kind.SEGMENT:
            return
        now = self._clock()
        self._expire(now)
        for path in next_segments(route, self.k, self._last_segment(route)):
            if path in self._recent:
                continue
            self._recent[path] = now
            if len(self._recent) > 4096:
                self._recent.popitem(last=False)
            task = asyncio.get_running_loop().create_task(self._run(path), name=f"prefetch {path}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _last_segment(self, route: urls.Route) -> int | None:
        assert route.track is not None and route.rendition is not None
        key = route.rendition_dir
        if key not in self._last or self._last[key] is None:
            body = self._playlist(urls.rendition_path(route.track, route.rendition, "index.m3u8", route.scheme))
            self._last[key] = last_segment(body) if body is not None else None
            if len(self._last) > 4096:
                self._last.pop(next(iter(self._last)))
        return self._last[key]

    async def _run(self, path: str) -> None:
        async with self._sem:
            while self._misses() >= self._busy:  # client misses first
                await asyncio.sleep(0.01)
            if self._cached(path):
                return
            try:
                size = await self._fetch(path)
            except Exception as exc:  # noqa: BLE001 - a failed prefetch is only a missed opportunity
                log.debug("prefetch of %s failed: %s", path, exc)
                self._on_outcome("failed", 0)
                return
            if size:
                self._pending[path] = (self._clock(), size)
                self._on_outcome("fetched", size)

    def _expire(self, now: float) -> None:
        while self._pending:
            _path, (when, size) = next(iter(self._pending.items()))
            if now - when < self._ttl:
                break
            self._pending.popitem(last=False)
            self._on_outcome("wasted", size)
        while self._recent and now - next(iter(self._recent.values())) > self._ttl:
            self._recent.popitem(last=False)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
