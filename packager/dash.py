"""DASH MPD (ISO/IEC 23009-1, static, SegmentTemplate + SegmentTimeline) from a catalog Track."""

from __future__ import annotations

import itertools
from xml.etree import ElementTree as ET

from packager.catalog import Rendition, Track

NS = "urn:mpeg:dash:schema:mpd:2011"
PROFILE = "urn:mpeg:dash:profile:isoff-live:2011"
CHANNELS_SCHEME = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"


def iso_duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def timeline(rendition: Rendition) -> list[dict[str, str]]:
    """SegmentTimeline S elements, run-length coded (@r) over equal durations."""
    out: list[dict[str, str]] = []
    expected = None
    for d, group in itertools.groupby(rendition.segments, key=lambda s: s.media_duration):
        segs = list(group)
        attrs = {}
        if expected != segs[0].media_start:
            attrs["t"] = str(segs[0].media_start)
        attrs["d"] = str(d)
        if len(segs) > 1:
            attrs["r"] = str(len(segs) - 1)
        out.append(attrs)
        expected = segs[-1].media_start + d
    return out


def mpd(track: Track) -> str:
    """One Period; one AdaptationSet per codec and sample rate (players do not
    switch codecs inside a set), one Representation per rendition."""
    ET.register_namespace("", NS)
    root = ET.Element(f"{{{NS}}}MPD", {
        "profiles": PROFILE, "type": "static", "minBufferTime": "PT2S",
        "mediaPresentationDuration": iso_duration(track.duration),
    })
    period = ET.SubElement(root, f"{{{NS}}}Period", {"id": "0", "start": "PT0S"})
    groups = itertools.groupby(sorted(enumerate(track.renditions), key=lambda ir: (ir[1].codec != "aac", ir[1].codec,
                                                                                   ir[1].sample_rate, ir[0])),
                               key=lambda ir: (ir[1].codec, ir[1].sample_rate))
    for set_id, (_, members) in enumerate(groups):
        aset = ET.SubElement(period, f"{{{NS}}}AdaptationSet", {
            "id": str(set_id), "contentType": "audio", "mimeType": "audio/mp4", "lang": "und",
            "segmentAlignment": "true", "startWithSAP": "1",
        })
        for _, r in members:
            rep = ET.SubElement(aset, f"{{{NS}}}Representation", {
                "id": r.id, "codecs": r.codecs, "bandwidth": str(r.bandwidth),
                "audioSamplingRate": str(r.sample_rate),
            })
            ET.SubElement(rep, f"{{{NS}}}AudioChannelConfiguration",
                          {"schemeIdUri": CHANNELS_SCHEME, "value": str(r.channels)})
            tmpl = ET.SubElement(rep, f"{{{NS}}}SegmentTemplate", {
                "timescale": str(r.sample_rate), "presentationTimeOffset": str(r.priming),
                "initialization": "$RepresentationID$/init.mp4",
                "media": "$RepresentationID$/seg-$Number%05d$.m4s", "startNumber": str(r.segments[0].number),
            })
            tl = ET.SubElement(tmpl, f"{{{NS}}}SegmentTimeline")
            for attrs in timeline(r):
                ET.SubElement(tl, f"{{{NS}}}S", attrs)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
