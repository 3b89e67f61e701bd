"""Serving past an object's lifetime, end to end through a real edge process (RFC 9111 §4.2.4, RFC 5861).

A real ``legato edge`` subprocess (one worker, prefetch off) runs in front of
a tiny aiohttp upstream on 127.0.0.1 (port 0, in a thread with its own event
loop) that answers per path as the test scripts it, with a body naming the
version (the number of the request), and counts the requests it receives.
Nothing is mocked.

Lifetimes are two seconds (``max-age=2``) where a fresh window is needed: the
upstream's ``Date`` has whole-second resolution, so a stored object's age
starts anywhere in [0, 1) s (RFC 9111 §4.2.3, apparent age), and a one-second
lifetime would leave no reliable fresh window.

Checked, as a user of RFC 9111/5861 expects:

* stale-while-revalidate: past max-age a request is answered at once with the
  old body and ``X-Cache: STALE`` while exactly one background refetch goes
  upstream; the next request gets the new body as a ``HIT``; many concurrent
  requests cause one upstream fetch; requests arriving while the refetch is
  still running are answered from the stale copy at once too; a failed
  refetch does not throw the stale copy away;
* stale-if-error: while upstream answers 500 past max-age, every request gets
  the old body with ``X-Cache: STALE`` (not ``HIT``), and the new body once
  upstream is back; past the response's stale-if-error window the client
  gets a 5xx;
* ``Age`` and ``Via`` (with the node's name) on every response kind: ``MISS``,
  ``COALESCED``, ``HIT`` and ``STALE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
from aiohttp import web
from servers import NodeProcess, node_process

NODE_NAME = "edge-stale"
HOLD_MAX = 5.0
"""Seconds a held upstream request waits at most for its release (a failing test never hangs)."""
AT_ONCE = 0.5
"""Seconds within which a response that must not wait for upstream arrives (upstream waits >= 1.5 s)."""


def seg(name: str) -> str:
    """A segment path of its own for each test (the store key and the upstream script)."""
    return f"/tracks/{name}/aac-96k/seg-00001.m4s"


def version(path: str, n: int) -> bytes:
    """The body the upstream sends for its ``n``-th request of ``path``."""
    return f"{path} version {n}\n".encode() * 64


# --- the upstream ------------------------------------------------------------------


@dataclass
class Script:
    """How the upstream answers one path; the test may change it between requests.

    Each request takes the values current when it arrives: ``status`` (200:
    the versioned body with ``cache_control``; else an error), ``delay``
    (seconds to wait before answering) and ``release`` (if not None, wait
    until it is set, at most ``HOLD_MAX`` s).
    """

    cache_control: str
    status: int = 200
    delay: float = 0.0
    release: threading.Event | None = None


class Upstream:
    """An aiohttp upstream on 127.0.0.1 in a thread of its own; counts requests per path."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.hits: dict[str, int] = {}  # requests received per path (health probes not counted)
        self.answered: dict[str, int] = {}  # of those, answered (head and body handed to aiohttp)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-upstream", daemon=True)
        self._thread.start()
        if not self._started.wait(10) or not self.url:
            raise RuntimeError("test upstream did not start")

    def script(self, path: str, cache_control: str, *, release: threading.Event | None = None) -> Script:
        """Answer ``path`` with ``cache_control`` from now on; the returned script may be changed later."""
        script = self.scripts[path] = Script(cache_control, release=release)
        return script

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        finally:
            self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        if path == "/healthz":
            return web.Response(text="ok")
        script = self.scripts.get(path)
        if script is None:
            return web.Response(status=404, text="no such thing")
        n = self.hits[path] = self.hits.get(path, 0) + 1
        status, delay, release = script.status, script.delay, script.release
        try:
            if delay:
                await asyncio.sleep(delay)
            if release is not None:
                deadline = self._loop.time() + HOLD_MAX
                while not release.is_set() and self._loop.time() < deadline:
                    await asyncio.sleep(0.01)
            if status != 200:
                return web.Response(status=status, text="upstream broke")
            return web.Response(body=version(path, n), content_type="video/iso.segment",
                                headers={"Cache-Control": script.cache_control, "ETag": f'"v{n}"'})
        finally:
            self.answered[path] = self.answered.get(path, 0) + 1

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# --- the edge -----------------------------------------------------------------------


@contextlib.contextmanager
def run_edge(tmp: Path, upstream: Upstream, **cache: object) -> Iterator[NodeProcess]:
    """A ``legato edge`` (one worker, no prefetch) in front of ``upstream``; ``cache`` adds [cache] settings."""
    extra = "".join(f"{k} = {v!r}\n" for k, v in cache.items())
    cfg = tmp / "edge.toml"
    cfg.write_text(f'name = "{NODE_NAME}"\nlisten = "127.0.0.1:0"\nworkers = 1\naccess_log = false\n'
                   f'[upstream]\npeers = ["{upstream.url}"]\ndeadline = 4.0\nfirst_byte_timeout = 3.0\n'
                   f'read_timeout = 2.0\nhealth_interval = 0.2\n'
                   f'[cache]\ndir = "{tmp / "cache"}"\nsize = 104857600\n{extra}'
                   f'[prefetch]\nsegments = 0\n')
    with node_process("edge", "--config", str(cfg)) as edge:
        yield edge


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[NodeProcess]:
    """One edge for the module, with the node's default settings (each test uses paths of its own)."""
    with run_edge(tmp_path_factory.mktemp("edge"), upstream) as node:
        yield node


# --- the client -----------------------------------------------------------------------


class Result(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float  # seconds from sending the request to the end of the body

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("X-Cache")


def get(url: str, timeout: float = 10) -> Result:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, headers, body = resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, dict(exc.headers.items()), exc.read()
    return Result(status, headers, body, time.monotonic() - t0)


def get_many(url: str, n: int) -> list[Result]:
    """``n`` requests for ``url`` at the same time (one connection each)."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: get(url), range(n)))


def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def sleep_until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``moment``."""
    time.sleep(max(0.0, moment - time.monotonic()))


def age(r: Result) -> int:
    """The response's Age (RFC 9111 §5.1): present, a non-negative integer."""
    assert "Age" in r.headers, f"{r.x_cache} response without Age: {r.headers}"
    value = r.headers["Age"]
    assert value.isdigit(), f"Age {value!r} is not delta-seconds"
    return int(value)


def assert_via(r: Result) -> None:
    """The response names this node as the last member of Via (RFC 9110 §7.6.3)."""
    assert "Via" in r.headers, f"{r.x_cache} response without Via: {r.headers}"
    last = r.headers["Via"].split(",")[-1].strip()
    assert last == f"1.1 {NODE_NAME}", r.headers["Via"]


def miss(url: str, path: str, n: int = 1) -> float:
    """Fetch ``url`` once as the MISS bringing version ``n`` into the store; return when it ended."""
    r = get(url)
    assert (r.status, r.x_cache, r.body) == (200, "MISS", version(path, n))
    return time.monotonic()


def until_hit(url: str, body: bytes, timeout: float = 2.0) -> Result:
    """Request ``url`` until it is a HIT (stored once its fetch has ended; a request just after the MISS may
    still join the fetch's flight, ``COALESCED``); every answer has ``body``; the HIT is returned."""
    deadline = time.monotonic() + timeout
    while True:
        r = get(url)
        assert (r.status, r.body) == (200, body), (r.status, r.x_cache)
        if r.x_cache == "HIT":
            return r
        assert r.x_cache == "COALESCED" and time.monotonic() < deadline, f"not stored: {r.x_cache}"
        time.sleep(0.02)


STALE_AFTER = 2.2
"""Seconds after a max-age=2 MISS ended by which the object is stale whatever its Date said."""


SWR = "public, max-age=2, stale-while-revalidate=30"
"""Two seconds fresh, then thirty within stale-while-revalidate."""


def stored_copy(edge: NodeProcess, upstream: Upstream, name: str,
                cache_control: str) -> tuple[str, str, Script, float]:
    """Script ``seg(name)`` upstream with ``cache_control`` and bring version 1 into ``edge``'s store with one
    MISS: (path, its URL on the edge, the upstream's script for it, when the MISS ended)."""
    path = seg(name)
    url = edge.url + path
    script = upstream.script(path, cache_control)
    return path, url, script, miss(url, path)


# --- stale-while-revalidate -------------------------------------------------------------


def test_swr_serves_old_body_at_once_then_new_body_as_hit(edge: NodeProcess, upstream: Upstream) -> None:
    """Past max-age within stale-while-revalidate: STALE with the old body at once, one background refetch
    upstream, then the new body as a HIT (and no further upstream request)."""
    path, url, script, stored = stored_copy(edge, upstream, "swr-basic", SWR)
    until_hit(url, version(path, 1))
    assert upstream.hits[path] == 1

    script.delay = 1.5  # the revalidation is slow: the stale answer must not wait for it
    sleep_until(stored + STALE_AFTER)
    stale = get(url)
    assert (stale.status, stale.x_cache, stale.body) == (200, "STALE", version(path, 1))
    assert stale.elapsed < AT_ONCE, f"the stale answer waited {stale.elapsed:.2f} s for upstream"
    assert age(stale) >= 2  # past its lifetime: Age is at least max-age
    assert_via(stale)

    until(lambda: upstream.answered.get(path) == 2, what="the background refetch")
    time.sleep(0.3)  # the node commits the new body
    new = get(url)
    assert (new.status, new.x_cache, new.body) == (200, "HIT", version(path, 2))
    assert age(new) < 2
    assert_via(new)
    time.sleep(0.3)
    assert upstream.hits[path] == 2  # exactly one background revalidation


def test_swr_concurrent_requests_cause_one_upstream_fetch(edge: NodeProcess, upstream: Upstream) -> None:
    """Twenty requests at once on an object within stale-while-revalidate: one upstream fetch in all;
    every answer is complete (old or new body) and the object is a HIT with the new body afterwards."""
    path, url, script, stored = stored_copy(edge, upstream, "swr-concurrent", SWR)
    script.delay = 1.0
    sleep_until(stored + STALE_AFTER)
    results = get_many(url, 20)
    for r in results:
        assert r.status == 200 and r.body in (version(path, 1), version(path, 2)), (r.status, r.x_cache)
        assert r.x_cache in ("STALE", "COALESCED", "HIT"), r.x_cache
        age(r)
        assert_via(r)
    assert any(r.x_cache == "STALE" for r in results)
    until(lambda: upstream.answered.get(path) == 2, what="the background refetch")
    time.sleep(0.3)
    after = get_many(url, 5)
    assert [(r.status, r.x_cache, r.body) for r in after] == [(200, "HIT", version(path, 2))] * 5
    assert upstream.hits[path] == 2  # the MISS and one revalidation, whatever the concurrency


def test_swr_requests_during_the_refetch_get_the_stale_copy_at_once(edge: NodeProcess, upstream: Upstream) -> None:
    """While the background refetch is still waiting for upstream, further requests within the
    stale-while-revalidate window are answered from the stale copy at once (RFC 5861 §3: the point of
    the directive is to hide the revalidation's latency), not held until upstream answers."""
    release = threading.Event()
    path, url, script, stored = stored_copy(edge, upstream, "swr-during", SWR)
    script.release = release
    sleep_until(stored + STALE_AFTER)
    timer = threading.Timer(2.0, release.set)  # upstream answers the refetch 2 s from now
    timer.start()
    try:
        first = get(url)
        assert (first.status, first.x_cache, first.body) == (200, "STALE", version(path, 1))
        until(lambda: upstream.hits.get(path) == 2, what="the background refetch to reach upstream")
        during = get_many(url, 10)
        for r in during:
            assert (r.status, r.x_cache, r.body) == (200, "STALE", version(path, 1)), (
                f"{r.status} {r.x_cache} after {r.elapsed:.2f} s")
            assert r.elapsed < AT_ONCE, f"held {r.elapsed:.2f} s behind the refetch"
    finally:
        release.set()
        timer.cancel()
    until(lambda: upstream.answered.get(path) == 2, what="the background refetch")
    time.sleep(0.3)
    new = get(url)
    assert (new.status, new.x_cache, new.body) == (200, "HIT", version(path, 2))
    assert upstream.hits[path] == 2


def test_swr_failed_refetch_keeps_the_stale_copy(edge: NodeProcess, upstream: Upstream) -> None:
    """A background refetch that fails (upstream 500) does not lose the stored object: the next request,
    still within stale-while-revalidate (and the node's stale-if-error), gets the old body as STALE, not a 5xx."""
    path, url, script, stored = stored_copy(edge, upstream, "swr-failed", SWR)
    script.status = 500
    sleep_until(stored + STALE_AFTER)
    first = get(url)
    assert (first.status, first.x_cache, first.body) == (200, "STALE", version(path, 1))
    until(lambda: upstream.answered.get(path) == 2, what="the background refetch")
    time.sleep(0.3)  # the failure has reached the node
    again = get(url)
    assert (again.status, again.x_cache, again.body) == (200, "STALE", version(path, 1))
    assert_via(again)
    assert age(again) >= 2


# --- stale-if-error -----------------------------------------------------------------------


def test_stale_if_error_serves_old_body_marked_stale(edge: NodeProcess, upstream: Upstream) -> None:
    """Past max-age, upstream answering 500: every request in the stale-if-error window gets the old body
    explicitly as STALE (not HIT), with Age >= max-age and Via; once upstream recovers, the new body."""
    path, url, script, stored = stored_copy(edge, upstream, "sie-serve", "public, max-age=2, stale-if-error=30")
    script.status = 500
    sleep_until(stored + STALE_AFTER)
    for attempt in range(3):
        r = get(url)
        assert (r.status, r.x_cache, r.body) == (200, "STALE", version(path, 1)), (attempt, r.status, r.x_cache)
        assert age(r) >= 2
        assert_via(r)
    assert upstream.hits[path] >= 2  # it was served because upstream failed, after asking upstream
    script.status = 200
    time.sleep(0.5)  # a health probe has closed the breaker the 500s may have opened
    recovered = get(url)
    n = upstream.hits[path]
    assert (recovered.status, recovered.x_cache, recovered.body) == (200, "MISS", version(path, n))


@pytest.mark.parametrize("node_stale_if_error", [None, 0], ids=["node-default", "node-0"])
def test_stale_if_error_window_ends_in_5xx(tmp_path: Path, edge: NodeProcess, upstream: Upstream,
                                           node_stale_if_error: int | None) -> None:
    """Past the response's own stale-if-error window (``max-age=1, stale-if-error=1``: usable until age 2)
    upstream failing gives the client a 5xx, not the stale body: with ``[cache] stale_if_error = 0`` and
    with the node's default setting, which applies "when the response does not say" (cache/config.py)."""
    path = seg(f"sie-window-{node_stale_if_error}")
    script = upstream.script(path, "public, max-age=1, stale-if-error=1")
    with contextlib.ExitStack() as stack:
        base = edge.url
        if node_stale_if_error is not None:
            base = stack.enter_context(run_edge(tmp_path, upstream, stale_if_error=node_stale_if_error)).url
        url = base + path
        stored = miss(url, path)
        script.status = 500
        sleep_until(stored + 2.3)  # age >= 2.3: more than 1 s past max-age=1
        r = get(url)
        assert 500 <= r.status <= 599, (r.status, r.x_cache, r.body[:40])
        assert r.body != version(path, 1)
        assert r.x_cache != "HIT"
        age(r)
        assert_via(r)


# --- Age and Via on every kind ----------------------------------------------------------------


def test_every_response_kind_carries_age_and_via(edge: NodeProcess, upstream: Upstream) -> None:
    """MISS and COALESCED (two requests while upstream is slow: one upstream request), HIT (Age grows with
    the time stored) and STALE all carry Age and a Via naming this node."""
    path = seg("kinds")
    url = edge.url + path
    release = threading.Event()
    upstream.script(path, SWR, release=release)
    long_path = seg("kinds-long")
    long_url = edge.url + long_path
    upstream.script(long_path, "public, max-age=60")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(get, url)
        until(lambda: upstream.hits.get(path) == 1, what="the first request to reach upstream")
        second = pool.submit(get, url)
        time.sleep(0.3)  # the second request reaches the node and joins the fetch in flight
        release.set()
        pair = [first.result(), second.result()]
    stored = time.monotonic()
    assert sorted(r.x_cache or "" for r in pair) == ["COALESCED", "MISS"]
    for r in pair:
        assert (r.status, r.body) == (200, version(path, 1))
        assert age(r) == 0
        assert_via(r)
    assert upstream.hits[path] == 1

    long_stored = miss(long_url, long_path)
    hit = until_hit(long_url, version(long_path, 1))
    age(hit)
    assert_via(hit)
    sleep_until(long_stored + 1.1)
    later = get(long_url)
    assert (later.status, later.x_cache) == (200, "HIT")
    assert age(later) >= 1  # the time spent in the cache counts (RFC 9111 §4.2.3 resident time)
    assert_via(later)

    sleep_until(stored + STALE_AFTER)
    stale = get(url)
    assert (stale.status, stale.x_cache, stale.body) == (200, "STALE", version(path, 1))
    assert age(stale) >= 2
    assert_via(stale)
