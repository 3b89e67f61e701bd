"""bench/player.py: playlists, the ABR rule and playback accounting (pure)."""

from __future__ import annotations

import pytest

from bench.player import (
    Abr,
    Playback,
    PlaylistError,
    parse_master,
    parse_media,
    percentile,
)

MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-STREAM-INF:BANDWIDTH=330000,CODECS="mp4a.40.2"
hls-aes128/aac-320k/index.m3u8?token=abc
#EXT-X-STREAM-INF:BANDWIDTH=100000,CODECS="mp4a.40.2"
hls-aes128/aac-96k/index.m3u8?token=abc
"""

MEDIA = """#EXTM3U
#EXT-X-TARGETDURATION:6
#EXT-X-MAP:URI="init.mp4"
#EXT-X-KEY:METHOD=AES-128,URI="/keys/00112233445566778899aabbccddeeff?token=abc",IV=0x01
#EXTINF:5.944,
seg-00001.m4s
#EXTINF:2.5,
seg-00002.m4s
#EXT-X-ENDLIST
"""


def test_master_variants_resolve_against_the_playlist_and_sort_by_bandwidth() -> None:
    variants = parse_master(MASTER, "http://edge:1/tracks/t/master.m3u8?token=abc")
    assert [v.rendition for v in variants] == ["aac-96k", "aac-320k"]
    assert variants[0].url == "http://edge:1/tracks/t/hls-aes128/aac-96k/index.m3u8?token=abc"


def test_media_playlist_init_key_and_segments() -> None:
    media = parse_media(MEDIA, "http://edge:1/tracks/t/hls-aes128/aac-96k/index.m3u8?token=abc")
    assert media.init_url == "http://edge:1/tracks/t/hls-aes128/aac-96k/init.mp4"
    assert media.key_url == "http://edge:1/keys/00112233445566778899aabbccddeeff?token=abc"
    assert media.segments == ((5.944, "http://edge:1/tracks/t/hls-aes128/aac-96k/seg-00001.m4s"),
                              (2.5, "http://edge:1/tracks/t/hls-aes128/aac-96k/seg-00002.m4s"))


@pytest.mark.parametrize("text", ["", "<html>", "#EXTM3U\n", "#EXTM3U\n#EXTINF:6,\nseg-00001.m4s\n"])
def test_bad_playlists_say_what_is_missing(text: str) -> None:
    with pytest.raises(PlaylistError):
        parse_media(text, "http://x/")
    with pytest.raises(PlaylistError):
        parse_master(text, "http://x/")


def test_abr_follows_the_quality_table_and_steps_down_on_a_low_buffer() -> None:
    abr = Abr(["aac-96k", "aac-160k", "aac-320k", "flac"], estimate=500e3)
    assert abr.choose(60) == "aac-96k"
    abr.estimate = 3e6
    assert abr.choose(60) == "aac-160k"
    abr.estimate = 7e6
    assert abr.choose(60) == "aac-320k"
    abr.estimate = 50e6
    assert abr.choose(60) == "flac"
    assert abr.choose(2) == "aac-320k"  # nearly dry: one step down whatever the estimate
    assert abr.switches == 4


def test_abr_estimate_is_an_ewma_of_segment_throughput() -> None:
    abr = Abr(["aac-96k"], estimate=1e6, alpha=0.5)
    abr.observe(125_000, 0.5)  # 2 Mbit/s
    assert abr.estimate == pytest.approx(1.5e6)


def test_playback_counts_a_rebuffer_when_a_segment_comes_after_the_buffer_ran_dry() -> None:
    play = Playback()
    play.arrived(6.0, now=100.0)  # starts playing
    assert play.buffer(103.0) == pytest.approx(3.0)
    play.arrived(6.0, now=104.0)  # in time
    assert play.rebuffers == 0
    play.arrived(6.0, now=115.0)  # dry at 112: 3 s stall
    assert play.rebuffers == 1 and play.stall_seconds() == pytest.approx(3.0)
    assert play.play_seconds(121.0) == pytest.approx(18.0)
    assert play.rebuffer_ratio(121.0) == pytest.approx(3 / 21)


def test_seek_latency_is_not_a_rebuffer() -> None:
    play = Playback()
    play.arrived(6.0, now=0.0)
    play.seek(2.0)
    play.arrived(6.0, now=5.0)
    assert play.rebuffers == 0 and play.play_seconds(5.0) == pytest.approx(2.0)


def test_wait_for_room_and_speed() -> None:
    play = Playback(speed=2.0)
    play.arrived(60.0, now=0.0)
    assert play.wait_for_room(0.0, target=30.0) == pytest.approx(15.0)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
