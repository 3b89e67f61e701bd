"""The origin's key and licence service: ``GET /keys/{kid}``, ``POST /license/clearkey``.

On when ``[keys] store`` is configured (origin.config); every cache tier
forwards these requests here with their query string, never storing the
answer.  Each request runs the same phases:

1. **method**: ``OPTIONS`` is a CORS preflight (POST with ``Content-Type``
   allowed, for browsers posting licence requests from another origin); keys
   take GET/HEAD, licences POST; anything else is 405;
2. **size and type** (licences): a body over ``MAX_BODY`` is 413, a
   multipart form (which cannot be a raw JSON body) is 415;
3. **token**: ``?token=…`` verified (``drm.tokens.Verifier``: a token's
   signature is checked once, then remembered) with the public keys of
   ``[tokens]``, the clock and skew, and the client address (the
   socket peer, or the X-Forwarded-For of ``trusted_proxies``, i.e. the cache
   tiers) for address-bound tokens: 401 / 403;
4. **rate**: one token from the session's bucket (``drm.ratelimit``): 429 with
   ``Retry-After``;
5. **entitlement**: a KID is served only when the key store says it belongs
   to one of the token's tracks: unknown KID 404, another track's 403.  A
   licence holds the requested KIDs the token entitles and leaves the others
   out; it is refused only when it would be empty.

Answers are ``Cache-Control: no-store``; a key is the 16 raw bytes
(``application/octet-stream``), a licence a JWK set (drm.clearkey).  Every
refusal is ``{"error": reason}`` with 400/401/403/404/405/413/415/429 and is
counted, like every success, in ``legato_key_requests_total{node,kind,result}``.
Neither tokens nor keys are ever logged or counted (the access log drops the
query string).

The key store is read on the event loop: a lookup is one indexed SQLite
read (WAL: never blocked by a packager writing) and one AES-GCM unwrap,
tens of microseconds.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from drm import clearkey
from drm.keys import KeyStore, KeyStoreError, StoredKey
from drm.ratelimit import RateLimiter
from drm.tokens import Claims, TokenError, Verifier
from geo import client as geo_client
from geo.client import Networks
from legato import urls
from legato.web import base_headers, read_body
from legato.web import options as web_options

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from prometheus_client import CollectorRegistry

log = logging.getLogger("legato.origin.keys")

TOKEN_PARAM = "token"
MAX_BODY = 4096
"""Bytes a licence request may have (one for a few KIDs is ~100)."""
KEY_ALLOW = "GET, HEAD, OPTIONS"
LICENSE_ALLOW = "POST, OPTIONS"
PREFLIGHT_METHODS = "GET, HEAD, POST, OPTIONS"
REFUSED_TYPES = ("multipart/",)
"""Content-Types a licence request cannot come with.  Any other (or none) is read as JSON:
players post the CDM's message raw (no type, ``application/octet-stream``, ``text/plain``,
``application/json``) and ``curl -d`` says ``application/x-www-form-urlencoded``."""
OK = "ok"


class KeyService:
    """Answers key and licence requests (see the module docstring)."""

    def __init__(self, store: KeyStore, public_keys: Mapping[str, Ed25519PublicKey], *, skew: float,
                 limiter: RateLimiter, verified_tokens: int, client_ip: Callable[[web.Request], str | None],
                 clock: Callable[[], float], origins: tuple[str, ...], node: str,
                 registry: CollectorRegistry) -> None:
        from prometheus_client import Counter

        self.store = store
        self.tokens = Verifier(public_keys, skew=skew, max_entries=verified_tokens)
        self.limiter = limiter
        self.client_ip = client_ip
        self.clock = clock
        self.origins = origins
        self.node = node
        self.requests = Counter("legato_key_requests", "Key and licence requests by kind and result "
                                "('ok' or the refusal reason)", ("node", "kind", "result"), registry=registry)
        self._counters: dict[tuple[urls.Kind, str], Any] = {}  # labelled children: .labels() costs a lock

    def close(self) -> None:
        self.store.close()

    # ---------------------------------------------------------------- responses

    def _count(self, kind: urls.Kind, result: str) -> None:
        child = self._counters.get((kind, result))
        if child is None:
            child = self._counters[kind, result] = self.requests.labels(self.node, kind.value, result)
        child.inc()

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = base_headers(request, self.origins)
        headers["Cache-Control"] = "no-store"
        if "Access-Control-Expose-Headers" in headers:
            headers["Access-Control-Expose-Headers"] += ", Retry-After"
        return headers

    def refuse(self, request: web.Request, route: urls.Route, status: int, reason: str,
               detail: str = "", **extra: str) -> web.Response:
        """``{"error": "reason[: detail]"}`` with ``status``, counted under ``reason`` (a bounded set)."""
        self._count(route.kind, reason)
        if detail:
            reason = f"{reason}: {detail}"
        headers = self._headers(request)
        headers["Content-Type"] = "application/json"
        if status == 401:  # RFC 9110 §15.5.2: a 401 names the scheme (RFC 6750 allows the token in the query)
            headers["WWW-Authenticate"] = (f'Bearer realm="legato", error="invalid_token", '
                                           f'error_description="{reason}"')
        headers.update(extra)
        return web.Response(status=status, body=json.dumps({"error": reason}).encode(), headers=headers)

    def _ok(self, request: web.Request, route: urls.Route, body: bytes, content_type: str) -> web.Response:
        self._count(route.kind, OK)
        headers = self._headers(request)
        headers["Content-Type"] = content_type
        if request.method == hdrs.METH_HEAD:
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        return web.Response(body=body, headers=headers)

    # ---------------------------------------------------------------- phases

    def _session(self, request: web.Request, route: urls.Route) -> Claims | web.Response:
        """Phases 3 and 4: the verified, rate-allowed claims, or the refusal."""
        tokens = request.query.getall(TOKEN_PARAM, [])
        if len(tokens) > 1:
            return self.refuse(request, route, 401, "malformed")
        now = self.clock()
        try:
            claims = self.tokens.verify(tokens[0] if tokens else None, now=now,
                                        client_ip=self.client_ip(request) or "")
        except TokenError as exc:
            return self.refuse(request, route, exc.status, exc.reason)
        wait = self.limiter.take(claims.session, now)
        if wait > 0:
            return self.refuse(request, route, 429, "rate limited", **{"Retry-After": str(max(1, math.ceil(wait)))})
        return claims

    def _entry(self, kid: bytes) -> StoredKey | None:
        try:
            return self.store.entry(kid)
        except KeyStoreError as exc:  # names the file and the kid, never a key
            log.warning("%s", exc)
            raise

    async def handle(self, request: web.Request, route: urls.Route) -> web.StreamResponse:
        method = request.method
        if method == hdrs.METH_OPTIONS:
            return self.options(request)
        try:
            if route.kind is urls.Kind.KEY:
                return self.key(request, route)
            return await self.license(request, route)
        except KeyStoreError:
            return self.refuse(request, route, 500, "key store error")

    def options(self, request: web.Request) -> web.Response:
        resp = web_options(request, self.origins, PREFLIGHT_METHODS)
        if "Access-Control-Allow-Methods" in resp.headers:
            resp.headers["Access-Control-Allow-Methods"] = PREFLIGHT_METHODS
            resp.headers["Access-Control-Allow-Headers"] += ", Content-Type"
        return resp

    def key(self, request: web.Request, route: urls.Route) -> web.Response:
        """``GET /keys/{kid}?token=…``: the 16-byte key of a KID the token's tracks own."""
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return self.refuse(request, route, 405, "method not allowed", Allow=KEY_ALLOW)
        session = self._session(request, route)
        if isinstance(session, web.Response):
            return session
        assert route.kid is not None
        entry = self._entry(bytes.fromhex(route.kid))
        if entry is None:
            return self.refuse(request, route, 404, "unknown key")
        if entry.track not in session.tracks:
            return self.refuse(request, route, 403, "wrong track")
        return self._ok(request, route, entry.key.key, "application/octet-stream")

    async def license(self, request: web.Request, route: urls.Route) -> web.Response:
        """``POST /license/clearkey?token=…``: a JWK set of the requested KIDs the token entitles."""
        if request.method != hdrs.METH_POST:
            return self.refuse(request, route, 405, "method not allowed", Allow=LICENSE_ALLOW)
        if (request.content_length or 0) > MAX_BODY:
            return self.refuse(request, route, 413, "request too large")
        content_type = request.headers.get(hdrs.CONTENT_TYPE)
        if content_type is not None and not _json_capable(content_type):
            return self.refuse(request, route, 415, "unsupported content type")
        session = self._session(request, route)
        if isinstance(session, web.Response):
            return session
        body = await read_body(request, MAX_BODY)
        if body is None:
            return self.refuse(request, route, 413, "request too large")
        try:
            kids = clearkey.parse_request(body)
        except clearkey.LicenseRequestError as exc:
            return self.refuse(request, route, 400, "bad licence request", exc.reason)
        entries = [(kid, self._entry(kid)) for kid in kids]
        granted = [e.key for _, e in entries if e is not None and e.track in session.tracks]
        if not granted:
            if any(e is not None for _, e in entries):
                return self.refuse(request, route, 403, "wrong track")
            return self.refuse(request, route, 404, "unknown key")
        return self._ok(request, route, clearkey.license_body(granted), "application/json")


def client_address(request: web.Request, trusted: Networks) -> str | None:
    """The client's address: the socket peer, or what the trusted proxies (cache tiers) forwarded."""
    addr = geo_client.client_address(request.remote, request.headers, trusted)
    return None if addr is None else str(addr)


def _json_capable(content_type: str) -> bool:
    return not content_type.strip().lower().startswith(REFUSED_TYPES)


def create(config: Any, *, clock: Callable[[], float], origins: tuple[str, ...],
           registry: CollectorRegistry) -> KeyService:
    """The key service of an origin config with ``[keys] store`` set (raises ConfigError/KeyStoreError)."""
    from drm.config import load_master_key, load_public_keys

    tokens = config.tokens
    store = KeyStore.open(config.keys.require_store(), load_master_key(config.keys), create=False)
    try:
        public_keys = load_public_keys(tokens)
    except BaseException:
        store.close()
        raise
    return KeyService(store, public_keys, skew=tokens.skew, verified_tokens=tokens.rate_sessions,
                      limiter=RateLimiter(tokens.rate_per_session, tokens.burst, max_keys=tokens.rate_sessions),
                      client_ip=functools.partial(client_address, trusted=config.trusted_networks()),
                      clock=clock, origins=origins, node="origin", registry=registry)
