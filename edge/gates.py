"""The edge's request gates: the hook they plug into, and how they refuse.

A gate is any object with ``kinds`` (the ``legato.urls.Kind`` values it checks)
and ``async check(request, route, node) -> web.StreamResponse | None``
(``Gate``, defined with the engine in cache.node and re-exported here).  The
node runs the installed gates in order after routing and before lookup, for
GET, HEAD and POST requests of their kinds; None lets the request through, a
response is sent as is.  Kinds any gate checks are never answered by the
sendfile fast path.  A gate that needs a cacheable object (a licence record)
reads it through the engine: ``await node.fetch_bytes(path)``.

Refusals are short JSON, ``{"error": reason}`` (``refuse``), never echo the
request's token, are not stored by anyone (``Cache-Control: no-store``
unless the gate says otherwise) and are counted in
``legato_edge_refusals_total{gate,reason}``.

The client address a gate should use is ``client_address(request,
trusted)``: the socket peer, or, behind trusted proxies, the address they
forwarded (geo.client).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from cache.node import Gate, Node, Rewriter
from legato.web import base_headers

__all__ = ["CLAIMS_KEY", "EdgeMetrics", "Gate", "Node", "Rewriter", "client_address", "refuse"]

CLAIMS_KEY: web.RequestKey[Any] = web.RequestKey("claims", object)
"""Where the token gate leaves the verified ``drm.tokens.Claims`` for the gates after it."""


class EdgeMetrics:
    """The edge's own metrics (one instance per node, in the node's registry)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter

        self.refusals = Counter("legato_edge_refusals", "Requests refused at the edge, by gate and reason",
                                ("gate", "reason"), registry=registry)


def refuse(request: web.Request, node: Node, metrics: EdgeMetrics, gate: str, status: int, reason: str, *,
           body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    """A refusal: ``{"error": reason, **body}`` with ``status``, counted under (gate, reason)."""
    metrics.refusals.labels(gate, reason).inc()
    out = base_headers(request, node.origins)
    out.update({"Content-Type": "application/json", "Cache-Control": "no-store", "X-Cache": "MISS",
                "Via": f"1.1 {node.config.name}"})
    if headers:
        out.update(headers)
    data = json.dumps({"error": reason, **(body or {})}).encode() + b"\n"
    return web.Response(status=status, body=data, headers=out)


def client_address(request: web.Request, trusted: Iterable[str] | Any = (), header: str = "x-forwarded-for") -> str | None:
    """The client's address as text: the socket peer, or what trusted proxies forwarded (geo.client)."""
    from geo.client import client_address as resolve

    addr = resolve(request.remote, request.headers, trusted, header=header)
    return None if addr is None else str(addr)
