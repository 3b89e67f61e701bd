"""ISO BMFF (MP4) boxes: read ffmpeg's fragmented output, write CMAF init and media segments.

Pure functions over bytes: no files, no clocks.  We write our own init
segment rather than keep ffmpeg's because ffmpeg's fragmented muxer writes no
edit list, and the edit list is how a player learns to drop the AAC
encoder's priming samples (gapless playback, ISO/IEC 14496-12 §8.6.6).  The
media segments are re-cut from ffmpeg's fragments on our own segment plan, so
boundaries line up across renditions, and the same writer adds the Common
Encryption boxes (ISO/IEC 23001-7): the protected sample entry with its
``sinf`` (:func:`protect_stsd`), ``pssh`` (:func:`pssh`) in the init segment,
and ``saiz``/``saio``/``senc`` in each fragment (:func:`media_segment` with
``ivs``).  The encryption itself is ``drm.cenc``'s.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

Buffer = bytes | memoryview | mmap.mmap


class Mp4Error(ValueError):
    """The MP4 data is not what we expect (truncated, missing boxes, unsupported layout)."""


@dataclass(frozen=True)
class Box:
    type: bytes
    start: int  # offset of the box header in the buffer
    header: int  # header length (8 or 16)
    size: int  # total size including header

    @property
    def body(self) -> int:
        return self.start + self.header

    @property
    def end(self) -> int:
        return self.start + self.size


def iter_boxes(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """Yield the boxes laid end to end in ``buf[start:end]``."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise Mp4Error(f"truncated box header at offset {pos}")
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise Mp4Error(f"truncated large box header at offset {pos}")
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4Error(f"box {kind!r} at offset {pos} overruns its container ({size} bytes)")
        yield Box(kind, pos, header, size)
        pos += size


def find(buf: Buffer, path: str, start: int = 0, end: int | None = None) -> Box:
    """The first box at a slash-separated path, e.g. ``moov/trak/mdia/mdhd``."""
    first, _, rest = path.partition("/")
    for box in iter_boxes(buf, start, end):
        if box.type == first.encode():
            return find(buf, rest, box.body, box.end) if rest else box
    raise Mp4Error(f"no {path} box")


@dataclass(frozen=True)
class Samples:
    """The samples of a single-track fragmented MP4, as parallel sequences."""

    timescale: int
    stsd: bytes  # the whole sample description box, copied into our init segment
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    durations: tuple[int, ...]


def read_fragmented(buf: Buffer) -> Samples:
    """Parse a single-track fragmented MP4 (ffmpeg ``-movflags empty_moov``)."""
    moov = find(buf, "moov")
    mdhd = find(buf, "trak/mdia/mdhd", moov.body, moov.end)
    version = buf[mdhd.body]
    (timescale,) = struct.unpack_from(">I", buf, mdhd.body + (20 if version == 1 else 12))
    stsd_box = find(buf, "trak/mdia/minf/stbl/stsd", moov.body, moov.end)
    stsd = bytes(buf[stsd_box.start:stsd_box.end])
    trex = find(buf, "mvex/trex", moov.body, moov.end)
    _, _, trex_duration, trex_size = struct.unpack_from(">IIII", buf, trex.body + 4)
    offsets: list[int] = []
    sizes: list[int] = []
    durations: list[int] = []
    for box in iter_boxes(buf):
        if box.type != b"moof":
            continue
        for traf in (b for b in iter_boxes(buf, box.body, box.end) if b.type == b"traf"):
            _read_traf(buf, box, traf, (trex_duration, trex_size), offsets, sizes, durations)
    if not sizes:
        raise Mp4Error("no media samples (empty or undecodable audio)")
    if max(o + s for o, s in zip(offsets, sizes)) > len(buf):
        raise Mp4Error("sample data runs past the end of the file (truncated output)")
    return Samples(timescale, stsd, tuple(offsets), tuple(sizes), tuple(durations))


def _read_traf(buf: Buffer, moof: Box, traf: Box, trex: tuple[int, int],
               offsets: list[int], sizes: list[int], durations: list[int]) -> None:
    tfhd = find(buf, "tfhd", traf.body, traf.end)
    (flags,) = struct.unpack_from(">I", buf, tfhd.body)
    flags &= 0xFFFFFF
    pos = tfhd.body + 8  # version/flags + track_ID
    base = moof.start
    default_duration, default_size = trex
    if flags & 0x01:  # base-data-offset-present
        (base,) = struct.unpack_from(">Q", buf, pos)
        pos += 8
    if flags & 0x02:  # sample-description-index-present
        pos += 4
    if flags & 0x08:  # default-sample-duration-present
        (default_duration,) = struct.unpack_from(">I", buf, pos)
        pos += 4
    if flags & 0x10:  # default-sample-size-present
        (default_size,) = struct.unpack_from(">I", buf, pos)
        pos += 4
    data = base
    for trun in (b for b in iter_boxes(buf, traf.body, traf.end) if b.type == b"trun"):
        (tflags, count) = struct.unpack_from(">II", buf, trun.body)
        tflags &= 0xFFFFFF
        pos = trun.body + 8
        if tflags & 0x01:
            (rel,) = struct.unpack_from(">i", buf, pos)
            data = base + rel
            pos += 4
        if tflags & 0x04:
            pos += 4
        for _ in range(count):
            duration, size = default_duration, default_size
            if tflags & 0x100:
                (duration,) = struct.unpack_from(">I", buf, pos)
                pos += 4
            if tflags & 0x200:
                (size,) = struct.unpack_from(">I", buf, pos)
                pos += 4
            pos += 4 * bool(tflags & 0x400) + 4 * bool(tflags & 0x800)
            offsets.append(data)
            sizes.append(size)
            durations.append(duration)
            data += size


# --- writing -----------------------------------------------------------------

def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_UND = 0x55C4  # ISO 639-2 'und', packed 5 bits per letter


def itunsmpb(priming: int, padding: int, samples: int) -> bytes:
    """Apple's gapless record (moov/udta/meta/ilst/----:iTunSMPB).

    Players that ignore edit lists in fragmented files (ffmpeg among them)
    read encoder delay and padding from here instead.
    """
    text = f" 00000000 {priming:08X} {padding:08X} {samples:016X}" + " 00000000" * 8
    entry = box(b"----", full_box(b"mean", 0, 0, b"com.apple.iTunes"), full_box(b"name", 0, 0, b"iTunSMPB"),
                box(b"data", struct.pack(">II", 1, 0), text.encode()))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s", 0, b"mdir"), b"appl", bytes(8), b"\0")
    return box(b"udta", full_box(b"meta", 0, 0, hdlr, box(b"ilst", entry)))


def init_segment(stsd: bytes, timescale: int, priming: int, presentation: int, padding: int = 0,
                 psshs: Sequence[bytes] = ()) -> bytes:
    """A CMAF-style init segment (ftyp + moov) for one audio track.

    ``priming`` encoder-delay samples are skipped by an edit list whose
    duration is the ``presentation`` length (both in ``timescale`` units), so
    decoders drop the priming and the padding after the last real sample.
    When there is priming, the same facts also go in an iTunSMPB record.
    ``psshs`` (whole ``pssh`` boxes) go at the end of ``moov``.
    """
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"cmfc", b"dash", b"mp41")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, 0),
                    struct.pack(">IH", 0x10000, 0x100), bytes(10), _MATRIX, bytes(24), struct.pack(">I", 2))
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8),
                    struct.pack(">hhhH", 0, 0, 0x100, 0), _MATRIX, struct.pack(">II", 0, 0))
    elst = full_box(b"elst", 0, 0, struct.pack(">IIiI", 1, presentation, priming, 0x10000))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, _UND, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s", 0, b"soun"), bytes(12), b"Legato audio\0")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(b"stbl", stsd,
               full_box(b"stts", 0, 0, struct.pack(">I", 0)),
               full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
               full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
               full_box(b"stco", 0, 0, struct.pack(">I", 0)))
    minf = box(b"minf", full_box(b"smhd", 0, 0, struct.pack(">hH", 0, 0)), dinf, stbl)
    trak = box(b"trak", tkhd, box(b"edts", elst), box(b"mdia", mdhd, hdlr, minf))
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
    udta = itunsmpb(priming, padding, presentation) if priming else b""
    return ftyp + box(b"moov", mvhd, trak, mvex, udta, *psshs)


def media_segment(sequence: int, decode_time: int, durations: Sequence[int],
                  samples: Sequence[bytes | memoryview], ivs: Sequence[bytes] | None = None) -> bytes:
    """One CMAF media segment (styp + moof + mdat) holding ``samples``.

    With ``ivs`` (one per sample, ``drm.cenc`` encryption, samples already
    encrypted) the track fragment also carries the sample auxiliary
    information: ``senc`` with the IVs (no subsamples), ``saiz`` with their
    size and ``saio`` with the offset of the first IV inside ``senc``,
    relative to the start of ``moof`` (the base offset of
    default-base-is-moof, ISO/IEC 14496-12 §8.7.9).
    """
    styp = box(b"styp", b"msdh", struct.pack(">I", 0), b"msdh", b"msix", b"cmfs")
    entries = b"".join(struct.pack(">II", d, len(s)) for d, s in zip(durations, samples))
    if ivs is not None and (len(ivs) != len(samples) or len({len(iv) for iv in ivs}) > 1):
        raise Mp4Error("need one IV per sample, all of one size")

    def moof(data_offset: int, aux_offset: int) -> bytes:
        trun = full_box(b"trun", 0, 0x000301, struct.pack(">Ii", len(samples), data_offset), entries)
        aux = b""
        if ivs is not None:
            iv_size = len(ivs[0]) if ivs else 0
            aux = (full_box(b"saiz", 0, 0, struct.pack(">BI", iv_size, len(ivs)))
                   + full_box(b"saio", 0, 0, struct.pack(">II", 1, aux_offset))
                   + full_box(b"senc", 0, 0, struct.pack(">I", len(ivs)), *ivs))
        traf = box(b"traf",
                   full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1)),  # default-base-is-moof
                   full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time)),
                   trun, aux)
        return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), traf)

    draft = moof(0, 0)  # offsets are fixed-width fields: the layout does not depend on their values
    aux_offset = find(draft, "moof/traf/senc").body + 8 if ivs is not None else 0  # past version/flags, count
    mdat_header = struct.pack(">I4s", 8 + sum(len(s) for s in samples), b"mdat")
    return b"".join([styp, moof(len(draft) + 8, aux_offset), mdat_header, *samples])


# --- Common Encryption (ISO/IEC 23001-7) ---------------------------------------

_ENCRYPTED_ENTRY = {b"mp4a": b"enca", b"fLaC": b"enca", b"Opus": b"enca", b"ac-3": b"enca", b"ec-3": b"enca",
                    b"avc1": b"encv", b"hvc1": b"encv", b"hev1": b"encv"}


def protect_stsd(stsd: bytes, kid: bytes, iv_size: int, scheme: bytes = b"cenc",
                 scheme_version: int = 0x00010000) -> bytes:
    """The sample description with each entry turned into its protected form.

    ``mp4a``/``fLaC`` become ``enca`` (video ``encv``) and gain a ``sinf``:
    ``frma`` (the original format), ``schm`` (scheme and version) and
    ``schi``/``tenc`` (version 0: protected, per-sample IV size, default
    KID), ISO/IEC 23001-7 §8.2 and ISO/IEC 14496-12 §8.12.  The codec's own
    boxes (``esds``, ``dfLa``) stay where they are, before ``sinf``.
    """
    if len(kid) != 16 or iv_size not in (8, 16):
        raise Mp4Error("a KID is 16 bytes and a cenc IV 8 or 16")
    head = find(stsd, "stsd")
    entries = []
    for entry in iter_boxes(stsd, head.body + 8, head.end):
        protected = _ENCRYPTED_ENTRY.get(entry.type)
        if protected is None:
            raise Mp4Error(f"cannot protect sample entry {entry.type!r}")
        tenc = full_box(b"tenc", 0, 0, struct.pack(">BBBB", 0, 0, 1, iv_size), kid)
        sinf = box(b"sinf", box(b"frma", entry.type), full_box(b"schm", 0, 0, scheme, struct.pack(">I", scheme_version)),
                   box(b"schi", tenc))
        entries.append(box(protected, stsd[entry.body:entry.end], sinf))
    if not entries:
        raise Mp4Error("stsd has no sample entry")
    return full_box(b"stsd", 0, 0, struct.pack(">I", len(entries)), *entries)


def pssh(system_id: bytes, kids: Sequence[bytes] = (), data: bytes = b"") -> bytes:
    """A ``pssh`` box (ISO/IEC 23001-7 §8.1): version 1 when it lists KIDs, else 0."""
    if len(system_id) != 16 or any(len(k) != 16 for k in kids):
        raise Mp4Error("system ids and KIDs are 16 bytes")
    if kids:
        return full_box(b"pssh", 1, 0, system_id, struct.pack(">I", len(kids)), *kids,
                        struct.pack(">I", len(data)), data)
    return full_box(b"pssh", 0, 0, system_id, struct.pack(">I", len(data)), data)
