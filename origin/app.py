"""The origin's HTTP application: the store, served over Legato's URL space.

One catch-all route hands every request to ``handle``, which runs short named
phases (pingora style):

1. ``target_path``: take the raw request-target (never aiohttp's decoded,
   normalised path) and cut the query off;
2. ``legato.urls.parse``: 400 for hostile paths, 404 for paths outside the
   URL space;
3. ``/keys/{kid}`` and ``/license/clearkey`` go to the key service
   (origin.keyservice) when ``[keys] store`` is configured; without one
   they are 404 "no key service on this origin";
4. method: OPTIONS (CORS preflight), GET and HEAD; anything else is 405
   with ``Allow``;
5. ``/metrics`` and ``/healthz``, or a store object: open it (origin.store),
   let ``legato.http.evaluate`` decide 200/206/304/412/416, send it.

Every response carries CORS headers and ``Server: legato``; every error a
one-line plain-text reason (the key service's are JSON).  Request bodies are
never read, except licence requests by the key service.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable

from aiohttp import hdrs, web

from legato import __version__, urls
from legato import http as h
from legato.logs import KIND_KEY, Observer, RequestMetrics, begin, render_metrics
from legato.server import OBSERVERS
from legato.web import ALLOW, base_headers, target_path
from legato.web import error as web_error
from legato.web import options as web_options
from origin.config import OriginConfig
from origin.keyservice import KeyService
from origin.store import Store, StoreObject

log = logging.getLogger("legato.origin")


STORE: web.AppKey[Store] = web.AppKey("store", Store)
CONFIG: web.AppKey[OriginConfig] = web.AppKey("config", OriginConfig)
METRICS: web.AppKey[RequestMetrics] = web.AppKey("metrics", RequestMetrics)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
ORIGINS: web.AppKey[tuple[str, ...]] = web.AppKey("origins", tuple)
CACHE_CONTROL: web.AppKey[dict[urls.Kind, str]] = web.AppKey("cache_control", dict)
KEY_SERVICE: web.AppKey[KeyService | None] = web.AppKey("key_service")
KEY_KINDS = frozenset({urls.Kind.KEY, urls.Kind.CLEARKEY})


def create_app(config: OriginConfig, *, clock: Callable[[], float] = time.time) -> web.Application:
    """Build the origin application for ``config``; ``clock`` gives Unix time."""
    app = web.Application()
    app[CONFIG] = config
    app[CLOCK] = clock
    app[ORIGINS] = h.parse_origins(config.cors_origin)
    app[CACHE_CONTROL] = {kind: cache_control_for(kind, config) for kind in urls.Kind}
    app[STORE] = Store(
        config.store,
        memory_bytes=config.memory_cache_mb << 20,
        max_object_bytes=config.memory_object_max_kb << 10,
        chunk_bytes=config.stream_chunk_kb << 10,
    )
    app[METRICS] = RequestMetrics("origin")
    app[KEY_SERVICE] = None
    if config.keys.store is not None:  # secrets are loaded here, in each worker, never before a fork
        from origin import keyservice

        service = app[KEY_SERVICE] = keyservice.create(config, clock=clock, origins=app[ORIGINS],
                                                       registry=app[METRICS].registry)

        async def close_key_store(_: web.Application) -> None:
            service.close()

        app.on_cleanup.append(close_key_store)
    observers: tuple[Observer, ...] = (app[METRICS],)
    app[OBSERVERS] = observers
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    return app


def cache_control_for(kind: urls.Kind, config: OriginConfig) -> str:
    """Cache-Control by object kind: segments immutable, manifests and licences short."""
    cc = config.cache_control
    if kind in (urls.Kind.INIT, urls.Kind.SEGMENT):
        return h.cache_control(public=True, max_age=cc.segment_max_age, immutable=True)
    if kind is urls.Kind.LICENSE:
        return h.cache_control(public=True, max_age=cc.license_max_age)
    if kind.is_store_object:
        return h.cache_control(public=True, max_age=cc.manifest_max_age)
    return h.cache_control(no_store=True)


def _base_headers(request: web.Request) -> dict[str, str]:
    return base_headers(request, request.app[ORIGINS])


def error(request: web.Request, status: int, reason: str, **extra: str) -> web.Response:
    """A plain-text error: ``404 Not Found: unknown track 'x'``."""
    return web_error(request, request.app[ORIGINS], status, reason, **extra)


async def handle(request: web.Request) -> web.StreamResponse:
    """Every request lands here (see the module docstring for the phases)."""
    begin(request)
    try:
        route = urls.parse(target_path(request.raw_path))
    except urls.BadPath as exc:
        return error(request, 400, exc.reason)
    if route is None:
        return error(request, 404, "no such path")
    request[KIND_KEY] = route.kind.value
    service = request.app[KEY_SERVICE]
    if service is not None and route.kind in KEY_KINDS:
        return await service.handle(request, route)
    method = request.method
    if method == hdrs.METH_OPTIONS:
        return options(request)
    if method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return error(request, 405, f"{method} not allowed; use GET or HEAD", Allow=ALLOW)
    if route.kind is urls.Kind.METRICS:
        return metrics(request)
    if route.kind is urls.Kind.HEALTHZ:
        return healthz(request)
    if not route.kind.is_store_object:  # keys and licences: the key service (drm issue) answers these
        return error(request, 404, "no key service on this origin")
    return await serve_object(request, route)


def options(request: web.Request) -> web.Response:
    return web_options(request, request.app[ORIGINS])


def metrics(request: web.Request) -> web.Response:
    body = render_metrics(request.app[METRICS].registry)
    headers = _base_headers(request)
    headers.update({"Content-Type": h.content_type(urls.Kind.METRICS), "Cache-Control": "no-store"})
    return web.Response(body=body, headers=headers)


def healthz(request: web.Request) -> web.Response:
    """Liveness plus a store check: 200 when the store is readable, else 503.

    The worker's pid tells operators (and tests) which worker answered.
    """
    store = request.app[STORE]
    readable = store.readable()
    body = {"status": "ok" if readable else "store unreadable", "version": __version__, "pid": os.getpid(),
            "store": {"path": str(store.root), "readable": readable}}
    headers = _base_headers(request)
    headers.update({"Content-Type": h.content_type(urls.Kind.HEALTHZ), "Cache-Control": "no-store"})
    return web.Response(status=200 if readable else 503, body=json.dumps(body).encode(), headers=headers)


def _not_found_reason(store: Store, route: urls.Route) -> str:
    """Say which part of a store path is missing (only computed for 404s)."""
    if route.kind is urls.Kind.LICENSE:
        return f"no licence for track {route.track!r}"
    if not store.has_dir(f"tracks/{route.track}"):
        return f"unknown track {route.track!r}"
    if route.rendition is not None and not store.has_dir(f"tracks/{route.track}/{route.rendition}"):
        return f"unknown rendition {route.rendition!r} of track {route.track!r}"
    if route.kind is urls.Kind.SEGMENT:
        return f"no segment {route.segment} in {route.track}/{route.rendition}"
    return f"no {route.relpath.rpartition('/')[2]} for track {route.track!r}"


async def serve_object(request: web.Request, route: urls.Route) -> web.StreamResponse:
    """Serve one store object with validators, conditionals and ranges."""
    app = request.app
    store = app[STORE]
    try:
        obj = await store.lookup(route.relpath)
    except OSError as exc:  # e.g. EACCES: the operator's problem, not the client's
        log.warning("cannot read %s: %s", route.relpath, exc.strerror or exc)
        return error(request, 500, "cannot read this object from the store")
    if obj is None:
        return error(request, 404, _not_found_reason(store, route))
    try:
        now = app[CLOCK]()
        lm = h.last_modified(obj.mtime, now)
        validators = h.Validators(obj.size, obj.etag, lm, h.last_modified_is_strong(lm, now))
        decision = h.evaluate(request.method, h.fold_headers(request.headers.items()), validators, now)
        headers = _base_headers(request)
        headers["ETag"] = obj.etag
        headers["Cache-Control"] = app[CACHE_CONTROL][route.kind]
        if decision.status == 304:
            # RFC 9110 §15.4.5: ETag and Cache-Control, no representation metadata
            return web.Response(status=304, headers=headers)
        if decision.status == 412:
            return error(request, 412, decision.reason, ETag=obj.etag)
        if decision.status == 416:
            return error(request, 416, decision.reason, **{"Content-Range": h.unsatisfied_content_range(obj.size)})
        headers["Last-Modified"] = h.http_date(lm)
        headers["Accept-Ranges"] = "bytes"
        headers["Content-Type"] = h.content_type(route.kind)
        first, length = 0, obj.size
        if decision.status == 206 and decision.range is not None:
            headers["Content-Range"] = decision.range.content_range(obj.size)
            first, length = decision.range.first, decision.range.length
        return await _send(request, store, obj, decision.status, headers, first, length)
    finally:
        store.release(obj)


async def _send(request: web.Request, store: Store, obj: StoreObject, status: int,
                headers: dict[str, str], first: int, length: int) -> web.StreamResponse:
    """Send bytes from memory, or stream a large file (HEAD sends headers only)."""
    if obj.data is not None:
        body = obj.data if length == obj.size else memoryview(obj.data)[first:first + length]
        return web.Response(status=status, body=body, headers=headers)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD:
        async for chunk in store.stream(obj, first, length):
            await response.write(chunk)
    await response.write_eof()
    return response
