"""Capacity planning: edges, SSD, hit ratios, egress and origin storage from targets and measurements.

Pure: ``plan(PlanInputs, curve)`` is arithmetic on values; the CLI reads
the measurements (a ``bench simulate`` results.json, a serving benchmark
results.json) and writes the report.

**The model** (every step is a line of ``plan``):

1. *Demand.*  Peak egress to players = concurrent streams x mean bit rate
   (``--bitrate`` kbit/s, or the mean of a rendition mix ``--mix``).  Users
   only set the streams when ``--streams`` is not given (users x
   ``--concurrency``).  Each region takes its share (``--regions``).
2. *Edges.*  Per region: ceil(demand / (per-edge Gbit/s x ``--utilisation``))
   + ``--spare`` edges.  Per-edge throughput is ``--edge-gbps``, or derived
   from a serving benchmark (``bench/serve_vs_nginx.py`` results.json): the
   median over its runs of object size x 8 / CPU time per request gives
   Gbit/s per core, times ``--edge-cores``, capped at ``--edge-nic-gbps``.
3. *Edge hit ratio and SSD.*  A ``bench simulate`` results.json gives, for
   one policy, the edge's byte hit ratio at several cache sizes.  Sizes are
   taken as a fraction x of the simulated catalogue's bytes (every rendition
   of every track; the trace model records it; for a trace without a model,
   its working set).  Under Zipf popularity with exponent < 1 the share of
   requests that goes to the top fraction x of a catalogue hardly depends on
   the catalogue's size, so the curve h(x) transfers from the scaled trace
   to the real catalogue.  SSD per edge = x x real catalogue bytes, where x
   is the smallest fraction reaching ``--target-edge-hit`` (log-linear
   interpolation between simulated sizes), or ``--edge-ssd`` given and
   h(x) read off the curve.  Every edge holds its own copy of the hot set:
   SSD per edge does not shrink with more edges.
4. *Regional tier.*  Regionals see the edges' misses; their byte hit ratio
   (of what edges miss) comes from the simulate run's topology rows for the
   same policy, at the edge size nearest x, or ``--regional-hit``; 0 when
   neither is given (everything an edge misses is fetched from origin: the
   safe side).
5. *Egress per tier.*  Edge: the demand.  Regional (to edges): demand x
   (1 - edge byte hit).  Origin (to regionals): regional egress x
   (1 - regional byte hit).
6. *Origin storage.*  tracks x mean track seconds x sum of the ladder's bit
   rates / 8 x ``--copies`` (protection schemes stored side by side), plus
   1% for playlists, init segments and catalog records.

**What the model leaves out**, so the numbers are a floor to add margin to:
peak-hour skew within a region, failures beyond the spares, the cold start
of a new edge, request-rate effects (the curve comes from a scaled trace:
it transfers when the scaled trace has as many listens per track per edge
as production; the plan prints both figures to compare), and the regional
tier's own sizing (use ``bench simulate --regional-size``).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HitCurve", "PlanError", "PlanInputs", "edge_gbps_from_serving", "hit_curve_from_simulate", "plan"]

MODEL = __doc__.split("**The model**", 1)[1].split("**What the model leaves out**", 1)[0].strip()
MANIFEST_OVERHEAD = 0.01


class PlanError(Exception):
    """Inputs that cannot make a plan; the message says which and why."""


@dataclass(frozen=True, slots=True)
class HitCurve:
    """Edge byte (and object) hit ratio at cache sizes given as fractions of the catalogue's bytes."""

    points: tuple[tuple[float, float, float], ...]  # (fraction, object hit, byte hit), ascending fraction
    regional: tuple[tuple[float, float], ...] = ()  # (edge fraction, regional byte hit of edge misses)
    source: str = ""
    listens_per_track_per_edge: float | None = None

    def at(self, fraction: float) -> tuple[float, float]:
        """(object hit, byte hit) at ``fraction``, interpolated in log(fraction), clamped to the ends."""
        pts = self.points
        if fraction <= pts[0][0]:
            return pts[0][1], pts[0][2]
        if fraction >= pts[-1][0]:
            return pts[-1][1], pts[-1][2]
        for (x0, o0, b0), (x1, o1, b1) in itertools.pairwise(pts):
            if x0 <= fraction <= x1:
                w = (math.log(fraction) - math.log(x0)) / (math.log(x1) - math.log(x0)) if x1 > x0 else 0.0
                return o0 + w * (o1 - o0), b0 + w * (b1 - b0)
        raise AssertionError("unreachable")

    def fraction_for(self, byte_hit: float) -> tuple[float, bool]:
        """Smallest fraction whose byte hit ratio reaches ``byte_hit``; (largest fraction, False) if none."""
        pts = self.points
        if byte_hit <= pts[0][2]:
            return pts[0][0], True
        for (x0, _, b0), (x1, _, b1) in itertools.pairwise(pts):
            if b0 < byte_hit <= b1:
                w = (byte_hit - b0) / (b1 - b0)
                return math.exp(math.log(x0) + w * (math.log(x1) - math.log(x0))), True
        return pts[-1][0], False

    def regional_at(self, fraction: float) -> float | None:
        if not self.regional:
            return None
        return min(self.regional, key=lambda p: abs(math.log(p[0]) - math.log(fraction)))[1]


@dataclass(frozen=True, slots=True)
class PlanInputs:
    users: int
    streams: int
    mean_kbps: float
    tracks: int
    zipf_s: float
    regions: dict[str, float]
    edge_gbps: float
    edge_gbps_source: str = "given"
    track_seconds: float = 210.0
    ladder_kbps: dict[str, float] = field(default_factory=lambda: {"aac-96k": 96, "aac-160k": 160, "aac-320k": 320,
                                                                   "flac": 930})
    copies: int = 1
    utilisation: float = 0.7
    spare_edges: int = 1
    target_edge_hit: float = 0.9
    edge_ssd: int | None = None
    regional_hit: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.streams <= 0 or self.mean_kbps <= 0 or self.tracks <= 0:
            problems.append("streams, bit rate and tracks must be positive")
        if self.users < 0:
            problems.append("users must be >= 0")
        if not self.regions or any(v <= 0 for v in self.regions.values()):
            problems.append("regions need positive shares")
        elif abs(sum(self.regions.values()) - 1) > 1e-6:
            problems.append(f"region shares must add up to 1 (they add up to {sum(self.regions.values()):g})")
        if self.edge_gbps <= 0:
            problems.append("per-edge throughput must be positive")
        if not 0 < self.utilisation <= 1:
            problems.append("utilisation must be in (0, 1]")
        if not 0 < self.target_edge_hit < 1:
            problems.append("target edge hit ratio must be in (0, 1)")
        if self.regional_hit is not None and not 0 <= self.regional_hit < 1:
            problems.append("regional hit ratio must be in [0, 1)")
        if self.spare_edges < 0 or self.copies < 1 or self.track_seconds <= 0:
            problems.append("spare edges >= 0, copies >= 1 and track seconds > 0 required")
        if problems:
            raise PlanError("; ".join(problems))

    @property
    def catalogue_bytes(self) -> float:
        """Bytes of the media of every rendition of every track (one copy)."""
        return self.tracks * self.track_seconds * sum(self.ladder_kbps.values()) * 1000 / 8


def plan(i: PlanInputs, curve: HitCurve) -> dict[str, Any]:
    """The plan (every number of the report) from the inputs and the measured hit curve."""
    demand = i.streams * i.mean_kbps / 1e6  # Gbit/s
    catalogue = i.catalogue_bytes
    if i.edge_ssd is not None:
        fraction = i.edge_ssd / catalogue
        reached = True
    else:
        fraction, reached = curve.fraction_for(i.target_edge_hit)
    edge_hit, edge_byte_hit = curve.at(fraction)
    regional = i.regional_hit if i.regional_hit is not None else curve.regional_at(fraction)
    regional_hit = regional if regional is not None else 0.0
    ssd = i.edge_ssd if i.edge_ssd is not None else math.ceil(fraction * catalogue)
    per_edge = i.edge_gbps * i.utilisation
    regions: list[dict[str, Any]] = []
    for name, share in i.regions.items():
        d = demand * share
        edges = math.ceil(d / per_edge) + i.spare_edges
        reg = d * (1 - edge_byte_hit)
        regions.append({"region": name, "share": share, "demand_gbps": d, "edges": edges, "ssd_bytes": edges * ssd,
                        "regional_egress_gbps": reg, "origin_egress_gbps": reg * (1 - regional_hit)})
    regional_egress = demand * (1 - edge_byte_hit)
    origin_egress = regional_egress * (1 - regional_hit)
    edges_total = sum(int(g["edges"]) for g in regions)
    # a listen is ~track_seconds long; streams x 86400 / track_seconds listens a day (flat; the peak overstates)
    listens_per_day = i.streams * 86_400 / i.track_seconds
    notes = []
    if not reached:
        notes.append(f"the target edge byte hit ratio {i.target_edge_hit:.0%} is above every simulated size "
                     f"(best {edge_byte_hit:.1%}); the plan uses the largest simulated size: simulate larger sizes")
    if i.zipf_s >= 1:
        notes.append("Zipf exponent >= 1: popularity concentrates more in a larger catalogue, so the transferred "
                     "hit ratios are conservative")
    if regional is None:
        notes.append("no regional hit ratio measured or given: every edge miss is counted as an origin fetch")
    return {
        "outputs": {
            "demand_gbps": demand,
            "edges_total": edges_total,
            "edge_cache_fraction": fraction,
            "ssd_per_edge_bytes": ssd,
            "edge_hit_ratio": edge_hit,
            "edge_byte_hit_ratio": edge_byte_hit,
            "regional_byte_hit_ratio": regional_hit,
            "overall_byte_hit_ratio": 1 - (1 - edge_byte_hit) * (1 - regional_hit),
            "egress_gbps": {"edge": demand, "regional": regional_egress, "origin": origin_egress},
            "origin_storage_bytes": catalogue * i.copies * (1 + MANIFEST_OVERHEAD),
            "catalogue_bytes": catalogue,
            "listens_per_track_per_edge_per_day": listens_per_day / max(1, edges_total) / i.tracks,
            "simulated_listens_per_track_per_edge": curve.listens_per_track_per_edge,
            "regions": regions,
            "notes": notes,
        },
    }


def hit_curve_from_simulate(path: Path, policy: str) -> HitCurve:
    """The edge hit curve of ``policy`` from a ``bench simulate`` results.json (PlanError if unusable)."""
    doc = _read_json(path, "simulate results")
    try:
        bench, trace = doc["bench"], doc["trace"]
        reference = trace.get("catalogue_bytes") or bench["edge_alone"]["working_set_bytes"]
        rows = [o for o in bench["edge_alone"]["ours"] if o["policy"] == policy]
        topo = [t for t in bench["topology"] if t["topology"]["edge_policy"] == policy and t.get("regional")]
    except (KeyError, TypeError) as exc:
        raise PlanError(f"{path}: not a `legato bench simulate` results.json (no {exc})") from None
    if not rows:
        known = sorted({o["policy"] for o in bench["edge_alone"]["ours"]})
        raise PlanError(f"{path}: no results for policy {policy!r} (it has: {', '.join(known)})")
    points = tuple(sorted((o["capacity"] / reference, o["hit_ratio"], o["byte_hit_ratio"]) for o in rows))
    regional = tuple(sorted((t["topology"]["edge_size"] / reference, t["regional"]["byte_hit_ratio"]) for t in topo))
    model = (trace.get("model") or {}).get("model") or {}
    per_edge = None
    listens = (model.get("workload") or {}).get("listens")
    tracks = (model.get("workload") or {}).get("tracks")
    edges = doc.get("settings", {}).get("edges", 1)
    if listens and tracks:
        per_edge = listens / edges / tracks
    return HitCurve(points, regional, f"{path} ({policy}, {len(points)} sizes)", per_edge)


def edge_gbps_from_serving(path: Path, cores: int, nic_gbps: float) -> tuple[float, str]:
    """Per-edge Gbit/s from a serving benchmark results.json: median per-core rate x cores, capped by the NIC.

    The rows of the real edge (variants ``edge``, ``edge-disk``) are used when
    the file has them; the ``files`` reference variant leaves out the node's
    own work per hit and would overstate an edge.
    """
    doc = _read_json(path, "serving benchmark results")
    try:
        rows = [row for row in doc["summary"] if row.get("legato_cpu_us")]
        edge_rows = [row for row in rows if "-edge" in str(row.get("legato", ""))]
        rates = sorted(row["size"] * 8 / (row["legato_cpu_us"] * 1e-6) / 1e9 for row in edge_rows or rows)
    except (KeyError, TypeError) as exc:
        raise PlanError(f"{path}: not a serving benchmark results.json (no {exc})") from None
    if not rates:
        raise PlanError(f"{path}: no measured runs in it")
    per_core = rates[len(rates) // 2]
    gbps = min(per_core * cores, nic_gbps)
    return gbps, f"{path}: {per_core:.1f} Gbit/s per core x {cores} cores, capped at {nic_gbps:g} Gbit/s NIC"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: no such file ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: cannot read: {exc}") from None
    except ValueError as exc:
        raise PlanError(f"{path}: not JSON ({exc})") from None
