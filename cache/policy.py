"""Eviction and admission policies, chosen by name from one table.

Pure: no I/O, no clock (``now`` is an argument), no threads.  The store and
the simulator (``cache.sim``) drive exactly the contract of
``EvictionPolicy``::

    policy = POLICIES["listen"](capacity_bytes)
    if key in policy:
        policy.hit(key, now)                      # served from cache
    else:
        evict = policy.insert(key, size, now)     # fetched; may we keep it?
        store.drop(*evict)                        # may contain `key` itself
    policy.remove(key)                            # purge, corruption, expiry

``insert`` returns the keys the store must drop to make room.  When the policy
declines ``key`` (admission control, or ``size > capacity``) the list is
``[key]`` and nothing else is evicted for it.  After the returned keys are
dropped, ``used <= capacity`` always holds and ``used`` is the sum of the
sizes of the admitted keys: the policy does its own byte accounting, the
store only follows.

Rows of the table (``POLICIES``):

==========  ===============================================================
``lru``     least recently used; the baseline
``lfu``     least frequently used, ties broken by least recent; O(log n)
``sieve``   SIEVE (Zhang et al., NSDI'24): FIFO + visited bit + a hand
``s3fifo``  S3-FIFO (Yang et al., SOSP'23): small FIFO, main FIFO, ghosts
``listen``  this workload's policy: segment-position-aware GDSF, see class
==========  ===============================================================

Adding a policy is one subclass (implement the five ``_``-hooks and
``keys_by_priority``) and one line in ``POLICIES``.  The base class owns the
byte accounting and the eviction loop, so every policy obeys the invariants
above by construction (and ``tests/cache/test_policy.py`` checks them with
random operation sequences for every row of the table).

Rejected alternative: letting each policy own its accounting and its
``insert`` loop.  Five copies of the same subtle loop (re-insert of a present
key, oversize objects, a victim search that must never pick the incoming key)
is how byte counters drift; the hooks keep the per-policy code to what really
differs, as in diskcache's ``EVICTION_POLICY`` table.
"""

from __future__ import annotations

import abc
import functools
import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from legato import urls
from legato.urls import Kind

__all__ = [
    "POLICIES",
    "EvictionPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "ListenPolicy",
    "S3FIFOPolicy",
    "SievePolicy",
    "make_policy",
]


class _New:
    """Marker state for a key that was not present before ``insert``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEW"


NEW = _New()
"""The ``state`` handed to ``_attach`` for a key that was not cached before."""


class EvictionPolicy(abc.ABC):
    """Decides which cached objects to keep, in bytes, on a caller-given clock.

    Subclasses implement the hooks:

    * ``_attach(key, size, now, state)``: put an admitted key into the
      policy's structures (``state`` is ``NEW`` or what ``_detach`` returned
      when the key is being re-inserted);
    * ``_detach(key) -> state``: take a key out of the structures (purge, or
      the first half of a re-insert), returning what a re-insert should keep
      (a frequency, a queue);
    * ``_touch(key, now)``: a cached key was requested;
    * ``_evict(now) -> key``: pick a victim and take it out of the structures;
      only called while at least one key is cached;
    * ``_admit(key, size, now) -> bool``: admission control for a new key
      (default: admit);

    and ``keys_by_priority``.  The base class keeps ``used`` and the sizes.
    """

    name: ClassVar[str]

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 bytes, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self._sizes: dict[str, int] = {}

    # -- the contract -----------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self)} keys, {self.used}/{self.capacity} bytes>"

    def size_of(self, key: str) -> int:
        """The size ``key`` was admitted with (KeyError if not cached)."""
        return self._sizes[key]

    def hit(self, key: str, now: float) -> None:
        """A cached ``key`` was requested at ``now``; unknown keys are ignored."""
        if key in self._sizes:
            self._touch(key, now)

    def insert(self, key: str, size: int, now: float) -> list[str]:
        """Offer a fetched object; return the keys the store must drop.

        The list is ``[key]`` when the object is declined (it is then not
        cached, even if an older copy was).  Re-inserting a cached key updates
        its size and counts as a request.
        """
        if size < 0:
            raise ValueError(f"object size must be >= 0 bytes, got {size} for {key!r}")
        state: object = NEW
        if key in self._sizes:
            state = self._detach(key)
            self._forget(key)
        if size > self.capacity or (state is NEW and not self._admit(key, size, now)):
            return [key]
        evicted = []
        while self.used + size > self.capacity:
            victim = self._evict(now)
            self._forget(victim)
            evicted.append(victim)
        self._sizes[key] = size
        self.used += size
        self._attach(key, size, now, state)
        return evicted

    def remove(self, key: str) -> None:
        """Forget ``key`` (purged, corrupt or expired); unknown keys are ignored."""
        if key in self._sizes:
            self._detach(key)
            self._forget(key)

    @abc.abstractmethod
    def keys_by_priority(self) -> list[str]:
        """Every cached key, the most evictable first (debugging, warm restart)."""

    # -- hooks ------------------------------------------------------------

    @abc.abstractmethod
    def _attach(self, key: str, size: int, now: float, state: object) -> None: ...

    @abc.abstractmethod
    def _detach(self, key: str) -> object: ...

    @abc.abstractmethod
    def _touch(self, key: str, now: float) -> None: ...

    @abc.abstractmethod
    def _evict(self, now: float) -> str: ...

    def _admit(self, key: str, size: int, now: float) -> bool:
        return True

    def _forget(self, key: str) -> None:
        self.used -= self._sizes.pop(key)


# --------------------------------------------------------------------------
# LRU


class LRUPolicy(EvictionPolicy):
    """Least recently used: an ordered dict, oldest request first.  O(1)."""

    name = "lru"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._order: OrderedDict[str, None] = OrderedDict()

    def keys_by_priority(self) -> list[str]:
        return list(self._order)

    def _attach(self, key: str, size: int, now: float, state: object) -> None:
        self._order[key] = None

    def _detach(self, key: str) -> object:
        del self._order[key]
        return None

    def _touch(self, key: str, now: float) -> None:
        self._order.move_to_end(key)

    def _evict(self, now: float) -> str:
        return self._order.popitem(last=False)[0]


# --------------------------------------------------------------------------
# LFU


class LFUPolicy(EvictionPolicy):
    """Least frequently used, ties broken by least recently used.

    Keys live in per-frequency buckets (ordered dicts, oldest request first);
    a min-heap of the frequencies that have a bucket finds the lowest one.
    Heap entries of emptied buckets are dropped lazily, so every operation is
    O(1) except bucket creation, which is O(log f) for f distinct frequencies.

    Frequencies count requests while cached (a re-insert counts as one);
    they are forgotten on eviction.  No aging: this is the textbook baseline,
    and it shows LFU's known weakness (yesterday's hits protect yesterday's
    hits) in the simulator.  ``listen`` is the policy that ages.
    """

    name = "lfu"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._freq: dict[str, int] = {}
        self._buckets: dict[int, OrderedDict[str, None]] = {}
        self._heap: list[int] = []

    def frequency(self, key: str) -> int:
        """Requests of ``key`` since it was admitted (KeyError if not cached)."""
        return self._freq[key]

    def keys_by_priority(self) -> list[str]:
        return [key for f in sorted(self._buckets) for key in self._buckets[f]]

    def _place(self, key: str, freq: int) -> None:
        self._freq[key] = freq
        bucket = self._buckets.get(freq)
        if bucket is None:
            bucket = self._buckets[freq] = OrderedDict()
            heapq.heappush(self._heap, freq)
        bucket[key] = None

    def _unplace(self, key: str) -> int:
        freq = self._freq.pop(key)
        bucket = self._buckets[freq]
        del bucket[key]
        if not bucket:
            del self._buckets[freq]
        return freq

    def _attach(self, key: str, size: int, now: float, state: object) -> None:
        self._place(key, state + 1 if isinstance(state, int) else 1)

    def _detach(self, key: str) -> object:
        return self._unplace(key)

    def _touch(self, key: str, now: float) -> None:
        self._place(key, self._unplace(key) + 1)

    def _evict(self, now: float) -> str:
        heap = self._heap
        while heap[0] not in self._buckets:
            heapq.heappop(heap)
        key = next(iter(self._buckets[heap[0]]))
        self._unplace(key)
        return key


# --------------------------------------------------------------------------
# SIEVE


class _Node:
    """A doubly linked list node of SIEVE's queue."""

    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: str) -> None:
        self.key = key
        self.visited = False
        self.newer: _Node | None = None
        self.older: _Node | None = None


class SievePolicy(EvictionPolicy):
    """SIEVE (Zhang, Yang, Yue, Vigfusson, Rashmi; NSDI 2024).

    One FIFO queue with a visited bit per object.  A hit only sets the bit
    (no list surgery, which is why SIEVE scales).  Eviction moves a *hand*
    from the oldest object towards the newest: visited objects have their bit
    cleared and stay where they are; the first unvisited one is evicted and
    the hand stays at its position, wrapping to the oldest end.  New objects
    enter at the newest end, so one-hit wonders are swept out quickly while
    popular objects survive in place ("lazy promotion, quick demotion").
    Amortised O(1).
    """

    name = "sieve"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._nodes: dict[str, _Node] = {}
        self._newest: _Node | None = None
        self._oldest: _Node | None = None
        self._hand: _Node | None = None

    def keys_by_priority(self) -> list[str]:
        """Eviction order if nothing else happened: unvisited from the hand, then the rest."""
        ring = list(self._from_hand())
        return [n.key for n in ring if not n.visited] + [n.key for n in ring if n.visited]

    def _from_hand(self) -> Iterator[_Node]:
        start = self._hand or self._oldest
        node = start
        while node is not None:
            yield node
            node = node.newer
        node = self._oldest
        while node is not None and node is not start:
            yield node
            node = node.newer

    def _attach(self, key: str, size: int, now: float, state: object) -> None:
        node = _Node(key)
        node.visited = state is not NEW  # a re-insert counts as a request
        node.older = self._newest
        if self._newest is not None:
            self._newest.newer = node
        self._newest = node
        if self._oldest is None:
            self._oldest = node
        self._nodes[key] = node

    def _detach(self, key: str) -> object:
        node = self._nodes.pop(key)
        if self._hand is node:
            self._hand = node.newer
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._oldest = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._newest = node.older
        return None

    def _touch(self, key: str, now: float) -> None:
        self._nodes[key].visited = True

    def _evict(self, now: float) -> str:
        node = self._hand or self._oldest
        assert node is not None, "_evict called on an empty cache"
        while node.visited:
            node.visited = False
            node = node.newer or self._oldest
            assert node is not None
        self._hand = node.newer  # None: wrap to the oldest next time
        self._detach(node.key)
        return node.key


# --------------------------------------------------------------------------
# S3-FIFO


class S3FIFOPolicy(EvictionPolicy):
    """S3-FIFO (Yang, Zhang, Qiu, Yue, Rashmi; SOSP 2023), in bytes.

    * New objects enter a small FIFO ``S`` (10% of the bytes) unless their key
      is in the ghost queue ``G``, in which case they go straight to the main
      FIFO ``M``.
    * Hits increment a frequency capped at 3 (two bits); nothing moves.
    * Evicting from ``S`` (while S holds >= 10% of the bytes, or M is empty):
      the oldest object moves to ``M`` (frequency cleared) if it was requested
      while in S, otherwise it is evicted and its key remembered in ``G``.
    * Evicting from ``M``: the oldest object is re-inserted at the new end
      with its frequency decremented if it is > 0, otherwise evicted.
    * ``G`` holds keys and sizes only, up to the bytes of ``M``'s share (90%),
      oldest forgotten first (the paper's "as many entries as M", in bytes).

    Thresholds follow libCacheSim's defaults (move-to-main threshold 1).
    Amortised O(1); ``keys_by_priority`` is an approximation (S's unrequested
    objects, then M's by remaining frequency).
    """

    name = "s3fifo"
    small_ratio: ClassVar[float] = 0.10
    max_freq: ClassVar[int] = 3

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._small: OrderedDict[str, None] = OrderedDict()
        self._main: OrderedDict[str, None] = OrderedDict()
        self._freq: dict[str, int] = {}
        self._small_bytes = 0
        self._small_target = self.small_ratio * capacity
        self._ghost: OrderedDict[str, int] = OrderedDict()
        self._ghost_bytes = 0
        self._ghost_limit = capacity - self._small_target

    def keys_by_priority(self) -> list[str]:
        small_cold = [k for k in self._small if self._freq[k] == 0]
        small_warm = [k for k in self._small if self._freq[k] > 0]
        main = sorted(self._main, key=lambda k: self._freq[k])  # stable: FIFO within a frequency
        return small_cold + main[: sum(1 for k in main if self._freq[k] == 0)] + small_warm + [
            k for k in main if self._freq[k] > 0
        ]

    def in_main(self, key: str) -> bool:
        """Whether ``key`` is in the main queue (for tests and debugging)."""
        return key in self._main

    def _attach(self, key: str, size: int, now: float, state: object) -> None:
        if isinstance(state, tuple):  # a re-insert: same queue, counts as a request
            to_main, freq = state
            self._freq[key] = min(freq + 1, self.max_freq)
        else:
            to_main = key in self._ghost
            if to_main:
                self._ghost_bytes -= self._ghost.pop(key)
            self._freq[key] = 0
        if to_main:
            self._main[key] = None
        else:
            self._small[key] = None
            self._small_bytes += size

    def _detach(self, key: str) -> object:
        freq = self._freq.pop(key)
        if key in self._main:
            del self._main[key]
            return (True, freq)
        del self._small[key]
        self._small_bytes -= self._sizes[key]
        return (False, freq)

    def _touch(self, key: str, now: float) -> None:
        freq = self._freq[key]
        if freq < self.max_freq:
            self._freq[key] = freq + 1

    def _evict(self, now: float) -> str:
        while True:
            if self._small and (self._small_bytes >= self._small_target or not self._main):
                key, _ = self._small.popitem(last=False)
                size = self._sizes[key]
                self._small_bytes -= size
                if self._freq[key] > 0:
                    self._freq[key] = 0
                    self._main[key] = None
                    continue
                del self._freq[key]
                self._remember(key, size)
                return key
            key = next(iter(self._main))
            freq = self._freq[key]
            if freq > 0:
                self._freq[key] = freq - 1
                self._main.move_to_end(key)
                continue
            del self._main[key]
            del self._freq[key]
            return key

    def _remember(self, key: str, size: int) -> None:
        """Put an evicted key into the ghost queue, forgetting the oldest ghosts."""
        self._ghost[key] = size
        self._ghost_bytes += size
        while self._ghost_bytes > self._ghost_limit and self._ghost:
            self._ghost_bytes -= self._ghost.popitem(last=False)[1]


# --------------------------------------------------------------------------
# listen: the music workload's policy


@dataclass(slots=True)
class _KeyStats:
    """What ``listen`` remembers about a key, cached or not: its parse and its requests."""

    weight: float  # requests, each weighted 2^((t - epoch) / half_life): see ListenPolicy._scale
    init_key: str | None  # the rendition's init segment, for media segments only
    segment: int  # 1-based segment number, 0 for everything that is not a media segment


class ListenPolicy(EvictionPolicy):
    """A policy for music listens: size-aware GDSF on a segment-position-aware rate.

    The facts it is built from:

    1. A listen asks for the playlists and the rendition's init segment, then
       segments 1, 2, 3, ... in order, and stops early most of the time
       (skips): segment ``n`` of a track is requested about
       ``listens(track) x P(a listen reaches n)`` times, and that survival
       probability falls steeply with ``n``; how steeply differs per track.
    2. Playlists and init segments are tiny (~1 KB) and needed by every
       listen of their track: per byte they are worth tens of segments.
    3. Objects vary ~10x in size (AAC 96k ~75 KB, FLAC ~700 KB a segment).
    4. Popularity is Zipf-like: most objects fetched once are never asked
       for again, a few are asked for all day.

    **The rate estimate.**  For segment ``n`` of rendition ``r`` of track ``t``::

        starts = requests of /tracks/t/r/init.mp4 (listens of t/r), discounted
        count  = requests of this segment, discounted
        S(n)   = requests of segment number n / requests of init segments,
                 over all tracks, with a 1/n prior (learnt online)
        rate   = starts * (count + K * S(n)) / (starts + K)

    an empirical-Bayes estimate: with few listens of a track the position
    prior decides, so segment 1 of a track that just started is worth far
    more than its segment 30; with many listens the segment's own count
    decides, which is how tracks whose listens stop early (count well below
    ``starts x S(n)``) get their late segments demoted.  Other keys (init,
    playlists, track.json, licences, keys outside the URL space) are rated
    by their own count.  Counts are *absolutely discounted* by ``D`` = 0.8
    requests (fact 4: the request that brought an object in says little
    about the next one), outlive the objects in a bounded table (like
    S3-FIFO's ghosts: ``stats_factor`` x the cached keys, at least
    ``min_stats``) so a re-fetched object is not judged new, and halve every
    ``half_life`` of virtual time so last month's hit protects nothing today.
    Memory (tracemalloc, CPython 3.11): ~550 bytes per cached key with its
    heap entry, ~350 per key only remembered; a count-min sketch would be
    ~10x smaller if edges ever hold tens of millions of objects.

    **Eviction** is GreedyDual-Size-Frequency (Cherkasova 1998): priority
    ``L + rate x cost / size``, evict the lowest, set ``L`` to the evicted
    priority (aging: what is not asked for again sinks below newer objects).
    The miss cost is one upstream round trip plus the transfer,
    ``1 + size / rtt_bytes`` with ``rtt_bytes`` = 128 KiB: per byte, tiny
    playlists and init segments (facts 2, 3) are kept almost always and
    FLAC segments go before AAC segments of the same rate, but the bytes a
    miss moves still count (pure ``rate / size`` wins ~1 point of hit ratio
    and loses up to 1 of byte hit ratio in the simulator, below; with the
    egress bill in mind we keep the transfer term).

    **Admission** (TinyLFU's rule, Einziger et al. 2017): a new object is
    admitted only if its value ``rate x cost / size`` is at least that of
    the first victim; a late segment of a one-off listen does not displace
    the early segments of a track that is played all day.

    Measured with ``cache.sim`` (default workload but 5,000 tracks and 5,000
    listens, seed 2; hit ratio / byte hit ratio at 1%, 3%, 10% of the trace's
    distinct bytes)::

        s3fifo                      0.192/0.131  0.254/0.182  0.320/0.242
        listen                      0.240/0.136  0.304/0.194  0.367/0.260
        listen without S(n) prior   0.238/0.134  0.302/0.192  0.365/0.253
        listen without admission    0.219/0.123  0.290/0.188  0.363/0.258
        listen, cost/size = 1/size  0.247/0.127  0.311/0.191  0.377/0.259
        s3fifo + position rule      0.144/0.086  0.228/0.160  0.318/0.229

    With a stats table of only the cached keys (``stats_factor`` 1), the
    prior is worth more: 0.237/0.128 against 0.229/0.120 without it at 1%.
    Operations are O(log n) (a heap with lazy deletion); ~14 us of CPU per
    request in CPython against ~2 for LRU: noise next to serving a segment.

    **Prefetched segments** (the edge's ``prefetch.segments``) arrive as
    ``insert`` calls that are not requests: a listener is expected within
    seconds.  Judged like requests, they failed admission or were the first
    victims (low count, cold track), so ``bench simulate`` found edges with
    prefetch 2 serving *fewer* hits than LRU and sending ~60% more origin
    bytes (default workload at 1% and 5% of the working set).  The policy
    cannot be told which inserts are prefetches, but it can see them: an
    insert of segment m while the last request of the same rendition was
    segment n, ``lookahead_min`` (2) <= m - n <= ``lookahead_max``, within
    ``lookahead_seconds``.  (A client's own miss is segment n + 1 and gives
    no event before its insert; a prefetch of k segments lands at n + k.)
    Such an object is not counted as a request and is *held* outside the
    heap, FIFO, until its first hit (then judged like any object), until
    ``lookahead_seconds`` pass (then it enters the heap at its own value),
    or until held bytes exceed ``reserve_share`` of the cache (oldest held
    goes first).  Measured on a 226k-request trace with prefetch 2, at 1% /
    5% of the working set: hit ratio 0.29 / 0.47 before, 0.79 / 0.87 after
    (LRU: 0.71 / 0.84); origin bytes 55 / 45 GB before, 33 / 27 after
    (LRU 34 / 29).  Without prefetch the change is within 0.6 points.
    With prefetch 1 every prefetch lands at n + 1 and is judged as before.

    Rejected alternatives:

    * **S3-FIFO with a position rule** (playlists, init and segments 1-3
      straight into the main FIFO, later segments through the small one):
      cheap and O(1), but the rule is a hand-set threshold blind to a
      track's popularity; it did *worse* than plain S3-FIFO (last row
      above): it fills main with early segments of one-off listens.
    * **Per-object frequency only (LFU, plain GDSF)**: a first request of
      segment 1 of a hot track counts the same as one of segment 30 of a
      one-off listen; the pooled ``starts`` and ``S(n)`` know better.  The
      gain is modest when the stats table remembers enough keys (third row),
      larger when it is small (the edge's memory bound, see above).
    * **Pinning playlists and init segments**: needs its own budget and its
      own eviction rule anyway; the cost/size term gives them their place.
    * **Boosting segment n+1 when segment n is requested** (sequential
      look-ahead): pays only when listens of a cold track overlap within
      seconds, and it is prefetch's job (the edge), not eviction's.
    * **Parsing manifests for track length**: a policy sees keys and sizes,
      not bodies; survival learnt from requests needs no body.
    """

    name = "listen"
    prior_weight: ClassVar[float] = 4.0  # K above, in listens
    discount: ClassVar[float] = 0.8  # D above, in requests
    global_prior_weight: ClassVar[float] = 20.0  # pseudo-listens behind S(n)'s 1/n prior
    half_life: ClassVar[float] = 6 * 3600.0  # seconds
    stats_factor: ClassVar[int] = 4
    min_stats: ClassVar[int] = 4096
    rtt_bytes: ClassVar[float] = 128 * 1024.0  # bytes that cost as much to fetch as one round trip
    lookahead_min: ClassVar[int] = 2  # an insert this many segments past the listen's position is a prefetch
    lookahead_max: ClassVar[int] = 16
    lookahead_seconds: ClassVar[float] = 30.0  # how long a prefetched segment is held for its listener
    reserve_share: ClassVar[float] = 0.5  # at most this share of the bytes held for listeners
    _MAX_EXPONENT: ClassVar[float] = 500.0  # rebase the landmark before 2^x overflows

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._priority: dict[str, float] = {}  # cached keys -> current priority
        self._heap: list[tuple[float, int, str]] = []  # lazy: stale entries skipped
        self._seq = itertools.count()
        self._floor = 0.0  # GDSF's L
        self._stats: OrderedDict[str, _KeyStats] = OrderedDict()  # least recently requested first
        self._position: dict[int, float] = {}  # weighted requests per segment number, all tracks
        self._starts = 0.0  # weighted requests of init segments, all tracks
        self._epoch: float | None = None
        self._scale_at = math.nan
        self._scale_value = 1.0
        self._per_rtt_byte = 1.0 / self.rtt_bytes
        self._admitted: tuple[str, float] | None = None
        self._progress: OrderedDict[str, tuple[int, float]] = OrderedDict()  # init key -> (last segment, when)
        self._reserve: OrderedDict[str, float] = OrderedDict()  # prefetched, held for the listener: key -> since
        self._reserve_bytes = 0
        self._reserve_cap = self.reserve_share * capacity
        self._lookahead: str | None = None

    # -- decayed counts -----------------------------------------------------
    #
    # Counts decay by half every half_life.  Rather than decaying every
    # counter on every request, a request at time t adds 2^((t - epoch) / H)
    # ("landmark" weighting) and a count is read at `now` by dividing by
    # 2^((now - epoch) / H): one multiplication per read, and ratios of
    # counts need no decay at all.  The epoch is moved forward before the
    # weights could overflow (every ~500 half-lives).

    def _scale(self, now: float) -> float:
        """2^((now - epoch) / half_life), memoised for the current ``now``."""
        if now != self._scale_at:
            if self._epoch is None:
                self._epoch = now
            exponent = (now - self._epoch) / self.half_life
            if exponent > self._MAX_EXPONENT:
                self._rebase(now)
                exponent = 0.0
            self._scale_at = now
            self._scale_value = 2.0 ** max(exponent, -self._MAX_EXPONENT)
        return self._scale_value

    def _rebase(self, now: float) -> None:
        """Move the landmark to ``now``, shrinking every weight to match."""
        assert self._epoch is not None
        factor = 2.0 ** (-(now - self._epoch) / self.half_life)
        for stats in self._stats.values():
            stats.weight *= factor
        self._position = {n: w * factor for n, w in self._position.items()}
        self._starts *= factor
        self._epoch = now

    # -- estimates ----------------------------------------------------------

    def survival(self, n: int, now: float) -> float:
        """Estimated probability that a listen reaches segment ``n`` (1-based)."""
        scale = self._scale(now)
        k = self.global_prior_weight
        reached = self._position.get(n, 0.0) / scale + k / n  # prior: 1/n, heavy early skipping
        return min(1.0, reached / (self._starts / scale + k))

    def rate(self, key: str, now: float) -> float:
        """Estimated requests of ``key`` per half-life (see the class docstring)."""
        stats = self._stats.get(key) or self._parse(key)
        return self._rate(stats, now)

    def _rate(self, stats: _KeyStats, now: float) -> float:
        scale = self._scale(now)
        count = self._discounted(stats.weight / scale)
        if stats.init_key is None:
            return count
        init = self._stats.get(stats.init_key)
        starts = max(self._discounted(init.weight / scale) if init else 0.0, count)
        k = self.prior_weight
        return starts * (count + k * self.survival(stats.segment, now)) / (starts + k)

    def _discounted(self, count: float) -> float:
        """Absolute discounting: most objects requested once are never requested again."""
        return max(count - self.discount, 0.0) if count > 0 else 0.0

    @staticmethod
    def _parse(key: str) -> _KeyStats:
        segment = _segment_of(key) if key.endswith(".m4s") else None
        if segment is None:
            return _KeyStats(0.0, None, 0)
        return _KeyStats(0.0, segment[0], segment[1])

    def _observe(self, key: str, now: float) -> _KeyStats:
        """Count a request of ``key`` (hit or miss); return its stats."""
        weight = self._scale(now)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = self._parse(key)
            self._trim_stats()
        else:
            self._stats.move_to_end(key)
        stats.weight += weight
        if stats.init_key is not None:
            self._position[stats.segment] = self._position.get(stats.segment, 0.0) + weight
            self._progress[stats.init_key] = (stats.segment, now)
            self._progress.move_to_end(stats.init_key)
            if len(self._progress) > self.min_stats + len(self._priority):
                self._progress.popitem(last=False)
        elif key.endswith("/init.mp4"):
            self._starts += weight
        return stats

    def _trim_stats(self) -> None:
        """Forget the least recently requested keys beyond the bound."""
        limit = max(self.min_stats, self.stats_factor * len(self._priority))
        while len(self._stats) > limit:
            self._stats.popitem(last=False)

    # -- priority heap ------------------------------------------------------

    def _priority_of(self, stats: _KeyStats, size: int, now: float) -> float:
        return self._floor + self._value(stats, size, now)

    def _value(self, stats: _KeyStats, size: int, now: float) -> float:
        """GDSF's value: rate x miss cost / size, with cost = 1 + size / rtt_bytes."""
        return self._rate(stats, now) * (1.0 / max(size, 1) + self._per_rtt_byte)

    def _set_priority(self, key: str, priority: float) -> None:
        self._priority[key] = priority
        heapq.heappush(self._heap, (priority, next(self._seq), key))
        if len(self._heap) > 2 * len(self._priority) + 1024:
            self._heap = [(p, next(self._seq), k) for k, p in self._priority.items()]
            heapq.heapify(self._heap)

    def _lowest(self) -> tuple[float, str]:
        """The cached key with the lowest priority, dropping stale heap entries."""
        heap = self._heap
        while True:
            priority, _, key = heap[0]
            if self._priority.get(key) == priority:
                return priority, key
            heapq.heappop(heap)

    # -- hooks --------------------------------------------------------------

    def keys_by_priority(self) -> list[str]:
        return sorted(self._priority, key=self._priority.__getitem__) + list(self._reserve)

    def held_for_listener(self, key: str) -> bool:
        """Whether ``key`` is a prefetched segment still held for its listener (tests, debugging)."""
        return key in self._reserve

    def _is_lookahead(self, key: str, now: float) -> bool:
        """An insert of segment m while this rendition's listen is at n, m - n in [lookahead_min, lookahead_max]."""
        segment = _segment_of(key) if key.endswith(".m4s") else None
        if segment is None:
            return False
        progress = self._progress.get(segment[0])
        return (progress is not None and self.lookahead_min <= segment[1] - progress[0] <= self.lookahead_max
                and now - progress[1] <= self.lookahead_seconds)

    def _admit(self, key: str, size: int, now: float) -> bool:
        if self._is_lookahead(key, now):  # a prefetch, not a request: held for the listener, not judged yet
            self._lookahead = key
            return True
        stats = self._observe(key, now)
        value = self._value(stats, size, now)
        self._admitted = (key, value)  # for _attach: nothing it depends on changes in between
        if self.used + size <= self.capacity:
            return True
        _, victim = self._lowest()
        victim_stats = self._stats.get(victim) or self._parse(victim)
        return value >= self._value(victim_stats, self._sizes[victim], now)

    def _attach(self, key: str, size: int, now: float, state: object) -> None:
        admitted, self._admitted = self._admitted, None
        lookahead, self._lookahead = self._lookahead, None
        if state is NEW and lookahead == key:
            self._reserve[key] = now
            self._reserve_bytes += size
            return
        if state is NEW and admitted is not None and admitted[0] == key:
            value = admitted[1]  # _admit counted this request and valued the object
        else:
            value = self._value(self._observe(key, now), size, now)  # a re-insert is a request too
        self._set_priority(key, self._floor + value)

    def _detach(self, key: str) -> object:
        if key in self._reserve:
            del self._reserve[key]
            self._reserve_bytes -= self._sizes[key]
        else:
            del self._priority[key]
        return None

    def _touch(self, key: str, now: float) -> None:
        if key in self._reserve:  # the listener arrived: from now on it is judged like any object
            del self._reserve[key]
            self._reserve_bytes -= self._sizes[key]
        stats = self._observe(key, now)
        self._set_priority(key, self._priority_of(stats, self._sizes[key], now))

    def _release(self, key: str, now: float) -> None:
        """Move a held key into the heap at its own value (its listener did not come)."""
        del self._reserve[key]
        self._reserve_bytes -= self._sizes[key]
        stats = self._stats.get(key) or self._parse(key)
        self._set_priority(key, self._priority_of(stats, self._sizes[key], now))

    def _evict(self, now: float) -> str:
        reserve = self._reserve
        while reserve:
            key, since = next(iter(reserve.items()))
            if now - since <= self.lookahead_seconds:
                break
            self._release(key, now)
        if reserve and (not self._priority or self._reserve_bytes > self._reserve_cap):
            key = next(iter(reserve))
            del reserve[key]
            self._reserve_bytes -= self._sizes[key]
            return key
        priority, key = self._lowest()
        heapq.heappop(self._heap)
        del self._priority[key]
        self._floor = max(self._floor, priority)
        return key


@functools.lru_cache(maxsize=1 << 16)
def _segment_of(key: str) -> tuple[str, int] | None:
    """(init segment key, segment number) of a media segment key, else None (memoised parse)."""
    try:
        route = urls.parse(key)
    except urls.BadPath:
        return None
    if route is None or route.kind is not Kind.SEGMENT or route.segment is None:
        return None
    return f"/tracks/{route.track}/{route.rendition}/init.mp4", route.segment


# --------------------------------------------------------------------------
# The table

POLICIES: dict[str, type[EvictionPolicy]] = {
    LRUPolicy.name: LRUPolicy,
    LFUPolicy.name: LFUPolicy,
    SievePolicy.name: SievePolicy,
    S3FIFOPolicy.name: S3FIFOPolicy,
    ListenPolicy.name: ListenPolicy,
}
"""Every eviction policy by name: adding one is one class and one line here."""


def make_policy(name: str, capacity: int) -> EvictionPolicy:
    """A new policy by name; ValueError naming the choices for an unknown one."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {', '.join(POLICIES)}") from None
    return cls(capacity)
