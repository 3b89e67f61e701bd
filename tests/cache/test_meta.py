"""cache.meta: stored response records, hop-by-hop stripping, validation on read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.meta import META_VERSION, Meta, MetaError, ResponseHead, storable_headers

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~",
                min_size=1, max_size=20)
VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"),
                max_size=40)
HEADERS = st.lists(st.tuples(TOKEN, VALUE), max_size=8).map(tuple)
TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def sample(**changes: object) -> Meta:
    fields: dict[str, object] = {
        "key": "/tracks/t1/aac-96k/seg-00003.m4s", "status": 200,
        "headers": (("Content-Type", "audio/mp4"), ("ETag", '"0123456789abcdef"')),
        "size": 1234, "xxh3": "0123456789abcdef", "request_time": 1000.0, "response_time": 1000.25,
    }
    fields.update(changes)
    return Meta(**fields)  # type: ignore[arg-type]


def test_round_trip_is_compact_json() -> None:
    meta = sample()
    data = meta.to_bytes()
    assert b" " not in data.replace(b"audio/mp4", b"")  # compact separators
    assert json.loads(data)["v"] == META_VERSION
    assert Meta.from_bytes(data) == meta
    assert meta.header("etag") == '"0123456789abcdef"'
    assert meta.head == ResponseHead(200, meta.headers, 1234)


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=60), status=st.integers(100, 599), headers=HEADERS,
       size=st.integers(0, 2**40), digest=st.text("0123456789abcdef", min_size=16, max_size=16),
       rq=TIMES, rs=TIMES)
def test_any_valid_meta_round_trips(key: str, status: int, headers: tuple[tuple[str, str], ...], size: int,
                                    digest: str, rq: float, rs: float) -> None:
    meta = Meta(key, status, headers, size, digest, rq, rs)
    assert Meta.from_bytes(meta.to_bytes()) == meta


def test_hop_by_hop_fields_are_not_stored() -> None:
    """RFC 9110 §7.6.1: Connection, the fields it names, and the fixed hop-by-hop list."""
    kept = storable_headers([
        ("Content-Type", "audio/mp4"), ("Connection", "keep-alive, X-Trace"), ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"), ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Connection", "x"),
        ("X-Trace", "abc"), ("Content-Length", "10"), ("Trailer", "X-Checksum"), ("Cache-Control", "max-age=60"),
        ("ETag", '"e"'), ("Age", "3"),
    ])
    assert kept == (("Content-Type", "audio/mp4"), ("Cache-Control", "max-age=60"), ("ETag", '"e"'), ("Age", "3"))


@pytest.mark.parametrize("name, value", [("X-Evil", "a\r\nSet-Cookie: x=1"), ("X-Evil", "a\nb"),
                                         ("X-Nul", "a\x00"), ("Bad Name", "v"), ("", "v")])
def test_response_splitting_fields_are_refused(name: str, value: str) -> None:
    with pytest.raises(MetaError):
        storable_headers([(name, value)])
    with pytest.raises(MetaError):
        sample(headers=((name, value),))


@pytest.mark.parametrize("changes", [
    {"key": ""}, {"status": 99}, {"status": 600}, {"status": True}, {"size": -1}, {"size": 1.5},
    {"xxh3": "xyz"}, {"xxh3": "0123456789ABCDEF"}, {"request_time": float("nan")},
    {"response_time": float("inf")}, {"headers": [("a", "b")]}, {"headers": (("a",),)},
])
def test_invalid_fields_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(MetaError):
        sample(**changes)


def _record(**changes: object) -> bytes:
    record = json.loads(sample().to_bytes())
    for k, v in changes.items():
        if v is ...:
            del record[k]
        else:
            record[k] = v
    return json.dumps(record).encode()


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b"null", b'{"v":1}', b"\xff\xfe",
    _record(v=2), _record(v=True), _record(k=...), _record(extra=1), _record(s="200"), _record(h="x"),
    _record(h=[["a"]]), _record(h=[["a", 1]]), _record(n=-5), _record(x=None), _record(q="now"),
    _record(h=[["X", "a\r\nb"]]),
])
def test_corrupt_records_raise_meta_error_only(data: bytes) -> None:
    with pytest.raises(MetaError):
        Meta.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_meta_error(data: bytes) -> None:
    try:
        Meta.from_bytes(data)
    except MetaError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_flipped_byte_is_refused_or_still_valid(position: int, value: int) -> None:
    data = bytearray(sample().to_bytes())
    data[position % len(data)] = value
    try:
        meta = Meta.from_bytes(bytes(data))
    except MetaError:
        return
    assert isinstance(meta, Meta)  # a flip inside a string can still be a valid record


def test_response_head() -> None:
    head = ResponseHead.build(200, [("Content-Type", "audio/mp4"), ("Transfer-Encoding", "chunked")], None)
    assert head == ResponseHead(200, (("Content-Type", "audio/mp4"),), None)
    assert head.header("content-type") == "audio/mp4" and head.header("etag") is None
    for bad in ({"status": 42}, {"status": True}, {"content_length": -1}, {"content_length": True}):
        with pytest.raises(MetaError):
            ResponseHead(**{"status": 200, "headers": (), **bad})  # type: ignore[arg-type]
    meta = Meta.from_head("/k", head, size=5, xxh3="0" * 16, request_time=1, response_time=2)
    assert meta.status == 200 and meta.size == 5 and meta.request_time == 1.0 and meta.headers == head.headers


def test_freshened_by_a_304_replaces_named_fields_and_keeps_the_body() -> None:
    """RFC 9111 §3.2: fields of the 304 replace the stored ones; hop-by-hop and Content-Length do not."""
    stored = sample(headers=(("Content-Type", "audio/mp4"), ("Cache-Control", "max-age=60"), ("Date", "old"),
                             ("X-Multi", "a"), ("X-Multi", "b"), ("ETag", '"e"')))
    fresh = stored.freshened(
        [("Cache-Control", "max-age=600"), ("Date", "new"), ("X-Multi", "c"), ("Expires", "later"),
         ("Connection", "close"), ("Content-Length", "0"), ("Keep-Alive", "timeout=5")],
        request_time=2000.0, response_time=2000.5)
    assert fresh.headers == (("Content-Type", "audio/mp4"), ("Cache-Control", "max-age=600"), ("Date", "new"),
                             ("X-Multi", "c"), ("ETag", '"e"'), ("Expires", "later"))
    assert (fresh.key, fresh.status, fresh.size, fresh.xxh3) == (stored.key, stored.status, stored.size, stored.xxh3)
    assert (fresh.request_time, fresh.response_time) == (2000.0, 2000.5)
