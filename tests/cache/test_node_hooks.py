"""cache.node's hooks in process: Node.fetch_bytes, gates/rewriters taking kinds off the fast path.

A real Node (store, coalescer, upstream) against a real aiohttp upstream on
127.0.0.1 that counts requests; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from cache.config import CacheSettings, NodeConfig, PrefetchConfig, UpstreamConfig
from cache.node import Node
from cache.upstream import UpstreamError
from legato import urls

LICENCE = b'{"track": "t1", "allow": ["WW"]}'


class Upstream:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.down = False
        self.gone: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/healthz":
            return web.Response(text="ok")
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if self.down:
            return web.Response(status=503, text="down")
        if request.path in self.gone:
            return web.Response(status=404, text="gone")
        if request.path == "/licenses/t1.json":
            return web.Response(body=LICENCE, headers={"Cache-Control": "public, max-age=60", "ETag": '"l1"'})
        if request.path == "/licenses/short.json":
            return web.Response(body=LICENCE, headers={"Cache-Control": "public, max-age=0, stale-if-error=600"})
        if request.path == "/tracks/t1/master.m3u8":
            return web.Response(body=b"#EXTM3U\n", headers={"Cache-Control": "public, max-age=60"})
        return web.Response(status=404, text="no such thing")


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, Upstream]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", up
    await runner.cleanup()


@pytest.fixture
async def node(tmp_path: Path, upstream: tuple[str, Upstream]) -> AsyncIterator[Node]:
    config = NodeConfig(name="hooks", upstream=UpstreamConfig(peers=(upstream[0],), deadline=2.0, health_interval=5),
                        cache=CacheSettings(dir=tmp_path / "cache", size=1 << 26, ram=0),
                        prefetch=PrefetchConfig(segments=0))
    n = Node(config, "edge")
    await n.start()
    yield n
    await n.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_fetch_bytes_stores_and_reuses(node: Node, upstream: tuple[str, Upstream]) -> None:
    _, up = upstream
    assert await node.fetch_bytes("/licenses/t1.json") == LICENCE
    await until(lambda: "/licenses/t1.json" in node.store)  # committed just after the body ended
    assert await node.fetch_bytes("/licenses/t1.json") == LICENCE
    assert up.hits["/licenses/t1.json"] == 1  # the second read was the stored copy
    assert await node.fetch_bytes("/licenses/none.json") is None  # 404: no record
    assert "/licenses/none.json" not in node.store


async def test_fetch_bytes_stale_if_error_and_failures(node: Node, upstream: tuple[str, Upstream]) -> None:
    _, up = upstream
    assert await node.fetch_bytes("/licenses/short.json") == LICENCE
    await until(lambda: "/licenses/short.json" in node.store)
    up.down = True
    assert await node.fetch_bytes("/licenses/short.json") == LICENCE  # stale, allowed by stale-if-error
    assert await node.fetch_bytes("/licenses/short.json") == LICENCE  # and for the whole outage
    assert "/licenses/short.json" in node.store
    with pytest.raises(UpstreamError) as err:
        await node.fetch_bytes("/licenses/t2.json")  # nothing stored, upstream failing
    assert err.value.status in (502, 503, 504)
    up.down = False
    up.gone.add("/licenses/short.json")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (body := await node.fetch_bytes("/licenses/short.json")) is not None:  # until the breaker lets it by
        assert body == LICENCE and loop.time() < deadline
        await asyncio.sleep(0.2)
    assert "/licenses/short.json" not in node.store  # gone upstream: the stale copy went too
    up.down = True
    with pytest.raises(UpstreamError):
        await node.fetch_bytes("/licenses/short.json")


@pytest.mark.parametrize("path", ["/keys/0123456789abcdef0123456789abcdef", "/license/clearkey", "/metrics",
                                  "/nowhere", "/tracks/../x"])
async def test_fetch_bytes_refuses_what_is_not_a_cacheable_object(node: Node, path: str) -> None:
    with pytest.raises(ValueError):
        await node.fetch_bytes(path)


class _Gate:
    kinds = frozenset({urls.Kind.MASTER})

    async def check(self, request: web.Request, route: urls.Route, node: Node) -> web.StreamResponse | None:
        return None


class _Rewriter:
    kinds = frozenset({urls.Kind.MPD})

    def rewrite(self, request: web.Request, route: urls.Route, body: bytes) -> bytes:
        return body


async def test_hooked_kinds_leave_the_fast_path(node: Node) -> None:
    assert await node.fetch_bytes("/tracks/t1/master.m3u8") == b"#EXTM3U\n"
    await until(lambda: "/tracks/t1/master.m3u8" in node.store)
    now = node.clock()
    hit = node.lookup("/tracks/t1/master.m3u8?token=x", [], now)
    assert hit is not None  # no hooks: a fresh stored manifest is a fast-path hit
    hit.close()
    node.install([_Gate()], [_Rewriter()])
    assert node.lookup("/tracks/t1/master.m3u8", [], now) is None  # gated: aiohttp (and the gate) decide
    assert urls.Kind.MPD not in node._fast_kinds and urls.Kind.SEGMENT in node._fast_kinds
    node.install()
    hit = node.lookup("/tracks/t1/master.m3u8", [], now)
    assert hit is not None
    hit.close()




@pytest.mark.parametrize("immutable", [True, False])
async def test_fast_path_lookup_follows_the_clock_for_a_remembered_fresh_verdict(node: Node, immutable: bool) -> None:
    """A hot immutable object's verdict is remembered within a second, never past its lifetime."""
    from cache.meta import ResponseHead

    path = urls.segment_path("t1", "aac-160", 1)
    t0 = 1_800_000_000.0
    cc = "public, max-age=2" + (", immutable" if immutable else "")
    writer = node.store.begin(path, t0, content_length=4)
    writer.write(b"abcd")
    assert writer.commit(ResponseHead.build(200, (("Cache-Control", cc),), 4), t0) is not None

    def age(now: float, headers: list[tuple[str, str]] | None = None) -> int | None:
        hit = node.lookup(path, headers or [], now)
        if hit is None:
            return None
        hit.close()
        return hit.age

    assert age(t0 + 0.1) == 0
    assert age(t0 + 0.9) == 0
    assert age(t0 + 1.2) == 1  # a new second: assessed again
    assert age(t0 + 1.99) == 1
    assert age(t0 + 2.0) is None  # stale from its lifetime on, whatever was remembered
    assert age(t0 + 5.0) is None
    # a client's no-cache applies to mutable objects only (RFC 8246), remembered verdict or not
    assert (age(t0 + 1.5, [("cache-control", "no-cache")]) is None) is not immutable


async def test_a_renewed_fast_path_hit_holds_exactly_as_long_as_a_lookup_would(node: Node, tmp_path: Path) -> None:
    """FastHit.renew: within its second, for an immutable fresh object, until a purge anywhere or new hooks."""
    from cache.meta import ResponseHead
    from cache.store import Store

    def store(path: str, cc: str, t: float) -> None:
        writer = node.store.begin(path, t, content_length=4)
        writer.write(b"abcd")
        assert writer.commit(ResponseHead.build(200, (("Cache-Control", cc),), 4), t) is not None

    seg, mutable = urls.segment_path("t1", "aac-160", 1), urls.segment_path("t1", "aac-160", 2)
    t0 = float(int(node.clock()))
    store(seg, "public, max-age=60, immutable", t0)
    store(mutable, "public, max-age=60", t0)
    await asyncio.sleep(0.1)  # a body younger than the store's mtime slack is hashed again on its next hit
    for path in (seg, mutable):
        node.lookup(path, [], t0 + 0.2).close()  # the first hit verifies and opens; the next ones hold the file
    hit = node.lookup(seg, [], t0 + 0.3)
    assert hit is not None and hit.renewable

    def hits() -> float:
        node.metrics.flush()
        return node.registry.get_sample_value("legato_cache_requests_total", {"tier": "edge", "result": "HIT"}) or 0.0

    before = hits()
    assert hit.renew(t0 + 0.5) and hit.renew(t0 + 0.99)
    assert hits() == before  # a renewal is not yet a reply: the fast path counts the one it sends
    hit.count(200, hit.size)
    hit.count(206, 100)
    assert hits() == before + 2
    assert not hit.renew(t0 + 1.0)  # another second: Date, Age and the verdict are the lookup's again
    other = node.lookup(mutable, [], t0 + 0.3)
    assert other is not None and not other.renewable  # a client's Cache-Control could change its verdict
    assert not other.renew(t0 + 0.4)
    other.close()

    again = node.lookup(seg, [], t0 + 0.6)
    assert again is not None and again.renew(t0 + 0.7)
    node.install()  # new hooks (a reload) could gate the kind
    assert not again.renew(t0 + 0.8)
    again.close()

    held = node.lookup(seg, [], t0 + 0.6)
    assert held is not None and held.renew(t0 + 0.7)
    worker = Store(tmp_path / "cache", 1 << 26)  # another worker of the node purges it
    try:
        assert worker.delete(seg)
    finally:
        worker.close()
    assert not held.renew(t0 + 0.8)
    assert os.read(held.fileno(), 4) == b"abcd"  # a send in progress still has its file
    held.close()
    hit.close()
    assert node.lookup(seg, [], t0 + 0.9) is None
