"""Packager: source audio -> multi-bitrate CMAF ladder, HLS + DASH manifests, catalog record.

Pipeline (one track): probe (mutagen + ffprobe) -> transcode (one ffmpeg run:
decode once, every rendition encoded in parallel, loudness measured on the
side) -> re-fragment on a pure segment plan (packager.plan, packager.mp4) ->
manifests (packager.hls, packager.dash) -> track.json (packager.catalog) ->
atomic publish (packager.store).
"""
