"""origin/store.py: the bytes LRU and store lookups on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from origin.store import BlobLRU, Store, content_etag


def test_lru_evicts_least_recently_used_by_size() -> None:
    lru: BlobLRU[str, bytes] = BlobLRU(10)
    lru.put("a", b"aaaa", 4)
    lru.put("b", b"bbbb", 4)
    assert lru.get("a") == b"aaaa"  # a is now most recent
    lru.put("c", b"cccc", 4)  # 12 > 10: evicts b
    assert lru.get("b") is None
    assert lru.get("a") == b"aaaa" and lru.get("c") == b"cccc"
    assert lru.size == 8 and len(lru) == 2


def test_lru_skips_values_bigger_than_the_budget_and_replaces() -> None:
    lru: BlobLRU[str, bytes] = BlobLRU(10)
    lru.put("big", b"x" * 11, 11)
    assert lru.get("big") is None and lru.size == 0
    lru.put("k", b"12345", 5)
    lru.put("k", b"123", 3)
    assert lru.get("k") == b"123" and lru.size == 3
    zero: BlobLRU[str, bytes] = BlobLRU(0)
    zero.put("k", b"1", 1)
    assert zero.get("k") is None


def make_store(root: Path, **kw: int) -> Store:
    opts = {"memory_bytes": 1 << 20, "max_object_bytes": 64 << 10, "chunk_bytes": 16 << 10} | kw
    return Store(root, **opts)


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_small_object_is_read_once_then_served_from_memory(tmp_path: Path) -> None:
    data = os.urandom(5000)
    write(tmp_path, "tracks/t/r/seg-00001.m4s", data)
    store = make_store(tmp_path)
    first = await store.lookup("tracks/t/r/seg-00001.m4s")
    assert first is not None and first.data == data and first.size == 5000 and first.fd is None
    assert first.etag == f'"{xxhash.xxh3_64_hexdigest(data)}"' == content_etag(data)
    again = await store.lookup("tracks/t/r/seg-00001.m4s")
    assert again is not None and again.data is first.data
    assert (store.misses, store.hits) == (1, 1)


async def test_replaced_file_gets_new_bytes_and_etag(tmp_path: Path) -> None:
    path = write(tmp_path, "tracks/t/master.m3u8", b"#EXTM3U\n#v1\n")
    store = make_store(tmp_path)
    old = await store.lookup("tracks/t/master.m3u8")
    tmp = write(tmp_path, "tracks/t/.new", b"#EXTM3U\n#v2\n")
    os.replace(tmp, path)  # how the packager publishes: rename into place
    new = await store.lookup("tracks/t/master.m3u8")
    assert old is not None and new is not None
    assert new.data == b"#EXTM3U\n#v2\n" and new.etag != old.etag


async def test_missing_directories_symlinks_are_absent(tmp_path: Path) -> None:
    write(tmp_path, "tracks/t/r/init.mp4", b"init")
    (tmp_path / "tracks/t/r/seg-00001.m4s").mkdir()
    secret = write(tmp_path.parent / f"{tmp_path.name}-outside", "secret.json", b"secret")
    (tmp_path / "licenses").mkdir()
    (tmp_path / "licenses/t.json").symlink_to(secret)
    store = make_store(tmp_path)
    assert await store.lookup("tracks/t/r/init.mp4") is not None
    assert await store.lookup("tracks/t/r/seg-00002.m4s") is None
    assert await store.lookup("tracks/t/r/seg-00001.m4s") is None  # a directory
    assert await store.lookup("tracks/nope/master.m3u8") is None
    assert await store.lookup("tracks/t/r/init.mp4/x") is None  # NotADirectoryError
    assert await store.lookup("licenses/t.json") is None  # symlinks are never followed
    assert store.has_dir("tracks/t") and not store.has_dir("tracks/u")


async def test_large_object_is_streamed_from_an_open_descriptor(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    write(tmp_path, "tracks/t/flac/seg-00001.m4s", data)
    store = make_store(tmp_path, max_object_bytes=64 << 10, chunk_bytes=10_000)
    obj = await store.lookup("tracks/t/flac/seg-00001.m4s")
    assert obj is not None and obj.data is None and obj.fd is not None
    try:
        assert obj.etag == content_etag(data) and obj.size == len(data)
        chunks = [c async for c in store.stream(obj, 0, obj.size)]
        assert b"".join(chunks) == data and max(map(len, chunks)) == 10_000
        part = b"".join([c async for c in store.stream(obj, 12_345, 50_000)])
        assert part == data[12_345:62_345]
    finally:
        store.release(obj)
    with pytest.raises(OSError):
        os.fstat(obj.fd)  # released


async def test_memory_cache_disabled_still_serves(tmp_path: Path) -> None:
    write(tmp_path, "tracks/t/track.json", b"{}")
    store = make_store(tmp_path, memory_bytes=0)
    for _ in range(2):
        obj = await store.lookup("tracks/t/track.json")
        assert obj is not None and obj.data == b"{}"
    assert store.misses == 2


def test_readable(tmp_path: Path) -> None:
    assert make_store(tmp_path).readable()
    assert not make_store(tmp_path / "missing").readable()
