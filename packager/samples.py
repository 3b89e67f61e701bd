"""Synthesised, music-like sample tracks made with ffmpeg (demo and tests).

Each track is a short chord progression of plucked, decaying harmonic tones
with a soft bass line: tonal, dynamic and deterministic, so encoders and
loudness meters see something closer to music than a sine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from packager.tools import ffmpeg

# Semitone offsets from A (220 Hz) for four-chord progressions.
PROGRESSIONS = {
    "sunrise": ((0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7)),
    "harbour": ((-3, 0, 4), (5, 9, 12), (0, 4, 7), (7, 11, 14)),
    "lanterns": ((2, 5, 9), (7, 11, 14), (0, 4, 7), (-3, 0, 4)),
}


def expression(progression: tuple[tuple[int, int, int], ...], beat: float = 0.5) -> str:
    """An aevalsrc expression: arpeggiated chord tones plus a bass note per bar."""
    bar = beat * 4
    n = len(progression)

    def pick(index: int) -> str:  # chord tone `index` of the current bar, as an ffmpeg expression
        expr = str(progression[-1][index])
        for i in range(n - 2, -1, -1):
            expr = f"if(eq(mod(floor(t/{bar}),{n}),{i}),{progression[i][index]},{expr})"
        return expr

    voices = []
    for k in range(3):
        freq = f"220*pow(2,({pick(k)})/12)"
        env = f"exp(-3*mod(t-{k * beat / 3:.4f},{beat}))"
        voices.append(f"0.16*{env}*(sin(2*PI*{freq}*t)+0.35*sin(4*PI*{freq}*t)+0.12*sin(6*PI*{freq}*t))")
    bass = f"0.22*exp(-1.2*mod(t,{bar}))*sin(2*PI*55*pow(2,({pick(0)})/12)*t)"
    return "+".join(voices + [bass])


def write_sample(
    path: Path,
    seconds: float,
    *,
    style: str = "sunrise",
    rate: int = 44100,
    channels: int = 2,
    codec: str = "flac",
    sample_fmt: str | None = None,
    title: str | None = None,
    artist: str = "Legato Test Ensemble",
    album: str = "Synthesised Sketches",
) -> Path:
    """Write a synthesised track (any ffmpeg-writable container) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    expr = expression(PROGRESSIONS[style])
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    # Every channel after the first is delayed by 4 ms for a little width.
    delayed = expr.replace("*t)", "*(t-0.004))")
    per_channel = "|".join([expr] + [delayed] * (channels - 1))
    cycle = 0.5 * 4 * len(PROGRESSIONS[style])
    cmd = [
        ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        # The progression repeats every bar * len(progression) seconds: synthesise one
        # cycle (aevalsrc is slow) and loop it.
        "-f", "lavfi", "-i", (f"aevalsrc=exprs='{per_channel}':s={rate}:d={cycle}:c={layout},"
                              f"aloop=loop=-1:size={round(cycle * rate)},atrim=duration={seconds}"),
        "-c:a", codec,
    ]
    if sample_fmt:
        cmd += ["-sample_fmt", sample_fmt]
    cmd += ["-metadata", f"title={title or style.title()}", "-metadata", f"artist={artist}",
            "-metadata", f"album={album}", str(path)]
    subprocess.run(cmd, check=True)
    return path
