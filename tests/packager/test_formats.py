"""Unusual source formats get the renditions packager/plan.py's docstring promises.

Every source below is packaged by the real CLI in one batch; each test then
looks at what was written with independent tools: ffprobe for the stream
properties, ffmpeg for decoded PCM, and a few lines of ISO BMFF parsing (not
packager.mp4) for the decode times that prove segment boundaries line up.
The expected formats are written out here from the docstring's table, not
computed with packager.plan, so a drift between the rules and the code shows.
"""

from __future__ import annotations

import array
import json
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from packager.samples import write_sample

GRID = 4096  # boundary grid in samples at the AAC rate (plan.py docstring)
TARGET = 6.0  # default segment duration
SECONDS = 7.0  # long enough for two segments


@dataclass(frozen=True)
class Case:
    kw: dict  # write_sample keyword arguments
    name: str  # source file name
    aac_rate: int
    flac_rate: int
    flac_bits: int


# name -> what the docstring says the renditions get.
CASES = {
    "mono": Case({"channels": 1}, "mono.flac", 44100, 44100, 24),
    "5.1": Case({"channels": 6}, "surround.flac", 44100, 44100, 24),
    "8k": Case({"rate": 8000}, "r8000.flac", 48000, 48000, 24),
    "22.05k": Case({"rate": 22050}, "r22050.flac", 44100, 44100, 24),
    "88.2k": Case({"rate": 88200}, "r88200.flac", 44100, 88200, 24),
    "96k": Case({"rate": 96000}, "r96000.flac", 48000, 96000, 24),
    "176.4k": Case({"rate": 176400}, "r176400.flac", 44100, 88200, 24),
    "192k": Case({"rate": 192000}, "r192000.flac", 48000, 96000, 24),
    "24-bit": Case({"sample_fmt": "s32"}, "b24.flac", 44100, 44100, 24),
    "16-bit": Case({"sample_fmt": "s16"}, "b16.flac", 44100, 44100, 16),
    "48k-16-bit-wav": Case({"rate": 48000, "codec": "pcm_s16le"}, "b16-48k.wav", 48000, 48000, 16),
    "mp3": Case({"codec": "libmp3lame"}, "lossy.mp3", 44100, 44100, 16),
    "aac-m4a-48k": Case({"codec": "aac", "rate": 48000}, "lossy48k.m4a", 48000, 48000, 16),
}


# --- helpers -----------------------------------------------------------------

def ffprobe_stream(path: Path, *pre: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", *pre, "-show_streams", "-select_streams", "a:0", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"][0]


def decode(path: Path, *pre: str, fmt: str = "f32le") -> tuple[array.array, int]:
    """Interleaved PCM samples (float32 or int32) and the channel count, at the stream's own rate."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *pre, "-i", str(path), "-f", fmt, "-"],
                          capture_output=True, check=True)
    assert not proc.stderr.strip(), proc.stderr.decode(errors="replace")
    samples = array.array("f" if fmt == "f32le" else "i")
    samples.frombytes(proc.stdout)
    return samples, ffprobe_stream(path, *pre)["channels"]


def rendition_file(root: Path, rid: str, tmp_path: Path) -> Path:
    """init.mp4 + first media segment, as one file ffprobe can read."""
    out = tmp_path / f"{rid}-first.mp4"
    out.write_bytes((root / rid / "init.mp4").read_bytes() + (root / rid / "seg-00001.m4s").read_bytes())
    return out


def boxes(buf: bytes, start: int = 0, end: int | None = None):  # type: ignore[no-untyped-def]
    end = len(buf) if end is None else end
    while start < end:
        size, kind = struct.unpack_from(">I4s", buf, start)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", buf, start + 8)
            header = 16
        yield kind, start + header, start + size
        start += size


def child(buf: bytes, kind: bytes, start: int, end: int) -> tuple[int, int]:
    for k, body, stop in boxes(buf, start, end):
        if k == kind:
            return body, stop
    raise AssertionError(f"no {kind!r} box")


def decode_time(segment: bytes) -> int:
    """tfdt baseMediaDecodeTime of a one-track media segment."""
    moof = child(segment, b"moof", 0, len(segment))
    traf = child(segment, b"traf", *moof)
    body, _ = child(segment, b"tfdt", *traf)
    version = segment[body]
    return struct.unpack_from(">Q" if version == 1 else ">I", segment, body + 4)[0]


def edit_list(init: bytes) -> tuple[int, int]:
    """(segment_duration, media_time) of the init segment's single edit."""
    moov = child(init, b"moov", 0, len(init))
    trak = child(init, b"trak", *moov)
    edts = child(init, b"edts", *trak)
    body, _ = child(init, b"elst", *edts)
    version = init[body]
    if version == 1:
        return struct.unpack_from(">Qq", init, body + 8)
    return struct.unpack_from(">Ii", init, body + 8)


# --- the packaged sources ----------------------------------------------------

@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory, cli) -> dict[str, tuple[Path, Path | None, str]]:  # type: ignore[no-untyped-def]
    """case -> (source, track directory or None, the CLI's line for it)."""
    src_dir = tmp_path_factory.mktemp("formats-src")
    store = tmp_path_factory.mktemp("formats-store")
    sources = {key: write_sample(src_dir / case.name, SECONDS, **case.kw) for key, case in CASES.items()}
    result = cli("package", *map(str, sources.values()), "--store", str(store), "--jobs", "2", "--no-progress", "--protect", "none",
                 check=False)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.splitlines()
    out = {}
    for key, src in sources.items():
        line = next((ln for ln in lines if f" {src} -> " in ln or ln.endswith(f" {src}") or f" {src}: " in ln), "")
        m = re.fullmatch(rf"packaged  {re.escape(str(src))} -> tracks/(\S+)", line)
        out[key] = (src, store / "tracks" / m.group(1) if m else None, line)
    return out


def track(packaged: dict, key: str) -> tuple[Path, dict]:  # type: ignore[type-arg]
    _, root, line = packaged[key]
    assert root is not None, f"{key} source did not package: {line!r}"
    return root, json.loads((root / "track.json").read_text())


@pytest.mark.parametrize("key", list(CASES))
def test_renditions_follow_the_documented_format_rules(packaged, key: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    case = CASES[key]
    root, doc = track(packaged, key)
    assert [r["id"] for r in doc["renditions"]] == ["aac-96k", "aac-160k", "aac-320k", "flac"]
    for r in doc["renditions"]:
        actual = ffprobe_stream(rendition_file(root, r["id"], tmp_path))
        playlist = ffprobe_stream(root / r["id"] / "index.m3u8", "-allowed_extensions", "ALL")
        assert actual["channels"] == playlist["channels"] == r["channels"] == 2, f"{r['id']}: not stereo"
        if r["codec"] == "aac":
            assert (actual["codec_name"], actual.get("profile")) == ("aac", "LC")
            assert int(actual["sample_rate"]) == int(playlist["sample_rate"]) == r["sample_rate"] == case.aac_rate
        else:
            assert actual["codec_name"] == "flac"
            assert int(actual["sample_rate"]) == int(playlist["sample_rate"]) == r["sample_rate"] == case.flac_rate
            assert int(actual["bits_per_raw_sample"]) == r["bits"] == case.flac_bits
            assert actual["sample_fmt"] == ("s16" if case.flac_bits == 16 else "s32")


@pytest.mark.parametrize("key", list(CASES))
def test_segment_boundaries_align_across_renditions(packaged, key: str) -> None:  # type: ignore[no-untyped-def]
    case = CASES[key]
    root, doc = track(packaged, key)
    durations = {r["id"]: [s["duration"] for s in r["segments"]] for r in doc["renditions"]}
    first = durations["aac-96k"]
    assert all(d == first for d in durations.values()), f"segment durations differ: {durations}"
    assert len(first) == 2, first  # 7 s at a 6 s target
    for d in first[:-1]:
        assert abs(d * case.aac_rate - TARGET * case.aac_rate) <= GRID, f"segment of {d} s is off the 6 s target"
    # The music each segment starts at, read from the media itself: (tfdt - edit-list media_time) / timescale.
    boundaries = [0]
    for d in first[:-1]:
        boundaries.append(boundaries[-1] + round(d * case.aac_rate))
    assert all(b % GRID == 0 for b in boundaries), boundaries
    for r in doc["renditions"]:
        rate = r["sample_rate"]
        _, media_time = edit_list((root / r["id"] / "init.mp4").read_bytes())
        assert media_time == r["priming"]
        for seg, boundary in zip(r["segments"], boundaries):
            tfdt = decode_time((root / r["id"] / seg["name"]).read_bytes())
            assert tfdt == seg["media_start"]
            if seg["number"] > 1:
                # presentation time of the segment's first sample, exactly on the shared boundary
                assert (tfdt - media_time) * case.aac_rate == boundary * rate, (r["id"], seg["number"], tfdt)


def _channels(samples: array.array, channels: int) -> list[array.array]:
    return [samples[c::channels] for c in range(channels)]


def test_mono_is_copied_to_both_sides_without_gain_change(packaged) -> None:  # type: ignore[no-untyped-def]
    src, _, _ = packaged["mono"]
    root, doc = track(packaged, "mono")
    mono, n = decode(src, fmt="s32le")
    assert n == 1
    for r in doc["renditions"]:
        playlist = root / r["id"] / "index.m3u8"
        if r["codec"] == "flac":
            pcm, n = decode(playlist, "-allowed_extensions", "ALL", fmt="s32le")
            left, right = _channels(pcm, n)
            assert left == right, "FLAC rendition of a mono source: left and right differ"
            assert left == mono, "FLAC rendition of a 24-bit mono source is not the source, bit for bit"
        else:
            pcm, n = decode(playlist, "-allowed_extensions", "ALL")
            left, right = _channels(pcm, n)
            worst = max(abs(a - b) for a, b in zip(left, right))
            # equal up to float rounding in the decoder; anything bigger is the encoder treating
            # the sides differently (e.g. noise substitution filled independently per channel)
            assert worst <= 1e-4, f"{r['id']}: |left - right| up to {worst:.4f} for a mono source"


@pytest.mark.parametrize("key", ["24-bit", "16-bit", "48k-16-bit-wav"])
def test_flac_is_lossless_when_no_conversion_is_needed(packaged, key: str) -> None:  # type: ignore[no-untyped-def]
    """Same rate, same or fewer bits, stereo: nothing to convert, so no dither and no change."""
    src, _, _ = packaged[key]
    root, _ = track(packaged, key)
    source, _ = decode(src, fmt="s32le")
    flac, _ = decode(root / "flac" / "index.m3u8", "-allowed_extensions", "ALL", fmt="s32le")
    assert len(flac) == len(source)
    assert flac == source, f"{key}: FLAC rendition differs from the source"


def test_lossy_source_keeps_its_length(packaged) -> None:  # type: ignore[no-untyped-def]
    """The MP3's own encoder delay is removed by the decoder; the renditions hold the decoded music."""
    for key in ("mp3", "aac-m4a-48k"):
        src, _, _ = packaged[key]
        root, doc = track(packaged, key)
        assert doc["metadata"]["bit_depth"] is None
        source, channels = decode(src)
        frames = len(source) // channels
        rate = int(ffprobe_stream(src)["sample_rate"])
        for r in doc["renditions"]:
            pcm, n = decode(root / r["id"] / "index.m3u8", "-allowed_extensions", "ALL")
            got = len(pcm) // n
            expect = frames * r["sample_rate"] / rate
            assert abs(got - expect) <= 1024 * r["sample_rate"] / CASES[key].aac_rate, (key, r["id"], got, expect)


def loudness(path: Path) -> float:
    """Integrated loudness (LUFS) by ffmpeg's ebur128 filter on the decoded playlist."""
    log = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-allowed_extensions", "ALL", "-i", str(path),
                          "-af", "ebur128", "-f", "null", "-"], capture_output=True, text=True, check=True).stderr
    summary = log[log.rindex("Summary:"):]
    return float(re.search(r"I:\s*(-?[\d.]+) LUFS", summary).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("key", list(CASES))
def test_recorded_loudness_is_what_every_rendition_sounds_like(packaged, key: str) -> None:  # type: ignore[no-untyped-def]
    """track.json's gain is applied by players to whichever rendition they play, so the
    loudness it records must be that of the renditions (the stereo signal), and the
    renditions must agree with each other: switching rendition must not change the level."""
    root, doc = track(packaged, key)
    recorded = doc["loudness"]["integrated_lufs"]
    levels = {r["id"]: loudness(root / r["id"] / "index.m3u8") for r in doc["renditions"]}
    for rid, integrated in levels.items():
        assert abs(integrated - recorded) <= 0.5, f"{rid}: {integrated} LUFS, track.json says {recorded}: {levels}"


def test_surround_downmix_does_not_clip(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """A loud 5.1 source with the same tone in every channel: a plain BS.775 sum reaches
    (1 + 2 x 0.707) x 0.7 = 1.69 x full scale; the normalised matrix keeps the common signal
    at its own level (0.7) in every rendition.  (Soft 50 ms onset, so AAC pre-echo is not at issue.)"""
    src = tmp_path / "loud51.flac"
    tone = "0.7*min(1,20*t)*sin(2*PI*440*t)"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    f"aevalsrc=exprs='{'|'.join([tone] * 6)}':s=48000:d=4:c=5.1", "-c:a", "flac",
                    "-sample_fmt", "s32", str(src)], check=True)
    store = tmp_path / "store"
    result = cli("package", str(src), "--store", str(store), "--track-id", "loud51", "--no-progress", "--protect", "none",
                 check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    root = store / "tracks" / "loud51"
    doc = json.loads((root / "track.json").read_text())
    peaks = {}
    for r in doc["renditions"]:
        pcm, n = decode(root / r["id"] / "index.m3u8", "-allowed_extensions", "ALL")
        assert n == 2
        peaks[r["id"]] = round(max(max(pcm), -min(pcm)), 4)
    assert all(0.65 < p < 0.75 for p in peaks.values()), f"decoded peaks {peaks}, expected about 0.7 (no clipping)"
    assert doc["loudness"]["true_peak_dbtp"] < 0.0
