"""Replaying a trace through a topology of caches on a virtual clock.

Pure: no files, sockets or clocks (CPU time is measured around the loops for
the speed figure, never used by them).  The caches are the production
policies (``cache.policy.make_policy``: the classes the store's manager
runs), driven by the same contract as ``cache.sim.simulate``; the routing
is the production routing:

* a client goes to the edge its name hashes to (``cache.ring.Ring`` over
  ``edge-0 .. edge-{E-1}``, key = client, as the director places sessions);
* an edge miss goes to the regional the object's *ring key* hashes to
  (``cache.key.ring_key``: the track id, over ``regional-0 ..``), exactly
  as ``cache.upstream`` orders peers.  Bounded loads only move a request
  off its first choice while that peer is over
  ``(1 + epsilon) x mean in-flight``; on a virtual clock requests are
  instantaneous, nothing is in flight, so the first choice is always taken;
* with no regionals, edges fetch from origin directly;
* a regional miss is an origin fetch.

Keys are cache keys (``cache.key``: canonical paths), as the trace readers
produce them.  A miss is fetched and offered to the tier's policy at the
request's time (``insert``); a hit is reported (``hit``).  Fetch latency and
coalescing are not modelled: each miss is one upstream request.

**Prefetch** (edge, ``prefetch`` = k > 0) follows ``cache.prefetch``: after
every client request for segment n (hit or miss), segments n+1..n+k of the
same rendition that are not cached and were not prefetched in the last
``PREFETCH_TTL`` seconds are fetched from the regional and offered to the
edge's policy.  The live node stops at the playlist's last segment; here
the last segment is the highest number of that rendition anywhere in the
trace, and a segment the trace never asks for has the size of the one that
triggered it.  A prefetched object counts as *used* when a client later
asks that edge for it and it is still cached (a hit).

Counted per tier: requests, hits, bytes, byte hits (client requests at the
edge; edge misses plus prefetches at the regionals); bytes each tier sends
downstream (edge: to clients; regional: to edges; origin: to regionals or
edges), and optional per-interval series.
"""

from __future__ import annotations

import time as _time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.trace import Trace
from cache.key import ring_key
from cache.policy import make_policy
from cache.ring import Ring
from cache.sim import HitCounts
from legato import urls

__all__ = ["PREFETCH_TTL", "BenchSpec", "TierStats", "Topology", "TopologyResult", "edge_of_clients", "run_bench",
           "run_topology"]

PREFETCH_TTL = 300.0
"""Seconds a prefetched segment counts as recently prefetched (cache.prefetch's default ttl)."""

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Topology:
    """E edges x R regionals x origin, with a size (bytes) and a policy per tier."""

    edge_size: int
    edge_policy: str = "lru"
    edges: int = 1
    regionals: int = 0
    regional_size: int = 0
    regional_policy: str = "lru"
    prefetch: int = 0

    def __post_init__(self) -> None:
        if self.edges < 1 or self.regionals < 0 or self.prefetch < 0:
            raise ValueError("edges >= 1, regionals >= 0 and prefetch >= 0 required")
        if self.edge_size < 0 or self.regional_size < 0:
            raise ValueError("cache sizes must be >= 0 bytes")
        make_policy(self.edge_policy, 0)
        make_policy(self.regional_policy, 0)

    def describe(self) -> str:
        r = f" x {self.regionals} regional(s) of {self.regional_size} B ({self.regional_policy})" if self.regionals else ""
        p = f", prefetch {self.prefetch}" if self.prefetch else ""
        return f"{self.edges} edge(s) of {self.edge_size} B ({self.edge_policy}){r} x origin{p}"


@dataclass(slots=True)
class TierStats(HitCounts):
    """Requests a tier answered and how many bytes it served from cache."""

    evictions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "hits": self.hits, "bytes": self.bytes, "byte_hits": self.byte_hits,
                "evictions": self.evictions, "hit_ratio": round(self.hit_ratio, 6),
                "byte_hit_ratio": round(self.byte_hit_ratio, 6)}


@dataclass(slots=True)
class Interval:
    """Counts of one interval of virtual time (edge client requests and origin egress)."""

    start: float
    requests: int = 0
    hits: int = 0
    bytes: int = 0
    byte_hits: int = 0
    origin_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "requests": self.requests, "hits": self.hits, "bytes": self.bytes,
                "byte_hits": self.byte_hits, "origin_bytes": self.origin_bytes}


@dataclass(slots=True)
class TopologyResult:
    """What a topology did with a trace; egress is bytes each tier sent downstream."""

    topology: Topology
    edge: TierStats = field(default_factory=TierStats)
    regional: TierStats = field(default_factory=TierStats)
    origin_requests: int = 0
    origin_bytes: int = 0
    prefetched: int = 0
    prefetched_bytes: int = 0
    prefetch_used: int = 0
    prefetch_used_bytes: int = 0
    duration: float = 0.0
    cpu_seconds: float = 0.0
    outcomes: list[bool] | None = None  # HIT/MISS of every client request at its edge, when asked for
    series: list[Interval] = field(default_factory=list)

    @property
    def regional_egress_bytes(self) -> int:
        """Bytes the regionals sent to edges (all of it, hits and misses), or 0 without regionals."""
        return self.regional.bytes

    @property
    def requests_per_cpu_minute(self) -> float:
        return self.edge.requests / self.cpu_seconds * 60 if self.cpu_seconds > 0 else 0.0

    def gbps(self, nbytes: int) -> float:
        """Average rate of ``nbytes`` over the trace's duration, in Gbit/s."""
        return nbytes * 8 / self.duration / 1e9 if self.duration > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        t = self.topology
        return {
            "topology": {"edges": t.edges, "edge_size": t.edge_size, "edge_policy": t.edge_policy,
                         "regionals": t.regionals, "regional_size": t.regional_size,
                         "regional_policy": t.regional_policy, "prefetch": t.prefetch},
            "edge": self.edge.to_json(),
            "regional": self.regional.to_json() if t.regionals else None,
            "origin": {"requests": self.origin_requests, "bytes": self.origin_bytes},
            "egress_bytes": {"edge": self.edge.bytes, "regional": self.regional_egress_bytes,
                             "origin": self.origin_bytes},
            "egress_gbps": {"edge": self.gbps(self.edge.bytes), "regional": self.gbps(self.regional_egress_bytes),
                            "origin": self.gbps(self.origin_bytes)},
            "prefetch": {"fetched": self.prefetched, "fetched_bytes": self.prefetched_bytes,
                         "used": self.prefetch_used, "used_bytes": self.prefetch_used_bytes},
            "duration_s": self.duration,
            "cpu_seconds": round(self.cpu_seconds, 3),
            "requests_per_cpu_minute": round(self.requests_per_cpu_minute),
            "series": [i.to_json() for i in self.series],
        }


def _memo(trace: Trace, what: str, n: int, build: Callable[[], Any]) -> Any:
    """A derived fact of ``trace`` computed once (runs of one benchmark share the trace)."""
    key = (what, n, len(trace))
    if key not in trace.memo:
        trace.memo[key] = build()
    return trace.memo[key]


def edge_of_clients(trace: Trace, edges: int) -> list[int]:
    """The edge index of every client of ``trace`` (ring over edge-0.., key = client name)."""
    return _memo(trace, "edges", edges, lambda: _edge_of_clients(trace, edges))  # type: ignore[no-any-return]


def _edge_of_clients(trace: Trace, edges: int) -> list[int]:
    if edges == 1:
        return [0] * len(trace.client_names)
    ring = Ring([f"edge-{i}" for i in range(edges)])
    index = {name: i for i, name in enumerate(ring.nodes)}
    return [index[ring.primary(name) or ring.nodes[0]] for name in trace.client_names]


def _regional_of_objects(trace: Trace, regionals: int) -> list[int]:
    if regionals <= 1:
        return [0] * len(trace.keys)
    ring = Ring([f"regional-{i}" for i in range(regionals)])
    index = {name: i for i, name in enumerate(ring.nodes)}
    memo: dict[str, int] = {}
    out = []
    for key in trace.keys:
        rk = ring_key(key) or key
        r = memo.get(rk)
        if r is None:
            r = memo[rk] = index[ring.primary(rk) or ring.nodes[0]]
        out.append(r)
    return out


class _Segments:
    """Prefetch facts of a trace's segment keys: next keys, last segment of each rendition."""

    def __init__(self, trace: Trace) -> None:
        self.route: list[urls.Route | None] = []
        self.last: dict[str, int] = {}
        for key in trace.keys:
            route = urls.parse(key) if key.endswith(".m4s") else None
            if route is not None and route.kind is urls.Kind.SEGMENT and route.segment is not None:
                self.route.append(route)
                directory = route.rendition_dir
                self.last[directory] = max(self.last.get(directory, 0), route.segment)
            else:
                self.route.append(None)
        self._next: dict[int, list[str]] = {}

    def following(self, o: int, k: int) -> list[str]:
        """Keys of the up to ``k`` segments after object ``o`` (none if ``o`` is not a segment)."""
        nxt = self._next.get(o)
        if nxt is None:
            route = self.route[o]
            if route is None:
                nxt = []
            else:
                assert route.track is not None and route.rendition is not None and route.segment is not None
                end = min(route.segment + k, self.last[route.rendition_dir])
                nxt = [urls.segment_path(route.track, route.rendition, n, route.scheme)
                       for n in range(route.segment + 1, end + 1)]
            self._next[o] = nxt
        return nxt


def run_topology(trace: Trace, topo: Topology, *, interval: float | None = None, record: bool = False,
                 indices: list[int] | None = None, progress: Progress | None = None) -> TopologyResult:
    """Replay ``trace`` (or the requests at ``indices``) through ``topo``.

    ``interval`` (seconds) adds a series; ``record`` keeps the HIT/MISS
    outcome of every client request (for comparing with live nodes).
    """
    if interval is not None and interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval}")
    cpu0 = _time.process_time()
    result = TopologyResult(topo, outcomes=[] if record else None)
    edges = [make_policy(topo.edge_policy, topo.edge_size) for _ in range(topo.edges)]
    regionals = [make_policy(topo.regional_policy, topo.regional_size) for _ in range(topo.regionals)]
    edge_of = edge_of_clients(trace, topo.edges)
    regional_of = _memo(trace, "regionals", topo.regionals, lambda: _regional_of_objects(trace, topo.regionals))
    segments = _memo(trace, "segments", topo.prefetch, lambda: _Segments(trace)) if topo.prefetch > 0 else None
    sizes_by_object = _memo(trace, "sizes", 0, trace.object_sizes) if segments is not None else []
    recent: list[OrderedDict[str, float]] = [OrderedDict() for _ in edges]  # prefetched lately, per edge
    pending: list[dict[str, int]] = [{} for _ in edges]  # prefetched and not yet asked for: key -> size
    times, clients, objects, sizes, keys = trace.times, trace.clients, trace.objects, trace.sizes, trace.keys
    e, r = result.edge, result.regional
    outcomes = result.outcomes
    series = result.series
    order = range(len(times)) if indices is None else indices
    t0 = times[order[0]] if len(order) else 0.0
    last_time = t0
    origin_requests = origin_bytes = 0
    done = 0

    def upstream(o: int, key: str, size: int, now: float) -> int:
        """Fetch ``key`` for an edge: through its regional, or from origin; return origin bytes."""
        nonlocal origin_requests, origin_bytes
        if regionals:
            cache = regionals[regional_of[o]] if o >= 0 else regionals[_regional_for(key)]
            r.requests += 1
            r.bytes += size
            if key in cache:
                cache.hit(key, now)
                r.hits += 1
                r.byte_hits += size
                return 0
            dropped = cache.insert(key, size, now)
            r.evictions += len(dropped) - (key in dropped)
        origin_requests += 1
        origin_bytes += size
        return size

    regional_ring = Ring([f"regional-{i}" for i in range(topo.regionals)]) if topo.regionals > 1 else None

    def _regional_for(key: str) -> int:
        if regional_ring is None:
            return 0
        node = regional_ring.primary(ring_key(key) or key) or regional_ring.nodes[0]
        return regional_ring.nodes.index(node)

    for i in order:
        now = times[i]
        o = objects[i]
        key = keys[o]
        size = sizes[i]
        ei = edge_of[clients[i]]
        cache = edges[ei]
        e.requests += 1
        e.bytes += size
        fetched = 0
        hit = key in cache
        if hit:
            cache.hit(key, now)
            e.hits += 1
            e.byte_hits += size
        else:
            dropped = cache.insert(key, size, now)
            e.evictions += len(dropped) - (key in dropped)
            fetched = upstream(o, key, size, now)
        if outcomes is not None:
            outcomes.append(hit)
        if segments is not None:
            used = pending[ei].pop(key, None)
            if used is not None and hit:
                result.prefetch_used += 1
                result.prefetch_used_bytes += used
            following = segments.following(o, topo.prefetch)
            if following:
                fetched += _prefetch(following, cache, recent[ei], pending[ei], now, size, trace, sizes_by_object,
                                     upstream, result)
        if interval is not None:
            b = int((now - t0) // interval)
            while len(series) <= b:
                series.append(Interval(t0 + len(series) * interval))
            bucket = series[b]
            bucket.requests += 1
            bucket.bytes += size
            bucket.origin_bytes += fetched
            if hit:
                bucket.hits += 1
                bucket.byte_hits += size
        last_time = now
        done += 1
        if progress is not None and done & 0xFFFF == 0:
            progress(0x10000)
    if progress is not None:
        progress(done & 0xFFFF)
    result.origin_requests, result.origin_bytes = origin_requests, origin_bytes
    result.duration = last_time - t0
    result.cpu_seconds = _time.process_time() - cpu0
    return result


def _prefetch(following: list[str], cache: Any, recent: OrderedDict[str, float], pending: dict[str, int],
              now: float, size: int, trace: Trace, sizes_by_object: list[int],
              upstream: Callable[[int, str, int, float], int], result: TopologyResult) -> int:
    """Prefetch ``following`` into an edge's ``cache``; return the origin bytes it cost."""
    while recent and now - next(iter(recent.values())) > PREFETCH_TTL:
        recent.popitem(last=False)
    origin = 0
    for key in following:
        if key in cache or key in recent:
            continue
        recent[key] = now
        if len(recent) > 4096:
            recent.popitem(last=False)
        o = trace.index_of(key)
        psize = sizes_by_object[o] if o is not None else size
        origin += upstream(-1 if o is None else o, key, psize, now)
        dropped = cache.insert(key, psize, now)
        result.edge.evictions += len(dropped) - (key in dropped)
        if key in cache:
            pending[key] = psize
        result.prefetched += 1
        result.prefetched_bytes += psize
    return origin


# --------------------------------------------------------------------------
# A benchmark: sizes x policies, the topology and the edge alone, with libCacheSim beside it


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """What ``run_bench`` runs: every edge size x every edge policy."""

    sizes: tuple[int, ...]
    labels: tuple[str, ...]
    policies: tuple[str, ...]
    edges: int = 1
    regionals: int = 0
    regional_size: int = 0
    regional_policy: str | None = None  # None: the same policy as the edge in each run
    prefetch: int = 0
    interval: float | None = None
    peers: tuple[str, ...] = ()
    jobs: int = 1
    topology_policies: tuple[str, ...] = ()  # edge policies run through the topology (default: all)

    @property
    def single_cache(self) -> bool:
        """One edge, no regionals, no prefetch: the topology is the edge alone."""
        return self.edges == 1 and self.regionals == 0 and self.prefetch == 0

    def topology(self, size: int, policy: str) -> Topology:
        return Topology(edge_size=size, edge_policy=policy, edges=self.edges, regionals=self.regionals,
                        regional_size=self.regional_size, regional_policy=self.regional_policy or policy,
                        prefetch=self.prefetch)


_TRACE: Trace | None = None  # the trace a forked worker replays (inherited, not pickled)
_ALONE: list[int] | None = None  # indices of edge-0's requests
_SPEC: BenchSpec | None = None
_ORACLE: Any = None  # libCacheSim's copy of edge-0's requests (bench.libcachesim_peer.OracleTrace)


def _task(task: tuple[str, int, str]) -> tuple[tuple[str, int, str], Any]:
    kind, size, name = task
    assert _TRACE is not None
    if kind == "alone":
        from cache.sim import simulate

        cpu0 = _time.process_time()
        r = simulate(name, _TRACE.requests(_ALONE), size)
        cpu = _time.process_time() - cpu0
        return task, {"policy": name, "capacity": size, "hit_ratio": round(r.hit_ratio, 6),
                      "byte_hit_ratio": round(r.byte_hit_ratio, 6), "requests": r.requests,
                      "evictions": r.evictions, "rejections": r.rejections, "cpu_seconds": round(cpu, 3),
                      "requests_per_cpu_minute": round(r.requests / cpu * 60) if cpu > 0 else None}
    spec = _SPEC
    assert spec is not None
    if kind == "peers":
        from bench.libcachesim_peer import run_peers

        results, output = run_peers(_ORACLE, size, spec.peers)
        return task, ([p.to_json() for p in results], output)
    return task, run_topology(_TRACE, spec.topology(size, name), interval=spec.interval).to_json()


def _cost(task: tuple[str, int, str]) -> float:
    """A rough relative cost, to start the longest runs first."""
    kind, _, name = task
    return {"topology": 4.0, "alone": 1.0, "peers": 1.5}[kind] * (4.0 if name == "listen" else 1.0)


def run_bench(trace: Trace, spec: BenchSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``spec`` on ``trace``; return every number for the report (see bench/report.py)."""
    global _TRACE, _ALONE, _SPEC, _ORACLE
    edge_of = edge_of_clients(trace, spec.edges)
    alone = [i for i in range(len(trace)) if edge_of[trace.clients[i]] == 0]
    if not alone:
        raise ValueError("edge-0 receives no request of this trace (too few clients for the edges?)")
    tasks: list[tuple[str, int, str]] = [("alone", s, p) for s in spec.sizes for p in spec.policies]
    topology_policies = spec.topology_policies or spec.policies
    if not spec.single_cache:
        tasks += [("topology", s, p) for s in spec.sizes for p in topology_policies]
    unit = 1
    if spec.peers:
        from bench.libcachesim_peer import OracleTrace, unit_for

        unit = unit_for(max(spec.sizes))
        _ORACLE = OracleTrace([trace.times[i] for i in alone], [trace.objects[i] for i in alone],
                              [trace.sizes[i] for i in alone], unit=unit)
        tasks += [("peers", s, "") for s in spec.sizes]
    tasks.sort(key=_cost, reverse=True)
    weights = {"alone": len(alone), "topology": len(trace), "peers": 0}
    _TRACE, _ALONE, _SPEC = trace, alone, spec
    out: dict[tuple[str, int, str], Any] = {}
    try:
        if spec.jobs > 1 and len(tasks) > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(min(spec.jobs, len(tasks))) as pool:
                for task, value in pool.imap_unordered(_task, tasks):
                    out[task] = value
                    if progress is not None:
                        progress(weights[task[0]])
        else:
            for task in tasks:
                out[task] = _task(task)[1]
                if progress is not None:
                    progress(weights[task[0]])
    finally:
        if _ORACLE is not None:
            _ORACLE.close()
        _TRACE = _ALONE = _SPEC = _ORACLE = None
    alone_results = [out[("alone", s, p)] for s in spec.sizes for p in spec.policies]
    peers: list[dict[str, Any]] = []
    peer_output: list[str] = []
    for size in spec.sizes if spec.peers else ():
        results, said = out[("peers", size, "")]
        peers += results
        peer_output += [line for line in said if line not in peer_output]
    if spec.single_cache:
        topo = [_alone_as_topology(spec, r, trace, alone) for r in alone_results]
    else:
        topo = [out[("topology", s, p)] for s in spec.sizes for p in topology_policies]
    ws_alone = _working_set(trace, alone)
    return {
        "sizes": [{"label": label, "bytes": size, "fraction_of_working_set": size / max(1, trace.working_set_bytes()),
                   "fraction_of_edge_working_set": size / max(1, ws_alone)}
                  for size, label in zip(spec.sizes, spec.labels, strict=True)],
        "policies": list(spec.policies),
        "edge_alone": {"edge": "edge-0", "requests": len(alone), "working_set_bytes": ws_alone,
                       "ours": alone_results, "libcachesim": peers, "libcachesim_unit": unit,
                       "libcachesim_output": peer_output[:20]},
        "topology": topo,
        "speed": _speed(alone_results, topo),
    }


def _working_set(trace: Trace, indices: list[int]) -> int:
    sizes: dict[int, int] = {}
    for i in indices:
        sizes[trace.objects[i]] = trace.sizes[i]
    return sum(sizes.values())


def _alone_as_topology(spec: BenchSpec, r: dict[str, Any], trace: Trace, alone: list[int]) -> dict[str, Any]:
    """The single-cache topology's result, from the edge-alone run (they are the same replay)."""
    result = TopologyResult(spec.topology(r["capacity"], r["policy"]))
    n = r["requests"]
    total = sum(trace.sizes[i] for i in alone)
    result.edge = TierStats(n, round(r["hit_ratio"] * n), total, round(r["byte_hit_ratio"] * total), r["evictions"])
    result.origin_requests = n - result.edge.hits
    result.origin_bytes = total - result.edge.byte_hits
    result.duration = trace.duration
    result.cpu_seconds = r["cpu_seconds"]
    return result.to_json()


def _speed(alone: list[dict[str, Any]], topo: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests per CPU-minute per policy: the edge alone (cache.sim) and the whole topology."""
    def best(rows: list[tuple[str, float | None]]) -> dict[str, float]:
        by: dict[str, list[float]] = {}
        for name, value in rows:
            if value:
                by.setdefault(name, []).append(value)
        return {name: round(sorted(v)[len(v) // 2]) for name, v in by.items()}  # median over sizes

    return {
        "edge_alone_requests_per_cpu_minute": best([(r["policy"], r["requests_per_cpu_minute"]) for r in alone]),
        "topology_requests_per_cpu_minute": best([(t["topology"]["edge_policy"], t["requests_per_cpu_minute"])
                                                  for t in topo]),
        "target_requests_per_cpu_minute": 1_000_000,
    }
