"""cache/ring.py: evenness, minimal disruption, bounded loads, health, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.ring import (
    DEFAULT_VNODES,
    RINGS,
    HashRing,
    Rendezvous,
    Ring,
    key_hash,
    load_bound,
)

NODES = [f"regional-{i}" for i in range(10)]
KEYS = [f"t{i:06d}" for i in range(10_000)]
SCHEMES = sorted(RINGS)


def make(scheme: str, nodes: list[str]) -> HashRing:
    return RINGS[scheme](nodes)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [3, 10, 20])
def test_keys_spread_evenly(scheme: str, n: int) -> None:
    ring = make(scheme, NODES[:n] if n <= 10 else [f"edge-{i}" for i in range(n)])
    counts = Counter(ring.primary(key) for key in KEYS)
    mean = len(KEYS) / n
    assert len(counts) == n
    assert max(counts.values()) / mean < 1.25, counts
    assert min(counts.values()) / mean > 0.75, counts


@pytest.mark.parametrize("scheme", SCHEMES)
def test_removing_a_node_moves_only_its_keys(scheme: str) -> None:
    before = make(scheme, NODES)
    after = make(scheme, [n for n in NODES if n != "regional-3"])
    moved = [k for k in KEYS if before.primary(k) != after.primary(k)]
    assert all(before.primary(k) == "regional-3" for k in moved)
    assert len(moved) / len(KEYS) == pytest.approx(1 / len(NODES), abs=0.03)
    # the moved keys go to their second choice: failover order is stable
    assert all(after.primary(k) == before.candidates(k)[1] for k in moved)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_adding_a_node_takes_about_its_share(scheme: str) -> None:
    before = make(scheme, NODES)
    after = make(scheme, [*NODES, "regional-new"])
    moved = [k for k in KEYS if before.primary(k) != after.primary(k)]
    assert all(after.primary(k) == "regional-new" for k in moved)
    assert len(moved) / len(KEYS) == pytest.approx(1 / (len(NODES) + 1), abs=0.03)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_candidates_list_every_node_once(scheme: str) -> None:
    ring = make(scheme, NODES)
    for key in KEYS[:200]:
        order = ring.candidates(key)
        assert sorted(order) == sorted(NODES)
        assert order[0] == ring.primary(key)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unhealthy_nodes_are_skipped(scheme: str) -> None:
    ring = make(scheme, NODES)
    for key in KEYS[:200]:
        order = ring.candidates(key)
        healthy = set(NODES) - {order[0], order[1]}
        assert ring.pick(key, {}, healthy) == order[2]
    assert ring.pick("t1", {}, set()) is None
    assert ring.pick("t1", {}, {"not-a-node"}) is None


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("departures", [False, True])
def test_bounded_loads_under_a_viral_track(scheme: str, departures: bool) -> None:
    """Half of all requests are one track: it spills over, and no node goes over the bound.

    Without departures the bound holds for every node at every moment; with
    requests finishing (a steady ~900 in flight) it holds for every placement
    (a node that got its load under a higher average keeps it until its
    requests finish, as in Mirrokni et al.).
    """
    ring = make(scheme, NODES)
    epsilon = 0.25
    loads: Counter[str] = Counter()
    healthy = set(NODES) - {"regional-7"}
    in_flight: list[str] = []
    spilled = set()
    for i in range(20_000 if departures else 5_000):
        key = "viral" if i % 2 == 0 else KEYS[i % len(KEYS)]
        total = sum(loads[n] for n in healthy)
        node = ring.pick(key, loads, healthy, epsilon)
        assert node is not None and node in healthy
        bound = load_bound(total, len(healthy), epsilon)
        assert loads[node] + 1 <= bound
        if key == "viral":
            spilled.add(node)
        loads[node] += 1
        if not departures:
            assert max(loads.values()) <= bound
        in_flight.append(node)
        if departures and len(in_flight) > 900:
            loads[in_flight.pop(0)] -= 1
    assert len(spilled) > 1, "the viral track spilled onto more than its first node"
    assert loads["regional-7"] == 0


def test_without_load_a_key_stays_on_its_first_choice() -> None:
    ring = Ring(NODES)
    loads = dict.fromkeys(NODES, 5)
    for key in KEYS[:100]:
        assert ring.pick(key, loads, set(NODES), epsilon=0.25) == ring.primary(key)


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    key=st.text(max_size=30),
    loads=st.lists(st.integers(0, 50), min_size=len(NODES), max_size=len(NODES)),
    healthy=st.sets(st.sampled_from(NODES)),
    epsilon=st.floats(0, 3),
)
def test_pick_respects_health_and_the_bound(scheme: str, key: str, loads: list[int], healthy: set[str],
                                            epsilon: float) -> None:
    ring = make(scheme, NODES)
    by_node = dict(zip(NODES, loads, strict=True))
    node = ring.pick(key, by_node, healthy, epsilon)
    if not healthy:
        assert node is None
        return
    assert node in healthy
    assert by_node[node] < load_bound(sum(by_node[n] for n in healthy), len(healthy), epsilon)
    # and it is the first such node in preference order
    order = [n for n in ring.candidates(key) if n in healthy]
    assert order.index(node) == min(i for i, n in enumerate(order)
                                    if by_node[n] < load_bound(sum(by_node[m] for m in healthy),
                                                               len(healthy), epsilon))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Ring(["a", "a"])
    with pytest.raises(TypeError):
        Ring("abc")
    with pytest.raises(ValueError):
        Ring(["a"], vnodes=0)
    with pytest.raises(ValueError, match="epsilon"):
        Ring(["a"]).pick("k", {}, {"a"}, epsilon=-0.1)
    with pytest.raises(ValueError, match="epsilon"):
        Ring(["a"]).pick("k", {}, set(), epsilon=float("inf"))


def test_empty_ring() -> None:
    for ring in (Ring([]), Rendezvous([])):
        assert ring.candidates("k") == [] and ring.primary("k") is None and len(ring) == 0


def test_defaults() -> None:
    ring = Ring(NODES)
    assert ring.vnodes == DEFAULT_VNODES and ring.kind == "ring" and "regional-0" in repr(ring)


_CHILD = """
import json, sys
from cache.ring import RINGS, key_hash
nodes, keys = json.loads(sys.stdin.read())
print(json.dumps({s: [RINGS[s](nodes).candidates(k) for k in keys] for s in RINGS}
                 | {"hash": [key_hash(k) for k in keys]}))
"""


def test_same_answers_in_another_process() -> None:
    """No Python hash(): a fresh interpreter with another PYTHONHASHSEED agrees."""
    keys = KEYS[:50] + ["sess-é", ""]
    child = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([NODES, keys]), capture_output=True,
                           text=True, check=True, env={"PYTHONHASHSEED": "12345", "PYTHONPATH": ":".join(sys.path)},
                           timeout=60)
    theirs = json.loads(child.stdout)
    assert theirs["hash"] == [key_hash(k) for k in keys]
    for scheme in RINGS:
        assert theirs[scheme] == [RINGS[scheme](NODES).candidates(k) for k in keys]


def test_key_hash_is_xxh3() -> None:
    assert key_hash("") == 0x2D06800538D394C2  # XXH3_64bits of the empty input, seed 0
