"""HLS and DASH writers, read back by independent parsers (m3u8, mpegdash)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from xml.etree import ElementTree as ET

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


# --- protected renditions ---------------------------------------------------------

KID = "00112233445566778899aabbccddeeff"


def _protected_track(scheme: str, kids: tuple[str, str] = (KID, KID)) -> catalog.Track:
    out = []
    for r, kid in zip(_track().renditions, kids):
        segs = tuple(dataclasses.replace(s, iv=f"{s.number:032x}" if scheme == "hls-aes128" else None)
                     for s in r.segments)
        out.append(dataclasses.replace(r, segments=segs, scheme=scheme, kid=kid))
    return catalog.Track("t1", 20.0, 6.0, tuple(out))


def test_hls_aes128_playlists() -> None:
    track = _protected_track("hls-aes128")
    master = m3u8.loads(hls.master_playlist(track))
    assert [p.uri for p in master.playlists] == ["hls-aes128/aac-96k/index.m3u8", "hls-aes128/flac/index.m3u8"]
    text = hls.media_playlist(track.renditions[0])
    lines = text.splitlines()
    # the init segment is clear: EXT-X-MAP comes before any key tag (RFC 8216 §4.3.2.4)
    assert lines.index('#EXT-X-MAP:URI="init.mp4"') < min(i for i, ln in enumerate(lines) if ln.startswith("#EXT-X-KEY"))
    playlist = m3u8.loads(text)
    assert playlist.segment_map[0].uri == "init.mp4"
    for seg, rseg in zip(playlist.segments, track.renditions[0].segments):
        assert (seg.key.method, seg.key.uri, seg.key.iv) == ("AES-128", f"/keys/{KID}", f"0x{rseg.number:032x}")
    assert len({s.key.iv for s in playlist.segments}) == len(playlist.segments)


def test_hls_refuses_cenc_and_missing_ivs() -> None:
    with pytest.raises(ValueError):
        hls.media_playlist(_protected_track("cenc").renditions[0])
    broken = dataclasses.replace(_track().renditions[0], scheme="hls-aes128", kid=KID)
    with pytest.raises(ValueError, match="no key id or IV"):
        hls.media_playlist(broken)


NS = {"mpd": dash.NS, "cenc": dash.CENC_NS, "clearkey": dash.CLEARKEY_NS}


def _check_protection(parent: ET.Element, kid: str) -> None:
    cps = parent.findall("mpd:ContentProtection", NS)
    assert [cp.get("schemeIdUri") for cp in cps] == ["urn:mpeg:dash:mp4protection:2011",
                                                    "urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e"]
    assert cps[0].get("value") == "cenc"
    assert cps[0].get(f"{{{dash.CENC_NS}}}default_KID") == str(uuid.UUID(kid))
    laurl = cps[1].find("clearkey:Laurl", NS)
    assert laurl is not None and laurl.text == "/license/clearkey" and laurl.get("Lic_type") == "EME-1.0"
    # the PSSH is in the init segment only: dash.js would pass an MPD's ClearKey cenc:pssh to EME as
    # "keyids" init data, which Chromium refuses (tests/browser/test_protected_players.py plays it)
    assert parent.find(".//cenc:pssh", NS) is None


def test_cenc_mpd_content_protection_on_the_adaptation_sets() -> None:
    text = dash.mpd(_protected_track("cenc"))
    root = ET.fromstring(text)
    sets = root.findall("mpd:Period/mpd:AdaptationSet", NS)
    assert len(sets) == 2
    for aset in sets:
        _check_protection(aset, KID)
        assert aset[0].tag == f"{{{dash.NS}}}ContentProtection"  # first, as the schema orders them
        for rep in aset.findall("mpd:Representation", NS):
            assert not rep.findall("mpd:ContentProtection", NS)
            tmpl = rep.find("mpd:SegmentTemplate", NS)
            assert tmpl is not None
            assert tmpl.get("initialization") == "cenc/$RepresentationID$/init.mp4"
            assert tmpl.get("media") == "cenc/$RepresentationID$/seg-$Number%05d$.m4s"
    mpd = MPEGDASHParser.parse(text)  # an independent parser still reads it
    assert [[r.id for r in s.representations] for s in mpd.periods[0].adaptation_sets] == [["aac-96k"], ["flac"]]


def test_cenc_mpd_per_rendition_keys_go_on_the_representations() -> None:
    other = "ffeeddccbbaa99887766554433221100"
    aac = _protected_track("cenc").renditions[0]
    track = catalog.Track("t1", 20.0, 6.0, (aac, dataclasses.replace(aac, id="aac-160k", kid=other)))
    root = ET.fromstring(dash.mpd(track))
    (aset,) = root.findall("mpd:Period/mpd:AdaptationSet", NS)
    assert not aset.findall("mpd:ContentProtection", NS)
    reps = aset.findall("mpd:Representation", NS)
    for rep, kid in zip(reps, (KID, other)):
        _check_protection(rep, kid)


def test_writers_pick_their_scheme_from_a_track_with_both() -> None:
    both = catalog.Track("t1", 20.0, 6.0, _protected_track("hls-aes128").renditions
                         + _protected_track("cenc").renditions)
    assert all(p.uri.startswith("hls-aes128/") for p in m3u8.loads(hls.master_playlist(both)).playlists)
    assert "hls-aes128/" not in dash.mpd(both) and "cenc/$RepresentationID$" in dash.mpd(both)
    with pytest.raises(ValueError, match="no rendition for DASH"):
        dash.mpd(_protected_track("hls-aes128"))


def test_catalog_round_trip_keeps_scheme_kid_and_iv_and_clear_records_unchanged() -> None:
    track = _protected_track("hls-aes128")
    doc = catalog.to_json(track)
    assert doc["renditions"][0]["path"] == "hls-aes128/aac-96k" and doc["renditions"][0]["kid"] == KID
    assert catalog.from_json(json.loads(json.dumps(doc))) == track
    clear = catalog.to_json(_track())
    assert all("scheme" not in r and "kid" not in r for r in clear["renditions"])
    assert all("iv" not in s for r in clear["renditions"] for s in r["segments"])
    assert catalog.from_json(clear) == _track()
