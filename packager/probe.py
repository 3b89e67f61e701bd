"""Probe a source file: tags and audio properties from mutagen, checked by ffprobe.

Both tools look at the file: mutagen for the tags a catalogue wants (title,
artist, album, ISRC) and exact stream info for the formats it knows; ffprobe
to confirm there is a decodable audio stream and to fill what mutagen cannot
read.  Problems come back as :class:`SourceError` with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import mutagen

from packager.tools import ffprobe

MAX_TAG_CHARS = 512  # longer tag values are cut: a catalogue field, not a blob store
LOSSLESS = {"flac", "alac", "wavpack", "ape", "tta", "truehd", "mlp"}
TAGS = ("title", "artist", "album", "isrc")


class SourceError(Exception):
    """A source that cannot be packaged; the message is one line, without the path."""


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    codec: str
    sample_rate: int
    channels: int
    bits: int | None  # None for lossy codecs
    duration: float  # seconds, as declared by the container
    tags: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def lossless(self) -> bool:
        return self.codec in LOSSLESS or self.codec.startswith("pcm_")


def _clean(value: object) -> str | None:
    text = str(value[0] if isinstance(value, list) and value else value).replace("\x00", "").strip()
    if not text or not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    return text[:MAX_TAG_CHARS] or None


def read_tags(path: Path) -> tuple[dict[str, str], dict[str, float | int], list[str]]:
    """mutagen's view: (tags, stream info, warnings).  Never raises."""
    warnings: list[str] = []
    try:
        handle = mutagen.File(path, easy=True)
    except Exception as exc:  # noqa: BLE001 - mutagen raises many types on malformed tags
        return {}, {}, [f"tags unreadable ({type(exc).__name__}); continuing without them"]
    if handle is None:
        return {}, {}, []
    tags: dict[str, str] = {}
    for key in TAGS:
        try:
            value = handle.get(key) if handle.tags is not None else None
        except Exception:  # noqa: BLE001 - a tag that cannot be read is a tag we do not have
            value = None
        if value:
            cleaned = _clean(value)
            if cleaned:
                tags[key] = cleaned
    info = handle.info
    stream = {k: getattr(info, k) for k in ("sample_rate", "channels", "bits_per_sample", "length")
              if isinstance(getattr(info, k, None), (int, float))}
    return tags, stream, warnings


def probe_ffprobe(path: Path) -> dict:
    exe = ffprobe()
    if exe is None:
        return {}
    proc = subprocess.run(
        [exe, "-v", "error", "-show_streams", "-show_format", "-select_streams", "a:0", "-of", "json", str(path)],
        capture_output=True, text=True, errors="replace", timeout=60, stdin=subprocess.DEVNULL, check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise SourceError(f"not a readable audio file (ffprobe: {last.split(': ', 1)[-1]})")
    return json.loads(proc.stdout or "{}")


def probe(path: Path) -> Source:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror}") from None
    if not path.is_file():
        raise SourceError("not a regular file")
    if size == 0:
        raise SourceError("empty file")
    tags, info, warnings = read_tags(path)
    data = probe_ffprobe(path)
    streams = data.get("streams") or []
    if data and not streams:
        raise SourceError("no audio stream")
    stream = streams[0] if streams else {}
    codec = stream.get("codec_name") or ("unknown" if not info else "")
    rate = int(stream.get("sample_rate") or info.get("sample_rate") or 0)
    channels = int(stream.get("channels") or info.get("channels") or 0)
    if not rate or not channels:
        raise SourceError("no decodable audio stream found")
    bits = int(info.get("bits_per_sample") or stream.get("bits_per_raw_sample") or 0) or None
    if bits is None and str(stream.get("sample_fmt", "")).startswith(("flt", "dbl", "s32")):
        bits = 32
    fmt_tags = {k.lower(): v for k, v in (data.get("format", {}).get("tags") or {}).items()}
    for key in TAGS:  # ffprobe fills tags mutagen could not read
        if key not in tags and fmt_tags.get(key):
            cleaned = _clean(fmt_tags[key])
            if cleaned:
                tags[key] = cleaned
    duration = float(info.get("length") or stream.get("duration") or data.get("format", {}).get("duration") or 0.0)
    source = Source(path, size, codec, rate, channels, bits, duration, tags, tuple(warnings))
    return source if source.lossless else dataclasses.replace(source, bits=None)  # lossy: no bit depth
