"""Protected playback in real headless Chromium, through a token-gated edge.

shaka-player and dash.js play the CENC DASH stream with EME ClearKey, getting
their licence from our /license/clearkey through the edge (the licence URL is
the one the edge wrote into the MPD, token included); hls.js plays the HLS
AES-128 stream, fetching /keys/{kid} through the edge.  With a bad token,
all report a key or licence error and play nothing: a manifest fetched with
a good token but a key or licence asked for with a tampered or expired one,
and a manifest asked for with a bad token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_harness import Browser, PlayResult
from protected_tiers import (
    CLEAR,
    TRACK,
    Pack,
    Tiers,
    package_protected,
    protected_tiers,
)

SOURCE_DURATION = 20.0
END_TOLERANCE = 0.5
RATE = 16.0
PLAY_TIMEOUT = 45.0
MANIFESTS = {"hls.js": "master.m3u8", "shaka": "manifest.mpd", "dash.js": "manifest.mpd"}
DASH = ("shaka", "dash.js")  # CENC DASH with an EME ClearKey licence
# the error each player reports for a refused licence
LICENCE_ERRORS = {"shaka": "code 6007", "dash.js": "code 114"}  # LICENSE_REQUEST_FAILED, MEDIA_KEY_MESSAGE_LICENSER_ERROR
@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, source_track: Path) -> Iterator[Tiers]:
    pack = package_protected(tmp_path_factory.mktemp("protected-browser"), source_track)
    with protected_tiers(pack) as t:
        yield t


def tampered(pack: Pack, session: str) -> str:
    version, key_id, claims, sig = pack.token(session=session).split(".")
    return f"{version}.{key_id}.{claims[:12]}{'A' if claims[12] != 'A' else 'B'}{claims[13:]}.{sig}"


def played_nothing(run: PlayResult) -> None:
    msg = run.report()
    assert run.state == "error", f"expected an error\n{msg}"
    # never 'playing'; the clock may sit a hair past 0 where a player put the start (shaka: 0.1)
    assert not any(what.startswith("playing") for _, what in run.result.get("events", [])), msg
    assert run.result["currentTime"] < 0.5, f"played to {run.result['currentTime']}\n{msg}"


@pytest.mark.parametrize("player", ["shaka", "dash.js", "hls.js"])
def test_plays_the_protected_stream_to_the_end(browser: Browser, page_url: str, tiers: Tiers, player: str) -> None:
    token = tiers.pack.token(session=f"browser-{player}")
    src = f"{tiers.edge.url}/tracks/{TRACK}/{MANIFESTS[player]}?token={token}"
    run = browser.play(page_url, player=player, src=src, rate=RATE, timeout=PLAY_TIMEOUT)
    r, msg = run.result, run.report()
    assert run.state == "ended", f"{player} did not play {src} to the end\n{msg}"
    assert r["error"] is None, msg
    assert abs(r["duration"] - SOURCE_DURATION) <= END_TOLERANCE, msg
    assert abs(r["currentTime"] - r["duration"]) <= END_TOLERANCE, msg
    scheme = "cenc" if player in DASH else "hls-aes128"
    media = run.media_urls()
    assert media and all(f"/tracks/{TRACK}/{scheme}/" in u for u in media), f"media from {media}\n{msg}"
    assert not any("token=" in u for u in media), "segments must stay token-free (shared, cacheable)"
    asked = "/license/clearkey?token=" if player in DASH else "/keys/"
    keys = [u for u in r["resources"] if asked in u]
    assert keys and all(u.startswith(tiers.edge.url) and "token=" in u for u in keys), f"{keys}\n{msg}"


@pytest.mark.parametrize("player", ["shaka", "dash.js"])
def test_a_bad_licence_token_plays_nothing(browser: Browser, page_url: str, tiers: Tiers, player: str) -> None:
    pack = tiers.pack
    src = f"{tiers.edge.url}/tracks/{TRACK}/manifest.mpd?token={pack.token(session=f'{player}-bad')}"
    for bad in (tampered(pack, f"{player}-tampered"), pack.token(session=f"{player}-expired", now=time.time() - 3600)):
        run = browser.play(page_url, player=player, src=src, rate=RATE, timeout=PLAY_TIMEOUT,
                           extra={"license": f"{tiers.edge.url}/license/clearkey?token={bad}"})
        played_nothing(run)
        assert LICENCE_ERRORS[player] in run.result["error"], f"not a licence error\n{run.report()}"


def test_dashjs_plays_the_clear_dash_stream(browser: Browser, page_url: str, tiers: Tiers) -> None:
    """The control for the dash.js CENC cases: the same page and edge with the clear track."""
    src = f"{tiers.edge.url}/tracks/{CLEAR}/manifest.mpd?token={tiers.pack.token(CLEAR, session='dashjs-clear')}"
    run = browser.play(page_url, player="dash.js", src=src, rate=RATE, timeout=PLAY_TIMEOUT)
    r, msg = run.result, run.report()
    assert run.state == "ended" and r["error"] is None, f"dash.js did not play {src} to the end\n{msg}"
    assert abs(r["currentTime"] - SOURCE_DURATION) <= END_TOLERANCE, msg
    media = run.media_urls()
    assert media and all(f"/tracks/{CLEAR}/" in u and "/cenc/" not in u for u in media), f"{media}\n{msg}"


def test_hlsjs_with_a_bad_key_token_plays_nothing(browser: Browser, page_url: str, tiers: Tiers) -> None:
    pack = tiers.pack
    src = f"{tiers.edge.url}/tracks/{TRACK}/master.m3u8?token={pack.token(session='hls-bad')}"
    for bad in (tampered(pack, "hls-tampered"), pack.token(session="hls-expired", now=time.time() - 3600)):
        run = browser.play(page_url, player="hls.js", src=src, rate=RATE, timeout=PLAY_TIMEOUT,
                           extra={"keytoken": bad})
        played_nothing(run)
        assert "keyLoadError" in run.result["error"], f"not a key error\n{run.report()}"


@pytest.mark.parametrize("player", ["shaka", "hls.js"])
def test_a_bad_token_on_the_manifest_plays_nothing(browser: Browser, page_url: str, tiers: Tiers,
                                                   player: str) -> None:
    src = f"{tiers.edge.url}/tracks/{TRACK}/{MANIFESTS[player]}?token={tampered(tiers.pack, 'manifest')}"
    run = browser.play(page_url, player=player, src=src, rate=RATE, timeout=PLAY_TIMEOUT)
    played_nothing(run)
    expected = "Shaka Error 1001" if player == "shaka" else "manifestLoadError"  # BAD_HTTP_STATUS: the 401
    assert expected in run.result["error"], run.report()
    assert any("401" in line for line in run.console) or "401" in run.result["error"], run.report()
