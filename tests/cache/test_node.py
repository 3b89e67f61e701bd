"""A real edge process against misbehaving upstreams, a full disk, reloads; `legato up` / `purge`."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import RawUpstream, get, node_process

BODY = bytes(range(256)) * 400  # 100 KiB


def response(status: int, body: bytes, length: int | None = None, extra: str = "") -> bytes:
    length = len(body) if length is None else length
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {length}\r\nCache-Control: public, max-age=3600\r\n"
            f"ETag: \"e{status}\"\r\nConnection: close\r\n{extra}\r\n").encode() + body


class BadUpstream(RawUpstream):
    """A raw TCP server answering each path with canned (mis)behaviour; counts requests."""

    def answer(self, conn: socket.socket, path: str) -> None:
        name = path.rsplit("/", 1)[-1]
        if path == "/healthz":
            conn.sendall(response(200, b"ok"))
        elif name == "seg-00001.m4s":  # truncated: half the body, then the connection drops
            conn.sendall(response(200, BODY)[: 200 + len(BODY) // 2])
        elif name == "seg-00002.m4s":  # announces more than it sends, then stalls
            conn.sendall(response(200, BODY, length=len(BODY) + 5000))
            self._stop.wait(10)
        elif name == "seg-00003.m4s":
            conn.sendall(response(500, b"upstream broke"))
        elif name == "seg-00004.m4s":  # hangs before answering
            self._stop.wait(10)
        elif name == "seg-00005.m4s":
            conn.sendall(response(200, BODY))
        else:
            conn.sendall(response(404, b"no such thing"))


@pytest.fixture
def bad_upstream() -> Iterator[BadUpstream]:
    up = BadUpstream()
    yield up
    up.close()


def edge_config(tmp: Path, upstream: str, cache_dir: Path, **cache: object) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in cache.items())
    cfg = tmp / "edge.toml"
    cfg.write_text(f'name = "edge-t"\nlisten = "127.0.0.1:0"\naccess_log = false\n'
                   f'[upstream]\npeers = ["{upstream}"]\ndeadline = 2.0\nread_timeout = 1.0\n'
                   f'first_byte_timeout = 1.0\nhealth_interval = 0.2\n'
                   f'[cache]\ndir = "{cache_dir}"\nsize = 104857600\n{extra}[prefetch]\nsegments = 0\n')
    return cfg


SEG = "/tracks/t1/aac-96k/seg-{:05d}.m4s"


@pytest.mark.parametrize(("n", "expect"), [(1, "broken"), (2, "broken"), (3, 502), (4, 504)])
def test_misbehaving_upstream_is_never_cached(tmp_path: Path, bad_upstream: BadUpstream, n: int,
                                              expect: int | str) -> None:
    with node_process("edge", "--config", str(edge_config(tmp_path, bad_upstream.url, tmp_path / "c"))) as edge:
        for attempt in range(2):
            t0 = time.monotonic()
            try:
                status, headers, _body = get(edge.url + SEG.format(n))
                outcome: int | str = status
                assert headers.get("X-Cache") == "MISS"
            except (urllib.error.URLError, ConnectionError, OSError, http_incomplete()):
                outcome = "broken"
            assert outcome == expect, (n, attempt)
            assert time.monotonic() - t0 < 4.0  # fail fast, not after a long hang
        assert bad_upstream.hits[SEG.format(n)] == 2  # nothing was cached: both attempts went upstream
        ok_status, _ok_headers, ok_body = get(edge.url + SEG.format(5))
        assert (ok_status, ok_body) == (200, BODY)


def http_incomplete() -> type[Exception]:
    import http.client

    return http.client.IncompleteRead


def test_upstream_404_passes_through_uncached(tmp_path: Path, bad_upstream: BadUpstream) -> None:
    with node_process("edge", "--config", str(edge_config(tmp_path, bad_upstream.url, tmp_path / "c"))) as edge:
        for _ in range(2):
            status, headers, body = get(edge.url + SEG.format(9))
            assert (status, body, headers["X-Cache"]) == (404, b"no such thing", "MISS")
        assert bad_upstream.hits[SEG.format(9)] == 2


@pytest.fixture
def tiny_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 1 MiB tmpfs: a cache disk that fills up after a few segments."""
    return tmpfs("1m")


def test_full_disk_passes_through_and_reports(tmp_path: Path, bad_upstream: BadUpstream, tiny_disk: Path) -> None:
    # every path ending in seg-00005 answers 100 KiB: 30 distinct objects need 3 MiB on a 1 MiB disk
    with node_process("edge", "--config", str(edge_config(tmp_path, bad_upstream.url, tiny_disk))) as edge:
        for i in range(30):
            status, _, body = get(f"{edge.url}/tracks/t{i}/aac-96k/seg-00005.m4s")
            assert (status, body) == (200, BODY), i
        health = json.loads(get(edge.url + "/healthz")[2])
        assert health["store"]["healthy"] is False and health["store"]["reason"]
        metrics = get(edge.url + "/metrics")[2].decode()
        assert "legato_cache_store_healthy 0.0" in metrics
        assert edge.stderr().count("No space left on device") <= 2  # logged once, not per request


def test_sighup_reloads_upstreams(tmp_path: Path, bad_upstream: BadUpstream) -> None:
    other = BadUpstream()
    try:
        cfg = edge_config(tmp_path, bad_upstream.url, tmp_path / "c")
        with node_process("edge", "--config", str(cfg)) as edge:
            assert get(edge.url + SEG.format(5))[0] == 200
            cfg.write_text(cfg.read_text().replace(bad_upstream.url, other.url))
            edge.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while other.url not in json.loads(get(edge.url + "/healthz")[2])["upstreams"]:
                assert time.monotonic() < deadline, "reload did not switch upstreams"
                time.sleep(0.1)
            assert get(edge.url + "/tracks/t2/aac-96k/seg-00005.m4s")[0] == 200
            assert other.hits.get("/tracks/t2/aac-96k/seg-00005.m4s") == 1
            assert edge.proc.poll() is None
    finally:
        other.close()


def test_sighup_reloads_the_allowed_origins_of_fast_path_hits_too(tmp_path: Path, bad_upstream: BadUpstream) -> None:
    cfg = edge_config(tmp_path, bad_upstream.url, tmp_path / "c")
    cfg.write_text('cors_origin = "https://a.example"\n' + cfg.read_text())

    def allowed(origin: str) -> str | None:
        request = urllib.request.Request(edge.url + SEG.format(5), headers={"Origin": origin})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.read() == BODY
            return resp.headers.get("Access-Control-Allow-Origin")

    with node_process("edge", "--config", str(cfg)) as edge:
        assert allowed("https://a.example") == "https://a.example"  # the miss, by aiohttp
        deadline = time.monotonic() + 5
        while get(edge.url + SEG.format(5))[1]["X-Cache"] != "HIT":  # stored once the body has ended
            assert time.monotonic() < deadline, "never stored"
            time.sleep(0.05)
        for _ in range(3):  # hits, answered by the fast path
            assert allowed("https://a.example") == "https://a.example"
        cfg.write_text(cfg.read_text().replace("https://a.example", "https://b.example"))
        edge.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while allowed("https://b.example") != "https://b.example":
            assert time.monotonic() < deadline, "the fast path kept the old origins"
            time.sleep(0.1)


def test_bad_node_config_fails_at_start_with_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[upstream]\npeers = ["http://127.0.0.1:1"]\nload_epsilon = "lots"\n')
    proc = subprocess.run([sys.executable, "-m", "legato.cli", "edge", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "upstream.load_epsilon" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "legato.cli", "edge", "--upstream", "http://127.0.0.1:1",
                           "--policy", "fifo", "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "unknown policy 'fifo'" in proc.stderr


def test_up_and_purge_commands(tmp_path: Path, packaged_store: Path) -> None:
    topo = tmp_path / "topology.toml"
    topo.write_text(f'state_dir = "{tmp_path / "state"}"\nadmin_token = "t0ken"\n'
                    f'[origin]\nlisten = "127.0.0.1:0"\nstore = "{packaged_store}"\n'
                    '[[regional]]\nname = "ra"\n[[regional]]\nname = "rb"\n'
                    '[[edge]]\nname = "e1"\n[[edge]]\nname = "e2"\n[[edge]]\nname = "e3"\n')
    up = subprocess.Popen([sys.executable, "-m", "legato.cli", "up", str(topo)], stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.PIPE)
    try:
        assert up.stdout is not None
        lines = [up.stdout.readline().split() for _ in range(6)]
        assert [(kind, name) for kind, name, _ in lines] == [
            ("origin", "origin"), ("regional", "ra"), ("regional", "rb"), ("edge", "e1"), ("edge", "e2"),
            ("edge", "e3")]
        edges = [url for kind, _, url in lines if kind == "edge"]
        seg = "/tracks/sunrise/aac-96k/seg-00001.m4s"
        for e in edges:
            assert get(e + seg)[0] == 200
        purge = subprocess.run([sys.executable, "-m", "legato.cli", "purge", "--config", str(topo),
                                "/tracks/sunrise/"], capture_output=True, text=True, timeout=60,
                               check=False)
        assert purge.returncode == 0, purge.stdout + purge.stderr
        answers = dict(line.split(": ", 1) for line in purge.stdout.strip().splitlines())
        assert set(answers) == {"regional ra", "regional rb", "edge e1", "edge e2", "edge e3"}
        assert all(a.startswith("purged ") for a in answers.values())
        assert sum(int(a.split()[1]) for a in answers.values()) >= 4  # the segment on 3 edges + a regional
        assert get(edges[0] + seg)[1]["X-Cache"] == "MISS"
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
        with contextlib.suppress(Exception):
            assert up.stdout is not None and up.stderr is not None
            up.stdout.close()
            up.stderr.close()
    assert not (tmp_path / "state" / "topology.json").exists()
