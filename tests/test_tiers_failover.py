"""Failover, active health checks and metric values of the tiers: real processes on loopback.

Origin -> two regionals -> one edge, as in test_tiers.py (whose fixtures and helpers
these tests use).  Objects are spread over the regionals by track id (cache.ring),
so the regional that owns a track is known before any request is made.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash
from metrics_text import iter_samples, metric
from servers import NodeProcess, node_process
from test_tiers import (
    Tiers,
    cache_node,
    catalog,
    get,
    object_paths,
    tier_store,
    tiers,
)

from cache.config import UpstreamConfig
from cache.ring import Ring

__all__ = ["tier_store"]  # the store fixture, imported to be used here

# One probe cycle at most: the wait between probes plus the longest a probe may take (its timeout). Measured
# on a quiet machine: 0.17-0.26 s from the readiness line to a closed breaker.
PROBE_CYCLE = UpstreamConfig().health_interval + UpstreamConfig().health_timeout


@pytest.fixture
def edge_config(tmp_path: Path) -> Path:
    """Edge settings that make upstream traffic predictable: no prefetching (a request is its own fetch)."""
    path = tmp_path / "edge.toml"
    path.write_text("[prefetch]\nsegments = 0\n")
    return path


def owner(t: Tiers, track: str) -> tuple[NodeProcess, NodeProcess]:
    """(the regional the edge asks first for ``track``, the other one): the edge's own ring."""
    first = Ring([r.url for r in t.regionals]).candidates(track)[0]
    a, b = t.regionals
    return (a, b) if a.url == first else (b, a)


def name_of(t: Tiers, node: NodeProcess) -> str:
    return f"regional-{t.regionals.index(node)}"


def states(edge: str) -> dict[str, str]:
    """The edge's breaker state of each upstream, from /healthz."""
    upstreams: dict[str, str] = json.loads(get(edge + "/healthz")[2])["upstreams"]
    return upstreams


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def all_objects(store: Path, track: str) -> list[tuple[str, str | None]]:
    """Every object of every rendition of ``track``, each once."""
    seen: dict[str, str | None] = {}
    for rendition in catalog(store, track)["renditions"]:
        for path, digest in object_paths(store, track, rendition["id"]):
            seen.setdefault(path, digest)
    return list(seen.items())


@dataclass
class Answer:
    path: str
    sent: float
    done: float
    status: int
    x_cache: str
    via: str
    intact: bool


# --- traffic moves within 1 s --------------------------------------------------------------

def test_killing_the_owning_regional_moves_its_traffic_within_a_second(tier_store: Path, tmp_path: Path,
                                                                        edge_config: Path) -> None:
    with tiers(tier_store, tmp_path, edge_args=("--config", str(edge_config))) as t:
        edge = t.edges[0].url
        victim, survivor = owner(t, "sunrise")
        victim_name, survivor_name = name_of(t, victim), name_of(t, survivor)
        tracks = [track for track in ("sunrise", "sunrise-b", "sunrise-c", "sunrise-d") if owner(t, track)[0] is victim]
        plan = [obj for track in tracks for obj in all_objects(t.store, track)]  # none cached anywhere yet
        answers: list[Answer] = []

        def listen() -> None:
            for path, digest in plan:
                sent = time.monotonic()
                try:
                    status, headers, body = get(edge + path)
                except (OSError, http.client.HTTPException) as exc:  # a broken transfer is a lost request
                    status, headers, body = 0, {"X-Error": repr(exc)}, b""
                answers.append(Answer(path, sent, time.monotonic(), status, headers.get("X-Cache", ""),
                                      headers.get("Via", ""),
                                      digest is None or xxhash.xxh3_64_hexdigest(body) == digest))

        client = threading.Thread(target=listen, name="listener")
        client.start()
        try:
            wait_for(lambda: len(answers) >= 6, 20, "the listener never got going")
            os.kill(victim.pid, signal.SIGKILL)  # mid-stream: the listener's next request is in flight
            killed_at = time.monotonic()
        finally:
            client.join(60)
        victim.proc.wait(5)
        assert not client.is_alive()

        assert len(answers) == len(plan)
        assert [a for a in answers if a.status != 200 or not a.intact] == []  # no client request lost
        assert {a.x_cache for a in answers} == {"MISS"}  # every one of them went upstream
        before = [a for a in answers if a.done < killed_at]
        after = [a for a in answers if a.done >= killed_at]
        assert before and all(victim_name in a.via for a in before), [(a.path, a.via) for a in before]
        assert len([a for a in after if a.sent >= killed_at]) >= 5, "too few requests after the kill"
        moved = [a for a in after if survivor_name in a.via]
        assert moved, [(a.path, a.via) for a in after]
        assert moved[0].done - killed_at < 1.0, f"first answer through {survivor_name} {moved[0].done - killed_at:.3f} s after the kill"
        assert all(survivor_name in a.via for a in after if a.sent >= killed_at), [(a.path, a.via) for a in after]
        slow = [(a.path, round(a.done - a.sent, 3)) for a in after if a.done - a.sent >= 1.0]
        assert slow == [], "requests took 1 s or more after the kill"
        # the surviving regional's own count: it answered every one of them (and any resumed transfer)
        assert metric(survivor.url, "legato_cache_requests_total", tier="regional") >= len(moved)
        assert states(edge)[victim.url] == "open"


# --- active health checks -------------------------------------------------------------------

def test_a_restarted_regional_is_back_within_a_probe_cycle_without_traffic(tier_store: Path,
                                                                          tmp_path: Path) -> None:
    with tiers(tier_store, tmp_path) as t:
        edge = t.edges[0].url
        victim, _ = owner(t, "sunrise")
        name = name_of(t, victim)
        wait_for(lambda: set(states(edge).values()) == {"closed"}, 2, "upstreams not up at start")
        assert metric(edge, "legato_upstream_up", tier="edge", peer=victim.url) == 1

        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.proc.wait(5)
        wait_for(lambda: states(edge)[victim.url] == "open", 1.0, "the dead regional's breaker did not open in 1 s")
        assert time.monotonic() - killed_at < 1.0
        assert metric(edge, "legato_upstream_up", tier="edge", peer=victim.url) == 0

        port = victim.url.rsplit(":", 1)[1]
        with cache_node("regional", name, tmp_path / f"r{t.regionals.index(victim)}", [t.origin.url],
                        "--listen", f"127.0.0.1:{port}") as again:
            up_at = time.monotonic()  # it printed its readiness line: it is listening
            assert again.url == victim.url
            while states(edge)[victim.url] != "closed":
                assert time.monotonic() - up_at < 5, "the restarted regional never came back"
                time.sleep(0.005)
            back = time.monotonic() - up_at
            assert back < PROBE_CYCLE, f"breaker closed {back:.3f} s after the regional was up"
            assert metric(edge, "legato_upstream_up", tier="edge", peer=victim.url) == 1
            status, _, body = get(edge + "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            # only probes reached it: no client request was needed to find it healthy
            assert metric(again.url, "legato_cache_requests_total", tier="regional") == 0
            # and it takes its tracks' traffic again
            path, _ = object_paths(t.store, "sunrise")[3]
            status, headers, _ = get(edge + path)
            assert status == 200 and name in headers["Via"], headers


# --- metric values ------------------------------------------------------------------------------

def samples(url: str, name: str, tier: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Non-zero samples of ``name`` for ``tier``, keyed by the values of ``labels``."""
    out: dict[tuple[str, ...], float] = {}
    for found, value in iter_samples(get(url + "/metrics")[2].decode(), name):
        if found.get("tier", tier) == tier and value:
            key = tuple(found.get(label, "") for label in labels)
            out[key] = out.get(key, 0.0) + value
    return out


def test_metric_values_after_a_known_sequence(tier_store: Path, tmp_path: Path, edge_config: Path) -> None:
    track = "sunrise-b"
    rendition = next(r for r in catalog(tier_store, track)["renditions"] if r["id"] == "aac-320k")
    segs = [f"/tracks/{track}/aac-320k/{s['name']}" for s in rendition["segments"][:3]]
    bodies = {p: (tier_store / p.removeprefix("/")).read_bytes() for p in segs}
    # room for any two of the three segments, not for all three: the third insert evicts exactly one
    size = sum(len(b) for b in bodies.values()) - 1
    with tiers(tier_store, tmp_path, edge_args=("--config", str(edge_config), "--policy", "lru",
                                                "--cache-size", str(size))) as t:
        edge = t.edges[0].url
        seen: list[tuple[str, int, int]] = []  # (X-Cache, status, body bytes) of every answer, as the client saw it

        def ask(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
            status, hdrs, body = get(edge + path, headers)
            seen.append((hdrs.get("X-Cache", ""), status, len(body)))
            return status, hdrs, body

        # 1. two listeners ask for one uncached segment at once: one fetch, one follower.  Both
        #    regionals are paused (SIGSTOP) so the fetch is surely still in flight when the second arrives.
        for r in t.regionals:
            os.kill(r.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(2) as pool:
                pair = [pool.submit(ask, segs[0]) for _ in range(2)]
                time.sleep(0.5)
                for r in t.regionals:
                    os.kill(r.pid, signal.SIGCONT)
                results = [f.result(30) for f in pair]
        finally:
            for r in t.regionals:
                os.kill(r.pid, signal.SIGCONT)
        assert sorted(h["X-Cache"] for _, h, _ in results) == ["COALESCED", "MISS"]
        assert all(s == 200 and b == bodies[segs[0]] for s, _, b in results)
        wait_for(lambda: metric(edge, "legato_store_objects", tier="edge") == 1, 5, "first segment not stored")
        assert metric(edge, "legato_store_bytes", tier="edge") == len(bodies[segs[0]])

        # 2. hits: the whole object, then a range of it
        status, headers, _ = ask(segs[0])
        assert (status, headers["X-Cache"]) == (200, "HIT")
        status, headers, part = ask(segs[0], {"Range": "bytes=0-99"})
        assert (status, headers["X-Cache"], part) == (206, "HIT", bodies[segs[0]][:100])

        # 3. two more misses (the second overfills the store: one eviction), and an upstream 404
        for p in segs[1:]:
            status, headers, body = ask(p)
            assert (status, headers["X-Cache"], body) == (200, "MISS", bodies[p])
        status, headers, missing = ask("/tracks/no-such-track/aac-320k/" + segs[0].rsplit("/", 1)[1])
        assert (status, headers["X-Cache"]) == (404, "MISS")

        # the policy runs beside the request path: the store is over its size until it has caught up
        wait_for(lambda: metric(edge, "legato_cache_evictions_total") >= 1
                 and metric(edge, "legato_store_objects", tier="edge") <= 2, 5, "nothing evicted within 5 s")

        # what the client saw, counted by the edge
        requests = Counter(x for x, _, _ in seen)
        sent: Counter[tuple[str, str]] = Counter()
        for x, status, n in seen:
            sent[x, str(status)] += n
        assert requests == {"MISS": 4, "COALESCED": 1, "HIT": 2}
        on_disk = [p for p, b in bodies.items()
                   if any(f.is_file() and f.stat().st_size == len(b) and f.read_bytes() == b
                          for f in (tmp_path / "e0").rglob("*"))]
        assert len(on_disk) == 2, on_disk
        regional_sent: Counter[tuple[str, ...]] = Counter()
        regional_requests: Counter[tuple[str, ...]] = Counter()
        for r in t.regionals:  # summed: the made-up track of the 404 may hash to either
            regional_sent.update(samples(r.url, "legato_cache_bytes_sent_total", "regional", "result", "status"))
            regional_requests.update(samples(r.url, "legato_cache_requests_total", "regional", "result"))
        expected: dict[str, dict[tuple[str, ...], float]] = {
            "edge: hits, misses, coalesced, stale": {(k,): float(v) for k, v in requests.items()},
            "edge: bytes sent by result and status": {k: float(v) for k, v in sent.items() if v},
            "edge: store bytes": {(): float(sum(len(bodies[p]) for p in on_disk))},
            "edge: store objects": {(): 2.0},
            "edge: evictions by policy": {("lru",): 1.0},
            "edge: upstream attempts (latency histogram count)": {("success",): 4.0},
            # each edge fetch was one regional request (the two listeners of step 1 made one)
            "regionals: requests by result": {("MISS",): 4.0},
            "regionals: bytes sent by result and status": {
                ("MISS", "200"): float(sum(len(b) for b in bodies.values())), ("MISS", "404"): float(len(missing))},
        }
        actual = {
            "edge: hits, misses, coalesced, stale": samples(edge, "legato_cache_requests_total", "edge", "result"),
            "edge: bytes sent by result and status": samples(edge, "legato_cache_bytes_sent_total", "edge",
                                                             "result", "status"),
            "edge: store bytes": samples(edge, "legato_store_bytes", "edge"),
            "edge: store objects": samples(edge, "legato_store_objects", "edge"),
            "edge: evictions by policy": samples(edge, "legato_cache_evictions_total", "edge", "policy"),
            "edge: upstream attempts (latency histogram count)": samples(edge, "legato_upstream_seconds_count",
                                                                         "edge", "outcome"),
            "regionals: requests by result": dict(regional_requests),
            "regionals: bytes sent by result and status": dict(regional_sent),
        }

        # 4. the health of each upstream: 1 while its breaker is not open, 0 once it is
        dead, alive = t.regionals[1], t.regionals[0]
        expected["edge: upstream up, both running"] = {(alive.url,): 1.0, (dead.url,): 1.0}
        actual["edge: upstream up, both running"] = samples(edge, "legato_upstream_up", "edge", "peer")
        os.kill(dead.pid, signal.SIGKILL)
        dead.proc.wait(5)
        wait_for(lambda: states(edge)[dead.url] == "open", 1.0, "the killed regional's breaker did not open in 1 s")
        expected["edge: upstream up, one killed"] = {(alive.url,): 1.0}  # the dead one's sample is 0
        actual["edge: upstream up, one killed"] = samples(edge, "legato_upstream_up", "edge", "peer")
        assert metric(edge, "legato_upstream_up", tier="edge", peer=dead.url) == 0
        assert f'peer="{dead.url}"' in get(edge + "/metrics")[2].decode()  # present, at 0, not missing

        assert {k: v for k, v in actual.items() if v != expected[k]} == {
            k: v for k, v in expected.items() if actual[k] != v}


# --- stale ----------------------------------------------------------------------------------------

@pytest.fixture
def short_lived_manifests(tier_store: Path, tmp_path: Path, edge_config: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """(origin, edge): an origin whose playlists live 1 s, an edge fetching from it directly."""
    config = tmp_path / "origin.toml"
    config.write_text("[cache_control]\nmanifest_max_age = 1\n")
    with node_process("origin", "--config", str(config), "--store", str(tier_store), "--listen", "127.0.0.1:0",
                      "--no-access-log") as origin, \
         cache_node("edge", "edge-s", tmp_path / "es", [origin.url], "--config", str(edge_config)) as edge:
        yield origin, edge


def test_an_expired_playlist_is_served_stale_while_upstream_is_down(
        short_lived_manifests: tuple[NodeProcess, NodeProcess]) -> None:
    origin, node = short_lived_manifests
    edge = node.url
    path = "/tracks/sunrise/aac-160k/index.m3u8"
    status, headers, body = get(edge + path)
    assert (status, headers["X-Cache"]) == (200, "MISS") and "max-age=1" in headers["Cache-Control"]
    wait_for(lambda: metric(edge, "legato_store_objects", tier="edge") == 1, 5, "playlist not stored")
    time.sleep(2.2)  # past its max-age
    origin.stop()
    status, headers, again = get(edge + path)
    assert (status, headers["X-Cache"], again) == (200, "STALE", body)
    assert samples(edge, "legato_cache_requests_total", "edge", "result") == {("MISS",): 1.0, ("STALE",): 1.0}
    assert samples(edge, "legato_cache_bytes_sent_total", "edge", "result", "status") == {
        ("MISS", "200"): float(len(body)), ("STALE", "200"): float(len(body))}
    # stale-if-error covers the outage (a day by default), not only its first request
    status, headers, third = get(edge + path)
    assert (status, headers.get("X-Cache"), third) == (200, "STALE", body), (status, headers, third[:200])
