"""hls.js and shaka-player, in real headless Chromium, play the packaged track from the origin.

Each run plays to the end at a high playbackRate. With a rendition given, ABR
is off and that rendition is forced; the test then checks that the player's
active level/variant is that rendition (codec, place in the ladder) and that
the media it fetched came from that rendition's folder.
"""

from __future__ import annotations

import pytest
from browser_harness import Browser, PlayResult

SOURCE_DURATION = 20.0  # tests/conftest.py's source_track
END_TOLERANCE = 0.5
RATE = 16.0
PLAY_TIMEOUT = 30.0  # a 20-s track at 16x ends in ~2 s; a stalled player fails here
MANIFESTS = {"hls": "master.m3u8", "dash": "manifest.mpd"}
SCENARIOS = [("hls.js", "hls"), ("shaka", "dash"), ("shaka", "hls")]
# rendition -> (codec family, rank by bandwidth among the ladder's renditions of that codec)
LADDER = {
    "aac-96k": ("aac", 0),
    "aac-160k": ("aac", 1),
    "aac-320k": ("aac", 2),
    "flac": ("flac", 0),
}


def codec_family(codec: str | None) -> str:
    codec = (codec or "").lower()
    return "aac" if codec.startswith("mp4a") else codec.split(".")[0]


def level_codec(level: dict) -> str | None:
    return level.get("audioCodec") or level.get("codecs")


def level_bandwidth(level: dict) -> float:
    return float(level.get("bitrate") or level.get("bandwidth") or 0)


def level_id(level: dict) -> str:
    return str(level.get("url") or level.get("originalAudioId"))


def check_rendition(run: PlayResult, player: str, rendition: str, track: str) -> None:
    r, msg = run.result, run.report()
    selected, active = r.get("selected"), r.get("level")
    assert selected, f"{rendition} was never selected\n{msg}"
    assert active, f"player reports no active level\n{msg}"
    assert (selected.get("autoLevelEnabled") is False) or (
        selected.get("abrEnabled") is False
    ), f"ABR still on\n{msg}"
    assert level_id(active) == level_id(selected), (
        f"active level is not the forced {rendition}\n{msg}"
    )
    family, rank = LADDER[rendition]
    assert codec_family(level_codec(active)) == family, (
        f"{rendition}: active codec {level_codec(active)!r}\n{msg}"
    )
    same_codec = sorted(
        {
            level_bandwidth(lv)
            for lv in r["levels"]
            if codec_family(level_codec(lv)) == family
        }
    )
    assert same_codec.index(level_bandwidth(active)) == rank, (
        f"{rendition}: bandwidth {level_bandwidth(active)} is not #{rank} of the {family} levels {same_codec}\n{msg}"
    )
    # What the player fetched: once the forced rendition's media starts, nothing else.
    folder = f"/tracks/{track}/{rendition}/"
    media = run.media_urls()
    ours = [i for i, url in enumerate(media) if folder in url]
    assert ours, f"no media fetched from {folder}: {media}\n{msg}"
    assert any(u.endswith(".m4s") for u in (media[i] for i in ours)), (
        f"no media segment from {folder}\n{msg}"
    )
    stray = [u for u in media[ours[0] :] if folder not in u]
    assert not stray, (
        f"fetched other renditions after switching to {rendition}: {stray}\n{msg}"
    )
    if player == "hls.js":  # the level was forced before loading began
        assert ours[0] == 0, (
            f"hls.js fetched other renditions first: {media[: ours[0]]}\n{msg}"
        )


@pytest.mark.parametrize("rendition", ["", *LADDER], ids=lambda r: r or "abr")
@pytest.mark.parametrize(
    ("player", "protocol"), SCENARIOS, ids=[f"{p}-{q}" for p, q in SCENARIOS]
)
def test_plays_to_the_end(
    browser: Browser,
    page_url: str,
    origin_url: str,
    packaged_track: tuple,
    player: str,
    protocol: str,
    rendition: str,
) -> None:
    _, track = packaged_track
    src = f"{origin_url}/tracks/{track}/{MANIFESTS[protocol]}"
    run = browser.play(
        page_url,
        player=player,
        src=src,
        rendition=rendition,
        rate=RATE,
        timeout=PLAY_TIMEOUT,
    )
    r, msg = run.result, run.report()
    assert run.state == "ended", f"{player} did not play {src} to the end\n{msg}"
    assert r["error"] is None, msg
    assert abs(r["duration"] - SOURCE_DURATION) <= END_TOLERANCE, (
        f"duration {r['duration']}\n{msg}"
    )
    assert abs(r["currentTime"] - r["duration"]) <= END_TOLERANCE, (
        f"ended at {r['currentTime']}\n{msg}"
    )
    if rendition:
        check_rendition(run, player, rendition, track)
    else:  # ABR on: whatever it chose must be one of the ladder's renditions
        folders = {
            u.split(f"/tracks/{track}/")[-1].split("/")[0] for u in run.media_urls()
        }
        assert folders and folders <= set(LADDER), (
            f"media fetched from {folders}\n{msg}"
        )
