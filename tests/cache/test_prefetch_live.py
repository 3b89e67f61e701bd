"""Prefetch on a real edge process in front of an upstream the test holds: concurrency, priority, metrics.

The scheduler itself is unit-tested with a stub in tests/cache/test_prefetch.py
and once end to end in tests/test_tiers.py; here a ``legato edge`` subprocess
(127.0.0.1, port 0) fetches from a small aiohttp upstream running in the
test's own event loop, whose handlers can hold requests open, so what is in
flight at the upstream can be counted and the prefetch metrics read by value
from ``/metrics``:

* ``[prefetch] concurrency`` bounds the prefetches in flight at the upstream;
* a client miss does not wait behind held prefetches, a segment's prefetches
  start only once its own client miss is answered, and none start while more
  than ``[prefetch] max_client_misses`` (default 0) client misses are in
  flight; one that waited ``max_wait`` seconds to start is dropped (skipped);
* ``used`` counts the bytes of a prefetched segment when a client asks for it
  (once); a listener who joins a prefetch still in flight used it too; a
  prefetched segment evicted before anyone asked for it was wasted, not used;
  one nobody asked for within ``unused_after`` seconds was wasted, counted
  by the node's once-a-second housekeeping even with no further requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from metrics_text import session_metric as metric
from servers import node_process

from cache.config import PrefetchConfig
from legato import urls

RENDITION = "aac-160"
INIT_SIZE = 30_000
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_CLIENT_MISSES = PrefetchConfig().max_client_misses
"""Client misses in flight that a prefetch may still start beside (the default, which these edges use)."""


def seg(track: str, n: int) -> str:
    return urls.segment_path(track, RENDITION, n)


def seg_size(n: int) -> int:
    """Segment n's body length: every segment differs, so metrics are checked by value."""
    return 20_000 + 1_000 * n


def body(label: str, size: int) -> bytes:
    return (label.encode() + b"|") * (size // (len(label) + 1)) + b"." * (size % (len(label) + 1))


def playlist(segments: int) -> bytes:
    lines = [b"#EXTM3U", b"#EXT-X-TARGETDURATION:6", b'#EXT-X-MAP:URI="init.mp4"']
    for n in range(1, segments + 1):
        lines += [b"#EXTINF:6,", f"seg-{n:05d}.m4s".encode()]
    return b"\n".join([*lines, b"#EXT-X-ENDLIST", b""])


class Upstream:
    """An upstream peer: every track has ``segments`` segments, a media playlist and an init segment.

    Requests for which ``held(path)`` is true wait until ``release`` is set;
    ``delay`` is added to every object request.  Bodies are small enough
    (< 64 KiB) that writing one never waits for the socket, so ``open``
    (requests received whose response has not been written) is exact.
    """

    def __init__(self, segments: int = 20) -> None:
        self.segments = segments
        self.url = ""
        self.arrived: list[str] = []  # object paths in order of arrival (not /healthz)
        self.events: list[tuple[str, str]] = []  # ("arrive" | "end", path) in order
        self.open: set[str] = set()
        self.peak = 0  # most object requests open at once
        self.held: Callable[[str], bool] = lambda path: False
        self.release = asyncio.Event()
        self.delay = 0.0
        self.sizes: dict[str, int] = {}  # body length by path, instead of the default
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, path: str) -> int:
        return self.arrived.count(path)

    def segments_arrived(self, track: str) -> list[int]:
        """Segment numbers of ``track`` requested so far, in order of arrival."""
        prefix = f"/tracks/{track}/{RENDITION}/seg-"
        return [int(p[len(prefix):-4]) for p in self.arrived if p.startswith(prefix)]

    def _body(self, route: urls.Route) -> bytes | None:
        if route.kind is urls.Kind.SEGMENT:
            assert route.segment is not None
            if not 1 <= route.segment <= self.segments:
                return None
            return body(route.path, seg_size(route.segment))
        if route.kind is urls.Kind.MEDIA_PLAYLIST:
            return playlist(self.segments)
        if route.kind is urls.Kind.INIT:
            return body(route.path, self.sizes.get(route.path, INIT_SIZE))
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            return web.Response(text="ok")
        route = urls.parse(path)
        data = self._body(route) if route is not None else None
        self.arrived.append(path)
        self.events.append(("arrive", path))
        self.open.add(path)
        self.peak = max(self.peak, len(self.open))
        try:
            if self.held(path):
                await self.release.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if data is None:
                return web.Response(status=404, text="no such object")
            resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600",
                                               "ETag": f'"{len(data)}"', "Content-Type": "application/octet-stream"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data)
            await resp.write_eof()
            return resp
        finally:
            self.open.discard(path)
            self.events.append(("end", path))


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    await up.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=CLIENT_TIMEOUT) as session:
        yield session


@contextlib.asynccontextmanager
async def edge(tmp_path: Path, up: Upstream, *, segments: int, concurrency: int = 4,
               size: int = 64 << 20, prefetch: str = "") -> AsyncIterator[str]:
    """A ``legato edge`` process in front of ``up`` (one worker, LRU, no RAM tier); yields its base URL.

    ``prefetch``: more ``[prefetch]`` lines, each ending in a newline.

    Started and stopped in a thread: the upstream runs in this event loop and must keep answering.
    """
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'name = "edge-p"\nlisten = "127.0.0.1:0"\naccess_log = false\nshutdown_timeout = 1.0\n'
                   f'[upstream]\npeers = ["{up.url}"]\nfirst_byte_timeout = 8.0\nread_timeout = 8.0\n'
                   f'deadline = 15.0\nhealth_interval = 0.2\n'
                   f'[cache]\ndir = "{tmp_path / "cache"}"\nsize = {size}\nram = 0\npolicy = "lru"\n'
                   f'[prefetch]\nsegments = {segments}\nconcurrency = {concurrency}\n{prefetch}')
    manager = node_process("edge", "--config", str(cfg))
    node = await asyncio.to_thread(manager.__enter__)
    try:
        yield node.url
    finally:
        up.release.set()  # a held request would keep the node's shutdown waiting
        await asyncio.to_thread(manager.__exit__, None, None, None)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    """Status, X-Cache and body of a GET."""
    async with session.get(url) as resp:
        return resp.status, resp.headers.get("X-Cache", ""), await resp.read()


async def prefetched(session: aiohttp.ClientSession, base: str, outcome: str) -> int:
    """Bytes counted by ``legato_prefetch_bytes_total`` with ``outcome`` (fetched, used, wasted, failed)."""
    return int(await metric(session, base, "legato_prefetch_bytes_total", outcome=outcome))


async def fetched_is(session: aiohttp.ClientSession, base: str, expected: int) -> bool:
    return await prefetched(session, base, "fetched") == expected


async def cache_playlist(session: aiohttp.ClientSession, base: str, track: str) -> None:
    """Ask for ``track``'s media playlist until it is a HIT.

    A miss is stored only after its body has gone out, so a segment asked for
    right after could find no playlist and the prefetcher would not know the
    rendition's end for ``PLAYLIST_RETRY`` seconds.
    """
    path = base + urls.rendition_path(track, RENDITION, "index.m3u8")

    async def hit() -> bool:
        status, x_cache, _ = await get(session, path)
        assert status == 200
        return x_cache == "HIT"

    await until(hit, f"{track}'s playlist stored")


async def evicted(session: aiohttp.ClientSession, base: str, at_least: int) -> bool:
    return await metric(session, base, "legato_cache_evictions_total") >= at_least


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 8.0) -> None:
    """Wait until ``check()`` (a bool or an awaitable one) is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# --- bounded concurrency -------------------------------------------------------------

async def test_prefetches_in_flight_never_exceed_the_configured_concurrency(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """k=8, concurrency=3: exactly 3 prefetches reach a stalling upstream, 3 at most once it answers, all 8 once."""
    upstream.held = lambda path: path.startswith("/tracks/t1/") and not path.endswith("seg-00001.m4s")
    async with edge(tmp_path, upstream, segments=8, concurrency=3) as url:
        assert await get(client, url + seg("t1", 1)) == (200, "MISS", body(seg("t1", 1), seg_size(1)))
        await until(lambda: len(upstream.open) == 3, "3 prefetches at the upstream")
        await asyncio.sleep(0.5)  # the other 5 are scheduled: they must wait for a slot
        assert sorted(upstream.segments_arrived("t1")) == [1, 2, 3, 4] and upstream.peak == 3
        upstream.delay = 0.1  # from now on each answer takes a while, so later prefetches overlap too
        upstream.release.set()
        wanted = sum(seg_size(n) for n in range(2, 10))
        await until(lambda: fetched_is(client, url, wanted), "all 8 prefetches fetched")
        await asyncio.sleep(0.3)
        assert sorted(upstream.segments_arrived("t1")) == list(range(1, 10))  # 2..9, each once, nothing past
        assert upstream.peak == 3


# --- priority ----------------------------------------------------------------------

async def test_a_client_miss_does_not_wait_behind_held_prefetches(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """While 3 prefetches stall at the upstream and 5 more are queued, client misses are answered at once.

    One of them is a segment queued for prefetch (not yet at the upstream): the
    client fetches it itself, and the queued prefetch then finds it cached and
    does not fetch it again.
    """
    stalled = {seg("t1", n) for n in (2, 3, 4)}
    upstream.held = stalled.__contains__
    async with edge(tmp_path, upstream, segments=8, concurrency=3) as url:
        assert (await get(client, url + seg("t1", 1)))[0] == 200
        await until(lambda: upstream.open == stalled, "the first 3 prefetches held at the upstream")
        init = urls.rendition_path("t2", RENDITION, "init.mp4")
        assert await get(client, url + init) == (200, "MISS", body(init, INIT_SIZE))
        assert await get(client, url + seg("t1", 7)) == (200, "MISS", body(seg("t1", 7), seg_size(7)))
        assert upstream.open == stalled and not upstream.release.is_set()  # answered while the prefetches stall
        upstream.release.set()
        # seg 1 schedules 2..9 and seg 7 schedules 10..15
        await until(lambda: set(upstream.segments_arrived("t1")) == set(range(1, 16)) and not upstream.open,
                    "the queued prefetches")
        await asyncio.sleep(0.3)
        assert upstream.count(seg("t1", 7)) == 1  # the queued prefetch of seg 7 found it cached
        assert sorted(upstream.segments_arrived("t1")) == list(range(1, 16))


async def test_a_segments_prefetches_start_only_after_its_own_miss_is_answered(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """The upstream holds the client's segment 1 for 0.5 s: segments 2 and 3 are not asked for meanwhile."""
    upstream.held = lambda path: path == seg("t1", 1)
    async with edge(tmp_path, upstream, segments=2) as url:
        request = asyncio.ensure_future(get(client, url + seg("t1", 1)))
        await until(lambda: seg("t1", 1) in upstream.open, "the client's miss at the upstream")
        await asyncio.sleep(0.5)
        assert upstream.segments_arrived("t1") == [1]
        upstream.release.set()
        assert (await request)[:2] == (200, "MISS")
        await until(lambda: len(upstream.segments_arrived("t1")) == 3, "the prefetches")
        assert sorted(upstream.segments_arrived("t1")) == [1, 2, 3]
        ended = upstream.events.index(("end", seg("t1", 1)))
        assert upstream.events.index(("arrive", seg("t1", 2))) > ended


@pytest.mark.parametrize("held", [1, 64])
async def test_no_prefetch_starts_while_busy_client_misses_are_in_flight(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession, held: int) -> None:
    """With ``held`` client misses held at the upstream (1: the default threshold, 0 misses, is exceeded;
    64: the old threshold), a segment hit's prefetches do not reach the upstream until they are answered."""
    assert MAX_CLIENT_MISSES == 0  # the documented default; the test edge does not set another
    upstream.held = lambda path: path.startswith("/tracks/c")
    async with edge(tmp_path, upstream, segments=2) as url:
        misses = [asyncio.ensure_future(get(client, url + urls.rendition_path(f"c{i}", RENDITION, "init.mp4")))
                  for i in range(held)]
        await until(lambda: len(upstream.open) == held, f"{held} client misses at the upstream")
        assert (await get(client, url + seg("t1", 1)))[:2] == (200, "MISS")  # not held
        await asyncio.sleep(0.5)
        assert upstream.segments_arrived("t1") == [1]  # its prefetches wait for the client misses
        assert upstream.open == {urls.rendition_path(f"c{i}", RENDITION, "init.mp4") for i in range(held)}
        upstream.release.set()
        assert all(status == 200 for status, _, _ in await asyncio.gather(*misses))
        await until(lambda: sorted(upstream.segments_arrived("t1")) == [1, 2, 3], "the prefetches, after the misses")
        answered = max(i for i, (event, path) in enumerate(upstream.events)
                       if event == "end" and path.startswith("/tracks/c"))
        assert upstream.events.index(("arrive", seg("t1", 2))) > answered
        assert upstream.events.index(("arrive", seg("t1", 3))) > answered


async def test_a_slow_client_of_a_finished_miss_does_not_hold_prefetches_back(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """A client miss counts against prefetch until its upstream fetch is over, not until the client has
    read it: a client that reads nothing of an 8 MB miss does not keep a later segment's prefetches waiting."""
    big = urls.rendition_path("c0", RENDITION, "init.mp4")
    upstream.sizes[big] = 8_000_000
    async with edge(tmp_path, upstream, segments=2) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.transport.set_write_buffer_limits(0)
            writer.write(f"GET {big} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
            await writer.drain()
            await until(lambda: ("end", big) in upstream.events, "the upstream has sent the whole miss")
            assert (await get(client, url + seg("t1", 1)))[:2] == (200, "MISS")
            await until(lambda: sorted(upstream.segments_arrived("t1")) == [1, 2, 3], "the prefetches", timeout=3.0)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")  # the slow client is still being served meanwhile
        finally:
            writer.close()


async def test_a_prefetch_that_waits_longer_than_max_wait_is_dropped(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """max_wait = 0.5 s; a client miss held for 1.5 s: segment 1's prefetches are dropped (skipped), not
    fetched once the miss ends; the next segment request schedules them again."""
    held = urls.rendition_path("c0", RENDITION, "init.mp4")
    upstream.held = lambda path: path == held
    async with edge(tmp_path, upstream, segments=2, prefetch="max_wait = 0.5\n") as url:
        miss = asyncio.ensure_future(get(client, url + held))
        await until(lambda: held in upstream.open, "the client miss at the upstream")
        assert (await get(client, url + seg("t1", 1)))[:2] == (200, "MISS")

        async def skipped() -> bool:
            async with client.get(url + "/metrics") as resp:
                return 'outcome="skipped"' in await resp.text()

        await until(skipped, "the prefetches skipped", timeout=3.0)
        await asyncio.sleep(1.0)
        upstream.release.set()
        assert (await miss)[0] == 200
        await asyncio.sleep(0.5)
        assert upstream.segments_arrived("t1") == [1]  # dropped: nothing was left waiting
        assert await prefetched(client, url, "fetched") == 0
        assert (await get(client, url + seg("t1", 2)))[:2] == (200, "MISS")
        await until(lambda: sorted(upstream.segments_arrived("t1")) == [1, 2, 3, 4], "3 and 4 prefetched")


# --- used and wasted ----------------------------------------------------------------

async def test_used_counts_a_prefetched_segments_bytes_once_when_a_client_asks(
        tmp_path: Path, client: aiohttp.ClientSession) -> None:
    """k=2 on a 4-segment rendition whose playlist is cached: fetched/used by value, never past the end."""
    up = Upstream(segments=4)
    await up.start()
    try:
        async with edge(tmp_path, up, segments=2) as url:
            await cache_playlist(client, url, "t1")
            assert (await get(client, url + seg("t1", 1)))[:2] == (200, "MISS")
            await until(lambda: fetched_is(client, url, seg_size(2) + seg_size(3)), "2 and 3 fetched")
            assert await prefetched(client, url, "used") == 0  # the client's own miss is not a prefetch
            assert await get(client, url + seg("t1", 2)) == (200, "HIT", body(seg("t1", 2), seg_size(2)))
            assert await prefetched(client, url, "used") == seg_size(2)
            assert (await get(client, url + seg("t1", 2)))[:2] == (200, "HIT")
            assert await prefetched(client, url, "used") == seg_size(2)  # once per prefetched object
            await until(lambda: fetched_is(client, url, sum(map(seg_size, (2, 3, 4)))),
                        "4 fetched after 2 was asked for")
            assert (await get(client, url + seg("t1", 3)))[:2] == (200, "HIT")
            assert await prefetched(client, url, "used") == seg_size(2) + seg_size(3)
            await asyncio.sleep(0.3)
            assert sorted(up.segments_arrived("t1")) == [1, 2, 3, 4]  # seg 5 is past the playlist's end
            assert await prefetched(client, url, "wasted") == 0
    finally:
        await up.close()


async def test_a_listener_joining_a_prefetch_in_flight_counts_as_used(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """Segment 2's prefetch stalls; the listener asks for 2 (COALESCED onto it): its bytes were used."""
    upstream.held = lambda path: path == seg("t1", 2)
    async with edge(tmp_path, upstream, segments=1) as url:
        assert (await get(client, url + seg("t1", 1)))[:2] == (200, "MISS")
        await until(lambda: seg("t1", 2) in upstream.open, "the prefetch of 2 at the upstream")
        request = asyncio.ensure_future(get(client, url + seg("t1", 2)))
        await asyncio.sleep(0.3)  # the listener is waiting on the prefetch's flight
        upstream.release.set()
        assert await request == (200, "COALESCED", body(seg("t1", 2), seg_size(2)))
        assert upstream.count(seg("t1", 2)) == 1
        await until(lambda: fetched_is(client, url, seg_size(2) + seg_size(3)),
                    "2 and 3 fetched")
        assert await prefetched(client, url, "used") == seg_size(2)


async def test_a_prefetched_segment_evicted_before_use_is_wasted_not_used(
        tmp_path: Path, client: aiohttp.ClientSession) -> None:
    """LRU, 100 kB store: 2 and 3 are prefetched, then evicted by other objects; asking for 2 is a MISS.

    Its prefetched bytes were never served: they count as wasted, and the
    client's refetch does not count as a use of them.
    """
    up = Upstream(segments=4)
    await up.start()
    try:
        async with edge(tmp_path, up, segments=2, size=100_000) as url:
            await cache_playlist(client, url, "t1")
            assert (await get(client, url + seg("t1", 1)))[:2] == (200, "MISS")
            await until(lambda: fetched_is(client, url, seg_size(2) + seg_size(3)),
                        "2 and 3 fetched")
            for i in range(8):  # 240 kB of newer objects: LRU evicts t1's four first
                assert (await get(client, url + urls.rendition_path(f"x{i}", RENDITION, "init.mp4")))[0] == 200
            await until(lambda: evicted(client, url, 4), "4 evictions")
            assert (await get(client, url + seg("t1", 2)))[:2] == (200, "MISS")  # evicted indeed
            used = await prefetched(client, url, "used")
            wasted = await prefetched(client, url, "wasted")
            assert (used, wasted) == (0, seg_size(2))
    finally:
        await up.close()


async def test_unrequested_prefetches_count_as_wasted_after_unused_after_on_an_idle_edge(
        tmp_path: Path, upstream: Upstream, client: aiohttp.ClientSession) -> None:
    """unused_after = 1 s and no request after segment 1: wasted rises by 2's and 3's bytes within ~2 s."""
    async with edge(tmp_path, upstream, segments=2, prefetch="unused_after = 1.0\n") as url:
        assert (await get(client, url + seg("t1", 1)))[:2] == (200, "MISS")
        wanted = seg_size(2) + seg_size(3)
        await until(lambda: fetched_is(client, url, wanted), "2 and 3 fetched")
        fetched_at = time.monotonic()
        assert await prefetched(client, url, "wasted") == 0  # not yet: 1 s has not passed

        async def wasted() -> bool:
            return await prefetched(client, url, "wasted") == wanted

        await until(wasted, "2 and 3 counted as wasted", timeout=5.0)
        assert time.monotonic() - fetched_at < 2.5  # the window (1 s) + the housekeeping period (1 s)
        assert await prefetched(client, url, "used") == 0
        assert sorted(upstream.segments_arrived("t1")) == [1, 2, 3]
