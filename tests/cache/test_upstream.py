"""cache.upstream and cache.health against real misbehaving servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from cache.config import UpstreamConfig
from cache.health import Breaker, State
from cache.upstream import Upstream, UpstreamError

BODY = bytes(range(256)) * 1024  # 256 KiB
ETAG = '"abc"'


class Collect:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.finished = False

    def start(self, status: int, headers: list[tuple[str, str]], content_length: int | None) -> None:
        assert self.status is None, "start called twice"
        self.status, self.headers = status, headers

    async def write(self, chunk: bytes) -> None:
        self.body += chunk

    def finish(self) -> None:
        self.finished = True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def good(request: web.Request) -> web.StreamResponse:
    if request.path == "/healthz":
        return web.Response(text="ok")
    rng = request.headers.get("Range")
    if rng and request.headers.get("If-Range") == ETAG:
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        return web.Response(status=206, body=BODY[start:], headers={
            "ETag": ETAG, "Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"})
    return web.Response(body=BODY, headers={"ETag": ETAG, "Content-Type": "audio/mp4"})


async def error500(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="boom")


async def truncating(request: web.Request) -> web.StreamResponse:
    if request.path == "/healthz":
        return web.Response(text="ok")
    resp = web.StreamResponse(headers={"ETag": ETAG, "Content-Length": str(len(BODY))})
    await resp.prepare(request)
    await resp.write(BODY[:100_000])
    request.transport.close()  # type: ignore[union-attr]
    return resp


async def hanging(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(30)
    return web.Response(text="late")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for r in runners:
        await r.cleanup()


def refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


async def make(peers: list[str], **kw: float) -> Upstream:
    cfg = UpstreamConfig(peers=tuple(peers), health_interval=3600, **kw)  # type: ignore[arg-type]
    up = Upstream(cfg, node="test-node")
    await up.start()
    return up


async def test_fetch_from_a_good_peer(serve) -> None:  # type: ignore[no-untyped-def]
    up = await make([await serve(good)])
    try:
        sink = Collect()
        await up.fetch("/tracks/t/aac-96k/seg-00001.m4s", "t", sink)
        assert (sink.status, bytes(sink.body), sink.finished) == (200, BODY, True)
        assert ("ETag", ETAG) in sink.headers
    finally:
        await up.close()


@pytest.mark.parametrize("bad", ["refused", "500"])
async def test_failed_peer_is_retried_on_the_next(serve, bad: str) -> None:  # type: ignore[no-untyped-def]
    bad_url = refused_url() if bad == "refused" else await serve(error500)
    up = await make([bad_url, await serve(good)])
    try:
        for key in (f"track{i}" for i in range(20)):  # some keys prefer the bad peer first
            sink = Collect()
            await up.fetch("/x", key, sink)
            assert bytes(sink.body) == BODY
    finally:
        await up.close()


async def test_refused_connection_opens_the_breaker_at_once(serve) -> None:  # type: ignore[no-untyped-def]
    bad = refused_url()
    up = await make([bad, await serve(good)])
    try:
        for i in range(20):
            await up.fetch("/x", f"k{i}", Collect())
        assert up.states()[bad] == "open"
        assert bad not in up.order("anything")
    finally:
        await up.close()


async def test_truncated_body_resumes_on_next_peer_with_range(serve) -> None:  # type: ignore[no-untyped-def]
    trunc, ok = await serve(truncating), await serve(good)
    up = await make([trunc, ok])
    try:
        keys = [k for k in (f"t{i}" for i in range(50)) if up.ring.candidates(k)[0] == trunc]
        sink = Collect()
        await up.fetch("/x", keys[0], sink)
        assert bytes(sink.body) == BODY and sink.finished  # one continuous, complete body
    finally:
        await up.close()


async def test_all_peers_failing_is_a_502(serve) -> None:  # type: ignore[no-untyped-def]
    up = await make([await serve(error500), refused_url()])
    try:
        with pytest.raises(UpstreamError) as info:
            await up.fetch("/x", "k", Collect())
        assert info.value.status == 502
    finally:
        await up.close()


async def test_hanging_peer_fails_fast_with_504(serve) -> None:  # type: ignore[no-untyped-def]
    up = await make([await serve(hanging)], deadline=0.5)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(UpstreamError) as info:
            await up.fetch("/x", "k", Collect())
        assert info.value.status == 504
        assert loop.time() - t0 < 2.0
    finally:
        await up.close()


async def test_probe_closes_breaker_when_peer_returns(serve) -> None:  # type: ignore[no-untyped-def]
    url = await serve(good)
    up = await make([url])
    try:
        up.peers.breakers[url].failure(up.clock(), definitive=True)
        assert up.states()[url] == "open"
        assert await up.probe(url)
        assert up.states()[url] == "closed"
    finally:
        await up.close()


def test_breaker_state_machine() -> None:
    b = Breaker(failure_threshold=3, open_seconds=2.0)
    b.failure(0.0)
    b.failure(0.1)
    assert b.state(0.2) is State.CLOSED
    b.failure(0.2)
    assert b.state(0.3) is State.OPEN and not b.available(1.0)
    assert b.state(2.3) is State.HALF_OPEN and b.available(2.3)
    b.failure(2.4)  # a failure while half-open reopens at once
    assert b.state(2.5) is State.OPEN
    b.success()
    assert b.state(2.6) is State.CLOSED
    b.failure(3.0, definitive=True)
    assert b.state(3.1) is State.OPEN
