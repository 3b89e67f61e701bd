"""Licensing at the edge, end to end: real origin and edge processes, MaxMind's
test City database, a trusted proxy (the test itself, on 127.0.0.1), real
ffmpeg.  Listeners "from" 81.2.69.160 (GB), 89.160.20.112 (SE),
216.160.83.56 (US) and 8.8.8.8 (not in the test database)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from metrics_text import metric
from servers import NodeProcess, node_process

from drm import tokens

DATA = Path(__file__).resolve().parent / "data" / "maxmind"
CITY = DATA / "GeoIP2-City-Test.mmdb"
GB, SE, US, UNKNOWN = "81.2.69.160", "89.160.20.112", "216.160.83.56", "8.8.8.8"
TOKEN = "geo-purge-secret"

# track id -> `legato license set` options (None: no record)
LICENCES: dict[str, list[str] | None] = {
    "gb-only": ["--allow", "GB"],
    "not-se": ["--allow", "WW", "--deny", "SE"],
    "later": ["--allow", "WW", "--from", "2099-01-01"],
    "swap": ["--allow", "WW", "--deny", "US", "--replacement", "US=not-se"],
    "registered-us": ["--allow", "US", "--country-field", "registered_country"],
    "no-record": None,
}
LICENSED = "licensed"
NOT_LICENSED = "not licensed in territory"
NOT_OPEN = "window not open"
UNKNOWN_T = "unknown territory"
# (track, listener) -> the documented answer: 200, or (451, reason, replacement)
EXPECTED: dict[tuple[str, str], object] = {
    ("gb-only", GB): 200, ("gb-only", SE): (451, NOT_LICENSED, None), ("gb-only", US): (451, NOT_LICENSED, None),
    ("gb-only", UNKNOWN): (451, UNKNOWN_T, None),
    ("not-se", GB): 200, ("not-se", SE): (451, NOT_LICENSED, None), ("not-se", US): 200,
    ("not-se", UNKNOWN): (451, UNKNOWN_T, None),
    ("later", GB): (451, NOT_OPEN, None), ("later", SE): (451, NOT_OPEN, None), ("later", US): (451, NOT_OPEN, None),
    ("later", UNKNOWN): (451, NOT_OPEN, None),
    ("swap", GB): 200, ("swap", SE): 200, ("swap", US): (451, NOT_LICENSED, "not-se"),
    ("swap", UNKNOWN): (451, UNKNOWN_T, None),
    # 81.2.69.160 is in GB but registered to a US network; 216.160.83.56 the other way round
    ("registered-us", GB): 200, ("registered-us", US): (451, NOT_LICENSED, None),
    ("no-record", GB): (451, "no licence record", None),
}


@pytest.fixture(scope="module")
def geo_store(packaged_track: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, tid = packaged_track
    store = tmp_path_factory.mktemp("geo-store")
    for track, options in LICENCES.items():
        shutil.copytree(src / "tracks" / tid, store / "tracks" / track)
    for track, options in LICENCES.items():
        if options is not None:
            run_legato("license", "set", track, "--store", str(store), *options)
    return store


def run_legato(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legato.cli", *args], capture_output=True, text=True,
                          check=check, timeout=timeout, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def edge(upstream: str, cache_dir: Path, *extra: str, geo: str = "") -> Iterator[NodeProcess]:
    config = cache_dir.parent / f"{cache_dir.name}.toml"
    config.write_text(f"[geo]\n{geo}\n")
    with node_process("edge", "--config", str(config), "--name", "edge-geo", "--listen", "127.0.0.1:0",
                      "--upstream", upstream, "--cache-dir", str(cache_dir), "--cache-size", "64M",
                      "--workers", "1", "--trusted-proxy", "127.0.0.1/32", *extra) as node:
        yield node


@pytest.fixture(scope="module")
def nodes(geo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("geo-nodes")
    os.environ["LEGATO_ADMIN_TOKEN"] = TOKEN
    try:
        with node_process("origin", "--store", str(geo_store), "--listen", "127.0.0.1:0", "--no-access-log") as o, \
                edge(o.url, tmp / "edge", "--geo-database", str(CITY), "--no-access-log") as e:
            yield o, e
    finally:
        os.environ.pop("LEGATO_ADMIN_TOKEN", None)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def from_(addr: str, **more: str) -> dict[str, str]:
    return {"X-Forwarded-For": addr, **more}


@pytest.mark.parametrize(("track", "listener"), list(EXPECTED), ids=[f"{t}-{a}" for t, a in EXPECTED])
def test_each_listener_gets_the_documented_answer(nodes: tuple[NodeProcess, NodeProcess], track: str,
                                                  listener: str) -> None:
    url = nodes[1].url
    expected = EXPECTED[(track, listener)]
    for path in (f"/tracks/{track}/master.m3u8", f"/tracks/{track}/manifest.mpd",
                 f"/tracks/{track}/aac-96k/index.m3u8"):
        status, headers, body = get(url + path, from_(listener))
        if expected == 200:
            assert status == 200, (path, body)
            continue
        code, reason, replacement = expected  # type: ignore[misc]
        assert status == code, (path, status, body)
        doc = json.loads(body)
        country = {GB: "GB", SE: "SE", US: "US", UNKNOWN: None}[listener]
        if track == "registered-us":
            country = {GB: "US", US: "GB"}[listener]
        assert doc["reason"] == reason and doc["country"] == country and doc["track"] == track
        assert doc.get("replacement") == replacement
        if replacement:
            assert doc["replacement_url"].startswith(f"/tracks/{replacement}/")
        assert headers["Link"] == f'</licenses/{track}.json>; rel="blocked-by"'
        assert headers["Cache-Control"] == "private"
        assert headers["Content-Type"].startswith("application/json")


def test_segments_stay_cacheable_and_unchecked(nodes: tuple[NodeProcess, NodeProcess]) -> None:
    url = nodes[1].url
    path = "/tracks/gb-only/aac-96k/seg-00001.m4s"
    status, headers, _ = get(url + path, from_(SE))
    assert status == 200 and "immutable" in headers["Cache-Control"]


def test_spoofed_header_from_an_untrusted_peer_changes_nothing(geo_store: Path, tmp_path: Path,
                                                               nodes: tuple[NodeProcess, NodeProcess]) -> None:
    # this edge trusts nobody: the test's own address (127.0.0.1, no country) decides, whatever it claims
    config = tmp_path / "edge.toml"
    config.write_text("[geo]\n")
    with node_process("edge", "--config", str(config), "--listen", "127.0.0.1:0", "--upstream", nodes[0].url,
                      "--cache-dir", str(tmp_path / "c"), "--no-access-log", "--geo-database", str(CITY)) as e:
        for spoof in (GB, f"{SE}, {GB}"):
            status, _, body = get(e.url + "/tracks/gb-only/master.m3u8", from_(spoof, Forwarded=f"for={GB}"))
            assert status == 451 and json.loads(body)["reason"] == UNKNOWN_T


@pytest.mark.parametrize("header", ["garbage", "81.2.69.160:notaport", "[2001:218::1", "_hidden", ",,,", "💥"])
def test_malformed_forwarding_header_falls_back_to_the_peer(nodes: tuple[NodeProcess, NodeProcess],
                                                            header: str) -> None:
    status, _, body = get(nodes[1].url + "/tracks/not-se/master.m3u8", {"X-Forwarded-For": header}
                          if header.isascii() else {"X-Forwarded-For": header.encode().decode("latin-1")})
    assert status == 451 and json.loads(body)["reason"] == UNKNOWN_T  # the proxy itself (127.0.0.1): no country


def test_ipv6_and_ipv4_mapped_listeners(nodes: tuple[NodeProcess, NodeProcess]) -> None:
    url = nodes[1].url
    # 2001:218::1 is in JP; the licence of not-se covers everywhere but SE
    assert get(url + "/tracks/not-se/master.m3u8", from_("2001:218::1"))[0] == 200
    assert get(url + "/tracks/not-se/master.m3u8", from_("[2001:218::1]:443"))[0] == 200
    status, _, body = get(url + "/tracks/gb-only/master.m3u8", from_("2001:218::1"))
    assert status == 451 and json.loads(body)["country"] == "JP"
    status, _, body = get(url + "/tracks/not-se/master.m3u8", from_(f"::ffff:{SE}"))
    assert status == 451 and json.loads(body)["country"] == "SE"
    assert get(url + "/tracks/gb-only/master.m3u8", from_(f"::ffff:{GB}"))[0] == 200


def test_unknown_track_is_404_not_451(nodes: tuple[NodeProcess, NodeProcess]) -> None:
    status, _, body = get(nodes[1].url + "/tracks/nope/master.m3u8", from_(GB))
    assert status == 404, body


@pytest.mark.parametrize(("track", "listener"), [("gb-only", GB), ("not-se", US), ("swap", SE)])
def test_allowed_listeners_play_with_ffmpeg(nodes: tuple[NodeProcess, NodeProcess], track: str,
                                            listener: str) -> None:
    url = f"{nodes[1].url}/tracks/{track}/master.m3u8"
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-headers", f"X-Forwarded-For: {listener}\r\n",
                           "-i", url, "-map", "0:a:0", "-f", "null", "-"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_refused_listener_cannot_play(nodes: tuple[NodeProcess, NodeProcess]) -> None:
    url = f"{nodes[1].url}/tracks/gb-only/master.m3u8"
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-headers", f"X-Forwarded-For: {SE}\r\n",
                           "-i", url, "-f", "null", "-"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "4XX" in proc.stderr  # ffmpeg names no 451


def test_decisions_are_counted_by_reason_and_country(nodes: tuple[NodeProcess, NodeProcess]) -> None:
    url = nodes[1].url
    get(url + "/tracks/gb-only/master.m3u8", from_(SE))
    get(url + "/tracks/gb-only/master.m3u8", from_(GB))
    assert metric(url, "legato_geo_decisions_total", result="refused", reason=NOT_LICENSED, country="SE") >= 1
    assert metric(url, "legato_geo_decisions_total", result="allowed", reason=LICENSED, country="GB") >= 1
    assert metric(url, "legato_geo_decisions_total", result="refused", reason=UNKNOWN_T, country="unknown") >= 0


def purge(node: NodeProcess, path: str) -> None:
    req = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    r = urllib.request.Request(node.url + "/admin/purge", data=json.dumps({"path": path}).encode(), headers=req,
                               method="POST")
    with urllib.request.urlopen(r, timeout=10) as resp:
        assert resp.status == 200


def test_licence_change_reaches_the_edge_and_a_bad_one_keeps_the_previous(
        geo_store: Path, nodes: tuple[NodeProcess, NodeProcess]) -> None:
    url = nodes[1].url
    path = "/tracks/gb-only/master.m3u8"
    record = geo_store / "licenses" / "gb-only.json"
    good = record.read_bytes()
    assert get(url + path, from_(GB))[0] == 200
    try:
        # a bad record (bad JSON, then a bad code) is refused by the edge: GB keeps playing, SE stays out
        for bad in (b'{"track": "gb-only", "terms": [', json.dumps(
                {"track": "gb-only", "terms": [{"allow": ["WW", "UK"]}]}).encode()):
            record.write_bytes(bad)
            purge(nodes[1], "/licenses/gb-only.json")
            time.sleep(1.1)  # the gate re-reads a record after [geo] license_max_age (1 s)
            assert get(url + path, from_(GB))[0] == 200
            assert get(url + path, from_(SE))[0] == 451
        assert "licence record /licenses/gb-only.json refused" in nodes[1].stderr()
        # a good change, set with the CLI, reaches the edge after a purge
        result = run_legato("license", "set", "gb-only", "--store", str(geo_store), "--allow", "SE")
        assert "legato purge --config" in result.stdout
        purge(nodes[1], "/licenses/gb-only.json")
        time.sleep(1.1)
        assert get(url + path, from_(SE))[0] == 200
        assert get(url + path, from_(GB))[0] == 451
    finally:
        record.write_bytes(good)
        purge(nodes[1], "/licenses/gb-only.json")
        time.sleep(1.1)


def test_bad_licence_with_no_previous_one_refuses(geo_store: Path, tmp_path: Path,
                                                   nodes: tuple[NodeProcess, NodeProcess]) -> None:
    record = geo_store / "licenses" / "no-record.json"
    record.write_text('{"track": "no-record", "terms": [{"allow": ["XX"]}]}')
    try:
        with edge(nodes[0].url, tmp_path / "fresh", "--geo-database", str(CITY)) as e:
            status, _, body = get(e.url + "/tracks/no-record/master.m3u8", from_(GB))
            assert status == 451 and json.loads(body)["reason"] == "licence record invalid"
    finally:
        record.unlink()


def test_missing_allow_lets_tracks_without_a_record_play(tmp_path: Path,
                                                        nodes: tuple[NodeProcess, NodeProcess]) -> None:
    with edge(nodes[0].url, tmp_path / "lenient", "--geo-database", str(CITY), geo='missing = "allow"') as e:
        assert get(e.url + "/tracks/no-record/master.m3u8", from_(GB))[0] == 200
        assert get(e.url + "/tracks/gb-only/master.m3u8", from_(SE))[0] == 451


def test_loopback_country_for_a_local_demo(tmp_path: Path, nodes: tuple[NodeProcess, NodeProcess]) -> None:
    config = tmp_path / "demo.toml"
    config.write_text('[geo]\ndatabase = "bundled"\nloopback_country = "GB"\n')
    with node_process("edge", "--config", str(config), "--listen", "127.0.0.1:0", "--upstream", nodes[0].url,
                      "--cache-dir", str(tmp_path / "c"), "--no-access-log") as e:
        assert get(e.url + "/tracks/gb-only/master.m3u8")[0] == 200
        assert get(e.url + "/tracks/not-se/master.m3u8")[0] == 200
        assert get(e.url + "/tracks/later/master.m3u8")[0] == 451


def _install(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_database_replaced_on_disk_is_reloaded(tmp_path: Path, nodes: tuple[NodeProcess, NodeProcess]) -> None:
    from geo.country import bundled_geolite2

    live = tmp_path / "geo.mmdb"
    shutil.copyfile(CITY, live)
    with edge(nodes[0].url, tmp_path / "poll", "--geo-database", str(live), geo="poll_interval = 0.2") as e:
        path = e.url + "/tracks/not-se/master.m3u8"
        assert get(path, from_(UNKNOWN))[0] == 451  # 8.8.8.8 is not in the test database
        _install(DATA / "GeoIP2-City-Test-Broken-Double-Format.mmdb", live)  # a bad replacement: kept the old
        time.sleep(0.5)
        assert get(path, from_(GB))[0] == 200 and get(path, from_(SE))[0] == 451
        _install(bundled_geolite2() or CITY, live)  # the real GeoLite2 knows 8.8.8.8 (US)
        deadline = time.monotonic() + 10
        while get(path, from_(UNKNOWN))[0] != 200:
            assert time.monotonic() < deadline, "the new database was never picked up"
            time.sleep(0.2)
        assert "geo database not reloaded" in e.stderr() and "geo database reloaded" in e.stderr()


def test_database_reloaded_on_sighup(tmp_path: Path, nodes: tuple[NodeProcess, NodeProcess]) -> None:
    from geo.country import bundled_geolite2

    live = tmp_path / "geo.mmdb"
    shutil.copyfile(CITY, live)
    with edge(nodes[0].url, tmp_path / "hup", "--geo-database", str(live), geo="poll_interval = 3600") as e:
        path = e.url + "/tracks/not-se/master.m3u8"
        assert get(path, from_(UNKNOWN))[0] == 451
        _install(bundled_geolite2() or CITY, live)
        time.sleep(0.3)
        assert get(path, from_(UNKNOWN))[0] == 451  # not polled for an hour
        e.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while get(path, from_(UNKNOWN))[0] != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload the database"
            time.sleep(0.2)


BROKEN = sorted(p.name for p in DATA.glob("*.mmdb") if "Broken" in p.name or "Invalid" in p.name
                or p.name.startswith("libmaxminddb-")) + ["GeoIP2-Anonymous-IP-Test.mmdb", "missing.mmdb"]


@pytest.mark.parametrize("name", BROKEN)
def test_broken_database_stops_the_edge_at_start(tmp_path: Path, name: str) -> None:
    result = run_legato("edge", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9",
                        "--cache-dir", str(tmp_path / "c"), "--geo-database", str(DATA / name), check=False)
    assert result.returncode == 2
    assert result.stdout == ""  # never announced it was listening
    assert f"geo.database: {DATA / name}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_geo_config_stops_the_edge(tmp_path: Path) -> None:
    result = run_legato("edge", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9",
                        "--cache-dir", str(tmp_path / "c"), "--geo-database", str(CITY),
                        "--trusted-proxy", "10.0.0.0/33", check=False)
    assert result.returncode == 2 and "'10.0.0.0/33'" in result.stderr and "Traceback" not in result.stderr


# --- keys: the tracks come from the verified token ----------------------------------------------

def test_key_requests_are_checked_against_the_token_tracks(tmp_path: Path,
                                                          nodes: tuple[NodeProcess, NodeProcess]) -> None:
    private = Ed25519PrivateKey.generate()
    pem = tmp_path / "k1.pem"
    pem.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    with edge(nodes[0].url, tmp_path / "keys", "--geo-database", str(CITY), "--public-key", f"k1={pem}") as e:
        token = tokens.issue(private, "k1", user="u", session="s1", tracks=("gb-only",), now=time.time())
        key = e.url + "/keys/" + "ab" * 16 + f"?token={token}"
        status, headers, body = get(key, from_(SE))
        assert status == 451 and json.loads(body)["track"] == "gb-only"
        assert headers["Link"] == '</licenses/gb-only.json>; rel="blocked-by"'
        status, _, _ = get(key, from_(GB))
        assert status != 451  # passed on to origin's key service (which knows no such key)
        manifest = e.url + f"/tracks/gb-only/master.m3u8?token={token}"
        assert get(manifest, from_(GB))[0] == 200
        assert get(manifest, from_(SE))[0] == 451
