"""HLS and DASH writers, read back by independent parsers (m3u8, mpegdash)."""

from __future__ import annotations

import json
from pathlib import Path

import m3u8
import pytest
from mpegdash.parser import MPEGDASHParser

from packager import catalog, dash, hls


def _rendition(rid: str, codec: str, durations: list[int], rate: int = 44100, priming: int = 1024) -> catalog.Rendition:
    segs, t = [], 0
    for n, d in enumerate(durations, start=1):
        pres = (d - (priming if n == 1 else 0)) / rate
        segs.append(catalog.Segment(n, round(pres, 6), t, d, 1000 + n, f"{n:016x}"))
        t += d
    return catalog.Rendition(rid, codec, 96000 if codec == "aac" else 0, rate, 2, None, priming, 700, "0" * 16,
                             tuple(segs))


def _track() -> catalog.Track:
    aac = _rendition("aac-96k", "aac", [267264, 266240, 266240, 83280])
    flac = _rendition("flac", "flac", [266240, 266240, 266240, 83280], priming=0)
    return catalog.Track("t1", 20.0, 6.0, (aac, flac))


def test_timeline_run_length_codes_equal_durations() -> None:
    r = _rendition("a", "aac", [10, 8, 8, 8, 3], priming=0)
    assert dash.timeline(r) == [{"t": "0", "d": "10"}, {"d": "8", "r": "2"}, {"d": "3"}]


def test_master_playlist_lists_every_rendition_with_codecs() -> None:
    playlist = m3u8.loads(hls.master_playlist(_track()))
    assert playlist.is_variant
    assert [p.uri for p in playlist.playlists] == ["aac-96k/index.m3u8", "flac/index.m3u8"]
    assert [p.stream_info.codecs for p in playlist.playlists] == ["mp4a.40.2", "fLaC"]
    for p, r in zip(playlist.playlists, _track().renditions):
        assert p.stream_info.bandwidth == r.bandwidth
        assert p.stream_info.average_bandwidth == r.average_bandwidth


def test_media_playlist_is_vod_with_map_and_rfc_target_duration() -> None:
    r = _track().renditions[0]
    playlist = m3u8.loads(hls.media_playlist(r))
    assert playlist.is_endlist and playlist.playlist_type == "vod"
    assert playlist.segment_map[0].uri == "init.mp4"
    assert [s.uri for s in playlist.segments] == [s.name for s in r.segments]
    assert [s.duration for s in playlist.segments] == pytest.approx([s.duration for s in r.segments])
    assert all(round(s.duration) <= playlist.target_duration for s in playlist.segments)


def test_mpd_groups_codecs_into_adaptation_sets() -> None:
    mpd = MPEGDASHParser.parse(dash.mpd(_track()))
    sets = mpd.periods[0].adaptation_sets
    assert [[r.id for r in s.representations] for s in sets] == [["aac-96k"], ["flac"]]
    aac = sets[0].representations[0]
    tmpl = aac.segment_templates[0]
    assert tmpl.presentation_time_offset == 1024 and tmpl.timescale == 44100
    assert aac.audio_channel_configurations[0].value == "2"


# --- against a real packaged track -------------------------------------------

def _expand(timeline) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    out, t = [], 0
    for s in timeline.Ss:
        t = s.t if s.t is not None else t
        for _ in range((s.r or 0) + 1):
            out.append((t, s.d))
            t += s.d
    return out


def test_real_track_manifests_agree_with_track_json(packaged_track: tuple[Path, str]) -> None:
    store, tid = packaged_track
    root = store / "tracks" / tid
    doc = json.loads((root / "track.json").read_text())
    master = m3u8.load(str(root / "master.m3u8"))
    assert [p.uri for p in master.playlists] == [f"{r['id']}/index.m3u8" for r in doc["renditions"]]
    mpd = MPEGDASHParser.parse(str(root / "manifest.mpd"))
    reps = {r.id: r for s in mpd.periods[0].adaptation_sets for r in s.representations}
    assert set(reps) == {r["id"] for r in doc["renditions"]}
    for variant, r in zip(master.playlists, doc["renditions"]):
        assert variant.stream_info.bandwidth == r["bandwidth"]
        assert variant.stream_info.codecs == r["codecs"]
        media = m3u8.load(str(root / r["id"] / "index.m3u8"))
        assert [s.uri for s in media.segments] == [s["name"] for s in r["segments"]]
        assert [s.duration for s in media.segments] == pytest.approx([s["duration"] for s in r["segments"]], abs=1e-6)
        rep = reps[r["id"]]
        assert rep.bandwidth == r["bandwidth"] and rep.codecs == r["codecs"]
        assert int(rep.audio_sampling_rate) == r["sample_rate"]
        tmpl = rep.segment_templates[0]
        assert _expand(tmpl.segment_timelines[0]) == [(s["media_start"], s["media_duration"]) for s in r["segments"]]
        for s in r["segments"]:
            assert (root / r["id"] / s["name"]).stat().st_size == s["bytes"]
    assert sum(s["duration"] for s in doc["renditions"][0]["segments"]) == pytest.approx(doc["duration"], abs=1e-5)
