"""Protection end to end: a protected track through origin (key service) -> regional -> edge, played by ffmpeg.

With a valid token ffmpeg decodes the HLS AES-128 stream through the edge
(the edge carries the token from the master playlist into the variant
playlists and the key URIs), and the PCM equals that of the same source
packaged in the clear.  Without a token, with an expired one, one for
another track or a tampered one it cannot get the key.  No tier ever stores
a key, and a segment fetched from any tier is not decodable without it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from protected_tiers import (
    CLEAR,
    TRACK,
    Pack,
    Tiers,
    package_protected,
    protected_tiers,
)

RENDITIONS = ("aac-96k", "aac-160k", "aac-320k", "flac")  # master playlist order
ADMIN = "purge-token-for-protected-tests"


def get(url: str, method: str = "GET", data: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def decode(*inputs: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    args = ["ffmpeg", "-nostdin", "-v", "error"]
    for item in inputs:
        args += ["-i", item]
    return subprocess.run([*args, *extra, "-f", "s16le", "-ac", "2", "-ar", "44100", "-"], capture_output=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory, source_track: Path) -> Pack:
    return package_protected(tmp_path_factory.mktemp("protected"), source_track)


@pytest.fixture(scope="module")
def tiers(pack: Pack) -> Iterator[Tiers]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEGATO_ADMIN_TOKEN", ADMIN)
        with protected_tiers(pack) as t:
            yield t


@pytest.fixture(scope="module")
def clear_pcm(tiers: Tiers) -> dict[str, bytes]:
    """PCM of every rendition of the clear copy (through the edge, with a token for it)."""
    token = tiers.pack.token(CLEAR, session="clear")
    out = {}
    for r in RENDITIONS:
        proc = decode(f"{tiers.edge.url}/tracks/{CLEAR}/{r}/index.m3u8?token={token}")
        assert proc.returncode == 0 and proc.stdout, proc.stderr.decode()
        out[r] = proc.stdout
    return out


def kid(pack: Pack) -> str:
    return json.loads((pack.store / "tracks" / TRACK / "track.json").read_text())["renditions"][0]["kid"]


def test_ffmpeg_decodes_through_the_edge_with_a_token_as_the_clear_stream(tiers: Tiers,
                                                                          clear_pcm: dict[str, bytes]) -> None:
    token = tiers.pack.token()
    master = f"{tiers.edge.url}/tracks/{TRACK}/master.m3u8?token={token}"
    for index in (1, 3):  # aac-160k and flac, chosen through the master playlist as a player would
        proc = decode(master, extra=("-map", f"0:a:{index}"))
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
        assert proc.stdout == clear_pcm[RENDITIONS[index]], RENDITIONS[index]
    for r in ("aac-96k", "aac-320k"):  # and a media playlist requested directly
        proc = decode(f"{tiers.edge.url}/tracks/{TRACK}/hls-aes128/{r}/index.m3u8?token={token}")
        assert proc.returncode == 0 and proc.stdout == clear_pcm[r], proc.stderr.decode()


def test_without_a_good_token_ffmpeg_cannot_get_the_key(tiers: Tiers) -> None:
    pack, now = tiers.pack, time.time()
    good = pack.token(session="tamper")
    version, key_id, claims, sig = good.split(".")
    tampered = f"{version}.{key_id}.{claims[:12]}{'A' if claims[12] != 'A' else 'B'}{claims[13:]}.{sig}"
    bad = {
        "no token": "",
        "expired": pack.token(now=now - 3600, ttl=300),
        "another track": pack.token(CLEAR),
        "tampered": tampered,
        "foreign signer": pack.token(key=Ed25519PrivateKey.generate()),
    }
    for why, token in bad.items():
        query = f"?token={token}" if token else ""
        proc = decode(f"{tiers.edge.url}/tracks/{TRACK}/master.m3u8{query}", extra=("-map", "0:a:0"))
        assert proc.returncode != 0 and proc.stdout == b"", why
        # the key itself, asked for directly with that token, is refused too (by the edge, or for a token of
        # another track, which the edge cannot tell from /keys/{kid}, by the key service behind it)
        status, _, body = get(f"{tiers.edge.url}/keys/{kid(pack)}{query}")
        assert status in (401, 403) and len(body) != 16, (why, status, body)
    # through the regional (no gate, no rewriting) the playlists come, but the key service refuses the key
    proc = decode(f"{tiers.regional.url}/tracks/{TRACK}/hls-aes128/aac-160k/index.m3u8")
    assert proc.returncode != 0 or proc.stdout == b"", "decoded without a key"
    assert b"401" in proc.stderr or b"key" in proc.stderr.lower(), proc.stderr.decode()


def test_the_key_service_checks_the_track_behind_the_edge(tiers: Tiers) -> None:
    other = tiers.pack.token(CLEAR, session="other-track")
    status, _, body = get(f"{tiers.edge.url}/keys/{kid(tiers.pack)}?token={other}")
    assert status == 403 and json.loads(body)["error"], body
    status, headers, key = get(f"{tiers.edge.url}/keys/{kid(tiers.pack)}?token={tiers.pack.token(session='k')}")
    assert status == 200 and len(key) == 16 and headers["Cache-Control"] == "no-store"


def test_licence_through_the_edge(tiers: Tiers) -> None:
    """The ClearKey licence a browser's CDM asks for: a JWK set for the requested KID."""
    import base64

    k = bytes.fromhex(kid(tiers.pack))
    b64 = base64.urlsafe_b64encode(k).rstrip(b"=").decode()
    request = json.dumps({"kids": [b64], "type": "temporary"}).encode()
    url = f"{tiers.edge.url}/license/clearkey?token={tiers.pack.token(session='licence')}"
    status, headers, body = get(url, "POST", request, {"Content-Type": "application/json"})
    assert status == 200 and headers["Cache-Control"] == "no-store", body
    keys = json.loads(body)["keys"]
    assert [entry["kid"] for entry in keys] == [b64] and keys[0]["kty"] == "oct"
    status, _, _ = get(f"{tiers.edge.url}/license/clearkey", "POST", request, {"Content-Type": "application/json"})
    assert status == 401


def test_no_tier_stores_a_key(tiers: Tiers) -> None:
    key = get(f"{tiers.edge.url}/keys/{kid(tiers.pack)}?token={tiers.pack.token(session='store-check')}")[2]
    assert len(key) == 16
    for path in sorted(p for p in tiers.pack.tmp.joinpath("regional").rglob("*") if p.is_file()) + sorted(
            p for p in tiers.pack.tmp.joinpath("edge").rglob("*") if p.is_file()):
        assert key not in path.read_bytes(), f"the content key is in {path}"
    for node in (tiers.regional, tiers.edge):
        health = json.loads(get(node.url + "/healthz")[2])
        assert health["store"]["objects"] > 0  # segments and manifests are cached...
        for doc in ({"path": f"/keys/{kid(tiers.pack)}"}, {"path": "/license/clearkey"}, {"prefix": "/keys/"}):
            status, _, body = get(node.url + "/admin/purge", "POST", json.dumps(doc).encode(),
                                  {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"})
            assert status == 400, body  # ...keys and licences are not objects of the cache at all
        assert "legato_store_objects" in get(node.url + "/metrics")[2].decode()


@pytest.mark.parametrize("scheme", ["hls-aes128", "cenc"])
def test_a_segment_from_any_tier_is_not_decodable_without_the_key(tiers: Tiers, tmp_path: Path,
                                                                  scheme: str) -> None:
    clear = tmp_path / "clear.mp4"
    clear.write_bytes(b"".join(get(f"{tiers.origin.url}/tracks/{CLEAR}/aac-160k/{name}")[2]
                               for name in ("init.mp4", "seg-00001.m4s")))
    clear_pcm = decode(str(clear)).stdout
    assert len(clear_pcm) > 44100  # the same segment in the clear is plainly decodable
    for node in (tiers.origin, tiers.regional, tiers.edge):
        init, seg = (get(f"{node.url}/tracks/{TRACK}/{scheme}/aac-160k/{name}")
                     for name in ("init.mp4", "seg-00001.m4s"))
        assert init[0] == seg[0] == 200  # segments are not gated: anyone may fetch (and cache) them
        sample = tmp_path / f"{scheme}-{node.url.rsplit(':', 1)[1]}.mp4"
        sample.write_bytes(init[2] + seg[2])
        proc = decode(str(sample))
        assert proc.stdout == b"", f"{scheme} segment from {node.url} decoded without the key"
    if scheme == "cenc":  # with the key it is the clear audio: the test above is not vacuous
        key = get(f"{tiers.edge.url}/keys/{kid(tiers.pack)}?token={tiers.pack.token(session='cenc-key')}")[2]
        proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-decryption_key", key.hex(), "-i", str(sample),
                               "-f", "s16le", "-ac", "2", "-ar", "44100", "-"], capture_output=True, timeout=60,
                              check=False)
        assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(clear_pcm).digest(), proc.stderr.decode()
