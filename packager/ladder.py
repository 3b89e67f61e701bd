"""The encoding ladder: what renditions a track gets (config/ladder.toml)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from legato.config import section, setting
from legato.urls import RENDITION_ID_RE

CODECS = ("aac", "flac")


@dataclass(frozen=True)
class Rendition:
    id: str = setting("", "rendition id; becomes a path segment, [a-z0-9-] only")
    codec: str = setting("aac", "encoder: 'aac' (AAC-LC) or 'flac' (lossless)")
    bitrate: int = setting(0, "target bit rate in bit/s (AAC only; 0 for FLAC)")

    def __post_init__(self) -> None:
        if not RENDITION_ID_RE.fullmatch(self.id):
            raise ValueError(f"rendition id {self.id!r} must match {RENDITION_ID_RE.pattern}")
        if self.codec not in CODECS:
            raise ValueError(f"rendition {self.id}: codec {self.codec!r} is not one of {', '.join(CODECS)}")
        if self.codec == "aac" and not 16_000 <= self.bitrate <= 512_000:
            raise ValueError(f"rendition {self.id}: AAC bitrate {self.bitrate} outside 16000..512000")


DEFAULT_RENDITIONS = (
    Rendition("aac-96k", "aac", 96_000),
    Rendition("aac-160k", "aac", 160_000),
    Rendition("aac-320k", "aac", 320_000),
    Rendition("flac", "flac", 0),
)


@dataclass(frozen=True)
class Loudness:
    target_lufs: float = setting(-14.0, "integrated loudness the recorded gain aims at (LUFS)")
    ceiling_dbtp: float = setting(-1.0, "true-peak ceiling the recorded gain never exceeds (dBTP)")


@dataclass(frozen=True)
class LadderConfig:
    segment_duration: float = setting(6.0, "target media segment duration in seconds")
    rendition: tuple[Rendition, ...] = setting(DEFAULT_RENDITIONS, "the renditions, in master playlist order")
    loudness: Loudness = section(Loudness, "loudness measurement targets")  # noqa: RUF009 - a default factory

    def __post_init__(self) -> None:
        if not 1.0 <= self.segment_duration <= 30.0:
            raise ValueError(f"segment_duration {self.segment_duration} outside 1..30 s")
        if not self.rendition:
            raise ValueError("the ladder needs at least one rendition")
        ids = [r.id for r in self.rendition]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate rendition ids in {ids}")

    def fingerprint(self) -> str:
        """Stable hash of everything that changes the packaged output."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
