"""cache.h1: the strict request-head parser, by rule and by property."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.h1 import H1Error, HeadReader, Limits, RequestHead, parse_head

GET = b"GET /tracks/a/aac-96k/seg-00001.m4s?token=x HTTP/1.1\r\nHost: edge\r\n\r\n"


def parse(raw: bytes) -> RequestHead:
    parsed = parse_head(raw)
    assert parsed is not None
    head, end = parsed
    assert end == len(raw)
    return head


DEFAULT = Limits()


def status_of(raw: bytes, limits: Limits = DEFAULT) -> int:
    with pytest.raises(H1Error) as info:
        parse_head(raw, 0, limits)
    return info.value.status


# --------------------------------------------------------------------------
# Well-formed heads


def test_simple_get() -> None:
    head = parse(GET)
    assert head.method == "GET"
    assert head.target == "/tracks/a/aac-96k/seg-00001.m4s?token=x"
    assert head.http_version == "1.1"
    assert head.headers == [("host", "edge")]
    assert head.keep_alive and not head.has_body
    assert head.raw == GET


def test_field_names_lowered_values_trimmed_order_kept() -> None:
    head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-A:  one \t\r\nx-a:two\r\nRange: bytes=0-\r\nEmpty:\r\n\r\n")
    assert head.headers == [("host", "a"), ("x-a", "one"), ("x-a", "two"), ("range", "bytes=0-"), ("empty", "")]
    assert head.get("x-a") == "one"
    assert head.get("nope") is None


def test_obs_text_in_values_and_tabs_inside() -> None:
    head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\tau lait\r\n\r\n")
    assert head.get("x") == "caf\xe9\tau lait"


def test_leading_empty_lines_are_skipped() -> None:
    parsed = parse_head(b"\r\n\r\n" + GET)
    assert parsed is not None and parsed[0].raw == GET and parsed[1] == 4 + len(GET)


@pytest.mark.parametrize(("raw", "keep"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", False),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", True),  # §2.3: a later 1.x minor is served as 1.1
])
def test_persistence(raw: bytes, keep: bool) -> None:
    """RFC 9112 §9.3."""
    assert parse(raw).keep_alive is keep


@pytest.mark.parametrize(("extra", "length", "chunked"), [
    (b"Content-Length: 0\r\n", 0, False),
    (b"Content-Length: 12\r\n", 12, False),
    (b"Content-Length: 12\r\nContent-Length: 12\r\n", 12, False),
    (b"Transfer-Encoding: chunked\r\n", None, True),
    (b"Transfer-Encoding: Chunked\r\n", None, True),
])
def test_bodies_are_reported(extra: bytes, length: int | None, chunked: bool) -> None:
    head = parse(b"POST /x HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n")
    assert head.content_length == length and head.chunked is chunked
    assert head.has_body is bool(length or chunked)


# --------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /\r\n\r\n", 400),  # HTTP/0.9 style
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # double space
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),  # version is case-sensitive
    (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # method not a token
    (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),  # bare CR
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # §5.1 whitespace before colon
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),  # §5.2 obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\n\r\n", 505),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400),  # a TLS ClientHello
])
def test_errors(raw: bytes, status: int) -> None:
    assert status_of(raw) == status


def test_request_line_limit() -> None:
    limit = Limits().request_line
    line = b"GET /" + b"a" * (limit - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == limit
    assert parse(line + b"\r\nHost: a\r\n\r\n").target.startswith("/a")
    long_line = line.replace(b"/a", b"/aa", 1)
    assert status_of(long_line + b"\r\nHost: a\r\n\r\n") == 414
    assert status_of((long_line + b"xx")[: limit + 2]) == 414  # known before the line ends
    assert status_of(b"\x00" * (limit + 5)) == 400


def test_header_limits() -> None:
    limits = Limits()
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * limits.header_section + b"\r\n\r\n"
    assert status_of(big) == 431
    assert status_of(big[:-3]) == 431  # known before the head ends
    def fields(n: int) -> bytes:
        return b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(n - 1)) + b"\r\n"

    assert len(parse(fields(100)).headers) == 100
    assert status_of(fields(101)) == 431


def test_header_section_exactly_at_the_limit() -> None:
    limits = Limits(request_line=64, header_section=64, header_count=10)
    section = b"Host: a\r\nX: " + b"v" * (64 - len(b"Host: a\r\nX: \r\n\r\n")) + b"\r\n\r\n"
    assert len(section) == 64
    assert parse_head(b"GET / HTTP/1.1\r\n" + section, 0, limits) is not None
    assert status_of(b"GET / HTTP/1.1\r\n" + section.replace(b"X: ", b"X: v"), limits) == 431


def test_too_many_empty_lines() -> None:
    assert status_of(b"\r\n" * 5000 + GET) == 400


def test_incomplete_heads_wait() -> None:
    for n in range(len(GET)):
        assert parse_head(GET[:n]) is None, GET[:n]


def test_no_quadratic_backtracking_on_whitespace() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: a" + b" " * 15000 + b"b \r\n\r\n"
    assert parse(raw).get("x") == "a" + " " * 15000 + "b"


# --------------------------------------------------------------------------
# HeadReader


def test_reader_pipelining_and_rest() -> None:
    reader = HeadReader()
    body_request = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    reader.feed(GET + GET[:10])
    assert reader.next_head() is not None
    assert reader.next_head() is None
    reader.feed(GET[10:] + body_request)
    assert reader.next_head() is not None
    post = reader.next_head()
    assert post is not None and post.has_body
    assert reader.rest() == b"abc"
    assert reader.buffered == 3


def test_reader_byte_by_byte() -> None:
    reader = HeadReader()
    heads = []
    for i in range(len(GET) * 3):
        reader.feed((GET * 3)[i:i + 1])
        head = reader.next_head()
        if head is not None:
            heads.append(head)
    assert [h.raw for h in heads] == [GET] * 3
    assert reader.buffered == 0


# --------------------------------------------------------------------------
# Properties


def outcome(chunks: list[bytes], limits: Limits) -> tuple[list[tuple[str, str, str, list[tuple[str, str]], bool]], int | None]:
    """Feed ``chunks`` one by one; the heads parsed and the final error status."""
    reader = HeadReader(limits)
    heads = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while (head := reader.next_head()) is not None:
                heads.append((head.method, head.target, head.http_version, head.headers, head.keep_alive))
                if head.has_body:
                    return heads, None  # the rest is a body: not ours to parse
    except H1Error as exc:
        assert exc.status in (400, 414, 431, 501, 505)
        return heads, exc.status
    return heads, None


SMALL = Limits(request_line=48, header_section=96, header_count=4)

token = st.one_of(st.sampled_from(["GET", "GET", "HEAD", "POST"]), st.text(alphabet="GETHADxy-!@", min_size=1, max_size=5))
target = st.text(alphabet="/abc?=%&.-~", min_size=1, max_size=20)
field_name = st.sampled_from(["Connection", "Content-Length", "Transfer-Encoding", "Range", "X-a", "X-a", "Host"])
field_value = st.one_of(
    st.sampled_from(["a", "close", "keep-alive", "0", "7", "chunked", "gzip", "bytes=0-1", " x ", ""]),
    st.sampled_from(["a", "keep-alive", "0", "bytes=0-1", "\tv\t"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
)
version = st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "http/1.1"])


@st.composite
def request_bytes(draw: st.DrawFn) -> bytes:
    """Mostly well-formed pipelines of heads, with random corruption."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        line = f"{draw(token)} {draw(target)} {draw(version)}"
        fields = draw(st.lists(st.tuples(field_name, field_value), max_size=4))
        if draw(st.integers(0, 3)):
            fields.insert(draw(st.integers(0, len(fields))), ("Host", "h"))
        text = line + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
        out += text.encode("latin-1")
    if not draw(st.integers(0, 3)):
        pos = draw(st.integers(0, len(out)))
        out = out[:pos] + draw(st.binary(max_size=4)) + out[pos:]
    return out


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.data())
def test_random_bytes_only_raise_h1error(raw: bytes, data: st.DataObject) -> None:
    outcome([raw], SMALL)
    outcome(data.draw(split(raw)), SMALL)


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(request_bytes(), st.data())
def test_split_points_do_not_change_the_result(raw: bytes, data: st.DataObject) -> None:
    whole = outcome([raw], SMALL)
    assert outcome(data.draw(split(raw)), SMALL) == whole
    assert outcome([raw[i:i + 1] for i in range(len(raw))], SMALL) == whole


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200), st.data())
def test_random_bytes_split_invariance(raw: bytes, data: st.DataObject) -> None:
    prefixed = b"GET / HTTP/1.1\r\nHost: a\r\n" + raw
    assert outcome(data.draw(split(prefixed)), SMALL) == outcome([prefixed], SMALL)
