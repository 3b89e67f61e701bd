"""cache/sim.py: the simulator's counting, the music trace's shape, and the policies on it."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict

import pytest

from cache.policy import POLICIES, LRUPolicy
from cache.sim import (
    DEFAULT_RENDITIONS,
    MusicWorkload,
    Request,
    SimResult,
    music_trace,
    simulate,
    unique_bytes,
)
from legato import urls
from legato.urls import Kind

# --------------------------------------------------------------------------
# The simulator


def test_counts_hits_misses_and_bytes() -> None:
    trace = [Request(0.0, "a", 10), Request(1.0, "b", 20), Request(2.0, "a", 10), Request(3.0, "c", 25),
             Request(4.0, "b", 20)]
    r = simulate("lru", trace, capacity=40)
    # a miss, b miss, a hit, c miss (evicts b: a was used more recently), b miss (evicts a, then c)
    assert (r.hits, r.misses, r.byte_hits, r.byte_misses) == (1, 4, 10, 75)
    assert r.evictions == 3 and r.rejections == 0
    assert r.hit_ratio == pytest.approx(0.2) and r.byte_hit_ratio == pytest.approx(10 / 85)
    assert r.requests == 5 and r.policy == "lru" and "lru" in r.summary()


def test_rejections_are_not_evictions() -> None:
    r = simulate("lru", [Request(0.0, "big", 100), Request(1.0, "big", 100)], capacity=50)
    assert (r.misses, r.rejections, r.evictions) == (2, 2, 0)


def test_warmup_fills_without_counting() -> None:
    trace = [Request(float(t), "k", 1) for t in range(10)]
    r = simulate("lru", trace, capacity=10, warmup=5.0)
    assert (r.hits, r.misses) == (5, 0)


def test_interval_series_cover_the_trace_with_gaps() -> None:
    trace = [Request(0.0, "a", 1), Request(0.5, "a", 1), Request(2.5, "b", 3), Request(2.6, "a", 1)]
    r = simulate("lru", trace, capacity=10, interval=1.0)
    assert [(s.start, s.requests, s.hits, s.bytes, s.byte_hits) for s in r.series] == [
        (0.0, 2, 1, 2, 1), (1.0, 0, 0, 0, 0), (2.0, 2, 1, 4, 1)]
    assert r.series[0].hit_ratio == 0.5 and r.series[1].hit_ratio == 0.0
    assert r.series[2].byte_hit_ratio == 0.25


def test_miss_trace_is_what_the_next_tier_sees() -> None:
    trace = [Request(0.0, "a", 1), Request(1.0, "a", 1), Request(2.0, "b", 1)]
    r = simulate("lru", trace, capacity=10, keep_misses=True)
    assert r.miss_trace == [trace[0], trace[2]]
    assert simulate("lru", trace, capacity=10).miss_trace is None


def test_accepts_an_instance_and_rejects_bad_input() -> None:
    policy = LRUPolicy(10)
    assert simulate(policy, [Request(0.0, "a", 1)], capacity=10).misses == 1
    assert "a" in policy
    with pytest.raises(ValueError, match="capacity"):
        simulate(LRUPolicy(10), [], capacity=11)
    with pytest.raises(ValueError, match="back in time"):
        simulate("lru", [Request(1.0, "a", 1), Request(0.5, "b", 1)], capacity=10)
    with pytest.raises(ValueError, match="unknown eviction policy"):
        simulate("nope", [], capacity=10)
    with pytest.raises(ValueError, match="interval"):
        simulate("lru", [], capacity=10, interval=0)


def test_empty_trace() -> None:
    r = simulate("listen", [], capacity=10)
    assert r == SimResult("listen", 10) and r.hit_ratio == 0.0 and r.byte_hit_ratio == 0.0


# --------------------------------------------------------------------------
# The music trace

SMALL = MusicWorkload(tracks=500, listens=600)


@pytest.fixture(scope="module")
def small_trace() -> list[Request]:
    return list(music_trace(SMALL, seed=3))


def test_trace_is_deterministic_per_seed(small_trace: list[Request]) -> None:
    assert list(music_trace(SMALL, seed=3)) == small_trace
    assert list(music_trace(SMALL, seed=4)) != small_trace


def test_trace_is_in_time_order_and_in_the_url_space(small_trace: list[Request]) -> None:
    times = [r.time for r in small_trace]
    assert times == sorted(times)
    kinds = Counter(urls.parse(r.key).kind for r in small_trace)  # type: ignore[union-attr]
    assert set(kinds) <= {Kind.MASTER, Kind.MPD, Kind.MEDIA_PLAYLIST, Kind.INIT, Kind.SEGMENT, Kind.TRACK_JSON}
    assert kinds[Kind.INIT] == SMALL.listens  # one per listen
    assert kinds[Kind.MASTER] + kinds[Kind.MPD] == SMALL.listens
    sizes: dict[str, set[int]] = defaultdict(set)
    for r in small_trace:
        sizes[r.key].add(r.size)
    assert all(len(s) == 1 for s in sizes.values()), "an object has one size"


def test_listens_arrive_as_a_poisson_process(small_trace: list[Request]) -> None:
    starts = sorted(r.time for r in small_trace if r.key.endswith("/init.mp4"))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / SMALL.listen_rate, rel=0.15)
    assert statistics.stdev(gaps) == pytest.approx(mean, rel=0.25)  # exponential: sd = mean


def segment_number(key: str) -> int:
    route = urls.parse(key)
    assert route is not None and route.segment is not None
    return route.segment


def test_listens_start_at_segment_one_and_mostly_stop_early(small_trace: list[Request]) -> None:
    by_number = Counter(segment_number(r.key) for r in small_trace if r.key.endswith(".m4s"))
    assert by_number[1] == SMALL.listens
    numbers = sorted(by_number)
    assert numbers == list(range(1, numbers[-1] + 1))
    # each listen that fetched segment n fetched n-1 before it: counts never rise
    assert all(by_number[n] <= by_number[n - 1] for n in numbers[1:])
    assert by_number[6] < 0.6 * by_number[1], "most listens end in their first five segments"
    assert by_number[30] > 0, "some play on"


def test_popularity_is_zipf(small_trace: list[Request]) -> None:
    listens = Counter(r.key.split("/")[2] for r in small_trace if r.key.endswith("/init.mp4"))
    top, tenth = listens["t000001"], listens["t000010"]
    assert top > 3 * tenth > 0  # 10^0.9 ~ 7.9 expected


def test_segment_sizes_are_realistic(small_trace: list[Request]) -> None:
    sizes: dict[str, list[int]] = defaultdict(list)
    for r in small_trace:
        if r.key.endswith(".m4s"):
            sizes[r.key.split("/")[3]].append(r.size)
    median = {name: statistics.median(s) for name, s in sizes.items()}
    assert set(median) == {r.name for r in DEFAULT_RENDITIONS}
    assert median["aac-96k"] == pytest.approx(73_000, rel=0.05)
    assert median["aac-320k"] == pytest.approx(241_000, rel=0.05)
    assert median["flac"] == pytest.approx(700_000, rel=0.2)
    small = [r.size for r in small_trace if not r.key.endswith(".m4s")]
    assert max(small) < 20_000, "playlists and init segments are small"
    assert statistics.median(small) < 2_000


def test_workload_validation() -> None:
    with pytest.raises(ValueError):
        MusicWorkload(tracks=0)
    with pytest.raises(ValueError):
        MusicWorkload(renditions=())
    with pytest.raises(ValueError):
        MusicWorkload(skip_probability=1.5)


def test_no_skips_means_whole_tracks() -> None:
    w = MusicWorkload(tracks=5, listens=20, skip_probability=0.0)
    segments = Counter(r.key.rsplit("/", 1)[0] for r in music_trace(w, seed=1) if r.key.endswith(".m4s"))
    inits = Counter(r.key.rsplit("/", 1)[0] for r in music_trace(w, seed=1) if r.key.endswith("/init.mp4"))
    for track_rendition, listens in inits.items():
        per_listen = segments[track_rendition] / listens
        assert per_listen == int(per_listen) and per_listen >= math.ceil(w.track_seconds_min / w.segment_seconds)


# --------------------------------------------------------------------------
# Policies on the music trace

CACHE_FRACTIONS = (0.01, 0.03, 0.10)
WORKLOAD = MusicWorkload(tracks=2_000, listens=1_600)


@pytest.fixture(scope="module")
def hit_ratios() -> dict[tuple[str, float], SimResult]:
    trace = list(music_trace(WORKLOAD, seed=7))
    distinct = unique_bytes(trace)
    return {(name, f): simulate(name, trace, int(distinct * f)) for name in POLICIES for f in CACHE_FRACTIONS}


def table(results: dict[tuple[str, float], SimResult]) -> str:
    """The hit ratio / byte hit ratio table, for assertion messages and reports."""
    head = "policy   " + "".join(f"{f:>16.0%}" for f in CACHE_FRACTIONS)
    rows = [f"{name:8} " + "".join(
        f"{results[name, f].hit_ratio:>9.3f}/{results[name, f].byte_hit_ratio:.3f}" for f in CACHE_FRACTIONS)
        for name in POLICIES]
    w = WORKLOAD
    title = (f"hit ratio/byte hit ratio; cache size in % of the trace's distinct bytes; "
             f"MusicWorkload(tracks={w.tracks}, listens={w.listens}, zipf_s={w.zipf_s}), seed 7")
    return "\n".join([title, head, *rows])


def test_hit_ratios_are_ratios(hit_ratios: dict[tuple[str, float], SimResult]) -> None:
    for r in hit_ratios.values():
        assert 0.0 <= r.hit_ratio <= 1.0 and 0.0 <= r.byte_hit_ratio <= 1.0, table(hit_ratios)


def test_a_bigger_lru_cache_does_not_do_worse(hit_ratios: dict[tuple[str, float], SimResult]) -> None:
    lru = [hit_ratios["lru", f].hit_ratio for f in CACHE_FRACTIONS]
    assert all(b >= a - 0.005 for a, b in itertools.pairwise(lru)), table(hit_ratios)


@pytest.mark.parametrize("fraction", CACHE_FRACTIONS[:2])
def test_listen_beats_lru_on_music_at_small_sizes(hit_ratios: dict[tuple[str, float], SimResult],
                                                  fraction: float) -> None:
    listen, lru = hit_ratios["listen", fraction], hit_ratios["lru", fraction]
    assert listen.hit_ratio > lru.hit_ratio, table(hit_ratios)
    assert listen.byte_hit_ratio > lru.byte_hit_ratio, table(hit_ratios)


def test_print_the_table(hit_ratios: dict[tuple[str, float], SimResult], capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion of numbers: shows the table with ``pytest -s`` and checks it has every policy."""
    text = table(hit_ratios)
    with capsys.disabled():
        print("\n" + text)
    assert all(name in text for name in POLICIES)
