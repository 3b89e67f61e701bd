"""HLS playlists (RFC 8216) from a catalog Track: pure text in, text out."""

from __future__ import annotations

from packager.catalog import Rendition, Track
from packager.plan import target_duration

VERSION = 7  # EXT-X-MAP in a playlist without I-frames needs 6; 7 for fMP4 as Apple recommends


def master_playlist(track: Track) -> str:
    """The multivariant playlist: one variant per rendition, in ladder order (RFC 8216 §4.3.4.2)."""
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in track.renditions:
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={r.bandwidth},AVERAGE-BANDWIDTH={r.average_bandwidth},'
                     f'CODECS="{r.codecs}"')
        lines.append(f"{r.id}/index.m3u8")
    return "\n".join(lines) + "\n"


def media_playlist(rendition: Rendition) -> str:
    """A VOD media playlist with the init segment in EXT-X-MAP (RFC 8216 §4.3.2.5)."""
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
        lines += [f"#EXTINF:{seg.duration:.6f},", seg.name]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
