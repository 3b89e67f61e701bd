"""The catalog record (track.json) and the model the manifest writers read.

``track.json`` is the one description of a packaged track: manifests are
written from the same values, and the tests check that independent HLS and
DASH parsers read back what it says.

A protected track lists each rendition once per protection scheme (``scheme``
``hls-aes128`` or ``cenc``, files under ``{scheme}/{rendition}/``), with the
KID of its content key and the sizes and hashes of the bytes actually served
(encrypted); clear renditions have no ``scheme``.  ``protection`` says which
schemes and KIDs the track has.  Keys are never in here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1  # bump when the packaged layout changes; older tracks are then rebuilt

CODECS_STRING = {"aac": "mp4a.40.2", "flac": "fLaC"}  # RFC 6381 / FLAC-in-ISOBMFF names


@dataclass(frozen=True)
class Segment:
    number: int
    duration: float  # seconds of music (presentation time): HLS EXTINF
    media_start: int  # decode time of the first sample, timescale units (tfdt, DASH S@t)
    media_duration: int  # timescale units (DASH S@d)
    bytes: int
    xxh3: str
    iv: str | None = None  # hls-aes128: the segment's AES-CBC IV, 32 hex digits (public: it is in the playlist)

    @property
    def name(self) -> str:
        return f"seg-{self.number:05d}.m4s"


@dataclass(frozen=True)
class Rendition:
    id: str
    codec: str  # 'aac' | 'flac'
    bitrate: int  # nominal (ladder) bit rate, 0 for FLAC
    sample_rate: int  # also the media timescale
    channels: int
    bits: int | None
    priming: int  # encoder delay in samples, signalled by the init segment's edit list
    init_bytes: int
    init_xxh3: str
    segments: tuple[Segment, ...]
    scheme: str | None = None  # protection scheme (legato.urls.SCHEMES), None when clear
    kid: str | None = None  # key id, 32 lowercase hex digits, when protected

    @property
    def path(self) -> str:
        """The rendition's directory relative to the track: ``{id}`` or ``{scheme}/{id}``."""
        return f"{self.scheme}/{self.id}" if self.scheme else self.id

    @property
    def codecs(self) -> str:
        return CODECS_STRING[self.codec]

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def bandwidth(self) -> int:
        """Peak segment bit rate in bit/s (HLS BANDWIDTH, DASH @bandwidth)."""
        return max(math.ceil(s.bytes * 8 / s.duration) for s in self.segments)

    @property
    def average_bandwidth(self) -> int:
        return math.ceil(sum(s.bytes for s in self.segments) * 8 / self.duration)


@dataclass(frozen=True)
class Track:
    track_id: str
    duration: float  # seconds of music
    segment_target: float
    renditions: tuple[Rendition, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    loudness: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    ladder: str = ""  # ladder fingerprint
    format_version: int = FORMAT_VERSION
    protection: dict[str, Any] = field(default_factory=lambda: {"schemes": []})  # schemes, key_scope, kids

    def renditions_for(self, schemes: tuple[str | None, ...]) -> tuple[Rendition, ...]:
        """The renditions under any of ``schemes`` (None: clear), in ladder order."""
        return tuple(r for r in self.renditions if r.scheme in schemes)


def to_json(track: Track) -> dict[str, Any]:
    """The track.json document: the dataclasses plus derived fields for readers."""
    doc = asdict(track)
    for rdoc, rendition in zip(doc["renditions"], track.renditions):
        for optional in ("scheme", "kid"):  # absent (not null) when clear: clear records look as they always did
            if rdoc[optional] is None:
                del rdoc[optional]
        rdoc["path"] = rendition.path
        rdoc["codecs"] = rendition.codecs
        rdoc["bandwidth"] = rendition.bandwidth
        rdoc["average_bandwidth"] = rendition.average_bandwidth
        for sdoc, seg in zip(rdoc["segments"], rendition.segments):
            if sdoc["iv"] is None:
                del sdoc["iv"]
            sdoc["name"] = seg.name
    return doc


def from_json(doc: dict[str, Any]) -> Track:
    """Rebuild a Track from track.json (derived fields are recomputed, not trusted)."""
    renditions = []
    for r in doc["renditions"]:
        segs = tuple(Segment(**{k: s[k] for k in Segment.__dataclass_fields__ if k in s}) for s in r["segments"])
        fields = {k: r[k] for k in Rendition.__dataclass_fields__ if k != "segments" and k in r}
        renditions.append(Rendition(**fields, segments=segs))
    top = {k: doc[k] for k in Track.__dataclass_fields__ if k != "renditions" and k in doc}
    return Track(**top, renditions=tuple(renditions))
