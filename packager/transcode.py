"""One ffmpeg run per track: decode once, encode every rendition, measure on the side.

The command is built with ffmpeg-python from the ladder and the output rules
in :mod:`packager.plan`; it writes each rendition as a fragmented MP4 into a
work directory (re-cut later by :mod:`packager.segment`), and a third kind of
branch measures loudness (ITU-R BS.1770 integrated loudness and true peak,
ffmpeg's ebur128 filter) and counts decoded samples, which is how a truncated
source is told from a complete one.
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg as ffmpeg_python

from packager.ladder import LadderConfig, Rendition
from packager.plan import GRID, OutputFormat
from packager.tools import ffmpeg

FRAGMENT_US = 10_000_000  # ffmpeg's own fragments; we re-cut them, so only their count matters


class TranscodeError(Exception):
    """ffmpeg failed; the message is ffmpeg's last meaningful line."""


@dataclass(frozen=True)
class Measurement:
    integrated_lufs: float | None  # None below the -70 LUFS absolute gate (silence)
    true_peak_dbtp: float | None  # None for digital silence
    samples: int  # decoded source samples per channel


def rendition_rate(rendition: Rendition, fmt: OutputFormat) -> int:
    return fmt.flac_rate if rendition.codec == "flac" else fmt.aac_rate


def encoder_args(rendition: Rendition, fmt: OutputFormat) -> dict[str, str | int]:
    """ffmpeg output options for one rendition (the benchmark reuses these)."""
    if rendition.codec == "aac":
        args: dict[str, str | int] = {"c:a": "aac", "b:a": rendition.bitrate, "ar": fmt.aac_rate, "ac": 2}
        if fmt.channels_in == 1:
            # Noise substitution and intensity stereo fill each side on their own, and per-band
            # M/S decisions code them apart: a mono source would decode with left != right (up
            # to -34 dB of difference).  M/S on every band makes the side signal exactly zero.
            args.update(aac_pns=0, aac_is=0, aac_ms=1)
        return args
    return {"c:a": "flac", "compression_level": 5, "frame_size": fmt.flac_block, "ar": fmt.flac_rate, "ac": 2,
            "sample_fmt": "s32" if fmt.flac_bits == 24 else "s16", "bits_per_raw_sample": fmt.flac_bits,
            "strict": "-2"}


def _channel_filter(stream: Any, fmt: OutputFormat) -> Any:  # ffmpeg-python streams are untyped
    """Mono is copied to both sides; 3+ channels take libswresample's ITU-R BS.775
    down-mix (centre and surrounds -3 dB, LFE dropped), normalised to 1.0 so it cannot clip."""
    if fmt.channels_in == 1:
        # "<" (not "="): gains renormalised to a sum of 1, i.e. unity here; ffmpeg-python escapes "=".
        return stream.filter("pan", "stereo|c0<c0|c1<c0")
    if fmt.channels_in > 2:
        # aformat pins the layout: without it negotiation keeps 5.1 and the encoders'
        # own un-normalised -ac 2 down-mix runs instead (and clips).
        return (stream.filter("aresample", ocl="stereo", matrix_encoding="none", rematrix_maxval=1.0)
                .filter("aformat", channel_layouts="stereo"))
    return stream


def command(src: Path, ladder: LadderConfig, fmt: OutputFormat, workdir: Path) -> list[str]:
    """The ffmpeg argument list that encodes ``src`` to every rendition in ``workdir``."""
    stereo = _channel_filter(ffmpeg_python.input(str(src))["a:0"], fmt)
    branches = stereo.filter_multi_output("asplit", len(ladder.rendition) + 1)
    outputs = []
    for i, rendition in enumerate(ladder.rendition):
        branch = branches[i]
        if rendition.codec == "flac" and fmt.flac_bits == 16:
            branch = branch.filter("aresample", dither_method="triangular")
        outputs.append(branch.output(
            str(workdir / f"{rendition.id}.mp4"), f="mp4", map_metadata=-1, map_chapters=-1,
            movflags="+empty_moov+default_base_moof", frag_duration=FRAGMENT_US, **encoder_args(rendition, fmt),
        ))
    measure = (branches[len(ladder.rendition)]
               .filter("astats", measure_perchannel="none", measure_overall="Number_of_samples")
               .filter("ebur128", peak="true", framelog="verbose"))
    outputs.append(measure.output("-", f="null"))
    args = ffmpeg_python.merge_outputs(*outputs).global_args(
        "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", "-progress", "pipe:1",
    ).compile(cmd=ffmpeg())
    return [str(a) for a in args]


_NUM = r"(-?(?:inf|\d+(?:\.\d+)?))"


def parse_measurement(stderr: str) -> Measurement:
    """Read ebur128's summary and astats' sample count from ffmpeg's log."""
    integrated = re.findall(rf"Integrated loudness:\s*\n\s*I:\s*{_NUM} LUFS", stderr)
    peak = re.findall(rf"True peak:\s*\n\s*Peak:\s*{_NUM} dBFS", stderr)
    samples = re.findall(r"Number of samples: (\d+)", stderr)
    if not integrated or not peak or not samples:
        raise TranscodeError("ffmpeg did not report loudness (no ebur128 summary in its log)")
    lufs = float(integrated[-1])
    tp = float(peak[-1])
    return Measurement(
        integrated_lufs=None if lufs <= -70.0 else lufs,
        true_peak_dbtp=None if math.isinf(tp) else tp,
        samples=int(samples[-1]),
    )


def replay_gain(m: Measurement, target_lufs: float, ceiling_dbtp: float) -> float:
    """Gain (dB) to reach ``target_lufs`` without the true peak passing ``ceiling_dbtp``.

    Silence (below the BS.1770 absolute gate) gets 0 dB: there is nothing to normalise.
    """
    if m.integrated_lufs is None:
        return 0.0
    gain = target_lufs - m.integrated_lufs
    if m.true_peak_dbtp is not None:
        gain = min(gain, ceiling_dbtp - m.true_peak_dbtp)
    return round(gain, 2)


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    noise = ("Conversion failed", "Error while", "Exiting normally", "Invalid argument")
    for line in reversed(lines):
        if not line.startswith(noise) and ("rror" in line or "nvalid" in line or "failed" in line):
            return re.sub(r"^\[[^]]+\]\s*", "", line)[:200]
    return (lines[-1] if lines else "no output")[:200]


@functools.cache
def _die_with_parent() -> list[str]:
    """A command prefix making the kernel SIGKILL ffmpeg if the packager dies.

    util-linux's setpriv sets the parent-death signal in the child itself, so
    nothing runs in the forked child before exec (a ``preexec_fn`` would, in a
    process with threads); without setpriv, ffmpeg simply runs unguarded.
    """
    exe = shutil.which("setpriv")
    return [exe, "--pdeathsig", "KILL"] if exe else []


def run(args: list[str], duration: float, progress: Callable[[float], None] | None = None,
        timeout: float = 3600) -> Measurement:
    """Run ffmpeg, reporting seconds of audio done to ``progress``."""
    proc = subprocess.Popen([*_die_with_parent(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    err_chunks: list[str] = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read() if proc.stderr else ""))
    reader.start()
    done = 0.0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("out_time_us=") and progress is not None:
            value = line.split("=", 1)[1].strip()
            if value.isdigit():
                seconds = min(duration, int(value) / 1e6)
                if seconds > done:
                    progress(seconds - done)
                    done = seconds
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
    stderr = "".join(err_chunks)
    if proc.returncode != 0:
        raise TranscodeError(f"ffmpeg could not decode/encode it: {_last_error(stderr)}")
    if progress is not None and duration > done:
        progress(duration - done)
    return parse_measurement(stderr)


__all__ = ["GRID", "Measurement", "TranscodeError", "command", "encoder_args", "parse_measurement",
           "rendition_rate", "replay_gain", "run"]
