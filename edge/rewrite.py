"""Carrying a session token into a manifest's gated URIs.  Pure: bytes in, bytes out.

A player asks for a manifest with ``?token=…`` and then follows the URIs
written in it, which know nothing of the token.  The edge therefore serves
the cached (token-free) manifest with the token added to exactly the URIs
the edge will ask it for again, so unmodified players (hls.js, shaka-player,
ffmpeg, Safari) carry it on their own:

* **HLS** (multivariant and media playlists, RFC 8216): every URI, whether
  a URI line (variant streams) or the ``URI="…"`` attribute of a tag
  (``EXT-X-KEY``, ``EXT-X-SESSION-KEY``, ``EXT-X-MEDIA``, ``EXT-X-MAP``…),
  whose path, resolved against the playlist's own path, is *gated* (by
  default: playlists, keys, the licence endpoint; ``gated_path``) gets the
  token.  Segments and init segments never do: they stay shared and
  cacheable, and a token in their URLs would only fragment caches.
  ``data:`` and ``skd:`` URIs are left alone.  URIs keep their form
  (relative stays relative: players resolve them against the playlist URL).
* **DASH** (MPD): the licence server URL — the text of a ``Laurl`` element
  of any prefix (``clearkey:Laurl``, ``dashif:Laurl``) and the
  ``licenseUrl`` attribute (``ms:laurl``) — gets the token.  A relative one
  is also made absolute against the MPD's own URL: DASH resolves URLs
  against the MPD, but players hand the licence URL to the browser as is,
  which would resolve it against the *page*.

The token is percent-encoded (RFC 3986 unreserved characters kept) and
replaces any ``token`` parameter already in the URI; other parameters and a
fragment are kept.  In XML the result is escaped.  Anything that cannot be
parsed as text (not UTF-8) is returned unchanged: the manifest is never
broken by rewriting, at worst a player then meets a refusal for a missing
token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote, urljoin, urlsplit
from xml.sax.saxutils import escape, unescape

from legato import urls

TOKEN_PARAM = "token"
GATED_KINDS = frozenset({urls.Kind.MASTER, urls.Kind.MPD, urls.Kind.MEDIA_PLAYLIST, urls.Kind.KEY,
                         urls.Kind.CLEARKEY})
"""What the edge checks a token on: the URIs that must carry it."""

_HLS_URI_ATTR = re.compile(r'(?<=[:,])URI="([^"\r\n]*)"')
_LAURL = re.compile(r"(<(?:[A-Za-z_][\w.-]*:)?laurl\b[^>]*>)([^<]*)(</(?:[A-Za-z_][\w.-]*:)?laurl\s*>)",
                    re.IGNORECASE)
_LICENSE_URL_ATTR = re.compile(r'(\blicenseUrl\s*=\s*)(["\'])(.*?)\2', re.DOTALL)
_UNTOUCHED_SCHEMES = ("data:", "skd:")


def gated_path(path: str) -> bool:
    """True when ``path`` (a URL path, query removed) is a kind the edge checks tokens on."""
    try:
        route = urls.parse(path)
    except urls.BadPath:
        return False
    return route is not None and route.kind in GATED_KINDS


def add_token(uri: str, token: str) -> str:
    """``uri`` with ``token=<token>`` as its (only) token parameter, percent-encoded."""
    rest, hashmark, fragment = uri.partition("#")
    path, _, query = rest.partition("?")
    params = [p for p in query.split("&") if p and p.partition("=")[0] != TOKEN_PARAM]
    params.append(f"{TOKEN_PARAM}={quote(token, safe='-._~')}")
    return f"{path}?{'&'.join(params)}{hashmark}{fragment}"


def _wants(uri: str, base: str, gated: Callable[[str], bool]) -> bool:
    if not uri or uri.lower().startswith(_UNTOUCHED_SCHEMES):
        return False
    try:
        return gated(urlsplit(urljoin(base, uri)).path)
    except ValueError:  # an unparseable URI: leave it as it is
        return False


def rewrite_hls(body: bytes, base: str, token: str, gated: Callable[[str], bool] = gated_path) -> bytes:
    """An HLS playlist with ``token`` added to its gated URIs (see the module docstring).

    ``base`` is the playlist's own URL or path (``/tracks/T/master.m3u8``).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body

    def attr(m: re.Match[str]) -> str:
        uri = m.group(1)
        return f'URI="{add_token(uri, token)}"' if _wants(uri, base, gated) else m.group(0)

    out = []
    for line in text.splitlines(keepends=True):
        content = line.rstrip("\r\n")
        ending = line[len(content):]
        if content.startswith("#EXT"):
            content = _HLS_URI_ATTR.sub(attr, content)
        elif content.strip() and not content.startswith("#"):
            uri = content.strip()
            if _wants(uri, base, gated):
                content = content.replace(uri, add_token(uri, token), 1)
        out.append(content + ending)
    new = "".join(out)
    return body if new == text else new.encode("utf-8")


def rewrite_mpd(body: bytes, base_url: str, token: str) -> bytes:
    """A DASH MPD with ``token`` added to its licence server URLs, made absolute against ``base_url``.

    ``base_url`` is the MPD's own URL (``http://edge:8091/tracks/T/manifest.mpd``);
    a bare path keeps relative licence URLs relative.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body

    def licence(value: str) -> str:
        url = unescape(value.strip(), {"&quot;": '"', "&apos;": "'"})
        if not url or url.lower().startswith(_UNTOUCHED_SCHEMES):
            return value
        return escape(add_token(urljoin(base_url, url), token), {'"': "&quot;", "'": "&apos;"})

    new = _LAURL.sub(lambda m: m.group(1) + licence(m.group(2)) + m.group(3), text)
    new = _LICENSE_URL_ATTR.sub(lambda m: m.group(1) + m.group(2) + licence(m.group(3)) + m.group(2), new)
    return body if new == text else new.encode("utf-8")
