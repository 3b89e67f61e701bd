"""The prefetch scheduler: what it fetches after a segment request, and what it does not redo per hit."""

from __future__ import annotations

import asyncio

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

    def read_playlist(self, path: str) -> bytes | None:
        self.playlist_reads += 1
        assert path == "/tracks/t1/aac-160/index.m3u8"
        return self.playlist

    def prefetcher(self, k: int = 2) -> Prefetcher:
        return Prefetcher(k, 4, fetch=self.fetch, cached=self.cached.__contains__, playlist=self.read_playlist,
                          misses_in_flight=lambda: 0, on_outcome=lambda o, n: self.outcomes.append((o, n)),
                          clock=lambda: self.now)


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
