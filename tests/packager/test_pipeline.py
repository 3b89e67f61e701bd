"""The packager end to end on real audio: decode what it wrote with ffmpeg."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import xxhash

from packager.plan import AAC_FRAME


def decoded_samples(playlist: Path, rate: int) -> int:
    """Samples per channel ffmpeg decodes from a media playlist on disk."""
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-allowed_extensions", "ALL", "-i", str(playlist),
         "-f", "s16le", "-ac", "2", "-ar", str(rate), "-"],
        capture_output=True, check=True,
    ).stdout
    return len(pcm) // 4


def test_every_rendition_decodes_to_source_length(packaged_track: tuple[Path, str]) -> None:
    store, tid = packaged_track
    root = store / "tracks" / tid
    doc = json.loads((root / "track.json").read_text())
    source_samples = round(doc["metadata"]["duration"] * 44100)
    assert source_samples == 20 * 44100
    for r in doc["renditions"]:
        n = decoded_samples(root / r["id"] / "index.m3u8", 44100)
        assert 0 <= n - source_samples < AAC_FRAME, f"{r['id']}: decoded {n}, source {source_samples}"


def test_files_match_catalog_hashes(packaged_track: tuple[Path, str]) -> None:
    store, tid = packaged_track
    root = store / "tracks" / tid
    doc = json.loads((root / "track.json").read_text())
    for r in doc["renditions"]:
        init = (root / r["id"] / "init.mp4").read_bytes()
        assert (len(init), xxhash.xxh3_64_hexdigest(init)) == (r["init_bytes"], r["init_xxh3"])
        for s in r["segments"]:
            body = (root / r["id"] / s["name"]).read_bytes()
            assert xxhash.xxh3_64_hexdigest(body) == s["xxh3"]
    assert not list((store / "tracks").glob(".tmp-*")), "staging directories left behind"


def test_catalog_record_has_probe_and_loudness(packaged_track: tuple[Path, str]) -> None:
    store, tid = packaged_track
    doc = json.loads((store / "tracks" / tid / "track.json").read_text())
    meta = doc["metadata"]
    assert (meta["title"], meta["artist"], meta["album"]) == ("Sunrise", "Legato Test Ensemble", "Synthesised Sketches")
    assert (meta["sample_rate"], meta["channels"], meta["bit_depth"], meta["codec"]) == (44100, 2, 24, "flac")
    loud = doc["loudness"]
    assert -30 < loud["integrated_lufs"] < -5 and loud["true_peak_dbtp"] < 0
    expected = round(min(-14 - loud["integrated_lufs"], -1 - loud["true_peak_dbtp"]), 2)
    assert loud["gain_db"] == expected
    assert [r["id"] for r in doc["renditions"]] == ["aac-96k", "aac-160k", "aac-320k", "flac"]
    durations = {tuple(s["duration"] for s in r["segments"]) for r in doc["renditions"]}
    assert len(durations) == 1, "segment boundaries differ between renditions"


def test_rerun_is_a_no_op(packaged_track: tuple[Path, str], source_track: Path, cli) -> None:  # type: ignore[no-untyped-def]
    store, tid = packaged_track
    before = {p: p.stat().st_mtime_ns for p in (store / "tracks" / tid).rglob("*")}
    out = cli("package", str(source_track), "--store", str(store), "--track-id", tid, "--no-progress", "--protect", "none").stdout
    assert "0 packaged, 1 skipped, 0 failed" in out
    assert {p: p.stat().st_mtime_ns for p in (store / "tracks" / tid).rglob("*")} == before
