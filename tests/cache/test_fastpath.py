"""cache.fastpath over real sockets on 127.0.0.1.

The node runs in a background thread with its own event loop (so the tests can
use plain blocking sockets, byte-exact requests and slow readers without
blocking the server).  Every test runs four ways, like aiohttp's
test_web_sendfile_functional.py: sendfile and the ``LEGATO_NO_SENDFILE=1``
fallback, each on uvloop and on the stock asyncio loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from aiohttp import web

from cache import fastpath
from cache.fastpath import FastPathMetrics, FastPathServer, serve
from cache.respond import Cached

SIZE = 240 * 1024
DATA = os.urandom(SIZE)
ETAG = '"seg-etag-1"'
STORED = (("Content-Type", "audio/mp4"), ("ETag", ETAG), ("Cache-Control", "public, max-age=31536000, immutable"),
          ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Date", "Mon, 01 Jan 2024 00:01:00 GMT"),
          ("Via", "1.1 regional-a"), ("Connection", "keep-alive"), ("Access-Control-Allow-Origin", "https://x"))
CACHED = Cached.from_stored(200, STORED, SIZE, 1704067260.0)


# --------------------------------------------------------------------------
# The node under test


class FileHit:
    """A file-backed hit, as the store gives: an open fd closed by close()."""

    renewable = False

    def __init__(self, path: str, opened: set[FileHit]) -> None:
        self.cached = CACHED
        self.age = 7
        self.size = SIZE
        self.body: bytes | None = None
        self._fd = os.open(path, os.O_RDONLY)
        self._opened = opened
        opened.add(self)

    def count(self, status: int, sent: int) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)
        self._opened.remove(self)


class HotHit(FileHit):
    """A renewable file hit: ``renew`` answers ``switch["valid"]`` and is counted in ``switch["renewals"]``."""

    renewable = True

    def __init__(self, path: str, opened: set[FileHit], switch: dict[str, Any]) -> None:
        super().__init__(path, opened)
        self._switch = switch

    def renew(self, now: float) -> bool:
        self._switch["renewals"] += 1
        return bool(self._switch["valid"])


class RamHit:
    renewable = False

    def __init__(self) -> None:
        self.cached = CACHED
        self.age = 7
        self.size = SIZE
        self.body: bytes | None = DATA

    def count(self, status: int, sent: int) -> None:
        pass

    def fileno(self) -> int:
        raise OSError("RAM hit")

    def close(self) -> None:
        pass


@dataclass
class Node:
    """A fast-path server and a tiny aiohttp app, running in a thread."""

    port: int
    server: FastPathServer
    loop: asyncio.AbstractEventLoop
    opened: set[FileHit]
    app_requests: list[str] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    hot: dict[str, Any] = field(default_factory=lambda: {"valid": True, "renewals": 0})

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result."""
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def totals(self) -> FastPathMetrics:
        self.call(self.server.metrics.flush)
        return self.server.metrics


def make_app(requests: list[str]) -> web.Application:
    """The aiohttp side: 404 for everything, echo for POST."""

    async def handle(request: web.Request) -> web.Response:
        requests.append(f"{request.method} {request.raw_path}")
        if request.method == "POST":
            return web.Response(body=b"echo:" + await request.read())
        return web.Response(status=404, text=f"app: no {request.raw_path}\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture(params=["sendfile", "no-sendfile"])
def sendfile_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with os.sendfile, and with the LEGATO_NO_SENDFILE=1 kill switch."""
    if request.param == "no-sendfile":
        monkeypatch.setenv("LEGATO_NO_SENDFILE", "1")
    else:
        monkeypatch.delenv("LEGATO_NO_SENDFILE", raising=False)
    return str(request.param)


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start_node(tmp_path: Any, loop_kind: str, sndbuf: int | None = None, **options: Any) -> Iterator[Node]:
    """Start a node in a thread; ``sndbuf`` shrinks the send buffer of accepted sockets."""
    path = tmp_path / "segment.m4s"
    path.write_bytes(DATA)
    short = tmp_path / "short.m4s"
    short.write_bytes(DATA[:1000])
    opened: set[FileHit] = set()
    requests: list[str] = []
    lookups: list[str] = []
    hot = {"valid": True, "renewals": 0}

    def lookup(target: str, headers: Sequence[tuple[str, str]], now: float) -> Any:
        lookups.append(target)
        if target.startswith("/hot"):
            return HotHit(str(path), opened, hot)
        if target.startswith("/seg"):
            return FileHit(str(path), opened)
        if target.startswith("/ram"):
            return RamHit()
        if target.startswith("/short"):
            return FileHit(str(short), opened)  # the store says SIZE bytes; the file has fewer
        if target.startswith("/boom"):
            raise RuntimeError("lookup bug")
        return None

    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    started: concurrent.futures.Future[Node] = concurrent.futures.Future()
    stop = threading.Event()

    async def main() -> None:
        runner = web.AppRunner(make_app(requests), handle_signals=False)
        await runner.setup()
        sock = socket.socket()
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # inherited by accepted sockets
        sock.bind(("127.0.0.1", 0))
        server = await serve(sock, runner, lookup, "edge-test", **options)
        started.set_result(Node(sock.getsockname()[1], server, loop, opened, requests, lookups, hot))
        while not stop.is_set():
            await asyncio.sleep(0.01)
        await server.shutdown(1.0)
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield started.result(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=10)
        loop.close()


@contextlib.contextmanager
def clocked_node(tmp_path: Any, loop_kind: str, **options: Any) -> Iterator[tuple[Node, list[float]]]:
    """A node on a clock the test moves (``clock[0]``); at the end it shuts down, every hit closed."""
    clock = [1_800_000_000.25]
    gen = start_node(tmp_path, loop_kind, clock=lambda: clock[0], **options)
    n = next(gen)
    yield n, clock
    with pytest.raises(StopIteration):
        next(gen)
    assert not n.opened  # shutdown closes what hot replies held


@pytest.fixture
def node(tmp_path: Any, loop_kind: str, sendfile_mode: str) -> Iterator[Node]:
    yield from start_node(tmp_path, loop_kind)


@pytest.fixture
def small_buffer_node(tmp_path: Any, loop_kind: str, sendfile_mode: str) -> Iterator[Node]:
    """A node whose sockets take 4 KiB at a time: every body is sent in pieces."""
    yield from start_node(tmp_path, loop_kind, sndbuf=4096)


# --------------------------------------------------------------------------
# A byte-exact client


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes


class Client:
    """A blocking HTTP/1.1 client over one socket, reading responses by hand."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, size: int = 65536) -> None:
        chunk = self.sock.recv(size)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def response(self, *, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        length = 0 if head or status == 304 else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status, headers, body, raw_head)

    def get(self, path: str, *extra: str, method: str = "GET") -> Response:
        self.send(request(path, *extra, method=method))
        return self.response(head=method == "HEAD")

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (nothing more arrives)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def request(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def client(node: Node) -> Iterator[Client]:
    c = Client(node.port)
    yield c
    c.close()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# --------------------------------------------------------------------------
# Hits


def test_whole_object(node: Node, client: Client) -> None:
    r = client.get("/seg-1")
    assert r.status == 200
    assert r.body == DATA
    h = r.headers
    assert h["content-length"] == str(SIZE)
    assert h["accept-ranges"] == "bytes"
    assert h["x-cache"] == "HIT"
    assert h["via"] == "1.1 regional-a, 1.1 edge-test"
    assert h["age"] == "7"
    assert h["etag"] == ETAG
    assert h["content-type"] == "audio/mp4"
    assert h["access-control-allow-origin"] == "*"  # this node's CORS, not the stored one
    assert "connection" not in h and "date" in h
    assert wait_until(lambda: not node.opened)


@pytest.mark.parametrize(("spec", "first", "last"), [
    ("bytes=0-0", 0, 0),  # first byte
    ("bytes=-500", SIZE - 500, SIZE - 1),  # suffix
    ("bytes=1000-1999", 1000, 1999),  # middle
    ("bytes=200000-", 200000, SIZE - 1),  # open-ended
])
def test_ranges(client: Client, spec: str, first: int, last: int) -> None:
    r = client.get("/seg-1", f"Range: {spec}")
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.body == DATA[first:last + 1]


def test_unsatisfiable_range_keeps_the_connection(client: Client) -> None:
    r = client.get("/seg-1", f"Range: bytes={SIZE}-")
    assert r.status == 416
    assert r.headers["content-range"] == f"bytes */{SIZE}"
    assert r.body.startswith(b"416 ")
    assert client.get("/seg-1", "Range: bytes=0-9").body == DATA[:10]


def test_head(client: Client) -> None:
    r = client.get("/seg-1", method="HEAD")
    assert r.status == 200
    assert r.headers["content-length"] == str(SIZE)
    assert r.body == b""
    # no body bytes were sent: the next response starts right here
    assert client.get("/seg-1", "Range: bytes=5-9").body == DATA[5:10]


def test_if_none_match_304(client: Client) -> None:
    r = client.get("/seg-1", f"If-None-Match: {ETAG}")
    assert r.status == 304
    assert r.headers["etag"] == ETAG
    assert "content-length" not in r.headers
    assert client.get("/seg-1").body == DATA


def test_ram_hit(client: Client) -> None:
    assert client.get("/ram-1").body == DATA
    assert client.get("/ram-1", "Range: bytes=-3").body == DATA[-3:]


def test_a_plain_request_again_within_its_second_is_renewed_not_looked_up(
        tmp_path: Any, loop_kind: str, sendfile_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "SWEEP_INTERVAL", 0.02)
    with clocked_node(tmp_path, loop_kind) as (n, clock):
        c = Client(n.port)
        first, second = c.get("/hot-1"), c.get("/hot-1")
        assert first.body == second.body == DATA and first.raw_head == second.raw_head
        assert n.lookups == ["/hot-1"] and n.hot["renewals"] == 1
        assert len(n.opened) == 1  # the hot reply holds its hit
        # a reply that would differ is looked up: a range, a conditional, an Origin, HEAD, Connection: close
        assert c.get("/hot-1", "Range: bytes=0-9").body == DATA[:10]
        assert c.get("/hot-1", f"If-None-Match: {ETAG}").status == 304
        assert c.get("/hot-1", "Origin: https://a.example").body == DATA
        assert c.get("/hot-1", method="HEAD").body == b""
        assert c.get("/hot-1", "Origin: https://a.example").body == DATA  # its own hot reply now
        assert len(n.lookups) == 5 and n.hot["renewals"] == 2
        clock[0] += 1  # another second: Date and Age are the lookup's again
        third = c.get("/hot-1")
        assert third.body == DATA and third.headers["date"] != first.headers["date"]
        assert len(n.lookups) == 6
        n.hot["valid"] = False  # e.g. purged in another worker
        assert c.get("/hot-1").body == DATA
        assert len(n.lookups) == 7 and n.hot["renewals"] == 3
        closing = Client(n.port)
        assert closing.get("/hot-1", "Connection: close").body == DATA and closing.at_eof()
        closing.close()
        assert len(n.lookups) == 8
        clock[0] += 1
        assert wait_until(lambda: not n.opened)  # the sweep drops the replies of past seconds, closing their hits
        n.hot["valid"] = True
        assert c.get("/hot-1").body == DATA and c.get("/hot-1").body == DATA
        assert len(n.lookups) == 9 and len(n.opened) == 1
        c.close()


def test_hot_replies_are_bounded_and_a_new_second_makes_room(
        tmp_path: Any, loop_kind: str, sendfile_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "HOT_REPLIES", 2)
    with clocked_node(tmp_path, loop_kind) as (n, clock):
        c = Client(n.port)
        for target in ("/hot-1", "/hot-2", "/hot-3", "/hot-3", "/hot-1"):
            assert c.get(target).body == DATA
        assert n.lookups == ["/hot-1", "/hot-2", "/hot-3", "/hot-3"]  # full: /hot-3 is not kept
        assert len(n.opened) == 2
        clock[0] += 1
        for target in ("/hot-3", "/hot-3"):
            assert c.get(target).body == DATA
        assert n.lookups[4:] == ["/hot-3"]  # last second's replies made room
        assert len(n.opened) == 1
        c.close()


def test_a_hot_reply_dropped_mid_send_keeps_its_file_until_that_send_ends(
        tmp_path: Any, loop_kind: str, sendfile_mode: str) -> None:
    with clocked_node(tmp_path, loop_kind, sndbuf=4096) as (n, clock):
        slow = Client(n.port, rcvbuf=4096)
        slow.send(request("/hot-1"))  # stalls on the small buffers with most of the body unsent
        assert wait_until(lambda: len(n.lookups) == 1)
        clock[0] += 1
        fast = Client(n.port)
        assert fast.get("/hot-1").body == DATA  # a new second: the old reply is dropped, its send goes on
        assert len(n.lookups) == 2
        assert len(n.opened) == (2 if sendfile_mode == "sendfile" else 1)  # without sendfile, read out at once
        assert slow.response().body == DATA
        assert wait_until(lambda: len(n.opened) == 1)  # closed once its last send ended
        slow.close()
        fast.close()


def test_keep_alive_100_requests(node: Node, client: Client) -> None:
    for i in range(100):
        first = (i * 997) % SIZE
        r = client.get("/seg-1", f"Range: bytes={first}-{first + 99}")
        assert r.status == 206
        assert r.body == DATA[first:first + 100]
    assert node.call(lambda: node.server.connections) == 1
    assert wait_until(lambda: not node.opened)


def test_pipelined(client: Client) -> None:
    client.send(request("/seg-1", "Range: bytes=0-99") + request("/seg-1", method="HEAD")
                + request("/seg-1") + request("/ram-1", "Range: bytes=10-19")
                + request("/seg-1", f"If-None-Match: {ETAG}") + request("/seg-1", "Range: bytes=-1"))
    assert client.response().body == DATA[:100]
    assert client.response(head=True).headers["content-length"] == str(SIZE)
    assert client.response().body == DATA
    assert client.response().body == DATA[10:20]
    assert client.response().status == 304
    assert client.response().body == DATA[-1:]


def test_http10_and_connection_close(node: Node) -> None:
    c = Client(node.port)
    c.send(request("/seg-1", "Connection: keep-alive", version="1.0"))
    r = c.response()
    assert r.body == DATA and r.headers["connection"] == "keep-alive"
    c.send(request("/seg-1", "Range: bytes=0-0", version="1.0"))
    r = c.response()
    assert r.headers["connection"] == "close" and r.body == DATA[:1]
    assert c.at_eof()
    c.close()
    c = Client(node.port)
    r = c.get("/seg-1", "Connection: close")
    assert r.body == DATA and r.headers["connection"] == "close"
    assert c.at_eof()
    c.close()


def test_half_closed_client_gets_its_answers(node: Node) -> None:
    c = Client(node.port)
    c.send(request("/seg-1", "Range: bytes=0-4") + request("/seg-1", "Range: bytes=5-9"))
    c.sock.shutdown(socket.SHUT_WR)
    assert c.response().body == DATA[0:5]
    assert c.response().body == DATA[5:10]
    assert c.at_eof()
    c.close()


# --------------------------------------------------------------------------
# Slow and vanishing clients


def test_slow_reader_partial_sends(small_buffer_node: Node) -> None:
    """Small buffers on both sides, read in small sips: the server sends in many pieces."""
    node = small_buffer_node
    c = Client(node.port, rcvbuf=4096)
    c.send(request("/seg-1") + request("/seg-1", "Range: bytes=100-199"))
    time.sleep(0.2)  # let the server fill the socket and hit EAGAIN / pause
    while len(c.buf) < SIZE // 2:
        c._fill(2048)
        time.sleep(0.0005)
    first = c.response()
    assert first.status == 200 and first.body == DATA
    assert c.response().body == DATA[100:200]
    assert node.totals().send_waits > 0  # EAGAIN (sendfile) or pause_writing (fallback)
    c.close()


def test_client_disconnects_mid_body(small_buffer_node: Node) -> None:
    node = small_buffer_node
    before = fd_count()
    for _ in range(5):
        c = Client(node.port, rcvbuf=4096)
        c.send(request("/seg-1"))
        c._fill(1024)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        c.close()
    # the server survives and serves others
    c = Client(node.port)
    assert c.get("/seg-1").body == DATA
    c.close()
    assert wait_until(lambda: not node.opened and node.call(lambda: node.server.connections) == 0)
    assert wait_until(lambda: fd_count() <= before)


def test_truncated_store_file_drops_the_connection(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """Never a short body under a full Content-Length: the connection is cut instead."""
    c = Client(node.port)
    c.send(request("/short"))
    with pytest.raises((EOFError, ConnectionResetError)):
        c.response()
    assert len(c.buf) < SIZE
    c.close()
    assert wait_until(lambda: not node.opened)
    c = Client(node.port)
    assert c.get("/seg-1", "Range: bytes=0-0").body == DATA[:1]
    c.close()
    assert "shorter than its size" in caplog.text


# --------------------------------------------------------------------------
# Bad request heads


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /seg-1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
    (b"GET /seg-1 HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"Host: x\r\n\r\n", 431),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    (b"GET /seg-1\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"GET /seg-1 HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /seg-1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /seg-1 HTTP/1.1\r\n\r\n", 400),
    (b"GET /seg-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
])
def test_bad_heads(node: Node, raw: bytes, status: int) -> None:
    c = Client(node.port)
    try:
        c.send(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before reading everything
    r = c.response()
    assert r.status == status
    assert r.headers["connection"] == "close"
    assert c.at_eof()
    c.close()
    assert node.app_requests == []


def test_bad_head_after_good_requests(client: Client) -> None:
    client.send(request("/seg-1", "Range: bytes=0-0") + b"BAD\x00 REQUEST\r\n\r\n")
    assert client.response().body == DATA[:1]
    assert client.response().status == 400
    assert client.at_eof()


# --------------------------------------------------------------------------
# Hand-off to aiohttp


def test_miss_is_handed_off_and_the_connection_stays_with_aiohttp(node: Node, client: Client) -> None:
    assert client.get("/seg-1", "Range: bytes=0-9").body == DATA[:10]  # fast path first
    r = client.get("/missing")
    assert r.status == 404 and r.body == b"app: no /missing\n"
    # further requests on the connection are aiohttp's, hits included
    r = client.get("/seg-1")
    assert r.status == 404 and "x-cache" not in r.headers
    assert node.app_requests == ["GET /missing", "GET /seg-1"]
    assert node.totals().handoffs == 1


def test_pipelined_hand_off_keeps_order(node: Node, client: Client) -> None:
    client.send(request("/seg-1", "Range: bytes=0-9") + request("/nothing") + request("/seg-2"))
    assert client.response().body == DATA[:10]
    assert client.response().body == b"app: no /nothing\n"
    assert client.response().body == b"app: no /seg-2\n"


def test_request_with_body_is_handed_off(node: Node, client: Client) -> None:
    client.send(b"POST /seg-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert client.response().body == b"echo:hello"
    client.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert client.response().body == b"echo:abc"


def test_other_methods_and_failing_lookups_are_handed_off(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    c = Client(node.port)
    assert c.get("/seg-1", method="DELETE").status == 404
    c.close()
    c = Client(node.port)
    assert c.get("/boom").body == b"app: no /boom\n"
    c.close()
    assert "lookup failed" in caplog.text


# --------------------------------------------------------------------------
# Metrics, timeouts, shutdown


def test_metrics_count_hits_bytes_and_handoffs(node: Node, client: Client) -> None:
    client.get("/seg-1")
    client.get("/seg-1", "Range: bytes=0-0")
    client.get("/seg-1", f"If-None-Match: {ETAG}")
    client.get("/elsewhere")
    m = node.totals()
    assert m.responses == 3
    assert m.bytes > SIZE + 1
    assert m.handoffs == 1
    from prometheus_client import generate_latest
    text = generate_latest(m.registry).decode()
    assert 'legato_fastpath_responses_total{node="edge-test",status="206"} 1.0' in text
    assert 'legato_fastpath_handoffs_total{node="edge-test",reason="miss"} 1.0' in text


def test_idle_connections_are_closed(tmp_path: Any, loop_kind: str, sendfile_mode: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "SWEEP_INTERVAL", 0.02)
    for n in start_node(tmp_path, loop_kind, keepalive_timeout=0.2, head_timeout=0.2):
        idle = Client(n.port)
        assert idle.get("/seg-1", "Range: bytes=0-0").status == 206
        partial = Client(n.port)
        partial.send(b"GET /seg-1 HTTP/1.1\r\nHo")
        assert idle.at_eof(timeout=5) and partial.at_eof(timeout=5)
        idle.close()
        partial.close()


def test_shutdown_closes_idle_connections(tmp_path: Any, loop_kind: str, sendfile_mode: str) -> None:
    gen = start_node(tmp_path, loop_kind)
    n = next(gen)
    c = Client(n.port)
    assert c.get("/seg-1", "Range: bytes=0-0").status == 206
    with pytest.raises(StopIteration):
        next(gen)  # shutdown, then cleanup
    assert c.at_eof(timeout=5)
    c.close()
