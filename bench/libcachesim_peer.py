"""The same trace through libCacheSim (PyPI ``libcachesim``): the peer our policies are measured against.

libCacheSim (Yang et al.; the simulator behind the S3-FIFO and SIEVE papers)
replays a trace in C.  We hand it our trace as an *oracleGeneral* binary
file (24-byte records: ``uint32 time, uint64 object id, uint32 size,
int64 next access``), the format whose next-access field lets Belady's
algorithm see the future, and read back object and byte miss ratios.

Policies compared (``PEERS``, libCacheSim class in brackets): LRU, LFU,
ARC, S3-FIFO (``S3FIFO``), SIEVE (``Sieve``), W-TinyLFU (``WTinyLFU``), and
two offline references: **Belady** (evict the object needed furthest in the
future: optimal for equal sizes, a strong reference with sizes) and
**BeladySize** (libCacheSim's size-aware variant: among sampled objects,
evict the one with the largest size x distance to next use).  Each runs
with libCacheSim's Python defaults (S3-FIFO: small queue 10%, ghost 90%,
move-to-main threshold 2; W-TinyLFU: 1% window, SLRU main).

**Size unit.**  libCacheSim's W-TinyLFU sizes its counting Bloom filter
from the cache size in a 32-bit int, which overflows above 2 GiB ("CBF has
too few counters").  Sizes are therefore given in units of ``unit`` bytes
(the smallest power of two that keeps the cache under 2^30 units; 1 for
caches under 1 GiB), rounding object sizes up; the effect on ratios is
below 0.1% for our object sizes.  Output libCacheSim prints on its own
(such warnings) is captured and returned, not mixed into ours.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

__all__ = ["COUNTERPART", "PEERS", "OracleTrace", "PeerResult", "libcachesim_version", "run_peers"]

PEERS: dict[str, str] = {
    "LRU": "LRU",
    "LFU": "LFU",
    "ARC": "ARC",
    "S3-FIFO": "S3FIFO",
    "SIEVE": "Sieve",
    "W-TinyLFU": "WTinyLFU",
    "Belady": "Belady",
    "BeladySize": "BeladySize",
}
"""Report name -> libCacheSim class name."""

OFFLINE = frozenset({"Belady", "BeladySize"})
"""Peers that see the future: references, not competitors."""

COUNTERPART: dict[str, str] = {"lru": "LRU", "lfu": "LFU", "sieve": "SIEVE", "s3fifo": "S3-FIFO"}
"""Our policy -> the libCacheSim policy implementing the same algorithm."""

_MAX_UNITS = 1 << 30


def libcachesim_version() -> str | None:
    """The installed libcachesim version, or None when it cannot be imported."""
    try:
        import libcachesim
    except ImportError:
        return None
    return str(getattr(libcachesim, "__version__", "unknown"))


@dataclass(frozen=True, slots=True)
class PeerResult:
    name: str
    capacity: int
    hit_ratio: float
    byte_hit_ratio: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.name, "capacity": self.capacity, "hit_ratio": round(self.hit_ratio, 6),
                "byte_hit_ratio": round(self.byte_hit_ratio, 6), "seconds": round(self.seconds, 3),
                "offline": self.name in OFFLINE}


class OracleTrace:
    """A trace written as a libCacheSim oracleGeneral file in a temporary directory (``close`` removes it)."""

    def __init__(self, times: Sequence[float], objects: Sequence[int], sizes: Sequence[int], *,
                 unit: int = 1) -> None:
        import numpy as np

        n = len(objects)
        if n == 0:
            raise ValueError("an empty trace cannot be replayed")
        self.unit = unit
        self.requests = n
        nxt = [-1] * n
        seen: dict[int, int] = {}
        for i in range(n - 1, -1, -1):  # next access time (request index) of the same object
            o = objects[i]
            nxt[i] = seen.get(o, -1)
            seen[o] = i
        record = np.dtype([("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
        data = np.zeros(n, dtype=record)
        t = np.asarray(times, dtype=np.float64)
        data["time"] = np.clip(t - t[0], 0, 2**32 - 1).astype(np.uint32)
        data["id"] = np.asarray(objects, dtype=np.uint64) + 1
        data["size"] = np.maximum(1, -(-np.asarray(sizes, dtype=np.int64) // unit)).astype(np.uint32)
        data["next"] = np.asarray(nxt, dtype=np.int64)
        self._dir = tempfile.TemporaryDirectory(prefix="legato-lcs-")
        self.path = Path(self._dir.name) / "trace.oracleGeneral"
        data.tofile(self.path)

    def close(self) -> None:
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unit_for(capacity: int) -> int:
    """The size unit keeping ``capacity`` under 2^30 units (a power of two)."""
    unit = 1
    while capacity // unit >= _MAX_UNITS:
        unit *= 2
    return unit


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Route the process's stdout/stderr file descriptors to a file for the duration; yield its lines."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield lines
        finally:
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def run_peers(oracle: OracleTrace, capacity: int, names: Sequence[str] = tuple(PEERS)) -> tuple[list[PeerResult], list[str]]:
    """Replay ``oracle`` through each libCacheSim policy in ``names`` with ``capacity`` bytes.

    Returns the results and what libCacheSim printed (warnings).  ImportError
    when libcachesim is not installed; ValueError for unknown names.
    """
    import libcachesim as lcs

    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown libCacheSim policies {unknown}; known: {', '.join(PEERS)}")
    units = max(1, capacity // oracle.unit)
    results = []
    with _captured_output() as said:
        reader = lcs.TraceReader(str(oracle.path), lcs.TraceType.ORACLE_GENERAL_TRACE)
        for name in names:
            cache = getattr(lcs, PEERS[name])(units)
            t0 = time.perf_counter()
            miss, byte_miss = cache.process_trace(reader)
            results.append(PeerResult(name, capacity, 1.0 - miss, 1.0 - byte_miss, time.perf_counter() - t0))
    return results, said
