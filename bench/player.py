"""The simulated player of `legato bench load`: its pure parts.

No sockets and no clocks: ``bench/load.py`` feeds these with what the
network did and when.  Three pieces:

* **Playlists.** ``parse_master`` and ``parse_media`` read the HLS our
  packager writes (RFC 8216): variants with ``BANDWIDTH``, the media
  playlist's ``EXT-X-MAP``, ``EXT-X-KEY`` and segments with their
  ``EXTINF`` durations, URIs resolved against the playlist's own URL.
* **ABR** (``Abr``): throughput first, buffer second, as dash.js's and
  hls.js's default rules do.  The throughput estimate is an EWMA of measured
  segment throughput; the rendition is the best one whose *rule threshold*
  the estimate reaches (the quality table: < 1 Mbit/s -> 96k, 1-5 -> 160k,
  5-10 -> 320k, > 10 -> lossless).  With the buffer under ``low_buffer``
  seconds the choice steps one rendition down; it never steps up while the
  buffer is under ``low_buffer`` either.  Every change counts as a switch.
* **Playback** (``Playback``): media seconds in the buffer versus wall
  seconds played.  Playback starts with the first segment in hand (start-up
  time = manifest request -> first segment in hand); afterwards, a segment
  arriving after the buffer ran dry is a rebuffer whose length is the wait.
  The rebuffer ratio is stalled time over (played + stalled) time.
  ``speed`` plays media faster than real time, to compress long listens
  into a short run (1.0 by default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin

QUALITY_TABLE: tuple[tuple[float, str], ...] = (
    (10e6, "flac"), (5e6, "aac-320k"), (1e6, "aac-160k"), (0.0, "aac-96k"))
"""(minimum estimated bits/s, rendition) from the best down: the documented default rule."""

_ATTR_RE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


class PlaylistError(ValueError):
    """A playlist the player cannot follow; the message says what is missing."""


def _attrs(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _ATTR_RE.findall(text)}


@dataclass(frozen=True)
class Variant:
    rendition: str
    bandwidth: int
    url: str


@dataclass(frozen=True)
class MediaPlaylist:
    init_url: str
    key_url: str | None
    segments: tuple[tuple[float, str], ...]  # (seconds, url)


def rendition_of(url: str) -> str:
    """The rendition id of a playlist URL: the directory holding ``index.m3u8``."""
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 2)[-2]


def parse_master(text: str, base: str) -> list[Variant]:
    """Variants of a multivariant playlist, lowest bandwidth first."""
    if not text.startswith("#EXTM3U"):
        raise PlaylistError("master playlist does not start with #EXTM3U")
    variants, pending = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = _attrs(line.split(":", 1)[1])
        elif line and not line.startswith("#") and pending is not None:
            url = urljoin(base, line)
            variants.append(Variant(rendition_of(url), int(pending.get("BANDWIDTH", "0")), url))
            pending = None
    if not variants:
        raise PlaylistError("master playlist lists no variants")
    return sorted(variants, key=lambda v: v.bandwidth)


def parse_media(text: str, base: str) -> MediaPlaylist:
    """Init, key and segments of a media playlist (one key for the whole playlist)."""
    if not text.startswith("#EXTM3U"):
        raise PlaylistError("media playlist does not start with #EXTM3U")
    init = key = None
    segments: list[tuple[float, str]] = []
    duration: float | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-MAP:"):
            init = urljoin(base, _attrs(line.split(":", 1)[1])["URI"])
        elif line.startswith("#EXT-X-KEY:"):
            attrs = _attrs(line.split(":", 1)[1])
            if attrs.get("METHOD", "NONE") != "NONE" and key is None:
                key = urljoin(base, attrs["URI"])
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].split(",", 1)[0])
        elif line and not line.startswith("#") and duration is not None:
            segments.append((duration, urljoin(base, line)))
            duration = None
    if init is None or not segments:
        raise PlaylistError("media playlist has no EXT-X-MAP or no segments")
    return MediaPlaylist(init, key, tuple(segments))


@dataclass
class Abr:
    """Throughput + buffer rendition choice (see the module docstring)."""

    renditions: Sequence[str]  # available, lowest first
    estimate: float = 2e6  # bits/s before any measurement
    low_buffer: float = 10.0
    alpha: float = 0.3  # EWMA weight of the newest sample
    table: Sequence[tuple[float, str]] = QUALITY_TABLE
    current: str | None = None
    switches: int = 0

    def observe(self, size: int, seconds: float) -> None:
        """A segment of ``size`` bytes took ``seconds`` (shaped) to arrive."""
        if seconds > 0 and size > 0:
            sample = size * 8 / seconds
            self.estimate = sample if self.estimate <= 0 else self.alpha * sample + (1 - self.alpha) * self.estimate

    def by_throughput(self) -> str:
        available = set(self.renditions)
        for threshold, rendition in self.table:
            if self.estimate >= threshold and rendition in available:
                return rendition
        return self.renditions[0]

    def choose(self, buffer: float) -> str:
        """The rendition for the next segment given ``buffer`` seconds buffered."""
        order = list(self.renditions)
        want = self.by_throughput()
        if self.current is not None and buffer < self.low_buffer:
            cur = order.index(self.current)
            want = order[max(0, cur - 1)] if buffer < self.low_buffer / 2 else order[min(cur, order.index(want))]
        if self.current is not None and want != self.current:
            self.switches += 1
        self.current = want
        return want


@dataclass
class Playback:
    """Buffer accounting on wall-clock times passed in (see the module docstring).

    A seek ends the current run: what was played and stalled is banked, the
    buffer is dropped, and the next arrival starts a new run (its wait is
    seek latency, not a rebuffer).
    """

    speed: float = 1.0
    started_at: float | None = None  # wall time the current run began
    buffered: float = 0.0  # media seconds received in this run
    stalled: float = 0.0  # wall seconds rebuffering in this run
    rebuffers: int = 0
    banked_played: float = 0.0  # wall seconds played in earlier runs
    banked_stalled: float = 0.0
    _dry_since: float | None = field(default=None, repr=False)

    def played(self, now: float) -> float:
        """Media seconds played in this run by ``now``."""
        if self.started_at is None:
            return 0.0
        return min(self.buffered, (now - self.started_at - self.stalled) * self.speed)

    def buffer(self, now: float) -> float:
        return self.buffered - self.played(now)

    def arrived(self, seconds: float, now: float) -> None:
        """A segment of ``seconds`` of media is in hand at ``now``."""
        if self.started_at is None:
            self.started_at = now
        else:
            dry_at = self.started_at + self.stalled + self.buffered / self.speed
            if dry_at < now:
                self.rebuffers += 1
                self.stalled += now - dry_at
        self.buffered += seconds

    def wait_for_room(self, now: float, target: float) -> float:
        """Wall seconds to wait before fetching, to keep the buffer at most ``target``."""
        return max(0.0, (self.buffer(now) - target) / self.speed)

    def seek(self, now: float) -> None:
        """Jump elsewhere: bank this run, drop the buffer."""
        self.banked_played += self.played(now) / self.speed
        self.banked_stalled += self.stalled
        self.started_at, self.buffered, self.stalled = None, 0.0, 0.0

    def stall_seconds(self) -> float:
        return self.banked_stalled + self.stalled

    def play_seconds(self, now: float) -> float:
        """Wall seconds of music heard (all runs)."""
        return self.banked_played + self.played(now) / self.speed

    def rebuffer_ratio(self, now: float) -> float:
        total = self.play_seconds(now) + self.stall_seconds()
        return self.stall_seconds() / total if total > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
