"""cache.respond: how a cached object becomes a 200/206/304/412/416."""

from __future__ import annotations

import pytest

from cache.respond import Cached, Reply, plain_origin, respond
from legato import http as h

NOW = 1_800_000_000.0
SIZE = 245_760
ETAG = '"abc123"'
LM_TEXT = "Mon, 01 Jan 2024 00:00:00 GMT"
LM = 1704067200
STORED = (
    ("Content-Type", "audio/mp4"),
    ("ETag", ETAG),
    ("Last-Modified", LM_TEXT),
    ("Cache-Control", "public, max-age=31536000, immutable"),
    ("Date", "Mon, 01 Jan 2024 00:01:00 GMT"),
    ("Server", "legato/0.1.0"),
    ("Content-Length", str(SIZE)),
    ("Age", "3"),
    ("Via", "1.1 regional-a"),
    ("X-Cache", "MISS"),
    ("Connection", "keep-alive, X-Hop"),
    ("Keep-Alive", "timeout=5"),
    ("X-Hop", "dropped: named by Connection"),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "ETag"),
    ("Vary", "Accept-Encoding, Origin"),
    ("Expires", "Thu, 01 Jan 2026 00:00:00 GMT"),
)


@pytest.fixture
def cached() -> Cached:
    return Cached.from_stored(200, STORED, SIZE, response_time=1704067260.0)


def names(reply: Reply) -> list[str]:
    return [n.lower() for n, _ in reply.headers]


def field(reply: Reply, name: str) -> str | None:
    values = [v for n, v in reply.headers if n.lower() == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def get(cached: Cached, *headers: tuple[str, str], method: str = "GET", age: int = 42,
        origins: tuple[str, ...] = ("*",)) -> Reply:
    return respond(cached, method, list(headers), NOW, "edge-1", age, origins)


def test_from_stored_reads_validators(cached: Cached) -> None:
    assert cached.etag == ETAG
    assert cached.last_modified == LM
    assert cached.date == LM + 60
    broken = Cached.from_stored(200, (("ETag", "no quotes"), ("Last-Modified", "yesterday")), 1, 5.0)
    assert broken.etag is None and broken.last_modified is None and broken.date is None


def test_full_response_fields(cached: Cached) -> None:
    reply = get(cached)
    assert (reply.status, reply.first, reply.length, reply.body) == (200, 0, SIZE, b"")
    assert field(reply, "content-length") == str(SIZE)
    assert field(reply, "accept-ranges") == "bytes"
    assert field(reply, "age") == "42"
    assert field(reply, "x-cache") == "HIT"
    assert field(reply, "via") == "1.1 regional-a, 1.1 edge-1"
    assert field(reply, "date") == h.http_date(NOW)
    # end-to-end fields kept, in stored order
    kept = [n for n in names(reply) if n in ("content-type", "etag", "last-modified", "cache-control", "server",
                                              "expires")]
    assert kept == ["content-type", "etag", "last-modified", "cache-control", "server", "expires"]
    assert field(reply, "etag") == ETAG
    # hop-by-hop and recomputed fields gone
    for gone in ("connection", "keep-alive", "x-hop", "content-range"):
        assert gone not in names(reply)
    # CORS is this node's
    assert field(reply, "access-control-allow-origin") == "*"
    assert field(reply, "access-control-expose-headers") == ", ".join(h.CORS_EXPOSED_HEADERS)
    assert field(reply, "vary") == "Accept-Encoding"


def test_head_has_the_get_fields_and_no_body(cached: Cached) -> None:
    reply = get(cached, ("Range", "bytes=0-0"), method="HEAD")  # §14.2: Range only for GET
    assert reply.status == 200 and reply.length == 0 and reply.body == b""
    assert field(reply, "content-length") == str(SIZE)


@pytest.mark.parametrize(("spec", "first", "last"), [
    ("bytes=0-0", 0, 0),
    ("bytes=-100", SIZE - 100, SIZE - 1),
    ("bytes=1000-1999", 1000, 1999),
    ("bytes=1000-", 1000, SIZE - 1),
    ("bytes=0-99999999", 0, SIZE - 1),
])
def test_ranges(cached: Cached, spec: str, first: int, last: int) -> None:
    reply = get(cached, ("range", spec))
    assert reply.status == 206
    assert (reply.first, reply.length) == (first, last - first + 1)
    assert field(reply, "content-range") == f"bytes {first}-{last}/{SIZE}"
    assert field(reply, "content-length") == str(last - first + 1)


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", "bytes=-0", "bytes=0-1,5-9", "bytes=x"])
def test_unsatisfiable_ranges(cached: Cached, spec: str) -> None:
    reply = get(cached, ("Range", spec))
    assert reply.status == 416 and reply.length == 0
    assert field(reply, "content-range") == f"bytes */{SIZE}"
    assert reply.body.startswith(b"416 ")
    assert field(reply, "content-length") == str(len(reply.body))
    assert field(reply, "cache-control") == "no-store"


def test_unknown_range_unit_is_ignored(cached: Cached) -> None:
    assert get(cached, ("Range", "seconds=1-2")).status == 200


@pytest.mark.parametrize("request_field", [
    ("If-None-Match", ETAG),
    ("If-None-Match", f'"other", W/{ETAG}'),  # weak comparison (§13.1.2)
    ("If-None-Match", "*"),
    ("If-Modified-Since", LM_TEXT),
])
def test_not_modified(cached: Cached, request_field: tuple[str, str]) -> None:
    reply = get(cached, request_field)
    assert reply.status == 304 and reply.length == 0 and reply.body == b""
    # §15.4.5: only these stored fields, plus ours
    assert set(names(reply)) <= {"cache-control", "etag", "expires", "vary", "date", "age", "via", "x-cache",
                                 "access-control-allow-origin", "access-control-expose-headers",
                                 "content-location"}
    assert field(reply, "etag") == ETAG and field(reply, "age") == "42"


def test_if_none_match_mismatch_serves(cached: Cached) -> None:
    assert get(cached, ("If-None-Match", '"nope"')).status == 200


def test_precondition_failed(cached: Cached) -> None:
    reply = get(cached, ("If-Match", '"nope"'))
    assert reply.status == 412
    assert field(reply, "etag") == ETAG
    assert reply.body.startswith(b"412 Precondition Failed: ")
    assert get(cached, ("If-Match", '"nope"'), method="HEAD").body == b""
    assert get(cached, ("If-Unmodified-Since", "Sun, 31 Dec 2023 00:00:00 GMT")).status == 412
    assert get(cached, ("If-Match", ETAG), ("Range", "bytes=0-1")).status == 206


def test_if_range(cached: Cached) -> None:
    assert get(cached, ("Range", "bytes=0-1"), ("If-Range", ETAG)).status == 206
    assert get(cached, ("Range", "bytes=0-1"), ("If-Range", '"old"')).status == 200
    # stored Date a minute after Last-Modified: a strong validator (RFC 9110 §8.8.2.2)
    assert get(cached, ("Range", "bytes=0-1"), ("If-Range", LM_TEXT)).status == 206
    same_second = Cached.from_stored(200, (("Last-Modified", LM_TEXT), ("Date", LM_TEXT)), SIZE, LM)
    assert get(same_second, ("Range", "bytes=0-1"), ("If-Range", LM_TEXT)).status == 200


def test_cors_with_several_origins(cached: Cached) -> None:
    origins = ("https://a.example", "https://b.example")
    reply = get(cached, ("Origin", "https://b.example"), origins=origins)
    assert field(reply, "access-control-allow-origin") == "https://b.example"
    vary = [v for n, v in reply.headers if n.lower() == "vary"]
    assert vary == ["Accept-Encoding", "Origin"]
    other = get(cached, ("Origin", "https://evil.example"), origins=origins)
    assert field(other, "access-control-allow-origin") is None
    assert get(cached, origins=()).headers == [p for p in get(cached).headers if not p[0].startswith("Access-")]


def test_stored_non_200_is_sent_as_stored() -> None:
    gone = Cached.from_stored(404, (("Content-Type", "text/plain"), ("Cache-Control", "max-age=10")), 12, NOW)
    reply = respond(gone, "GET", [("Range", "bytes=0-1"), ("If-None-Match", "*")], NOW, "edge-1", 1)
    assert (reply.status, reply.first, reply.length) == (404, 0, 12)
    assert "accept-ranges" not in names(reply)
    assert field(reply, "content-length") == "12"


def test_negative_age_is_clamped(cached: Cached) -> None:
    assert field(get(cached, age=-5), "age") == "0"


def test_no_upstream_via(cached: Cached) -> None:
    plain = Cached(200, (("Content-Type", "audio/mp4"),), 10)
    assert field(respond(plain, "GET", [], NOW, "edge-9", 0), "via") == "1.1 edge-9"


def test_unsafe_stored_fields_are_refused() -> None:
    evil = Cached(200, (("X-Evil", "a\r\nSet-Cookie: x=1"),), 10)
    with pytest.raises(ValueError, match="unsafe"):
        respond(evil, "GET", [], NOW, "edge-1", 0)


def test_per_object_work_is_memoised(cached: Cached) -> None:
    first = get(cached)
    assert list(cached._memo) == ["edge-1"]
    second = get(cached)
    assert first.headers == second.headers
    respond(cached, "GET", [], NOW, "edge-2", 0)
    assert sorted(cached._memo) == ["edge-1", "edge-2"]


def test_request_field_names_any_case(cached: Cached) -> None:
    assert get(cached, ("RANGE", "bytes=0-0")).status == 206
    assert get(cached, ("if-none-match", ETAG)).status == 304


def test_unconditional_replies_are_reused_within_a_second(cached: Cached) -> None:
    first = get(cached)
    assert get(cached) is first  # same second, same Age: the same object
    assert get(cached, ("Origin", "https://a.example")) is not first  # reflected CORS may differ
    assert get(cached, age=43) is not first
    assert respond(cached, "GET", [], NOW + 1, "edge-1", 42) is not first
    head = get(cached, method="HEAD")
    assert head is not first and head.length == 0
    assert get(cached, ("Range", "bytes=0-0")).status == 206
    again = get(cached)
    assert again.headers == first.headers and again.length == SIZE


@pytest.mark.parametrize(("headers", "expected"), [
    ([], (True, None)),
    ([("host", "a"), ("user-agent", "b"), ("accept", "*/*")], (True, None)),
    ([("origin", "https://a.example")], (True, "https://a.example")),
    ([("origin", "https://a.example"), ("origin", "https://b.example")], (False, None)),
    ([("range", "bytes=0-1")], (False, None)),
    ([("origin", "https://a.example"), ("if-none-match", ETAG)], (False, None)),
    ([("if-modified-since", LM_TEXT)], (False, None)),
])
def test_plain_origin(headers: list[tuple[str, str]], expected: tuple[bool, str | None]) -> None:
    assert plain_origin(headers) == expected


def test_a_plain_request_gets_the_reply_of_its_method_second_and_origin(cached: Cached) -> None:
    """What the fast path's hot replies rely on: other fields do not matter."""
    first = respond(cached, "GET", [("origin", "https://a.example")], NOW + 0.1, "edge-1", 7)
    again = respond(cached, "GET", [("user-agent", "x"), ("origin", "https://a.example")], NOW + 0.9, "edge-1", 7)
    assert again is first
    assert respond(cached, "GET", [("origin", "https://b.example")], NOW + 0.9, "edge-1", 7) is not first
