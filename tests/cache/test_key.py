"""cache/key.py: what shares a cache key, what has none, and the ring key."""

from __future__ import annotations

import pytest
import xxhash

from cache.key import (
    CACHEABLE_KINDS,
    CacheKey,
    cache_key,
    key_digest,
    ring_key,
    split_target,
)
from legato.urls import BadPath, Kind, Route


@pytest.mark.parametrize(("target", "key"), [
    ("/tracks/t1/aac-160k/seg-00001.m4s", "/tracks/t1/aac-160k/seg-00001.m4s"),
    ("/tracks/t1/aac-160k/seg-00001.m4s?token=abc.def", "/tracks/t1/aac-160k/seg-00001.m4s"),
    ("/tracks/t1/aac-160k/seg-00001.m4s?", "/tracks/t1/aac-160k/seg-00001.m4s"),
    ("/tracks/%74%31/aac-160k/init.mp4?x=1&y=2", "/tracks/t1/aac-160k/init.mp4"),
    ("/tracks/t1/master.m3u8?token=s1", "/tracks/t1/master.m3u8"),
    ("/tracks/t1/manifest.mpd", "/tracks/t1/manifest.mpd"),
    ("/tracks/t1/flac/index.m3u8?token=s2", "/tracks/t1/flac/index.m3u8"),
    ("/tracks/t1/track.json?v=2", "/tracks/t1/track.json"),
    ("/licenses/t1.json", "/licenses/t1.json"),
])
def test_key_is_the_canonical_path_without_query(target: str, key: str) -> None:
    for method in ("GET", "HEAD"):
        k = cache_key(method, target)
        assert k is not None and k.path == key and str(k) == key


def test_sessions_share_one_object() -> None:
    a = cache_key("GET", "/tracks/t1/aac-96k/seg-00003.m4s?token=alice")
    b = cache_key("HEAD", "/tracks/t1/aac-96k/seg-00003.m4s?token=bob")
    assert a == b and a is not None and a.digest == b.digest  # type: ignore[union-attr]


@pytest.mark.parametrize(("method", "target"), [
    ("POST", "/tracks/t1/aac-96k/seg-00001.m4s"),
    ("OPTIONS", "/tracks/t1/master.m3u8"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/keys/0123456789abcdef"),  # keys are never cached by any tier
    ("POST", "/license/clearkey"),
    ("GET", "/license/clearkey"),
    ("GET", "/tracks/t1/aac-96k/seg-1.m4s"),  # non-canonical number: no object
    ("GET", "/favicon.ico"),
])
def test_uncacheable_requests_have_no_key(method: str, target: str) -> None:
    assert cache_key(method, target) is None


def test_hostile_paths_raise_like_the_url_parser() -> None:
    with pytest.raises(BadPath):
        cache_key("GET", "/tracks/../etc/passwd")
    with pytest.raises(BadPath):
        ring_key("/tracks/t1/%2e%2e/x?token=1")


def test_every_cacheable_kind_has_a_track() -> None:
    assert Kind.METRICS not in CACHEABLE_KINDS and Kind.HEALTHZ not in CACHEABLE_KINDS
    for kind in CACHEABLE_KINDS:
        route = Route(kind, "t9", "aac-96k" if kind in (Kind.INIT, Kind.MEDIA_PLAYLIST, Kind.SEGMENT) else None,
                      4 if kind is Kind.SEGMENT else None)
        assert CacheKey(route).ring_key == "t9"
        assert ring_key(route.path) == "t9"


@pytest.mark.parametrize(("target", "track"), [
    ("/tracks/t1/aac-96k/seg-00001.m4s", "t1"),
    ("/tracks/t1/flac/seg-00042.m4s?token=x", "t1"),
    ("/tracks/t1/master.m3u8", "t1"),
    ("/licenses/t1.json", "t1"),
    ("/metrics", None),
    ("/nothing/here", None),
])
def test_ring_key_is_the_track(target: str, track: str | None) -> None:
    assert ring_key(target) == track


def test_digest_is_stable_xxh3_128() -> None:
    key = "/tracks/t1/aac-160k/seg-00001.m4s"
    digest = key_digest(key)
    assert digest == xxhash.xxh3_128_hexdigest(key.encode())
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert key_digest("") == "99aa06d3014798d86001c324468d497f"  # XXH3_128bits of the empty input
    assert key_digest(key) != key_digest(key + "x")


def test_split_target() -> None:
    assert split_target("/a?b=c?d") == ("/a", "b=c?d")
    assert split_target("/a") == ("/a", "")
