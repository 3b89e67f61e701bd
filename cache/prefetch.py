"""Prefetch: when segment n of a rendition is requested, fetch the next k in the background.

Listens are sequential, so segment n+1 is the likeliest next request on the
node.  Prefetches run at most ``concurrency`` at a time and skip segments
already cached or recently prefetched, and stop at the rendition's last
segment when the media playlist is cached (no 404 round trips past the end).

Client misses come first: the node wraps every client request that waits on
an upstream fetch (one it leads, or one it joined while in flight: not a
complete body still in memory) in ``client_miss()``, and a prefetch starts
its upstream fetch only while at most ``max_client_misses`` (default 0: none)
are in flight on this worker.  Prefetch and background-revalidation flights
are not client misses.  Prefetches already running are never cancelled.  A
prefetch that has waited ``max_wait`` seconds since it was scheduled (for
client misses to end, or for a free slot) is dropped and counted as
``skipped``: under a constant stream of misses the waiting tasks stay
bounded, and a later request may schedule the segment again.

Bookkeeping for the metrics: a prefetched object counts as *used* when a
client asks for it on this worker, while it is stored or while its prefetch
is still in flight (the client joins it); *wasted* if nobody did within
``unused_after`` seconds, or if it was evicted before anyone asked (the
client's refetch is not a use of it).  The node calls ``expire()`` once a
second, so an idle worker reports waste too; at shutdown objects still
pending are counted neither way.  A hit on another worker of the node counts
as wasted: the estimate errs on the pessimistic side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Self

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


class ClientMiss:
    """One client request waiting on an upstream fetch (``Prefetcher.client_miss``).

    A context manager; ``end()`` ends it early (idempotent), e.g. when the
    flight turns out to be a body already complete in memory.
    """

    __slots__ = ("_open", "_prefetcher")

    def __init__(self, prefetcher: Prefetcher) -> None:
        self._prefetcher = prefetcher
        self._open = True
        prefetcher._miss_began()

    def end(self) -> None:
        if self._open:
            self._open = False
            self._prefetcher._miss_ended()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class Prefetcher:
    """Per-worker prefetch scheduler (see the module docstring)."""

    def __init__(self, k: int, concurrency: int, *, fetch: Callable[[str], Awaitable[int]],
                 cached: Callable[[str], bool], playlist: Callable[[str], bytes | None],
                 max_client_misses: int = 0, max_wait: float = 10.0, unused_after: float = 300.0,
                 on_outcome: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._done: dict[str, float] = {}  # requested segment path -> when its successors were scheduled
        self._k = k
        self._sem = asyncio.Semaphore(concurrency)
        self._fetch = fetch
        self._cached = cached
        self._playlist = playlist
        self._max_misses = max_client_misses
        self._max_wait = max_wait
        self._ttl = unused_after
        self._on_outcome = on_outcome or (lambda outcome, size: None)
        self._clock = clock
        self._misses = 0  # client misses in flight on this worker
        self._may_start = asyncio.Event()  # set while self._misses <= self._max_misses
        self._may_start.set()
        # (track, scheme, rendition), segment number -> when its prefetch was asked for
        self._recent: OrderedDict[_Recent, float] = OrderedDict()
        # prefetched, unused: (when, bytes, its key in _recent)
        self._pending: OrderedDict[str, tuple[float, int, _Recent]] = OrderedDict()
        self._fetching: set[str] = set()  # prefetches in flight
        self._joined: set[str] = set()  # of those, the ones a client asked for meanwhile
        self._last: dict[tuple[str | None, ...], tuple[int | None, float]] = {}  # rendition -> (last, retry at)
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_expiry = float("-inf")  # expiry runs at most once a second from ``after``

    # --- client misses -------------------------------------------------------------
    def client_miss(self) -> ClientMiss:
        """Count a client request waiting on an upstream fetch until the returned handle ends."""
        return ClientMiss(self)

    def tune(self, max_client_misses: int, max_wait: float, unused_after: float) -> None:
        """Apply new limits (a reload); prefetches already waiting keep the deadline they had."""
        self._max_misses, self._max_wait, self._ttl = max_client_misses, max_wait, unused_after
        if self._misses <= self._max_misses:
            self._may_start.set()
        else:
            self._may_start.clear()

    @property
    def client_misses(self) -> int:
        """Client misses in flight on this worker."""
        return self._misses

    def _miss_began(self) -> None:
        self._misses += 1
        if self._misses > self._max_misses:
            self._may_start.clear()

    def _miss_ended(self) -> None:
        self._misses -= 1
        if self._misses <= self._max_misses:
            self._may_start.set()

    # --- requests --------------------------------------------------------------------
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
        a ``path`` handled within ``unused_after`` has nothing new to schedule.
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
        loop = asyncio.get_running_loop()
        for n in range(route.segment + 1, end + 1):
            if (rendition, n) in recent:
                continue
            recent[rendition, n] = now
            if len(recent) > RECENT_MAX:
                recent.popitem(last=False)
            path = urls.segment_path(route.track, route.rendition, n, route.scheme)
            task = loop.create_task(self._run(path, (rendition, n), loop.time() + self._max_wait),
                                    name=f"prefetch {path}")
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

    async def _start(self, deadline: float) -> bool:
        """Wait (holding a slot) until no more than ``max_client_misses`` are in flight; False past ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= deadline:
                return False
            if self._misses <= self._max_misses:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._may_start.wait()

    async def _run(self, path: str, recent: _Recent, deadline: float) -> None:
        async with self._sem:
            if not await self._start(deadline):  # waited too long: dropped, may be scheduled again
                log.debug("prefetch of %s skipped: waited %.1f s to start", path, self._max_wait)
                self._recent.pop(recent, None)
                self._on_outcome("skipped", 0)
                return
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

    # --- housekeeping ------------------------------------------------------------------
    def expire(self) -> None:
        """Count prefetched objects unrequested for ``unused_after`` seconds as wasted.

        The node calls this once a second, so waste is reported on an idle
        worker too (``after`` also does it, at most once a second).
        """
        now = self._clock()
        self._next_expiry = now + 1.0
        self._expire(now)

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
        """Cancel the scheduled and running prefetches; objects still pending are counted neither way."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
