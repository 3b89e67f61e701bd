"""The on-disk object store of a cache node, shared by all its worker processes.

Layout of a cache directory ``DIR`` (one per node, on SSD)::

    DIR/cache.db, cache.db-wal   diskcache's SQLite index: one row per object
    DIR/xx/yy/<hex>.val          bodies, one file per object (diskcache file values)
    DIR/tmp/<pid>-<n>.part       bodies being received (same filesystem: renamed into place)
    DIR/locks/<hash>.*           per-key fetch locks and sidecars (``cache.coalesce``)
    DIR/manager.lock             held by the worker that runs the eviction policy
    DIR/store.id                 random id naming the manager's socket

**One row per object.**  The index row holds the body's file name and, in
diskcache's ``tag`` column, the ``Meta`` record (head, size, xxh3).  The row is
written in one SQLite transaction after the body file is complete, so a body
never exists without its meta or vice versa; a half-written body only ever
lives under ``tmp/`` and is never looked up.

**Write path.**  ``begin(key, now)`` opens ``tmp/<pid>-<n>.part``;
``Writer.write`` appends and hashes incrementally (xxh3-64);
``Writer.commit(head, now)`` checks the received length against
Content-Length, then *adopts* the temp file into diskcache: a small
``diskcache.Disk`` subclass whose ``store()`` renames a file it is handed
instead of copying bytes (no second copy, no second write), inside
``Cache.set``, which writes the row.  ``abort()`` unlinks the temp file.

**Read path.**  ``lookup(key, now)`` reads the row (WAL: readers never wait for
writers), opens the body (the fd stays valid for sendfile even if the object
is evicted meanwhile) and returns a ``Hit``.  Integrity (DESIGN.md principle
7): before a body is served for the first time in a process its xxh3 is
checked; the verified identity ``(dev, inode, size, mtime_ns)`` is remembered
per key so hot hits do not re-hash, and any change of the file re-verifies.
A mismatch drops the row (only if it still names the same file: a fresh copy
committed meanwhile by another worker survives), tells the policy, counts
``legato_cache_corrupt_total`` and is a miss.  A corrupt meta record is a miss
the same way.  Optional RAM tier: objects up to ``ram_object_max`` bytes hit
twice in this process are kept as verified ``bytes`` (LRU within
``ram_bytes``).  A hot RAM hit is vouched for like a hot disk hit, by one
``fstat`` of the held file (a purge or replacement by any worker unlinks it),
not by reading the row: the row read cost 8 µs a hit in process, and a 30 kB
object behind it served half the requests per second of the same edge
without the tier.  The tier is for small objects only
(``RAM_OBJECT_MAX``, 64 KiB: playlists, manifests, init segments, low-rate
segments): a RAM body goes out with ``sendmsg``, which copies every byte
into the socket, while ``os.sendfile`` hands over page-cache pages.  Above a
few tens of kB the copy costs more than the file: in one run of
``bench/serve_vs_nginx.py`` (variants ``edge`` and ``edge-disk``, when the
tier still took objects up to 1 MiB), a 240 kB segment served from RAM took
~65 µs of CPU per hit against ~51 µs by ``sendfile``, at half the requests
per second.  The kernel's page cache is the RAM tier of large objects.

**Eviction: one policy for all workers, run by an elected manager.**
diskcache's own eviction is off (``eviction_policy='none'``); a
``cache.policy`` policy decides and the store deletes what it returns.  The
policy must see every worker's hits, so it runs in exactly one process: the
worker holding ``flock(DIR/manager.lock)`` (like nginx's cache manager, but
elected among the workers, so ``legato.server`` needs no extra process and a
single-worker node works the same).  Every worker appends ``hit``/``insert``/
``delete`` events to an in-memory deque (a few hundred nanoseconds on the
request path) and a background thread ships them in batches every 20 ms as
datagrams to the manager's Unix socket (abstract namespace, named by the
random id in ``DIR/store.id``).  The manager's thread applies them to the
policy and deletes the victims from the index.  Lost events are tolerated: a
datagram that does not fit the receiver's queue is dropped and counted; lost
hits only blur the ranking, a lost insert is caught by the manager's scan of
rows added since its last scan (every second, a primary-key range), a lost
delete heals by itself (the policy evicts the missing key in turn), and a
full reconcile runs if the counts still disagree after three checks ten
seconds apart.  If the manager process dies, its flock is released and
another worker takes over within half a second, rebuilding the policy from
the index in last-access order (the manager writes access times back to the
index every few seconds and on close).  Hits are thinned before they are
queued: a worker reports a hit on a key at most once per ``hit_interval``
(``[cache] hit_interval``, 1 s by default), as Varnish moves an object in its LRU at most once per
``lru_interval`` (2 s).  A segment served 10,000 times a second would
otherwise cost the manager 10,000 policy updates a second, all holding the
GIL that the event loop needs; thinned, it costs one per worker.  A policy
therefore counts seconds with requests, not requests, for objects requested
more often than that: hot objects all look hot, and nothing that is
requested at least once a second is near eviction under any policy.  The
trace simulator (``cache.sim``) drives the policies with every request.
The same rebuild serves a warm
restart; it runs in the background thread, so a new ``Store`` on an existing
directory serves the old objects at once, however big the index.

Rejected alternatives:

* **The policy under a file lock on shared state** (every worker loads,
  updates and saves the policy's state under ``flock``): the policies are
  in-memory structures (heaps, linked lists, ghost queues); serialising one
  per request is O(n) and puts a cross-process lock on every hit.
* **Access times in SQLite** (diskcache's ``least-recently-used``): one write
  transaction per hit, serialised across workers, and it only expresses
  LRU/LFU, not the policies of ``cache.policy``.
* **A policy per worker with capacity / N**: each sees a fraction of the
  traffic, and an object stored by one worker is invisible to the others'
  accounting, so the byte limit is not enforced.
* **A separate manager process forked by the server**: the election gives
  the same single owner without a change to the process model, and survives
  the death of whichever worker holds it.

**Errors never reach the request path.**  ENOSPC, EIO, EACCES, a full or
broken SQLite file: the writer turns into a no-op (the node keeps serving by
passing upstream bodies through), the error is counted
(``legato_cache_store_errors_total{op}``), the store logs once when it turns
unhealthy and once when it recovers, and exposes ``healthy`` /
``degraded_reason`` (and ``legato_cache_store_healthy``).  While unhealthy,
one ``begin`` per ``retry_interval`` tries to write; the first commit that
succeeds makes the store healthy again.  A busy index (another worker's long
transaction beyond ``db_timeout``) only skips that write.  A worker that
starts on a full or failing disk (diskcache writes its settings when it opens
the index) starts degraded: every lookup misses and every writer is a no-op
until the background thread manages to open the index.  Only configuration
problems (the directory cannot be created, the index cannot be opened for
any other reason) raise ``StoreError``, from the constructor.

Threads: ``lookup``, ``begin`` and the writer may be called from the event
loop or from worker threads (``Writer.commit`` does a SQLite write and a
rename; ``cache.coalesce`` runs it in the default executor).  Create the
store in the worker process (after fork): it starts a thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import socket
import sqlite3
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import diskcache
import xxhash
from diskcache.core import MODE_BINARY, UNKNOWN

from cache.meta import Meta, MetaError, ResponseHead
from cache.policy import EvictionPolicy, make_policy
from legato.proc import pid_alive

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Hit", "Store", "StoreError", "StoreMetrics", "StoreStats", "Writer", "store_metrics"]

log = logging.getLogger("legato.cache.store")

PolicyFactory = Callable[[int], EvictionPolicy]

_OPEN_READ = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_OPEN_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_READ_CHUNK = 1 << 20

FLUSH_INTERVAL = 0.02
"""Seconds between event shipments (and the manager's receive timeout)."""
ELECTION_INTERVAL = 0.5
"""Seconds between attempts of a non-manager worker to become the manager."""
TOUCH_INTERVAL = 5.0
"""Seconds between the manager's write-backs of access times to the index."""
SCAN_INTERVAL = 1.0
"""Seconds between the manager's scans of rows added since the last one (lost inserts)."""
SCAN_SETTLE = 2.0
"""Rows younger than this many seconds are left to their insert event (not scanned yet)."""
DRIFT_INTERVAL = 10.0
"""Seconds between the manager's policy/index count comparisons."""
DRIFT_CHECKS = 3
"""Consecutive count mismatches (beyond DRIFT_TOLERANCE) that trigger a full reconcile."""
DRIFT_TOLERANCE = 8
SWEEP_INTERVAL = 60.0
"""Seconds between sweeps of dead temp files and idle lock files."""
LOCK_MAX_AGE = 60.0
"""Idle lock files older than this many seconds are removed by the sweep."""
TEMP_MAX_AGE = 3600.0
"""Temp files older than this many seconds are removed even if their writer lives."""
DATAGRAM_MAX = 32 * 1024
RAM_OBJECT_MAX = 64 * 1024
"""Largest object the RAM tier keeps (see the module docstring: larger ones go out faster by sendfile)."""
HIT_INTERVAL = 1.0
"""Seconds within which further hits on one key are not reported to the policy (per worker)."""
HIT_MARKS = 65536
"""Keys whose last reported hit a worker remembers (forgotten all at once when full)."""
EVENT_BACKLOG = 100_000
"""Events kept per process while the shipping thread is behind (oldest dropped)."""

# One event: op, now, size, key length; then the UTF-8 key.
_EVENT = struct.Struct(">cdQH")
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.ENOMEM})
HIT, INSERT, DELETE, SYNC = b"H", b"I", b"D", b"S"

Event = tuple[bytes, float, int, str]


class StoreError(Exception):
    """The cache directory is unusable: a configuration problem (raised by ``Store()`` only)."""


# --------------------------------------------------------------------------
# Metrics (prometheus_client imported lazily: legato.server decides on the
# multiprocess directory before the first import)


class StoreMetrics:
    """Prometheus metrics of the store, one set per process (see ``store_metrics``).

    ``legato_cache_corrupt_total``: objects dropped because their body or meta
    failed verification; ``legato_cache_store_errors_total{op}``: I/O and index
    errors; ``legato_cache_evictions_total{policy}``: objects the policy evicted;
    ``legato_cache_truncated_total``: bodies not stored because their length
    did not match Content-Length; ``legato_cache_policy_events_dropped_total``;
    ``legato_cache_store_healthy`` (0/1, the minimum over live workers);
    ``legato_cache_bytes`` and ``legato_cache_objects`` (set by the manager).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.corrupt = Counter("legato_cache_corrupt", "Cached objects dropped because verification failed",
                               registry=r)
        self.errors = Counter("legato_cache_store_errors", "Store I/O and index errors, by operation", ("op",),
                              registry=r)
        self.evictions = Counter("legato_cache_evictions", "Objects evicted, by eviction policy", ("policy",),
                                 registry=r)
        self.truncated = Counter("legato_cache_truncated", "Bodies not stored: length differs from Content-Length",
                                 registry=r)
        self.dropped = Counter("legato_cache_policy_events_dropped", "Hit/insert events lost on the way to the "
                               "eviction policy", registry=r)
        self.healthy = Gauge("legato_cache_store_healthy", "1 when the store can write, 0 when degraded",
                             registry=r, multiprocess_mode="livemin")
        self.bytes = Gauge("legato_cache_bytes", "Bytes of bodies in the store", registry=r,
                           multiprocess_mode="livemax")
        self.objects = Gauge("legato_cache_objects", "Objects in the store", registry=r,
                             multiprocess_mode="livemax")
        self.healthy.set(1)


_metrics: StoreMetrics | None = None
_metrics_lock = threading.Lock()


def store_metrics() -> StoreMetrics:
    """This process's store metrics (created on first use; ``.registry`` for /metrics)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = StoreMetrics()
        return _metrics


# --------------------------------------------------------------------------
# diskcache adapter: adopting files, and the few queries Cache has no API for


class _Adopt:
    """A complete body file to be renamed into diskcache's directory by ``_AdoptingDisk``."""

    __slots__ = ("final", "path", "size")

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.final: str | None = None  # where it went, once renamed


class _AdoptingDisk(diskcache.Disk):
    """diskcache's Disk, except that an ``_Adopt`` value is moved into place, not copied."""

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if isinstance(value, _Adopt):
            filename, full_path = self.filename(key, value)
            # Disk.remove prunes empty directories (os.removedirs), so another
            # worker's eviction may remove the subdirectory between makedirs
            # and rename: retry, as diskcache's own _write does.
            for attempt in range(10):
                try:
                    os.makedirs(os.path.dirname(full_path), exist_ok=True)
                    os.rename(value.path, full_path)
                    break
                except FileNotFoundError:
                    if attempt == 9 or not os.path.exists(value.path):
                        raise
            value.final = full_path
            return value.size, MODE_BINARY, filename, None
        return super().store(value, read, key)  # type: ignore[no-any-return]


class _Index:
    """The diskcache ``Cache`` and every query the store makes of it.

    The public API covers set/delete; the rest (the row of a key, prefix and
    access-order scans, batch deletes) are plain SQL on diskcache 5's
    documented schema ``Cache(rowid, key, raw, store_time, expire_time,
    access_time, access_count, tag, size, mode, filename, value)``, kept in
    this one class.  String keys are stored with ``raw = 1``.
    """

    def __init__(self, directory: str, timeout: float) -> None:
        self.cache = diskcache.Cache(
            directory, timeout=timeout, disk=_AdoptingDisk,
            eviction_policy="none", cull_limit=0, statistics=0, tag_index=0,
            size_limit=2**62, disk_min_file_size=0,
        )
        self.directory = directory

    def _sql(self) -> Callable[..., sqlite3.Cursor]:
        return self.cache._sql  # type: ignore[no-any-return]

    def _con(self) -> sqlite3.Connection:
        return self.cache._con  # type: ignore[no-any-return]

    def row(self, key: str) -> tuple[str | None, int, bytes | None] | None:
        """(filename, size, tag) of ``key``'s row, or None."""
        rows = self._sql()("SELECT filename, size, tag FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
        if not rows:
            return None
        filename, size, tag = rows[0]
        return filename, int(size or 0), (bytes(tag) if tag is not None else None)

    def put(self, key: str, adopt: _Adopt, tag: bytes) -> None:
        self.cache.set(key, adopt, tag=tag, retry=False)

    def delete(self, key: str, filename: str | None = None, retry: bool = True) -> bool:
        """Delete ``key``'s row (only if it names ``filename``, when given) and its file."""
        removed: str | None = None
        with self.cache.transact(retry=retry):
            sql = self._sql()
            rows = sql("SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
            if not rows or (filename is not None and rows[0][1] != filename):
                return False
            sql("DELETE FROM Cache WHERE rowid = ?", (rows[0][0],))
            removed = rows[0][1]
        if removed:
            self.cache.disk.remove(removed)
        return True

    def delete_many(self, keys: Iterable[str], batch: int = 256) -> list[str]:
        """Delete the rows of ``keys`` (missing ones ignored); the keys deleted."""
        deleted: list[str] = []
        pending = list(keys)
        for start in range(0, len(pending), batch):
            files: list[str] = []
            with self.cache.transact(retry=True):
                sql = self._sql()
                for key in pending[start:start + batch]:
                    rows = sql("SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
                    if rows:
                        sql("DELETE FROM Cache WHERE rowid = ?", (rows[0][0],))
                        deleted.append(key)
                        if rows[0][1]:
                            files.append(rows[0][1])
            for name in files:
                self.cache.disk.remove(name)
        return deleted

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (an index range scan: UTF-8 sorts by code point)."""
        if not prefix:
            rows = self._sql()("SELECT key FROM Cache WHERE raw = 1").fetchall()
        else:
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if ord(prefix[-1]) < 0x10FFFF else prefix + "\uffff"
            rows = self._sql()("SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1",
                               (prefix, upper)).fetchall()
        return [k for (k,) in rows if isinstance(k, str) and k.startswith(prefix)]

    def rows_by_access(self) -> list[tuple[str, int, float]]:
        """(key, size, last access) of every object, least recently accessed first."""
        rows = self._sql()("SELECT key, size, access_time FROM Cache WHERE raw = 1 "
                           "ORDER BY access_time, rowid").fetchall()
        return [(k, int(s or 0), float(a or 0.0)) for k, s, a in rows if isinstance(k, str)]

    def rows_after(self, rowid: int, limit: int = 10_000) -> list[tuple[int, str, int, float, float]]:
        """(rowid, key, size, last access, store time) of rows added after ``rowid``, in order."""
        rows = self._sql()("SELECT rowid, key, size, access_time, store_time FROM Cache WHERE rowid > ? "
                           "AND raw = 1 ORDER BY rowid LIMIT ?", (rowid, limit)).fetchall()
        return [(int(r), k, int(s or 0), float(a or 0.0), float(t or 0.0)) for r, k, s, a, t in rows
                if isinstance(k, str)]

    def max_rowid(self) -> int:
        ((value,),) = self._sql()("SELECT MAX(rowid) FROM Cache").fetchall()
        return int(value or 0)

    def touch_many(self, items: Iterable[tuple[float, str]]) -> None:
        """Record last-access times (for the warm-restart order)."""
        with self.cache.transact(retry=True):
            self._con().executemany(
                "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1", list(items))

    def swap_tag(self, key: str, old: bytes, new: bytes) -> bool:
        """Replace ``key``'s meta record if it is still ``old`` (compare and swap)."""
        with self.cache.transact(retry=False):
            cursor = self._sql()("UPDATE Cache SET tag = ? WHERE key = ? AND raw = 1 AND tag = ?", (new, key, old))
            return cursor.rowcount == 1

    def count(self) -> int:
        return len(self.cache)

    def volume(self) -> int:
        """Bytes of all body files (diskcache's running total)."""
        return int(self.cache.reset("size"))


# --------------------------------------------------------------------------
# Values handed to the node


class Hit:
    """A verified stored object: ``meta`` and either an open fd or the bytes.

    Disk hits: ``fileno()`` is an open descriptor for ``os.sendfile`` (valid
    even if the object is evicted meanwhile); RAM hits: ``body`` holds the
    bytes and ``fileno()`` raises.  ``close()`` (or ``with``) releases the fd.
    A hit on a descriptor the store holds open is ``renewable``: see
    ``Store.renew``.
    """

    __slots__ = ("_fd", "_known", "_shared", "body", "meta", "source")

    def __init__(self, meta: Meta, *, fd: int | None = None, body: bytes | None = None,
                 shared: _OpenFile | None = None, known: _Known | None = None) -> None:
        self.meta = meta
        self.body = body
        self._fd = fd if shared is None else shared.fd
        self._shared = shared  # a descriptor held open by the store (see _OpenFile), released, not closed
        self._known = known  # what the held descriptor was verified as (renewable hits only)
        self.source = "ram" if body is not None else "disk"

    @property
    def size(self) -> int:
        return self.meta.size

    @property
    def renewable(self) -> bool:
        """Whether ``Store.renew`` can vouch for this hit again (a held, verified descriptor)."""
        return self._known is not None

    def fileno(self) -> int:
        """The open body file; ``io.UnsupportedOperation`` for a RAM hit."""
        if self._fd is None or self.body is not None:
            import io
            raise io.UnsupportedOperation("RAM hit: the body is in .body" if self.body is not None else "closed")
        return self._fd

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the body (all by default), from RAM or by pread."""
        end = self.size if length is None else min(self.size, offset + length)
        if self.body is not None:
            return self.body[offset:end]
        fd = self.fileno()
        parts = []
        while offset < end:
            data = os.pread(fd, min(_READ_CHUNK, end - offset), offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
        return b"".join(parts)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.release()
        else:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # safety net: a forgotten hit must not leak its descriptor
        if self._fd is not None:  # the usual case, a closed hit, costs one test
            with contextlib.suppress(Exception):
                self.close()

    def __repr__(self) -> str:
        return f"<Hit {self.meta.key} {self.size} B from {self.source}>"


class Writer:
    """Receives one body into a temp file and publishes it atomically, or not at all.

    Never raises on I/O: a failed write turns the writer into a no-op (the
    temp file is removed and the store marked degraded) and ``commit``
    returns None.  ``path`` is the temp file while it exists (followers in
    other processes tail it), None for a no-op writer.
    """

    def __init__(self, store: Store, key: str, now: float, content_length: int | None,
                 fd: int | None, path: str | None) -> None:
        self.store = store
        self.key = key
        self.request_time = now
        self.content_length = content_length
        self.path = path
        self.written = 0
        self._fd = fd
        self._hash = xxhash.xxh3_64()
        self._done = fd is None

    @property
    def active(self) -> bool:
        """True while the body is being written to a temp file."""
        return not self._done

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk`` to the temp file (no-op once failed or finished)."""
        if self._done or not chunk:
            return
        assert self._fd is not None
        view = memoryview(chunk)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            self._discard()
            self.store._error("write", exc, self.request_time)
            return
        self._hash.update(chunk)
        self.written += len(chunk)

    def commit(self, head: ResponseHead, now: float, *, response_time: float | None = None) -> Meta | None:
        """Publish the body with ``head``; the stored Meta, or None if not stored.

        Not stored: a no-op writer, a length differing from the announced
        Content-Length (``head.content_length`` or ``begin``'s), or a store
        error.  ``response_time`` (RFC 9111 §4.2.3) defaults to ``now``.
        """
        if self._done:
            return None
        for expected in (head.content_length, self.content_length):
            if expected is not None and expected != self.written:
                log.info("not caching %s: received %d bytes, Content-Length %d", self.key, self.written, expected)
                store_metrics().truncated.inc()
                self.store._count("truncated")
                self.abort()
                return None
        assert self._fd is not None and self.path is not None
        try:
            os.close(self._fd)
        except OSError as exc:
            self._fd = None
            self._discard()
            self.store._error("write", exc, self.request_time)
            return None
        self._fd = None
        self._done = True
        meta = Meta.from_head(self.key, head, size=self.written, xxh3=self._hash.hexdigest(),
                              request_time=self.request_time,
                              response_time=now if response_time is None else response_time)
        if not self.store._publish(self.key, self.path, meta, now):
            return None
        return meta

    def abort(self) -> None:
        """Forget the body: the temp file is removed, nothing is published."""
        if not self._done:
            self._discard()

    def _discard(self) -> None:
        self._done = True
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.path = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


@dataclass(frozen=True)
class StoreStats:
    """A snapshot for /healthz, /metrics and tests.

    ``bytes``/``objects`` are the whole store (all workers); ``evictions`` are
    counted by the manager (zero in other workers); the other counters are
    this process's.
    """

    bytes: int
    objects: int
    capacity: int
    manager: bool
    policy_used: int | None  # bytes the policy accounts (manager only)
    evictions: int
    corrupt: int
    errors: int
    truncated: int
    events_dropped: int
    ram_bytes: int
    ram_objects: int
    healthy: bool
    degraded_reason: str | None


# --------------------------------------------------------------------------
# Per-process memories: verified identities and the RAM tier


@dataclass(slots=True)
class _Known:
    filename: str
    tag: bytes
    meta: Meta
    ident: tuple[int, int, int, int]  # dev, inode, size, mtime_ns of the verified file
    trusted_until: float  # monotonic time after which the body is hashed again


def _intact(known: _Known, st: os.stat_result) -> bool:
    """The file ``st`` describes is still the verified object: linked, same identity, within its trust period."""
    return bool(st.st_nlink) and time.monotonic() < known.trusted_until and (
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == known.ident


class _OpenFile:
    """A verified body file kept open for hot hits, shared by the hits using it.

    Reopening a file per hit costs an open and a close (and a GIL hand-off
    each); nginx's ``open_file_cache`` makes the same trade.  A held
    descriptor still names its file after eviction or purge, so every hit
    checks it with one ``fstat``: a link count of 0 (unlinked) or a changed
    identity retires it.  Retired descriptors close when their last hit
    releases them.  Reference counts change on the event loop's thread and
    under the store's lock.
    """

    __slots__ = ("fd", "filename", "lock", "refs", "retired")

    def __init__(self, fd: int, filename: str, lock: threading.RLock) -> None:
        self.fd, self.filename, self.lock = fd, filename, lock
        self.refs = 0
        self.retired = False

    def acquire(self) -> _OpenFile:
        self.refs += 1
        return self

    def release(self) -> None:
        with self.lock:
            self.refs -= 1
            if not self.retired or self.refs:
                return
        os.close(self.fd)

    def retire(self) -> None:
        """No new hits; close once the current ones are done (call under the lock)."""
        if not self.retired:
            self.retired = True
            if not self.refs:
                os.close(self.fd)


OPEN_FILES = 256
"""Body files each worker keeps open for its hottest objects (see ``_OpenFile``)."""

# Why a verified identity is trusted only for a while, and only when checked well
# after the file's last write: file times come from a coarse clock (a few ms), so a
# byte changed within the same tick as the verification leaves (size, mtime)
# untouched; and bit rot changes no metadata at all.  An identity verified within
# MTIME_SLACK of its mtime is re-hashed on the next hit; any identity is re-hashed
# after REVERIFY_SECONDS, bounding how long silent corruption can be served.
MTIME_SLACK = 0.05
REVERIFY_SECONDS = 300.0


class _RamTier:
    """Verified bodies of small hot objects, least recently used first, within ``cap`` bytes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._items: OrderedDict[str, tuple[str, bytes, Meta, bytes]] = OrderedDict()  # filename, tag, meta, body
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, filename: str, tag: bytes) -> tuple[Meta, bytes] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] != filename or item[1] != tag:
                return None
            self._items.move_to_end(key)
            return item[2], item[3]

    def put(self, key: str, filename: str, tag: bytes, meta: Meta, body: bytes) -> None:
        if len(body) > self.cap:
            return
        with self._lock:
            self._pop(key)
            self._items[key] = (filename, tag, meta, body)
            self.used += len(body)
            while self.used > self.cap:
                _, old = self._items.popitem(last=False)
                self.used -= len(old[3])

    def drop(self, key: str) -> None:
        with self._lock:
            self._pop(key)

    def drop_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k.startswith(prefix)]:
                self._pop(key)

    def _pop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= len(old[3])


# --------------------------------------------------------------------------
# The store


class Store:
    """The cache directory of one node: objects, index, policy (see the module docstring).

    ``capacity``: bytes of bodies the policy may keep.  ``policy``: a name of
    ``cache.policy.POLICIES`` or a factory ``capacity -> EvictionPolicy``.
    ``ram_bytes`` / ``ram_object_max``: the per-process RAM tier (0: off).
    ``db_timeout``: seconds a write waits for the index before it is skipped.
    ``retry_interval``: seconds between write attempts while degraded.
    ``hit_interval``: a key's hits are reported to the policy at most once
    per this many seconds per process (0: every hit).
    """

    def __init__(self, directory: str | os.PathLike[str], capacity: int, *,
                 policy: str | PolicyFactory = "lru", ram_bytes: int = 0, ram_object_max: int = RAM_OBJECT_MAX,
                 db_timeout: float = 1.0, retry_interval: float = 1.0, verified_max: int = 1 << 18,
                 hit_interval: float = HIT_INTERVAL) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 bytes, got {capacity}")
        self.directory = Path(directory)
        self.capacity = capacity
        self.tmp_dir = self.directory / "tmp"
        self.lock_dir = self.directory / "locks"
        self.retry_interval = retry_interval
        self._policy_factory: PolicyFactory = (
            (lambda cap: make_policy(policy, cap)) if isinstance(policy, str) else policy)
        self._metrics = store_metrics()
        try:
            for d in (self.directory, self.tmp_dir, self.lock_dir):
                d.mkdir(parents=True, exist_ok=True)
            token = _store_id(self.directory)
        except OSError as exc:
            raise StoreError(f"cannot use cache directory {self.directory}: {exc}") from exc
        self._address = b"\0legato-store-" + token.encode()
        self._db_timeout = db_timeout

        self._lock = threading.Lock()  # counters and health
        self._healthy = True
        self._reason: str | None = None
        self._next_probe = float("-inf")
        self._counters = {"corrupt": 0, "errors": 0, "truncated": 0, "evictions": 0, "dropped": 0}
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._known_lock = threading.RLock()  # re-entrant: a collected Hit may release from within
        self._open: OrderedDict[str, _OpenFile] = OrderedDict()  # key -> held body file (under _known_lock)
        self._verified_max = verified_max
        self._index: _Index | None = None
        self._next_open = 0.0
        self._open_index(at_start=True)
        self._ram = _RamTier(ram_bytes) if ram_bytes > 0 else None
        self._ram_object_max = min(ram_object_max, ram_bytes)
        self._tmp_seq = itertools.count()

        self._events: deque[Event] = deque(maxlen=EVENT_BACKLOG)
        self._hit_interval = hit_interval
        self._hit_marks: dict[str, float] = {}  # key -> when its last hit was reported
        self._syncs: dict[str, threading.Event] = {}
        self._tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._tx.settimeout(0.05)
        self._manager: _Manager | None = None
        self._elected = False
        self._manager_fd = os.open(self.directory / "manager.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._closed = False
        self._try_become_manager()
        self._thread = threading.Thread(target=self._run, name=f"legato-store-{self.directory.name}", daemon=True)
        self._thread.start()

    # -- health ---------------------------------------------------------------

    def _open_index(self, *, at_start: bool = False) -> bool:
        """Open the SQLite index; on a disk error start degraded and retry later.

        Only a full or failing disk degrades (the node must keep serving after
        a restart on a full SSD); anything else at start (permissions, a
        corrupt database file) is a configuration problem: ``StoreError``.
        """
        try:
            self._index = _Index(str(self.directory), self._db_timeout)
        except (OSError, sqlite3.Error) as exc:
            message = str(exc).lower()
            disk = (isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS) or any(
                m in message for m in ("disk is full", "disk i/o error", "database is locked", "readonly"))
            if at_start and not disk:
                raise StoreError(f"cannot open the index of {self.directory}: {exc}") from exc
            self._next_open = time.monotonic() + self.retry_interval
            self._error("open", exc)
            return False
        if not at_start:
            self._recovered()
        return True

    @property
    def healthy(self) -> bool:
        """False while writes fail (see ``degraded_reason``)."""
        return self._healthy

    @property
    def degraded_reason(self) -> str | None:
        """Why the store is degraded (first error since it was last healthy), or None."""
        return self._reason

    @property
    def is_manager(self) -> bool:
        """True when this process holds the manager role (its policy may still be building)."""
        return self._elected

    @property
    def policy(self) -> EvictionPolicy | None:
        """The eviction policy once built, in the manager process only (read-only use, e.g. tests)."""
        return self._manager.policy if self._manager is not None else None

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _error(self, op: str, exc: BaseException, now: float | None = None) -> None:
        """Count a store error; on the first one since healthy, log it and degrade."""
        self._metrics.errors.labels(op).inc()
        busy = isinstance(exc, diskcache.Timeout) or (
            isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc))
        with self._lock:
            self._counters["errors"] += 1
            if busy:
                return
            if now is not None:
                self._next_probe = now + self.retry_interval
            if not self._healthy:
                return
            self._healthy = False
            reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc) or type(exc).__name__
            self._reason = f"{op}: {reason}"
        self._metrics.healthy.set(0)
        log.warning("cache store %s degraded (%s): not caching, passing upstream bodies through until a write "
                    "succeeds", self.directory, self._reason)

    def _recovered(self) -> None:
        if self._healthy:
            return
        with self._lock:
            if self._healthy:
                return
            self._healthy, reason, self._reason = True, self._reason, None
        self._metrics.healthy.set(1)
        log.warning("cache store %s recovered (was: %s)", self.directory, reason)

    # -- write path -------------------------------------------------------------

    def begin(self, key: str, now: float, *, content_length: int | None = None) -> Writer:
        """A writer for ``key``'s body (a no-op writer when the store cannot write now).

        ``now`` is the request time (RFC 9111 §4.2.3) and paces write attempts
        while the store is degraded.
        """
        if self._index is None or (not self._healthy and now < self._next_probe):
            return Writer(self, key, now, content_length, None, None)
        path = str(self.tmp_dir / f"{os.getpid()}-{next(self._tmp_seq)}-{os.urandom(4).hex()}.part")
        try:
            fd = os.open(path, _OPEN_TEMP, 0o644)
        except FileNotFoundError:  # tmp/ removed under us: recreate once
            try:
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, _OPEN_TEMP, 0o644)
            except OSError as exc:
                self._error("begin", exc, now)
                return Writer(self, key, now, content_length, None, None)
        except OSError as exc:
            self._error("begin", exc, now)
            return Writer(self, key, now, content_length, None, None)
        with self._lock:
            if not self._healthy:
                self._next_probe = now + self.retry_interval
        return Writer(self, key, now, content_length, fd, path)

    def _publish(self, key: str, path: str, meta: Meta, now: float) -> bool:
        """Adopt ``path`` as ``key``'s body with ``meta`` in one index row."""
        adopt = _Adopt(path, meta.size)
        try:
            if self._index is None:
                raise OSError(errno.EIO, "index unavailable")
            self._index.put(key, adopt, meta.to_bytes())
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            for leftover in (adopt.final, path):
                if leftover:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            self._error("commit", exc, now)
            return False
        self._forget_local(key)
        self._emit(INSERT, now, meta.size, key)
        self._recovered()
        return True

    # -- read path ------------------------------------------------------------------

    def lookup(self, key: str, now: float) -> Hit | None:
        """The verified object stored under ``key``, or None (never raises for I/O).

        Counts as a request of ``key`` for the eviction policy.
        """
        index = self._index
        if index is None:
            return None
        hit = self._lookup_known(key, index.directory, now)
        if hit is not None:
            return hit
        try:
            row = index.row(key)
        except (sqlite3.Error, OSError) as exc:
            self._error("lookup", exc)
            return None
        if row is None:
            return None
        filename, size, tag = row
        if filename is None or tag is None:
            self._drop_corrupt(key, filename, "row without body file or meta")
            return None
        with self._known_lock:
            known = self._known.get(key)
        if known is not None and known.filename != filename:
            known = None
        if known is not None and known.tag != tag:  # freshened (update_meta): same file, new record
            try:
                fresh = Meta.from_bytes(tag)
            except MetaError:
                fresh = None
            if fresh is not None and (fresh.key, fresh.size, fresh.xxh3) == (key, size, known.meta.xxh3):
                known = _Known(filename, tag, fresh, known.ident, known.trusted_until)
                self._remember(key, known)
            else:
                known = None
        if known is not None:
            meta = known.meta
        else:
            try:
                meta = Meta.from_bytes(tag)
                if meta.key != key or meta.size != size:
                    raise MetaError(f"meta of {meta.key!r} ({meta.size} B) in the row of {key!r} ({size} B)")
            except MetaError as exc:
                self._drop_corrupt(key, filename, f"bad meta: {exc}")
                return None
        try:
            fd = os.open(os.path.join(index.directory, filename), _OPEN_READ)
        except FileNotFoundError:
            # Deleted after we read the row (eviction, purge, replacement), or lost.
            self._drop_if_still(key, filename)
            return None
        except OSError as exc:
            self._error("lookup", exc)
            return None
        try:
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            mono = time.monotonic()
            rehash = known is None or known.ident != ident or mono >= known.trusted_until
            promote = known is not None and self._ram is not None and meta.size <= self._ram_object_max
            if rehash or promote:
                ok, body = self._verify(fd, meta, keep=promote)  # a second hit here promotes to RAM
                if not ok:
                    os.close(fd)
                    self._drop_corrupt(key, filename, "checksum mismatch")
                    return None
                settled = time.time() - st.st_mtime > MTIME_SLACK
                self._remember(key, _Known(filename, tag, meta, ident, mono + (REVERIFY_SECONDS if settled else 0.0)))
                if promote and body is not None:
                    assert self._ram is not None
                    self._ram.put(key, filename, tag, meta, body)
                    os.close(fd)
                    self._note_hit(key, now)
                    return Hit(meta, body=body)
        except OSError as exc:
            os.close(fd)
            self._error("lookup", exc)
            return None
        self._note_hit(key, now)
        return Hit(meta, fd=fd)

    def _lookup_known(self, key: str, directory: str, now: float) -> Hit | None:
        """The hot path: an object verified here before, reopened without reading the index.

        Sound because diskcache gives every write a fresh file name and unlinks the
        file when its row is deleted, purged, evicted or replaced: if the remembered
        file still opens with the verified identity, it is still the object.  Any
        doubt (gone, changed, trust expired) falls back to the index.  A small
        object's body comes from the RAM tier (read into it from the held file
        the first time), vouched for the same way, without reading the index.
        """
        known = self._known.get(key)  # each read is atomic under the GIL; a retired `held` is caught below
        held = self._open.get(key)
        if known is None:
            return None
        if held is not None and held.filename == known.filename:
            try:
                st = os.fstat(held.fd)
            except OSError:
                st = None
            if st is not None and _intact(known, st):
                shared = None
                with self._known_lock:
                    if not held.retired:
                        self._open.move_to_end(key)
                        self._note_hit(key, now)
                        shared = held.acquire()
                if shared is not None:
                    return Hit(known.meta, shared=shared, known=known, body=self._ram_body(key, known, shared.fd))
        if held is not None:
            self._drop_open(key, held)
        try:
            fd = os.open(os.path.join(directory, known.filename), _OPEN_READ)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not _intact(known, st):
            os.close(fd)
            return None
        self._note_hit(key, now)
        held = _OpenFile(fd, known.filename, self._known_lock)
        with self._known_lock:
            old = self._open.pop(key, None)
            if old is not None:
                old.retire()
            self._open[key] = held
            while len(self._open) > OPEN_FILES:
                self._open.popitem(last=False)[1].retire()
            shared = held.acquire()
        return Hit(known.meta, shared=shared, known=known, body=self._ram_body(key, known, shared.fd))

    def _ram_body(self, key: str, known: _Known, fd: int) -> bytes | None:
        """A small object's body from the RAM tier, read into it from ``fd`` (its held, verified file) if absent.

        None for objects the RAM tier does not take (or a failed read: the hit goes out from the file).
        """
        if self._ram is None or known.meta.size > self._ram_object_max:
            return None
        cached = self._ram.get(key, known.filename, known.tag)
        if cached is not None:
            return cached[1]
        try:
            body = os.pread(fd, known.meta.size, 0)
        except OSError:
            return None
        if len(body) != known.meta.size:
            return None
        self._ram.put(key, known.filename, known.tag, known.meta, body)
        return body

    def renew(self, hit: Hit, now: float) -> bool:
        """Whether a renewable ``hit``, still open, is still the stored object; if so it counts as a request.

        For a caller that sends one hit again and again within a moment (the
        fast path's hot replies): the checks ``lookup`` makes on a descriptor
        it holds open (still linked, same identity, within the trust period,
        still what this worker knows under that key), without opening
        anything.  A purge, eviction or replacement in any worker unlinks the
        file, so it fails from then on.  Other hits: False.
        """
        known, fd = hit._known, hit._fd
        if known is None or fd is None or self._closed or self._known.get(known.meta.key) is not known:
            return False
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        if not _intact(known, st):
            return False
        self._note_hit(known.meta.key, now)
        return True

    def _drop_open(self, key: str, held: _OpenFile | None = None) -> None:
        """Stop holding ``key``'s body file open (only ``held``, when given)."""
        with self._known_lock:
            current = self._open.get(key)
            if current is not None and (held is None or current is held):
                del self._open[key]
                current.retire()

    def __contains__(self, key: object) -> bool:
        """True if the index has a row for ``key`` (not verified, not a request)."""
        if not isinstance(key, str) or self._index is None:
            return False
        try:
            return self._index.row(key) is not None
        except (sqlite3.Error, OSError):
            return False

    @staticmethod
    def _verify(fd: int, meta: Meta, keep: bool) -> tuple[bool, bytes | None]:
        """Hash the file behind ``fd``; (matches meta, the bytes if ``keep``)."""
        if os.fstat(fd).st_size != meta.size:
            return False, None
        hasher = xxhash.xxh3_64()
        parts: list[bytes] = []
        offset = 0
        while offset < meta.size:
            data = os.pread(fd, min(_READ_CHUNK, meta.size - offset), offset)
            if not data:
                return False, None
            hasher.update(data)
            if keep:
                parts.append(data)
            offset += len(data)
        if hasher.hexdigest() != meta.xxh3:
            return False, None
        return True, (b"".join(parts) if keep else None)

    def _remember(self, key: str, known: _Known) -> None:
        with self._known_lock:
            self._known[key] = known
            self._known.move_to_end(key)
            while len(self._known) > self._verified_max:
                self._known.popitem(last=False)

    def _forget_local(self, key: str) -> None:
        with self._known_lock:
            self._known.pop(key, None)
        self._drop_open(key)
        if self._ram is not None:
            self._ram.drop(key)

    def _drop_corrupt(self, key: str, filename: str | None, why: str) -> None:
        """Remove a row that failed verification (if it still names the same file)."""
        log.warning("cache object %s is corrupt (%s): dropped", key, why)
        self._count("corrupt")
        self._metrics.corrupt.inc()
        self._forget_local(key)
        try:
            if self._index is None:
                return
            if filename is None:
                self._index.delete(key, retry=False)
            else:
                self._index.delete(key, filename, retry=False)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._error("delete", exc)
        self._emit(DELETE, 0.0, 0, key)

    def _drop_if_still(self, key: str, filename: str) -> None:
        """The body file of a row is missing: drop the row if it still names that file."""
        try:
            row = self._index.row(key) if self._index is not None else None
        except (sqlite3.Error, OSError):
            return
        if row is not None and row[0] == filename:
            self._drop_corrupt(key, filename, "body file missing")

    def update_meta(self, current: Meta, new: Meta) -> bool:
        """Replace the stored record ``current`` by ``new`` (same body), e.g. after a 304.

        Atomic compare-and-swap on the index row: False (nothing changed) if
        the object was replaced, freshened or removed meanwhile by any
        worker, if ``new`` describes another body, or on a store error.
        Verification of the body is kept (the file did not change).
        """
        if (new.key, new.size, new.xxh3, new.status) != (current.key, current.size, current.xxh3, current.status):
            return False
        if self._index is None:
            return False
        try:
            swapped = self._index.swap_tag(current.key, current.to_bytes(), new.to_bytes())
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._error("update", exc)
            return False
        if swapped and self._ram is not None:
            self._ram.drop(current.key)
        return swapped

    # -- deletion -------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was stored.  Never raises for I/O."""
        self._forget_local(key)
        if self._index is None:
            log.warning("cannot delete %s from %s: index unavailable", key, self.directory)
            return False
        try:
            deleted = self._index.delete(key)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._error("delete", exc)
            return False
        self._emit(DELETE, 0.0, 0, key)
        return deleted

    def purge_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix`` (e.g. ``/tracks/t1/``); how many.

        Takes one index transaction per 256 objects: call it off the event loop
        for big purges.
        """
        if self._ram is not None:
            self._ram.drop_prefix(prefix)
        with self._known_lock:
            for key in [k for k in self._known if k.startswith(prefix)]:
                del self._known[key]
        if self._index is None:
            log.warning("cannot purge %s from %s: index unavailable", prefix, self.directory)
            return 0
        try:
            deleted = self._index.delete_many(self._index.keys_with_prefix(prefix))
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._error("delete", exc)
            return 0
        for key in deleted:
            self._emit(DELETE, 0.0, 0, key)
        return len(deleted)

    # -- stats ------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Counters and sizes (index queries; cheap, but not for every request)."""
        try:
            if self._index is None:
                raise OSError(errno.EIO, "index unavailable")
            volume, count = self._index.volume(), self._index.count()
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            if self._index is not None:
                self._error("stats", exc)
            volume = count = -1
        manager = self._manager
        with self._lock:
            c = dict(self._counters)
        return StoreStats(
            bytes=volume, objects=count, capacity=self.capacity, manager=manager is not None,
            policy_used=manager.policy.used if manager is not None else None,
            evictions=c["evictions"], corrupt=c["corrupt"], errors=c["errors"], truncated=c["truncated"],
            events_dropped=c["dropped"],
            ram_bytes=self._ram.used if self._ram is not None else 0,
            ram_objects=len(self._ram) if self._ram is not None else 0,
            healthy=self._healthy, degraded_reason=self._reason,
        )

    # -- policy events -----------------------------------------------------------------------

    def _note_hit(self, key: str, now: float) -> None:
        """Tell the policy of a hit on ``key``, at most once per ``hit_interval`` seconds (this worker)."""
        marks = self._hit_marks
        mark = marks.get(key)
        if mark is not None and 0.0 <= now - mark < self._hit_interval:
            return
        if len(marks) >= HIT_MARKS:
            marks.clear()
        marks[key] = now
        self._emit(HIT, now, 0, key)

    def _emit(self, op: bytes, now: float, size: int, key: str) -> None:
        if len(self._events) == EVENT_BACKLOG:
            self._count("dropped")
            self._metrics.dropped.inc()
        self._events.append((op, now, size, key))

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until the policy has applied every event this process emitted so far.

        True when done.  In a worker that is not the manager the events are
        only shipped (there is no acknowledgement): returns False.
        """
        if not self._elected or self._closed:
            self._kick.set()
            return False
        token = os.urandom(8).hex()
        done = self._syncs[token] = threading.Event()
        self._events.append((SYNC, 0.0, 0, token))
        self._kick.set()
        try:
            return done.wait(timeout)
        finally:
            self._syncs.pop(token, None)

    def _ship(self) -> None:
        """Send queued events to the manager's socket in batches (background thread)."""
        batch = bytearray()
        while True:
            try:
                op, now, size, key = self._events.popleft()
            except IndexError:
                break
            if op == SYNC:
                continue
            raw = key.encode("utf-8", "surrogatepass")[:65535]
            record = _EVENT.pack(op, now, size, len(raw)) + raw
            if len(batch) + len(record) > DATAGRAM_MAX:
                self._send(bytes(batch))
                batch.clear()
            batch += record
        if batch:
            self._send(bytes(batch))

    def _send(self, datagram: bytes) -> None:
        try:
            self._tx.sendto(datagram, self._address)
        except OSError:  # no manager right now, or its queue is full: lost events are tolerated
            n = _count_events(datagram)
            self._count("dropped", n)
            self._metrics.dropped.inc(n)

    # -- manager election and the background thread -------------------------------------------

    def _try_become_manager(self) -> None:
        """Take the manager role if nobody holds it (the policy is built by the thread)."""
        if self._index is None:
            return
        try:
            fcntl.flock(self._manager_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        self._elected = True

    def _build_manager(self) -> None:
        """In the background thread: bind the event socket and rebuild the policy from the index.

        Done here, not in the constructor, so a warm restart serves lookups at
        once however big the index is.
        """
        try:
            self._manager = _Manager(self)
        except Exception:
            log.exception("cache store %s: could not start the eviction manager", self.directory)
            self._elected = False
            fcntl.flock(self._manager_fd, fcntl.LOCK_UN)
            return
        log.info("cache store %s: this worker (pid %d) runs the eviction policy (%d objects)",
                 self.directory, os.getpid(), len(self._manager.policy))

    def _run(self) -> None:
        next_election = time.monotonic() + ELECTION_INTERVAL
        try:
            while not self._stop.is_set():
                if self._index is None:
                    if time.monotonic() >= self._next_open and self._open_index():
                        log.info("cache store %s: index open", self.directory)
                        continue
                    self._ship()
                    self._kick.wait(FLUSH_INTERVAL)
                    self._kick.clear()
                    continue
                if self._elected and self._manager is None:
                    self._build_manager()
                manager = self._manager
                if manager is not None:
                    manager.step(FLUSH_INTERVAL)
                    continue
                self._ship()
                if time.monotonic() >= next_election:
                    next_election = time.monotonic() + ELECTION_INTERVAL
                    self._try_become_manager()
                    if self._elected:
                        continue
                self._kick.wait(FLUSH_INTERVAL)
                self._kick.clear()
            if self._manager is not None:
                self._manager.step(0.0)
                self._manager.shutdown()
            else:
                self._ship()
        except Exception:  # the thread must not die silently: the policy would stop
            log.exception("cache store %s: background thread failed", self.directory)
        finally:
            if self._index is not None:
                self._index.cache.close()  # this thread's SQLite connection

    def close(self) -> None:
        """Stop the background thread (flushing events and access times) and release everything."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._kick.set()
        self._thread.join()
        manager, self._manager = self._manager, None
        self._elected = False
        if manager is not None:
            manager.close()
        self._tx.close()
        with self._known_lock:
            for held in self._open.values():
                held.retire()
            self._open.clear()
        os.close(self._manager_fd)  # releases the manager lock
        if self._index is not None:
            self._index.cache.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count_events(datagram: bytes) -> int:
    n, offset = 0, 0
    while offset + _EVENT.size <= len(datagram):
        offset += _EVENT.size + _EVENT.unpack_from(datagram, offset)[3]
        n += 1
    return n


def _decode(datagram: bytes) -> list[Event]:
    events: list[Event] = []
    offset = 0
    while offset + _EVENT.size <= len(datagram):
        op, now, size, length = _EVENT.unpack_from(datagram, offset)
        offset += _EVENT.size
        key = datagram[offset:offset + length].decode("utf-8", "surrogatepass")
        offset += length
        events.append((op, now, size, key))
    return events




class _Manager:
    """The eviction policy and its upkeep, in the one elected process (its background thread).

    Built on election: binds the event socket, rebuilds the policy from the
    index in last-access order (deleting what no longer fits), then applies
    events; every few seconds it writes access times back, reconciles drift
    between policy and index, and sweeps dead temp files and idle locks.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        assert store._index is not None
        self.index = store._index
        self.rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.rx.bind(store._address)
        except OSError:
            self.rx.close()
            raise
        self.policy: EvictionPolicy
        self._touched: dict[str, float] = {}
        self._last_stamp = 0.0
        self._victims: list[str] = []
        now = time.monotonic()
        self._next_touch = now + TOUCH_INTERVAL
        self._next_scan = now + SCAN_INTERVAL
        self._next_drift = now + DRIFT_INTERVAL
        self._next_sweep = now + 1.0
        self._drift_seen = 0
        self._scanned = 0  # highest rowid the policy has seen
        self.rebuild()

    def rebuild(self) -> None:
        """Fill a fresh policy from the index, least recently accessed first."""
        policy = self.store._policy_factory(self.store.capacity)
        victims: list[str] = []
        self._scanned = self.index.max_rowid()
        for key, size, accessed in self.index.rows_by_access():
            victims.extend(policy.insert(key, size, accessed))
        self.policy = policy
        self.store._metrics.evictions.labels(getattr(policy, "name", "unknown"))  # exported at 0 from the start
        self._evict([v for v in victims if v not in policy])
        self._update_gauges()

    def step(self, timeout: float) -> None:
        """Apply local events, then remote ones (waiting up to ``timeout``), then upkeep."""
        store = self.store
        self._apply_local()
        if timeout > 0:
            self.rx.settimeout(timeout)
            try:
                self._apply(_decode(self.rx.recv(1 << 20)))
            except TimeoutError:
                pass
            except OSError as exc:
                log.warning("cache store manager: receive failed: %s", exc)
        self.rx.setblocking(False)
        for _ in range(256):
            try:
                self._apply(_decode(self.rx.recv(1 << 20)))
            except (BlockingIOError, InterruptedError):
                break
        self._apply_local()
        self._flush_victims()
        now = time.monotonic()
        try:
            if now >= self._next_touch:
                self._next_touch = now + TOUCH_INTERVAL
                self._flush_touches()
                self._update_gauges()
            if now >= self._next_scan:
                self._next_scan = now + SCAN_INTERVAL
                self._scan_new_rows(time.time())
            if now >= self._next_drift:
                self._next_drift = now + DRIFT_INTERVAL
                self._check_drift()
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_INTERVAL
                self.sweep(time.time())
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            store._error("manager", exc)

    def _apply_local(self) -> None:
        events = self.store._events
        batch: list[Event] = []
        while True:
            try:
                batch.append(events.popleft())
            except IndexError:
                break
        if batch:
            self._apply(batch)

    def _apply(self, events: list[Event]) -> None:
        policy = self.policy
        for op, now, size, key in events:
            if op == HIT:
                policy.hit(key, now)
                self._touched[key] = self._stamp()
            elif op == INSERT:
                self._victims.extend(policy.insert(key, size, now))
                self._touched[key] = self._stamp()
            elif op == DELETE:
                policy.remove(key)
                self._touched.pop(key, None)
            elif op == SYNC:
                self._flush_victims()
                done = self.store._syncs.get(key)
                if done is not None:
                    done.set()

    def _stamp(self) -> float:
        """Wall-clock access time, strictly increasing so event order survives a restart."""
        self._last_stamp = max(time.time(), self._last_stamp + 1e-6)
        return self._last_stamp

    def _flush_victims(self) -> None:
        if not self._victims:
            return
        victims, self._victims = self._victims, []
        # a key evicted and re-inserted within one batch stays
        self._evict([v for v in dict.fromkeys(victims) if v not in self.policy])

    def _evict(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            deleted = self.index.delete_many(keys)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self.store._error("evict", exc)
            return
        for key in keys:
            self._touched.pop(key, None)
            self.store._forget_local(key)
        if deleted:
            self.store._count("evictions", len(deleted))
            self.store._metrics.evictions.labels(getattr(self.policy, "name", "unknown")).inc(len(deleted))

    def _flush_touches(self) -> None:
        if self._touched:
            touched, self._touched = self._touched, {}
            self.index.touch_many((t, k) for k, t in touched.items())

    def _update_gauges(self) -> None:
        metrics = self.store._metrics
        with contextlib.suppress(sqlite3.Error, OSError, diskcache.Timeout):
            metrics.bytes.set(self.index.volume())
            metrics.objects.set(self.index.count())

    def _scan_new_rows(self, wall: float) -> None:
        """Offer the policy rows added since the last scan that it does not know (lost insert events).

        Cheap (a primary-key range); rows younger than SCAN_SETTLE are left to
        their own insert event, still on its way.  A *deleted* row the policy
        still counts (lost delete event) heals by itself: it is evicted in
        turn, and deleting a missing row is a no-op.
        """
        victims: list[str] = []
        while True:
            rows = self.index.rows_after(self._scanned)
            for rowid, key, size, accessed, stored in rows:
                if stored > wall - SCAN_SETTLE:
                    self._flush(victims)
                    return
                self._scanned = rowid
                if key not in self.policy:
                    victims.extend(self.policy.insert(key, size, accessed))
            if len(rows) < 10_000:
                break
        self._flush(victims)

    def _flush(self, victims: list[str]) -> None:
        self._evict([v for v in dict.fromkeys(victims) if v not in self.policy])

    def _check_drift(self) -> None:
        """Fully reconcile policy and index when their counts stay apart (DRIFT_CHECKS in a row)."""
        if abs(self.index.count() - len(self.policy)) <= DRIFT_TOLERANCE:
            self._drift_seen = 0
            return
        self._drift_seen += 1
        if self._drift_seen >= DRIFT_CHECKS:
            self._drift_seen = 0
            self.reconcile()

    def reconcile(self) -> None:
        """Make the policy hold exactly the index's objects (lost events, racing deletes)."""
        rows = self.index.rows_by_access()
        present = {key for key, _, _ in rows}
        policy = self.policy
        for key in [k for k in policy.keys_by_priority() if k not in present]:
            policy.remove(key)
        victims: list[str] = []
        for key, size, accessed in rows:
            if key not in policy:
                victims.extend(policy.insert(key, size, accessed))
        self._evict([v for v in dict.fromkeys(victims) if v not in policy])
        log.info("cache store %s: policy reconciled with the index (%d objects)", self.store.directory,
                 len(policy))

    def sweep(self, now: float) -> None:
        """Remove temp files of dead writers (or very old ones) and idle lock files."""
        for entry in _scandir(self.store.tmp_dir):
            name = entry.name
            pid_part = name.split("-", 1)[0]
            try:
                age = now - entry.stat().st_mtime
            except OSError:
                continue
            dead = pid_part.isdigit() and not pid_alive(int(pid_part))
            if dead or age > TEMP_MAX_AGE:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        sweep_locks(self.store.lock_dir, now, LOCK_MAX_AGE)

    def shutdown(self) -> None:
        """Last upkeep before the thread ends: victims and access times reach the index."""
        self._apply_local()
        self._flush_victims()
        with contextlib.suppress(sqlite3.Error, OSError, diskcache.Timeout):
            self._flush_touches()

    def close(self) -> None:
        self.rx.close()


def _store_id(directory: Path) -> str:
    """The random id of a cache directory (``DIR/store.id``), made by whoever opens it first.

    It names the manager's abstract socket.  Naming it after the directory's
    device and inode was wrong: a directory deleted and made again can get the
    same inode while a process that used the old one still listens, and the two
    stores' policies would then share events.
    """
    path = directory / "store.id"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        for _ in range(200):  # another worker is writing it right now
            token = path.read_text().strip()
            if token:
                return token
            time.sleep(0.005)
        raise OSError(errno.EIO, f"{path} stays empty") from None
    token = os.urandom(12).hex()
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def sweep_locks(lock_dir: Path, now: float, max_age: float) -> int:
    """Remove the files of idle per-key locks older than ``max_age``; how many locks.

    The protocol shared with ``cache.coalesce``: a lock file may only be
    unlinked by a holder of its flock, and whoever acquires a lock checks that
    the path still names the inode it locked (otherwise it retries), so
    removing a lock file never lets two processes lead the same key.
    """
    removed = 0
    for entry in _scandir(lock_dir):
        if not entry.name.endswith(".lock"):
            with contextlib.suppress(OSError):
                if ".tmp-" in entry.name:  # a sidecar being written by a dead process
                    pid_part = entry.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
                    if pid_part.isdigit() and not pid_alive(int(pid_part)):
                        os.unlink(entry.path)
                elif (entry.name.endswith((".json", ".wait")) and now - entry.stat().st_mtime > max_age
                      and not os.path.exists(entry.path[:-len(".json")] + ".lock")):
                    os.unlink(entry.path)  # an orphan: its lock file is gone
            continue
        try:
            if now - entry.stat().st_mtime < max_age:
                continue
            fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(entry.path).st_ino != os.fstat(fd).st_ino:
                continue
            stem = entry.path[:-len(".lock")]
            for suffix in (".json", ".wait"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stem + suffix)
            os.unlink(entry.path)
            removed += 1
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOENT):
                log.debug("lock sweep: %s: %s", entry.path, exc)
        finally:
            os.close(fd)
    return removed
