"""cache.store: atomic writes, verified reads, purge, policy-driven capacity, degraded mode, processes.

Real files, a real tmpfs for ENOSPC (when mounting is possible), real child
processes (this file, loaded by path, run as ``python -c``; stopped by PID).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import pytest
from servers import child_process_args

from cache.meta import ResponseHead
from cache.policy import POLICIES, LRUPolicy
from cache.store import Hit, Store, StoreError, store_metrics, sweep_locks

REPO = Path(__file__).resolve().parents[2]
HEAD = ResponseHead(200, (("Content-Type", "audio/mp4"), ("Cache-Control", "max-age=31536000, immutable")), None)


def body_of(key: str, size: int) -> bytes:
    """Deterministic distinct bytes per key (so a child and the test agree)."""
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def put(store: Store, key: str, body: bytes, now: float | None = None, chunk: int = 7000) -> None:
    now = time.time() if now is None else now
    writer = store.begin(key, now)
    for i in range(0, len(body), chunk):
        writer.write(body[i:i + chunk])
    assert writer.commit(HEAD, now) is not None, f"{key} not stored"


def read_hit(hit: Hit | None) -> bytes:
    assert hit is not None
    with hit:
        return hit.read()


def value_files(directory: Path) -> set[Path]:
    """The store's body files now; a subdirectory removed while it is listed (eviction) is skipped."""
    return {Path(top, name) for top, _dirs, names in os.walk(directory) for name in names if name.endswith(".val")}


def sample(name: str) -> float:
    value = store_metrics().registry.get_sample_value(name)
    return value or 0.0


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """A factory of stores on ``tmp_path/cache`` (by default), all closed at teardown."""
    opened: list[Store] = []

    def make(directory: Path | None = None, capacity: int = 1 << 30, **kwargs: object) -> Store:
        store = Store(directory or tmp_path / "cache", capacity, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


# --------------------------------------------------------------------------
# child processes


def _child(argv: list[str]) -> None:
    """Entry point of the child processes (see ``spawn``)."""
    logging.basicConfig(level=logging.WARNING)
    command, directory, *rest = argv
    if command == "write":  # write keys, then request some of them, in order
        store = Store(directory, 1 << 30)
        spec = json.loads(rest[0])
        for key in spec["write"]:
            put(store, key, body_of(key, spec["size"]))
        for key in spec["hit"]:
            read_hit(store.lookup(key, time.time()))
        store.close()
    elif command == "rw":  # write our keys (and shared ones) while reading the parent's as they appear
        store = Store(directory, int(rest[0]))
        mine, theirs, count, wanted, size = rest[1], rest[2], int(rest[3]), int(rest[4]), int(rest[5])
        seen: set[str] = set()
        bad = 0
        deadline = time.monotonic() + 30
        for i in range(count):
            put(store, f"{mine}{i}", body_of(f"{mine}{i}", size))
            put(store, f"/shared/{i}", body_of(f"/shared/{i}", size))
            for j in range(wanted):
                key = f"{theirs}{j}"
                if key not in seen:
                    hit = store.lookup(key, time.time())
                    if hit is not None:
                        bad += read_hit(hit) != body_of(key, size)
                        seen.add(key)
        while len(seen) < wanted and time.monotonic() < deadline:
            for j in range(wanted):
                key = f"{theirs}{j}"
                hit = None if key in seen else store.lookup(key, time.time())
                if hit is not None:
                    bad += read_hit(hit) != body_of(key, size)
                    seen.add(key)
            time.sleep(0.01)
        print(json.dumps({"seen": len(seen), "bad": bad, "manager": store.is_manager}), flush=True)
        store.close()
    elif command == "hold":  # open the store (becoming the manager if first), then wait to be killed
        store = Store(directory, int(rest[0]))
        print(json.dumps({"manager": store.is_manager}), flush=True)
        sys.stdin.read()
        store.close()
    else:
        raise SystemExit(f"unknown child command {command}")


def spawn(*args: str) -> subprocess.Popen[str]:
    argv, env = child_process_args(str(Path(__file__)), *args)
    return subprocess.Popen(argv, cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes of a test; any still running at teardown is killed by PID and reaped."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, object]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------
# write and read


def test_write_commit_lookup_and_sendfile(stores: Callable[..., Store], tmp_path: Path) -> None:
    store = stores()
    key = "/tracks/t1/aac-96k/seg-00003.m4s"
    body = os.urandom(150_000)
    t0 = 1_800_000_000.0
    writer = store.begin(key, t0, content_length=len(body))
    assert writer.path is not None and Path(writer.path).parent == store.tmp_dir
    for i in range(0, len(body), 16384):
        writer.write(body[i:i + 16384])
    head = ResponseHead.build(200, [("Content-Type", "audio/mp4"), ("Connection", "close"),
                                    ("Transfer-Encoding", "chunked"), ("ETag", '"abc"')], len(body))
    meta = writer.commit(head, t0 + 0.5)
    assert meta is not None
    assert meta.size == len(body) and meta.request_time == t0 and meta.response_time == t0 + 0.5
    assert meta.headers == (("Content-Type", "audio/mp4"), ("ETag", '"abc"'))
    assert list(store.tmp_dir.iterdir()) == []  # adopted, not copied

    hit = store.lookup(key, t0 + 1)
    assert hit is not None and hit.source == "disk"
    assert hit.meta == meta and hit.size == len(body)
    a, b = socket.socketpair()  # a real fd, usable by os.sendfile
    try:
        sent = 0
        b.setblocking(False)
        received = bytearray()
        while sent < len(body):
            sent += os.sendfile(a.fileno(), hit.fileno(), sent, len(body) - sent)
            try:
                while chunk := b.recv(1 << 20):
                    received += chunk
            except BlockingIOError:
                pass
        b.setblocking(True)
        a.shutdown(socket.SHUT_WR)
        while chunk := b.recv(1 << 20):
            received += chunk
        assert bytes(received) == body
    finally:
        a.close()
        b.close()
        hit.close()
    assert store.lookup("/missing", t0) is None
    stats = store.stats()
    assert (stats.objects, stats.bytes, stats.healthy) == (1, len(body), True)


def test_replacing_an_object_keeps_one_file(stores: Callable[..., Store], tmp_path: Path) -> None:
    store = stores()
    put(store, "/k", b"old" * 1000)
    old_hit = store.lookup("/k", time.time())  # an open reader keeps its bytes
    put(store, "/k", b"new" * 500)
    assert read_hit(store.lookup("/k", time.time())) == b"new" * 500
    assert read_hit(old_hit) == b"old" * 1000
    assert len(value_files(tmp_path / "cache")) == 1


@pytest.mark.parametrize("announced", ["head", "begin"])
def test_truncated_body_is_not_cached(stores: Callable[..., Store], announced: str) -> None:
    store = stores()
    before = sample("legato_cache_truncated_total")
    writer = store.begin("/k", time.time(), content_length=100 if announced == "begin" else None)
    writer.write(b"x" * 60)
    head = ResponseHead(200, (), 100 if announced == "head" else None)
    assert writer.commit(head, time.time()) is None
    assert store.lookup("/k", time.time()) is None
    assert "/k" not in store
    assert list(store.tmp_dir.iterdir()) == [] and value_files(store.directory) == set()
    assert sample("legato_cache_truncated_total") == before + 1
    assert store.stats().truncated == 1 and store.healthy


def test_abort_leaves_nothing(stores: Callable[..., Store]) -> None:
    store = stores()
    writer = store.begin("/k", time.time())
    writer.write(b"partial")
    writer.abort()
    writer.abort()  # idempotent
    with store.begin("/j", time.time()) as w2:  # leaving the block without commit aborts
        w2.write(b"partial")
    assert writer.commit(HEAD, time.time()) is None  # too late
    assert store.lookup("/k", time.time()) is None and store.lookup("/j", time.time()) is None
    assert list(store.tmp_dir.iterdir()) == [] and value_files(store.directory) == set()
    assert store.stats().objects == 0


# --------------------------------------------------------------------------
# integrity


@pytest.mark.parametrize("settled", [False, True], ids=["just-written", "held-open"])
def test_flipped_byte_is_detected_dropped_and_counted(stores: Callable[..., Store], settled: bool) -> None:
    store = stores()
    body = os.urandom(40_000)
    put(store, "/k", body)
    if settled:  # verified well after its write: the next hits use a held descriptor
        time.sleep(0.1)
    assert read_hit(store.lookup("/k", time.time())) == body  # verified once, remembered
    assert read_hit(store.lookup("/k", time.time())) == body  # hot hit: no re-hash needed
    (path,) = value_files(store.directory)
    before = sample("legato_cache_corrupt_total")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([body[12345] ^ 0x01]), 12345)  # one flipped bit; mtime changes
    finally:
        os.close(fd)
    assert store.lookup("/k", time.time()) is None
    assert sample("legato_cache_corrupt_total") == before + 1
    assert store.stats().corrupt == 1
    assert "/k" not in store and not path.exists()
    assert store.lookup("/k", time.time()) is None
    assert store.sync()
    assert store.policy is not None and "/k" not in store.policy


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_hot_hits_share_one_held_descriptor(stores: Callable[..., Store]) -> None:
    store = stores()
    body = os.urandom(30_000)
    put(store, "/k", body)
    time.sleep(0.1)  # trusted only once verified well after its last write (MTIME_SLACK)
    assert read_hit(store.lookup("/k", time.time())) == body  # verified through the index
    assert read_hit(store.lookup("/k", time.time())) == body  # now held open
    before = open_fds()
    hits = [store.lookup("/k", time.time()) for _ in range(50)]  # concurrent hits, one descriptor
    assert all(h is not None for h in hits)
    assert len({h.fileno() for h in hits if h is not None}) == 1 and open_fds() == before
    assert all(read_hit(h) == body for h in hits)
    assert open_fds() == before  # released, still held for the next hit


def test_a_held_descriptor_never_serves_a_purged_or_evicted_object(stores: Callable[..., Store]) -> None:
    store, other = stores(), stores()  # two workers of one node
    body = os.urandom(30_000)
    put(store, "/k", body)
    time.sleep(0.1)
    for _ in range(2):
        assert read_hit(store.lookup("/k", time.time())) == body
    in_flight = store.lookup("/k", time.time())  # a transfer still sending when the object goes
    assert other.delete("/k")  # purged in the other worker: this one only sees the file unlinked
    assert store.lookup("/k", time.time()) is None
    before = open_fds()
    assert read_hit(in_flight) == body  # the transfer finishes with the bytes it started with
    assert open_fds() == before - 1  # and the retired descriptor closes with it


def test_renew_vouches_for_a_held_hit_exactly_while_lookup_would_serve_it(stores: Callable[..., Store]) -> None:
    store, other = stores(), stores()  # two workers of one node
    for key in ("/k", "/j"):
        put(store, key, os.urandom(30_000))
    time.sleep(0.1)
    for key in ("/k", "/j"):
        first = store.lookup(key, time.time())  # verified and opened through the index
        assert first is not None and not first.renewable and not store.renew(first, time.time())
        first.close()
    hit, other_hit = store.lookup("/k", time.time()), store.lookup("/j", time.time())
    assert hit is not None and hit.renewable and other_hit is not None and other_hit.renewable
    assert store.renew(hit, time.time()) and store.renew(other_hit, time.time())
    assert other.delete("/k")  # purged in the other worker
    assert not store.renew(hit, time.time())
    (path,) = value_files(store.directory)
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, bytes([os.pread(fd, 1, 0)[0] ^ 0xFF]), 0)  # a byte changed in place: its identity (mtime) moves
    os.close(fd)
    assert not store.renew(other_hit, time.time())
    assert store.lookup("/j", time.time()) is None  # and lookup finds the corruption
    hit.close()
    other_hit.close()
    assert not store.renew(hit, time.time())  # a closed hit is never vouched for


def test_held_descriptors_are_bounded(stores: Callable[..., Store]) -> None:
    from cache.store import OPEN_FILES

    store = stores()
    keys = [f"/k{i}" for i in range(OPEN_FILES + 40)]
    for key in keys:
        put(store, key, body_of(key, 2000))
    time.sleep(0.1)
    start = open_fds()
    for key in keys * 2:
        assert read_hit(store.lookup(key, time.time())) == body_of(key, 2000)
    assert open_fds() - start <= OPEN_FILES
    store.close()
    assert open_fds() < start  # closing the store closes what it held


def test_corruption_with_unchanged_mtime_is_caught_on_first_use_in_a_process(
        stores: Callable[..., Store], tmp_path: Path) -> None:
    """Verification is per process: the identity cache trusts an unchanged file, a new process does not."""
    first = stores()
    body = os.urandom(10_000)
    put(first, "/k", body)
    assert read_hit(first.lookup("/k", time.time())) == body
    (path,) = value_files(first.directory)
    st = path.stat()
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"\x00\x00\x00\x00", 100)
    os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot does not touch mtime
    first.close()
    second = stores()
    assert second.lookup("/k", time.time()) is None
    assert not path.exists()


def test_truncated_file_and_missing_file_are_misses(stores: Callable[..., Store]) -> None:
    store = stores()
    put(store, "/a", b"a" * 5000)
    put(store, "/b", b"b" * 5000)
    files = {read_hit(store.lookup(k, time.time()))[:1]: k for k in ("/a", "/b")}
    assert set(files) == {b"a", b"b"}
    for path in value_files(store.directory):
        if path.read_bytes()[:1] == b"a":
            os.truncate(path, 100)
        else:
            path.unlink()
    assert store.lookup("/a", time.time()) is None
    assert store.lookup("/b", time.time()) is None
    assert "/a" not in store and "/b" not in store


def test_corrupt_meta_is_a_miss_not_an_exception(stores: Callable[..., Store]) -> None:
    store = stores()
    put(store, "/k", b"body")
    put(store, "/j", b"body")
    with sqlite3.connect(store.directory / "cache.db") as db:
        db.execute("UPDATE Cache SET tag = ? WHERE key = ?", (b'{"v":1,"k":"/k"', "/k"))
        db.execute("UPDATE Cache SET tag = ? WHERE key = ?", (json.dumps({"v": 1}).encode(), "/j"))
    db.close()
    before = sample("legato_cache_corrupt_total")
    assert store.lookup("/k", time.time()) is None
    assert store.lookup("/j", time.time()) is None
    assert sample("legato_cache_corrupt_total") == before + 2
    assert "/k" not in store and value_files(store.directory) == set()


def test_update_meta_freshens_atomically_and_keeps_verification(stores: Callable[..., Store]) -> None:
    store = stores(ram_bytes=1 << 20)
    put(store, "/k", b"body" * 100)
    hit = store.lookup("/k", time.time())
    assert hit is not None
    current = hit.meta
    hit.close()
    fresh = current.freshened([("Cache-Control", "max-age=999")], request_time=5.0, response_time=6.0)
    assert store.update_meta(current, fresh)
    assert not store.update_meta(current, fresh)  # compare-and-swap: current is no longer stored
    other = store.lookup("/k", time.time())
    assert other is not None and other.meta == fresh and other.read() == b"body" * 100
    other.close()
    assert not store.update_meta(fresh, dataclasses.replace(fresh, size=1))  # another body: refused
    put(store, "/k", b"new")  # replaced meanwhile
    assert not store.update_meta(fresh, fresh.freshened([], request_time=7.0, response_time=8.0))


# --------------------------------------------------------------------------
# purge, capacity, RAM tier


def test_purge_exact_and_prefix(stores: Callable[..., Store]) -> None:
    store = stores()
    keys = ["/tracks/t1/master.m3u8", "/tracks/t1/aac-96k/seg-00001.m4s", "/tracks/t1/aac-96k/init.mp4",
            "/tracks/t10/master.m3u8", "/tracks/t2/aac-96k/seg-00001.m4s", "/licenses/t1.json"]
    for key in keys:
        put(store, key, body_of(key, 3000))
    assert store.purge_prefix("/tracks/t1/") == 3
    assert store.purge_prefix("/tracks/t1/") == 0
    for key in keys:
        hit = store.lookup(key, time.time())
        assert (hit is not None) == (not key.startswith("/tracks/t1/")), key
        if hit is not None:
            assert read_hit(hit) == body_of(key, 3000)
    assert store.delete("/licenses/t1.json") is True
    assert store.delete("/licenses/t1.json") is False
    assert store.lookup("/licenses/t1.json", time.time()) is None
    assert len(value_files(store.directory)) == 2 == store.stats().objects
    assert store.sync()
    assert store.policy is not None
    assert set(store.policy.keys_by_priority()) == {"/tracks/t10/master.m3u8", "/tracks/t2/aac-96k/seg-00001.m4s"}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_capacity_is_enforced_through_the_policy(stores: Callable[..., Store], policy: str) -> None:
    capacity = 20_000
    store = stores(capacity=capacity, policy=policy)
    now = 1_800_000_000.0
    keys = [f"/tracks/t{i % 3}/aac-96k/seg-{i:05d}.m4s" for i in range(1, 61)]
    for i, key in enumerate(keys):
        put(store, key, body_of(key, 1000 + 37 * (i % 5)), now + i)
        if i % 4 == 0:  # some requests (of objects that may already be evicted)
            hit = store.lookup(keys[i // 2], now + i + 0.5)
            if hit is not None:
                hit.close()
    put(store, "/too-big", body_of("/too-big", capacity + 1), now + 100)  # declined by every policy
    assert store.sync()
    assert store.policy is not None
    kept = set(store.policy.keys_by_priority())
    stats = store.stats()
    assert store.policy.used <= capacity and stats.bytes <= capacity
    assert stats.bytes == store.policy.used and stats.objects == len(kept) == len(value_files(store.directory))
    assert stats.evictions == len(keys) + 1 - len(kept)
    assert "/too-big" not in kept and store.lookup("/too-big", now) is None
    for key in keys:
        hit = store.lookup(key, now + 200)
        assert (hit is not None) == (key in kept), key
        if hit is not None:
            hit.close()


def test_a_hot_ram_hit_is_vouched_for_by_its_held_file_not_the_index(stores: Callable[..., Store],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store, other = stores(ram_bytes=1 << 20), stores()  # two workers of one node
    put(store, "/small", b"s" * 1000)
    time.sleep(0.1)
    for _ in range(2):
        assert read_hit(store.lookup("/small", time.time())) == b"s" * 1000  # verified; then held, read into RAM
    assert store._index is not None
    monkeypatch.setattr(store._index, "row", lambda key: pytest.fail(f"the index was read for {key}"))
    hit = store.lookup("/small", time.time())
    assert hit is not None and hit.source == "ram" and hit.body == b"s" * 1000
    assert hit.renewable and store.renew(hit, time.time())
    monkeypatch.undo()
    assert other.delete("/small")  # purged in the other worker: the held file is unlinked
    assert not store.renew(hit, time.time())
    assert store.lookup("/small", time.time()) is None
    hit.close()


@pytest.mark.parametrize("size", [1000, 100_000], ids=["ram", "disk"])
def test_after_its_trust_period_a_hot_object_is_hashed_once_and_hot_again(
        stores: Callable[..., Store], monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    import cache.store

    monkeypatch.setattr(cache.store, "REVERIFY_SECONDS", 0.3)
    store = stores(ram_bytes=1 << 20)
    body = os.urandom(size)
    put(store, "/k", body)
    time.sleep(0.1)
    index = store._index
    assert index is not None
    rows = 0
    row = index.row

    def counted(key: str) -> object:
        nonlocal rows
        rows += 1
        return row(key)

    monkeypatch.setattr(index, "row", counted)
    for _ in range(3):
        assert read_hit(store.lookup("/k", time.time())) == body
    time.sleep(0.35)  # trust expired: the next hit hashes the file again...
    before = rows
    for _ in range(20):
        assert read_hit(store.lookup("/k", time.time())) == body
    assert rows - before == 1  # ...once, through the index; then the held file vouches again


def test_ram_tier_serves_hot_small_objects_and_follows_changes(stores: Callable[..., Store]) -> None:
    store = stores(ram_bytes=1 << 20, ram_object_max=64 * 1024)
    put(store, "/small", b"s" * 1000)
    put(store, "/large", b"L" * 100_000)
    first = store.lookup("/small", time.time())
    assert first is not None and first.source == "disk"
    first.close()
    second = store.lookup("/small", time.time())
    assert second is not None and second.source == "ram" and second.body == b"s" * 1000
    with pytest.raises(OSError):
        second.fileno()
    third = store.lookup("/small", time.time())
    assert third is not None and third.source == "ram"
    for _ in range(3):
        hit = store.lookup("/large", time.time())
        assert hit is not None and hit.source == "disk"
        hit.close()
    assert store.stats().ram_bytes == 1000
    put(store, "/small", b"t" * 10)  # replaced (by any worker): the row changes, RAM follows
    assert read_hit(store.lookup("/small", time.time())) == b"t" * 10
    assert store.delete("/small")
    assert store.lookup("/small", time.time()) is None


# --------------------------------------------------------------------------
# restarts and processes


def test_hits_reach_the_policy_at_most_once_per_hit_interval(stores: Callable[..., Store]) -> None:
    """A hot key costs the manager one policy update per interval, not one per request."""
    seen: list[tuple[str, float]] = []

    class Recording(LRUPolicy):
        def _touch(self, key: str, now: float) -> None:
            seen.append((key, now))
            super()._touch(key, now)

    store = stores(policy=Recording, hit_interval=1.0)
    now = 1_800_000_000.0
    put(store, "/a", body_of("/a", 100), now)
    put(store, "/b", body_of("/b", 100), now)
    assert store.sync()
    for t in (now + 0.1, now + 0.2, now + 0.9, now + 1.1, now + 1.5, now + 2.2):
        read_hit(store.lookup("/a", t))
    read_hit(store.lookup("/b", now + 0.3))
    read_hit(store.lookup("/a", now - 5))  # a clock that went back reports at once
    assert store.sync()
    assert seen == [("/a", now + 0.1), ("/a", now + 1.1), ("/a", now + 2.2), ("/b", now + 0.3), ("/a", now - 5)]
    assert store.policy is not None and store.policy.keys_by_priority() == ["/b", "/a"]

    seen.clear()
    every = stores(directory=store.directory.parent / "every", policy=Recording, hit_interval=0)
    put(every, "/a", body_of("/a", 100), now)
    for i in range(3):
        read_hit(every.lookup("/a", now + i * 0.01))
    assert every.sync() and len(seen) == 3


def test_warm_restart_in_a_new_process_serves_old_objects_in_access_order(
        stores: Callable[..., Store], tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    keys = [f"/tracks/w/aac-96k/seg-{i:05d}.m4s" for i in range(5)]
    spec = {"write": keys, "hit": [keys[0], keys[2]], "size": 5000}
    proc = spawn("write", str(tmp_path / "cache"), json.dumps(spec))
    children.append(proc)
    finish(proc)
    store = stores()
    assert store.is_manager
    assert read_hit(store.lookup(keys[3], time.time())) == body_of(keys[3], 5000)  # at once
    assert store.sync()  # the policy was rebuilt in the background, then got our hit
    assert store.policy is not None
    # rebuilt least recently accessed first: the never requested, then the two the child requested
    assert store.policy.keys_by_priority() == [keys[1], keys[4], keys[0], keys[2], keys[3]]
    for key in keys:
        assert read_hit(store.lookup(key, time.time())) == body_of(key, 5000)


def test_two_processes_write_and_read_concurrently(
        stores: Callable[..., Store], tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    count, size = 40, 4000
    store = stores()
    assert store.is_manager
    proc = spawn("rw", str(tmp_path / "cache"), str(1 << 30), "/child/", "/parent/", str(count), str(count),
                 str(size))
    children.append(proc)
    seen: set[str] = set()
    for i in range(count):
        put(store, f"/parent/{i}", body_of(f"/parent/{i}", size))
        put(store, f"/shared/{i}", body_of(f"/shared/{i}", size))
        for j in range(count):
            key = f"/child/{j}"
            hit = None if key in seen else store.lookup(key, time.time())
            if hit is not None:
                assert read_hit(hit) == body_of(key, size)
                seen.add(key)
    result = finish(proc)
    assert result == {"seen": count, "bad": 0, "manager": False}
    for key in [f"/{who}/{i}" for who in ("parent", "child", "shared") for i in range(count)]:
        assert read_hit(store.lookup(key, time.time())) == body_of(key, size), key
    # the manager's policy saw the child's inserts (over its socket)
    assert store.policy is not None
    policy = store.policy
    wait_for(lambda: store.sync() and len(policy) == 3 * count, what="child's events")
    assert store.stats().objects == 3 * count == len(value_files(store.directory))


def test_capacity_holds_across_processes(
        stores: Callable[..., Store], tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    capacity = 50_000
    store = stores(capacity=capacity)
    proc = spawn("rw", str(tmp_path / "cache"), str(capacity), "/child/", "/none/", "60", "0", "2000")
    children.append(proc)
    finish(proc)  # it wrote 120 objects (240 KB) into a 50 KB store run by this process's policy
    policy = store.policy
    assert policy is not None

    def settled() -> bool:  # rows go first, their files right after
        return store.sync() and store.stats().objects == len(policy) == len(value_files(store.directory))

    wait_for(settled, what="evictions")
    assert policy.used <= capacity and store.stats().bytes <= capacity


def test_manager_role_moves_when_its_process_dies(
        stores: Callable[..., Store], tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    proc = spawn("hold", str(tmp_path / "cache"), str(1 << 30))
    children.append(proc)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"manager": True}
    store = stores()
    assert not store.is_manager and store.policy is None and not store.sync(timeout=0.1)
    for i in range(5):
        put(store, f"/k{i}", b"x" * 100)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    started = time.monotonic()
    wait_for(lambda: store.is_manager, timeout=5, what="election")
    assert time.monotonic() - started < 1.5
    assert store.sync()
    assert store.policy is not None and set(store.policy.keys_by_priority()) == {f"/k{i}" for i in range(5)}


def test_rows_the_policy_never_heard_of_are_picked_up(stores: Callable[..., Store]) -> None:
    """A lost insert event (here: a row written behind the store's back) reaches the policy by the scan."""
    store = stores(capacity=8000)
    put(store, "/known", b"k" * 3000)
    assert store.sync()
    foreign = diskcache.Cache(str(store.directory))
    foreign.set("/foreign", b"f" * 6000)  # no event ever sent
    foreign.close()
    policy = store.policy
    assert policy is not None
    wait_for(lambda: store.sync() and "/foreign" in policy, timeout=10, what="the scan")
    assert policy.used <= 8000 and "/known" not in policy  # and the byte limit holds again
    assert "/known" not in store


def test_sweeps_remove_dead_writers_temp_files_and_idle_locks(tmp_path: Path,
                                                              stores: Callable[..., Store]) -> None:
    directory = tmp_path / "cache"
    (directory / "tmp").mkdir(parents=True)
    (directory / "locks").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    orphan = directory / "tmp" / f"{dead_pid}-0-abcd.part"
    orphan.write_bytes(b"half a body")
    alive = directory / "tmp" / f"{os.getpid()}-0-abcd.part"
    alive.write_bytes(b"being written")
    old = time.time() - 3600
    idle, held = directory / "locks" / "idle", directory / "locks" / "held"
    for stem in (idle, held):
        for suffix in (".lock", ".json", ".wait"):
            path = stem.with_suffix(suffix)
            path.write_bytes(b"{}")
            os.utime(path, (old, old))
    fd = os.open(held.with_suffix(".lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a fetch in progress somewhere
    try:
        stores()  # the manager sweeps a second after its election
        wait_for(lambda: not orphan.exists() and not idle.with_suffix(".lock").exists(), what="the sweep")
        assert alive.exists()
        assert not idle.with_suffix(".json").exists() and not idle.with_suffix(".wait").exists()
        assert all(held.with_suffix(s).exists() for s in (".lock", ".json", ".wait"))
    finally:
        os.close(fd)
    assert sweep_locks(directory / "locks", time.time(), 60.0) == 1  # now idle too


# --------------------------------------------------------------------------
# disk full


@pytest.fixture
def tiny_fs(tmpfs: Callable[[str], Path]) -> Path:
    """A real 2 MiB tmpfs (root only)."""
    return tmpfs("2m")


def test_disk_full_degrades_once_writes_nothing_and_recovers(
        stores: Callable[..., Store], tiny_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="legato.cache.store")
    store = stores(tiny_fs / "cache", retry_interval=1.0)
    t = 1_800_000_000.0
    put(store, "/old", b"o" * 20_000, t)
    filler = tiny_fs / "filler"
    with open(filler, "wb") as f:  # fill the filesystem for real
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
    healthy_gauge = "legato_cache_store_healthy"

    for attempt in range(5):  # several requests while full: each writer is a no-op, never an exception
        writer = store.begin(f"/new{attempt}", t + 0.1 * attempt)
        writer.write(b"n" * 300_000)
        writer.write(b"n" * 300_000)
        assert writer.commit(HEAD, t + 0.1 * attempt) is None
    assert not store.healthy
    assert store.degraded_reason is not None and "No space left on device" in store.degraded_reason
    assert sample(healthy_gauge) == 0
    degraded_logs = [r for r in caplog.records if "degraded" in r.getMessage()]
    assert len(degraded_logs) == 1
    assert store.stats().healthy is False and store.stats().errors >= 1
    assert list(store.tmp_dir.iterdir()) == []  # nothing half-written left behind
    assert read_hit(store.lookup("/old", t + 1)) == b"o" * 20_000  # reads keep working
    assert store.lookup("/new0", t + 1) is None

    noop = store.begin("/paced", t + 0.5)  # within retry_interval of the last failure: not even tried
    assert noop.path is None and not noop.active

    filler.unlink()
    put(store, "/after", b"a" * 50_000, t + 5)  # first attempt after the interval succeeds
    assert store.healthy and store.degraded_reason is None and sample(healthy_gauge) == 1
    assert read_hit(store.lookup("/after", t + 6)) == b"a" * 50_000
    assert len([r for r in caplog.records if "degraded" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "recovered" in r.getMessage()]) == 1


def test_a_worker_starting_on_a_full_disk_starts_degraded_and_recovers(
        stores: Callable[..., Store], tiny_fs: Path) -> None:
    first = stores(tiny_fs / "cache")
    put(first, "/old", b"o" * 10_000)
    filler = tiny_fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    late = stores(tiny_fs / "cache", retry_interval=0.2)  # no exception: serving must go on
    assert not late.healthy and late.degraded_reason is not None
    assert late.lookup("/old", time.time()) is None  # passthrough until the index opens
    writer = late.begin("/new", time.time())
    writer.write(b"n" * 1000)
    assert writer.commit(HEAD, time.time()) is None
    assert late.purge_prefix("/") == 0 and late.stats().objects == -1
    filler.unlink()
    wait_for(lambda: late.healthy, timeout=5, what="the index to open")
    assert read_hit(late.lookup("/old", time.time())) == b"o" * 10_000
    put(late, "/new", b"n" * 1000)


def test_an_unusable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot use cache directory"):
        Store(tmp_path / "file" / "cache", 1 << 20)
