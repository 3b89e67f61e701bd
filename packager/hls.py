"""HLS playlists (RFC 8216) from a catalog Track: pure text in, text out.

A protected track's playlists point at its ``hls-aes128`` renditions: every
media segment is encrypted whole with AES-128-CBC (RFC 8216 §5.2) under the
rendition's key, with its own IV, so an ``EXT-X-KEY`` tag with an explicit
``IV`` precedes each segment.  The init segment is clear: ``EXT-X-MAP`` comes
before the first ``EXT-X-KEY``, and a key tag applies only to what follows it
(RFC 8216 §4.3.2.4), which is how ffmpeg, hls.js and Safari read it.  The key
URI is the absolute path ``/keys/{kid}``: the same on every tier, and the edge
appends the listener's token to it.
"""

from __future__ import annotations

from legato.urls import key_path
from packager.catalog import Rendition, Track
from packager.plan import target_duration

VERSION = 7  # EXT-X-MAP in a playlist without I-frames needs 6; 7 for fMP4 as Apple recommends
SCHEMES = (None, "hls-aes128")  # what HLS playlists may list: clear or whole-segment AES-128


def master_playlist(track: Track) -> str:
    """The multivariant playlist: one variant per rendition, in ladder order (RFC 8216 §4.3.4.2)."""
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in track.renditions_for(SCHEMES):
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={r.bandwidth},AVERAGE-BANDWIDTH={r.average_bandwidth},'
                     f'CODECS="{r.codecs}"')
        lines.append(f"{r.path}/index.m3u8")
    return "\n".join(lines) + "\n"


def media_playlist(rendition: Rendition) -> str:
    """A VOD media playlist with the init segment in EXT-X-MAP (RFC 8216 §4.3.2.5)."""
    if rendition.scheme not in SCHEMES:
        raise ValueError(f"rendition {rendition.path} is not for HLS")
    durations = [s.duration for s in rendition.segments]
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{VERSION}",
        f"#EXT-X-TARGETDURATION:{target_duration(durations)}",
        f"#EXT-X-MEDIA-SEQUENCE:{rendition.segments[0].number}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init.mp4"',
    ]
    for seg in rendition.segments:
        if rendition.scheme == "hls-aes128":
            if rendition.kid is None or seg.iv is None:
                raise ValueError(f"rendition {rendition.path}: segment {seg.number} has no key id or IV")
            lines.append(f'#EXT-X-KEY:METHOD=AES-128,URI="{key_path(rendition.kid)}",IV=0x{seg.iv}')
        lines += [f"#EXTINF:{seg.duration:.6f},", seg.name]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
