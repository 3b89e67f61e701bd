"""edge.rewrite: the token goes into gated URIs of HLS playlists and DASH licence URLs, nowhere else."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

from hypothesis import given
from hypothesis import strategies as st

from edge.rewrite import add_token, gated_path, rewrite_hls, rewrite_mpd

KID = "0123456789abcdef0123456789abcdef"
MASTER = (
    "#EXTM3U\n"
    "#EXT-X-VERSION:7\n"
    "#EXT-X-INDEPENDENT-SEGMENTS\n"
    f'#EXT-X-SESSION-KEY:METHOD=AES-128,URI="/keys/{KID}"\n'
    '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="flac",URI="hls-aes128/flac/index.m3u8"\n'
    '#EXT-X-STREAM-INF:BANDWIDTH=100000,CODECS="mp4a.40.2"\n'
    "hls-aes128/aac-96k/index.m3u8\n"
    '#EXT-X-STREAM-INF:BANDWIDTH=170000,CODECS="mp4a.40.2"\n'
    "hls-aes128/aac-160k/index.m3u8\n"
)
MEDIA = (
    "#EXTM3U\r\n"
    "#EXT-X-VERSION:7\r\n"
    "#EXT-X-TARGETDURATION:6\r\n"
    '#EXT-X-MAP:URI="init.mp4"\r\n'
    f'#EXT-X-KEY:METHOD=AES-128,URI="/keys/{KID}",IV=0x00000000000000000000000000000001\r\n'
    "#EXTINF:5.944,\r\n"
    "seg-00001.m4s\r\n"
    "#EXTINF:5.944,\r\n"
    "seg-00002.m4s\r\n"
    "#EXT-X-ENDLIST\r\n"
)
MPD = f"""<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:cenc="urn:mpeg:cenc:2013"
     xmlns:clearkey="http://dashif.org/guidelines/clearKey" xmlns:dashif="https://dashif.org/CPS"
     xmlns:ms="urn:microsoft" type="static">
 <Period>
  <AdaptationSet contentType="audio">
   <ContentProtection schemeIdUri="urn:mpeg:dash:mp4protection:2011" value="cenc" cenc:default_KID="{KID}"/>
   <ContentProtection schemeIdUri="urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e" value="ClearKey1.0">
    <clearkey:Laurl Lic_type="EME-1.0">/license/clearkey</clearkey:Laurl>
    <dashif:Laurl>https://keys.example/license/clearkey?x=1&amp;y=2</dashif:Laurl>
    <ms:laurl licenseUrl="/license/clearkey"/>
   </ContentProtection>
   <Representation id="aac-96k" bandwidth="96000">
    <SegmentTemplate initialization="cenc/aac-96k/init.mp4" media="cenc/aac-96k/seg-$Number%05d$.m4s"/>
   </Representation>
  </AdaptationSet>
 </Period>
</MPD>
"""
TOKEN = "v1.abc-DEF_123.sig~x"


def tokens_of(uri: str) -> list[str]:
    return parse_qs(urlsplit(uri).query).get("token", [])


def uris(playlist: str) -> list[str]:
    found = []
    for line in playlist.splitlines():
        if line.startswith("#"):
            found += [part.split('"')[1] for part in line.split("URI=")[1:]]
        elif line.strip():
            found.append(line.strip())
    return found


def test_master_variants_media_and_session_key_carry_the_token() -> None:
    out = rewrite_hls(MASTER.encode(), "/tracks/T/master.m3u8", TOKEN).decode()
    for uri in uris(out):
        assert tokens_of(uri) == [TOKEN], uri
    assert "hls-aes128/aac-96k/index.m3u8?token=v1.abc-DEF_123.sig~x\n" in out
    assert f'URI="/keys/{KID}?token=' in out
    assert out.count("\n") == MASTER.count("\n")


def test_media_playlist_key_uri_only_and_line_endings_kept() -> None:
    out = rewrite_hls(MEDIA.encode(), "/tracks/T/hls-aes128/aac-96k/index.m3u8", TOKEN).decode()
    assert f'URI="/keys/{KID}?token={TOKEN}",IV=0x00000000000000000000000000000001\r\n' in out
    assert '#EXT-X-MAP:URI="init.mp4"\r\n' in out  # init segments stay token-free
    assert "seg-00001.m4s\r\n" in out and "token" not in out.split("#EXTINF")[1]
    assert out.replace(f"?token={TOKEN}", "") == MEDIA


def test_nothing_to_change_returns_the_same_object() -> None:
    clear = b"#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:6,\nseg-00001.m4s\n#EXT-X-ENDLIST\n"
    assert rewrite_hls(clear, "/tracks/T/aac-96k/index.m3u8", TOKEN) is clear
    not_utf8 = b"#EXTM3U\n\xff\xfe/keys/x\n"
    assert rewrite_hls(not_utf8, "/tracks/T/master.m3u8", TOKEN) is not_utf8
    assert rewrite_mpd(not_utf8, "http://e/tracks/T/manifest.mpd", TOKEN) is not_utf8
    data_key = b'#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="data:text/plain;base64,AAAA"\n'
    assert rewrite_hls(data_key, "/tracks/T/aac-96k/index.m3u8", TOKEN) is data_key


def test_add_token_encodes_and_replaces() -> None:
    assert add_token("/keys/k", "a b&c=d/+") == "/keys/k?token=a%20b%26c%3Dd%2F%2B"
    assert add_token("/keys/k?token=old&x=1#frag", "new") == "/keys/k?x=1&token=new#frag"
    assert tokens_of(add_token("/keys/k?token=old&token=older", "new")) == ["new"]


def test_mpd_laurls_absolute_with_token_and_valid_xml() -> None:
    base = "http://127.0.0.1:8091/tracks/T/manifest.mpd"
    out = rewrite_mpd(MPD.encode(), base, "a&b")
    root = ET.fromstring(out)
    ns = {"ck": "http://dashif.org/guidelines/clearKey", "dashif": "https://dashif.org/CPS", "ms": "urn:microsoft"}
    clearkey = root.find(".//ck:Laurl", ns)
    assert clearkey is not None and clearkey.text == "http://127.0.0.1:8091/license/clearkey?token=a%26b"
    dashif = root.find(".//dashif:Laurl", ns)
    assert dashif is not None and dashif.text == "https://keys.example/license/clearkey?x=1&y=2&token=a%26b"
    ms = root.find(".//ms:laurl", ns)
    assert ms is not None and ms.get("licenseUrl") == "http://127.0.0.1:8091/license/clearkey?token=a%26b"
    assert b'media="cenc/aac-96k/seg-$Number%05d$.m4s"' in out  # segments untouched
    assert out.count(b"token=") == 3


def test_gated_paths() -> None:
    assert gated_path("/tracks/T/master.m3u8") and gated_path(f"/keys/{KID}") and gated_path("/license/clearkey")
    assert gated_path("/tracks/T/cenc/aac-96k/index.m3u8")
    assert not gated_path("/tracks/T/cenc/aac-96k/init.mp4") and not gated_path("/tracks/T/aac-96k/seg-00001.m4s")
    assert not gated_path("/tracks/../x") and not gated_path("/elsewhere")


@given(st.text(min_size=1, max_size=80))
def test_any_token_round_trips_through_every_gated_uri(token: str) -> None:
    for body, base in ((MASTER, "/tracks/T/master.m3u8"), (MEDIA, "/tracks/T/hls-aes128/aac-96k/index.m3u8")):
        out = rewrite_hls(body.encode(), base, token).decode()
        assert out.count("\n") == body.count("\n")  # no line was split or joined
        for uri in uris(out):
            gated = gated_path(urlsplit(uri).path) or uri.startswith("hls-aes128/")
            assert tokens_of(uri) == ([token] if gated else []), (uri, token)
    out_mpd = rewrite_mpd(MPD.encode(), "http://e:1/tracks/T/manifest.mpd", token)
    clearkey = ET.fromstring(out_mpd).find(".//{http://dashif.org/guidelines/clearKey}Laurl")
    assert clearkey is not None and clearkey.text is not None and tokens_of(clearkey.text) == [token]
