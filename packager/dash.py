"""DASH MPD (ISO/IEC 23009-1, static, SegmentTemplate + SegmentTimeline) from a catalog Track.

A protected track's MPD points at its ``cenc`` renditions (Common
Encryption, ISO/IEC 23001-7) and says so with two ContentProtection
descriptors (ISO/IEC 23009-1 §5.8.4.1, DASH-IF IOP "Content protection"):

- ``urn:mpeg:dash:mp4protection:2011`` with ``value="cenc"`` and
  ``cenc:default_KID`` (the KID in UUID form, as in the init's ``tenc``);
- W3C ClearKey, ``urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e``, with the
  licence URL in ``clearkey:Laurl Lic_type="EME-1.0"`` (the DASH-IF ClearKey
  namespace, read by shaka-player and dash.js).  No ``cenc:pssh`` here: the
  W3C common PSSH box is in the init segment, and dash.js hands an MPD's
  ClearKey ``cenc:pssh`` to EME as "keyids" init data, which Chromium
  rejects; without it dash.js builds keyids from ``cenc:default_KID``.

They sit on the AdaptationSet when all its Representations share one key
(the default, one key per track), else on each Representation.  The licence
URL is the absolute path ``/license/clearkey``; the edge appends the
listener's token.
"""

from __future__ import annotations

import itertools
from xml.etree import ElementTree as ET

from drm import cenc
from legato.urls import Kind, Route
from packager.catalog import Rendition, Track

NS = "urn:mpeg:dash:schema:mpd:2011"
CENC_NS = "urn:mpeg:cenc:2013"
CLEARKEY_NS = "http://dashif.org/guidelines/clearKey"
PROFILE = "urn:mpeg:dash:profile:isoff-live:2011"
CHANNELS_SCHEME = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011"
MP4_PROTECTION_SCHEME = "urn:mpeg:dash:mp4protection:2011"
CLEARKEY_SCHEME = f"urn:uuid:{cenc.CLEARKEY_DASH_UUID}"
SCHEMES = (None, "cenc")  # what an MPD may list: clear or Common Encryption
LICENSE_PATH = Route(Kind.CLEARKEY).path


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


def content_protection(parent: ET.Element, kid_hex: str) -> None:
    """The two ContentProtection descriptors of a ``cenc`` key (see the module docstring)."""
    kid = bytes.fromhex(kid_hex)
    ET.SubElement(parent, f"{{{NS}}}ContentProtection", {
        "schemeIdUri": MP4_PROTECTION_SCHEME, "value": "cenc", f"{{{CENC_NS}}}default_KID": cenc.kid_uuid(kid),
    })
    clearkey = ET.SubElement(parent, f"{{{NS}}}ContentProtection",
                             {"schemeIdUri": CLEARKEY_SCHEME, "value": "ClearKey1.0"})
    laurl = ET.SubElement(clearkey, f"{{{CLEARKEY_NS}}}Laurl", {"Lic_type": "EME-1.0"})
    laurl.text = LICENSE_PATH


def mpd(track: Track) -> str:
    """One Period; one AdaptationSet per codec and sample rate (players do not
    switch codecs inside a set), one Representation per rendition."""
    renditions = track.renditions_for(SCHEMES)
    if not renditions:
        raise ValueError(f"track {track.track_id} has no rendition for DASH")
    ET.register_namespace("", NS)
    ET.register_namespace("cenc", CENC_NS)
    ET.register_namespace("clearkey", CLEARKEY_NS)
    root = ET.Element(f"{{{NS}}}MPD", {
        "profiles": PROFILE, "type": "static", "minBufferTime": "PT2S",
        "mediaPresentationDuration": iso_duration(track.duration),
    })
    period = ET.SubElement(root, f"{{{NS}}}Period", {"id": "0", "start": "PT0S"})
    groups = itertools.groupby(sorted(enumerate(renditions), key=lambda ir: (ir[1].codec != "aac", ir[1].codec,
                                                                                   ir[1].sample_rate, ir[0])),
                               key=lambda ir: (ir[1].codec, ir[1].sample_rate))
    for set_id, (_, group) in enumerate(groups):
        members = [r for _, r in group]
        aset = ET.SubElement(period, f"{{{NS}}}AdaptationSet", {
            "id": str(set_id), "contentType": "audio", "mimeType": "audio/mp4", "lang": "und",
            "segmentAlignment": "true", "startWithSAP": "1",
        })
        kids = {r.kid for r in members}
        shared_kid = kids.pop() if len(kids) == 1 else None
        if shared_kid:  # ContentProtection comes first in an AdaptationSet (RepresentationBaseType order)
            content_protection(aset, shared_kid)
        for r in members:
            rep = ET.SubElement(aset, f"{{{NS}}}Representation", {
                "id": r.id, "codecs": r.codecs, "bandwidth": str(r.bandwidth),
                "audioSamplingRate": str(r.sample_rate),
            })
            ET.SubElement(rep, f"{{{NS}}}AudioChannelConfiguration",
                          {"schemeIdUri": CHANNELS_SCHEME, "value": str(r.channels)})
            if r.kid and not shared_kid:
                content_protection(rep, r.kid)
            prefix = f"{r.scheme}/" if r.scheme else ""
            tmpl = ET.SubElement(rep, f"{{{NS}}}SegmentTemplate", {
                "timescale": str(r.sample_rate), "presentationTimeOffset": str(r.priming),
                "initialization": f"{prefix}$RepresentationID$/init.mp4",
                "media": f"{prefix}$RepresentationID$/seg-$Number%05d$.m4s", "startNumber": str(r.segments[0].number),
            })
            tl = ET.SubElement(tmpl, f"{{{NS}}}SegmentTimeline")
            for attrs in timeline(r):
                ET.SubElement(tl, f"{{{NS}}}S", attrs)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
