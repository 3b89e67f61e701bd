"""origin/app.py in-process: a real aiohttp server on 127.0.0.1:0 over a small fake store.

Every test runs twice (like aiohttp's sendfile/fallback suite): once with
objects served from memory and once with every object streamed from disk.
Requests that aiohttp's client would normalise (``..``, ``%2e%2e``, ``//``,
absolute-form, NUL) are sent as raw bytes over a socket.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import xxhash
from aiohttp import web

from legato.server import bind_socket, runner_kwargs
from origin.app import create_app
from origin.config import OriginConfig

TRACK = "t1"
SEG = os.urandom(150_000)
FILES = {
    f"tracks/{TRACK}/master.m3u8": b"#EXTM3U\n#EXT-X-VERSION:7\n",
    f"tracks/{TRACK}/manifest.mpd": b'<?xml version="1.0"?><MPD/>',
    f"tracks/{TRACK}/track.json": b'{"track_id": "t1"}',
    f"tracks/{TRACK}/aac-96k/index.m3u8": b"#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n",
    f"tracks/{TRACK}/aac-96k/init.mp4": b"\x00\x00\x00\x18ftypiso6",
    f"tracks/{TRACK}/aac-96k/seg-00001.m4s": SEG,
    f"tracks/{TRACK}/aac-96k/seg-00002.m4s": b"",  # an empty object
    f"licenses/{TRACK}.json": b'{"territories": ["*"]}',
    # a staging directory of the packager: present on disk, never served
    "tracks/.tmp-t1-123/master.m3u8": b"#EXTM3U\n#staging\n",
}
PATHS = {rel: "/" + rel for rel in FILES}
SEG_PATH = f"/tracks/{TRACK}/aac-96k/seg-00001.m4s"
MASTER = f"/tracks/{TRACK}/master.m3u8"


def etag_of(data: bytes) -> str:
    return f'"{xxhash.xxh3_64_hexdigest(data)}"'


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (tmp_path / "secret.txt").write_text("outside the store")
    return root


@dataclass
class Origin:
    url: str
    port: int
    store: Path


@pytest.fixture(params=["memory", "streamed"])
async def origin(request: pytest.FixtureRequest, store: Path) -> AsyncIterator[Origin]:
    """The origin app on a real socket, wired exactly as `legato origin` wires it."""
    config = OriginConfig(store=store, access_log=False,
                          memory_object_max_kb=4096 if request.param == "memory" else 0)
    app = create_app(config)
    runner = web.AppRunner(app, **runner_kwargs(app, access_log=False, shutdown_timeout=1))
    await runner.setup()
    sock = bind_socket("127.0.0.1", 0, reuse_port=False)
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield Origin(f"http://127.0.0.1:{port}", port, store)
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


@dataclass
class Raw:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


async def raw(port: int, request: bytes, timeout: float = 5) -> Raw:
    """Send raw request bytes (nothing normalised) and read the response to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Raw(int(lines[0].split()[1]), headers, body)


def get(target: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: origin\r\n{extra}Connection: close\r\n\r\n".encode("latin-1")


# ------------------------------------------------------------ serving


@pytest.mark.parametrize(("rel", "ctype", "cache"), [
    (f"tracks/{TRACK}/master.m3u8", "application/vnd.apple.mpegurl", "public, max-age=60"),
    (f"tracks/{TRACK}/manifest.mpd", "application/dash+xml", "public, max-age=60"),
    (f"tracks/{TRACK}/track.json", "application/json", "public, max-age=60"),
    (f"tracks/{TRACK}/aac-96k/index.m3u8", "application/vnd.apple.mpegurl", "public, max-age=60"),
    (f"tracks/{TRACK}/aac-96k/init.mp4", "audio/mp4", "public, max-age=31536000, immutable"),
    (f"tracks/{TRACK}/aac-96k/seg-00001.m4s", "audio/mp4", "public, max-age=31536000, immutable"),
    (f"licenses/{TRACK}.json", "application/json", "public, max-age=30"),
])
async def test_get_serves_bytes_with_type_validators_and_caching(
    origin: Origin, session: aiohttp.ClientSession, rel: str, ctype: str, cache: str,
) -> None:
    async with session.get(origin.url + "/" + rel) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert body == FILES[rel]
        assert resp.headers["Content-Type"] == ctype
        assert resp.headers["Content-Length"] == str(len(FILES[rel]))
        assert resp.headers["ETag"] == etag_of(FILES[rel])  # strong, content hash
        assert resp.headers["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
        assert resp.headers["Cache-Control"] == cache
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Vary" not in resp.headers


async def test_empty_object(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + f"/tracks/{TRACK}/aac-96k/seg-00002.m4s") as resp:
        assert resp.status == 200 and await resp.read() == b""
        assert resp.headers["Content-Length"] == "0"
    async with session.get(origin.url + f"/tracks/{TRACK}/aac-96k/seg-00002.m4s", headers={"Range": "bytes=0-"}) as resp:
        assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */0"


async def test_head_has_get_headers_and_no_body(origin: Origin) -> None:
    g = await raw(origin.port, get(SEG_PATH))
    h = await raw(origin.port, get(SEG_PATH, "HEAD"))
    assert g.status == h.status == 200
    assert h.body == b"" and g.body == SEG
    for name in ("content-type", "content-length", "etag", "last-modified", "cache-control", "accept-ranges"):
        assert h.headers[name] == g.headers[name], name
    # Range is defined for GET only (RFC 9110 §14.2): HEAD gets the 200 headers
    hr = await raw(origin.port, get(SEG_PATH, "HEAD", "Range: bytes=0-9\r\n"))
    assert hr.status == 200 and hr.headers["content-length"] == str(len(SEG)) and hr.body == b""


async def test_server_header_does_not_leak_versions(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + MASTER) as resp:
        assert resp.headers["Server"].startswith("legato/")


async def test_future_mtime_is_clamped_to_now(origin: Origin, session: aiohttp.ClientSession) -> None:
    path = origin.store / f"tracks/{TRACK}/track.json"
    os.utime(path, (4_000_000_000, 4_000_000_000))  # year 2096
    async with session.get(origin.url + f"/tracks/{TRACK}/track.json") as resp:
        lm = email.utils.parsedate_to_datetime(resp.headers["Last-Modified"])
        date = email.utils.parsedate_to_datetime(resp.headers["Date"])
        assert abs((lm - date).total_seconds()) <= 2  # RFC 9110 §8.8.2.1


async def test_republished_file_is_served_fresh(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + MASTER) as resp:
        old = resp.headers["ETag"]
    tmp = origin.store / f"tracks/{TRACK}/.master.new"
    tmp.write_bytes(b"#EXTM3U\n#v2\n")
    os.replace(tmp, origin.store / f"tracks/{TRACK}/master.m3u8")
    async with session.get(origin.url + MASTER) as resp:
        assert await resp.read() == b"#EXTM3U\n#v2\n"
        assert resp.headers["ETag"] == etag_of(b"#EXTM3U\n#v2\n") != old


# ------------------------------------------------------------ conditionals


async def test_if_none_match_gives_304_with_etag_and_no_body(origin: Origin) -> None:
    etag = etag_of(SEG)
    r = await raw(origin.port, get(SEG_PATH, extra=f"If-None-Match: {etag}\r\n"))
    assert r.status == 304 and r.body == b""
    assert r.headers["etag"] == etag
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["access-control-allow-origin"] == "*"
    assert "content-type" not in r.headers
    r = await raw(origin.port, get(SEG_PATH, "HEAD", f"If-None-Match: W/{etag}\r\n"))
    assert r.status == 304
    r = await raw(origin.port, get(SEG_PATH, extra='If-None-Match: "other"\r\n'))
    assert r.status == 200 and r.body == SEG


async def test_if_modified_since(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + MASTER, headers={"If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT"}) as resp:
        assert resp.status == 304
    async with session.get(origin.url + MASTER, headers={"If-Modified-Since": "Tue, 14 Nov 2023 22:13:19 GMT"}) as resp:
        assert resp.status == 200
    # If-None-Match takes precedence (RFC 9110 §13.1.3)
    async with session.get(origin.url + MASTER, headers={"If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT",
                                                         "If-None-Match": '"other"'}) as resp:
        assert resp.status == 200


async def test_if_match_and_if_unmodified_since_give_412(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + MASTER, headers={"If-Match": '"other"'}) as resp:
        assert resp.status == 412
        assert "If-Match" in await resp.text()
    async with session.get(origin.url + MASTER, headers={"If-Match": etag_of(FILES[MASTER[1:]])}) as resp:
        assert resp.status == 200
    async with session.get(origin.url + MASTER, headers={"If-Unmodified-Since": "Mon, 13 Nov 2023 00:00:00 GMT"}) as resp:
        assert resp.status == 412
    # 412 wins over 304 (RFC 9110 §13.2.2 order)
    async with session.get(origin.url + MASTER, headers={"If-Match": '"other"',
                                                         "If-None-Match": etag_of(FILES[MASTER[1:]])}) as resp:
        assert resp.status == 412


# ------------------------------------------------------------ ranges


@pytest.mark.parametrize(("rng", "first", "last"), [
    ("bytes=0-99", 0, 99), ("bytes=100-", 100, len(SEG) - 1), ("bytes=-500", len(SEG) - 500, len(SEG) - 1),
    ("bytes=149000-999999", 149000, len(SEG) - 1), ("bytes=0-0", 0, 0),
])
async def test_single_range_gives_206(origin: Origin, session: aiohttp.ClientSession, rng: str, first: int, last: int) -> None:
    async with session.get(origin.url + SEG_PATH, headers={"Range": rng}) as resp:
        assert resp.status == 206
        assert await resp.read() == SEG[first:last + 1]
        assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(SEG)}"
        assert resp.headers["Content-Length"] == str(last - first + 1)
        assert resp.headers["ETag"] == etag_of(SEG)
        assert resp.headers["Content-Type"] == "audio/mp4"


@pytest.mark.parametrize(("rng", "reason"), [
    ("bytes=150000-", "starts at or after the end"),
    ("bytes=999999999999999999999999-", "starts at or after the end"),
    ("bytes=-0", "zero-length suffix"),
    ("bytes=abc", "invalid byte range"),
    ("bytes=5-2", "ends before it starts"),
    ("bytes=", "no byte range"),
    ("bytes=0-1,5-9", "multiple ranges not supported"),
])
async def test_bad_ranges_give_416_with_reason(origin: Origin, session: aiohttp.ClientSession, rng: str, reason: str) -> None:
    async with session.get(origin.url + SEG_PATH, headers={"Range": rng}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{len(SEG)}"
        assert reason in await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_two_range_header_lines_are_multiple_ranges(origin: Origin) -> None:
    r = await raw(origin.port, get(SEG_PATH, extra="Range: bytes=0-1\r\nRange: bytes=5-9\r\n"))
    assert r.status == 416 and b"multiple ranges" in r.body


async def test_unknown_range_unit_is_ignored(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + SEG_PATH, headers={"Range": "items=0-1"}) as resp:
        assert resp.status == 200 and await resp.read() == SEG


async def test_if_range(origin: Origin, session: aiohttp.ClientSession) -> None:
    etag = etag_of(SEG)
    async with session.get(origin.url + SEG_PATH, headers={"Range": "bytes=0-9", "If-Range": etag}) as resp:
        assert resp.status == 206 and await resp.read() == SEG[:10]
    async with session.get(origin.url + SEG_PATH, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}) as resp:
        assert resp.status == 200 and await resp.read() == SEG
    lm = "Tue, 14 Nov 2023 22:13:20 GMT"
    async with session.get(origin.url + SEG_PATH, headers={"Range": "bytes=0-9", "If-Range": lm}) as resp:
        assert resp.status == 206


# ------------------------------------------------------------ CORS


async def test_cors_simple_request(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + SEG_PATH, headers={"Origin": "https://player.example", "Range": "bytes=0-1"}) as resp:
        assert resp.status == 206
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Content-Range", "Content-Length", "ETag", "Age"} <= exposed


async def test_cors_preflight(origin: Origin, session: aiohttp.ClientSession) -> None:
    headers = {"Origin": "https://player.example", "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "range, if-none-match"}
    async with session.options(origin.url + SEG_PATH, headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
        allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"range", "if-none-match", "if-modified-since", "if-range"} <= allowed
        assert int(resp.headers["Access-Control-Max-Age"]) > 0
    async with session.options(origin.url + SEG_PATH) as resp:  # plain OPTIONS
        assert resp.status == 204 and resp.headers["Allow"] == "GET, HEAD, OPTIONS"


async def test_cors_origin_list_reflects_with_vary(store: Path, session: aiohttp.ClientSession) -> None:
    app = create_app(OriginConfig(store=store, access_log=False, cors_origin="https://a.example, https://b.example"))
    runner = web.AppRunner(app, **runner_kwargs(app, access_log=False))
    await runner.setup()
    sock = bind_socket("127.0.0.1", 0, reuse_port=False)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    await web.SockSite(runner, sock).start()
    try:
        async with session.get(url + MASTER, headers={"Origin": "https://b.example"}) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "https://b.example"
            assert resp.headers["Vary"] == "Origin"
        async with session.get(url + MASTER, headers={"Origin": "https://evil.example"}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert resp.headers["Vary"] == "Origin"
        async with session.get(url + MASTER, headers={"If-None-Match": etag_of(FILES[MASTER[1:]])}) as resp:
            assert resp.status == 304 and resp.headers["Vary"] == "Origin"  # §15.4.5: 304 carries Vary
    finally:
        await runner.cleanup()


# ------------------------------------------------------------ bad requests


@pytest.mark.parametrize(("target", "status", "reason"), [
    ("/tracks/../../secret.txt", 400, b"dot segment"),
    ("/tracks/t1/../../../secret.txt", 400, b"dot segment"),
    ("/tracks/%2e%2e/%2e%2e/secret.txt", 400, b"dot segment"),
    ("/tracks/%2E%2E/t1/master.m3u8", 400, b"dot segment"),
    ("/tracks/.%2e/secret.txt", 400, b"dot segment"),
    ("/tracks/t1%2f..%2f..%2fsecret.txt", 400, b"encoded slash"),
    ("/tracks/t1%2Fmaster.m3u8", 400, b"encoded slash"),
    ("/tracks/t1%5cmaster.m3u8", 400, b"backslash"),
    ("/tracks\\..\\..\\secret.txt", 400, b"backslash"),
    ("/tracks/t1/master.m3u8%00", 400, b"control"),
    ("//secret.txt", 400, b"empty path segment"),
    ("/tracks//t1/master.m3u8", 400, b"empty path segment"),
    ("/tracks/%zz/master.m3u8", 400, b"percent"),
    ("http://origin/tracks/../../secret.txt", 400, b"dot segment"),  # absolute-form, kept raw
    ("http://origin/tracks/t1/master.m3u8", 200, b"#EXTM3U"),  # absolute-form is valid HTTP/1.1
    ("/secret.txt", 404, b"no such path"),
    ("/etc/passwd", 404, b"no such path"),
    ("/tracks/.tmp-t1-123/master.m3u8", 404, b"no such path"),  # staging dirs never served
    ("/tracks/nope/master.m3u8", 404, b"unknown track 'nope'"),
    ("/tracks/t1/aac-999k/index.m3u8", 404, b"unknown rendition 'aac-999k'"),
    ("/tracks/t1/aac-96k/seg-00003.m4s", 404, b"no segment 3"),
    ("/tracks/t1/aac-96k/seg-000001.m4s", 404, b"no such path"),
    ("/licenses/nope.json", 404, b"no licence for track 'nope'"),
    ("/tracks/t1/master.m3u8?token=abc&x=../../", 200, b"#EXTM3U"),  # the query is not part of the path
])
async def test_bad_paths_over_raw_socket(origin: Origin, target: str, status: int, reason: bytes) -> None:
    r = await raw(origin.port, get(target))
    assert r.status == status, r.body
    assert reason in r.body
    assert b"outside the store" not in r.body
    if status >= 400:
        assert r.headers["content-type"].startswith("text/plain")
        assert r.body.startswith(f"{status} ".encode())


@pytest.mark.parametrize("request_bytes", [
    b"GET /tracks/t1/master.m3u8\x00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # raw NUL
    b"GET /tracks/t1/master.m3u8 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # long request line
    b"GET /tracks/t1/master.m3u8 HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"Connection: close\r\n\r\n",  # too many headers
    b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # asterisk-form: not supported
    b"NOT HTTP AT ALL\r\n\r\n",
])
async def test_malformed_requests_get_a_clean_4xx(origin: Origin, request_bytes: bytes) -> None:
    r = await raw(origin.port, request_bytes)
    assert 400 <= r.status < 500, (r.status, r.body[:200])
    assert b"Traceback" not in r.body
    # and the server is still fine
    ok = await raw(origin.port, get(MASTER))
    assert ok.status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "PROPFIND"])
async def test_unsupported_methods_get_405_with_allow(origin: Origin, method: str) -> None:
    r = await raw(origin.port, get(MASTER, method))
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD, OPTIONS"
    assert method.encode() in r.body
    r = await raw(origin.port, get("/metrics", method))
    assert r.status == 405


async def test_request_body_is_not_needed_for_405(origin: Origin) -> None:
    r = await raw(origin.port, b"POST /tracks/t1/master.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                               b"Connection: close\r\n\r\nhello")
    assert r.status == 405


# ------------------------------------------------------------ metrics, health


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_requests_bytes_and_latency(origin: Origin, session: aiohttp.ClientSession) -> None:
    async def scrape() -> str:
        async with session.get(origin.url + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert resp.headers["Cache-Control"] == "no-store"
            return await resp.text()

    before = await scrape()
    for _ in range(3):
        async with session.get(origin.url + SEG_PATH) as resp:
            await resp.read()
    async with session.get(origin.url + "/tracks/nope/master.m3u8") as resp:
        await resp.read()
    await raw(origin.port, get("/tracks/../x"))
    after = await scrape()
    seg = {"node": "origin", "kind": "segment"}
    assert sample(after, "legato_http_requests_total", **seg, status="200") - \
        sample(before, "legato_http_requests_total", **seg, status="200") == 3
    assert sample(after, "legato_http_response_bytes_total", **seg) - \
        sample(before, "legato_http_response_bytes_total", **seg) >= 3 * len(SEG)
    assert sample(after, "legato_http_request_duration_seconds_count", **seg) - \
        sample(before, "legato_http_request_duration_seconds_count", **seg) == 3
    assert sample(after, "legato_http_requests_total", node="origin", kind="master", status="404") >= 1
    assert sample(after, "legato_http_requests_total", node="origin", kind="unrouted", status="400") >= 1


async def test_healthz(origin: Origin, session: aiohttp.ClientSession) -> None:
    async with session.get(origin.url + "/healthz") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        doc = json.loads(await resp.read())
    assert doc["status"] == "ok" and doc["version"]
    assert doc["store"] == {"path": str(origin.store), "readable": True}
    origin.store.rename(origin.store.with_name("gone"))
    async with session.get(origin.url + "/healthz") as resp:
        assert resp.status == 503
        assert json.loads(await resp.read())["store"]["readable"] is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_unreadable_file_is_a_logged_500_not_a_crash(origin: Origin, session: aiohttp.ClientSession) -> None:
    path = origin.store / f"tracks/{TRACK}/aac-96k/init.mp4"
    path.chmod(0)
    async with session.get(origin.url + f"/tracks/{TRACK}/aac-96k/init.mp4") as resp:
        assert resp.status == 500
        assert "cannot read" in await resp.text()
    async with session.get(origin.url + MASTER) as resp:
        assert resp.status == 200
