"""Trace-driven cache simulation on a virtual clock, and a synthetic music trace.

Pure: no files, sockets, threads or clocks.  A trace is any iterable of
``Request(time, key, size)`` in non-decreasing time; ``simulate`` replays it
through one eviction policy (a name from ``cache.policy.POLICIES`` or an
instance) exactly as the store drives it, and counts what a cache of
``capacity`` bytes would have served::

    trace = list(music_trace(MusicWorkload(tracks=5_000, listens=20_000), seed=1))
    for name in POLICIES:
        r = simulate(name, trace, capacity=unique_bytes(trace) // 20)
        print(r.summary())

The model is a single cache in front of an infinitely fast upstream: every
miss is fetched and offered to the policy (``insert``) at the request's time,
every hit is reported (``hit``).  Coalescing, fetch latency and tiers are not
modelled here; bench/ builds those on top (a tier is a ``simulate`` whose
trace is the misses of the tier below, see ``SimResult.miss_trace``).

The music workload (``MusicWorkload``, ``music_trace``) is what the edge
sees, generated from a seed alone:

* ``tracks`` tracks with Zipf(``zipf_s``) popularity; rank 1 (``t000001``)
  is the most popular.  Each track has a length (log-normal around
  ``track_seconds_median``), a skip probability (Beta around
  ``skip_probability``: some tracks are skipped far more than others) and a
  content factor for its segment sizes, all drawn from a per-track generator
  so a track is the same whatever else the trace holds.
* Listens arrive as a Poisson process of ``listen_rate`` per second of
  virtual time; each picks a track by popularity and a rendition by
  ``Rendition.share``.
* A listen requests its manifests (HLS: ``master.m3u8`` then the rendition's
  ``index.m3u8``; DASH, with probability ``dash_share``: ``manifest.mpd``),
  sometimes ``track.json`` (an app showing metadata), the rendition's
  ``init.mp4``, then segments from 1 in order: the first ones back to back
  until ``buffer_seconds`` are buffered, then one per segment duration as
  playback consumes them.
* A skipped listen stops after an exponential time (mean
  ``skip_mean_seconds``), so most listens end in their first few segments;
  the others play to the end.  The player has fetched up to
  ``buffer_seconds`` ahead of where it stopped.
* Segment sizes: ``bitrate x segment_seconds / 8`` times the track's content
  factor, plus a ~1 KB ``moof`` (96k AAC ~73 KB, 320k ~240 KB, FLAC ~700 KB
  per 6 s); the last segment is shorter.

Not modelled here: bitrate switches within a listen, seeking, popularity
drift (new releases), viral surges, diurnal arrival rates and clients.
``bench/trace.py`` builds the last four on top of this module's listen model
(``track_facts``, ``listen_requests``), which keeps this workload (and the
policy tests that use it) unchanged.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from cache.policy import EvictionPolicy, make_policy
from legato import urls

__all__ = [
    "DEFAULT_RENDITIONS",
    "HitCounts",
    "IntervalStats",
    "MusicWorkload",
    "Rendition",
    "Request",
    "SimResult",
    "TrackFacts",
    "listen_requests",
    "music_trace",
    "simulate",
    "track_facts",
    "track_id",
    "unique_bytes",
]


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace: at virtual ``time`` (seconds), ``key`` of ``size`` bytes."""

    time: float
    key: str
    size: int


# --------------------------------------------------------------------------
# Results


@dataclass(slots=True)
class HitCounts:
    """Requests and bytes asked for, and how many of each a cache served."""

    requests: int = 0
    hits: int = 0
    bytes: int = 0
    byte_hits: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.byte_hits / self.bytes if self.bytes else 0.0


@dataclass(slots=True)
class IntervalStats(HitCounts):
    """Counts for one interval ``[start, start + length)`` of virtual time."""

    start: float = 0.0


@dataclass(slots=True)
class SimResult:
    """What a cache of ``capacity`` bytes under ``policy`` served of a trace.

    ``evictions`` counts objects the policy pushed out to make room;
    ``rejections`` counts fetched objects it declined to cache (admission
    control or larger than the cache).  ``series`` holds one
    ``IntervalStats`` per interval when ``simulate`` was given one.
    Requests in the warm-up period drive the cache but are not counted.
    """

    policy: str
    capacity: int
    hits: int = 0
    misses: int = 0
    byte_hits: int = 0
    byte_misses: int = 0
    evictions: int = 0
    rejections: int = 0
    series: list[IntervalStats] = field(default_factory=list)
    miss_trace: list[Request] | None = None

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_ratio(self) -> float:
        """Hits per request (0 for an empty trace)."""
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        """Bytes served from cache per byte requested (0 for an empty trace)."""
        total = self.byte_hits + self.byte_misses
        return self.byte_hits / total if total else 0.0

    def summary(self) -> str:
        """One line for logs and reports."""
        return (f"{self.policy:>8} {self.capacity / 1e6:10.1f} MB  hit {self.hit_ratio:6.1%}  "
                f"byte-hit {self.byte_hit_ratio:6.1%}  evictions {self.evictions}  rejections {self.rejections}")


# --------------------------------------------------------------------------
# The simulator


def simulate(
    policy: str | EvictionPolicy,
    trace: Iterable[Request],
    capacity: int,
    *,
    interval: float | None = None,
    warmup: float = 0.0,
    keep_misses: bool = False,
) -> SimResult:
    """Replay ``trace`` through a cache of ``capacity`` bytes run by ``policy``.

    ``policy`` is a name from ``POLICIES`` (a new instance is made) or an
    instance, whose capacity must be ``capacity``.  ``interval`` (seconds)
    adds a time series; ``warmup`` (seconds from the first request) fills the
    cache without counting; ``keep_misses`` records the requests that missed,
    the trace an upstream tier would see.  ValueError if the trace goes back
    in time.
    """
    if interval is not None and interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval}")
    cache = _policy(policy, capacity)
    result = SimResult(cache.name, capacity, miss_trace=[] if keep_misses else None)
    start: float | None = None
    last = -math.inf
    for req in trace:
        if req.time < last:
            raise ValueError(f"trace goes back in time at {req.key!r}: {req.time} < {last}")
        last = req.time
        if start is None:
            start = req.time
        hit = req.key in cache
        if hit:
            cache.hit(req.key, req.time)
        else:
            dropped = cache.insert(req.key, req.size, req.time)
            rejected = req.key in dropped
            result.rejections += rejected
            result.evictions += len(dropped) - rejected
            if result.miss_trace is not None:
                result.miss_trace.append(req)
        if req.time - start >= warmup:
            _count(result, req, hit)
            if interval is not None:
                _count_interval(result.series, req, hit, start + warmup, interval)
    return result


def _policy(policy: str | EvictionPolicy, capacity: int) -> EvictionPolicy:
    if isinstance(policy, str):
        return make_policy(policy, capacity)
    if policy.capacity != capacity:
        raise ValueError(f"policy capacity {policy.capacity} != simulated capacity {capacity}")
    return policy


def _count(result: SimResult, req: Request, hit: bool) -> None:
    if hit:
        result.hits += 1
        result.byte_hits += req.size
    else:
        result.misses += 1
        result.byte_misses += req.size


def _count_interval(series: list[IntervalStats], req: Request, hit: bool, origin: float, interval: float) -> None:
    """Count ``req`` in its interval, appending empty intervals for gaps."""
    index = int((req.time - origin) // interval)
    while len(series) <= index:
        series.append(IntervalStats(start=origin + len(series) * interval))
    bucket = series[index]
    bucket.requests += 1
    bucket.bytes += req.size
    if hit:
        bucket.hits += 1
        bucket.byte_hits += req.size


def unique_bytes(trace: Iterable[Request]) -> int:
    """Bytes of the distinct keys of a trace (last size seen): its working set."""
    sizes = {req.key: req.size for req in trace}
    return sum(sizes.values())


# --------------------------------------------------------------------------
# The synthetic music workload


@dataclass(frozen=True, slots=True)
class Rendition:
    """One rung of the ladder: its id, bit rate, share of listens, size spread."""

    name: str
    kbps: float
    share: float
    size_spread: float = 0.03  # relative std-dev of segment size between tracks (CBR-ish AAC)
    init_bytes: int = 700


DEFAULT_RENDITIONS: tuple[Rendition, ...] = (
    Rendition("aac-96k", 96, 0.30),
    Rendition("aac-160k", 160, 0.40),
    Rendition("aac-320k", 320, 0.20),
    Rendition("flac", 930, 0.10, size_spread=0.25, init_bytes=760),
)
"""The default ladder with guessed listen shares (mobile-heavy, few lossless)."""

MOOF_BYTES = 1_000
"""Per-segment container overhead (moof/mdat headers, senc when encrypted)."""


@dataclass(frozen=True, slots=True)
class MusicWorkload:
    """Parameters of a synthetic music trace; see the module docstring."""

    tracks: int = 10_000
    zipf_s: float = 0.9
    listens: int = 10_000
    listen_rate: float = 5.0  # listens per second of virtual time (Poisson)
    segment_seconds: float = 6.0
    track_seconds_median: float = 210.0
    track_seconds_sigma: float = 0.35  # log-normal sigma of track lengths
    track_seconds_min: float = 30.0
    track_seconds_max: float = 900.0
    skip_probability: float = 0.7  # mean over tracks of P(a listen is skipped before the end)
    skip_concentration: float = 6.0  # Beta(a, b) with a + b = this: spread of skip rates between tracks
    skip_mean_seconds: float = 15.0  # exponential time until a skip
    buffer_seconds: float = 12.0  # how far ahead of playback the player fetches
    request_gap: float = 0.05  # seconds between back-to-back requests of one listen
    dash_share: float = 0.3
    track_json_share: float = 0.5
    renditions: tuple[Rendition, ...] = DEFAULT_RENDITIONS

    def __post_init__(self) -> None:
        if self.tracks < 1 or self.listens < 0 or self.listen_rate <= 0 or self.segment_seconds <= 0:
            raise ValueError("tracks >= 1, listens >= 0, listen_rate > 0 and segment_seconds > 0 required")
        if not self.renditions or any(r.share < 0 for r in self.renditions) or sum(
            r.share for r in self.renditions
        ) <= 0:
            raise ValueError("renditions need non-negative shares with a positive sum")
        if not 0 <= self.skip_probability <= 1 or self.skip_concentration <= 0:
            raise ValueError("skip_probability in [0, 1] and skip_concentration > 0 required")


@dataclass(frozen=True, slots=True)
class _Track:
    """Per-track facts drawn once from the track's own generator."""

    id: str
    segments: int
    last_fraction: float  # length of the last segment, in segment durations
    skip_probability: float
    content_factor: float  # multiplies segment sizes (how hard the music is to compress)


def track_id(rank: int) -> str:
    """The id of the track of popularity ``rank`` (1 = most popular)."""
    return f"t{rank:06d}"


def _track(w: MusicWorkload, seed: int, rank: int) -> _Track:
    rng = random.Random(f"legato-sim/{seed}/track/{rank}")  # str seeds hash with SHA-512: stable
    seconds = w.track_seconds_median * math.exp(rng.gauss(0.0, w.track_seconds_sigma))
    seconds = min(max(seconds, w.track_seconds_min), w.track_seconds_max)
    whole = seconds / w.segment_seconds
    segments = max(1, math.ceil(whole))
    p = w.skip_probability
    if 0 < p < 1:
        p = rng.betavariate(p * w.skip_concentration, (1 - p) * w.skip_concentration)
    return _Track(track_id(rank), segments, whole - (segments - 1), p, rng.gauss(0.0, 1.0))


def _segment_bytes(w: MusicWorkload, track: _Track, r: Rendition, n: int) -> int:
    factor = max(0.3, 1.0 + r.size_spread * track.content_factor)
    full = r.kbps * 1000 / 8 * w.segment_seconds * factor
    fraction = track.last_fraction if n == track.segments else 1.0
    return int(full * fraction) + MOOF_BYTES


def _listen(w: MusicWorkload, rng: random.Random, track: _Track, r: Rendition, t0: float) -> list[Request]:
    """The requests of one listen starting at ``t0``, in time order."""
    tid, gap = track.id, w.request_gap
    head: list[tuple[str, int]] = []
    if rng.random() < w.track_json_share:
        head.append((urls.track_path(tid, "track.json"), 1_200))
    if rng.random() < w.dash_share:
        head.append((urls.track_path(tid, "manifest.mpd"), 800 + 250 * len(w.renditions)))
    else:
        head.append((urls.track_path(tid, "master.m3u8"), 150 + 150 * len(w.renditions)))
        head.append((urls.rendition_path(tid, r.name, "index.m3u8"), 200 + 60 * track.segments))
    head.append((urls.rendition_path(tid, r.name, "init.mp4"), r.init_bytes))
    requests = [Request(t0 + i * gap, key, size) for i, (key, size) in enumerate(head)]

    length = track.segments * w.segment_seconds
    played = length
    if rng.random() < track.skip_probability:
        played = min(length, rng.expovariate(1.0 / w.skip_mean_seconds))
    fetched = min(track.segments, max(1, math.ceil((played + w.buffer_seconds) / w.segment_seconds)))
    t_first = t0 + len(head) * gap
    for n in range(1, fetched + 1):
        # back to back until the buffer is full, then one per segment of playback
        t = t_first + (n - 1) * gap + max(0.0, (n - 1) * w.segment_seconds - w.buffer_seconds)
        requests.append(Request(t, urls.segment_path(tid, r.name, n), _segment_bytes(w, track, r, n)))
    return requests


def music_trace(workload: MusicWorkload | None = None, seed: int = 0) -> Iterator[Request]:
    """Generate the requests of ``workload.listens`` listens, in time order.

    Deterministic for a seed (``random.Random(seed)``; per-track facts from
    ``random.Random(f"legato-sim/{seed}/track/{rank}")``), lazy, and memory
    bounded by the listens in progress.  Ties in time keep listen order.
    """
    w = workload or MusicWorkload()
    rng = random.Random(seed)
    cum_popularity = list(itertools.accumulate(1.0 / rank**w.zipf_s for rank in range(1, w.tracks + 1)))
    cum_share = list(itertools.accumulate(r.share for r in w.renditions))
    tracks: dict[int, _Track] = {}
    pending: list[tuple[float, int, int, Request]] = []  # (time, listen, index, request)
    t = 0.0
    for listen in range(w.listens):
        t += rng.expovariate(w.listen_rate)
        while pending and pending[0][0] <= t:
            yield heapq.heappop(pending)[3]
        rank = _pick(rng, cum_popularity) + 1
        track = tracks.get(rank) or tracks.setdefault(rank, _track(w, seed, rank))
        rendition = w.renditions[_pick(rng, cum_share)]
        for i, req in enumerate(_listen(w, rng, track, rendition, t)):
            heapq.heappush(pending, (req.time, listen, i, req))
    while pending:
        yield heapq.heappop(pending)[3]


TrackFacts = _Track
"""Per-track facts (id, segments, skip probability, size factor); see ``track_facts``."""


def track_facts(workload: MusicWorkload, seed: int, number: int) -> _Track:
    """The facts of track ``number`` (its id is ``track_id(number)``), drawn from its own generator.

    ``music_trace`` uses the popularity rank as the number; generators with
    changing popularity (bench/trace.py: churn, surges) use a fixed number per
    track and map ranks to numbers themselves.
    """
    return _track(workload, seed, number)


def listen_requests(workload: MusicWorkload, rng: random.Random, track: _Track, rendition: Rendition,
                    t0: float) -> list[Request]:
    """The requests of one listen of ``track`` in ``rendition`` starting at ``t0``, in time order.

    The listen model of ``music_trace`` (manifests, init, segments from 1,
    skips, buffering), for other generators to reuse; draws from ``rng``.
    """
    return _listen(workload, rng, track, rendition, t0)


def _pick(rng: random.Random, cumulative: Sequence[float]) -> int:
    """An index drawn with weights given as cumulative sums (O(log n))."""
    return min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)
