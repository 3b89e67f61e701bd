"""The hot-hit serving path: an asyncio.Protocol that answers cache hits itself.

A cache node's listening socket belongs to this module.  Every connection
starts here; ``cache.h1`` parses the request heads; a GET or HEAD that the
node's ``lookup`` can answer from its store (a *hit*) is shaped by
``cache.respond`` and sent from this protocol directly: the head with
``sendmsg``, the body with ``os.sendfile`` from the stored file to the
socket.  Anything else (a miss, another method, a request with a body,
``/metrics``, ``/healthz``...) is *handed off*: an aiohttp protocol is made
from the node's ``web.AppRunner`` (``runner.server()``), the transport is
given to it with everything received so far, and the connection stays with
aiohttp from then on.  aiohttp remains the full HTTP server; this is a
shortcut in front of it, taken per connection until the first request it
will not take.

Why: on uvloop, ``loop.sendfile`` is not implemented and aiohttp's
FileResponse falls back to thread-pool reads (measured at ~15x nginx's CPU
per request); serving from RAM through an aiohttp handler costs ~4-5x.  A
bare protocol with ``os.sendfile`` costs close to nginx.  See
``bench/serve_vs_nginx.py`` and its committed results.

Sending (``LEGATO_NO_SENDFILE`` unset, the default):

* Bytes go straight to the socket with system calls, never through the
  transport's buffer, so there is never anything queued in the transport
  to overtake (checked: if ``transport.get_write_buffer_size()`` is ever
  non-zero, sending waits for it to drain first).  The head goes with
  ``sendmsg(..., MSG_MORE)`` when a file body follows, so head and the first
  body bytes share a packet.
* A partial send or EAGAIN leaves the rest pending and waits for
  writability with ``loop.add_writer`` on a ``dup`` of the socket's fd (both
  uvloop and asyncio refuse ``add_writer`` on a transport's own fd); the dup
  is made once per connection, lazily, and closed when the connection closes
  or is handed off.
* ``LEGATO_NO_SENDFILE=1`` (or ``serve(..., sendfile=False)``): the kill
  switch.  Bodies are read with ``os.pread`` and written with
  ``transport.write``, with the transport's own flow control
  (``pause_writing``/``resume_writing``).

Hot replies: a hit the lookup marks ``renewable`` (its verdict holds for
the rest of the second whatever the request says), found for a *plain*
request (no field ``cache.respond`` reads but Origin: no conditional, no
Range), is kept with its shaped reply and serialised head until the second
ends.  The same request again in that second (same target, method,
persistence, HTTP version and Origin) is answered from it once the hit's
``renew`` vouches for it, without ``lookup`` or ``respond``.  A kept hit
closes when its reply is dropped (a later second, a failed ``renew``, the
once-a-second sweep, shutdown) and no send still uses it.

Connection handling: keep-alive per RFC 9112 §9.3 (decided by ``cache.h1``),
pipelining (requests are answered strictly in order, one at a time; reading
pauses if a client pipelines more than ``PIPELINE_BUFFER`` bytes ahead), a
half-closed client gets its pending answers before the close, a broken
client is dropped without disturbing the others.  Idle connections are closed
after ``keepalive_timeout``, incomplete heads after ``head_timeout``, stalled
sends after ``send_timeout``, by one periodic sweep (no timer per request).

Observation: the per-request work is two integer additions.  A timer
flushes them into prometheus-client counters once a second
(``FastPathMetrics``): ``legato_fastpath_responses_total{node,status}``,
``legato_fastpath_bytes_total{node}``,
``legato_fastpath_handoffs_total{node,reason}`` (reason: miss, method, body,
error) and ``legato_fastpath_send_waits_total{node}`` (sends that waited for
a slow reader).  No access log line is
written per fast-path request by default; ``access_sample=N`` feeds one
request in N to the given access observers (``legato.logs.AccessRecord``).

Integration (the node layer): build the aiohttp app and ``AppRunner``,
``await runner.setup()``, then ``await serve(sock, runner, lookup, node)``
instead of starting a ``web.SockSite``; on shutdown ``await
server.shutdown(timeout)`` then ``await runner.cleanup()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol, cast

from cache.h1 import DEFAULT_LIMITS, H1Error, HeadReader, Limits, RequestHead
from cache.respond import Cached, Reply, plain_origin, respond
from legato import http as h
from legato.logs import AccessRecord, Observer

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

__all__ = ["NO_SENDFILE_ENV", "FastPathMetrics", "FastPathServer", "Hit", "Lookup", "sendfile_enabled", "serve"]

log = logging.getLogger("legato.fastpath")

NO_SENDFILE_ENV = "LEGATO_NO_SENDFILE"
"""Set to 1 to send bodies with pread + transport.write instead of os.sendfile."""

PIPELINE_BUFFER = 64 * 1024
"""Pause reading when a client is this many bytes of requests ahead of us."""

READ_CHUNK = 256 * 1024
"""pread size in the no-sendfile fallback (a whole segment, usually)."""

HEAD_CACHE = 1024
"""Serialised 200 heads kept (one per hot object and second; see ``_head``)."""

HOT_REPLIES = 256
"""Hot replies kept (each holds its hit, so an open file, for at most a second; see ``_HotReply``)."""

SWEEP_INTERVAL = 1.0
"""Seconds between metric flushes; idle checks run every few sweeps."""


class Hit(Protocol):
    """What ``lookup`` returns for a servable object.

    ``cached`` shapes the reply (``cache.respond.Cached``); ``age`` is the
    response's current age in seconds (RFC 9111 §4.2.3); ``size`` the body
    length.  The body is ``body`` (bytes, a RAM hit) or, when ``body`` is
    None, the file ``fileno()`` from offset 0 to ``size``.  ``close()`` is
    called exactly once, when the response is sent or abandoned (a hit kept
    as a hot reply: once the reply is dropped and its last send is done),
    and the file must stay open and unchanged until then.
    """

    @property
    def cached(self) -> Cached: ...

    @property
    def age(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def body(self) -> bytes | None: ...

    @property
    def renewable(self) -> bool: ...

    def renew(self, now: float) -> bool:
        """Whether this hit may be sent again, as it is, at ``now`` (within the second it was found in).

        True counts as a new hit of the object for the eviction policy.  The
        fast path keeps ``renewable`` hits of plain requests open for the rest
        of their second and asks ``renew`` instead of ``lookup`` for the same
        request again (see ``FastPathProtocol._serve``).  A hit that is not
        ``renewable`` is never asked.
        """
        ...

    def count(self, status: int, sent: int) -> None:
        """The reply to this request (its status, body bytes) is going out: count it."""
        ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


Lookup = Callable[[str, Sequence[tuple[str, str]], float], "Hit | None"]
"""``lookup(target, headers, now)``: a fresh hit to serve, or None to hand off.

``target`` is the raw request-target as received (query included),
``headers`` the request's field lines (names lower-cased), ``now`` Unix
time.  It must not block: a lookup that would need I/O beyond opening a local
file returns None and lets the aiohttp path do the work.  Stale entries,
requests that need gating (tokens, geo) or revalidation are None too.
"""


def sendfile_enabled() -> bool:
    """False when the kill switch ``LEGATO_NO_SENDFILE`` is set (to anything but 0)."""
    return os.environ.get(NO_SENDFILE_ENV, "") in ("", "0") and hasattr(os, "sendfile")


# --------------------------------------------------------------------------
# Metrics


class FastPathMetrics:
    """Fast-path counters: plain integers per request, flushed to prometheus.

    Create one per process with the node's registry (the one its /metrics
    renders; ignored in multiprocess mode, where prometheus-client writes
    files).  prometheus_client is imported here, not at module import, for
    the reason given in ``legato.logs``.
    """

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.node = node
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._responses = Counter("legato_fastpath_responses", "Responses sent by the fast path, by status",
                                  ("node", "status"), registry=self.registry)
        self._bytes = Counter("legato_fastpath_bytes", "Bytes sent by the fast path (heads and bodies)",
                              ("node",), registry=self.registry).labels(node)
        self._handoffs = Counter("legato_fastpath_handoffs", "Connections handed to aiohttp, by reason",
                                 ("node", "reason"), registry=self.registry)
        self._waits = Counter("legato_fastpath_send_waits", "Times a send waited for the client to read",
                              ("node",), registry=self.registry).labels(node)
        self.pending_waits = 0
        self.pending_status: dict[int, int] = {}
        self.pending_bytes = 0
        self.pending_handoffs: dict[str, int] = {}
        # totals since start, for tests and benchmarks (never reset)
        self.responses = 0
        self.bytes = 0
        self.handoffs = 0
        self.send_waits = 0

    def response(self, status: int, sent: int) -> None:
        """Count one response (the per-request cost: a dict update, two adds)."""
        pending = self.pending_status
        pending[status] = pending.get(status, 0) + 1
        self.pending_bytes += sent

    def handoff(self, reason: str) -> None:
        self.pending_handoffs[reason] = self.pending_handoffs.get(reason, 0) + 1

    def flush(self) -> None:
        """Move the pending counts into the prometheus counters."""
        status, self.pending_status = self.pending_status, {}
        handoffs, self.pending_handoffs = self.pending_handoffs, {}
        sent, self.pending_bytes = self.pending_bytes, 0
        waits, self.pending_waits = self.pending_waits, 0
        if waits:
            self._waits.inc(waits)
            self.send_waits += waits
        for code, n in status.items():
            self._responses.labels(self.node, str(code)).inc(n)
            self.responses += n
        for reason, n in handoffs.items():
            self._handoffs.labels(self.node, reason).inc(n)
            self.handoffs += n
        if sent:
            self._bytes.inc(sent)
            self.bytes += sent


# --------------------------------------------------------------------------
# Serialising heads


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}


def head_bytes(status: int, headers: Sequence[tuple[str, str]], keep_alive: bool, http_version: str) -> bytes:
    """A response head (RFC 9112 §4, §5) with the persistence field (§9.3, §9.6).

    HTTP/1.1 clients are told ``Connection: close`` when the connection
    ends; HTTP/1.0 clients that asked for keep-alive get it confirmed.
    Values are encoded back the way aiohttp decoded them (UTF-8 with
    surrogateescape), which round-trips any received bytes.
    """
    if not keep_alive:
        tail = "\r\nConnection: close\r\n\r\n"
    elif http_version == "1.0":
        tail = "\r\nConnection: keep-alive\r\n\r\n"
    else:
        tail = "\r\n\r\n"
    text = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"
    if not headers:
        return (text + tail[2:]).encode()
    return (text + "\r\n".join(map(": ".join, headers)) + tail).encode("utf-8", "surrogateescape")


def error_head(status: int, reason: str, now: float) -> tuple[bytes, bytes]:
    """Head and body of a plain-text error sent before closing (bad request heads)."""
    phrase = HTTPStatus(status).phrase if status in _STATUS_LINES else "Error"
    body = f"{status} {phrase}: {reason}\n".encode()
    fields = [("Date", h.http_date(now)), ("Content-Type", "text/plain; charset=utf-8"),
              ("Cache-Control", "no-store"), ("Content-Length", str(len(body)))]
    return head_bytes(status, fields, False, "1.1"), body


# --------------------------------------------------------------------------
# Per-server context


@dataclass(eq=False)
class _Context:
    """What every connection of one server shares."""

    loop: asyncio.AbstractEventLoop
    lookup: Lookup
    runner: web.AppRunner
    node: str
    cors_origins: tuple[str, ...]
    use_sendfile: bool
    metrics: FastPathMetrics
    limits: Limits
    keepalive_timeout: float
    head_timeout: float
    send_timeout: float
    observers: tuple[Observer, ...]
    access_sample: int
    clock: Callable[[], float]
    conns: set[FastPathProtocol] = field(default_factory=set)
    heads: dict[tuple[int, bool, str], tuple[Reply, bytes]] = field(default_factory=dict)
    hot: dict[tuple[str, str, bool, str, str | None], _HotReply] = field(default_factory=dict)
    sample_count: int = 0

    def room_for_hot(self, second: int) -> bool:
        """Whether another hot reply fits; full of past seconds' replies, they go (the oldest is first)."""
        if len(self.hot) < HOT_REPLIES:
            return True
        if next(iter(self.hot.values())).second >= second:
            return False
        self.drop_hot(second)
        return len(self.hot) < HOT_REPLIES

    def drop_hot(self, second: int | None = None) -> None:
        """Forget the hot replies of seconds before ``second`` (all of them by default)."""
        for key, hot in list(self.hot.items()):
            if second is None or hot.second < second:
                del self.hot[key]
                hot.drop()


class _HotReply:
    """A renewable hit with its shaped reply, sent again for the same plain request within its second.

    The key is everything the reply depends on besides the object and the
    second: target, method, persistence, HTTP version and Origin.  Only
    requests with no other field ``respond`` reads qualify (no conditional,
    no Range), so the reply is ``respond``'s own plain 200.  Each send is a
    *use* of it (it stands in for the hit while the response goes out); the
    hit closes once the reply is dropped and no send uses it.
    """

    __slots__ = ("body", "dropped", "fd", "head", "hit", "reply", "second", "users")

    def __init__(self, hit: Hit, reply: Reply, head: bytes, second: int) -> None:
        self.hit, self.reply, self.head, self.second = hit, reply, head, second
        self.body = hit.body
        self.fd = hit.fileno() if hit.body is None else -1
        self.users = 0
        self.dropped = False

    def use(self) -> _HotReply:
        self.users += 1
        return self

    def count(self, status: int, sent: int) -> None:
        self.hit.count(status, sent)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """One send is done with it."""
        self.users -= 1
        if self.dropped and not self.users:
            self.hit.close()

    def drop(self) -> None:
        """No more sends: close the hit now, or when the last send in progress is done."""
        if not self.dropped:
            self.dropped = True
            if not self.users:
                self.hit.close()


# --------------------------------------------------------------------------
# The protocol

_IDLE, _SENDING, _GONE = 0, 1, 2


class FastPathProtocol(asyncio.Protocol):
    """One client connection, until it is closed or handed to aiohttp.

    States: idle (reading heads), sending (a response is partly out:
    ``_chunks`` then the file segment ``_file_fd``/``_offset``/``_left``),
    gone (closed or handed off).  Requests are answered strictly in order;
    the next buffered head is parsed only when the previous response is out.
    """

    def __init__(self, ctx: _Context) -> None:
        self._ctx = ctx
        self._reader = HeadReader(ctx.limits)
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        self._family = socket.AF_INET
        self._sock: socket.socket | None = None  # dup of the transport's socket, made lazily
        self._writing = False  # add_writer registered on the dup
        self._state = _IDLE
        self._hit: Hit | _HotReply | None = None
        self._chunks: list[bytes | memoryview] = []
        self._file_fd = -1
        self._offset = 0
        self._left = 0
        self._sent = 0
        self._keep_alive = True
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self._last = 0.0
        self._status = 0
        self._sample: tuple[float, RequestHead, int] | None = None

    # -- asyncio callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport = transport
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno()
        self._family = sock.family
        self._last = time.monotonic()
        self._ctx.conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self._state == _GONE:
            return
        self._reader.feed(data)
        self._last = time.monotonic()
        if self._state == _IDLE and not self._write_paused:
            self._run()
        elif not self._read_paused and self._reader.buffered > PIPELINE_BUFFER:
            self._pause_reading()

    def eof_received(self) -> bool:
        """The client half-closed: answer what it sent, then close (keep the write side)."""
        self._eof = True
        if self._state == _IDLE and not self._write_paused:
            self._run()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._state = _GONE

    def pause_writing(self) -> None:
        self._write_paused = True
        self._ctx.metrics.pending_waits += 1

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last = time.monotonic()
        if self._state == _SENDING and not self._ctx.use_sendfile:
            if self._pump_transport():
                self._complete()
                self._run()
        elif self._state == _IDLE:
            self._run()

    # -- request loop -------------------------------------------------------

    def _run(self) -> None:
        """Answer buffered requests in order until one is still sending or none is left."""
        while self._state == _IDLE and not self._write_paused:
            try:
                head = self._reader.next_head()
            except H1Error as exc:
                self._fail(exc)
                return
            if head is None:
                break
            if not self._serve(head):
                return
        if self._state != _IDLE:
            return
        if self._eof and not self._reader.buffered:
            self._close()
        elif self._read_paused and self._reader.buffered <= PIPELINE_BUFFER:
            self._read_paused = False
            assert self._transport is not None
            self._transport.resume_reading()

    def _serve(self, head: RequestHead) -> bool:
        """Answer one request; False when the loop must stop (sending, handed off, closed).

        A plain request (no field ``respond`` reads but Origin) asked again
        within the second of a renewable hit gets that hit's reply again,
        after ``renew`` vouches for it: a hot object costs one ``lookup`` per
        second and key, not one per request (see ``_HotReply``).
        """
        ctx = self._ctx
        if head.method not in ("GET", "HEAD"):
            return self._hand_off(head, "method")
        if head.has_body:
            return self._hand_off(head, "body")
        now = ctx.clock()
        plain, origin = plain_origin(head.headers)
        hot_key = None
        if plain:
            hot_key = (head.target, head.method, head.keep_alive, head.http_version, origin)
            hot = ctx.hot.get(hot_key)
            if hot is not None:
                if hot.second == int(now) and hot.hit.renew(now):
                    return self._send(head, hot.use(), hot.reply, hot.head)
                del ctx.hot[hot_key]
                hot.drop()
        try:
            hit = ctx.lookup(head.target, head.headers, now)
        except Exception:
            log.exception("fast-path lookup failed for %.200s; handing off", head.target)
            hit = None
        if hit is None:
            return self._hand_off(head, "miss")
        try:
            reply = respond(hit.cached, head.method, head.headers, now, ctx.node, hit.age, ctx.cors_origins)
            head_data = self._head(reply, head)
        except Exception:
            log.exception("cannot shape a hit for %.200s; handing off", head.target)
            hit.close()
            return self._hand_off(head, "error")
        if hot_key is not None and reply.status == 200 and hit.renewable and ctx.room_for_hot(int(now)):
            hot = ctx.hot[hot_key] = _HotReply(hit, reply, head_data, int(now))
            return self._send(head, hot.use(), reply, head_data)
        return self._send(head, hit, reply, head_data)

    def _send(self, head: RequestHead, hit: Hit | _HotReply, reply: Reply, head_data: bytes) -> bool:
        """Start sending a shaped reply; False when the loop must stop (see ``_serve``)."""
        hit.count(reply.status, len(reply.body) or reply.length)
        if self._ctx.access_sample:
            self._maybe_sample(head, reply.status)
        self._keep_alive = head.keep_alive
        self._status = reply.status
        self._start(hit, reply, head_data)
        if self._pump():
            self._complete()
            return self._state == _IDLE
        return False

    def _head(self, reply: Reply, head: RequestHead) -> bytes:
        """The serialised head, reused while ``respond`` hands out the same reply."""
        if reply.status != 200:
            return head_bytes(reply.status, reply.headers, head.keep_alive, head.http_version)
        heads = self._ctx.heads
        key = (id(reply), head.keep_alive, head.http_version)
        entry = heads.get(key)
        if entry is not None and entry[0] is reply:  # the reference held makes id() safe
            return entry[1]
        data = head_bytes(200, reply.headers, head.keep_alive, head.http_version)
        if len(heads) >= HEAD_CACHE:
            heads.clear()
        heads[key] = (reply, data)
        return data

    def _start(self, hit: Hit | _HotReply, reply: Reply, head_data: bytes) -> None:
        """Queue one response: head, then inline bytes, RAM bytes or a file segment."""
        self._hit = hit
        self._state = _SENDING
        self._sent = 0
        chunks = self._chunks
        chunks.append(head_data)
        if reply.body:
            chunks.append(reply.body)
        elif reply.length:
            body = hit.body
            if body is not None:
                first = reply.first
                chunks.append(body if first == 0 and reply.length == len(body)
                              else memoryview(body)[first:first + reply.length])
            else:
                self._file_fd = hit.fileno()
                self._offset = reply.first
                self._left = reply.length

    def _complete(self) -> None:
        """The current response is out (or queued in the transport): account, release, go on."""
        hit, self._hit = self._hit, None
        if hit is not None:
            hit.close()
        self._file_fd = -1
        if self._sample is not None:
            self._emit_sample()
        self._ctx.metrics.response(self._status, self._sent)
        if self._keep_alive:
            self._state = _IDLE
        else:
            self._close()

    # -- sending --------------------------------------------------------------

    def _pump(self) -> bool:
        """Send what is pending; True when all of it is out."""
        if self._ctx.use_sendfile:
            return self._pump_direct()
        return self._pump_transport()

    def _pump_direct(self) -> bool:
        """sendmsg the chunks, then sendfile the segment, straight to the socket."""
        assert self._transport is not None
        if self._transport.get_write_buffer_size():
            # never overtake bytes queued in the transport (none are, by design)
            self._ctx.loop.call_soon(self._on_writable)
            return False
        sock = self._sock
        if sock is None:
            sock = self._sock = socket.fromfd(self._fd, self._family, socket.SOCK_STREAM)
        chunks = self._chunks
        try:
            while chunks:
                flags = socket.MSG_MORE if self._left else 0
                n = sock.send(chunks[0], flags) if len(chunks) == 1 else sock.sendmsg(chunks, (), flags)
                self._sent += n
                _advance(chunks, n)
            while self._left:
                n = os.sendfile(self._fd, self._file_fd, self._offset, self._left)
                if n == 0:
                    raise EOFError("stored file shorter than its size")
                self._sent += n
                self._offset += n
                self._left -= n
        except (BlockingIOError, InterruptedError):
            self._wait_writable()
            return False
        except (OSError, EOFError) as exc:
            self._abort(exc)
            return False
        if self._writing:
            self._writing = False
            self._ctx.loop.remove_writer(sock.fileno())
        return True

    def _wait_writable(self) -> None:
        self._last = time.monotonic()
        if not self._writing:
            assert self._sock is not None
            self._ctx.metrics.pending_waits += 1
            self._writing = True
            self._ctx.loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        if self._state != _SENDING:
            return
        self._last = time.monotonic()
        if self._pump_direct():
            self._complete()
            self._run()

    def _pump_transport(self) -> bool:
        """The kill-switch path: pread + transport.write, under the transport's flow control."""
        transport = self._transport
        assert transport is not None
        if self._chunks:
            for chunk in self._chunks:
                self._sent += len(chunk)
            transport.writelines(self._chunks)
            self._chunks.clear()
        try:
            while self._left and not self._write_paused:
                data = os.pread(self._file_fd, min(self._left, READ_CHUNK), self._offset)
                if not data:
                    raise EOFError("stored file shorter than its size")
                transport.write(data)
                self._sent += len(data)
                self._offset += len(data)
                self._left -= len(data)
        except (OSError, EOFError) as exc:
            self._abort(exc)
            return False
        return not self._left

    # -- hand-off, errors, closing --------------------------------------------

    def _hand_off(self, head: RequestHead, reason: str) -> bool:
        """Give the connection, this request and all bytes after it to aiohttp."""
        transport = self._transport
        assert transport is not None
        data = head.raw + self._reader.rest()
        self._release()
        self._state = _GONE
        self._ctx.metrics.handoff(reason)
        if self._read_paused:
            transport.resume_reading()
        factory = self._ctx.runner.server
        assert factory is not None  # checked in serve()
        proto = factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(data)
        if self._eof:
            proto.eof_received()
        return False

    def _fail(self, exc: H1Error) -> None:
        """Answer an unparseable head with its status and close (RFC 9112 §2.2)."""
        head_data, body = error_head(exc.status, exc.reason, self._ctx.clock())
        self._keep_alive = False
        self._state = _SENDING
        self._sent = 0
        self._chunks += (head_data, body)
        self._status = exc.status
        if self._pump():
            self._complete()

    def _abort(self, exc: BaseException) -> None:
        """The client went away mid-response (or the file failed): drop the connection."""
        if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            log.warning("fast-path send failed: %s", exc)
        self._release()
        self._state = _GONE
        if self._transport is not None:
            self._transport.abort()

    def _close(self) -> None:
        self._state = _GONE
        self._release()
        if self._transport is not None:
            self._transport.close()

    def _release(self) -> None:
        """Free the hit, the writer registration and the dup (idempotent)."""
        self._ctx.conns.discard(self)
        hit, self._hit = self._hit, None
        if hit is not None:
            hit.close()
        self._chunks.clear()
        self._left = 0
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._writing:
                self._writing = False
                self._ctx.loop.remove_writer(sock.fileno())
            sock.close()

    def _pause_reading(self) -> None:
        assert self._transport is not None
        self._read_paused = True
        self._transport.pause_reading()

    # -- timeouts and sampling --------------------------------------------------

    def check_idle(self, now: float) -> None:
        """Close the connection if it has waited too long (called by the sweep)."""
        ctx = self._ctx
        quiet = now - self._last
        if self._state == _SENDING or (self._transport is not None and self._transport.get_write_buffer_size()):
            if quiet > ctx.send_timeout:
                self._abort(TimeoutError("send stalled"))
        elif self._reader.buffered:
            if quiet > ctx.head_timeout:
                self._close()
        elif quiet > ctx.keepalive_timeout:
            self._close()

    def close_if_idle(self) -> bool:
        """Close now unless a response is in flight; True if closed."""
        if self._state == _IDLE and not self._reader.buffered:
            self._close()
            return True
        return self._state == _GONE

    def _maybe_sample(self, head: RequestHead, status: int) -> None:
        ctx = self._ctx
        ctx.sample_count += 1
        if ctx.sample_count >= ctx.access_sample:
            ctx.sample_count = 0
            self._sample = (time.perf_counter(), head, status)

    def _emit_sample(self) -> None:
        assert self._sample is not None and self._transport is not None
        start, head, status = self._sample
        self._sample = None
        peer = self._transport.get_extra_info("peername")
        record = AccessRecord(
            time=time.time(), peer=peer[0] if peer else None, method=head.method,
            path=head.target.partition("?")[0], status=status, bytes=self._sent,
            duration_ms=round((time.perf_counter() - start) * 1000, 3),
            user_agent=head.get("user-agent"), range=head.get("range"), kind="fastpath",
        )
        for observe in self._ctx.observers:
            try:
                observe(record)
            except Exception:
                log.exception("access observer failed")


def _advance(chunks: list[bytes | memoryview], n: int) -> None:
    """Drop ``n`` sent bytes from the front of ``chunks``."""
    while n:
        first = chunks[0]
        size = len(first)
        if n >= size:
            del chunks[0]
            n -= size
        else:
            chunks[0] = memoryview(first)[n:]
            return


# --------------------------------------------------------------------------
# The server


class FastPathServer:
    """A listening fast-path server (wraps ``asyncio.Server``)."""

    def __init__(self, server: asyncio.AbstractServer, ctx: _Context) -> None:
        self.server = server
        self._ctx = ctx
        self._sweeps = 0
        self._timer: asyncio.TimerHandle | None = ctx.loop.call_later(SWEEP_INTERVAL, self._sweep)

    @property
    def metrics(self) -> FastPathMetrics:
        return self._ctx.metrics

    @property
    def sockets(self) -> Sequence[Any]:
        return getattr(self.server, "sockets", ())

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """The allowed origins replies are shaped with; settable (a reload), which forgets the hot replies."""
        return self._ctx.cors_origins

    @cors_origins.setter
    def cors_origins(self, origins: Iterable[str]) -> None:
        self._ctx.cors_origins = tuple(origins)
        self._ctx.drop_hot()

    @property
    def connections(self) -> int:
        """Connections currently held by the fast path (not yet handed off)."""
        return len(self._ctx.conns)

    def _sweep(self) -> None:
        self._ctx.metrics.flush()
        self._ctx.drop_hot(int(self._ctx.clock()))
        self._sweeps += 1
        if self._sweeps % 5 == 0:
            now = time.monotonic()
            for conn in list(self._ctx.conns):
                conn.check_idle(now)
        self._timer = self._ctx.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def close(self) -> None:
        """Stop accepting connections (existing ones are left alone)."""
        self.server.close()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, close idle connections, let responses in flight finish.

        Connections still sending after ``timeout`` seconds are aborted.  The
        counters are flushed a last time.  Handed-off connections belong to
        aiohttp: ``runner.cleanup()`` closes those.
        """
        self.server.close()
        deadline = time.monotonic() + timeout
        while True:
            busy = [c for c in list(self._ctx.conns) if not c.close_if_idle()]
            if not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        for conn in list(self._ctx.conns):
            conn._abort(TimeoutError("shutdown"))
        self._ctx.drop_hot()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ctx.metrics.flush()
        await self.server.wait_closed()


async def serve(
    sock: socket.socket,
    runner: web.AppRunner,
    lookup: Lookup,
    node_name: str,
    *,
    cors_origins: tuple[str, ...] = ("*",),
    metrics: FastPathMetrics | None = None,
    sendfile: bool | None = None,
    backlog: int = 1024,
    limits: Limits = DEFAULT_LIMITS,
    keepalive_timeout: float = 75.0,
    head_timeout: float = 30.0,
    send_timeout: float = 60.0,
    observers: Iterable[Observer] = (),
    access_sample: int = 0,
    clock: Callable[[], float] = time.time,
) -> FastPathServer:
    """Listen on ``sock`` (bound, not yet listening) with the fast path in front of ``runner``.

    ``runner`` must be set up (``await runner.setup()``) and have no site on
    this socket.  ``lookup`` decides hits (see ``Lookup``); ``node_name``
    goes into ``Via``; ``cors_origins`` are the node's allowed origins.
    ``sendfile`` None follows ``LEGATO_NO_SENDFILE``.  ``metrics`` defaults
    to counters in a private registry; pass ``FastPathMetrics(node,
    registry)`` to have them on the node's /metrics.  ``clock`` gives the
    Unix time used for Date and freshness.
    """
    if runner.server is None:
        raise RuntimeError("serve() needs a runner that is set up (await runner.setup())")
    loop = asyncio.get_running_loop()
    ctx = _Context(
        loop=loop, lookup=lookup, runner=runner, node=node_name, cors_origins=tuple(cors_origins),
        use_sendfile=sendfile_enabled() if sendfile is None else sendfile and hasattr(os, "sendfile"),
        metrics=metrics if metrics is not None else FastPathMetrics(node_name),
        limits=limits, keepalive_timeout=keepalive_timeout, head_timeout=head_timeout,
        send_timeout=send_timeout, observers=tuple(observers), access_sample=max(0, access_sample),
        clock=clock,
    )
    server = await loop.create_server(lambda: FastPathProtocol(ctx), sock=sock, backlog=backlog)
    return FastPathServer(server, ctx)
