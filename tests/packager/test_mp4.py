"""packager.mp4: box parsing and the init/media segments we write."""

import struct

import pytest

from packager import mp4


def test_media_segment_round_trips_through_parser() -> None:
    stsd = mp4.full_box(b"stsd", 0, 0, struct.pack(">I", 0))
    init = mp4.init_segment(stsd, 44100, 1024, 44100 * 3, 100)
    samples = [bytes([i]) * (10 + i) for i in range(5)]
    seg = mp4.media_segment(1, 0, [1024] * 5, samples)
    parsed = mp4.read_fragmented(init + seg)
    assert parsed.timescale == 44100
    assert parsed.durations == (1024,) * 5
    assert [bytes((init + seg)[o:o + s]) for o, s in zip(parsed.offsets, parsed.sizes)] == samples


def test_init_segment_signals_priming_twice() -> None:
    stsd = mp4.full_box(b"stsd", 0, 0, struct.pack(">I", 0))
    init = mp4.init_segment(stsd, 48000, 1024, 96000, 512)
    elst = mp4.find(init, "moov/trak/edts/elst")
    count, duration, media_time, rate = struct.unpack_from(">IIiI", init, elst.body + 4)
    assert (count, duration, media_time, rate) == (1, 96000, 1024, 0x10000)
    assert b"iTunSMPB" in init and b" 00000400 00000200 " in init


def test_no_itunsmpb_without_priming() -> None:
    stsd = mp4.full_box(b"stsd", 0, 0, struct.pack(">I", 0))
    assert b"iTunSMPB" not in mp4.init_segment(stsd, 44100, 0, 44100)


@pytest.mark.parametrize("cut", [3, 9, 20])
def test_truncated_data_is_an_mp4_error(cut: int) -> None:
    stsd = mp4.full_box(b"stsd", 0, 0, struct.pack(">I", 0))
    data = mp4.init_segment(stsd, 44100, 0, 1024) + mp4.media_segment(1, 0, [1024], [b"x" * 50])
    with pytest.raises(mp4.Mp4Error):
        mp4.read_fragmented(data[:-cut])


def test_box_overrunning_container_is_an_error() -> None:
    with pytest.raises(mp4.Mp4Error):
        list(mp4.iter_boxes(struct.pack(">I4s", 100, b"free") + b"xx"))


def test_media_segment_data_offset_points_at_mdat_payload() -> None:
    seg = mp4.media_segment(7, 123, [1024], [b"abc"])
    trun = mp4.find(seg, "moof/traf/trun")
    moof = mp4.find(seg, "moof")
    (offset,) = struct.unpack_from(">i", seg, trun.body + 8)
    assert seg[moof.start + offset:moof.start + offset + 3] == b"abc"
    tfdt = mp4.find(seg, "moof/traf/tfdt")
    assert struct.unpack_from(">Q", seg, tfdt.body + 4)[0] == 123


# --- Common Encryption boxes, read back with a reader of their own ------------------

def _fields(buf: bytes, box: mp4.Box) -> tuple[int, int, int]:
    """(version, flags, offset of the payload after version/flags) of a full box."""
    (vf,) = struct.unpack_from(">I", buf, box.body)
    return vf >> 24, vf & 0xFFFFFF, box.body + 4


def test_encrypted_fragment_carries_senc_saiz_saio_pointing_at_the_ivs() -> None:
    samples = [bytes([i]) * (100 + i) for i in range(7)]
    ivs = [bytes([0xA0 + i]) * 8 for i in range(7)]
    seg = mp4.media_segment(3, 4096, [1024] * 7, samples, ivs)
    moof = mp4.find(seg, "moof")
    names = [b.type for b in mp4.iter_boxes(seg, mp4.find(seg, "moof/traf").body, mp4.find(seg, "moof/traf").end)]
    assert names == [b"tfhd", b"tfdt", b"trun", b"saiz", b"saio", b"senc"]

    version, flags, pos = _fields(seg, mp4.find(seg, "moof/traf/senc"))
    assert (version, flags) == (0, 0)  # no subsample information: whole samples are encrypted
    (count,) = struct.unpack_from(">I", seg, pos)
    first_iv = pos + 4
    assert count == 7 and [seg[first_iv + 8 * i:first_iv + 8 * i + 8] for i in range(7)] == ivs

    version, flags, pos = _fields(seg, mp4.find(seg, "moof/traf/saiz"))
    default_size, n = struct.unpack_from(">BI", seg, pos)
    assert (flags, default_size, n) == (0, 8, 7)

    version, flags, pos = _fields(seg, mp4.find(seg, "moof/traf/saio"))
    entries, offset = struct.unpack_from(">II", seg, pos)
    assert (version, flags, entries) == (0, 0, 1)
    # relative to the start of moof (tfhd says default-base-is-moof): the first IV in senc
    assert moof.start + offset == first_iv
    assert seg[moof.start + offset:moof.start + offset + 8] == ivs[0]

    # the sample data is still where trun says it is
    whole = mp4.init_segment(mp4.full_box(b"stsd", 0, 0, struct.pack(">I", 0)), 44100, 0, 1) + seg
    parsed = mp4.read_fragmented(whole)
    assert [whole[o:o + s] for o, s in zip(parsed.offsets, parsed.sizes)] == samples


def test_media_segment_refuses_mismatched_ivs() -> None:
    with pytest.raises(mp4.Mp4Error):
        mp4.media_segment(1, 0, [1024] * 2, [b"a", b"b"], [bytes(8)])
    with pytest.raises(mp4.Mp4Error):
        mp4.media_segment(1, 0, [1024] * 2, [b"a", b"b"], [bytes(8), bytes(16)])


def _audio_stsd(fourcc: bytes, codec_box: bytes) -> bytes:
    entry = mp4.box(fourcc, bytes(6), struct.pack(">H", 1), bytes(8), struct.pack(">HHHHI", 2, 16, 0, 0, 44100 << 16),
                    codec_box)
    return mp4.full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry)


@pytest.mark.parametrize(("fourcc", "codec_box"), [(b"mp4a", mp4.full_box(b"esds", 0, 0, b"\x03\x00")),
                                                   (b"fLaC", mp4.full_box(b"dfLa", 0, 0, b"\x80" + bytes(37)))])
def test_protected_sample_entry(fourcc: bytes, codec_box: bytes) -> None:
    kid = bytes(range(16))
    stsd = mp4.protect_stsd(_audio_stsd(fourcc, codec_box), kid, 8)
    (count,) = struct.unpack_from(">I", stsd, 12)
    entry = next(mp4.iter_boxes(stsd, 16))
    assert count == 1 and entry.type == b"enca"
    children = list(mp4.iter_boxes(stsd, entry.body + 28, entry.end))  # after the AudioSampleEntry fields
    assert [c.type for c in children] == [codec_box[4:8], b"sinf"]  # codec config untouched, sinf last
    assert stsd[entry.body:entry.body + 28] == _audio_stsd(fourcc, codec_box)[24:52]
    sinf = children[1]
    assert stsd[mp4.find(stsd, "frma", sinf.body, sinf.end).body:][:4] == fourcc
    schm = mp4.find(stsd, "schm", sinf.body, sinf.end)
    assert stsd[schm.body + 4:schm.body + 12] == b"cenc" + struct.pack(">I", 0x10000)
    tenc = mp4.find(stsd, "schi/tenc", sinf.body, sinf.end)
    version, _, pos = _fields(stsd, tenc)
    assert version == 0
    assert stsd[pos:pos + 20] == bytes([0, 0, 1, 8]) + kid  # protected, 8-byte IVs, default KID


def test_protect_stsd_refuses_unknown_entries_and_bad_kids() -> None:
    with pytest.raises(mp4.Mp4Error, match="cannot protect"):
        mp4.protect_stsd(_audio_stsd(b"twos", b""), bytes(16), 8)
    with pytest.raises(mp4.Mp4Error):
        mp4.protect_stsd(_audio_stsd(b"mp4a", b""), bytes(15), 8)


def test_pssh_boxes() -> None:
    system, kid = bytes.fromhex("1077efecc0b24d02ace33c1e52e2fb4b"), bytes(range(16))
    box = mp4.pssh(system, [kid])
    version, flags, pos = _fields(box, mp4.find(box, "pssh"))
    assert (version, flags) == (1, 0) and box[pos:pos + 16] == system
    assert struct.unpack_from(">I", box, pos + 16)[0] == 1 and box[pos + 20:pos + 36] == kid
    assert struct.unpack_from(">I", box, pos + 36)[0] == 0 and len(box) == pos + 40
    v0 = mp4.pssh(system, data=b"abc")
    assert v0[8] == 0 and v0.endswith(struct.pack(">I", 3) + b"abc")
    init = mp4.init_segment(_audio_stsd(b"mp4a", b""), 44100, 0, 1, psshs=[box])
    assert bytes(init[mp4.find(init, "moov/pssh").start:mp4.find(init, "moov/pssh").end]) == box
