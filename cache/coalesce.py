"""Request coalescing: at most one upstream fetch per key across all worker processes.

``flight = await coalescer.get(key, fetch)`` returns a ``Flight`` whose
``role`` says what happened (the node's ``X-Cache``):

* ``MISS``: this request leads: ``fetch(sink)`` runs (once, in a task of
  its own) and fills the flight and the store;
* ``COALESCED``: a fetch of ``key`` is already running in this process or in
  another worker process on the same cache directory; this request follows it;
* ``HIT``: the object landed in the store between the node's lookup and this
  call (another worker just committed it); the flight serves it.

Every flight streams as the body arrives (read-while-write): ``await
flight.head()`` returns status and headers as soon as the leader has them and
``async for chunk in flight`` yields the body from its first byte, waiting
for more while the fetch runs.  ``flight.close()`` (or ``async with``) says
the request is done with it.

``fetch`` is the node's coroutine: it calls ``sink.start(status, headers,
content_length | None)``, ``await sink.write(chunk)`` repeatedly and
``sink.finish()``, or raises.  On success the body is committed to the store
through ``Store.begin``/``Writer.commit`` (checksummed, atomic) when
``cacheable(head)`` says so (default: status 200), so the next request is a
HIT.

**Across processes** (``DIR/locks/<xxh3-128 of key>.*``):

* the leader holds ``flock(LOCK_EX)`` on ``.lock`` for the whole fetch;
* it publishes its progress in a small sidecar ``.json`` (rewritten
  atomically by rename): ``fetching`` → ``streaming`` (with the head and the
  path of the store's temp file it appends the body to) → ``done`` /
  ``failed`` / ``abandoned``;
* a process that finds the lock taken runs one *tailer* task per key: it
  reads the sidecar, opens the temp file and feeds what appears to its local
  flight (polling every ``poll_interval``, backing off to 20 ms while
  idle); the open descriptor keeps reading the same inode after the leader
  renames it into the store;
* followers hold ``flock(LOCK_SH)`` on ``.wait``, so a leader whose local
  requests all left can tell whether anyone elsewhere still waits;
* when the tailer can take the lock, the leader has ended: ``done`` → read
  the rest, ``failed`` → every follower gets ``UpstreamFailed`` at once;
  anything else (the leader process died: the kernel dropped its flock) →
  the tailer, now holding the lock, *takes over*: it runs ``fetch`` itself,
  checks that the bytes its followers already have are a prefix of the new
  body (and that status, length and ETag agree), and carries on from there.
  At most ``max_takeovers`` times per flight, then ``UpstreamFailed``;
* when the leader cannot spill to disk (store degraded: no temp file, or
  the file was removed after a write error; or no sidecar appears within
  ``sidecar_grace``), followers in other processes fetch for themselves
  (*passthrough*): correct, just not coalesced, as the store is failing anyway.

Lock files are unlinked only by a holder of the flock (the store's sweep), and
an acquirer checks that the path still names the inode it locked, so removing
them can never let two processes lead one key.

**In the process**, followers read the leader's chunks from memory: no
copies, no file reads.  The leader's fetch runs in its own task: a
disconnecting first requester does not stop it while anyone (here or in
another process) still waits; when nobody waits any more it is cancelled
(``finish_abandoned=True`` keeps filling the cache instead).

**Bounded waiting**: at most ``max_followers`` requests per key per process
may follow a flight; the next one gets ``TooManyWaiters`` (503, Retry-After).

Errors (one base class; each suggests the status a node should answer):
``CoalesceError`` → ``UpstreamFailed`` (502, or the ``status`` of the fetch's
exception when it has one, e.g. 504 from ``cache.upstream.UpstreamError``)
and ``TooManyWaiters`` (503).  A follower is never left hanging: a failing
fetch, a truncated body (fewer or more bytes than Content-Length), a fetch
that returns without ``finish()`` and a dead leader all end every follower.

Rejected alternatives: followers in other processes waiting for the commit
and then reading the store (simple, but no read-while-write: a client would
wait for the whole FLAC segment before its first byte); followers
re-fetching from the leader process over a socket (needs a server per
worker and knowledge of who leads; the temp file is already there); inotify
instead of polling (not in the standard library; a 2-20 ms poll of a few
in-flight keys costs nothing measurable).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, Self

import xxhash

from cache.meta import Meta, MetaError, ResponseHead
from cache.store import Hit, Store, Writer
from legato.proc import pid_alive

__all__ = [
    "CoalesceError",
    "Coalescer",
    "Fetch",
    "Flight",
    "Role",
    "Sink",
    "TooManyWaiters",
    "UpstreamFailed",
]

log = logging.getLogger("legato.cache.coalesce")

_READ = 256 * 1024
_POLL_MAX = 0.02


class Role(enum.StrEnum):
    """How a request got its response (the node's ``X-Cache`` value)."""

    MISS = "MISS"
    COALESCED = "COALESCED"
    HIT = "HIT"


class CoalesceError(Exception):
    """Base of the coalescer's errors; ``status`` is what the node should answer."""

    status: int = 502

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class UpstreamFailed(CoalesceError):
    """The fetch for ``key`` failed (exception, truncated body, dead leader): 502/504."""

    def __init__(self, key: str, reason: str, *, status: int = 502) -> None:
        super().__init__(key, reason)
        self.status = status


class TooManyWaiters(CoalesceError):
    """The waiting list of ``key`` is full: answer 503 with ``Retry-After: retry_after``."""

    status = 503

    def __init__(self, key: str, limit: int, retry_after: int) -> None:
        super().__init__(key, f"{limit} requests already wait for this object")
        self.retry_after = retry_after


class Sink(Protocol):
    """What ``fetch`` writes the upstream response into (as ``cache.upstream.Sink``)."""

    def start(self, status: int, headers: list[tuple[str, str]], content_length: int | None) -> None: ...
    async def write(self, chunk: bytes) -> None: ...
    def finish(self) -> None: ...


Fetch = Callable[[Sink], Awaitable[None]]


def default_cacheable(head: ResponseHead) -> bool:
    """Store only 200s unless the node says otherwise (it knows Cache-Control)."""
    return head.status == 200


def _same_object(a: ResponseHead, b: ResponseHead) -> bool:
    """Whether two heads can describe the same body (for switching sources mid-body)."""
    if a.status != b.status:
        return False
    if a.content_length is not None and b.content_length is not None and a.content_length != b.content_length:
        return False
    ea, eb = a.header("ETag"), b.header("ETag")
    return ea is None or eb is None or ea == eb


# --------------------------------------------------------------------------
# Shared state of one key in this process


class _State:
    """One in-flight object in this process: head, chunks so far, outcome, waiters.

    Producers (a leader's sink, a tailer, a hit) feed it from a *source* that
    starts at byte 0; when the source changes mid-body (takeover), bytes the
    followers already have are compared, not appended again.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.head: ResponseHead | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: CoalesceError | None = None
        self.changed = asyncio.Event()
        self.refs = 0
        self.followers = 0
        self.task: asyncio.Task[None] | None = None
        self.lock: _KeyLock | None = None
        self.leading = False
        self.source_pos = 0
        self._joined: bytes | None = None

    @property
    def over(self) -> bool:
        return self.done or self.error is not None

    def _notify(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def begin_source(self) -> None:
        self.source_pos = 0

    def set_head(self, head: ResponseHead) -> None:
        if self.head is None:
            self.head = head
            self._notify()
        elif not _same_object(self.head, head):
            raise UpstreamFailed(self.key, f"object changed while switching source ({self.head.status}, "
                                           f"{head.status})")

    def feed(self, data: bytes) -> None:
        """The next bytes of the current source."""
        pos = self.source_pos
        self.source_pos = pos + len(data)
        if pos < self.size:  # already delivered by an earlier source: must be identical
            overlap = min(len(data), self.size - pos)
            if self._published(pos, overlap) != data[:overlap]:
                raise UpstreamFailed(self.key, "object changed while switching source (bytes differ)")
            data = data[overlap:]
        if not data:
            return
        limit = self.head.content_length if self.head is not None else None
        if limit is not None and self.size + len(data) > limit:
            raise UpstreamFailed(self.key, f"body longer than Content-Length {limit}")
        self.chunks.append(data)
        self.size += len(data)
        self._joined = None
        self._notify()

    def _published(self, offset: int, length: int) -> bytes:
        if self._joined is None:
            self._joined = b"".join(self.chunks)
        return self._joined[offset:offset + length]

    def check_complete(self) -> None:
        """Raise unless the current source delivered a whole body."""
        limit = self.head.content_length if self.head is not None else None
        if self.head is None or self.source_pos < self.size or (limit is not None and self.size != limit):
            raise UpstreamFailed(self.key, f"body incomplete ({self.size} bytes)")

    def finish(self) -> None:
        if self.over:
            return
        self.check_complete()
        self.done = True
        self._joined = None
        self._notify()

    def fail(self, error: CoalesceError) -> None:
        if self.over:
            return
        self.error = error
        self._notify()


class Flight:
    """One request's view of a fetch: ``role``, ``await head()``, ``async for chunk``.

    Iterating yields the body from its first byte; it raises
    ``UpstreamFailed`` if the fetch fails.  Call ``close()`` (or use ``async
    with``) when the request is finished or gone.
    """

    def __init__(self, coalescer: Coalescer, state: _State, role: Role) -> None:
        self._coalescer = coalescer
        self._state = state
        self.role = role
        self.key = state.key
        self._index = 0
        self._closed = False
        state.refs += 1
        if role is Role.COALESCED:
            state.followers += 1

    async def head(self) -> ResponseHead:
        """Status, headers and announced length, as soon as known."""
        st = self._state
        while st.head is None:
            if st.error is not None:
                raise st.error
            if st.done:  # pragma: no cover - finish() requires a head
                raise UpstreamFailed(self.key, "no response head")
            await st.changed.wait()
        return st.head

    def __aiter__(self) -> Flight:
        return self

    async def __anext__(self) -> bytes:
        st = self._state
        while True:
            if self._index < len(st.chunks):
                chunk = st.chunks[self._index]
                self._index += 1
                return chunk
            if st.error is not None:
                raise st.error
            if st.done:
                raise StopAsyncIteration
            await st.changed.wait()

    async def read(self) -> bytes:
        """The whole body (waits for the end)."""
        return b"".join([chunk async for chunk in self])

    async def ended(self) -> None:
        """Wait until the fetch behind this flight is over (whole body or failure), however far this request read."""
        st = self._state
        while not st.over:
            await st.changed.wait()

    @property
    def size_so_far(self) -> int:
        """Bytes of the body received so far (by anyone)."""
        return self._state.size

    def close(self) -> None:
        """This request no longer needs the flight."""
        if self._closed:
            return
        self._closed = True
        st = self._state
        st.refs -= 1
        if self.role is Role.COALESCED:
            st.followers -= 1
        if st.refs == 0:
            self._coalescer._idle(st)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Flight {self.key} {self.role} {self._state.size} B{' done' if self._state.done else ''}>"


# --------------------------------------------------------------------------
# Cross-process lock and sidecar of one key


class _KeyLock:
    """``DIR/locks/<hash>.lock`` (leader's flock), ``.json`` (sidecar), ``.wait`` (followers)."""

    def __init__(self, lock_dir: Path, key: str) -> None:
        stem = str(lock_dir / xxhash.xxh3_128_hexdigest(key.encode("utf-8", "surrogatepass")))
        self.lock_dir = lock_dir
        self.path = stem + ".lock"
        self.sidecar = stem + ".json"
        self.wait_path = stem + ".wait"
        self.fd: int | None = None
        self.held = False
        self._wait_fd: int | None = None
        self._waiting = False

    def _open(self, path: str) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def try_acquire(self) -> bool:
        """Take the key's lock if nobody holds it (OSError if locks cannot be made)."""
        if self.held:
            return True
        for _ in range(8):
            if self.fd is None:
                self.fd = self._open(self.path)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.held = True
                return True
            os.close(self.fd)  # a swept (unlinked) lock file: lock the current one instead
            self.fd = None
        return False

    def release(self) -> None:
        fd, self.fd = self.fd, None
        self.held = False
        if fd is not None:
            os.close(fd)

    def write_sidecar(self, record: dict[str, Any]) -> bool:
        """Replace the sidecar atomically; False if it cannot be written (disk full...)."""
        tmp = f"{self.sidecar}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                data = json.dumps(record, separators=(",", ":")).encode()
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
            os.rename(tmp, self.sidecar)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        return True

    def read_sidecar(self) -> dict[str, Any] | None:
        try:
            with open(self.sidecar, "rb") as f:
                record = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def hold_wait(self) -> bool:
        """As a follower, hold a shared lock on ``.wait`` (True once held)."""
        if self._waiting:
            return True
        try:
            if self._wait_fd is None:
                self._wait_fd = self._open(self.wait_path)
            fcntl.flock(self._wait_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False
        self._waiting = True
        return True

    def remote_waiters(self) -> bool:
        """As the leader: does any other process follow this key?"""
        try:
            if self._wait_fd is None:
                self._wait_fd = self._open(self.wait_path)
            fcntl.flock(self._wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return True  # cannot tell: assume someone waits
        fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        return False

    def drop_wait(self) -> None:
        self._waiting = False
        fd, self._wait_fd = self._wait_fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        self.drop_wait()
        self.release()




class _Outcome(enum.Enum):
    DONE = "done"
    LEADER_GONE = "leader gone"  # we hold the lock now
    PASSTHROUGH = "passthrough"  # the leader cannot share its body: fetch ourselves


_LIVE = ("fetching", "streaming")


# --------------------------------------------------------------------------
# The leader's sink


class _LeaderSink:
    """Feeds one fetch into the store's writer, the sidecar and the local flight."""

    def __init__(self, co: Coalescer, st: _State, lock: _KeyLock | None, flight_id: str,
                 request_time: float) -> None:
        self.co = co
        self.st = st
        self.lock = lock
        self.flight_id = flight_id
        self.request_time = request_time
        self.head: ResponseHead | None = None
        self.response_time = request_time
        self.writer: Writer | None = None
        self.received = 0
        self.finished = False

    def start(self, status: int, headers: Iterable[tuple[str, str]], content_length: int | None) -> None:
        if self.head is not None:
            raise RuntimeError("sink.start() called twice")
        try:
            head = ResponseHead.build(status, headers, content_length)
        except MetaError as exc:
            raise UpstreamFailed(self.st.key, f"bad upstream response head: {exc}") from None
        self.head = head
        self.response_time = self.co.clock()
        self.st.set_head(head)
        self.writer = self.co.store.begin(self.st.key, self.request_time, content_length=content_length)
        if self.lock is not None:
            self.lock.write_sidecar({
                "id": self.flight_id, "pid": os.getpid(), "key": self.st.key, "state": "streaming",
                "status": head.status, "headers": [list(p) for p in head.headers],
                "content_length": head.content_length, "body": self.writer.path, "t": time.time(),
            })

    async def write(self, chunk: bytes) -> None:
        if self.head is None:
            raise RuntimeError("sink.write() before sink.start()")
        if self.finished:
            raise RuntimeError("sink.write() after sink.finish()")
        if not chunk:
            return
        data = bytes(chunk)
        self.received += len(data)
        limit = self.head.content_length
        if limit is not None and self.received > limit:
            raise UpstreamFailed(self.st.key, f"body longer than Content-Length {limit}")
        if self.writer is not None:
            self.writer.write(data)
        self.st.feed(data)

    def finish(self) -> None:
        if self.head is None:
            raise RuntimeError("sink.finish() before sink.start()")
        limit = self.head.content_length
        if limit is not None and self.received != limit:
            raise UpstreamFailed(self.st.key, f"truncated body: {self.received} of {limit} bytes")
        self.finished = True


# --------------------------------------------------------------------------
# The coalescer


class Coalescer:
    """One per worker process, over the node's ``Store`` (see the module docstring).

    ``max_followers``: requests per key per process that may follow a flight.
    ``cacheable(head)``: whether a complete body is committed to the store.
    ``clock``: wall clock for RFC 9111 request/response times.
    ``poll_interval``: first delay of a tailer between looks at the leader's
    temp file (doubling to 20 ms while nothing arrives).  ``max_takeovers``:
    how often followers re-fetch after leader processes died.
    ``sidecar_grace``: seconds a held lock may go without a live sidecar
    before followers fetch for themselves.  ``retry_after``: seconds
    suggested to clients refused by ``TooManyWaiters``.
    """

    def __init__(self, store: Store, *, max_followers: int = 10_000,
                 cacheable: Callable[[ResponseHead], bool] = default_cacheable,
                 clock: Callable[[], float] = time.time, poll_interval: float = 0.002,
                 max_takeovers: int = 2, sidecar_grace: float = 0.5, retry_after: int = 1,
                 finish_abandoned: bool = False) -> None:
        if max_followers < 0:
            raise ValueError("max_followers must be >= 0")
        self.store = store
        self.max_followers = max_followers
        self.cacheable = cacheable
        self.clock = clock
        self.poll_interval = poll_interval
        self.max_takeovers = max_takeovers
        self.sidecar_grace = sidecar_grace
        self.retry_after = retry_after
        self.finish_abandoned = finish_abandoned
        self._flights: dict[str, _State] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock_trouble = False  # logged once, not per request

    def in_flight(self) -> int:
        """Keys being fetched or followed by this process."""
        return len(self._flights)

    def complete_body(self, key: str) -> bytes | None:
        """The 200 body of ``key`` if a flight of this process holds it whole (it may not be stored yet).

        A flight ends for its requests before its body is committed to the
        store (see ``_lead``), so a reader of the store can miss an object
        a client already has.
        """
        st = self._flights.get(key)
        if st is None or not st.done or st.error is not None or st.head is None or st.head.status != 200:
            return None
        return b"".join(st.chunks)

    async def get(self, key: str, fetch: Fetch, replacing: Meta | None = None) -> Flight:
        """Join the fetch of ``key`` or lead it (see ``Role``); ``TooManyWaiters`` if full.

        ``replacing`` is a stored object the caller keeps serving while it is
        fetched again (a stale copy, RFC 5861): found in the store, it is not
        the fresh object this call asks for, so it is not served as a ``HIT``.
        """
        st = self._flights.get(key)
        if st is not None and st.error is None:  # running, or complete and still in memory
            if st.followers >= self.max_followers:
                raise TooManyWaiters(key, self.max_followers, self.retry_after)
            # a body already complete in memory is served from here: that is a hit
            return Flight(self, st, Role.HIT if st.done else Role.COALESCED)
        lock: _KeyLock | None = _KeyLock(self.store.lock_dir, key)
        assert lock is not None
        try:
            leading = lock.try_acquire()
        except OSError as exc:  # cannot make lock files: coalesce in this process only
            if not self._lock_trouble:
                self._lock_trouble = True
                log.warning("cannot lock %s (%s): fetching without cross-process coalescing until locks work "
                            "again", key, exc)
            lock.close()
            lock, leading = None, True
        else:
            if self._lock_trouble:
                self._lock_trouble = False
                log.warning("cross-process coalescing works again")
        if leading and lock is not None:
            hit = self.store.lookup(key, self.clock())
            if hit is not None and replacing is not None and hit.meta == replacing:
                hit.close()
                hit = None
            if hit is not None:  # committed by another worker since the node looked
                lock.close()
                return self._from_hit(key, hit)
        if not leading and self.max_followers == 0:
            assert lock is not None
            lock.close()
            raise TooManyWaiters(key, self.max_followers, self.retry_after)
        st = _State(key)
        st.lock = lock
        st.leading = leading
        self._flights[key] = st
        flight = Flight(self, st, Role.MISS if leading else Role.COALESCED)
        task = asyncio.create_task(self._produce(st, fetch), name=f"coalesce {key}")
        st.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    def _from_hit(self, key: str, hit: Hit) -> Flight:
        st = _State(key)
        try:
            st.set_head(hit.meta.head)
            _feed_hit(st, hit)
        except (OSError, CoalesceError) as exc:
            st.fail(exc if isinstance(exc, CoalesceError) else UpstreamFailed(key, f"stored object unreadable: {exc}"))
        finally:
            hit.close()
        return Flight(self, st, Role.HIT)

    def _idle(self, st: _State) -> None:
        """The last local request left ``st``: stop its fetch unless someone still waits."""
        if st.over or st.task is None or st.task.done():
            return
        if st.leading:
            if self.finish_abandoned:
                return
            if st.lock is not None and st.lock.held and st.lock.remote_waiters():
                return
        if self._flights.get(st.key) is st:
            del self._flights[st.key]
        log.debug("nobody waits for %s any more: stopping its fetch", st.key)
        st.task.cancel()

    async def close(self) -> None:
        """Stop every fetch and tailer of this process (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- producers ----------------------------------------------------------------

    async def _produce(self, st: _State, fetch: Fetch) -> None:
        takeovers = 0
        try:
            while True:
                if st.leading:
                    await self._lead(st, fetch, st.lock)
                    return
                assert st.lock is not None
                outcome = await self._tail(st, st.lock)
                if outcome is _Outcome.DONE:
                    return
                if outcome is _Outcome.PASSTHROUGH:
                    log.info("leader of %s cannot share its body: fetching it here too", st.key)
                    await self._lead(st, fetch, None)
                    return
                takeovers += 1
                if takeovers > self.max_takeovers:
                    raise UpstreamFailed(st.key, f"leader process died {takeovers} times")
                log.warning("leader of %s ended without a result: taking over the fetch", st.key)
                st.leading = True
        except asyncio.CancelledError:
            st.fail(UpstreamFailed(st.key, "fetch abandoned"))
            raise
        except CoalesceError as exc:
            st.fail(exc)
        except Exception as exc:  # noqa: BLE001 - the fetch's own errors (aiohttp, UpstreamError...) become UpstreamFailed
            status = getattr(exc, "status", 502)
            status = status if isinstance(status, int) and 500 <= status <= 599 else 502
            st.fail(UpstreamFailed(st.key, f"{type(exc).__name__}: {exc}", status=status))
        finally:
            if st.lock is not None:
                st.lock.close()
            if self._flights.get(st.key) is st:
                del self._flights[st.key]
            st.fail(UpstreamFailed(st.key, "fetch ended without a result"))  # no-op when over

    async def _lead(self, st: _State, fetch: Fetch, lock: _KeyLock | None) -> None:
        """Run ``fetch`` into the flight, the store and (with ``lock``) the sidecar."""
        flight_id = os.urandom(8).hex()
        if lock is not None:
            lock.write_sidecar({"id": flight_id, "pid": os.getpid(), "key": st.key, "state": "fetching",
                                "t": time.time()})
        st.begin_source()
        sink = _LeaderSink(self, st, lock, flight_id, self.clock())
        try:
            await fetch(sink)
            if not sink.finished:
                raise UpstreamFailed(st.key, "fetch returned without finishing the body")
        except BaseException as exc:
            if lock is not None:
                abandoned = isinstance(exc, asyncio.CancelledError)
                lock.write_sidecar({"id": flight_id, "pid": os.getpid(), "key": st.key,
                                    "state": "abandoned" if abandoned else "failed",
                                    "error": _describe(exc), "status": getattr(exc, "status", 502),
                                    "t": time.time()})
            if sink.writer is not None:
                sink.writer.abort()
            raise
        assert sink.head is not None
        try:
            st.check_complete()
        except UpstreamFailed as exc:
            if lock is not None:
                lock.write_sidecar({"id": flight_id, "pid": os.getpid(), "key": st.key, "state": "failed",
                                    "error": exc.reason, "status": exc.status, "t": time.time()})
            if sink.writer is not None:
                sink.writer.abort()
            raise
        # "done" before the temp file is renamed or removed: a follower elsewhere
        # must not take a vanished file for a leader that stopped spilling.
        if lock is not None:
            lock.write_sidecar({"id": flight_id, "pid": os.getpid(), "key": st.key, "state": "done",
                                "size": st.size, "t": time.time()})
        # The body is complete and checked: every request of this flight can end now,
        # and new ones join it as hits, instead of all waiting for the commit below.
        st.finish()
        if sink.writer is not None:
            if self.cacheable(sink.head):
                loop = asyncio.get_running_loop()
                writer, head, now, rt = sink.writer, sink.head, self.clock(), sink.response_time
                await loop.run_in_executor(None, lambda: writer.commit(head, now, response_time=rt))
            else:
                sink.writer.abort()

    async def _tail(self, st: _State, lock: _KeyLock) -> _Outcome:
        """Follow another process's fetch of ``st.key`` until it ends (see the module docstring)."""
        loop = asyncio.get_running_loop()
        joined = time.time()
        followed: str | None = None
        body_fd: int | None = None
        pos = 0
        no_live_since: float | None = None
        last_side = float("-inf")
        delay = self.poll_interval
        st.begin_source()
        try:
            while True:
                lock.hold_wait()
                progressed = False
                if body_fd is not None:
                    while True:
                        data = os.pread(body_fd, _READ, pos)
                        if not data:
                            break
                        pos += len(data)
                        st.feed(data)
                        progressed = True

                if lock.try_acquire():  # the leader has ended, one way or another
                    side = lock.read_sidecar()
                    ours = side is not None and side.get("key") == st.key and (
                        side.get("id") == followed if followed is not None
                        else float(side.get("t") or 0) >= joined - 0.01)
                    if ours and side is not None:
                        if side.get("state") == "failed":
                            raise UpstreamFailed(st.key, f"upstream fetch failed: {side.get('error')}",
                                                 status=_status(side.get("status")))
                        if side.get("state") == "done" and body_fd is not None:
                            while True:
                                data = os.pread(body_fd, _READ, pos)
                                if not data:
                                    break
                                pos += len(data)
                                st.feed(data)
                            if pos == side.get("size"):
                                st.finish()
                                return _Outcome.DONE
                    if self._finish_from_store(st):
                        return _Outcome.DONE
                    return _Outcome.LEADER_GONE

                now = loop.time()
                if body_fd is None or now - last_side >= 0.1 or not progressed:
                    side = lock.read_sidecar()
                    last_side = now
                    live = (side is not None and side.get("key") == st.key and side.get("state") in _LIVE
                            and pid_alive(side.get("pid")))
                    if live and side is not None:
                        no_live_since = None
                        if followed is not None and side.get("id") != followed:
                            # our leader ended between two looks and another took the lock
                            if self._finish_from_store(st):
                                return _Outcome.DONE
                            if body_fd is not None:
                                os.close(body_fd)
                            body_fd, pos = None, 0
                            st.begin_source()
                        followed = str(side.get("id"))
                        if side.get("state") == "streaming" and body_fd is None:
                            st.set_head(_head_of(st.key, side))
                            if not side.get("body"):
                                return _Outcome.PASSTHROUGH
                            with contextlib.suppress(FileNotFoundError):  # already renamed: see the end
                                body_fd = os.open(str(side["body"]), os.O_RDONLY | os.O_CLOEXEC)
                    else:
                        if (side is not None and followed is not None and side.get("id") == followed
                                and side.get("state") == "failed"):
                            raise UpstreamFailed(st.key, f"upstream fetch failed: {side.get('error')}",
                                                 status=_status(side.get("status")))
                        if no_live_since is None:
                            no_live_since = now
                        elif now - no_live_since > self.sidecar_grace:
                            return _Outcome.PASSTHROUGH

                if body_fd is not None and not progressed and os.fstat(body_fd).st_nlink == 0:
                    # the leader removed its temp file: failed (sidecar says so) or stopped spilling
                    side = lock.read_sidecar()
                    if side is not None and side.get("id") == followed:
                        if side.get("state") == "failed":
                            raise UpstreamFailed(st.key, f"upstream fetch failed: {side.get('error')}",
                                                 status=_status(side.get("status")))
                        if side.get("state") == "streaming":
                            return _Outcome.PASSTHROUGH

                delay = self.poll_interval if progressed else min(delay * 2, _POLL_MAX)
                await asyncio.sleep(delay)
        finally:
            if body_fd is not None:
                os.close(body_fd)
            lock.drop_wait()

    def _finish_from_store(self, st: _State) -> bool:
        """Complete ``st`` from the stored object if there is one (a new source from byte 0)."""
        hit = self.store.lookup(st.key, self.clock())
        if hit is None:
            return False
        try:
            st.set_head(hit.meta.head)
            _feed_hit(st, hit)
        finally:
            hit.close()
        return True


def _feed_hit(st: _State, hit: Hit) -> None:
    """Feed a stored object into a flight as its source, from RAM or the file, and finish it."""
    st.begin_source()
    if hit.body is not None:
        if hit.body:
            st.feed(hit.body)
    else:
        offset = 0
        while offset < hit.size:
            data = hit.read(offset, _READ)
            if not data:
                break
            st.feed(data)
            offset += len(data)
    st.finish()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CoalesceError):
        return exc.reason
    if isinstance(exc, asyncio.CancelledError):
        return "fetch abandoned"
    return f"{type(exc).__name__}: {exc}"


def _status(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 500 <= value <= 599 else 502


def _head_of(key: str, side: dict[str, Any]) -> ResponseHead:
    try:
        headers = tuple((str(n), str(v)) for n, v in side.get("headers") or ())
        length = side.get("content_length")
        return ResponseHead(int(side["status"]), headers, length if isinstance(length, int) else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamFailed(key, f"unreadable leader sidecar: {exc}") from None
