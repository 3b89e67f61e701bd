"""The simulator and a live edge agree: the same trace gives the same HIT/MISS sequence.

One real edge (``legato edge``, prefetch off, ``lru``, a cache a third of
the trace's working set) in front of a real origin serving a packaged track
under three ids.  The trace is replayed sequentially; after a MISS the test
waits, without touching the cache, until the body is committed and the
eviction it caused has been applied: the edge's eviction policy runs in its
store manager (cache/store.py), which gets the insert event after the
commit and deletes its victims from the index a few milliseconds later.
The index is read directly (SQLite, read-only) so the wait itself makes no
request the policy would count.  The edge runs with ``hit_interval = 0``:
by default a worker reports a key's hits to the policy at most once a
second (cache/store.py), and this replay is far faster than the trace's
clock, one request a second, on which the simulator reports every hit.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
import urllib.request
from pathlib import Path

from servers import node_process, origin_process

from bench.simulate import Topology, run_topology
from bench.trace import Trace

TRACKS = ("live-a", "live-b", "live-c")
RENDITIONS = ("aac-96k", "aac-160k")


def _objects(store: Path) -> list[tuple[str, int]]:
    """(URL path, body size) of the init and media segments of every track and rendition."""
    out = []
    for track in TRACKS:
        for rendition in RENDITIONS:
            folder = store / "tracks" / track / rendition
            for f in [folder / "init.mp4", *sorted(folder.glob("seg-*.m4s"))]:
                out.append((f"/tracks/{track}/{rendition}/{f.name}", f.stat().st_size))
    return out


def _sequence(objects: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """A skewed random sequence: a few objects often, most rarely (hits and evictions both happen)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(objects))]
    order = objects[:]
    rng.shuffle(order)
    return rng.choices(order, weights=weights, k=n)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        resp.read()
        return resp.headers["X-Cache"]


def _settled(db: Path, key: str, capacity: int, timeout: float = 10.0) -> None:
    """Wait until ``key`` has a row and the index holds at most ``capacity`` bytes (victims gone)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                present = con.execute("SELECT COUNT(*) FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()[0]
                used = con.execute("SELECT COALESCE(SUM(size), 0) FROM Cache WHERE raw = 1").fetchone()[0]
            if present and used <= capacity:
                return
        except sqlite3.OperationalError:  # the index is being created
            pass
        assert time.monotonic() < deadline, f"{key} not committed, or evictions not applied ({used} > {capacity})"
        time.sleep(0.01)


def test_simulated_edge_and_live_edge_agree(packaged_track: tuple[Path, str], tmp_path: Path) -> None:
    src, tid = packaged_track
    store = tmp_path / "store"
    for name in TRACKS:
        shutil.copytree(src / "tracks" / tid, store / "tracks" / name)
    objects = _objects(store)
    working_set = sum(size for _, size in objects)
    capacity = working_set // 3
    sequence = _sequence(objects, 70, seed=7)
    cache_dir = tmp_path / "edge-cache"

    live: list[str] = []
    with origin_process(store, "--no-access-log") as origin:
        config = tmp_path / "edge.toml"
        config.write_text(
            f'name = "edge-live"\nlisten = "127.0.0.1:0"\naccess_log = false\n'
            f'[upstream]\npeers = ["{origin.url}"]\n'
            f'[cache]\ndir = "{cache_dir}"\nsize = {capacity}\npolicy = "lru"\nhit_interval = 0\n'
            f"[prefetch]\nsegments = 0\n")
        with node_process("edge", "--config", str(config)) as edge:
            for path, _ in sequence:
                result = _get(edge.url + path)
                assert result in ("HIT", "MISS"), (path, result)
                live.append(result)
                if result == "MISS":
                    _settled(cache_dir / "cache.db", path, capacity)

    trace = Trace(source="live sequence")
    for i, (path, size) in enumerate(sequence):
        trace.add(float(i), "player-1", path, size)
    simulated = run_topology(trace, Topology(edge_size=capacity, edge_policy="lru"), record=True)
    assert simulated.outcomes is not None
    expected = ["HIT" if hit else "MISS" for hit in simulated.outcomes]
    assert live == expected
    assert 10 <= live.count("HIT") <= 60, live  # both hits and misses (and so evictions) were exercised
    assert simulated.edge.evictions > 0

