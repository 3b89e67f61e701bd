"""legato/urls.py: the URL space, its ids and its refusals."""

from __future__ import annotations

import pytest

from legato import urls
from legato.urls import BadPath, Kind, Route


@pytest.mark.parametrize(("path", "route"), [
    ("/tracks/sunrise/master.m3u8", Route(Kind.MASTER, "sunrise")),
    ("/tracks/sunrise/manifest.mpd", Route(Kind.MPD, "sunrise")),
    ("/tracks/sunrise/track.json", Route(Kind.TRACK_JSON, "sunrise")),
    ("/tracks/sunrise/aac-96k/index.m3u8", Route(Kind.MEDIA_PLAYLIST, "sunrise", "aac-96k")),
    ("/tracks/sunrise/flac/init.mp4", Route(Kind.INIT, "sunrise", "flac")),
    ("/tracks/sunrise/aac-160k/seg-00001.m4s", Route(Kind.SEGMENT, "sunrise", "aac-160k", 1)),
    ("/tracks/sunrise/aac-160k/seg-99999.m4s", Route(Kind.SEGMENT, "sunrise", "aac-160k", 99999)),
    ("/tracks/sunrise/aac-160k/seg-100000.m4s", Route(Kind.SEGMENT, "sunrise", "aac-160k", 100000)),
    ("/licenses/sunrise.json", Route(Kind.LICENSE, "sunrise")),
    ("/metrics", Route(Kind.METRICS)),
    ("/healthz", Route(Kind.HEALTHZ)),
    ("/tracks/A_b-9/x/init.mp4", Route(Kind.INIT, "A_b-9", "x")),
    ("/tracks/%73unrise/master.m3u8", Route(Kind.MASTER, "sunrise")),  # %73 = 's': unreserved, decoded
])
def test_parse_routes(path: str, route: Route) -> None:
    assert urls.parse(path) == route


@pytest.mark.parametrize("route", [
    Route(Kind.MASTER, "t"), Route(Kind.MPD, "t"), Route(Kind.TRACK_JSON, "t"),
    Route(Kind.MEDIA_PLAYLIST, "t", "r"), Route(Kind.INIT, "t", "r"), Route(Kind.SEGMENT, "t", "r", 7),
    Route(Kind.SEGMENT, "t", "r", 123456), Route(Kind.LICENSE, "t"), Route(Kind.METRICS), Route(Kind.HEALTHZ),
])
def test_path_round_trips(route: Route) -> None:
    assert urls.parse(route.path) == route
    if route.kind.is_store_object:
        assert route.path == "/" + route.relpath


def test_relpaths_mirror_urls() -> None:
    assert Route(Kind.SEGMENT, "t", "aac-96k", 3).relpath == "tracks/t/aac-96k/seg-00003.m4s"
    assert Route(Kind.LICENSE, "t").relpath == "licenses/t.json"
    with pytest.raises(ValueError):
        _ = Route(Kind.METRICS).relpath


def test_path_builders() -> None:
    assert urls.track_path("t", "master.m3u8") == "/tracks/t/master.m3u8"
    assert urls.rendition_path("t", "flac", "init.mp4") == "/tracks/t/flac/init.mp4"
    assert urls.segment_path("t", "flac", 12) == "/tracks/t/flac/seg-00012.m4s"
    assert urls.license_path("t") == "/licenses/t.json"
    assert urls.segment_name(1) == "seg-00001.m4s"
    for bad in (lambda: urls.track_path("t", "x.txt"), lambda: urls.track_path(".tmp", "master.m3u8"),
                lambda: urls.rendition_path("t", "AAC", "init.mp4"), lambda: urls.segment_path("t", "r", 0),
                lambda: urls.license_path("../x")):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize("track", ["a", "A", "0", "a" * 64, "Sun_rise-2", "9f86d081884c7d659a2f"])
def test_track_ids_valid(track: str) -> None:
    assert urls.is_track_id(track)
    assert urls.TRACK_ID_RE.fullmatch(track)


@pytest.mark.parametrize("track", ["", "a" * 65, ".tmp-x", "-a", "_a", "a.b", "a/b", "a b", "é", "a\n"])
def test_track_ids_invalid(track: str) -> None:
    assert not urls.is_track_id(track)


@pytest.mark.parametrize("rendition", ["flac", "aac-96k", "a", "0", "a" * 32])
def test_rendition_ids_valid(rendition: str) -> None:
    assert urls.is_rendition_id(rendition)


@pytest.mark.parametrize("rendition", ["", "AAC", "-a", "a_b", "a" * 33, ".x"])
def test_rendition_ids_invalid(rendition: str) -> None:
    assert not urls.is_rendition_id(rendition)


@pytest.mark.parametrize("path", [
    "/", "/tracks", "/tracks/", "/tracks/sunrise", "/tracks/sunrise/", "/tracks/sunrise/other.m3u8",
    "/tracks/sunrise/aac-96k", "/tracks/sunrise/aac-96k/", "/tracks/sunrise/aac-96k/seg-1.m4s",
    "/tracks/sunrise/aac-96k/seg-00000.m4s",  # segments start at 1
    "/tracks/sunrise/aac-96k/seg-000001.m4s",  # not canonical: one object, one URL
    "/tracks/sunrise/aac-96k/seg-00001.mp4", "/tracks/sunrise/aac-96k/seg-00001.m4s.tmp",
    "/tracks/sunrise/aac-96k/seg-99999999999.m4s",
    "/tracks/.tmp-sunrise-123/master.m3u8",  # packager staging dirs are never served
    "/tracks/sunrise/.tmp/init.mp4", "/tracks/sunrise/AAC/init.mp4",
    "/tracks/sunrise/aac-96k/extra/init.mp4", "/licenses/sunrise", "/licenses/sunrise.txt",
    "/licenses/.sunrise.json", "/licenses/a/b.json", "/metrics/", "/healthz/x", "/etc/passwd",
    "/tracks/sunrïse/master.m3u8", "/tracks/%C3%A9/master.m3u8".replace("%C3%A9", "é"), "/tracks/a~b/master.m3u8",
])
def test_not_in_url_space_is_none(path: str) -> None:
    assert urls.parse(path) is None


@pytest.mark.parametrize(("path", "reason"), [
    ("/tracks/../etc/passwd", "dot segment"),
    ("/tracks/sunrise/../../etc/passwd", "dot segment"),
    ("/tracks/./sunrise/master.m3u8", "dot segment"),
    ("/..", "dot segment"),
    ("/tracks/%2e%2e/etc/passwd", "dot segment"),
    ("/tracks/%2E%2E/etc/passwd", "dot segment"),
    ("/tracks/.%2e/etc/passwd", "dot segment"),
    ("/tracks/%2e/sunrise/master.m3u8", "dot segment"),
    ("/tracks/sunrise%2f..%2f..%2fetc/passwd", "encoded slash"),
    ("/tracks/sunrise%2Fmaster.m3u8", "encoded slash"),
    ("/tracks/sunrise%5cmaster.m3u8", "encoded slash or backslash"),
    ("/tracks\\..\\etc\\passwd", "backslash"),
    ("/tracks/sunrise\\master.m3u8", "backslash"),
    ("/tracks/sunrise%00/master.m3u8", "control"),
    ("/tracks/sunrise\x00/master.m3u8", "control"),
    ("/tracks/sun rise/master.m3u8", "control character or space"),
    ("/tracks/sunrise%0a/master.m3u8", "control"),
    ("/tracks/sunrise%ff/master.m3u8", "non-ASCII"),
    ("//etc/passwd", "empty path segment"),
    ("/tracks//sunrise/master.m3u8", "empty path segment"),
    ("/tracks/sunrise//master.m3u8", "empty path segment"),
    ("/tracks/%/master.m3u8", "percent"),
    ("/tracks/%zz/master.m3u8", "percent"),
    ("/tracks/%2/master.m3u8", "percent"),
    ("etc/passwd", "must start with '/'"),
    ("", "must start with '/'"),
    ("http://example.com/tracks/x/master.m3u8", "must start with '/'"),
    ("/" + "a" * 2000, "too long"),
])
def test_hostile_paths_raise_bad_path(path: str, reason: str) -> None:
    with pytest.raises(BadPath) as info:
        urls.parse(path)
    assert reason in info.value.reason
    assert info.value.status == 400


def test_kind_flags() -> None:
    served_elsewhere = (Kind.METRICS, Kind.HEALTHZ, Kind.KEY, Kind.CLEARKEY)
    assert not any(k.is_store_object for k in served_elsewhere)
    assert all(k.is_store_object for k in Kind if k not in served_elsewhere)


@pytest.mark.parametrize(("path", "route"), [
    ("/tracks/sunrise/cenc/aac-96k/seg-00002.m4s", Route(Kind.SEGMENT, "sunrise", "aac-96k", 2, scheme="cenc")),
    ("/tracks/sunrise/hls-aes128/flac/index.m3u8", Route(Kind.MEDIA_PLAYLIST, "sunrise", "flac", scheme="hls-aes128")),
    ("/tracks/sunrise/cenc/flac/init.mp4", Route(Kind.INIT, "sunrise", "flac", scheme="cenc")),
    ("/keys/0123456789abcdef0123456789abcdef", Route(Kind.KEY, kid="0123456789abcdef0123456789abcdef")),
    ("/license/clearkey", Route(Kind.CLEARKEY)),
])
def test_protected_and_key_routes_round_trip(path: str, route: Route) -> None:
    assert urls.parse(path) == route
    assert route.path == path


@pytest.mark.parametrize("path", [
    "/tracks/sunrise/cenc/init.mp4",  # a scheme is never a rendition
    "/tracks/sunrise/hls-aes128/index.m3u8",
    "/tracks/sunrise/other/aac-96k/init.mp4",  # unknown scheme
    "/tracks/sunrise/cenc/cenc/init.mp4",
    "/keys/0123456789ABCDEF0123456789ABCDEF",  # kids are lowercase hex
    "/keys/0123",
    "/license/widevine",
])
def test_protected_and_key_lookalikes_are_not_found(path: str) -> None:
    assert urls.parse(path) is None


def test_scheme_paths_are_built_and_checked() -> None:
    assert urls.segment_path("t", "flac", 3, "cenc") == "/tracks/t/cenc/flac/seg-00003.m4s"
    assert urls.rendition_path("t", "flac", "init.mp4", "hls-aes128") == "/tracks/t/hls-aes128/flac/init.mp4"
    with pytest.raises(ValueError):
        urls.segment_path("t", "flac", 3, "widevine")
    with pytest.raises(ValueError):
        urls.key_path("nothex")
