"""The prefetch scheduler: what it fetches after a segment request, and what it does not redo per hit."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from cache.config import PrefetchConfig
from cache.prefetch import PLAYLIST_RETRY, Prefetcher, last_segment
from legato import urls

PLAYLIST = b"#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:6,\nseg-00001.m4s\n#EXTINF:6,\nseg-00002.m4s\n" \
           b"#EXTINF:6,\nseg-00003.m4s\n#EXTINF:6,\nseg-00004.m4s\n#EXT-X-ENDLIST\n"


class World:
    """What the prefetcher asks of its node: a store, a playlist, a fetcher, a clock."""

    def __init__(self, playlist: bytes | None = None) -> None:
        self.playlist = playlist
        self.fetched: list[str] = []
        self.playlist_reads = 0
        self.cached: set[str] = set()
        self.outcomes: list[tuple[str, int]] = []
        self.now = 1000.0

    async def fetch(self, path: str) -> int:
        self.fetched.append(path)
        self.cached.add(path)
        return 100

    def gate(self) -> asyncio.Event:
        """Make every fetch wait until the returned event is set."""
        gate = asyncio.Event()
        plain = self.fetch

        async def gated(path: str) -> int:
            await gate.wait()
            return await plain(path)

        self.fetch = gated  # type: ignore[method-assign]
        return gate

    def read_playlist(self, path: str) -> bytes | None:
        self.playlist_reads += 1
        assert path == "/tracks/t1/aac-160/index.m3u8"
        return self.playlist

    def prefetcher(self, k: int = 2, **settings: Any) -> Prefetcher:
        return Prefetcher(k, 4, fetch=self.fetch, cached=self.cached.__contains__, playlist=self.read_playlist,
                          on_outcome=lambda o, n: self.outcomes.append((o, n)), clock=lambda: self.now, **settings)


def segment(n: int) -> urls.Route:
    route = urls.parse(urls.segment_path("t1", "aac-160", n))
    assert route is not None
    return route


async def settle() -> None:
    """Let the scheduled prefetch tasks run."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_last_segment_reads_the_highest_number() -> None:
    assert last_segment(PLAYLIST) == 4
    assert last_segment(b"#EXTM3U\n") is None


async def test_fetches_the_next_k_once_and_stops_at_the_end() -> None:
    world = World(PLAYLIST)
    p = world.prefetcher(k=2)
    p.after(segment(1))
    p.after(segment(1))  # every hit of the same segment: nothing new to schedule
    p.after(segment(2))
    p.after(segment(3))
    await settle()
    assert world.fetched == [urls.segment_path("t1", "aac-160", n) for n in (2, 3, 4)]  # never past seg 4
    assert world.playlist_reads == 1  # a known last segment is remembered
    p.requested(urls.segment_path("t1", "aac-160", 2))
    assert ("fetched", 100) in world.outcomes and ("used", 100) in world.outcomes
    await p.close()


async def test_an_absent_playlist_is_looked_for_again_only_after_a_while() -> None:
    world = World(None)  # a DASH listener: the media playlist is never requested, never cached
    p = world.prefetcher(k=1)
    for n in range(1, 50):
        p.after(segment(n))
    assert world.playlist_reads == 1
    world.now += PLAYLIST_RETRY + 1
    world.playlist = PLAYLIST
    p.after(segment(3))
    assert world.playlist_reads == 2
    await settle()
    assert len(world.fetched) == 49  # without an end known, each next segment was tried once
    await p.close()


async def test_cached_segments_are_not_fetched() -> None:
    world = World(PLAYLIST)
    world.cached.add(urls.segment_path("t1", "aac-160", 2))
    p = world.prefetcher(k=2)
    p.after(segment(1))
    await settle()
    assert world.fetched == [urls.segment_path("t1", "aac-160", 3)]
    await p.close()


async def test_a_handled_segment_costs_one_lookup_until_k_changes() -> None:
    world = World(PLAYLIST)
    p = world.prefetcher(k=1)
    path = urls.segment_path("t1", "aac-160", 1)
    for _ in range(100):
        p.after(segment(1), path)
    await settle()
    assert world.fetched == [urls.segment_path("t1", "aac-160", 2)] and world.playlist_reads == 1
    p.k = 2  # a reload: the next request schedules what the new k asks for
    p.after(segment(1), path)
    await settle()
    assert world.fetched[1:] == [urls.segment_path("t1", "aac-160", 3)]
    await p.close()


def paths(*numbers: int) -> list[str]:
    return [urls.segment_path("t1", "aac-160", n) for n in numbers]


# --- client misses first ---------------------------------------------------------------

async def test_no_prefetch_starts_while_a_client_miss_is_in_flight() -> None:
    world = World(PLAYLIST)
    p = world.prefetcher(k=2)
    assert PrefetchConfig().max_client_misses == 0  # the default: none may be in flight
    miss = p.client_miss()
    assert p.client_misses == 1
    p.after(segment(1))
    await settle()
    await asyncio.sleep(0.05)
    assert world.fetched == []  # scheduled, waiting for the client's miss
    miss.end()
    miss.end()  # idempotent
    assert p.client_misses == 0
    await asyncio.sleep(0.02)
    assert world.fetched == paths(2, 3)
    await p.close()


async def test_up_to_max_client_misses_may_be_in_flight_when_a_prefetch_starts() -> None:
    world = World(PLAYLIST)
    p = world.prefetcher(k=1, max_client_misses=1)
    with p.client_miss():
        p.after(segment(1))
        await settle()
        assert world.fetched == paths(2)  # one miss in flight: allowed
        with p.client_miss():
            p.after(segment(2))
            await settle()
            assert world.fetched == paths(2)  # two: 3 waits
        await asyncio.sleep(0.02)
        assert world.fetched == paths(2, 3)
    assert p.client_misses == 0
    await p.close()


async def test_tune_applies_new_limits_to_waiting_prefetches() -> None:
    """A reload's ``tune``: raising max_client_misses lets a prefetch waiting on a miss start at once."""
    world = World(PLAYLIST)
    p = world.prefetcher(k=1)
    with p.client_miss():
        p.after(segment(1))
        await settle()
        assert world.fetched == []  # the default: no client miss may be in flight
        p.tune(max_client_misses=1, max_wait=10.0, unused_after=300.0)
        await settle()
        assert world.fetched == paths(2)
        p.tune(max_client_misses=0, max_wait=10.0, unused_after=300.0)
        p.after(segment(2))
        await settle()
        assert world.fetched == paths(2)  # lowered again: 3 waits for the miss
    await asyncio.sleep(0.02)
    assert world.fetched == paths(2, 3)
    await p.close()


async def test_a_running_prefetch_is_not_cancelled_by_a_client_miss() -> None:
    world = World(PLAYLIST)
    gate = world.gate()
    p = world.prefetcher(k=1)
    p.after(segment(1))
    await settle()
    with p.client_miss():
        gate.set()
        await settle()
        assert world.fetched == paths(2) and ("fetched", 100) in world.outcomes
    await p.close()


async def test_a_prefetch_waiting_longer_than_max_wait_is_dropped_and_may_be_scheduled_again() -> None:
    world = World(PLAYLIST)
    p = world.prefetcher(k=2, max_wait=0.05)
    with p.client_miss():  # a constant stream of misses, as far as the prefetcher can tell
        p.after(segment(1))
        await asyncio.sleep(0.2)
        assert world.fetched == [] and world.outcomes == [("skipped", 0), ("skipped", 0)]
        assert not p._tasks  # dropped: no task waits on
    p.after(segment(1))  # dropped segments are not remembered as scheduled
    await settle()
    assert world.fetched == paths(2, 3)
    await p.close()


async def test_a_prefetch_queued_for_a_slot_longer_than_max_wait_is_dropped_too() -> None:
    world = World(None)
    gate = world.gate()
    p = world.prefetcher(k=6, max_wait=0.1)  # 4 slots
    p.after(segment(1))
    await asyncio.sleep(0.3)
    gate.set()
    await asyncio.sleep(0.05)
    assert world.fetched == paths(2, 3, 4, 5)
    assert world.outcomes.count(("skipped", 0)) == 2 and not p._tasks
    await p.close()


# --- wasted -----------------------------------------------------------------------------

async def test_expire_counts_unrequested_prefetches_as_wasted_after_unused_after() -> None:
    world = World(PLAYLIST)
    p = world.prefetcher(k=2, unused_after=1.0)
    p.after(segment(1))
    await settle()
    assert world.fetched == paths(2, 3)
    world.now += 0.5
    p.expire()
    assert ("wasted", 100) not in world.outcomes
    world.now += 0.6  # no request since: only the node's housekeeping calls expire
    p.expire()
    assert world.outcomes.count(("wasted", 100)) == 2
    p.requested(paths(2)[0])  # too late: not a use
    assert ("used", 100) not in world.outcomes
    await p.close()


@pytest.mark.parametrize("settings", [{"unused_after": 0.0}, {"unused_after": -1.0}, {"max_wait": 0.0},
                                      {"max_client_misses": -1}, {"unused_after": float("nan")}])
def test_prefetch_settings_are_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        PrefetchConfig(**settings)


def test_prefetch_settings_have_defaults_and_help() -> None:
    config = PrefetchConfig()
    assert (config.max_client_misses, config.max_wait, config.unused_after) == (0, 10.0, 300.0)
    assert all(f.metadata.get("help") for f in dataclasses.fields(PrefetchConfig))
