"""Packager + origin on loopback: real ffmpeg/ffprobe and independent parsers over HTTP."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import m3u8
import pytest
from mpegdash.parser import MPEGDASHParser

from packager.plan import AAC_FRAME


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


@pytest.fixture(scope="module")
def track_doc(packaged_track: tuple[Path, str]) -> dict:
    store, tid = packaged_track
    return json.loads((store / "tracks" / tid / "track.json").read_text())


@pytest.mark.parametrize("rendition", ["aac-96k", "aac-160k", "aac-320k", "flac"])
def test_ffmpeg_decodes_each_rendition_over_http(origin_url: str, track_doc: dict, rendition: str) -> None:
    url = f"{origin_url}/tracks/{track_doc['track_id']}/{rendition}/index.m3u8"
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", url, "-f", "s16le", "-ac", "2", "-ar", "44100",
                           "-"], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()  # no decoder complaints at all
    decoded = len(proc.stdout) // 4
    source = round(track_doc["metadata"]["duration"] * 44100)
    assert 0 <= decoded - source < AAC_FRAME


def test_ffmpeg_null_decode_of_master_playlist(origin_url: str, track_doc: dict) -> None:
    url = f"{origin_url}/tracks/{track_doc['track_id']}/master.m3u8"
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", url, "-map", "0:a", "-f", "null", "-"],
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()


def test_ffprobe_reads_the_mpd_over_http(origin_url: str, track_doc: dict) -> None:
    url = f"{origin_url}/tracks/{track_doc['track_id']}/manifest.mpd"
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    info = json.loads(out)
    codecs = sorted(s["codec_name"] for s in info["streams"])
    assert codecs == ["aac", "aac", "aac", "flac"]
    assert all(int(s["channels"]) == 2 and int(s["sample_rate"]) == 44100 for s in info["streams"])
    assert float(info["format"]["duration"]) == pytest.approx(track_doc["duration"], abs=0.05)


def test_parsers_over_http_agree_with_track_json(origin_url: str, track_doc: dict) -> None:
    base = f"{origin_url}/tracks/{track_doc['track_id']}"
    master = m3u8.loads(fetch(f"{base}/master.m3u8").decode(), uri=f"{base}/master.m3u8")
    mpd = MPEGDASHParser.parse(fetch(f"{base}/manifest.mpd").decode())
    reps = {r.id: r for s in mpd.periods[0].adaptation_sets for r in s.representations}
    for variant, r in zip(master.playlists, track_doc["renditions"]):
        assert variant.absolute_uri == f"{base}/{r['id']}/index.m3u8"
        assert (variant.stream_info.bandwidth, variant.stream_info.codecs) == (r["bandwidth"], r["codecs"])
        media = m3u8.loads(fetch(variant.absolute_uri).decode(), uri=variant.absolute_uri)
        assert [s.duration for s in media.segments] == pytest.approx([s["duration"] for s in r["segments"]], abs=1e-6)
        for seg, rec in zip(media.segments, r["segments"]):
            assert len(fetch(seg.absolute_uri)) == rec["bytes"]
        assert reps[r["id"]].bandwidth == r["bandwidth"]
        assert len(fetch(f"{base}/{r['id']}/init.mp4")) == r["init_bytes"]
