"""Prefetch: when segment n of a rendition is requested, fetch the next k in the background.

Listens are sequential, so segment n+1 is the likeliest next request on the
node.  Prefetches run at most ``concurrency`` at a time, only while fewer
than ``busy`` client misses are in flight (client misses come first), skip
segments already cached or recently prefetched, and stop at the rendition's
last segment when the media playlist is cached (no 404 round trips past the
end).  Bookkeeping for the metrics: a prefetched object counts as *used*
when a client asks for it on this worker, while it is stored or while its
prefetch is still in flight (the client joins it); *wasted* if nobody did
within ``ttl`` seconds, or if it was evicted before anyone asked (the
client's refetch is not a use of it).  A hit on another worker of the node
counts as wasted: the estimate errs on the pessimistic side.
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
RECENT_MAX = 4096
"""Segments (and renditions) remembered as recently scheduled, per worker."""
PLAYLIST_RETRY = 10.0
"""Seconds before a rendition whose media playlist was not cached is looked up again."""

_Recent = tuple[tuple[str | None, ...], int]
"""A segment in ``Prefetcher._recent``: ((track, scheme, rendition), segment number)."""


def last_segment(playlist: bytes) -> int | None:
    """Highest segment number named in a media playlist body (pure)."""
    numbers = [int(m) for m in _SEGMENT_LINE.findall(playlist)]
    return max(numbers) if numbers else None


class Prefetcher:
    """Per-worker prefetch scheduler (see the module docstring)."""

    def __init__(self, k: int, concurrency: int, *, fetch: Callable[[str], Awaitable[int]],
                 cached: Callable[[str], bool], playlist: Callable[[str], bytes | None],
                 misses_in_flight: Callable[[], int], busy: int = 64, ttl: float = 300.0,
                 on_outcome: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._done: dict[str, float] = {}  # requested segment path -> when its successors were scheduled
        self._k = k
        self._sem = asyncio.Semaphore(concurrency)
        self._fetch = fetch
        self._cached = cached
        self._playlist = playlist
        self._misses = misses_in_flight
        self._busy = busy
        self._ttl = ttl
        self._on_outcome = on_outcome or (lambda outcome, size: None)
        self._clock = clock
        # (track, scheme, rendition), segment number -> when its prefetch was asked for
        self._recent: OrderedDict[_Recent, float] = OrderedDict()
        # prefetched, unused: (when, bytes, its key in _recent)
        self._pending: OrderedDict[str, tuple[float, int, _Recent]] = OrderedDict()
        self._fetching: set[str] = set()  # prefetches in flight
        self._joined: set[str] = set()  # of those, the ones a client asked for meanwhile
        self._last: dict[tuple[str | None, ...], tuple[int | None, float]] = {}  # rendition -> (last, retry at)
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_expiry = float("-inf")  # expiry runs at most once a second

    def requested(self, path: str) -> None:
        """A client asked for ``path``: a prefetched object is now used (or was wasted).

        Costs a dict pop and a set lookup; the store is asked only about a
        prefetched object's first request.  Evicted before it, the object was
        wasted and may be prefetched again (``after`` skips recent segments).
        """
        entry = self._pending.pop(path, None)
        if entry is not None:
            if self._cached(path):
                self._on_outcome("used", entry[1])
            else:
                self._on_outcome("wasted", entry[1])
                self._recent.pop(entry[2], None)
        elif path in self._fetching:
            self._joined.add(path)  # counted as used once the prefetch completes

    @property
    def k(self) -> int:
        """Segments fetched after a requested one (0: off); settable (a reload)."""
        return self._k

    @k.setter
    def k(self, k: int) -> None:
        self._k = k
        self._done.clear()

    def after(self, route: urls.Route, path: str | None = None) -> None:
        """Schedule prefetches following a client request for segment ``route`` (at ``path``).

        Called on every segment hit, so the usual case costs one dict lookup:
        a ``path`` handled within ``ttl`` has nothing new to schedule.
        Otherwise no path is built and the store is not asked for segments
        scheduled recently.
        """
        if self._k <= 0 or route.kind is not urls.Kind.SEGMENT:
            return
        assert route.segment is not None and route.track is not None and route.rendition is not None
        now = self._clock()
        if now >= self._next_expiry:
            self._next_expiry = now + 1.0
            self._expire(now)
        if path is not None:
            handled = self._done.get(path)
            if handled is not None and 0.0 <= now - handled < self._ttl:
                return
            if len(self._done) >= RECENT_MAX:
                self._done.clear()
            self._done[path] = now
        rendition = (route.track, route.scheme, route.rendition)
        last = self._last_segment(route, rendition, now)
        end = route.segment + self._k if last is None else min(route.segment + self._k, last)
        recent = self._recent
        for n in range(route.segment + 1, end + 1):
            if (rendition, n) in recent:
                continue
            recent[rendition, n] = now
            if len(recent) > RECENT_MAX:
                recent.popitem(last=False)
            path = urls.segment_path(route.track, route.rendition, n, route.scheme)
            task = asyncio.get_running_loop().create_task(self._run(path, (rendition, n)), name=f"prefetch {path}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _last_segment(self, route: urls.Route, rendition: tuple[str | None, ...], now: float) -> int | None:
        """The rendition's last segment from its cached media playlist, or None if not cached.

        Remembered per rendition; an absent playlist (a DASH listener never
        asks for it) is looked for again only after ``PLAYLIST_RETRY`` seconds.
        """
        known = self._last.get(rendition)
        if known is not None and (known[0] is not None or now < known[1]):
            return known[0]
        assert route.track is not None and route.rendition is not None
        body = self._playlist(urls.rendition_path(route.track, route.rendition, "index.m3u8", route.scheme))
        last = last_segment(body) if body is not None else None
        self._last[rendition] = (last, now + PLAYLIST_RETRY)
        if len(self._last) > RECENT_MAX:
            self._last.pop(next(iter(self._last)))
        return last

    async def _run(self, path: str, recent: _Recent) -> None:
        async with self._sem:
            while self._misses() >= self._busy:  # client misses first
                await asyncio.sleep(0.01)
            if path in self._fetching or self._cached(path):
                return
            evicted = self._pending.pop(path, None)  # prefetched before, evicted unused
            if evicted is not None:
                self._on_outcome("wasted", evicted[1])
            self._fetching.add(path)
            try:
                size = await self._fetch(path)
            except Exception as exc:  # noqa: BLE001 - a failed prefetch is only a missed opportunity
                log.debug("prefetch of %s failed: %s", path, exc)
                self._on_outcome("failed", 0)
                return
            finally:
                self._fetching.discard(path)
                joined = path in self._joined
                self._joined.discard(path)
            if size:
                self._on_outcome("fetched", size)
                if joined:
                    self._on_outcome("used", size)
                else:
                    self._pending[path] = (self._clock(), size, recent)

    def _expire(self, now: float) -> None:
        while self._pending:
            _path, (when, size, _key) = next(iter(self._pending.items()))
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
