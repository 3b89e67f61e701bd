"""Consistent hashing with bounded loads: which node serves a key.

Pure: no I/O, no clock, no Python ``hash()`` (it is salted per process);
every hash is xxh3-64 of UTF-8 bytes, so every process, every node and every
restart agrees on where a key lives.

Two users, one module:

* the **edge** picks a regional for a miss with ``key = track id``
  (``cache.key.ring_key``), so all segments of a track land on one regional
  and are fetched from origin once, unless that regional is overloaded;
* the **director** picks an edge for a listener with ``key = session id``, so
  a session stays on one edge (its cache stays warm for that listen).

API (both classes, see ``HashRing``)::

    ring = Ring(["r1", "r2", "r3"])
    ring.candidates("track-42")             # every node, in preference order
    ring.pick("track-42", loads, healthy, epsilon=0.25)   # or None

``pick`` implements *consistent hashing with bounded loads* (Mirrokni,
Thorup, Zadimoghaddam, SODA 2018): with ``m`` requests in flight over ``n``
healthy nodes (``m`` counting the one being placed), a node is eligible only
while its load is below ``ceil((1 + epsilon) * m / n)``; the key goes to the
first eligible node in its preference order.  No node ever exceeds the bound,
some node is always eligible (the least loaded one is below the average), and
a key moves off its first choice only while that node is over the bound, so a
viral track spills onto its next regionals instead of melting the first.
``loads`` is whatever the caller counts (in-flight requests, open
connections); unknown nodes count 0.

Three ways to order the nodes, chosen by name (``RINGS``):

* ``Ring`` (the default for regionals): Karger et al.'s ring with ``vnodes``
  virtual nodes per node.  O(log(n * vnodes)) to find the first choice;
  evenness improves only as 1/sqrt(vnodes) (max/mean ~1.1 at the default 256
  on 3-20 nodes, ~1.17 on 100); removing a node moves only its keys, each to
  the next node on the ring.
* ``Rendezvous``: highest random weight (Thaler & Ravishankar).  Perfect
  evenness in expectation and minimal disruption with no tuning, but O(n)
  hashes per lookup; fine for tens of nodes.
* ``Maglev`` (the director's default): the lookup table of Maglev (Eisenbud
  et al., NSDI 2016) gives each key its first choice in O(1): each node owns
  ``table_size / n`` entries to within one, so the load is as even as the
  keys themselves allow (max/mean 1.02 for 1M keys on 100 nodes, where
  ``Ring`` at 16384 vnodes still gives ~1.04).  After the first choice the
  order is rendezvous over the other nodes, so the keys of a failed node
  spread evenly over all the others, and only they move.  The table depends
  on the node *set*, not on health: failures never rebuild it.  A config
  change that rebuilds it without a node moves slightly more than that
  node's keys (1.6% instead of 1.0% for one of 100 nodes): Maglev trades
  that for its evenness (``path_independent = False``).

``Ring`` stays the regionals' choice because their node set is small and
changes by configuration; the director (``edge.director``) uses ``Maglev``
because a session must stay on its edge through failures of others and the
edges' loads should be even without relying on the load bound.
"""

from __future__ import annotations

import abc
import bisect
import itertools
import math
from array import array
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import ClassVar

import xxhash

__all__ = ["DEFAULT_TABLE_SIZE", "DEFAULT_VNODES", "RINGS", "HashRing", "Maglev", "Rendezvous", "Ring", "key_hash",
           "load_bound"]

DEFAULT_VNODES = 256
"""Virtual nodes per node: max/mean load ~1.1 over 10k keys on 3-20 nodes (160, ketama's, gives ~1.2)."""

DEFAULT_TABLE_SIZE = 65537
"""Maglev table entries (a prime, as Maglev needs): at least 100 per node up to 655 nodes."""


def key_hash(value: str, seed: int = 0) -> int:
    """A stable 64-bit hash of a string (xxh3-64 of its UTF-8 bytes)."""
    return xxhash.xxh3_64_intdigest(value.encode("utf-8"), seed)


def load_bound(total_load: int, nodes: int, epsilon: float) -> int:
    """The load a node must stay below to take one more key: ceil((1+eps)(total+1)/nodes)."""
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    if nodes < 1:
        raise ValueError("no nodes to bound")
    return math.ceil((1.0 + epsilon) * (total_load + 1) / nodes)


class HashRing(abc.ABC):
    """Orders nodes per key; ``pick`` adds health and bounded loads on top."""

    kind: ClassVar[str]
    path_independent: ClassVar[bool] = True
    """True when the order for a node set does not depend on how the set was reached: a ring
    rebuilt without a node moves only that node's keys (False for ``Maglev``, see above)."""

    def __init__(self, nodes: Sequence[str]) -> None:
        if isinstance(nodes, str):
            raise TypeError("nodes must be a sequence of node names, not a string")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node names in {list(nodes)!r}")
        self.nodes: tuple[str, ...] = tuple(nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.nodes)!r})"

    @abc.abstractmethod
    def _walk(self, key: str) -> Iterator[str]:
        """Every node once, most preferred first."""

    def candidates(self, key: str) -> list[str]:
        """All nodes in preference order for ``key`` (retry and failover order)."""
        return list(self._walk(key))

    def primary(self, key: str) -> str | None:
        """The first choice for ``key``, ignoring health and load (None if no nodes)."""
        return next(self._walk(key), None)

    def pick(
        self,
        key: str,
        loads: Mapping[str, int],
        healthy: Container[str],
        epsilon: float = 0.25,
        *,
        floor: int = 0,
    ) -> str | None:
        """The first healthy node in ``key``'s order whose load is under the bound.

        None only when no node is healthy.  See the module docstring for the
        bound; ``epsilon`` trades balance (small) for locality (large).  With
        ``floor``, a node below that load is never over the bound: with few
        keys in play, (1 + epsilon) x a small mean would move keys on mere chance.
        """
        live = list(filter(healthy.__contains__, self.nodes))
        if not live:
            load_bound(0, 1, epsilon)  # still reject a bad epsilon
            return None
        bound = max(floor, load_bound(sum(map(loads.get, live, itertools.repeat(0))), len(live), epsilon))
        node = self.pick_under(key, loads, healthy, bound)
        if node is None:
            raise AssertionError("unreachable: the least loaded healthy node is under the bound")
        return node

    def pick_under(self, key: str, loads: Mapping[str, int], healthy: Container[str], bound: int) -> str | None:
        """The first healthy node in ``key``'s order whose load is below ``bound`` (None if none is).

        ``pick`` with the bound computed by the caller, for callers that keep
        the total load themselves (O(1) when the first choice is eligible).
        """
        for node in self._walk(key):
            if node in healthy and loads.get(node, 0) < bound:
                return node
        return None

    def first(self, key: str, healthy: Container[str]) -> str | None:
        """The first healthy node in ``key``'s order, loads aside (None if none is healthy)."""
        for node in self._walk(key):
            if node in healthy:
                return node
        return None


class Ring(HashRing):
    """Consistent hashing on a ring of ``vnodes`` points per node."""

    kind = "ring"

    def __init__(self, nodes: Sequence[str], vnodes: int = DEFAULT_VNODES) -> None:
        super().__init__(nodes)
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        # sorted by (point, node) so equal points (2^-64 odds) still order deterministically
        points = sorted((key_hash(f"{node}#{i}"), node) for node in self.nodes for i in range(vnodes))
        self._points = [p for p, _ in points]
        self._owners = [node for _, node in points]

    def _walk(self, key: str) -> Iterator[str]:
        if not self._points:
            return
        n = len(self._points)
        start = bisect.bisect_right(self._points, key_hash(key))
        seen: set[str] = set()
        for i in range(n):
            node = self._owners[(start + i) % n]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self.nodes):
                    return


class Rendezvous(HashRing):
    """Highest random weight hashing: nodes ordered by hash(node seed, key)."""

    kind = "rendezvous"

    def __init__(self, nodes: Sequence[str]) -> None:
        super().__init__(nodes)
        self._seeds = [key_hash(node) for node in self.nodes]

    def _walk(self, key: str) -> Iterator[str]:
        scores = map(xxhash.xxh3_64_intdigest, itertools.repeat(key.encode("utf-8")), self._seeds)
        for _, node in sorted(zip(scores, self.nodes), reverse=True):
            yield node


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def maglev_table(nodes: Sequence[str], size: int) -> array[int]:
    """Maglev's lookup table: entry -> index into ``nodes`` (Eisenbud et al. 2016, section 3.4).

    Each node walks its own permutation of the entries (offset and skip from
    its name's hash) and, in turn, claims the next entry no one holds, until
    the table is full: every node gets ``size // n`` or one more entries.
    """
    n = len(nodes)
    table = array("i", [-1]) * size
    if n == 0:
        return table
    offsets = [key_hash(node, 1) % size for node in nodes]
    skips = [key_hash(node, 2) % (size - 1) + 1 for node in nodes]
    tried = [0] * n
    filled = 0
    while True:
        for i in range(n):
            offset, skip, j = offsets[i], skips[i], tried[i]
            entry = (offset + j * skip) % size
            while table[entry] >= 0:
                j += 1
                entry = (offset + j * skip) % size
            table[entry] = i
            tried[i] = j + 1
            filled += 1
            if filled == size:
                return table


class Maglev(HashRing):
    """First choice from a Maglev lookup table; the rest in rendezvous order."""

    kind = "maglev"
    path_independent = False

    def __init__(self, nodes: Sequence[str], table_size: int = DEFAULT_TABLE_SIZE) -> None:
        super().__init__(nodes)
        if not _is_prime(table_size):
            raise ValueError(f"table_size must be a prime number, got {table_size}")
        if len(self.nodes) > table_size:
            raise ValueError(f"{len(self.nodes)} nodes need a table_size of at least as many entries "
                             f"(100 per node keeps the load even), got {table_size}")
        self.table_size = table_size
        # filled in name order, so the table depends on the set of nodes, not on how they are listed
        self._names = sorted(self.nodes)
        self._table = maglev_table(self._names, table_size)
        self._rest = Rendezvous(self.nodes)

    def primary(self, key: str) -> str | None:
        if not self._names:
            return None
        return self._names[self._table[key_hash(key) % self.table_size]]

    def _walk(self, key: str) -> Iterator[str]:
        first = self.primary(key)
        if first is None:
            return
        yield first
        for node in self._rest._walk(key):
            if node != first:
                yield node


RINGS: dict[str, type[HashRing]] = {Ring.kind: Ring, Rendezvous.kind: Rendezvous, Maglev.kind: Maglev}
"""Node-ordering schemes by name (``Ring`` is the regionals' default, ``Maglev`` the director's)."""
