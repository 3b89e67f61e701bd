"""Fetching from upstream peers: selection, retries, resume, health.  The I/O shell
around cache.ring (who) and cache.health (whether).

* **Selection**: peers in the ring's preference order for the object's ring
  key (the track id: a track's segments land on one peer), skipping peers
  whose breaker is open and, first time round, peers above the bounded-load
  cap ceil((1+ε)·(in-flight+1)/n) so a viral track cannot pile onto one peer.
* **Retry**: a connect error, a 5xx, a timeout before the first byte or a
  stalled/truncated body moves on to the next peer, within the request's
  deadline.  When the body had already started, the next peer is asked for
  the rest only (``Range: bytes=N-`` with ``If-Range`` on the ETag), so the
  client's transfer continues where it stopped: killing a peer mid-transfer
  loses no client request.
* **Health**: active ``/healthz`` probes every ``health_interval`` and
  passive outcomes feed one breaker per peer (cache.health).
* **Forwarding** (``forward``): a small request that is never stored (a key,
  a licence) goes to the same peers under the same breakers and deadline,
  query string and body included, and its whole answer comes back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp

from cache.config import UpstreamConfig
from cache.health import PeerSet
from cache.ring import Ring

log = logging.getLogger("legato.upstream")

CHUNK = 64 * 1024
# Request headers a cache forwards upstream; everything else is the client's business.
FORWARDED = ("Accept-Encoding",)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length", "content-range", "accept-ranges"})


class Sink(Protocol):
    """Where a fetched response goes (the coalescer's leader sink)."""

    def start(self, status: int, headers: list[tuple[str, str]], content_length: int | None) -> None: ...
    async def write(self, chunk: bytes) -> None: ...
    def finish(self) -> None: ...


class UpstreamError(Exception):
    """No peer produced the object in time; ``status`` is what the client should get."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _PeerFailed(Exception):
    def __init__(self, reason: str, *, definitive: bool = False, timeout: bool = False) -> None:
        super().__init__(reason)
        self.definitive = definitive
        self.timeout = timeout


Observe = Callable[[str, str, float], None]  # (peer, outcome, seconds)
T = TypeVar("T")


@dataclass(frozen=True)
class Forwarded:
    """A peer's whole answer to a forwarded request (``Upstream.forward``)."""

    status: int
    headers: list[tuple[str, str]]  # end-to-end fields as received
    body: bytes


class Upstream:
    """The peers of one node and how to fetch from them."""

    def __init__(self, config: UpstreamConfig, *, node: str, clock: Callable[[], float] = time.monotonic,
                 observe: Observe | None = None) -> None:
        self.config = config
        self.node = node
        self.clock = clock
        self.ring = Ring(list(config.peers))
        self.peers = PeerSet(config.peers, config.failure_threshold, config.open_seconds)
        self.observe = observe or (lambda peer, outcome, seconds: None)
        self._session: aiohttp.ClientSession | None = None
        self._probe: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit_per_host=self.config.connections_per_peer, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=None))
        self._probe = asyncio.create_task(self._probe_loop(), name="upstream-health")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    # --- selection ------------------------------------------------------------
    def order(self, ring_key: str) -> list[str]:
        """Peers to try for ``ring_key``, best first; open breakers left out."""
        now = self.clock()
        candidates = self.ring.candidates(ring_key)
        total = sum(self.peers.loads.values())
        cap = math.ceil((1 + self.config.load_epsilon) * (total + 1) / max(1, len(candidates)))
        light = [p for p in candidates if self.peers.loads[p] < cap]
        heavy = [p for p in candidates if self.peers.loads[p] >= cap]
        return [p for p in light + heavy if self.peers.breakers[p].available(now)]

    def states(self) -> dict[str, str]:
        now = self.clock()
        return {p: self.peers.breakers[p].state(now).value for p in self.config.peers}

    # --- fetching -------------------------------------------------------------
    async def fetch(self, path: str, ring_key: str, sink: Sink, headers: Mapping[str, str] | None = None) -> None:
        """Fetch ``path`` into ``sink``, trying peers in order until one succeeds.

        Raises UpstreamError (502 when peers failed, 504 when the deadline
        passed) if no peer could deliver; ``sink`` may then hold a partial body.
        """
        state = _Transfer()
        await self._each_peer(path, ring_key, lambda peer: self._attempt(peer, path, sink, headers or {}, state))

    async def forward(self, method: str, target: str, ring_key: str, headers: Mapping[str, str],
                      body: bytes = b"", *, max_body: int = 64 * 1024) -> Forwarded:
        """Pass one small request through to a peer and return its whole answer (keys, licences).

        ``target`` is the path with its query string, sent as is.  Nothing is
        stored and nothing is resumed: peers are tried in order on connect
        errors, 5xx and timeouts, within the same deadline and breakers as
        ``fetch``; any other answer (200, 401, 403, 404, 429...) is the
        answer.  A body over ``max_body`` bytes counts as a peer failure.
        Raises UpstreamError (502/504) when no peer answered.
        """
        return await self._each_peer(target.partition("?")[0], ring_key,
                                     lambda peer: self._exchange(peer, method, target, headers, body, max_body))

    async def _each_peer(self, path: str, ring_key: str, attempt: Callable[[str], Awaitable[T]]) -> T:
        """Run ``attempt(peer)`` on peers in ring order until one succeeds, within the deadline."""
        deadline = self.clock() + self.config.deadline
        reasons: list[str] = []
        timeouts = 0
        tried: set[str] = set()
        while True:
            peers = [p for p in self.order(ring_key) if p not in tried]
            if not peers:
                break
            peer = peers[0]
            tried.add(peer)
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise UpstreamError(504, f"upstream deadline passed ({'; '.join(reasons) or 'no answer'})")
            self.peers.loads[peer] += 1
            t0 = self.clock()
            try:
                result = await asyncio.wait_for(attempt(peer), remaining)
            except _PeerFailed as exc:
                self.peers.breakers[peer].failure(self.clock(), definitive=exc.definitive)
                self.observe(peer, "failure", self.clock() - t0)
                reasons.append(f"{peer}: {exc}")
                timeouts += exc.timeout
                log.warning("upstream %s failed for %s: %s", peer, path, exc)
                continue
            except TimeoutError:
                self.peers.breakers[peer].failure(self.clock())
                self.observe(peer, "timeout", self.clock() - t0)
                raise UpstreamError(504, f"upstream deadline passed ({peer} too slow)") from None
            finally:
                self.peers.loads[peer] -= 1
            self.peers.breakers[peer].success()
            self.observe(peer, "success", self.clock() - t0)
            return result
        status = 504 if reasons and timeouts == len(reasons) else 502  # RFC 9110 §15.6.5: nobody answered in time
        raise UpstreamError(status, "no upstream peer could serve it: " + ("; ".join(reasons) or "all peers are down"))

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(connect=self.config.connect_timeout, sock_connect=self.config.connect_timeout,
                                     sock_read=self.config.read_timeout)

    async def _request(self, method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> aiohttp.ClientResponse:
        """The response head from a peer, or _PeerFailed when none comes within first_byte_timeout."""
        request = self.session.request(method, url, headers=headers, data=body or None, timeout=self._timeout(),
                                       allow_redirects=False)
        try:
            return await asyncio.wait_for(request, self.config.first_byte_timeout)
        except TimeoutError:
            raise _PeerFailed(f"no response within {self.config.first_byte_timeout:g} s", timeout=True) from None

    async def _exchange(self, peer: str, method: str, target: str, headers: Mapping[str, str], body: bytes,
                        max_body: int) -> Forwarded:
        request_headers = dict(headers)
        request_headers["Via"] = f"1.1 {self.node}"
        try:
            resp = await self._request(method, peer + target, request_headers, body)
            async with resp:
                if resp.status >= 500:
                    raise _PeerFailed(f"answered {resp.status}")
                if (resp.content_length or 0) > max_body:
                    raise _PeerFailed(f"answer of {resp.content_length} bytes is over {max_body}")
                chunks: list[bytes] = []
                size = 0
                while chunk := await resp.content.read(max_body + 1 - size):  # read(n): what has arrived
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_body:
                        raise _PeerFailed(f"answer is over {max_body} bytes")
                data = b"".join(chunks)
                raw = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers)
                kept = [(k, v) for k, v in raw if k.lower() not in HOP_BY_HOP]
                return Forwarded(resp.status, kept, data)
        except _PeerFailed:
            raise
        except aiohttp.ClientConnectorError as exc:
            raise _PeerFailed(f"cannot connect ({exc.os_error.strerror or exc})", definitive=True) from None
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise _PeerFailed(f"stalled ({type(exc).__name__})", timeout=True) from None
        except (aiohttp.ClientError, OSError) as exc:  # no text that may quote the URL: its query holds a token
            text = str(exc)
            raise _PeerFailed(type(exc).__name__ + (f": {text}" if text and "?" not in text else "")) from None

    async def _attempt(self, peer: str, path: str, sink: Sink, headers: Mapping[str, str], t: _Transfer) -> None:
        request_headers = {k: v for k, v in headers.items() if k in FORWARDED}
        request_headers["Via"] = f"1.1 {self.node}"
        if t.started:  # resume: ask only for what the client has not had yet
            if t.etag is None or t.length is None:
                raise _PeerFailed("transfer broke and cannot be resumed (no ETag or length)")
            request_headers["Range"] = f"bytes={t.written}-"
            request_headers["If-Range"] = t.etag
        try:
            resp = await self._request("GET", peer + path, request_headers)
            async with resp:
                if resp.status >= 500:
                    raise _PeerFailed(f"answered {resp.status}")
                if t.started:
                    self._check_resume(resp, t)
                else:
                    length = resp.content_length
                    raw = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers)
                    kept = [(k, v) for k, v in raw if k.lower() not in HOP_BY_HOP]  # names as sent
                    t.started, t.length, t.etag = True, length, resp.headers.get("ETag")
                    sink.start(resp.status, kept, length)
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await sink.write(chunk)
                    t.written += len(chunk)
                if t.length is not None and t.written != t.length:
                    raise _PeerFailed(f"body ended at {t.written} of {t.length} bytes")
        except _PeerFailed:
            raise
        except aiohttp.ClientConnectorError as exc:
            raise _PeerFailed(f"cannot connect ({exc.os_error.strerror or exc})", definitive=True) from None
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise _PeerFailed(f"stalled ({type(exc).__name__})", timeout=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _PeerFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        sink.finish()

    @staticmethod
    def _check_resume(resp: aiohttp.ClientResponse, t: _Transfer) -> None:
        expected = f"bytes {t.written}-{(t.length or 0) - 1}/{t.length}"
        if resp.status != 206 or resp.headers.get("Content-Range") != expected or resp.headers.get("ETag") != t.etag:
            raise _PeerFailed(f"resume refused ({resp.status} {resp.headers.get('Content-Range')})")

    # --- health probes --------------------------------------------------------
    async def probe(self, peer: str) -> bool:
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout)
        try:
            async with self.session.get(peer + "/healthz", timeout=timeout) as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientConnectorError:
            self.peers.breakers[peer].failure(self.clock(), definitive=True)
            return False
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        if ok:
            self.peers.breakers[peer].success()
        else:
            self.peers.breakers[peer].failure(self.clock())
        return ok

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(p) for p in self.config.peers), return_exceptions=True)
            await asyncio.sleep(self.config.health_interval)


class _Transfer:
    """What has reached the sink so far (for resuming on another peer)."""

    __slots__ = ("etag", "length", "started", "written")

    def __init__(self) -> None:
        self.started = False
        self.written = 0
        self.length: int | None = None
        self.etag: str | None = None

