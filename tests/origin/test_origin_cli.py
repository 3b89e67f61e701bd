"""`legato origin` as a real process: config, flags, access log, workers, signals.

(Named test_origin_cli.py, not test_cli.py: test basenames must be unique
across tests/ in pytest's default import mode.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import xxhash
from servers import origin_process, run_origin

TRACK = "t1"
MASTER = f"/tracks/{TRACK}/master.m3u8"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "tracks" / TRACK / "aac-96k").mkdir(parents=True)
    (root / "tracks" / TRACK / "master.m3u8").write_bytes(b"#EXTM3U\n")
    (root / "tracks" / TRACK / "aac-96k" / "seg-00001.m4s").write_bytes(os.urandom(100_000))
    return root


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def origin_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legato.cli", "origin", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


# ------------------------------------------------------------ command line and config


def test_help_lists_every_option_with_help() -> None:
    out = origin_cmd("--help")
    assert out.returncode == 0
    for option in ("--config", "--store", "--listen", "--workers", "--no-access-log"):
        assert option in out.stdout
    assert "127.0.0.1:8080" in out.stdout  # defaults are shown
    assert "origin listening on" in out.stdout


@pytest.mark.parametrize(("toml", "key"), [
    ("colour = 'blue'\n", "colour: unknown key"),
    ("workers = 'two'\n", "workers: expected an integer"),
    ("access_log = 1\n", "access_log: expected bool"),
    ("[cache_control]\nsegment_max_age = 'long'\n", "cache_control.segment_max_age: expected an integer"),
    ("[cache_control]\nsurprise = 1\n", "cache_control.surprise: unknown key"),
    ("workers = 0\n", "workers 0 outside 1..256"),
    ("listen = 'nowhere'\n", "listen 'nowhere' is not HOST:PORT"),
    ("cors_origin = '*, https://a.example'\n", "cors_origin"),
    ("this is not toml\n", "not valid TOML"),
])
def test_bad_config_exits_non_zero_with_key_path_and_no_traceback(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "origin.toml"
    config.write_text(toml)
    out = origin_cmd("--config", str(config))
    assert out.returncode != 0
    assert key in out.stderr
    assert str(config) in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""


def test_missing_config_file_and_bad_flags(tmp_path: Path, store: Path) -> None:
    out = origin_cmd("--config", str(tmp_path / "nope.toml"))
    assert out.returncode != 0 and "no such config file" in out.stderr and "Traceback" not in out.stderr
    out = origin_cmd("--store", str(store), "--listen", "localhost")
    assert out.returncode != 0 and "listen 'localhost' is not HOST:PORT" in out.stderr
    out = origin_cmd("--store", str(store), "--workers", "0")
    assert out.returncode != 0 and "workers 0" in out.stderr
    out = origin_cmd("--store", str(tmp_path / "missing"), "--listen", "127.0.0.1:0")
    assert out.returncode != 0 and "not a directory" in out.stderr and "Traceback" not in out.stderr


def test_port_in_use_is_a_clean_error(store: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = origin_cmd("--store", str(store), "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert out.returncode != 0 and "cannot listen" in out.stderr and "Traceback" not in out.stderr


def test_config_file_is_used_and_flags_override_it(tmp_path: Path, store: Path) -> None:
    config = tmp_path / "origin.toml"
    config.write_text(f"""
store = "{tmp_path / 'not-this-one'}"
listen = "127.0.0.1:1"
cors_origin = "https://player.example"
[cache_control]
manifest_max_age = 7
""")
    with run_origin(store, "--config", str(config)) as url:  # --store and --listen override the file
        status, headers, body = fetch(url + MASTER)
    assert status == 200 and body == b"#EXTM3U\n"
    assert headers["Access-Control-Allow-Origin"] == "https://player.example"
    assert headers["Cache-Control"] == "public, max-age=7"


def test_repo_example_config_loads() -> None:
    from legato.config import load
    from origin.config import OriginConfig

    repo = Path(__file__).resolve().parents[2]
    assert load(OriginConfig, repo / "config" / "origin.toml").workers >= 1


# ------------------------------------------------------------ access log


def test_access_log_is_one_json_line_per_request_without_query(store: Path) -> None:
    with origin_process(store) as node:
        fetch(node.url + MASTER + "?token=SECRET-TOKEN", {"User-Agent": "test-agent/1", "Range": "bytes=0-3"})
        fetch(node.url + "/tracks/nope/master.m3u8?token=SECRET-TOKEN")
        node.stop()
        lines = [json.loads(line) for line in node.stderr().splitlines() if line.startswith("{")]
        assert "SECRET-TOKEN" not in node.stderr()
    assert len(lines) == 2
    first, second = lines
    assert set(first) == {"time", "peer", "method", "path", "status", "bytes", "duration_ms", "user_agent", "range"}
    assert first["path"] == MASTER and first["method"] == "GET" and first["status"] == 206
    assert first["peer"] == "127.0.0.1" and first["user_agent"] == "test-agent/1" and first["range"] == "bytes=0-3"
    assert first["bytes"] > 4 and first["duration_ms"] >= 0 and first["time"].endswith("Z")
    assert second["status"] == 404 and second["path"] == "/tracks/nope/master.m3u8"


def test_no_access_log_flag(store: Path) -> None:
    with origin_process(store, "--no-access-log") as node:
        assert fetch(node.url + MASTER)[0] == 200
        node.stop()
        assert not [line for line in node.stderr().splitlines() if line.startswith("{")]


# ------------------------------------------------------------ workers


def test_two_workers_answer_on_one_port_and_metrics_aggregate(store: Path) -> None:
    with run_origin(store, "--no-access-log", workers=2) as url:
        pids = set()
        for _ in range(60):  # a new connection each time: the kernel spreads them
            status, _, body = fetch(url + "/healthz")
            assert status == 200
            pids.add(json.loads(body)["pid"])
        assert len(pids) == 2
        for _ in range(10):
            fetch(url + MASTER)
        # whichever worker answers the scrape reports the requests of both
        for _ in range(4):
            text = fetch(url + "/metrics")[2].decode()
            line = next(x for x in text.splitlines()
                        if x.startswith("legato_http_requests_total{") and 'kind="master"' in x)
            assert float(line.rsplit(" ", 1)[1]) == 10
            assert sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                       if x.startswith("legato_http_requests_total{") and 'kind="healthz"' in x) == 60


def test_workers_exit_with_the_parent(store: Path) -> None:
    with origin_process(store, "--no-access-log", workers=2) as node:
        worker_pids = {json.loads(fetch(node.url + "/healthz")[2])["pid"] for _ in range(30)}
        assert node.pid not in worker_pids
        assert node.stop() == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in worker_pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (reaped by its parent or init shortly)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------ graceful shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("workers", [1, 2])
def test_signal_lets_in_flight_responses_finish(tmp_path: Path, store: Path, sig: int, workers: int) -> None:
    big = os.urandom(48 << 20)  # streamed (> memory_object_max_kb), larger than socket buffers
    (store / "tracks" / TRACK / "aac-96k" / "seg-00002.m4s").write_bytes(big)
    with origin_process(store, "--no-access-log", workers=workers) as node:
        port = int(node.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(f"GET /tracks/{TRACK}/aac-96k/seg-00002.m4s HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = conn.recv(65536)  # the response has started...
            assert data.startswith(b"HTTP/1.1 200")
            node.proc.send_signal(sig)  # ...and is in flight when the signal lands
            time.sleep(1.0)
            assert node.proc.poll() is None, "exited with a response in flight"
            with pytest.raises(OSError):  # no longer accepting
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        _, _, body = data.partition(b"\r\n\r\n")
        assert len(body) == len(big) and xxhash.xxh3_64(body).digest() == xxhash.xxh3_64(big).digest()
        assert node.proc.wait(timeout=15) == 0
