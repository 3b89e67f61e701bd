"""cache.coalesce: one upstream fetch per key across processes, read-while-write, failures, bounds.

The upstream is a real aiohttp server on 127.0.0.1 that counts requests and
can hold a response after its first half (until the test releases it) or
drop the connection there; every ``fetch`` is a real aiohttp client GET to it.
Other worker processes are real children (this file loaded by path and run
with ``python -c``), driven over stdin/stdout and stopped by PID.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xxhash
from aiohttp import web
from servers import child_process_args

from cache.coalesce import (
    CoalesceError,
    Coalescer,
    Fetch,
    Flight,
    Role,
    Sink,
    TooManyWaiters,
    UpstreamFailed,
)
from cache.meta import ResponseHead
from cache.store import Hit, Store, Writer
from cache.upstream import UpstreamError

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0


async def committed(store: Store, key: str) -> Hit:
    """The stored object, once committed: a flight ends with its body, the commit follows."""
    deadline = time.monotonic() + TIMEOUT
    while (hit := store.lookup(key, time.time())) is None:
        assert time.monotonic() < deadline, f"{key} was never committed"
        await asyncio.sleep(0.01)
    return hit


# --------------------------------------------------------------------------
# a real upstream


@dataclass
class Upstream:
    """A counting origin: ``bodies[name]`` at ``url(name)``.

    ``hold(name)``: the first request of ``name`` sends half its body, sets
    ``halfway[name]`` and waits for ``release[name]``; with ``drop`` it then
    closes the connection instead of sending the rest.
    """

    base: str = ""
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    finished: collections.Counter[str] = field(default_factory=collections.Counter)
    bodies: dict[str, bytes] = field(default_factory=dict)
    release: dict[str, asyncio.Event] = field(default_factory=dict)
    halfway: dict[str, asyncio.Event] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)
    status: dict[str, int] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base}/obj/{name}"

    def add(self, name: str, size: int) -> bytes:
        self.bodies[name] = os.urandom(size)
        return self.bodies[name]

    def hold(self, name: str, *, drop: bool = False) -> None:
        self.release[name] = asyncio.Event()
        self.halfway[name] = asyncio.Event()
        if drop:
            self.drop.add(name)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.counts[name] += 1
        body = self.bodies[name]
        resp = web.StreamResponse(status=self.status.get(name, 200), headers={
            "Content-Type": "audio/mp4", "ETag": f'"{xxhash.xxh3_64_hexdigest(body)}"',
            "Cache-Control": "max-age=60"})
        resp.content_length = len(body)
        await resp.prepare(request)
        half = len(body) // 2
        await resp.write(body[:half])
        if name in self.release and self.counts[name] == 1:
            self.halfway[name].set()
            await self.release[name].wait()
            if name in self.drop:
                assert request.transport is not None
                request.transport.abort()
                return resp
        await resp.write(body[half:])
        await resp.write_eof()
        self.finished[name] += 1
        return resp


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_get("/obj/{name}", up.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up.base = f"http://127.0.0.1:{port}"
    try:
        yield up
    finally:
        for event in up.release.values():
            event.set()
        await runner.cleanup()


def http_fetch(session: aiohttp.ClientSession, url: str) -> Fetch:
    """The node's kind of fetch: a GET streamed into the sink."""
    async def fetch(sink: Sink) -> None:
        async with session.get(url) as resp:
            sink.start(resp.status, list(resp.headers.items()), resp.content_length)
            async for chunk in resp.content.iter_any():
                await sink.write(chunk)
            sink.finish()
    return fetch


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "cache", 1 << 30)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
async def coalescer(store: Store) -> AsyncIterator[Coalescer]:
    co = Coalescer(store)
    try:
        yield co
    finally:
        await co.close()


class Reader:
    """Reads one flight to the end in a task, noting when the first bytes and the end came."""

    def __init__(self, flight: Flight) -> None:
        self.flight = flight
        self.data = bytearray()
        self.first = asyncio.Event()
        self.error: CoalesceError | None = None
        self.ended_at: float | None = None
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(lambda _: flight.close())  # even if cancelled before it ran

    async def _run(self) -> None:
        try:
            async with self.flight:
                await self.flight.head()
                async for chunk in self.flight:
                    self.data += chunk
                    self.first.set()
        except CoalesceError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()


async def start_readers(co: Coalescer, key: str, fetch: Fetch, n: int) -> list[Reader]:
    return [Reader(await co.get(key, fetch)) for _ in range(n)]


def digest(data: bytes | bytearray) -> str:
    return xxhash.xxh3_64_hexdigest(bytes(data))


# --------------------------------------------------------------------------
# child worker processes


def _child(argv: list[str]) -> None:
    """Entry point of a child worker (see ``Child``)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_child_main(argv))


async def _child_main(argv: list[str]) -> None:
    directory, url, n = argv[0], argv[1], int(argv[2])
    loop = asyncio.get_running_loop()

    def say(**record: Any) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    store = Store(directory, 1 << 30)
    co = Coalescer(store)
    async with aiohttp.ClientSession() as session:
        say(ready=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "go"
        fetch = http_fetch(session, url)
        flights = [await co.get("/obj", fetch) for _ in range(n)]
        say(joined=collections.Counter(str(f.role) for f in flights))
        readers = [Reader(f) for f in flights]

        async def partial() -> None:
            await asyncio.gather(*(r.first.wait() for r in readers))
            say(partial=True)

        reporter = asyncio.create_task(partial())
        await asyncio.gather(*(r.task for r in readers))
        reporter.cancel()
        say(done=True, hashes=sorted({digest(r.data) for r in readers if r.error is None}),
            ok=sum(r.error is None for r in readers), errors=sorted({type(r.error).__name__ for r in readers if r.error}),
            statuses=sorted({r.error.status for r in readers if r.error}))
    await co.close()
    store.close()


class Child:
    """A worker process with its own Store and Coalescer on the same cache directory."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, directory: Path, url: str, n: int) -> Child:
        argv, env = child_process_args(str(Path(__file__)), str(directory), url, str(n))
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        child = cls(proc)
        assert await child.expect("ready") == {"ready": True}
        return child

    async def expect(self, what: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The child's next report that has ``what`` (earlier other reports are skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.0, deadline - time.monotonic()))
            if not line:
                assert self.proc.stderr is not None
                err = await self.proc.stderr.read()
                raise AssertionError(f"child exited while we expected {what!r}: {err.decode(errors='replace')}")
            record: dict[str, Any] = json.loads(line)
            if what in record:
                return record

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.communicate()


@pytest.fixture
async def children() -> AsyncIterator[list[Child]]:
    """Child workers of a test; any still running at teardown is killed by PID and reaped."""
    started: list[Child] = []
    yield started
    for child in started:
        await child.stop()


# --------------------------------------------------------------------------
# one process


async def test_one_thousand_concurrent_gets_fetch_once(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store) -> None:
    body = upstream.add("a", 200_000)
    fetch = http_fetch(session, upstream.url("a"))

    async def one() -> tuple[Role, bytes]:
        async with await coalescer.get("/a", fetch) as flight:
            head = await flight.head()
            assert head.status == 200 and head.content_length == len(body)
            return flight.role, await flight.read()

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(1000))), TIMEOUT)
    assert upstream.counts["a"] == 1
    assert collections.Counter(role for role, _ in results) == {Role.MISS: 1, Role.COALESCED: 999}
    assert all(data == body for _, data in results)
    hit = await committed(store, "/a")  # the next request is a HIT
    assert hit.read() == body and hit.meta.header("ETag") is not None
    hit.close()
    deadline = time.monotonic() + TIMEOUT  # the producer task ends just after its commit
    while coalescer.in_flight():
        assert time.monotonic() < deadline, "the flight never ended"
        await asyncio.sleep(0.01)
    assert list(store.tmp_dir.iterdir()) == []


async def test_followers_stream_before_the_leader_finishes(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer) -> None:
    body = upstream.add("rw", 300_000)
    upstream.hold("rw")
    readers = await start_readers(coalescer, "/rw", http_fetch(session, upstream.url("rw")), 10)
    await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in readers)), TIMEOUT)
    assert upstream.finished["rw"] == 0  # the upstream is still holding the second half
    assert all(0 < len(r.data) <= len(body) // 2 for r in readers)
    assert [r.flight.role for r in readers] == [Role.MISS] + [Role.COALESCED] * 9
    upstream.release["rw"].set()
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    assert all(r.error is None and bytes(r.data) == body for r in readers)
    assert upstream.counts["rw"] == 1


async def test_upstream_failure_mid_body_fails_every_follower_and_caches_nothing(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store) -> None:
    upstream.add("f", 200_000)
    upstream.hold("f", drop=True)
    readers = await start_readers(coalescer, "/f", http_fetch(session, upstream.url("f")), 50)
    await asyncio.wait_for(upstream.halfway["f"].wait(), TIMEOUT)
    await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in readers)), TIMEOUT)
    released = time.monotonic()
    upstream.release["f"].set()
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    assert all(isinstance(r.error, UpstreamFailed) and r.error.status == 502 for r in readers)
    assert max(r.ended_at or 0 for r in readers) - released < 1.0
    assert store.lookup("/f", time.time()) is None and list(store.tmp_dir.iterdir()) == []
    assert coalescer.in_flight() == 0


@pytest.mark.parametrize("problem", ["short", "long", "unfinished", "raises", "timeout"])
async def test_broken_fetches_fail_followers(coalescer: Coalescer, store: Store, problem: str) -> None:
    async def fetch(sink: Sink) -> None:
        sink.start(200, [("Content-Type", "audio/mp4")], 10)
        await sink.write(b"12345")
        await asyncio.sleep(0.01)
        if problem == "short":
            sink.finish()
        elif problem == "long":
            await sink.write(b"1234567890")
        elif problem == "raises":
            raise ConnectionResetError("peer went away")
        elif problem == "timeout":
            raise UpstreamError(504, "no peer answered in time")
        # "unfinished": return without finish()

    readers = await start_readers(coalescer, "/b", fetch, 5)
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    for r in readers:
        assert isinstance(r.error, UpstreamFailed), problem
        assert r.error.status == (504 if problem == "timeout" else 502)
    assert store.lookup("/b", time.time()) is None and list(store.tmp_dir.iterdir()) == []


async def test_uncacheable_responses_are_coalesced_but_not_stored(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store) -> None:
    body = upstream.add("nf", 1000)
    upstream.status["nf"] = 404
    readers = await start_readers(coalescer, "/nf", http_fetch(session, upstream.url("nf")), 20)
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    assert all(r.error is None and bytes(r.data) == body for r in readers)
    assert (await readers[0].flight.head()).status == 404
    assert upstream.counts["nf"] == 1
    assert store.lookup("/nf", time.time()) is None and list(store.tmp_dir.iterdir()) == []


async def test_waiting_list_is_bounded(
        upstream: Upstream, session: aiohttp.ClientSession, store: Store) -> None:
    body = upstream.add("w", 50_000)
    upstream.hold("w")
    co = Coalescer(store, max_followers=5, retry_after=2)
    try:
        fetch = http_fetch(session, upstream.url("w"))
        readers = await start_readers(co, "/w", fetch, 6)  # the leader and five followers
        with pytest.raises(TooManyWaiters) as refused:
            await co.get("/w", fetch)
        assert refused.value.status == 503 and refused.value.retry_after == 2
        readers[3].task.cancel()  # one follower leaves: a place frees up
        await asyncio.gather(readers[3].task, return_exceptions=True)
        readers.append(Reader(await co.get("/w", fetch)))
        upstream.release["w"].set()
        await asyncio.wait_for(asyncio.gather(*(r.task for i, r in enumerate(readers) if i != 3)), TIMEOUT)
        assert all(bytes(r.data) == body for i, r in enumerate(readers) if i != 3)
        assert upstream.counts["w"] == 1
    finally:
        await co.close()


async def test_leader_client_leaving_does_not_stop_the_fetch_for_followers(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store) -> None:
    body = upstream.add("l", 100_000)
    upstream.hold("l")
    fetch = http_fetch(session, upstream.url("l"))
    leader = Reader(await coalescer.get("/l", fetch))
    followers = await start_readers(coalescer, "/l", fetch, 3)
    await asyncio.wait_for(leader.first.wait(), TIMEOUT)
    leader.task.cancel()  # the first client disconnects
    await asyncio.gather(leader.task, return_exceptions=True)
    upstream.release["l"].set()
    await asyncio.wait_for(asyncio.gather(*(r.task for r in followers)), TIMEOUT)
    assert all(r.error is None and bytes(r.data) == body for r in followers)
    assert upstream.counts["l"] == 1 and upstream.finished["l"] == 1
    (await committed(store, "/l")).close()


async def test_fetch_stops_when_nobody_waits(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store) -> None:
    upstream.add("z", 100_000)
    upstream.hold("z")
    reader = Reader(await coalescer.get("/z", http_fetch(session, upstream.url("z"))))
    await asyncio.wait_for(reader.first.wait(), TIMEOUT)
    reader.task.cancel()
    await asyncio.gather(reader.task, return_exceptions=True)
    for _ in range(100):
        if coalescer.in_flight() == 0 and not list(store.tmp_dir.iterdir()):
            break
        await asyncio.sleep(0.01)
    assert coalescer.in_flight() == 0 and list(store.tmp_dir.iterdir()) == []
    assert upstream.finished["z"] == 0 and store.lookup("/z", time.time()) is None
    # the next request starts afresh
    upstream.release["z"].set()
    flight = await coalescer.get("/z", http_fetch(session, upstream.url("z")))
    assert flight.role is Role.MISS
    async with flight:
        assert await flight.read() == upstream.bodies["z"]


async def test_object_committed_meanwhile_is_a_hit(coalescer: Coalescer, store: Store) -> None:
    writer = store.begin("/h", time.time())
    writer.write(b"stored")
    assert writer.commit(ResponseHead(200, (), 6), time.time()) is not None

    async def fetch(sink: Sink) -> None:  # pragma: no cover - must not run
        raise AssertionError("fetched although stored")

    async with await coalescer.get("/h", fetch) as flight:
        assert flight.role is Role.HIT
        assert (await flight.head()).content_length == 6 and await flight.read() == b"stored"


# --------------------------------------------------------------------------
# several processes


async def test_two_processes_two_hundred_gets_each_fetch_once(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store,
        children: list[Child]) -> None:
    body = upstream.add("two", 400_000)
    upstream.hold("two")
    child = await Child.start(store.directory, upstream.url("two"), 200)
    children.append(child)
    readers = await start_readers(coalescer, "/obj", http_fetch(session, upstream.url("two")), 200)
    await asyncio.wait_for(upstream.halfway["two"].wait(), TIMEOUT)
    child.go()
    joined = await child.expect("joined")
    assert joined["joined"] == {"COALESCED": 200}  # the fetch runs here; the child follows it
    await child.expect("partial")  # read-while-write across processes: half a body, the rest still upstream
    assert upstream.finished["two"] == 0
    upstream.release["two"].set()
    done = await child.expect("done")
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    assert upstream.counts["two"] == 1
    assert done == {"done": True, "hashes": [digest(body)], "ok": 200, "errors": [], "statuses": []}
    assert all(r.error is None and bytes(r.data) == body for r in readers)
    assert collections.Counter(r.flight.role for r in readers) == {Role.MISS: 1, Role.COALESCED: 199}


async def test_upstream_failure_in_another_process_reaches_followers_within_a_second(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store,
        children: list[Child]) -> None:
    upstream.add("cf", 300_000)
    upstream.hold("cf", drop=True)
    child = await Child.start(store.directory, upstream.url("cf"), 20)
    children.append(child)
    child.go()
    assert (await child.expect("joined"))["joined"] == {"MISS": 1, "COALESCED": 19}
    await child.expect("partial")
    readers = await start_readers(coalescer, "/obj", http_fetch(session, upstream.url("cf")), 50)
    assert {r.flight.role for r in readers} == {Role.COALESCED}
    await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in readers)), TIMEOUT)
    released = time.monotonic()
    upstream.release["cf"].set()
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    assert all(isinstance(r.error, UpstreamFailed) for r in readers)
    assert max(r.ended_at or 0 for r in readers) - released < 1.0
    done = await child.expect("done")
    assert done["ok"] == 0 and done["errors"] == ["UpstreamFailed"] and done["statuses"] == [502]
    assert upstream.counts["cf"] == 1  # followers failed; none re-fetched
    assert store.lookup("/obj", time.time()) is None
    assert list(store.tmp_dir.iterdir()) == [] and not list(store.directory.rglob("*.val"))


async def test_uncacheable_response_is_shared_across_processes_without_a_second_fetch(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store,
        children: list[Child]) -> None:
    body = upstream.add("gone", 200_000)
    upstream.status["gone"] = 404  # streamed to everyone, stored by no one: the temp file is removed
    upstream.hold("gone")
    child = await Child.start(store.directory, upstream.url("gone"), 5)
    children.append(child)
    child.go()
    assert (await child.expect("joined"))["joined"] == {"MISS": 1, "COALESCED": 4}
    await child.expect("partial")
    readers = await start_readers(coalescer, "/obj", http_fetch(session, upstream.url("gone")), 20)
    await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in readers)), TIMEOUT)
    upstream.release["gone"].set()
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    assert all(r.error is None and bytes(r.data) == body for r in readers)
    assert (await readers[0].flight.head()).status == 404
    assert (await child.expect("done"))["hashes"] == [digest(body)]
    assert upstream.counts["gone"] == 1
    assert store.lookup("/obj", time.time()) is None and list(store.tmp_dir.iterdir()) == []


async def test_leader_process_killed_mid_fetch_followers_take_over(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store,
        children: list[Child]) -> None:
    body = upstream.add("k", 300_000)
    upstream.hold("k")  # the first request (the child's) never finishes
    child = await Child.start(store.directory, upstream.url("k"), 1)
    children.append(child)
    child.go()
    assert (await child.expect("joined"))["joined"] == {"MISS": 1}
    await child.expect("partial")
    readers = await start_readers(coalescer, "/obj", http_fetch(session, upstream.url("k")), 50)
    assert {r.flight.role for r in readers} == {Role.COALESCED}
    await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in readers)), TIMEOUT)
    assert all(len(r.data) > 0 for r in readers)  # they already stream the dead leader's first half
    killed = time.monotonic()
    child.proc.send_signal(signal.SIGKILL)
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
    assert max(r.ended_at or 0 for r in readers) - killed < 1.0
    assert all(r.error is None and bytes(r.data) == body for r in readers)
    assert upstream.counts["k"] == 2  # the dead leader's fetch and one takeover
    hit = await committed(store, "/obj")
    assert hit.read() == body
    hit.close()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full (ENOSPC)."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.fixture
def full_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A real 2 MiB tmpfs (root only), filled up by the test."""
    return tmpfs("2m")


async def test_disk_full_leader_streams_from_memory_and_other_processes_pass_through(
        upstream: Upstream, session: aiohttp.ClientSession, full_disk: Path, children: list[Child]) -> None:
    store = Store(full_disk / "cache", 1 << 30)
    co = Coalescer(store)
    try:
        fill(full_disk / "filler")
        body = upstream.add("full", 300_000)
        upstream.hold("full")
        readers = await start_readers(co, "/obj", http_fetch(session, upstream.url("full")), 5)
        await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in readers)), TIMEOUT)
        assert not store.healthy  # the leader's writer failed: nothing to share on disk
        child = await Child.start(store.directory, upstream.url("full"), 10)
        children.append(child)
        child.go()
        assert (await child.expect("joined"))["joined"] == {"COALESCED": 10}
        done = await child.expect("done")  # fetched for itself, while our fetch still holds
        assert done == {"done": True, "hashes": [digest(body)], "ok": 10, "errors": [], "statuses": []}
        assert upstream.counts["full"] == 2 and upstream.finished["full"] == 1
        upstream.release["full"].set()
        await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), TIMEOUT)
        assert all(r.error is None and bytes(r.data) == body for r in readers)
        assert store.lookup("/obj", time.time()) is None
    finally:
        await co.close()
        store.close()


async def test_a_body_complete_in_memory_is_readable_before_its_commit_and_ended_needs_no_reader(
        upstream: Upstream, session: aiohttp.ClientSession, coalescer: Coalescer, store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A flight ends for its requests before the store has the body: ``complete_body`` gives it meanwhile
    (the prefetcher reads a playlist a client has just received), and ``Flight.ended`` returns once the
    fetch is over whether or not anyone read the body."""
    body = upstream.add("p", 50_000)
    upstream.hold("p")
    commit_may_go = threading.Event()
    real_commit = Writer.commit

    def slow_commit(self: Writer, *args: Any, **kwargs: Any) -> Any:
        commit_may_go.wait(TIMEOUT)
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(Writer, "commit", slow_commit)
    flight = await coalescer.get("/p", http_fetch(session, upstream.url("p")))
    assert coalescer.complete_body("/p") is None  # still fetching
    ended = asyncio.ensure_future(flight.ended())
    upstream.release["p"].set()
    await asyncio.wait_for(ended, TIMEOUT)  # nobody read a byte of it
    assert store.lookup("/p", time.time()) is None  # the commit is held...
    assert coalescer.complete_body("/p") == body  # ...and the body is there all the same
    assert coalescer.complete_body("/other") is None
    flight.close()
    commit_may_go.set()
    hit = await committed(store, "/p")
    with hit:
        assert hit.read() == body
    await asyncio.wait_for(until_idle(coalescer), TIMEOUT)
    assert coalescer.complete_body("/p") is None  # stored now: the flight is gone


async def until_idle(coalescer: Coalescer) -> None:
    while coalescer.in_flight():
        await asyncio.sleep(0.01)
