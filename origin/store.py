"""Reading store objects for the origin: small ones from memory, big ones streamed.

Why not aiohttp's ``FileResponse``: uvloop's loop has no ``sendfile`` (the
inherited ``AbstractEventLoop.sendfile`` raises NotImplementedError), so
``FileResponse`` silently falls back to reading the file in 256 KiB chunks
through the default thread pool: one executor round-trip for stat+open, one
per chunk, one for close, on every request.  It also sends a weak-looking
ETag made of mtime and size, not the strong content hash we want.  Store objects are small
(segments 100-250 KB, FLAC segments up to ~1 MB, manifests a few KB), hot (every
listener of a track asks for the same ones) and immutable once published, so
the lean path is:

* ``lstat`` the file on the event loop (microseconds on a local disk);
* look its identity ``(dev, inode, size, mtime_ns)`` up in a bounded LRU of
  bytes (``BlobLRU``, size-limited by ``memory_cache_mb``);
* on a miss, open/fstat/read/hash it once in a worker thread, keyed by the
  *fstat* of the descriptor that was read, so bytes, key and ETag always agree
  even if the packager renames a new version into place meanwhile;
* send ``bytes`` (or a memoryview slice for a range) with ``web.Response``.

Objects over ``memory_object_max_kb`` are never held in memory: their ETag
(a full-content hash) is memoised by identity, and their bytes are streamed
from an open descriptor in ``stream_chunk_kb`` reads in a thread.

Measured on 2026-11-22 (this 2-CPU container, Python 3.11, aiohttp 3.14.5,
uvloop 0.23; server CPU from /proc/PID/stat around 3000 keep-alive GETs from
4 concurrent aiohttp clients on the same host, access log off, two runs each;
the client shares the CPUs, so req/s are client-bound and only indicative):

==========================  =====================  ======================
object                      FileResponse           this path
==========================  =====================  ======================
200 KB segment              0.44-0.45 ms CPU/req   0.19-0.20 ms CPU/req
                            (0.30 user, 0.15 sys)  (0.17 user, 0.03 sys)
                            ~1.3k req/s            ~2.2-2.4k req/s
8-byte playlist             0.28-0.29 ms CPU/req   0.13 ms CPU/req
hello-world aiohttp app     0.08-0.13 ms CPU/req (the floor for any handler)
==========================  =====================  ======================

So about 2.2x less CPU per request than FileResponse, and within ~0.05 ms of
an aiohttp handler that returns a constant.  Profiling what is left: the
socket write itself, aiohttp's request parsing and response writing; our
parsing, validators and metrics are a few tens of microseconds.

ETags are ``"<xxh3-64 hex>"``: strong, content-derived (so two origins that
hold the same bytes agree, and the cache tiers can verify a body against its
ETag), and memoised per identity so each file is hashed once.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import xxhash

from legato.http import strong_etag

FileKey = tuple[int, int, int, int]
"""A file's identity: (st_dev, st_ino, st_size, st_mtime_ns)."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def content_etag(data: bytes | memoryview) -> str:
    """The strong ETag of a body: its xxh3-64 hash."""
    return strong_etag(xxhash.xxh3_64_hexdigest(data))


class BlobLRU(Generic[K, V]):
    """A least-recently-used map bounded by the total size of its values.

    Pure bookkeeping (no I/O); sizes are given by the caller.  A value bigger
    than the whole budget is simply not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, size: int) -> None:
        if key in self._items:
            self.size -= self._items.pop(key)[1]
        if size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.size += size
        while self.size > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.size -= evicted


@dataclass(frozen=True, slots=True)
class StoreObject:
    """One store file as the handler sees it."""

    key: FileKey
    size: int
    mtime: float  # seconds since the epoch
    etag: str
    data: bytes | None  # the whole body when small; None when it must be streamed
    fd: int | None = None  # open descriptor of a streamed object; Store.release() closes it


@dataclass(frozen=True, slots=True)
class _Blob:
    data: bytes
    etag: str


class Store:
    """Read-only view of a store directory (``STORE/tracks/...``, ``STORE/licenses/...``)."""

    def __init__(self, root: Path, *, memory_bytes: int, max_object_bytes: int, chunk_bytes: int) -> None:
        self.root = root
        self._prefix = os.fspath(root) + os.sep
        self.max_object_bytes = max_object_bytes
        self.chunk_bytes = chunk_bytes
        self._blobs: BlobLRU[FileKey, _Blob] = BlobLRU(memory_bytes)
        self._etags: BlobLRU[FileKey, str] = BlobLRU(65_536)  # large files' hashes, counted as 1 each
        self.hits = 0
        self.misses = 0

    def readable(self) -> bool:
        """Whether the store root is a directory we can list (for /healthz)."""
        return os.path.isdir(self.root) and os.access(self.root, os.R_OK | os.X_OK)

    def has_dir(self, relpath: str) -> bool:
        """Whether a directory exists (to tell an unknown track from a missing file)."""
        return os.path.isdir(self._prefix + relpath)

    async def lookup(self, relpath: str) -> StoreObject | None:
        """The object at ``relpath``, or None if absent.

        ``relpath`` must come from ``legato.urls.Route.relpath`` ('/'-separated,
        validated ids only, so it cannot leave the store).  Symlinks and
        non-regular files are treated as absent.  A large object holds an open
        descriptor: pass it to ``release`` when done.
        """
        path = self._prefix + relpath
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size <= self.max_object_bytes:
            return await self._small(path, st)
        opening = asyncio.ensure_future(asyncio.to_thread(self._open_large, path))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # the thread still finishes: close what it opens, or the fd leaks
            opening.add_done_callback(_release_when_done)
            raise

    @staticmethod
    def release(obj: StoreObject | None) -> None:
        """Close a large object's descriptor (no-op for small ones)."""
        if obj is not None and obj.fd is not None:
            os.close(obj.fd)

    async def _small(self, path: str, st: os.stat_result) -> StoreObject | None:
        key = file_key(st)
        blob = self._blobs.get(key)
        if blob is None:
            self.misses += 1
            read = await asyncio.to_thread(_read_whole, path)
            if read is None:
                return None
            st, data = read
            key = file_key(st)
            blob = _Blob(data, content_etag(data))
            self._blobs.put(key, blob, len(data))
        else:
            self.hits += 1
        return StoreObject(key, len(blob.data), st.st_mtime_ns / 1e9, blob.etag, blob.data)

    def _open_large(self, path: str) -> StoreObject | None:
        """Open a large file, hashing it unless its ETag is memoised (runs in a thread)."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            key = file_key(st)
            etag = self._etags.get(key)
            if etag is None:
                h = xxhash.xxh3_64()
                for chunk in _pread_chunks(fd, 0, st.st_size, 1 << 20):
                    h.update(chunk)
                etag = strong_etag(h.hexdigest())
                self._etags.put(key, etag, 1)
            return StoreObject(key, st.st_size, st.st_mtime_ns / 1e9, etag, None, fd)
        except BaseException:
            os.close(fd)
            raise

    async def stream(self, obj: StoreObject, first: int, length: int) -> AsyncIterator[bytes]:
        """Yield ``length`` bytes of a streamed object from offset ``first``."""
        assert obj.fd is not None, "stream() is for objects opened without data"
        offset, end = first, first + length
        while offset < end:
            chunk = await asyncio.to_thread(os.pread, obj.fd, min(self.chunk_bytes, end - offset), offset)
            if not chunk:
                raise OSError(f"store object shrank while being sent (at byte {offset} of {obj.size})")
            offset += len(chunk)
            yield chunk


def _release_when_done(task: asyncio.Future[StoreObject | None]) -> None:
    if not task.cancelled() and task.exception() is None:
        Store.release(task.result())


def _read_whole(path: str) -> tuple[os.stat_result, bytes] | None:
    """Open, fstat and read a whole small file; None if it vanished or is not a file."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        data = b"".join(_pread_chunks(fd, 0, st.st_size, st.st_size or 1))
        return st, data
    finally:
        os.close(fd)


def _pread_chunks(fd: int, offset: int, length: int, chunk: int) -> Iterator[bytes]:
    """Read ``length`` bytes from ``offset`` in chunks, stopping early at EOF."""
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(chunk, end - offset), offset)
        if not data:
            return
        yield data
        offset += len(data)
