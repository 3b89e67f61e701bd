"""Cache node configuration and lifecycle with real processes on 127.0.0.1 (port 0, no mocks).

The shipped config/regional.toml and config/edge.toml run; flags override the
file (listen, upstream, cache dir/size, policy, name, workers); every
registered eviction policy is accepted and is the one evicting; SIGTERM lets a
slow download of a large cached object finish while new connections are
refused; `legato up --store DIR` serves DIR and Ctrl-C stops every node; a
regional facing a misbehaving upstream answers the right error and caches
nothing wrong.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import RawUpstream, get, node_process

from cache.policy import POLICIES

REPO = Path(__file__).resolve().parents[2]
BODY = bytes(range(256)) * 400  # 100 KiB
BIG = bytes(range(251)) * (16 * 4177)  # ~16 MiB: more than the socket buffers hold
SEG = "/tracks/t{}/aac-96k/seg-{:05d}.m4s"


# --- helpers --------------------------------------------------------------------------------------

def healthz(url: str) -> dict[str, Any]:
    """The node's /healthz answer (must be 200)."""
    status, _, body = get(url + "/healthz")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def store_of(url: str) -> dict[str, Any]:
    """The ``store`` part of /healthz: healthy, bytes, objects, policy."""
    store: dict[str, Any] = healthz(url)["store"]
    return store


def metric(url: str, name: str, **labels: str) -> float | None:
    """The value of one sample of ``url``'s /metrics, or None when it is not exported."""
    status, _, body = get(url + "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) == labels:
            return float(m.group(3))
    return None


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)


def response(status: int, body: bytes, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {length}\r\nCache-Control: public, max-age=3600\r\n"
            f"ETag: \"e{status}-{length}\"\r\nConnection: close\r\n\r\n").encode() + body


class StubUpstream(RawUpstream):
    """A raw TCP server answering by the last path segment (mis)behaviours; counts requests per path.

    seg-00001 truncated (half the body, then close); seg-00002 announces 5000 bytes more than it
    sends, then stalls; seg-00003 answers 500; seg-00004 hangs before answering; seg-00005 is
    ``BODY``; seg-00006 is ``BODY`` after 0.6 s; seg-00007 pauses 0.6 s mid-body; seg-00009 is ``BIG``; /healthz 200; anything else 404.
    """

    def fetches(self) -> dict[str, int]:
        """Requests per path, probes of /healthz left out."""
        with self._lock:
            return {p: n for p, n in self.hits.items() if p != "/healthz"}

    def answer(self, conn: socket.socket, path: str) -> None:
        name = path.rsplit("/", 1)[-1]
        try:
            if path == "/healthz":
                conn.sendall(response(200, b"ok"))
            elif name == "seg-00001.m4s":
                conn.sendall(response(200, BODY)[: 200 + len(BODY) // 2])
            elif name == "seg-00002.m4s":
                conn.sendall(response(200, BODY, length=len(BODY) + 5000))
                self._stop.wait(10)
            elif name == "seg-00003.m4s":
                conn.sendall(response(500, b"upstream broke"))
            elif name == "seg-00004.m4s":
                self._stop.wait(10)
            elif name == "seg-00005.m4s":
                conn.sendall(response(200, BODY))
            elif name == "seg-00006.m4s":  # slow first byte (within first_byte_timeout), then fine
                self._stop.wait(0.6)
                conn.sendall(response(200, BODY))
            elif name == "seg-00007.m4s":  # half the body, a pause (within read_timeout), the rest
                whole = response(200, BODY)
                conn.sendall(whole[: len(whole) // 2])
                self._stop.wait(0.6)
                conn.sendall(whole[len(whole) // 2:])
            elif name == "seg-00009.m4s":
                conn.sendall(response(200, BIG))
            else:
                conn.sendall(response(404, b"no such thing"))
        except OSError:
            pass  # the node gave up on us


@pytest.fixture
def upstream() -> Iterator[StubUpstream]:
    up = StubUpstream()
    yield up
    up.close()


def node_config(tmp: Path, peer: str, *, name: str = "node-t", listen: str = "127.0.0.1:0", workers: int = 1,
                cache_dir: Path | None = None, size: int = 104857600, policy: str = "lru",
                shutdown_timeout: float = 10.0) -> Path:
    """A node TOML with short upstream timeouts and no prefetch."""
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nlisten = "{listen}"\nworkers = {workers}\naccess_log = false\n'
                    f'shutdown_timeout = {shutdown_timeout}\n'
                    f'[upstream]\npeers = ["{peer}"]\ndeadline = 2.0\nread_timeout = 1.0\n'
                    f'first_byte_timeout = 1.0\nhealth_interval = 0.2\n'
                    f'[cache]\ndir = "{cache_dir or tmp / "cache"}"\nsize = {size}\npolicy = "{policy}"\n'
                    '[prefetch]\nsegments = 0\n')
    return path


def refused(port: int) -> bool:
    """True when a new TCP connection to 127.0.0.1:PORT is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def fill_past_capacity(url: str, count: int = 6) -> None:
    """Fetch ``count`` distinct 100 KiB objects through the node."""
    for i in range(count):
        status, headers, body = get(url + SEG.format(i, 5))
        assert (status, headers["X-Cache"], body) == (200, "MISS", BODY), i


# --- 1. the shipped configs -----------------------------------------------------------------------

@pytest.mark.parametrize("role", ["regional", "edge"])
def test_shipped_config_runs_with_listen_upstream_and_cache_dir_overridden(
        tmp_path: Path, upstream: StubUpstream, role: str) -> None:
    """`legato ROLE --config config/ROLE.toml` starts and serves with the file's name, policy and workers.

    Only listen, upstream and cache dir are overridden (the edge's token key k1 too: the shipped
    file names keys/signing/k1.pub.pem, made by `legato token genkey`, which a checkout lacks).
    """
    shipped_path = REPO / "config" / f"{role}.toml"
    shipped = tomllib.loads(shipped_path.read_text())
    args = ["--config", str(shipped_path), "--listen", "127.0.0.1:0", "--upstream", upstream.url,
            "--cache-dir", str(tmp_path / "cache")]
    if role == "edge":
        pem = tmp_path / "k1.pub.pem"
        pem.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        args += ["--public-key", f"k1={pem}"]
    with node_process(role, *args) as node:
        assert node.url.startswith("http://127.0.0.1:") and port_of(node.url) != 0
        health = healthz(node.url)
        assert (health["role"], health["node"]) == (role, shipped["name"])
        assert list(health["upstreams"]) == [upstream.url]
        assert store_of(node.url)["policy"] == shipped["cache"]["policy"]
        assert shipped["workers"] == 2 and health["pid"] != node.pid  # answered by a forked worker
        status, headers, body = get(node.url + SEG.format(1, 5))
        assert (status, headers["X-Cache"], body) == (200, "MISS", BODY)
        assert upstream.fetches()[SEG.format(1, 5)] == 1
        assert any((tmp_path / "cache").iterdir())  # the flag's cache dir, not cache/ROLE-1
        assert node.proc.poll() is None
    assert node.proc.returncode == 0


# --- 2. flags over the file -----------------------------------------------------------------------

def test_flags_override_every_setting_of_the_file(tmp_path: Path, upstream: StubUpstream) -> None:
    """--name/--listen/--upstream/--cache-dir/--cache-size/--policy/--workers win over the file's values.

    The file names a port this test holds bound (the node could not listen there), another upstream
    (which must never be asked), another cache dir (never created), 100 MiB with lfu and 2 workers;
    the flags ask for port 0, 250 KiB with lru and 1 worker: six 100 KiB objects must be cut down
    to at most 250 KiB by the lru policy.
    """
    file_upstream = StubUpstream()
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 0))
        file_port = held.getsockname()[1]
        config = node_config(tmp_path, file_upstream.url, name="from-file", listen=f"127.0.0.1:{file_port}",
                             workers=2, cache_dir=tmp_path / "file-cache", size=100 << 20, policy="lfu")
        with node_process("regional", "--config", str(config), "--name", "from-flag", "--listen", "127.0.0.1:0",
                          "--upstream", upstream.url, "--cache-dir", str(tmp_path / "flag-cache"),
                          "--cache-size", "250K", "--policy", "lru", "--workers", "1") as node:
            assert port_of(node.url) != file_port
            health = healthz(node.url)
            assert (health["node"], health["pid"]) == ("from-flag", node.pid)  # one worker: the process itself
            assert list(health["upstreams"]) == [upstream.url]
            assert store_of(node.url)["policy"] == "lru"
            fill_past_capacity(node.url)
            assert upstream.fetches() == {SEG.format(i, 5): 1 for i in range(6)}
            wait_until(lambda: (metric(node.url, "legato_cache_evictions_total", policy="lru") or 0) >= 4,
                       "lru evicts down to 250 KiB")
            wait_until(lambda: 0 < int(store_of(node.url)["bytes"]) <= 250 << 10,
                       "the store holds at most --cache-size")
            assert metric(node.url, "legato_cache_evictions_total", policy="lfu") is None
            assert any((tmp_path / "flag-cache").iterdir())
        assert node.proc.returncode == 0
        assert file_upstream.hits == {}  # not even probed
        assert not (tmp_path / "file-cache").exists()
    finally:
        held.close()
        file_upstream.close()


# --- 3. every registered policy --------------------------------------------------------------------

@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_registered_policy_is_accepted_and_evicts(tmp_path: Path, upstream: StubUpstream,
                                                        policy: str) -> None:
    """`--policy NAME` starts the node with that policy: /healthz names it, its evictions are counted."""
    with node_process("regional", "--listen", "127.0.0.1:0", "--upstream", upstream.url, "--no-access-log",
                      "--cache-dir", str(tmp_path / "cache"), "--cache-size", "250K", "--policy", policy) as node:
        assert store_of(node.url)["policy"] == policy
        fill_past_capacity(node.url)
        wait_until(lambda: (metric(node.url, "legato_cache_evictions_total", policy=policy) or 0) >= 4,
                   f"{policy} evicts down to 250 KiB")
        wait_until(lambda: 0 < int(store_of(node.url)["bytes"]) <= 250 << 10,
                   "the store holds at most --cache-size")
        others = {p: metric(node.url, "legato_cache_evictions_total", policy=p) for p in POLICIES if p != policy}
        assert all(v is None for v in others.values()), others  # no other policy is running


def test_unknown_policy_is_refused_naming_the_registered_ones(tmp_path: Path) -> None:
    """An unknown --policy stops the regional at start (status 2) and lists every registered name."""
    proc = subprocess.run([sys.executable, "-m", "legato.cli", "regional", "--upstream", "http://127.0.0.1:9",
                           "--cache-dir", str(tmp_path / "c"), "--policy", "LRU"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"unknown policy 'LRU' (known: {', '.join(sorted(POLICIES))})" in proc.stderr


# --- 4. graceful shutdown ----------------------------------------------------------------------------

def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(response head, the body bytes read with it) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed in the head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_slow_download_finish_and_refuses_new_connections(
        tmp_path: Path, upstream: StubUpstream, workers: int) -> None:
    """SIGTERM to the edge's PID mid-way through a slow client's download of a ~16 MiB cached object.

    New connections are refused while the node drains; the slow client still gets every byte;
    then the process exits 0.
    """
    config = node_config(tmp_path, upstream.url, name="edge-drain", shutdown_timeout=30.0)
    with node_process("edge", "--config", str(config), "--workers", str(workers)) as node:
        path = SEG.format(1, 9)
        status, headers, body = get(node.url + path)
        assert (status, headers["X-Cache"], body == BIG) == (200, "MISS", True)
        wait_until(lambda: get(node.url + path)[1]["X-Cache"] == "HIT", "the big object is stored")

        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.connect(("127.0.0.1", port_of(node.url)))
        client.settimeout(20)
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head, received = read_head(client)
        assert head.startswith(b"HTTP/1.1 200") and b"X-Cache: HIT" in head, head
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert m is not None, head
        length = int(m.group(1))
        assert length == len(BIG)
        chunks = [received]
        got = len(received)

        def slow_read(seconds: float) -> None:
            nonlocal got
            end = time.monotonic() + seconds
            while time.monotonic() < end and got < length:
                chunk = client.recv(16384)
                assert chunk, f"connection closed after {got} of {length} bytes"
                chunks.append(chunk)
                got += len(chunk)
                time.sleep(0.01)

        slow_read(0.3)
        assert 0 < got < length // 4, got  # mid-way, far from the end
        node.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(port_of(node.url)), "new connections refused after SIGTERM", timeout=5)
        assert node.proc.poll() is None, "exited before the slow transfer finished"
        slow_read(1.0)
        assert got < length, "the transfer was not slow enough to be in flight at SIGTERM"
        while got < length:  # the rest at full speed
            chunk = client.recv(1 << 20)
            assert chunk, f"connection closed after {got} of {length} bytes"
            chunks.append(chunk)
            got += len(chunk)
        client.close()
        assert b"".join(chunks) == BIG
        assert node.proc.wait(timeout=15) == 0
        assert "Traceback" not in node.stderr()


# --- 5. legato up --store and Ctrl-C ------------------------------------------------------------------

def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True for a running process (a zombie is gone: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    """``count`` stdout lines of ``proc`` within ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while buf.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {buf!r} within {timeout:.0f} s"
        if select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"exited (status {proc.wait()}) after {buf!r}"
            buf += chunk
    return buf.decode().splitlines()[:count]


def one_segment_store(root: Path, body: bytes) -> Path:
    seg = root / "tracks" / "t1" / "aac-96k" / "seg-00001.m4s"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(body)
    return root


@pytest.mark.parametrize("ctrl_c", ["process-group", "up-only"])
def test_up_serves_the_store_flag_and_sigint_stops_every_node(tmp_path: Path, ctrl_c: str) -> None:
    """`legato up TOPOLOGY --store DIR`: the origin serves DIR (not the file's store); SIGINT stops all.

    Ctrl-C in a terminal signals the whole process group (``process-group``); ``up-only`` signals
    just `legato up`, which must then stop its nodes itself.  Either way `up` exits 0 (as on
    SIGTERM), every node and worker process is gone, their ports refuse connections, the state
    file is removed, and no log holds a traceback.
    """
    file_store = one_segment_store(tmp_path / "file-store", b"from the file's store" * 100)
    flag_store = one_segment_store(tmp_path / "flag-store", b"from --store" * 100)
    state = tmp_path / "state"
    topology = tmp_path / "topology.toml"
    topology.write_text(f'state_dir = "{state}"\n[origin]\nlisten = "127.0.0.1:0"\nstore = "{file_store}"\n'
                        '[[regional]]\nname = "ra"\n[[regional]]\nname = "rb"\n'
                        '[[edge]]\nname = "e1"\n[[edge]]\nname = "e2"\n[[edge]]\nname = "e3"\nworkers = 2\n')
    up = subprocess.Popen([sys.executable, "-m", "legato.cli", "up", str(topology), "--store", str(flag_store)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True)  # its own process group, as a shell gives a foreground job
    try:
        lines = [line.split() for line in read_lines(up, 6, timeout=45)]
        assert [(kind, name) for kind, name, _ in lines] == [
            ("origin", "origin"), ("regional", "ra"), ("regional", "rb"), ("edge", "e1"), ("edge", "e2"),
            ("edge", "e3")]
        urls = {name: url for _, name, url in lines}
        assert Path(healthz(urls["origin"])["store"]["path"]).resolve() == flag_store.resolve()
        for name in ("e1", "e2", "e3"):
            status, _, body = get(urls[name] + SEG.format(1, 1))
            assert (status, body) == (200, b"from --store" * 100), name
        pids = {n["name"]: n["pid"] for n in json.loads((state / "topology.json").read_text())}
        processes = descendants(up.pid)
        assert set(pids.values()) <= processes and len(descendants(pids["e3"])) == 2  # e3's workers
        if ctrl_c == "process-group":
            os.killpg(up.pid, signal.SIGINT)
        else:
            up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        _, stderr = up.communicate(timeout=10)
    assert not [pid for pid in processes if alive(pid)]
    assert all(refused(port_of(url)) for url in urls.values())
    assert not (state / "topology.json").exists()
    assert b"Traceback" not in stderr, stderr
    for log in (state / "logs").iterdir():
        assert "Traceback" not in log.read_text(errors="replace"), log


# --- 6. a regional against a misbehaving upstream ------------------------------------------------------

@pytest.mark.parametrize(("n", "expect"), [(1, "broken"), (2, "broken"), (3, 502), (4, 504)],
                         ids=["truncated", "short-of-content-length", "500", "hang"])
def test_regional_never_caches_a_misbehaving_upstream(tmp_path: Path, upstream: StubUpstream, n: int,
                                                      expect: int | str) -> None:
    """A regional passes upstream failures on fast (broken body, 502, 504) and stores nothing of them.

    Both attempts reach the upstream (nothing was cached), the store stays empty, and a good
    object afterwards is served and stored.
    """
    config = node_config(tmp_path, upstream.url, name="regional-t", policy="s3fifo")
    with node_process("regional", "--config", str(config)) as node:
        for attempt in range(2):
            t0 = time.monotonic()
            try:
                status, headers, _ = get(node.url + SEG.format(1, n))
                outcome: int | str = status
                assert headers.get("X-Cache") == "MISS"
            except (urllib.error.URLError, OSError, http.client.IncompleteRead):
                outcome = "broken"
            assert outcome == expect, (n, attempt)
            assert time.monotonic() - t0 < 4.0  # fail fast, not after a long hang
        assert upstream.fetches()[SEG.format(1, n)] == 2
        time.sleep(0.3)  # a wrongly committed body would be in the index by now
        assert store_of(node.url)["objects"] == 0
        status, _, body = get(node.url + SEG.format(1, 5))
        assert (status, body) == (200, BODY)
        wait_until(lambda: store_of(node.url)["objects"] == 1, "the good object is stored")
        assert get(node.url + SEG.format(1, 5))[1]["X-Cache"] == "HIT"


@pytest.mark.parametrize("seg", [6, 7], ids=["before-the-first-byte", "mid-body"])
def test_regional_client_gone_during_a_miss_is_not_an_error(tmp_path: Path, upstream: StubUpstream,
                                                            seg: int) -> None:
    """A client that hangs up while its miss is waiting on upstream is no error of the node.

    (A player seeking away, or an edge shutting down, does this all the time.)  Whether it leaves
    before the upstream's first byte or mid-body, the node logs no ERROR traceback and keeps serving.
    """
    config = node_config(tmp_path, upstream.url, name="regional-t")
    with node_process("regional", "--config", str(config)) as node:
        client = socket.create_connection(("127.0.0.1", port_of(node.url)))
        client.settimeout(5)
        client.sendall(f"GET {SEG.format(1, seg)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        wait_until(lambda: upstream.fetches().get(SEG.format(1, seg)) == 1, "the miss reaches upstream")
        if seg == 7:
            assert client.recv(12) == b"HTTP/1.1 200"  # the head and part of the body are on their way
        client.close()  # before the upstream's pause of 0.6 s is over
        time.sleep(1.0)
        status, _, body = get(node.url + SEG.format(1, 5))
        assert (status, body) == (200, BODY)
        assert "Error handling request" not in node.stderr() and "Traceback" not in node.stderr(), node.stderr()
