"""Origin -> regional -> edge on loopback: real processes, real ffmpeg, real failures."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import xxhash
from metrics_text import metric
from servers import NodeProcess, node_process

from packager.plan import AAC_FRAME

TRACKS = ("sunrise", "sunrise-b", "sunrise-c", "sunrise-d")
TOKEN = "purge-secret-for-tests"


@dataclass
class Tiers:
    store: Path
    origin: NodeProcess
    regionals: list[NodeProcess]
    edges: list[NodeProcess]
    tmp: Path


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def until_hit(url: str, timeout: float = 2.0) -> None:
    """Wait until ``url`` is a HIT: a body is committed just after it was sent."""
    deadline = time.monotonic() + timeout
    while get(url)[1]["X-Cache"] != "HIT":
        assert time.monotonic() < deadline, f"{url} never became a HIT"
        time.sleep(0.05)


def catalog(store: Path, track: str) -> dict:
    return json.loads((store / "tracks" / track / "track.json").read_text())


def object_paths(store: Path, track: str, rendition: str = "aac-160k") -> list[tuple[str, str | None]]:
    """(URL path, expected xxh3 or None) of everything a player fetches for one rendition."""
    doc = catalog(store, track)
    r = next(r for r in doc["renditions"] if r["id"] == rendition)
    base = f"/tracks/{track}"
    return ([(f"{base}/master.m3u8", None), (f"{base}/{rendition}/index.m3u8", None),
             (f"{base}/{rendition}/init.mp4", r["init_xxh3"])]
            + [(f"{base}/{rendition}/{s['name']}", s["xxh3"]) for s in r["segments"]])


@pytest.fixture(scope="module")
def tier_store(packaged_track: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged track under four ids, so objects spread over both regionals."""
    src, tid = packaged_track
    store = tmp_path_factory.mktemp("tier-store")
    for name in TRACKS:
        shutil.copytree(src / "tracks" / tid, store / "tracks" / name)
    return store


def cache_node(role: str, name: str, cache_dir: Path, upstreams: list[str], *extra: str) -> contextlib.AbstractContextManager[NodeProcess]:
    args = ["--name", name, "--listen", "127.0.0.1:0", "--cache-dir", str(cache_dir), "--cache-size", "256M",
            "--no-access-log", *extra]
    for u in upstreams:
        args += ["--upstream", u]
    return node_process(role, *args)


@contextlib.contextmanager
def tiers(store: Path, tmp: Path, edges: int = 1, edge_workers: int = 1, edge_args: tuple[str, ...] = ()) -> Iterator[Tiers]:
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(node_process("origin", "--store", str(store), "--listen", "127.0.0.1:0",
                                                  "--no-access-log"))
        regionals = [stack.enter_context(cache_node("regional", f"regional-{i}", tmp / f"r{i}", [origin.url]))
                     for i in range(2)]
        edge_nodes = [stack.enter_context(cache_node("edge", f"edge-{i}", tmp / f"e{i}", [r.url for r in regionals],
                                                     "--workers", str(edge_workers), *edge_args))
                      for i in range(edges)]
        yield Tiers(store, origin, regionals, edge_nodes, tmp)


@pytest.fixture
def env(tier_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tiers]:
    monkeypatch.setenv("LEGATO_ADMIN_TOKEN", TOKEN)
    with tiers(tier_store, tmp_path) as t:
        yield t


# --- the tiers work ----------------------------------------------------------------

def test_ffmpeg_plays_through_edge_and_second_play_is_all_hits(env: Tiers) -> None:
    edge = env.edges[0].url
    doc = catalog(env.store, "sunrise")
    assert get(edge + "/tracks/sunrise/master.m3u8")[0] == 200  # a player starts here, then picks a rendition
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", f"{edge}/tracks/sunrise/aac-160k/index.m3u8",
                           "-f", "s16le", "-ac", "2", "-ar", "44100", "-"], capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    assert 0 <= len(proc.stdout) // 4 - round(doc["metadata"]["duration"] * 44100) < AAC_FRAME
    for path, _ in object_paths(env.store, "sunrise"):
        until_hit(edge + path)  # the last bodies are committed just after they are sent; a second play comes later
    for path, digest in object_paths(env.store, "sunrise"):
        status, headers, body = get(edge + path)
        assert status == 200, path
        assert headers["X-Cache"] == "HIT", (path, headers)
        assert "Age" in headers and "edge-0" in headers["Via"]
        if digest:
            assert xxhash.xxh3_64_hexdigest(body) == digest
    # each object crossed the origin once, whichever regional it went through
    segments = len(object_paths(env.store, "sunrise")) - 3
    assert metric(env.origin.url, "legato_http_requests_total", kind="segment") == segments


def test_range_and_conditional_from_cache(env: Tiers) -> None:
    edge = env.edges[0].url
    path, _digest = object_paths(env.store, "sunrise")[3]
    status, headers, body = get(edge + path)
    assert status == 200
    until_hit(edge + path)
    status, headers, part = get(edge + path, {"Range": "bytes=10-99"})
    assert (status, part, headers["Content-Range"]) == (206, body[10:100], f"bytes 10-99/{len(body)}")
    assert headers["X-Cache"] == "HIT"
    status, headers, _ = get(edge + path, {"If-None-Match": headers["ETag"]})
    assert status == 304 and headers["X-Cache"] == "HIT"
    status, headers, _ = get(edge + path, {"Range": f"bytes={len(body)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(body)}"


def test_prefetch_fetches_the_next_segments_and_counts_their_use(env: Tiers) -> None:
    edge = env.edges[0].url
    paths = object_paths(env.store, "sunrise-c")  # master, playlist, init, seg 1..4
    assert get(edge + paths[3][0])[1]["X-Cache"] == "MISS"  # segment 1, asked for by a listener
    for nxt, _ in paths[4:6]:  # segments 2 and 3 arrive without being asked for
        until_hit(edge + nxt, timeout=5)
    assert metric(edge, "legato_prefetch_bytes_total", outcome="fetched") > 0
    assert metric(edge, "legato_prefetch_bytes_total", outcome="used") > 0


def test_metrics_and_health(env: Tiers) -> None:
    edge = env.edges[0].url
    assert get(edge + "/tracks/sunrise/master.m3u8")[1]["X-Cache"] == "MISS"
    until_hit(edge + "/tracks/sunrise/master.m3u8")
    status, _, body = get(edge + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok"
    assert set(health["upstreams"]) == {r.url for r in env.regionals}
    text = get(edge + "/metrics")[2].decode()
    for name in ("legato_cache_requests_total", "legato_cache_bytes_sent_total", "legato_upstream_seconds",
                 "legato_store_bytes", "legato_store_objects", "legato_cache_evictions_total",
                 "legato_prefetch_bytes_total", "legato_upstream_up"):
        assert name in text, name
    assert metric(edge, "legato_cache_requests_total", result="HIT") >= 1
    assert metric(edge, "legato_cache_requests_total", result="MISS") >= 1


# --- many at once ----------------------------------------------------------------------

def test_surge_of_1000_requests_makes_one_origin_fetch(tier_store: Path, tmp_path: Path) -> None:
    with tiers(tier_store, tmp_path, edge_workers=2) as t:
        path, digest = object_paths(t.store, "sunrise-d")[-1]  # the last: prefetch adds no other 200s
        before = metric(t.origin.url, "legato_http_requests_total", kind="segment", status="200")

        async def surge() -> list[tuple[int, str, str]]:
            conn = aiohttp.TCPConnector(limit=0, force_close=True)
            async with aiohttp.ClientSession(connector=conn) as s:
                async def one() -> tuple[int, str, str]:
                    async with s.get(t.edges[0].url + path, timeout=aiohttp.ClientTimeout(total=60)) as r:
                        return r.status, xxhash.xxh3_64_hexdigest(await r.read()), r.headers.get("X-Cache", "")
                return await asyncio.gather(*(one() for _ in range(1000)))

        results = asyncio.run(surge())
        assert {(s, d) for s, d, _ in results} == {(200, digest)}
        assert metric(t.origin.url, "legato_http_requests_total", kind="segment", status="200") - before == 1
        kinds = {x for _, _, x in results}
        assert kinds <= {"MISS", "COALESCED", "HIT"} and "COALESCED" in kinds


# --- failure -----------------------------------------------------------------------

def test_killing_a_regional_mid_stream_loses_no_request(env: Tiers) -> None:
    edge = env.edges[0].url
    plan = [(p, d) for track in TRACKS for p, d in object_paths(env.store, track, "aac-320k")]
    killed_at = None
    failures = []
    for i, (path, digest) in enumerate(plan):
        if i == len(plan) // 3:
            env.regionals[0].proc.send_signal(signal.SIGKILL)
            env.regionals[0].proc.wait()
            killed_at = time.monotonic()
        status, _, body = get(edge + path)
        if status != 200 or (digest and xxhash.xxh3_64_hexdigest(body) != digest):
            failures.append((path, status))
    assert failures == []
    assert killed_at is not None
    # the dead regional is out of rotation within a second
    time.sleep(max(0.0, 1.0 - (time.monotonic() - killed_at)))
    health = json.loads(get(edge + "/healthz")[2])
    assert health["upstreams"][env.regionals[0].url] == "open"


def test_origin_down_serves_cached_and_fails_fast_for_uncached(env: Tiers) -> None:
    regional = env.regionals[0].url
    cached, _ = object_paths(env.store, "sunrise")[3]
    uncached, _ = object_paths(env.store, "sunrise")[-1]  # regionals do not prefetch
    assert get(regional + cached)[0] == 200
    until_hit(regional + cached)
    env.origin.stop()
    status, headers, _ = get(regional + cached)
    assert status == 200 and headers["X-Cache"] in ("HIT", "STALE")
    t0 = time.monotonic()
    status, headers, body = get(regional + uncached)
    assert status in (502, 504), body
    assert time.monotonic() - t0 < 3.0
    assert headers.get("X-Cache") == "MISS"


def find_stored(cache_dir: Path, body: bytes) -> Path:
    for f in cache_dir.rglob("*"):
        if f.is_file() and f.stat().st_size == len(body) and f.read_bytes() == body:
            return f
    raise AssertionError(f"object not found under {cache_dir}")


@pytest.mark.parametrize("ram", ["0", "64M"])
def test_corrupted_object_is_never_served(env: Tiers, ram: str) -> None:
    """A byte flipped on disk: with the RAM tier off the disk copy is re-verified, dropped and
    refetched; with it on, the verified copy in RAM keeps being served.  Never the corrupt bytes."""
    with cache_node("edge", "edge-c", env.tmp / f"ec{ram}", [r.url for r in env.regionals],
                    "--cache-ram", ram) as node:
        edge = node.url
        path, digest = object_paths(env.store, "sunrise")[5]
        status, _, body = get(edge + path)
        assert status == 200
        until_hit(edge + path)  # committed and verified before the byte flips
        stored = find_stored(env.tmp / f"ec{ram}", body)
        with stored.open("r+b") as fh:
            fh.seek(len(body) // 2)
            byte = fh.read(1)
            fh.seek(len(body) // 2)
            fh.write(bytes([byte[0] ^ 0xFF]))
        for _ in range(3):
            status, headers, again = get(edge + path)
            assert status == 200 and xxhash.xxh3_64_hexdigest(again) == digest, (headers, stored)
        if ram == "0":
            assert metric(edge, "legato_cache_corrupt_total") >= 1
            assert find_stored(env.tmp / f"ec{ram}", body).read_bytes() == body  # refetched, stored again


def test_restarted_edge_serves_old_objects_as_hits(tier_store: Path, tmp_path: Path) -> None:
    with node_process("origin", "--store", str(tier_store), "--listen", "127.0.0.1:0", "--no-access-log") as origin:
        paths = object_paths(tier_store, "sunrise-b")
        with cache_node("edge", "edge-r", tmp_path / "edge", [origin.url]) as edge:
            for p, _ in paths:
                assert get(edge.url + p)[0] == 200
            for p, _ in paths:
                until_hit(edge.url + p)  # all committed before the restart
        with cache_node("edge", "edge-r", tmp_path / "edge", [origin.url]) as edge:
            for p, digest in paths:
                status, headers, body = get(edge.url + p)
                assert status == 200 and headers["X-Cache"] == "HIT", p
                assert digest is None or xxhash.xxh3_64_hexdigest(body) == digest


def test_purge_by_prefix_with_token(env: Tiers) -> None:
    edge = env.edges[0].url
    paths = object_paths(env.store, "sunrise")
    for p, _ in paths:
        get(edge + p)
    for p, _ in paths:
        until_hit(edge + p)  # every commit (and prefetch) has landed: nothing re-stores after the purge
    body = json.dumps({"prefix": "/tracks/sunrise/"}).encode()
    req = urllib.request.Request(edge + "/admin/purge", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(req, timeout=10)
    assert denied.value.code == 401
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["purged"] >= len(paths) - 1
    assert get(edge + paths[-1][0])[1]["X-Cache"] == "MISS"


def test_a_purge_stops_every_worker_serving_the_object_at_once(tier_store: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept-alive connections on both workers of an edge, answered by the fast path's hot replies, see the
    purge on their very next request (the other worker only sees the file unlinked).  The regionals are
    stopped first, so a fresh copy cannot be fetched: anything served after the purge would be the old one.
    No RAM tier: these segments are small, and RAM hits are checked against the index on every request."""
    monkeypatch.setenv("LEGATO_ADMIN_TOKEN", TOKEN)
    with tiers(tier_store, tmp_path, edge_workers=2, edge_args=("--cache-ram", "0")) as t:
        edge = t.edges[0].url
        path, _ = object_paths(t.store, "sunrise-b")[-1]  # the last segment: no prefetch stores it again
        get(edge + path)
        until_hit(edge + path)
        host, port = edge.removeprefix("http://").split(":")
        conns = [http.client.HTTPConnection(host, int(port), timeout=10) for _ in range(16)]  # over both workers

        def ask(conn: http.client.HTTPConnection) -> tuple[int, str, bytes]:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.getheader("X-Cache", ""), resp.read()

        for regional in t.regionals:
            regional.stop()
        time.sleep(1.05 - time.time() % 1)  # what follows fits in one second: the hot replies stay in use
        for conn in conns:
            for _ in range(3):
                assert ask(conn)[:2] == (200, "HIT")
        req = urllib.request.Request(edge + "/admin/purge", data=json.dumps({"path": path}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["purged"] == 1
        for conn in conns:
            status, x_cache, _ = ask(conn)
            assert status in (502, 503, 504) and x_cache != "HIT"
            conn.close()


# --- bad input -----------------------------------------------------------------------

async def raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return data


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /tracks/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /tracks/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /tracks/sunrise/aac-96k/seg-00001.m4s%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET /tracks/nope/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"DELETE /tracks/sunrise/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET /tracks/sunrise/master.m3u8 HTTP/1.1\r\nHost: x\r\nRange: bytes=5-1\r\n\r\n", 416),
    (b"GET /tracks/sunrise/master.m3u8 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,5-9\r\n\r\n", 416),
    (b"GET /tracks/sunrise/master.m3u8 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 400),
])
def test_bad_requests_to_every_tier(env: Tiers, request_bytes: bytes, status: int) -> None:
    for node in [env.edges[0], env.regionals[0]]:
        answer = asyncio.run(raw(node.url, request_bytes))
        first = answer.split(b"\r\n", 1)[0].decode()
        assert first.split(" ")[1] in (str(status), "431" if status == 400 else str(status)), (node.url, first)
        assert b"Traceback" not in answer
