"""Segment plan and output-format rules: pure decisions, no I/O.

Segment boundaries are chosen once per track, in presentation samples at the
AAC sample rate, on a grid of ``GRID`` samples.  ``GRID`` is a multiple of
the AAC frame (1024) and equals the FLAC block size we ask for, so every
boundary falls exactly on a frame edge of every rendition: segment *n* of any
rendition covers the same stretch of music, and a player switching rendition
(or codec) between segments hears no jump.

Output-format rules (the "deliberate" handling of unusual sources):

=================  ===================================================
source             renditions get
=================  ===================================================
mono               stereo, the one channel copied to both sides (no gain change);
                   AAC with M/S on every band, no noise substitution or intensity
                   stereo, so left and right decode identically
stereo             as is
3+ channels        stereo by the ITU-R BS.775 down-mix matrix (centre and
                   surrounds at -3 dB, LFE dropped), normalised so it cannot clip
44.1 kHz family    AAC at 44.1 kHz (11.025/22.05/88.2/176.4 kHz resampled)
48 kHz family      AAC at 48 kHz (8/16/32/96/192 kHz and anything else resampled)
FLAC rate          the source rate when it is 44.1/48/88.2/96 kHz; 176.4/192 kHz
                   halved to 88.2/96 kHz; anything else as the AAC rate
FLAC depth         16-bit for sources of 16 bits or fewer (and lossy sources);
                   24-bit for 24-bit, 32-bit and floating-point sources
16-bit reduction   triangular dither (only when FLAC must drop bits)
=================  ===================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AAC_FRAME = 1024
AAC_PRIMING = 1024  # ffmpeg's native AAC encoder delay, samples at the output rate
GRID = 4096  # boundary grid at the AAC rate; FLAC block size at that rate

FAMILY_44K = {11025, 22050, 44100, 88200, 176400}


@dataclass(frozen=True)
class OutputFormat:
    """What every rendition of one track is encoded to."""

    aac_rate: int
    flac_rate: int
    flac_bits: int
    channels_in: int

    @property
    def flac_block(self) -> int:
        return GRID * self.flac_rate // self.aac_rate


def output_format(rate: int, channels: int, bits: int | None, lossless: bool) -> OutputFormat:
    """Apply the rules in the module docstring to one source."""
    if rate <= 0 or channels <= 0:
        raise ValueError(f"no usable audio ({rate} Hz, {channels} channels)")
    aac_rate = 44100 if rate in FAMILY_44K else 48000
    if rate in (44100, 48000, 88200, 96000):
        flac_rate = rate
    elif rate in (176400, 192000):
        flac_rate = rate // 2
    else:
        flac_rate = aac_rate
    flac_bits = 24 if lossless and bits is not None and bits > 16 else 16
    return OutputFormat(aac_rate, flac_rate, flac_bits, channels)


def boundaries(total: int, target_seconds: float, rate: int, grid: int = GRID) -> list[int]:
    """Segment start points in presentation samples, plus ``total`` at the end.

    Each segment is a whole number of grid units, as close to the target
    duration as the grid allows; the last one takes what is left.
    """
    if total <= 0:
        raise ValueError("a track needs at least one sample")
    units = max(1, round(target_seconds * rate / grid))
    step = units * grid
    points = list(range(0, total, step))
    return points + [total]


def split_indices(durations: list[int] | tuple[int, ...], starts: list[int]) -> list[int]:
    """Index of the first sample at or after each media-time start point.

    ``starts`` are in the rendition's media time (priming included).  With the
    grid above every start falls exactly on a sample edge; if an encoder ever
    produced odd frame sizes the cut moves to the next sample edge instead.
    """
    indices = []
    t = 0
    i = 0
    n = len(durations)
    for start in starts:
        while i < n and t < start:
            t += durations[i]
            i += 1
        indices.append(i)
    return indices


@dataclass(frozen=True)
class Cut:
    """One rendition's segments: sample index ranges and their media/presentation times."""

    first_sample: int
    end_sample: int
    decode_time: int  # media time of the first sample (tfdt)
    media_duration: int  # sum of the sample durations (DASH SegmentTimeline d)
    presentation: float  # seconds of music the segment covers (HLS EXTINF)


def cut(durations: tuple[int, ...], points: list[int], plan_rate: int, rate: int, priming: int) -> list[Cut]:
    """Cut one rendition's samples at the plan's boundaries.

    ``points`` come from :func:`boundaries` (presentation samples at
    ``plan_rate``); ``rate`` is this rendition's timescale.
    """
    scale = rate / plan_rate
    starts = [0] + [round(p * scale) + priming for p in points[1:-1]]
    idx = split_indices(durations, starts) + [len(durations)]
    cuts = []
    t = 0
    for k in range(len(starts)):
        a, b = idx[k], idx[k + 1]
        if a == b:
            continue  # a rendition shorter than the plan (should not happen) gets no empty segments
        d = sum(durations[a:b])
        pres = (points[k + 1] - points[k]) / plan_rate
        cuts.append(Cut(a, b, t, d, pres))
        t += d
    return cuts


def target_duration(seconds: list[float]) -> int:
    """EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer fits (RFC 8216 §4.3.3.1)."""
    return max(1, max(math.floor(s + 0.5) for s in seconds))
