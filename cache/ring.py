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

Two ways to order the nodes, both here because rendezvous is a dozen lines:

* ``Ring`` (the default): Karger et al.'s ring with ``vnodes`` virtual nodes
  per node.  O(log(n * vnodes)) to find the first choice; evenness improves
  with ``vnodes`` (max/mean ~1.1 at the default 256); removing a node moves only its
  keys, each to the next node on the ring.
* ``Rendezvous``: highest random weight (Thaler & Ravishankar).  Perfect
  evenness in expectation and minimal disruption with no tuning, but O(n)
  hashes per lookup; fine for tens of nodes, which is what a director or an
  edge sees.

Chosen default: ``Ring``, because lookups are O(log) and a track's first
choice is found without hashing the key once per node; ``RINGS`` has both by
name for configuration.
"""

from __future__ import annotations

import abc
import bisect
import math
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import ClassVar

import xxhash

__all__ = ["DEFAULT_VNODES", "RINGS", "HashRing", "Rendezvous", "Ring", "key_hash", "load_bound"]

DEFAULT_VNODES = 256
"""Virtual nodes per node: max/mean load ~1.1 over 10k keys on 3-20 nodes (160, ketama's, gives ~1.2)."""


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
    ) -> str | None:
        """The first healthy node in ``key``'s order whose load is under the bound.

        None only when no node is healthy.  See the module docstring for the
        bound; ``epsilon`` trades balance (small) for locality (large).
        """
        live = [node for node in self.nodes if node in healthy]
        if not live:
            load_bound(0, 1, epsilon)  # still reject a bad epsilon
            return None
        bound = load_bound(sum(loads.get(node, 0) for node in live), len(live), epsilon)
        for node in self._walk(key):
            if node in healthy and loads.get(node, 0) < bound:
                return node
        raise AssertionError("unreachable: the least loaded healthy node is under the bound")


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
        self._seeds = [(key_hash(node), node) for node in self.nodes]

    def _walk(self, key: str) -> Iterator[str]:
        data = key.encode("utf-8")
        scored = sorted(((xxhash.xxh3_64_intdigest(data, seed), node) for seed, node in self._seeds), reverse=True)
        for _, node in scored:
            yield node


RINGS: dict[str, type[HashRing]] = {Ring.kind: Ring, Rendezvous.kind: Rendezvous}
"""Node-ordering schemes by name (``Ring`` is the default)."""
