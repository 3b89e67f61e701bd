"""The cache key: which requests share one stored object.

Pure: no I/O.  Built on ``legato.urls``, the one parser of the URL space.

Rules:

* **The key is the canonical URL path**, e.g.
  ``/tracks/t1/aac-160k/seg-00001.m4s``: ``urls.parse`` then
  ``Route.path``, so ``/tracks/%74%31/...`` and ``/tracks/t1/...`` are one
  object, and ``seg-1.m4s`` is no object at all (segment numbers are
  canonical in the URL space).  The key is also what the eviction policies
  see (``cache.policy.ListenPolicy`` parses it back to track, rendition and
  segment number).
* **The query string is never part of the key.**  Every object of the URL
  space is named by its path alone; session tokens (``?token=...``) ride in
  the query and are checked by the edge *before* the cache is consulted.
  Keying on the query would store one copy of a segment per session and let
  any client bypass the cache with ``?x=<random>``.  The edge rewrites key
  URIs into manifests per session after the cache, so the cached manifest is
  the same for everyone.
* **GET and HEAD share a key** (HEAD is answered from the stored GET
  response, RFC 9110 §9.3.2); other methods are never cached.
* **Only store objects are cacheable**: playlists, MPDs, init and media
  segments, ``track.json`` and licence records.  ``/metrics``, ``/healthz``
  and paths outside the URL space (``/keys/{kid}``, the ClearKey licence
  endpoint) have no key: they are never cached by any tier.
* ``Vary`` is not part of the key: the only field our origin varies on is
  ``Origin`` (CORS), and each tier computes its own CORS headers from its own
  config rather than storing the origin's (see ``legato.http.cors_headers``).

``ring_key`` gives the consistent-hashing key (``cache.ring``): the track id,
so every object of a track lands on the same regional.  ``key_digest`` is a
stable xxh3-128 hex digest of a key, for file names in the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

from legato import urls
from legato.urls import Kind, Route

__all__ = [
    "CACHEABLE_KINDS",
    "KEYED_METHODS",
    "CacheKey",
    "cache_key",
    "key_digest",
    "ring_key",
    "split_target",
]

CACHEABLE_KINDS = frozenset(
    {Kind.MASTER, Kind.MPD, Kind.TRACK_JSON, Kind.MEDIA_PLAYLIST, Kind.INIT, Kind.SEGMENT, Kind.LICENSE}
)
"""Kinds of route whose responses a tier may cache."""

KEYED_METHODS = frozenset({"GET", "HEAD"})
"""Methods answered from the cache; they share one key."""


def split_target(target: str) -> tuple[str, str]:
    """Split an origin-form request-target into (raw path, raw query)."""
    path, _, query = target.partition("?")
    return path, query


def key_digest(key: str) -> str:
    """A stable 32-hex-digit digest of a key (xxh3-128), for store file names."""
    return xxhash.xxh3_128_hexdigest(key.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The key of a cacheable request: a route of the URL space."""

    route: Route

    @property
    def path(self) -> str:
        """The key itself: the canonical URL path."""
        return self.route.path

    @property
    def ring_key(self) -> str:
        """The consistent-hashing key: the track id."""
        assert self.route.track is not None  # every cacheable kind belongs to a track
        return self.route.track

    @property
    def digest(self) -> str:
        """``key_digest(self.path)``."""
        return key_digest(self.path)

    def __str__(self) -> str:
        return self.path


def cache_key(method: str, target: str) -> CacheKey | None:
    """The cache key of a request, or None when the response is never cached.

    ``target`` is the raw origin-form request-target (percent-encoded, query
    allowed).  Raises ``urls.BadPath`` for hostile or malformed paths, like
    ``urls.parse``: the caller answers 400 before any cache lookup.
    """
    if method not in KEYED_METHODS:
        return None
    route = urls.parse(split_target(target)[0])
    if route is None or route.kind not in CACHEABLE_KINDS:
        return None
    return CacheKey(route)


def ring_key(target: str) -> str | None:
    """The track id a path (or request-target, or key) belongs to; None for others.

    Segments, init segments, playlists, MPDs, ``track.json`` and licence
    records of one track all map to that track, so one regional holds them.
    Raises ``urls.BadPath`` like ``urls.parse``.
    """
    route = urls.parse(split_target(target)[0])
    return route.track if route is not None else None
