"""cache/policy.py: the invariants every policy keeps, and each policy's own rule.

Every row of POLICIES is driven by random operation sequences (hypothesis)
and checked against the contract; LRU, LFU and SIEVE are also checked
victim-for-victim against small reference models written here from the
papers' pseudo-code.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.policy import (
    POLICIES,
    EvictionPolicy,
    LFUPolicy,
    ListenPolicy,
    LRUPolicy,
    S3FIFOPolicy,
    SievePolicy,
    make_policy,
)
from legato import urls

KEYS = [
    *(urls.segment_path(t, r, n) for t in ("a", "b") for r in ("aac-96k", "flac") for n in (1, 2, 3, 17)),
    *(urls.rendition_path(t, "aac-96k", "init.mp4") for t in ("a", "b")),
    urls.track_path("a", "master.m3u8"),
    urls.license_path("b"),
    "/not/in/the/url/space",
    "../hostile",
    "plain-key",
]

Op = tuple[str, int, int]  # (operation, key index, size)

ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["insert", "insert", "insert", "hit", "hit", "remove"]),
        st.integers(0, len(KEYS) - 1),
        st.integers(0, 400),
    ),
    max_size=80,
)
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def apply(policy: EvictionPolicy, model: dict[str, int], op: Op, now: float) -> list[str] | None:
    """Apply one op to the policy and to a model of what the store holds."""
    name, index, size = op
    key = KEYS[index]
    if name == "insert":
        evicted = policy.insert(key, size, now)
        model[key] = size
        for victim in evicted:
            model.pop(victim, None)
        return evicted
    if name == "hit":
        policy.hit(key, now)
    else:
        policy.remove(key)
        model.pop(key, None)
    return None


def check_invariants(policy: EvictionPolicy, model: dict[str, int], op: Op, evicted: list[str] | None) -> None:
    assert policy.used <= policy.capacity
    assert policy.used == sum(model.values())
    assert len(policy) == len(model)
    assert all(key in policy for key in model)
    assert sorted(policy.keys_by_priority()) == sorted(model)
    if evicted is not None:
        key, size = KEYS[op[1]], op[2]
        assert len(evicted) == len(set(evicted))
        assert not any(victim in policy for victim in evicted)
        if key in evicted:
            assert evicted == [key], "a declined key evicts nothing else"
        else:
            assert key in policy and policy.size_of(key) == size


@pytest.mark.parametrize("name", sorted(POLICIES))
@FAST
@given(ops=ops_strategy, capacity=st.integers(0, 1500))
def test_random_operations_keep_the_contract(name: str, ops: list[Op], capacity: int) -> None:
    policy = make_policy(name, capacity)
    model: dict[str, int] = {}
    for step, op in enumerate(ops):
        evicted = apply(policy, model, op, now=step * 0.5)
        check_invariants(policy, model, op, evicted)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_oversize_objects_are_declined_and_drop_an_older_copy(name: str) -> None:
    policy = make_policy(name, 1000)
    assert policy.insert("k", 600, 0.0) == []
    assert policy.insert("other", 1001, 1.0) == ["other"]
    assert policy.insert("k", 1001, 2.0) == ["k"]  # re-insert too big: the old copy goes too
    assert "k" not in policy and policy.used == 0


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_reinsert_updates_the_size(name: str) -> None:
    policy = make_policy(name, 1000)
    policy.insert("k", 100, 0.0)
    assert policy.insert("k", 300, 1.0) == []
    assert policy.used == 300 and policy.size_of("k") == 300 and len(policy) == 1


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_unknown_keys_are_ignored_by_hit_and_remove(name: str) -> None:
    policy = make_policy(name, 100)
    policy.hit("nope", 0.0)
    policy.remove("nope")
    assert len(policy) == 0 and policy.used == 0


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_zero_capacity_caches_only_empty_objects(name: str) -> None:
    policy = make_policy(name, 0)
    assert policy.insert("a", 1, 0.0) == ["a"]
    assert policy.insert("empty", 0, 0.0) == []
    assert "empty" in policy


def test_the_table() -> None:
    assert set(POLICIES) == {"lru", "lfu", "sieve", "s3fifo", "listen"}
    assert all(cls.name == name for name, cls in POLICIES.items())
    with pytest.raises(ValueError, match="lru, lfu"):
        make_policy("fifo", 10)
    with pytest.raises(ValueError):
        make_policy("lru", -1)
    with pytest.raises(ValueError):
        make_policy("lru", 10).insert("k", -1, 0.0)


# --------------------------------------------------------------------------
# Reference models: the expected victims, victim for victim


@dataclass
class RefLRU:
    capacity: int
    order: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def hit(self, key: str) -> None:
        if key in self.order:
            self.order.move_to_end(key)

    def insert(self, key: str, size: int) -> list[str]:
        self.order.pop(key, None)
        if size > self.capacity:
            return [key]
        out = []
        while sum(self.order.values()) + size > self.capacity:
            out.append(self.order.popitem(last=False)[0])
        self.order[key] = size
        return out

    def remove(self, key: str) -> None:
        self.order.pop(key, None)


@dataclass
class RefLFU:
    """Victim = min (requests while cached, time of last request)."""

    capacity: int
    entries: dict[str, list[int]] = field(default_factory=dict)  # key -> [size, freq, last]
    tick: int = 0

    def hit(self, key: str) -> None:
        self.tick += 1
        if key in self.entries:
            self.entries[key][1] += 1
            self.entries[key][2] = self.tick

    def insert(self, key: str, size: int) -> list[str]:
        self.tick += 1
        old = self.entries.pop(key, None)
        if size > self.capacity:
            return [key]
        out = []
        while sum(e[0] for e in self.entries.values()) + size > self.capacity:
            victim = min(self.entries, key=lambda k: (self.entries[k][1], self.entries[k][2]))
            del self.entries[victim]
            out.append(victim)
        self.entries[key] = [size, old[1] + 1 if old else 1, self.tick]
        return out

    def remove(self, key: str) -> None:
        self.entries.pop(key, None)


@dataclass
class RefSieve:
    """SIEVE from the paper's pseudo-code, with a Python list (index 0 = oldest)."""

    capacity: int
    queue: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    visited: dict[str, bool] = field(default_factory=dict)
    hand: int | None = None  # index into queue

    def hit(self, key: str) -> None:
        if key in self.sizes:
            self.visited[key] = True

    def _drop(self, i: int) -> None:
        key = self.queue.pop(i)
        del self.sizes[key], self.visited[key]
        if self.hand is not None:
            if self.hand > i:
                self.hand -= 1
            elif self.hand == i and self.hand >= len(self.queue):
                self.hand = None

    def insert(self, key: str, size: int) -> list[str]:
        revisit = key in self.sizes
        if revisit:
            self._drop(self.queue.index(key))
        if size > self.capacity:
            return [key]
        out = []
        while sum(self.sizes.values()) + size > self.capacity:
            i = 0 if self.hand is None else self.hand
            while self.visited[self.queue[i]]:
                self.visited[self.queue[i]] = False
                i = (i + 1) % len(self.queue)
            victim = self.queue[i]
            self.hand = i  # the next newer object slides into index i
            self._drop(i)
            out.append(victim)
        self.queue.append(key)
        self.sizes[key] = size
        self.visited[key] = revisit
        return out

    def remove(self, key: str) -> None:
        if key in self.sizes:
            self._drop(self.queue.index(key))


REFERENCES = {"lru": (LRUPolicy, RefLRU), "lfu": (LFUPolicy, RefLFU), "sieve": (SievePolicy, RefSieve)}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@FAST
@given(ops=ops_strategy, capacity=st.integers(1, 1500))
def test_victims_match_the_reference_model(name: str, ops: list[Op], capacity: int) -> None:
    cls, ref_cls = REFERENCES[name]
    policy, ref = cls(capacity), ref_cls(capacity)
    for step, (op, index, size) in enumerate(ops):
        key = KEYS[index]
        if op == "insert":
            assert policy.insert(key, size, float(step)) == ref.insert(key, size)
        elif op == "hit":
            if key in policy:
                ref.hit(key)
            policy.hit(key, float(step))
        else:
            policy.remove(key)
            ref.remove(key)


def test_lru_evicts_the_least_recently_used() -> None:
    policy = LRUPolicy(3)
    for i, key in enumerate("abc"):
        policy.insert(key, 1, i)
    policy.hit("a", 3)
    assert policy.insert("d", 1, 4) == ["b"]
    assert policy.keys_by_priority() == ["c", "a", "d"]


def test_lfu_evicts_the_least_frequently_used_then_the_least_recent() -> None:
    policy = LFUPolicy(3)
    for i, key in enumerate("abc"):
        policy.insert(key, 1, i)
    policy.hit("a", 3)
    policy.hit("a", 4)
    policy.hit("b", 5)
    assert policy.insert("d", 1, 6) == ["c"]  # c: 1 request
    assert policy.insert("e", 1, 7) == ["d"]  # d and ... only d has 1 request
    policy.hit("e", 8)  # e: 2, b: 2 (older), a: 3
    assert policy.insert("f", 1, 9) == ["b"]
    assert policy.frequency("a") == 3


def test_sieve_keeps_visited_objects_in_place() -> None:
    policy = SievePolicy(3)
    for i, key in enumerate("abc"):
        policy.insert(key, 1, i)
    policy.hit("a", 3)
    assert policy.insert("d", 1, 4) == ["b"]  # the hand clears a's bit, evicts b
    assert policy.insert("e", 1, 5) == ["c"]  # and goes on from there, towards the newest
    assert policy.insert("f", 1, 6) == ["d"]
    assert policy.keys_by_priority() == ["e", "f", "a"]  # a kept its place, behind the hand
    policy.hit("e", 7)
    policy.hit("f", 8)
    assert policy.insert("g", 1, 9) == ["a"]  # the hand clears e and f, wraps, and finds a
    policy.remove("e")  # the hand was on e: it moves on to f
    assert policy.insert("h", 1, 10) == []
    assert policy.insert("i", 1, 11) == ["f"]


def test_s3fifo_one_hit_wonders_leave_through_the_small_queue() -> None:
    policy = S3FIFOPolicy(100)
    policy.insert("popular", 10, 0.0)
    policy.hit("popular", 1.0)
    for i in range(30):
        policy.insert(f"once-{i}", 10, 2.0 + i)
    assert "popular" in policy and policy.in_main("popular")
    assert "once-0" not in policy


def test_s3fifo_ghost_hits_go_straight_to_main() -> None:
    policy = S3FIFOPolicy(100)
    policy.insert("x", 10, 0.0)
    for i in range(12):  # x is evicted to the ghost queue (which holds 90 bytes of keys)
        policy.insert(f"filler-{i}", 10, 1.0 + i)
    assert "x" not in policy
    policy.insert("x", 10, 30.0)  # remembered in the ghost queue
    assert policy.in_main("x")


# --------------------------------------------------------------------------
# listen


def seg(track: str, n: int, rendition: str = "aac-96k") -> str:
    return urls.segment_path(track, rendition, n)


def init(track: str, rendition: str = "aac-96k") -> str:
    return urls.rendition_path(track, rendition, "init.mp4")


def listen_once(policy: EvictionPolicy, track: str, segments: int, t: float) -> float:
    """Request a listen's init and segments 1..segments, as a player would."""
    for key, size in [(urls.track_path(track, "master.m3u8"), 600), (init(track), 700)] + [
        (seg(track, n), 75_000) for n in range(1, segments + 1)
    ]:
        if key in policy:
            policy.hit(key, t)
        else:
            policy.insert(key, size, t)
        t += 0.1
    return t


def test_listen_learns_that_early_segments_are_worth_more() -> None:
    policy = ListenPolicy(10_000_000)
    t = 0.0
    for i in range(200):  # most listens stop early
        t = listen_once(policy, f"trk{i}", 2 if i % 5 else 30, t)
    assert policy.survival(1, t) > 0.9
    assert policy.survival(25, t) < 0.4
    assert policy.rate(seg("new", 1), t) == 0.0  # never requested: no evidence at all
    policy.insert(init("new"), 700, t)
    assert policy.rate(seg("new", 1), t) > 2 * policy.rate(seg("new", 25), t)


@pytest.mark.parametrize(("name", "kept"), [("listen", True), ("lru", False)])
def test_listen_keeps_a_hot_track_through_a_flood_of_late_segments(name: str, kept: bool) -> None:
    """Long listens of cold tracks stream late segments past; LRU loses the hot track, listen does not."""
    policy = make_policy(name, 40 * 75_000)
    t = 0.0
    for i in range(300):
        if i % 10 == 0:
            t = listen_once(policy, "hot", 3, t)  # listened to all the time, always skipped early
        t = listen_once(policy, f"cold{i}", 1, t)
        for n in range(20, 26):  # ... while one-off listens play on
            key = seg(f"cold{i}", n)
            policy.insert(key, 75_000, t)
    hot = (urls.track_path("hot", "master.m3u8"), init("hot"), seg("hot", 1), seg("hot", 2), seg("hot", 3))
    assert all(key in policy for key in hot) is kept


def test_listen_prefers_small_objects_at_equal_rates() -> None:
    policy = ListenPolicy(1_000_000)
    policy.insert("/tracks/x/flac/init.mp4", 700, 0.0)
    policy.insert("/tracks/x/aac-96k/init.mp4", 700, 0.0)
    policy.insert(seg("x", 1, "flac"), 700_000, 0.0)
    policy.insert(seg("x", 1, "aac-96k"), 75_000, 0.0)
    evicted = policy.insert("/other", 300_000, 1.0)
    assert seg("x", 1, "flac") in evicted or "/other" in evicted
    assert seg("x", 1, "aac-96k") in policy


def test_listen_counts_decay() -> None:
    policy = ListenPolicy(1_000_000)
    policy.insert("k", 10, 0.0)
    for t in range(1, 8):
        policy.hit("k", float(t))
    discount = ListenPolicy.discount
    assert policy.rate("k", 8.0) == pytest.approx(8.0 - discount, rel=1e-3)
    assert policy.rate("k", 8.0 + ListenPolicy.half_life) == pytest.approx(4.0 - discount, rel=1e-3)


def test_listen_survives_a_long_virtual_time() -> None:
    """The decayed counts rebase instead of overflowing after ~500 half-lives."""
    policy = ListenPolicy(1_000)
    step = 50 * ListenPolicy.half_life
    for i in range(40):
        now = i * step
        for key in ("a", "b"):
            if key in policy:
                policy.hit(key, now)
            else:
                policy.insert(key, 100, now)
        assert policy.rate("a", now) == pytest.approx(1.0 - ListenPolicy.discount)  # older requests: gone
