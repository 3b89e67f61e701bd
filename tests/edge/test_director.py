"""`legato director` as a real process: sticky 302s, spread, failover, regions, bad input.

Two directors are started:

* one in front of three real `legato edge` processes (pulling from a real
  origin serving the packaged test track): the same session always gets the
  same edge, a player (ffmpeg) plays through it, and when an edge process is
  killed by PID only its sessions move, each to one other edge;
* one in front of ten loopback stand-in edges (aiohttp servers answering
  ``/healthz`` on 127.0.0.1, in a thread of this process) in three regions,
  with MaxMind's test database and 127.0.0.1 as a trusted proxy: sessions
  spread exactly as the pure ring (cache.ring.Maglev) says, countries go to
  their region, and a stopped stand-in's sessions spread over the others.

The pure parts (RiseFall, RecentLoads, Director) are tested directly too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import NodeProcess, node_process

from cache.ring import Maglev
from drm.tokens import issue
from edge.director import (
    FAILOVER,
    FIRST,
    OTHER_REGION,
    SPILL,
    DirectorConfig,
    Edge,
    RecentLoads,
    RiseFall,
    address_session,
    director_for,
    parse_edge,
)
from legato import config as cfg

DATA = Path(__file__).resolve().parents[1] / "data" / "maxmind"
TRACK = "sunrise"
MASTER = f"/tracks/{TRACK}/master.m3u8"
INTERVAL = 0.2  # health probe interval of the test directors


# --------------------------------------------------------------------------- helpers


class Client:
    """One keep-alive HTTP/1.1 connection that does not follow redirects."""

    def __init__(self, base: str) -> None:
        self.host = base.removeprefix("http://")
        self.conn = http.client.HTTPConnection(self.host, timeout=30)

    def get(self, target: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request(method, target, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def location(self, target: str, headers: dict[str, str] | None = None) -> str:
        status, hdrs, body = self.get(target, headers)
        assert status == 302, (status, body)
        return hdrs["location"]

    def close(self) -> None:
        self.conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def healthy_edges(url: str) -> set[str]:
    client = Client(url)
    try:
        _, _, body = client.get("/healthz")
    finally:
        client.close()
    return {e["name"] for e in json.loads(body)["edges"] if e["healthy"]}


def metric(url: str, name: str, **labels: str) -> float:
    client = Client(url)
    try:
        _, _, body = client.get("/metrics")
    finally:
        client.close()
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class LoopbackEdges:
    """``n`` stand-in edges on 127.0.0.1 answering ``/healthz`` (200, or 503 when told), in a thread."""

    def __init__(self, n: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.status = [200] * n
        self.probes = [0] * n
        self.runners: list[web.AppRunner] = []
        self.urls: list[str] = []
        for i in range(n):
            self.urls.append(self._call(self._start(i)))

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _start(self, i: int) -> str:
        async def healthz(_request: web.Request) -> web.Response:
            self.probes[i] += 1
            return web.Response(status=self.status[i], text="stand-in edge\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def stop(self, i: int) -> None:
        """Stop stand-in ``i``: its port refuses connections from now on."""
        self._call(self.runners[i].cleanup())

    def close(self) -> None:
        for runner in self.runners:
            with contextlib.suppress(Exception):
                self._call(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path_factory.mktemp("keys") / "k1.pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pem


def token(key: Ed25519PrivateKey, session: str, **kw: object) -> str:
    kw.setdefault("now", time.time())
    kw.setdefault("tracks", (TRACK,))
    return issue(key, "k1", user="alice", session=session, **kw)  # type: ignore[arg-type]


def write_config(path: Path, pem: Path, *, regions: str = "", geo: str = "") -> Path:
    path.write_text(f"""
hashing = "maglev"
default_region = "other"
{regions}
[health]
interval = {INTERVAL}
timeout = 0.5
fall = 2
rise = 2

[tokens]
public_keys = {{ k1 = "{pem}" }}

[geo]
{geo}
""")
    return path


# --------------------------------------------------------------------------- real edges


@pytest.fixture(scope="module")
def real(origin_url: str, signing: tuple[Ed25519PrivateKey, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, list[NodeProcess]]]:
    """A director in front of three real edge processes (all in the default region)."""
    tmp = tmp_path_factory.mktemp("real")
    config = write_config(tmp / "director.toml", signing[1])
    with contextlib.ExitStack() as stack:
        edges = [stack.enter_context(node_process(
            "edge", "--name", f"edge-{i}", "--listen", "127.0.0.1:0", "--upstream", origin_url,
            "--cache-dir", str(tmp / f"cache-{i}"), "--no-access-log")) for i in range(3)]
        director = stack.enter_context(node_process(
            "director", "--config", str(config), "--listen", "127.0.0.1:0",
            *[arg for i, e in enumerate(edges) for arg in ("--edge", f"edge-{i}={e.url}")]))
        yield director, edges


def edge_of(location: str, edges: list[NodeProcess]) -> str:
    for i, e in enumerate(edges):
        if location.startswith(e.url + "/"):
            return f"edge-{i}"
    raise AssertionError(f"{location} points at no edge")


def test_same_session_same_edge_every_time(real: tuple[NodeProcess, list[NodeProcess]],
                                           signing: tuple[Ed25519PrivateKey, Path]) -> None:
    director, edges = real
    key = signing[0]
    client = Client(director.url)
    ring = Maglev([f"edge-{i}" for i in range(3)])
    try:
        placed: dict[str, str] = {}
        for n in range(150):
            session = f"session-{n}"
            query = f"?token={token(key, session)}&start=0"
            status, headers, body = client.get(MASTER + query)
            assert status == 302 and body == b""
            assert headers["cache-control"] == "private, no-store"
            assert headers["location"].endswith(MASTER + query), "same path, same query, token carried"
            placed[session] = edge_of(headers["location"], edges)
            assert placed[session] == ring.primary(session)
        # again, with fresh tokens for the same sessions, by GET and HEAD, on new connections too
        for n, session in enumerate(placed):
            if n % 50 == 0:
                client.close()
                client = Client(director.url)
            target = f"/tracks/{TRACK}/manifest.mpd?token={token(key, session)}"
            status, headers, _ = client.get(target, method="HEAD" if n % 2 else "GET")
            assert status == 302 and edge_of(headers["location"], edges) == placed[session]
        assert set(placed.values()) == {"edge-0", "edge-1", "edge-2"}
        # no token: the client address is the session (127.0.0.1 here, one edge every time)
        by_address = {edge_of(client.location(MASTER), edges) for _ in range(20)}
        assert by_address == {ring.primary("127.0.0.1")}
    finally:
        client.close()


def test_a_player_plays_through_the_director(real: tuple[NodeProcess, list[NodeProcess]],
                                             signing: tuple[Ed25519PrivateKey, Path]) -> None:
    """ffmpeg follows the 302 and fetches the playlist and segments from that edge, not the director."""
    director, edges = real
    session = "player-1"
    chosen = Maglev([f"edge-{i}" for i in range(3)]).primary(session)
    edge = edges[int(chosen.rsplit("-", 1)[1])]
    before = metric(edge.url, "legato_http_requests_total", kind="segment")
    url = f"{director.url}{MASTER}?token={token(signing[0], session)}"
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    result = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-i", url, "-map", "0:a:0", "-t", "8", "-f", "null",
                             "-"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert metric(edge.url, "legato_http_requests_total", kind="segment") > before
    assert metric(director.url, "legato_http_requests_total", kind="segment") == 0
    assert metric(director.url, "legato_director_redirects_total", edge=chosen) >= 1


def test_killing_an_edge_moves_only_its_sessions(real: tuple[NodeProcess, list[NodeProcess]],
                                                 signing: tuple[Ed25519PrivateKey, Path]) -> None:
    director, edges = real
    key = signing[0]
    names = [f"edge-{i}" for i in range(3)]
    ring = Maglev(names)
    sessions = [f"listener-{n}" for n in range(240)]
    client = Client(director.url)
    try:
        def place() -> dict[str, str]:
            return {s: edge_of(client.location(f"{MASTER}?token={token(key, s)}"), edges) for s in sessions}

        before = place()
        victim = "edge-1"
        assert Counter(before.values())[victim] > 40
        edges[1].proc.send_signal(signal.SIGKILL)  # by PID, no goodbye
        edges[1].proc.wait(timeout=10)
        wait_for(lambda: victim not in healthy_edges(director.url), what="the director to see edge-1 down")
        after = place()
        again = place()
        moved = {s for s in sessions if before[s] != after[s]}
        assert moved == {s for s in sessions if before[s] == victim}, "only the dead edge's sessions move"
        assert after == again, "each moves to one edge, consistently"
        assert all(after[s] == ring.candidates(s)[1] if ring.candidates(s)[0] == victim else after[s] == before[s]
                   for s in sessions)
        assert {after[s] for s in moved} == {"edge-0", "edge-2"}
        assert metric(director.url, "legato_director_edge_up", edge=victim) == 0
        assert metric(director.url, "legato_director_redirects_total", choice=FAILOVER) >= 2 * len(moved)
    finally:
        client.close()


# --------------------------------------------------------------------------- loopback stand-ins, regions

REGIONS = {"eu": range(4), "us": range(4, 7), "other": range(7, 10)}


@pytest.fixture(scope="module")
def standins() -> Iterator[LoopbackEdges]:
    edges = LoopbackEdges(10)
    try:
        yield edges
    finally:
        edges.close()


@pytest.fixture(scope="module")
def regional(standins: LoopbackEdges, signing: tuple[Ed25519PrivateKey, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A director over ten stand-ins: eu (GB, SE) 0-3, us (US) 4-6, the default region 'other' 7-9."""
    tmp = tmp_path_factory.mktemp("regional")
    config = write_config(tmp / "director.toml", signing[1],
                          regions='[regions]\neu = ["GB", "SE"]\nus = ["US"]\n',
                          geo=f'database = "{DATA / "GeoIP2-Country-Test.mmdb"}"\n'
                              'trusted_proxies = ["127.0.0.1/32"]\n')
    args = ["--config", str(config), "--listen", "127.0.0.1:0", "--no-access-log"]
    for region, members in REGIONS.items():
        args += [arg for i in members for arg in ("--edge", f"s{i}={standins.urls[i]}@{region}")]
    with node_process("director", *args) as director:
        yield director


@functools.cache
def ring_of(region: str) -> Maglev:
    return Maglev([f"s{i}" for i in REGIONS[region]])


def standin_of(location: str, standins: LoopbackEdges) -> str:
    for i, url in enumerate(standins.urls):
        if location.startswith(url + "/"):
            return f"s{i}"
    raise AssertionError(f"{location} points at no stand-in")


def test_sessions_spread_as_the_ring_says(regional: NodeProcess, standins: LoopbackEdges) -> None:
    """3000 clients behind the trusted proxy, from addresses the database does not know (region 'other')."""
    rng = random.Random(3)
    addresses = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(3000)]
    ring = ring_of("other")
    client = Client(regional.url)
    try:
        placed = [standin_of(client.location(MASTER, {"X-Forwarded-For": a}), standins) for a in addresses]
    finally:
        client.close()
    assert placed == [ring.primary(a) for a in addresses], "every session on its ring's first choice"
    counts = Counter(placed)
    mean = len(addresses) / 3
    assert max(counts.values()) / mean < 1.1 and min(counts.values()) / mean > 0.9, counts


def test_countries_go_to_their_region(regional: NodeProcess, standins: LoopbackEdges) -> None:
    client = Client(regional.url)
    cases = {  # X-Forwarded-For as the trusted proxy writes it -> (session, region)
        "81.2.69.160": ("81.2.69.160", "eu"),  # GB
        "89.160.20.112": ("89.160.20.112", "eu"),  # SE
        "216.160.83.56": ("216.160.83.56", "us"),  # US
        "8.8.8.8": ("8.8.8.8", "other"),  # not in the database
        "2001:218::1": ("2001:218::/64", "other"),  # JP: in no region
        "[2001:218::ffff:1]:443": ("2001:218::/64", "other"),  # same /64, same session
        "::ffff:81.2.69.160": ("81.2.69.160", "eu"),  # IPv4-mapped: the IPv4 client
        "203.0.113.9, 216.160.83.56": ("216.160.83.56", "us"),  # the rightmost untrusted hop
    }
    try:
        for forwarded, (session, region) in cases.items():
            got = standin_of(client.location(MASTER, {"X-Forwarded-For": forwarded}), standins)
            assert got == ring_of(region).primary(session), forwarded
    finally:
        client.close()
    assert metric(regional.url, "legato_director_redirects_total", region="us") >= 2


def test_bad_forwarding_headers_fall_back_to_the_proxy(regional: NodeProcess, standins: LoopbackEdges) -> None:
    """Unreadable hops end the walk at the trusted peer (127.0.0.1, loopback: no country): still a redirect."""
    client = Client(regional.url)
    expected = ring_of("other").primary("127.0.0.1")
    try:
        for bad in ("garbage", "1.2.3.4.5", "_hidden", "unknown", ",,,", "1.2.3.4, nonsense", "[::1", "x" * 4000):
            status, headers, body = client.get(MASTER, {"X-Forwarded-For": bad})
            assert status == 302, (bad, status, body)
            assert standin_of(headers["location"], standins) == expected, bad
    finally:
        client.close()


def test_a_stopped_edge_spreads_its_sessions_over_the_others(regional: NodeProcess, standins: LoopbackEdges) -> None:
    rng = random.Random(9)
    addresses = [f"10.1.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(600)]
    client = Client(regional.url)
    try:
        before = [standin_of(client.location(MASTER, {"X-Forwarded-For": a}), standins) for a in addresses]
        standins.status[8] = 503  # a sick edge: out after `fall` probes, then stopped for good
        wait_for(lambda: "s8" not in healthy_edges(regional.url), what="s8 out after 2 failed probes")
        standins.stop(8)
        after = [standin_of(client.location(MASTER, {"X-Forwarded-For": a}), standins) for a in addresses]
    finally:
        client.close()
    moved = [i for i in range(len(addresses)) if before[i] != after[i]]
    assert moved and all(before[i] == "s8" for i in moved)
    assert len(moved) == before.count("s8")
    assert {after[i] for i in moved} == {"s7", "s9"}, "spread over the region's other edges"


def test_bad_input(regional: NodeProcess, signing: tuple[Ed25519PrivateKey, Path]) -> None:
    key = signing[0]
    other = Ed25519PrivateKey.generate()
    now = time.time()
    client = Client(regional.url)
    refusals = {  # query -> (status, reason)
        "?token=nonsense": (401, "malformed"),
        f"?token={token(key, 's')}&token={token(key, 's')}": (401, "malformed"),
        f"?token={token(other, 's')}": (401, "bad signature"),
        f"?token={issue(key, 'k9', user='u', session='s', tracks=(TRACK,), now=now)}": (401, "unknown signing key"),
        f"?token={token(key, 's', now=now - 3600)}": (401, "expired"),
        f"?token={token(key, 's', tracks=('other-track',))}": (403, "wrong track"),
        f"?token={token(key, 's', bind_ip='192.0.2.1')}": (403, "wrong address"),
    }
    try:
        for query, (status, reason) in refusals.items():
            got, headers, body = client.get(MASTER + query)
            assert (got, json.loads(body)) == (status, {"error": reason}), query
            assert "location" not in headers and headers["cache-control"] == "no-store"
            assert ("www-authenticate" in headers) == (status == 401)
            assert query.split("=", 1)[1][:40] not in body.decode(), "the token is never echoed"
        for path, status, text in (
            (f"/tracks/{TRACK}/aac-160k/seg-00001.m4s", 404, "only redirects manifest requests"),
            (f"/tracks/{TRACK}/aac-160k/index.m3u8", 404, "only redirects manifest requests"),
            (f"/keys/{'0' * 32}", 404, "only redirects manifest requests"),
            ("/nothing/here", 404, "only redirects manifest requests"),
            ("/tracks/%2e%2e/master.m3u8", 400, ""),
            (MASTER + "?" + "a" * 3000, 414, "query longer than 2048 bytes"),
        ):
            got, headers, body = client.get(path)
            assert got == status and text in body.decode(), (path, got, body)
            assert "location" not in headers
        got, headers, _ = client.get(MASTER, method="POST")
        assert got == 405 and headers["allow"] == "GET, HEAD, OPTIONS"
    finally:
        client.close()
    assert metric(regional.url, "legato_director_refusals_total", reason="expired") >= 1
    assert metric(regional.url, "legato_director_refusals_total") >= len(refusals)


def test_workers_agree_and_sighup_reloads_the_edges(standins: LoopbackEdges, signing: tuple[Ed25519PrivateKey, Path],
                                                    tmp_path: Path) -> None:
    """Two workers send a session to the same edge; SIGHUP adds an edge (only new placements go to it),
    and a broken file on SIGHUP keeps the running config."""
    def edges_toml(members: range) -> str:
        return "".join(f'\n[[edges]]\nname = "s{i}"\nurl = "{standins.urls[i]}"\n' for i in members)

    def locate(url: str, address: str) -> str:
        client = Client(url)  # a new connection each time: either worker may answer
        try:
            return standin_of(client.location(MASTER, {"X-Forwarded-For": address}), standins)
        finally:
            client.close()

    def every_worker_sees(url: str, edges: set[str]) -> bool:
        return all(healthy_edges(url) == edges for _ in range(12))

    config = write_config(tmp_path / "director.toml", signing[1], geo='trusted_proxies = ["127.0.0.1/32"]')
    base = config.read_text()
    config.write_text(base + edges_toml(range(2)))
    addresses = [f"10.9.{n // 100}.{n % 100 + 1}" for n in range(200)]  # below load_floor: no spill
    with node_process("director", "--config", str(config), "--listen", "127.0.0.1:0", "--workers", "2",
                      "--no-access-log") as director:
        pids = {json.loads(Client(director.url).get("/healthz")[2])["pid"] for _ in range(30)}
        assert len(pids) == 2, "both workers answer"
        before = [locate(director.url, a) for a in addresses]
        two = Maglev(["s0", "s1"])
        assert before == [two.primary(a) for a in addresses]

        config.write_text(base + edges_toml(range(3)))
        director.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: every_worker_sees(director.url, {"s0", "s1", "s2"}), what="both workers to reload")
        after = [locate(director.url, a) for a in addresses]
        three = Maglev(["s0", "s1", "s2"])
        assert after == [three.primary(a) for a in addresses] and "s2" in after

        config.write_text("this is [not toml\n")
        director.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: director.stderr().count("reload failed, keeping the running config") == 2,
                 what="both workers to refuse the broken file")
        assert every_worker_sees(director.url, {"s0", "s1", "s2"}) and director.proc.poll() is None
        assert [locate(director.url, a) for a in addresses[:20]] == after[:20]


def test_no_healthy_edge_is_503(tmp_path: Path, signing: tuple[Ed25519PrivateKey, Path]) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with node_process("director", "--listen", "127.0.0.1:0", "--no-access-log", "--edge", f"a={dead}",
                      "--edge", f"b={dead}/prefix@eu") as director:
        client = Client(director.url)
        try:
            status, headers, body = client.get(MASTER)
            assert (status, json.loads(body)) == (503, {"error": "no healthy edge"})
            assert headers["retry-after"] == "1"
            status, _, body = client.get("/healthz")
            assert status == 503 and json.loads(body)["status"] == "no healthy edge"
        finally:
            client.close()


@pytest.mark.parametrize(("args", "message"), [
    ([], "no edges"),
    (["--edge", "a"], "expected NAME=URL[@REGION]"),
    (["--edge", "a=ftp://x"], "not an absolute http(s) URL"),
    (["--edge", "a=http://x@eu", "--edge", "a=http://y"], "duplicate names"),
    (["--edge", "bad name=http://x"], "must match"),
    (["--edge", "a=http://x", "--workers", "0"], "workers 0 outside"),
])
def test_bad_command_lines_exit_2(cli, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("director", "--listen", "127.0.0.1:0", *args, check=False, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("toml", "message"), [
    ('[regions]\neu = ["GB", "XX"]', "'XX' is not an ISO 3166-1"),
    ('[regions]\neu = ["GB"]\nuk = ["GB"]', "GB is in both"),
    ('hashing = "fancy"', "hashing 'fancy' is none of"),
    ("load_epsilon = -1", "load_epsilon"),
    ('[geo]\ndatabase = "{data}/GeoIP2-City-Test-Broken-Double-Format.mmdb"', "GeoIP2-City-Test-Broken"),
    ('[geo]\ndatabase = "/nonexistent.mmdb"', "/nonexistent.mmdb"),
    ('[tokens]\npublic_keys = { k1 = "/nonexistent.pem" }', "public key file /nonexistent.pem"),
    ("[[edges]]\nname = \"a\"\nurl = \"http://x?q=1\"", "no user, query"),
    ("[health]\nfall = 0", "health.fall"),
])
def test_bad_config_files_exit_2(cli, tmp_path: Path, toml: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "director.toml"
    path.write_text(toml.replace("{data}", str(DATA)) + "\n")
    result = cli("director", "--config", str(path), "--edge", "a=http://127.0.0.1:9", check=False, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_example_config_loads() -> None:
    config = cfg.load(DirectorConfig, Path(__file__).resolve().parents[2] / "config" / "director.toml")
    core = director_for(config)
    assert sorted(core.rings) == ["eu", "us"] and core.region_of("SE") == "eu" and core.region_of(None) == "eu"


# --------------------------------------------------------------------------- config/haproxy.cfg


def haproxy_for(config: str, edges: LoopbackEdges, port: int, maps: Path) -> str:
    """config/haproxy.cfg pointed at 127.0.0.1: our port, the stand-ins, probes every 0.2 s."""
    text = config.replace("/etc/haproxy/", f"{maps}/").replace("bind :80", f"bind 127.0.0.1:{port}")
    text = text.replace("maxconn 200000", "maxconn 2000").replace("nbthread 4", "nbthread 1")
    text = text.replace("inter 1s", "inter 200ms")
    for i, url in enumerate(edges.urls):
        text = re.sub(rf"server edge-{i + 1} \S+ redir \S+", f"server edge-{i + 1} {url[7:]} redir {url}", text)
    return text


def test_haproxy_example_does_the_same(tmp_path: Path, signing: tuple[Ed25519PrivateKey, Path]) -> None:
    """The example ingress, run: sessions by the token's sid (else the address), regions, failover, errors."""
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy); config/haproxy.cfg not exercised")
    config = (Path(__file__).resolve().parents[2] / "config" / "haproxy.cfg").read_text()
    (tmp_path / "country.map").write_text("127.0.0.0/8 GB\n")  # loopback clients are in GB: region eu
    (tmp_path / "region.map").write_text("GB eu\nUS us\n")
    edges = LoopbackEdges(3)
    port = free_port()
    cfg_path = tmp_path / "haproxy.cfg"
    cfg_path.write_text(haproxy_for(config, edges, port, tmp_path))
    check = subprocess.run([haproxy, "-c", "-f", str(cfg_path)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg_path)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    key = signing[0]
    names = {url: f"edge-{i + 1}" for i, url in enumerate(edges.urls)}
    client = Client(f"http://127.0.0.1:{port}")

    def where(target: str) -> str:
        location = client.location(target)
        return next(name for url, name in names.items() if location.startswith(url + "/"))

    try:
        wait_for(lambda: healthz_ok(port), what="haproxy to listen")
        query = f"?token={token(key, 'abc')}&x=1"
        status, headers, _ = client.get(MASTER + query)
        assert status == 302 and headers["location"].endswith(MASTER + query)
        assert headers["cache-control"] == "private, no-store"
        assert len({where(f"{MASTER}?token={token(key, 'abc', tracks=(t,))}") for t in ("a", "b", "c")}) == 1
        sessions = [f"session-{n}" for n in range(1000)]
        before = {s: where(f"{MASTER}?token={token(key, s)}") for s in sessions}
        counts = Counter(before.values())
        assert set(counts) == {"edge-1", "edge-2"} and max(counts.values()) < 560, counts  # eu only, even
        assert len({where(MASTER) for _ in range(5)}) == 1, "no token: the address"
        for path, method, status in ((f"/tracks/{TRACK}/aac-96k/seg-00001.m4s", "GET", 404),
                                     (MASTER, "POST", 405), (MASTER + "?" + "a" * 3000, "GET", 414)):
            assert client.get(path, method=method)[0] == status, path
        edges.stop(0)
        on_first = next(s for s in sessions if before[s] == "edge-1")
        wait_for(lambda: where(f"{MASTER}?token={token(key, on_first)}") != "edge-1", what="haproxy to see edge-1 down")
        after = {s: where(f"{MASTER}?token={token(key, s)}") for s in sessions}
        moved = {s for s in sessions if before[s] != after[s]}
        assert moved == {s for s in sessions if before[s] == "edge-1"}
        assert {after[s] for s in moved} == {"edge-2"}
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
        edges.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthz_ok(port: int) -> bool:
    with contextlib.suppress(OSError):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    return False


# --------------------------------------------------------------------------- the pure parts


def test_rise_fall() -> None:
    health = RiseFall(rise=2, fall=3)
    assert health.up and health.observe(False) and not health.up, "the first probe decides at once"
    assert not health.observe(True) and not health.up
    assert health.observe(True) and health.up, "up after 2 good probes in a row"
    assert [health.observe(False) for _ in range(3)] == [False, False, True] and not health.up
    health.observe(True)
    health.observe(True)
    assert health.up and health.observe(False, definitive=True) and not health.up, "refused: down at once"


def test_recent_loads_forget_after_the_window() -> None:
    loads = RecentLoads(window=30, slices=30)
    for t in range(60):
        loads.add("a", float(t))
        loads.expire(float(t))
        assert loads.loads["a"] == min(t + 1, 30)
    loads.expire(200.0)
    assert loads.loads["a"] == 0


def test_director_core_spills_a_hot_session_and_counts_how() -> None:
    edges = [Edge(f"e{i}", f"http://e{i}", "r") for i in range(4)]
    core = director_for(DirectorConfig(default_region="r", load_epsilon=0.25, load_floor=0,
                                       edges=tuple(parse_edge(f"e{i}=http://e{i}@r") for i in range(4))))
    assert list(core.edges.values()) == edges
    hows: Counter[str] = Counter()
    for n in range(400):
        session = "hot" if n % 2 else f"s{n}"
        choice = core.choose(session, "r", now=float(n) / 100)
        assert choice is not None
        hows[choice.how] += 1
    loads = core.loads.loads
    assert max(loads.values()) <= 1.25 * 400 / 4 and hows[SPILL] > 0 and hows[FIRST] > 0
    core.observe("e0", False)
    assert core.choose("x", "elsewhere", now=5.0).how == OTHER_REGION  # type: ignore[union-attr]
    for name in list(core.edges):
        core.observe(name, False)
    assert core.choose("x", "r", now=5.0) is None


def test_below_the_floor_nothing_spills() -> None:
    """A quiet director: 60 sessions on 3 edges stay on their first choices (no 1.25x of a mean of 20)."""
    entries = tuple(parse_edge(f"e{i}=http://e{i}") for i in range(3))
    ring = Maglev(["e0", "e1", "e2"])
    quiet = director_for(DirectorConfig(edges=entries))
    strict = director_for(DirectorConfig(edges=entries, load_floor=0))
    sessions = [f"s{n}" for n in range(60)]
    assert all(quiet.choose(s, "default", 1.0).edge.name == ring.primary(s) for s in sessions)  # type: ignore[union-attr]
    assert any(strict.choose(s, "default", 1.0).how == SPILL for s in sessions)  # type: ignore[union-attr]


def test_address_sessions() -> None:
    import ipaddress

    assert address_session(ipaddress.ip_address("192.0.2.7")) == "192.0.2.7"
    assert address_session(ipaddress.ip_address("2001:db8::1")) == address_session(
        ipaddress.ip_address("2001:db8::abcd:1")) == "2001:db8::/64"
    assert address_session(None) == "unknown"
    assert re.fullmatch(r"[0-9.]+", address_session(ipaddress.ip_address("10.0.0.1")))
