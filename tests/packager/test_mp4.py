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
