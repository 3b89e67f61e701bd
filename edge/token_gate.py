"""The session-token gate and the manifest rewriter that carries the token on.

``TokenGate`` (a ``Gate``, see edge/gates.py) checks ``?token=…`` on every
request that leads to a key: manifests (``MASTER``, ``MPD``,
``MEDIA_PLAYLIST``), keys (``KEY``) and ClearKey licences (``CLEARKEY``),
with ``drm.tokens`` (a ``Verifier``: a token's signature is checked once,
its time, track and address on every request) and only the public keys of
``[tokens]``:

* the track is the route's: a token for another track is ``wrong track``
  (403).  ``/keys/{kid}`` and ``/license/clearkey`` name no track; for them
  the edge checks signature, validity and address, and the key service on
  origin (which receives the token with the forwarded request) checks that
  the kid belongs to one of the token's tracks;
* a token bound to an address is checked against the client address
  (edge.gates.client_address: the socket peer, or what trusted proxies
  forwarded, ``[geo] trusted_proxies``);
* the verified claims are left on the request (``edge.gates.CLAIMS_KEY``)
  for the gates that follow;
* key and licence requests are rate-limited per session (drm.ratelimit; the
  buckets are per worker process, so a node with N workers allows up to N x
  the configured rate);
* refusals are ``{"error": reason}`` with 401, 403 or 429, counted under
  ``legato_edge_refusals_total{gate="token",reason}``; the token is never
  echoed, logged or counted.

With ``[tokens] required = false`` a request *without* a token passes (a
token that is present is still checked); with no public keys configured the
edge cannot check anything and installs no gate (the key service still
refuses key requests without a valid token, so nothing decryptable leaks;
the edge logs a warning at start).

``TokenRewriter`` (a ``Rewriter``) serves manifests requested with a token
with the token carried into the URIs the player will ask for next
(edge.rewrite); the stored manifest stays token-free.  Segments and init
segments are neither gated nor rewritten: they stay shared and cacheable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from drm.tokens import TokenError, Verifier
from edge.gates import CLAIMS_KEY, EdgeMetrics, Node, client_address, refuse
from edge.rewrite import GATED_KINDS, TOKEN_PARAM, rewrite_hls, rewrite_mpd
from legato import urls

if TYPE_CHECKING:
    from drm.ratelimit import RateLimiter

GATE = "token"
RATE_LIMITED = "rate limited"
RATE_LIMITED_KINDS = frozenset({urls.Kind.KEY, urls.Kind.CLEARKEY})
REWRITTEN_KINDS = frozenset({urls.Kind.MASTER, urls.Kind.MEDIA_PLAYLIST, urls.Kind.MPD})
_HOST_RE = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class TokenGate:
    """Checks the session token of manifest, key and licence requests (see the module docstring)."""

    kinds = GATED_KINDS

    def __init__(self, public_keys: Mapping[str, Ed25519PublicKey], *, skew: float, required: bool,
                 limiter: RateLimiter, metrics: EdgeMetrics,
                 client_ip: Callable[[web.Request], str | None] = client_address) -> None:
        self.verifier = Verifier(public_keys, skew=skew)  # remembers tokens that authenticated (one Ed25519 check each)
        self.required = required
        self.limiter = limiter
        self.metrics = metrics
        self.client_ip = client_ip

    def _refuse(self, request: web.Request, node: Node, status: int, reason: str,
                headers: Mapping[str, str] | None = None) -> web.Response:
        if status == 401:  # RFC 9110 §15.5.2: a 401 names the scheme (RFC 6750 allows the token in the query)
            headers = {"WWW-Authenticate": f'Bearer realm="legato", error="invalid_token", '
                                           f'error_description="{reason}"', **(headers or {})}
        return refuse(request, node, self.metrics, GATE, status, reason, headers=headers)

    async def check(self, request: web.Request, route: urls.Route, node: Node) -> web.StreamResponse | None:
        tokens = request.query.getall(TOKEN_PARAM, [])
        if not tokens and not self.required:
            return None
        if len(tokens) > 1:
            return self._refuse(request, node, 401, "malformed")
        now = node.clock()
        try:
            claims = self.verifier.verify(tokens[0] if tokens else None, now=now, track=route.track,
                                          client_ip=self.client_ip(request) or "")
        except TokenError as exc:
            return self._refuse(request, node, exc.status, exc.reason)
        if route.kind in RATE_LIMITED_KINDS:
            wait = self.limiter.take(claims.session, now)
            if wait > 0:
                return self._refuse(request, node, 429, RATE_LIMITED, {"Retry-After": str(max(1, math.ceil(wait)))})
        request[CLAIMS_KEY] = claims  # for the gates after this one (the licence gate: a key's tracks)
        return None


class TokenRewriter:
    """Carries ``?token=…`` of a manifest request into the manifest's gated URIs (edge.rewrite)."""

    kinds = REWRITTEN_KINDS

    def rewrite(self, request: web.Request, route: urls.Route, body: bytes) -> bytes:
        tokens = request.query.getall(TOKEN_PARAM, [])
        if len(tokens) != 1 or not tokens[0]:
            return body
        if route.kind is urls.Kind.MPD:
            return rewrite_mpd(body, own_url(request, route), tokens[0])
        return rewrite_hls(body, route.path, tokens[0])


def own_url(request: web.Request, route: urls.Route) -> str:
    """The absolute URL the client used for ``route`` (Host as sent; just the path if Host is odd)."""
    host = request.headers.get("Host", "")
    if not _HOST_RE.fullmatch(host):
        return route.path
    return f"{request.scheme}://{host}{route.path}"
