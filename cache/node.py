"""A cache node (regional or edge): the pull-through engine as an aiohttp app
with the sendfile fast path in front.

Per worker process: one ``Store`` view of the node's shared cache directory,
one ``Coalescer``, one ``Upstream`` (peers, health, retries), one
``Prefetcher``.  A request passes named phases:

1. **fast path** (cache.fastpath, before aiohttp): a GET/HEAD whose object
   is stored and fresh is answered by ``lookup`` + os.sendfile; anything
   else is handed to aiohttp on the same connection;
2. **route**: raw path -> ``legato.urls`` (400 hostile, 404 unknown),
   ``/admin/purge``, ``/metrics``, ``/healthz``, OPTIONS, 405;
3. **lookup**: a stored object is assessed (cache.freshness): fresh or
   stale-while-revalidate -> served (``HIT``/``STALE``); otherwise it is
   refetched, and served anyway (``STALE``) if upstream fails within its
   stale-if-error window;
4. **fetch**: misses join the coalescer (``MISS`` for the one request that
   leads, ``COALESCED`` for every other, in any worker), stream as the body
   arrives, and are committed to the store when complete and storable;
5. **prefetch**: a segment request schedules the next k segments.

Keys and licences (``/keys/{kid}``, ``/license/clearkey``) are never
stored: after the gates, ``forward`` passes them (query string and a small
POST body included) to an upstream peer through the same peer order,
breakers and deadline as a fetch, and relays the answer (``X-Cache: PASS``).

Hooks (generic: the node knows nothing of tokens or territories; the edge
installs them, see edge/app.py): gates (``Gate``) run in order after routing and
before lookup for GET/HEAD/POST of their kinds, and may answer instead (a
refusal); rewriters (``Rewriter``) change a 200 body of their kinds per request at
send time (the stored copy is untouched; a changed body goes out as a full
representation with its own ETag and ``Cache-Control: private, no-store``).
Kinds any hook covers are never answered by the fast path.  Gates may read
cacheable objects through the engine with ``await node.fetch_bytes(path)``.

Every response carries ``X-Cache``, ``Age`` and ``Via``.  Cached responses
are shaped by cache.respond (Range, conditionals, CORS), the one place that
does so for both the fast path and aiohttp.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import xxhash
from aiohttp import hdrs, web

from cache import freshness as fr
from cache.coalesce import CoalesceError, Coalescer, Flight, Role, TooManyWaiters
from cache.config import NodeConfig
from cache.meta import Meta, ResponseHead
from cache.prefetch import Prefetcher
from cache.respond import Cached, Reply, respond
from cache.store import Hit, Store
from cache.upstream import HOP_BY_HOP, Sink, Upstream, UpstreamError
from legato import __version__, urls
from legato import http as h
from legato.logs import KIND_KEY, Observer, RequestMetrics, begin, render_metrics
from legato.server import OBSERVERS, RELOAD, SITE
from legato.web import ALLOW, base_headers, read_body, target_path
from legato.web import error as web_error
from legato.web import options as web_options

log = logging.getLogger("legato.node")

NODE: web.AppKey[Node] = web.AppKey("node")
PURGE_PATH = "/admin/purge"
CACHEABLE = frozenset({urls.Kind.MASTER, urls.Kind.MPD, urls.Kind.TRACK_JSON, urls.Kind.MEDIA_PLAYLIST,
                       urls.Kind.INIT, urls.Kind.SEGMENT, urls.Kind.LICENSE})
METRICS_FLUSH = 1.0
"""Seconds between moves of the per-request counts into the Prometheus counters."""
ROUTE_MEMO = 65536
"""Parsed request paths each worker remembers for the fast path."""
FORWARDED = frozenset({urls.Kind.KEY, urls.Kind.CLEARKEY})
"""Kinds passed through to upstream and never stored."""
FORWARD_METHODS = (hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_POST)
FORWARD_ALLOW = "GET, HEAD, POST, OPTIONS"
MAX_FORWARD_BODY = 4096
"""Bytes a forwarded request body may have (an EME ClearKey licence request is ~100)."""
MAX_FORWARD_ANSWER = 64 * 1024
"""Bytes a forwarded answer may have (a key is 16, a JWK set for a few KIDs < 1 KiB)."""
FORWARD_REQUEST_FIELDS = ("Content-Type", "Accept", "User-Agent")
"""Request fields passed upstream with a forwarded request (X-Forwarded-For is added)."""
FORWARD_DROPPED = frozenset({"server", "date", "via", "vary", "cache-control", "age", "x-cache", "set-cookie"})
"""Fields of a forwarded answer this node replaces (HOP_BY_HOP and Access-Control-* go too)."""


class Gate(Protocol):
    """A check run before lookup for GET/HEAD/POST requests of ``kinds`` (e.g. edge/gates.py).

    ``check`` returns None to let the request through, or the response to
    send instead (a refusal, sent as is).  Gates run in the order installed;
    the first refusal wins.
    """

    @property
    def kinds(self) -> frozenset[urls.Kind]: ...

    async def check(self, request: web.Request, route: urls.Route, node: Node) -> web.StreamResponse | None: ...


class Rewriter(Protocol):
    """A per-request change of a 200 body of ``kinds``, applied at send time.

    ``rewrite`` is pure and returns ``body`` itself (or equal bytes) when it
    has nothing to change; the stored copy is never touched.
    """

    @property
    def kinds(self) -> frozenset[urls.Kind]: ...

    def rewrite(self, request: web.Request, route: urls.Route, body: bytes) -> bytes: ...


class NodeMetrics:
    """The engine's own Prometheus metrics (requests, bytes, upstreams, prefetch).

    Requests and bytes by result are counted in plain integers on the request
    path and moved into the counters every ``METRICS_FLUSH`` seconds and
    before /metrics is rendered (another worker's counts may lag by that).
    """

    def __init__(self, role: str, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.role = role
        self.results = Counter("legato_cache_requests", "Cacheable requests by X-Cache result",
                               ("tier", "result"), registry=registry)
        self.sent = Counter("legato_cache_bytes_sent", "Body bytes sent for cacheable requests, by result and status",
                            ("tier", "result", "status"), registry=registry)
        self.upstream = Histogram("legato_upstream_seconds", "Upstream attempt time by peer and outcome",
                                  ("tier", "peer", "outcome"), registry=registry,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.up = Gauge("legato_upstream_up", "1 when a peer's circuit breaker is not open", ("tier", "peer"),
                        registry=registry, multiprocess_mode="livemin")
        self.prefetch = Counter("legato_prefetch_bytes", "Prefetched bytes by outcome (fetched, used, wasted)",
                                ("tier", "outcome"), registry=registry)
        self.store_bytes = Gauge("legato_store_bytes", "Bytes of objects in the store", ("tier",),
                                 registry=registry, multiprocess_mode="livemax")
        self.store_objects = Gauge("legato_store_objects", "Objects in the store", ("tier",),
                                   registry=registry, multiprocess_mode="livemax")
        self._pending: dict[tuple[str, int], list[int]] = {}  # (result, status) -> [requests, bytes]

    def result(self, result: str, status: int, sent: int) -> None:
        """Count one response: two integer additions; ``flush`` moves them into the counters."""
        counts = self._pending.get((result, status))
        if counts is None:
            counts = self._pending[result, status] = [0, 0]
        counts[0] += 1
        counts[1] += sent

    def flush(self) -> None:
        """Move the pending counts into the Prometheus counters (every second, and before /metrics)."""
        pending, self._pending = self._pending, {}
        for (result, status), (requests, sent) in pending.items():
            self.results.labels(self.role, result).inc(requests)
            self.sent.labels(self.role, result, str(status)).inc(sent)


class _Entry:
    """What a worker derives once per stored object (keyed by its checksum and time)."""

    __slots__ = ("cached", "facts", "fresh_in", "meta")

    def __init__(self, meta: Meta, facts: fr.CachedResponse, cached: Cached) -> None:
        self.meta, self.facts, self.cached = meta, facts, cached
        # (second, age): an immutable object found fresh, with at least a second to live, in that second
        self.fresh_in: tuple[int, int] | None = None


class FastHit:
    """A fresh stored object for the fast path (cache.fastpath.Hit).

    ``renewable`` when the verdict holds for the rest of this second whatever
    the request says (immutable, fresh for at least another second: see
    ``Node.lookup``) and the store can vouch for the open file again.
    """

    __slots__ = ("_epoch", "_hit", "_node", "_second", "age", "body", "cached", "renewable", "size")

    def __init__(self, hit: Hit, cached: Cached, age: int, node: Node, second: int | None) -> None:
        self._hit, self.cached, self.age = hit, cached, age
        self.size, self.body = hit.meta.size, hit.body  # read by the fast path on every hit: plain slots
        self._node, self._epoch = node, node._epoch
        self.renewable = second is not None and hit.renewable
        self._second = second

    def renew(self, now: float) -> bool:
        """True if this hit may be sent again at ``now`` (the store counts the hit for the policy)."""
        node = self._node
        if not self.renewable or int(now) != self._second or node._epoch != self._epoch:
            return False
        return node.store.renew(self._hit, now)

    def count(self, status: int, sent: int) -> None:
        self._node.metrics.result("HIT", status, sent)

    def fileno(self) -> int:
        return self._hit.fileno()

    def close(self) -> None:
        self._hit.close()


class Node:
    """One worker's engine (see the module docstring)."""

    def __init__(self, config: NodeConfig, role: str, *, clock: Callable[[], float] = time.time,
                 registry: Any = None) -> None:
        self.config = config
        self.role = role
        self.clock = clock
        self.origins = h.parse_origins(config.cors_origin)
        self.requests = RequestMetrics(role)
        self.registry = registry or self.requests.registry
        self.metrics = NodeMetrics(role, self.registry)
        self.store = Store(config.cache.dir, config.cache.size, policy=config.cache.policy,
                           ram_bytes=config.cache.ram, hit_interval=config.cache.hit_interval)
        self.coalescer = Coalescer(self.store, max_followers=config.cache.max_waiters, cacheable=self._cacheable,
                                   clock=clock)
        self.upstream = self._make_upstream(config)
        self.prefetcher = Prefetcher(config.prefetch.segments, config.prefetch.concurrency, fetch=self._prefetch,
                                     cached=self._is_cached, playlist=self._stored_body,
                                     max_client_misses=config.prefetch.max_client_misses,
                                     max_wait=config.prefetch.max_wait, unused_after=config.prefetch.unused_after,
                                     on_outcome=self._prefetch_outcome)
        self._entries: OrderedDict[tuple[str, str, float], _Entry] = OrderedDict()
        self._routes: dict[str, tuple[urls.Route, str, bool]] = {}  # raw path -> see _route
        self._revalidating: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.gates: tuple[Gate, ...] = ()
        self.rewriters: tuple[Rewriter, ...] = ()
        self._gates: dict[urls.Kind, tuple[Gate, ...]] = {}
        self._rewriters: dict[urls.Kind, tuple[Rewriter, ...]] = {}
        self._fast_kinds = CACHEABLE
        self._epoch = 0  # bumped by install: renewed fast-path hits must not outlive the hooks they saw
        self._flusher: asyncio.TimerHandle | None = None

    def install(self, gates: Sequence[Gate] = (), rewriters: Sequence[Rewriter] = ()) -> None:
        """Put the request hooks in place (replacing earlier ones; also on reload)."""
        self.gates, self.rewriters = tuple(gates), tuple(rewriters)
        self._gates = {k: tuple(g for g in self.gates if k in g.kinds) for k in urls.Kind}
        self._rewriters = {k: tuple(r for r in self.rewriters if k in r.kinds) for k in urls.Kind}
        self._fast_kinds = frozenset(k for k in CACHEABLE if not self._gates[k] and not self._rewriters[k])
        self._routes.clear()
        self._epoch += 1

    def _make_upstream(self, config: NodeConfig) -> Upstream:
        return Upstream(config.upstream, node=config.name,
                        observe=lambda peer, outcome, s: self.metrics.upstream.labels(self.role, peer, outcome).observe(s))

    async def start(self) -> None:
        await self.upstream.start()
        self._flush_metrics()

    def _flush_metrics(self) -> None:
        self.metrics.flush()
        self.prefetcher.expire()  # unrequested prefetches count as wasted on an idle worker too
        self._flusher = asyncio.get_running_loop().call_later(METRICS_FLUSH, self._flush_metrics)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self.metrics.flush()
        await self.prefetcher.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.coalescer.close()
        await self.upstream.close()
        self.store.close()

    async def reload(self, config: NodeConfig) -> None:
        """Apply a new config (SIGHUP): peers, timeouts, prefetch, CORS, token.

        Listen address, workers and the cache directory/size/policy need a restart.
        """
        for name in ("listen", "workers"):
            if getattr(config, name) != getattr(self.config, name):
                log.warning("reload: %s changed; it takes effect on restart", name)
        if (config.cache.dir, config.cache.size, config.cache.policy) != (
                self.config.cache.dir, self.config.cache.size, self.config.cache.policy):
            log.warning("reload: cache dir/size/policy changed; they take effect on restart")
        old = self.upstream
        if config.upstream != self.config.upstream:
            self.upstream = self._make_upstream(config)
            await self.upstream.start()
            self._spawn(old.close())
        self.config = dataclasses.replace(config, listen=self.config.listen, workers=self.config.workers,
                                          cache=self.config.cache)
        self.origins = h.parse_origins(config.cors_origin)
        self.prefetcher.k = config.prefetch.segments
        self.prefetcher.tune(config.prefetch.max_client_misses, config.prefetch.max_wait,
                             config.prefetch.unused_after)
        log.info("reload: config applied (%d upstream peers)", len(config.upstream.peers))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- stored objects ------------------------------------------------------------
    def _entry(self, meta: Meta) -> _Entry:
        memo_key = (meta.key, meta.xxh3, meta.response_time)
        entry = self._entries.get(memo_key)
        if entry is None:
            facts = fr.CachedResponse.from_response(meta.status, meta.headers, meta.request_time, meta.response_time)
            if not facts.says_stale_if_error:  # the setting stands in only for a response that does not say
                facts = dataclasses.replace(facts, stale_if_error=float(self.config.cache.stale_if_error))
            cached = Cached.from_stored(meta.status, meta.headers, meta.size, meta.response_time)
            entry = self._entries[memo_key] = _Entry(meta, facts, cached)
            if len(self._entries) > 65536:
                self._entries.popitem(last=False)
        return entry

    def _cacheable(self, head: ResponseHead) -> bool:
        return head.status == 200 and bool(fr.storable("GET", head.status, head.headers))

    def _is_cached(self, path: str) -> bool:
        return path in self.store

    def _stored_body(self, path: str) -> bytes | None:
        """A stored object's body, or one complete in memory that is still being committed."""
        hit = self.store.lookup(path, self.clock())
        if hit is None:
            return self.coalescer.complete_body(path)
        with hit:
            return hit.read()

    # --- fast path --------------------------------------------------------------
    def _route(self, raw_path: str) -> tuple[urls.Route, str, bool] | None:
        """``raw_path`` parsed: (route, canonical path = store key, fast-path kind?), or None.

        Memoised: a hot object's path is parsed once, not on every hit
        (``install`` forgets the memo: it changes which kinds are fast).
        Paths outside the URL space or hostile ones are not remembered.
        """
        parsed = self._routes.get(raw_path)
        if parsed is None:
            try:
                route = urls.parse(raw_path)
            except urls.BadPath:
                return None
            if route is None:
                return None
            if len(self._routes) >= ROUTE_MEMO:
                self._routes.clear()
            parsed = self._routes[raw_path] = (route, route.path, route.kind in self._fast_kinds)
        return parsed

    def lookup(self, target: str, headers: Sequence[tuple[str, str]], now: float) -> FastHit | None:
        """cache.fastpath's lookup: a fresh stored object, or None (aiohttp decides)."""
        parsed = self._route(target.partition("?")[0])
        if parsed is None:
            return None
        route, path, fast = parsed
        if not fast:  # gated or rewritten kinds go through aiohttp
            return None
        hit = self.store.lookup(path, now)
        if hit is None:
            return None
        entry = self._entry(hit.meta)
        second = int(now)
        fresh_in = entry.fresh_in
        if fresh_in is not None and fresh_in[0] == second:
            # Immutable: the request's own directives do not apply (fr.ClientDirectives.MUTABLE_ONLY), so
            # the verdict depends on the time alone; it was FRESH with >= 1 s left within this second.
            age = fresh_in[1]
        else:
            verdict = fr.assess(entry.facts, now, headers)
            if verdict.freshness is not fr.Freshness.FRESH:
                hit.close()
                return None
            age = int(verdict.age)
            if entry.facts.immutable and verdict.ttl >= 1.0:
                entry.fresh_in = fresh_in = (second, age)
        self.prefetcher.requested(path)
        if route.kind is urls.Kind.SEGMENT:
            self.prefetcher.after(route, path)
        # Renewing within this second may skip the prefetcher: the request is not its first for this path
        # (requested() has nothing left to count) and after() does nothing for a path handled within its ttl.
        return FastHit(hit, entry.cached, age, self, second if fresh_in is not None and fresh_in[0] == second else None)

    # --- aiohttp phases -------------------------------------------------------------
    def error(self, request: web.Request, status: int, reason: str, **extra: str) -> web.Response:
        return web_error(request, self.origins, status, reason, **{
            "X-Cache": "MISS", "Age": "0", "Via": f"1.1 {self.config.name}", **extra})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        begin(request)
        path = target_path(request.raw_path)
        if path == PURGE_PATH:
            request[KIND_KEY] = "admin"
            return await self.purge(request)
        try:
            route = urls.parse(path)
        except urls.BadPath as exc:
            return self.error(request, 400, exc.reason)
        if route is None:
            return self.error(request, 404, "no such path")
        request[KIND_KEY] = route.kind.value
        forwarded = route.kind in FORWARDED
        if request.method == hdrs.METH_OPTIONS:
            return self.options(request, forwarded)
        if request.method not in (FORWARD_METHODS if forwarded else (hdrs.METH_GET, hdrs.METH_HEAD)):
            allow = FORWARD_ALLOW if forwarded else ALLOW
            return self.error(request, 405, f"{request.method} not allowed; use {allow.rpartition(',')[0]}",
                              Allow=allow)
        if route.kind is urls.Kind.METRICS:
            return self.metrics_response(request)
        if route.kind is urls.Kind.HEALTHZ:
            return self.healthz(request)
        for gate in self._gates.get(route.kind, ()):
            try:
                refusal = await gate.check(request, route, self)
            except Exception:  # a broken gate fails closed, with the trace in the log
                log.exception("gate %s failed on %s", type(gate).__name__, route.path)
                return self.error(request, 500, "request check failed")
            if refusal is not None:
                return refusal
        if forwarded:  # keys and licences are never cached
            return await self.forward(request, route)
        return await self.serve(request, route)

    def options(self, request: web.Request, forwarded: bool) -> web.Response:
        """CORS preflight; keys and licences also take POST with a Content-Type (EME licence requests)."""
        resp = web_options(request, self.origins, FORWARD_ALLOW if forwarded else ALLOW)
        if forwarded and "Access-Control-Allow-Methods" in resp.headers:
            resp.headers["Access-Control-Allow-Methods"] = FORWARD_ALLOW
            resp.headers["Access-Control-Allow-Headers"] += ", Content-Type"
        return resp

    # --- forwarding (keys, licences) -----------------------------------------------
    async def forward(self, request: web.Request, route: urls.Route) -> web.StreamResponse:
        """Pass a key or licence request to upstream with its query string; relay the answer, store nothing."""
        body = b""
        if request.method == hdrs.METH_POST:
            if (request.content_length or 0) > MAX_FORWARD_BODY:
                return self.error(request, 413, f"request body over {MAX_FORWARD_BODY} bytes")
            read = await read_body(request, MAX_FORWARD_BODY)
            if read is None:
                return self.error(request, 413, f"request body over {MAX_FORWARD_BODY} bytes")
            body = read
        headers = {k: request.headers[k] for k in FORWARD_REQUEST_FIELDS if k in request.headers}
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        query = request.rel_url.raw_query_string
        target = route.path + (f"?{query}" if query else "")
        try:
            answer = await self.upstream.forward(request.method, target, route.path, headers, body,
                                                 max_body=MAX_FORWARD_ANSWER)
        except UpstreamError as exc:
            return self.error(request, exc.status if exc.status in (502, 503, 504) else 502, exc.reason)
        resp = web.Response(status=answer.status, body=answer.body or None)
        via = []
        for name, value in answer.headers:
            key = name.lower()
            if key == "via":
                via.append(value)
            elif key not in HOP_BY_HOP and key not in FORWARD_DROPPED and not key.startswith("access-control-"):
                resp.headers.add(name, value)
        resp.headers.update(base_headers(request, self.origins))
        resp.headers.update({"Cache-Control": "no-store", "X-Cache": "PASS",
                             "Via": ", ".join([*via, f"1.1 {self.config.name}"])})
        return resp

    # --- reading through the engine (for gates) --------------------------------------
    async def fetch_bytes(self, path: str) -> bytes | None:
        """A cacheable object's body: the stored copy if fresh, else a coalesced fetch that stores it.

        None when upstream says 404 (or 410).  A stale copy is used under
        stale-while-revalidate and, if upstream fails, within stale-if-error.
        Raises ValueError for a path that is not a cacheable object, and
        UpstreamError (status 502/503/504) when upstream fails and no stale
        copy may stand in.
        """
        route = urls.parse(path)
        if route is None or route.kind not in CACHEABLE:
            raise ValueError(f"{path!r} is not a cacheable object of the URL space")
        now = self.clock()
        key = route.path
        stale: bytes | None = None
        replacing: Meta | None = None
        hit = self.store.lookup(key, now)
        if hit is not None:
            with hit:
                entry = self._entry(hit.meta)
                verdict = fr.assess(entry.facts, now, [])
                data = hit.read()
            if verdict.freshness is fr.Freshness.FRESH:
                return data
            if verdict.freshness is fr.Freshness.STALE_WHILE_REVALIDATE:
                self._revalidate_later(route, hit.meta)
                return data
            if verdict.freshness is fr.Freshness.STALE_IF_ERROR_ONLY:
                stale, replacing = data, hit.meta  # stays stored until a new copy replaces it
            else:
                self.store.delete(key)
        try:
            flight = await self._client_flight(key, self._fetcher(route, None), replacing)
            async with flight:
                head = await flight.head()
                data = await flight.read()
        except (CoalesceError, UpstreamError) as exc:
            if stale is not None:
                return stale
            status = getattr(exc, "status", 502)
            raise UpstreamError(status if status in (502, 503, 504) else 502, _reason(exc)) from None
        if head.status == 200:
            return data
        if head.status in (404, 410):
            if replacing is not None:  # gone upstream: the stale copy may not stand in any more
                self.store.delete(key)
            return None
        if stale is not None:
            return stale
        raise UpstreamError(502, f"upstream answered {head.status} for {key}")

    async def serve(self, request: web.Request, route: urls.Route) -> web.StreamResponse:
        key = route.path
        self.prefetcher.requested(key)
        try:
            return await self._serve(request, route)
        finally:  # prefetch only once the client's own object is on its way (client misses first)
            if route.kind is urls.Kind.SEGMENT:
                self.prefetcher.after(route, key)

    async def _serve(self, request: web.Request, route: urls.Route) -> web.StreamResponse:
        now = self.clock()
        key = route.path
        stale: Hit | None = None
        hit = self.store.lookup(key, now)
        if hit is not None:
            entry = self._entry(hit.meta)
            verdict = fr.assess(entry.facts, now, list(request.headers.items()))
            if verdict.freshness is fr.Freshness.FRESH:
                return await self.send_hit(request, hit, entry.cached, int(verdict.age), "HIT", route)
            if verdict.freshness is fr.Freshness.STALE_WHILE_REVALIDATE:
                self._revalidate_later(route, hit.meta)
                return await self.send_hit(request, hit, entry.cached, int(verdict.age), "STALE", route)
            if verdict.freshness is fr.Freshness.STALE_IF_ERROR_ONLY:
                stale = hit  # kept (open, and stored) in case upstream fails, until a new copy replaces it
            else:
                hit.close()
                self.store.delete(key)  # past every window: of no further use
        try:
            flight = await self._client_flight(key, self._fetcher(route, request),
                                               stale.meta if stale is not None else None)
        except TooManyWaiters as exc:
            if stale is not None:
                return await self._serve_stale(request, stale, now, route)
            return self.error(request, 503, str(exc), **{"Retry-After": str(exc.retry_after)})
        async with flight:
            try:
                head = await flight.head()
            except (CoalesceError, UpstreamError) as exc:
                if stale is not None:
                    return await self._serve_stale(request, stale, now, route)
                status = getattr(exc, "status", 502)
                return self.error(request, status if status in (502, 503, 504) else 502, _reason(exc))
            if stale is not None:
                stale.close()
                if head.status in (404, 410):  # gone upstream: the stale copy may not stand in any more
                    self.store.delete(key)
            return await self.send_flight(request, flight, head, now, route)

    async def _client_flight(self, key: str, fetch: Callable[[Sink], Any], replacing: Meta | None) -> Flight:
        """``coalescer.get`` for a client request: a *client miss* to the prefetcher until its fetch is over.

        Prefetches wait while client misses are in flight (client misses
        first).  The miss ends when the fetch is over, not when a slow client
        has read the body; a body already complete in memory waits on nothing.
        """
        miss = self.prefetcher.client_miss()
        try:
            flight = await self.coalescer.get(key, fetch, replacing)
        except BaseException:
            miss.end()
            raise
        if flight.role is Role.HIT:
            miss.end()
            return flight

        async def end() -> None:
            try:
                await flight.ended()
            finally:
                miss.end()

        self._spawn(end())
        return flight

    async def _serve_stale(self, request: web.Request, stale: Hit, now: float,
                           route: urls.Route) -> web.StreamResponse:
        entry = self._entry(stale.meta)
        age = int(fr.current_age(entry.facts, now))
        return await self.send_hit(request, stale, entry.cached, age, "STALE", route)

    def _revalidate_later(self, route: urls.Route, stale: Meta) -> None:
        """Fetch ``route`` again in the background; ``stale`` stays stored (and served) until replaced."""
        if route.path in self._revalidating:
            return
        self._revalidating.add(route.path)

        async def refresh() -> None:
            try:
                await self._prefetch(route.path, stale)
            except Exception as exc:  # noqa: BLE001 - the stale copy was served; the next request retries
                log.info("background revalidation of %s failed: %s", route.path, exc)
            finally:
                self._revalidating.discard(route.path)

        self._spawn(refresh())

    def _fetcher(self, route: urls.Route, request: web.Request | None) -> Callable[[Sink], Any]:
        ring_key = route.track or route.path
        headers = {k: v for k, v in request.headers.items()} if request is not None else {}

        async def fetch(sink: Sink) -> None:
            await self.upstream.fetch(route.path, ring_key, sink, headers)

        return fetch

    async def _prefetch(self, path: str, replacing: Meta | None = None) -> int:
        route = urls.parse(path)
        assert route is not None
        flight = await self.coalescer.get(path, self._fetcher(route, None), replacing)
        async with flight:
            head = await flight.head()
            size = 0
            async for chunk in flight:
                size += len(chunk)
            return size if head.status == 200 else 0

    def _prefetch_outcome(self, outcome: str, size: int) -> None:
        self.metrics.prefetch.labels(self.role, outcome).inc(size)

    # --- sending --------------------------------------------------------------------
    def _headers(self, reply: Reply, x_cache: str) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in reply.headers if k != "X-Cache"]
        out.append(("X-Cache", x_cache))
        out.append(("Server", f"legato/{__version__}"))
        return out

    async def send_hit(self, request: web.Request, hit: Hit, cached: Cached, age: int,
                       x_cache: str, route: urls.Route | None = None) -> web.StreamResponse:
        """A stored object through aiohttp (the fast path serves most hits before this)."""
        with hit:
            rewriters = self._rewriters.get(route.kind, ()) if route is not None and cached.status == 200 else ()
            if rewriters:
                assert route is not None
                return await self._send_rewritten(request, route, rewriters, cached, hit.read(), age, x_cache)
            reply = respond(cached, request.method, list(request.headers.items()), self.clock(),
                            self.config.name, age, self.origins)
            data = reply.body or (hit.read(reply.first, reply.length) if reply.length else b"")
        return await self._send(request, reply, x_cache, data)

    async def _send_rewritten(self, request: web.Request, route: urls.Route, rewriters: Sequence[Rewriter],
                              cached: Cached, body: bytes, age: int, x_cache: str) -> web.StreamResponse:
        """A whole 200 body after the rewriters; a changed one is its own representation.

        A changed body gets an ETag of its own bytes (so conditionals and
        Range stay correct for it), no Last-Modified, and ``Cache-Control:
        private, no-store`` (it is one listener's); an unchanged one is sent
        exactly as the stored object would be.
        """
        new = body
        for rewriter in rewriters:
            new = rewriter.rewrite(request, route, new)
        if new != body:
            fields = [(k, v) for k, v in cached.headers
                      if k.lower() not in ("etag", "last-modified", "cache-control", "content-length")]
            fields += [("ETag", f'"{xxhash.xxh3_64_hexdigest(new)}"'), ("Cache-Control", "private, no-store")]
            cached = Cached.from_stored(200, fields, len(new), cached.response_time)
        reply = respond(cached, request.method, list(request.headers.items()), self.clock(),
                        self.config.name, age, self.origins)
        return await self._send(request, reply, x_cache, reply.body or new[reply.first:reply.first + reply.length])

    async def _send(self, request: web.Request, reply: Reply, x_cache: str, data: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(status=reply.status)
        length = None
        for k, v in self._headers(reply, x_cache):
            if k == "Content-Length":
                length = int(v)
            else:
                resp.headers.add(k, v)
        if length is not None:
            resp.content_length = length
        await resp.prepare(request)
        if data and request.method != hdrs.METH_HEAD:
            await resp.write(data)
        await resp.write_eof()
        self.metrics.result(x_cache, reply.status, len(data))
        return resp

    async def send_flight(self, request: web.Request, flight: Flight, head: ResponseHead,
                          now: float, route: urls.Route | None = None) -> web.StreamResponse:
        """Stream a fetch to the client as it arrives (ranges and conditionals applied).

        Kinds with rewriters wait for the whole body instead (manifests are small).
        """
        x_cache = flight.role.value if flight.role is not Role.HIT else "HIT"
        rewriters = self._rewriters.get(route.kind, ()) if route is not None and head.status == 200 else ()
        if rewriters:
            assert route is not None
            try:
                body = await flight.read()
            except (CoalesceError, UpstreamError) as exc:
                return self.error(request, 502, _reason(exc))
            cached = Cached.from_stored(head.status, head.headers, len(body), now)
            return await self._send_rewritten(request, route, rewriters, cached, body, 0, x_cache)
        if head.content_length is not None:
            cached = Cached.from_stored(head.status, head.headers, head.content_length, now)
            reply = respond(cached, request.method, list(request.headers.items()), now, self.config.name, 0,
                            self.origins)
            first, length = reply.first, reply.length
        else:  # length unknown (chunked upstream): the whole body, no ranges
            pairs = [(k, v) for k, v in head.headers if k.lower() not in ("via", "content-length")]
            via = ", ".join(v for k, v in head.headers if k.lower() == "via")
            pairs.append(("Via", f"{via + ', ' if via else ''}1.1 {self.config.name}"))
            pairs += [("Age", "0"), *h.cors_headers(self.origins, request.headers.get(hdrs.ORIGIN)).items()]
            reply = Reply(head.status, pairs, 0, -1)
            first, length = 0, -1
        if reply.body:  # 412/416 decided before any byte of the body was needed
            return await self._send(request, reply, x_cache, reply.body)
        resp = web.StreamResponse(status=reply.status)
        for k, v in self._headers(reply, x_cache):
            if k != "Content-Length":
                resp.headers.add(k, v)
        send_body = request.method != hdrs.METH_HEAD and reply.status not in (304,) and length != 0
        if length >= 0:
            resp.content_length = length
        sent = 0
        try:
            await resp.prepare(request)
            if send_body:
                position = 0
                end = first + length if length >= 0 else None
                try:
                    async for chunk in flight:
                        lo, hi = position, position + len(chunk)
                        position = hi
                        if hi <= first:
                            continue
                        piece = chunk[max(0, first - lo):(len(chunk) if end is None else max(0, end - lo))]
                        if piece:
                            await resp.write(piece)
                            sent += len(piece)
                        if end is not None and position >= end:
                            break
                except (CoalesceError, UpstreamError) as exc:
                    log.warning("upstream failed mid-body for %s after %d bytes: %s", flight.key, sent, _reason(exc))
                    self.metrics.result(x_cache, reply.status, sent)
                    if request.transport is not None:
                        request.transport.close()  # the client must see a broken transfer, not a short one
                    return resp
            await resp.write_eof()
        except ConnectionResetError:  # the client left (a skip, a seek, a shutdown): not this node's error
            log.debug("client left during %s after %d bytes", flight.key, sent)
        self.metrics.result(x_cache, reply.status, sent)
        return resp

    # --- control endpoints ------------------------------------------------------------
    async def purge(self, request: web.Request) -> web.Response:
        if request.method != hdrs.METH_POST:
            return self.error(request, 405, "use POST", Allow="POST")
        token = self.config.admin_token
        if not token:
            return self.error(request, 403, "purge is disabled on this node (no admin_token configured)")
        given = request.headers.get(hdrs.AUTHORIZATION, "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return self.error(request, 401, "missing or wrong bearer token",
                              **{"WWW-Authenticate": 'Bearer realm="legato-admin"'})
        if (request.content_length or 0) > 4096:
            return self.error(request, 413, "purge request body over 4 KiB")
        try:
            doc = json.loads(await read_body(request, 4096) or b"")
            if not isinstance(doc, dict) or len(doc) != 1 or not isinstance(next(iter(doc.values())), str):
                raise ValueError
        except ValueError:
            return self.error(request, 400, 'body must be JSON: {"path": "/tracks/..."} or {"prefix": "/tracks/ID/"}')
        kind, target = next(iter(doc.items()))
        if kind == "path":
            try:
                route = urls.parse(target)
            except urls.BadPath as exc:
                return self.error(request, 400, f"path: {exc.reason}")
            if route is None or route.kind not in CACHEABLE:
                return self.error(request, 400, "path is not a cacheable object of the URL space")
            purged = int(self.store.delete(route.path))
        elif kind == "prefix":
            if not target.startswith(("/tracks/", "/licenses/")) or ".." in target or "\x00" in target:
                return self.error(request, 400, "prefix must start with /tracks/ or /licenses/")
            purged = self.store.purge_prefix(target)
        else:
            return self.error(request, 400, 'use "path" or "prefix"')
        log.info("purge %s %s: %d object(s)", kind, target, purged)
        headers = base_headers(request, self.origins)
        headers["Cache-Control"] = "no-store"
        return web.json_response({"node": self.config.name, kind: target, "purged": purged}, headers=headers)

    def metrics_response(self, request: web.Request) -> web.Response:
        from prometheus_client import generate_latest

        self.metrics.flush()
        stats = self.store.stats()
        self.metrics.store_bytes.labels(self.role).set(stats.bytes)
        self.metrics.store_objects.labels(self.role).set(stats.objects)
        for peer, state in self.upstream.states().items():
            self.metrics.up.labels(self.role, peer).set(0 if state == "open" else 1)
        body = render_metrics(self.registry)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # single process: add the store's own registry
            body += generate_latest(_store_registry())
        headers = base_headers(request, self.origins)
        headers.update({"Content-Type": h.content_type(urls.Kind.METRICS), "Cache-Control": "no-store"})
        return web.Response(body=body, headers=headers)

    def healthz(self, request: web.Request) -> web.Response:
        states = self.upstream.states()
        stats = self.store.stats()
        live = [p for p, s in states.items() if s != "open"]
        status = "ok" if live and self.store.healthy else ("degraded" if live else "no healthy upstream")
        body = {"status": status, "node": self.config.name, "role": self.role, "version": __version__,
                "pid": os.getpid(), "upstreams": states,
                "store": {"healthy": self.store.healthy, "reason": self.store.degraded_reason,
                          "bytes": stats.bytes, "objects": stats.objects, "policy": self.config.cache.policy}}
        headers = base_headers(request, self.origins)
        headers.update({"Content-Type": h.content_type(urls.Kind.HEALTHZ), "Cache-Control": "no-store"})
        return web.Response(status=200, body=json.dumps(body).encode(), headers=headers)


def _store_registry() -> Any:
    from cache.store import store_metrics

    return store_metrics().registry


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__


def create_app(config: NodeConfig, *, role: str, config_file: Path | None = None, args: Any = None,
               clock: Callable[[], float] = time.time, load_config: Callable[[], NodeConfig] | None = None,
               configure: Callable[[Node, NodeConfig], None] | None = None) -> web.Application:
    """The node's aiohttp app, with the fast path as its socket server (legato.server.SITE).

    ``configure(node, config)`` installs hooks (``Node.install``) now and again
    after every reload; ``load_config()`` re-reads the config on SIGHUP (by
    default ``cache.cli.load_config(args, role)`` when ``config_file`` is given).
    """
    app = web.Application(client_max_size=MAX_FORWARD_BODY)
    node = Node(config, role, clock=clock)
    app[NODE] = node
    if configure is not None:
        configure(node, config)
    observers: tuple[Observer, ...] = (node.requests,)
    app[OBSERVERS] = observers

    async def on_startup(_app: web.Application) -> None:
        await node.start()

    async def on_cleanup(_app: web.Application) -> None:
        await node.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", r"/{tail:[\s\S]*}", node.handle)

    servers: list[Any] = []  # the fast path's (one per listening socket)

    async def site(runner: web.AppRunner, sock: Any) -> Any:
        from cache.fastpath import FastPathMetrics, serve

        server = await serve(sock, runner, node.lookup, config.name, cors_origins=node.origins,
                             metrics=FastPathMetrics(config.name, node.registry), clock=clock)
        servers.append(server)
        return server

    app[SITE] = site
    if load_config is None and config_file is not None and args is not None:
        def load_config() -> NodeConfig:
            from cache.cli import load_config as load

            return load(args, role)

    if load_config is not None:
        loader = load_config

        async def reload() -> None:
            from legato.config import ConfigError

            try:
                new = loader()
                if configure is not None:
                    configure(node, new)
            except ConfigError as exc:
                log.error("reload refused, keeping the running config: %s", exc)
                return
            await node.reload(new)
            for server in servers:
                server.cors_origins = node.origins

        app[RELOAD] = reload
    return app

