"""aiohttp plumbing shared by every node kind: the raw request path, plain-text
errors, CORS preflight, bounded request bodies.  HTTP semantics themselves live in legato.http."""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from legato import __version__
from legato import http as h

SERVER = f"legato/{__version__}"
ALLOW = "GET, HEAD, OPTIONS"


def target_path(raw_target: str) -> str:
    """The raw path of a request-target, query removed.

    Origin-form (``/a/b?q``) is the norm; absolute-form (``http://host/a/b``),
    which RFC 9112 §3.2.2 says servers MUST accept, is reduced to its path
    without any normalisation, so ``..`` stays visible to ``urls.parse``.
    """
    if not raw_target.startswith("/") and "://" in raw_target:
        raw_target = urlsplit(raw_target).path or "/"
    return raw_target.partition("?")[0]


def base_headers(request: web.Request, origins: tuple[str, ...]) -> dict[str, str]:
    headers = h.cors_headers(origins, request.headers.get(hdrs.ORIGIN))
    headers["Server"] = SERVER
    return headers


def error(request: web.Request, origins: tuple[str, ...], status: int, reason: str, **extra: str) -> web.Response:
    """A plain-text error: ``404 Not Found: unknown track 'x'``; never cached."""
    headers = base_headers(request, origins)
    headers["Cache-Control"] = "no-store"
    headers.update(extra)
    return web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}: {reason}\n", headers=headers)


def options(request: web.Request, origins: tuple[str, ...], allow: str = ALLOW) -> web.Response:
    """CORS preflight, or a plain OPTIONS listing the allowed methods (RFC 9110 §9.3.7)."""
    if hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        headers = h.preflight_headers(origins, request.headers.get(hdrs.ORIGIN))
    else:
        headers = h.cors_headers(origins, request.headers.get(hdrs.ORIGIN))
    headers.update({"Allow": allow, "Server": SERVER})
    return web.Response(status=204, headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes (``read(n)`` returns what has
    arrived so far, so a body in several TCP segments needs the loop)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)
