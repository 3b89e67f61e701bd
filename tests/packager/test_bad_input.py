"""Bad and awkward input through the real CLI: package correctly or fail cleanly.

DESIGN.md principle 8: bad input gets a non-zero exit with the file and the
cause, never a traceback, never a partial track in the store.  For every input
here the outcome is one of exactly two things:

* packaged: exit 0, the track in ``STORE/tracks/<id>/`` with every file
  matching track.json's sizes and xxh3 hashes, and ffmpeg decoding each
  rendition's HLS playlist from disk to the source's length within one AAC
  frame;
* failed: exit 1, one ``failed    PATH: reason`` line, no traceback, nothing
  in the store (no track directory, no ``.tmp-*`` staging directory).
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import mutagen.flac
import pytest
import xxhash

from packager.samples import write_sample

AAC_FRAME = 1024


# --- helpers -----------------------------------------------------------------

def count_samples(path: Path, *pre: str) -> tuple[int, int]:
    """(samples per channel, rate) ffmpeg decodes from ``path``, streamed (long files stay out of memory)."""
    probe = subprocess.run(["ffprobe", "-v", "error", *pre, "-select_streams", "a:0", "-show_entries",
                            "stream=sample_rate", "-of", "csv=p=0", str(path)],
                           capture_output=True, text=True, check=True).stdout
    rate = int(probe.strip().splitlines()[0].strip(","))
    proc = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", *pre, "-i", str(path), "-ac", "1", "-f", "u8", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    n = 0
    while chunk := proc.stdout.read(1 << 20):
        n += len(chunk)
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait() == 0, err
    assert not err.strip(), f"ffmpeg complained decoding {path}: {err[:500]}"
    return n, rate


def package(cli, src: Path, store: Path, *extra: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return cli("package", str(src), "--store", str(store), "--no-progress", "--protect", "none", *extra, check=False)


def assert_packaged(result: subprocess.CompletedProcess[str], src: Path, store: Path) -> dict:
    """Exit 0 and a consistent, decodable track; returns track.json."""
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode == 0, out
    m = re.search(rf"^packaged  {re.escape(str(src))} -> tracks/(\S+)$", result.stdout, re.MULTILINE)
    assert m, result.stdout
    root = store / "tracks" / m.group(1)
    assert not list((store / "tracks").glob(".tmp-*")), "staging directory left behind"
    doc = json.loads((root / "track.json").read_text())
    source_samples, source_rate = count_samples(src)
    for r in doc["renditions"]:
        rdir = root / r["id"]
        init = (rdir / "init.mp4").read_bytes()
        assert (len(init), xxhash.xxh3_64_hexdigest(init)) == (r["init_bytes"], r["init_xxh3"]), r["id"]
        for s in r["segments"]:
            body = (rdir / s["name"]).read_bytes()
            assert (len(body), xxhash.xxh3_64_hexdigest(body)) == (s["bytes"], s["xxh3"]), (r["id"], s["name"])
        names = {p.name for p in rdir.iterdir()}
        assert names == {"init.mp4", "index.m3u8"} | {s["name"] for s in r["segments"]}, names - {"init.mp4"}
        decoded, rate = count_samples(rdir / "index.m3u8", "-allowed_extensions", "ALL")
        assert rate == r["sample_rate"]
        expected = source_samples * rate / source_rate
        aac_rate = next(x["sample_rate"] for x in doc["renditions"] if x["codec"] == "aac") \
            if any(x["codec"] == "aac" for x in doc["renditions"]) else rate
        frame = AAC_FRAME * rate / aac_rate  # one AAC frame, in this rendition's samples
        assert abs(decoded - expected) <= frame, f"{r['id']}: decoded {decoded} samples, source {expected:.0f}"
    return doc


def assert_failed_cleanly(result: subprocess.CompletedProcess[str], src: Path, store: Path) -> str:
    """Exit 1, one `failed` line naming the file, no traceback, nothing in the store; returns the reason."""
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode == 1, out
    failed = [ln for ln in out.splitlines() if ln.startswith("failed")]
    assert len(failed) == 1, out
    prefix = f"failed    {src}: "
    assert failed[0].startswith(prefix) and failed[0][len(prefix):].strip(), failed[0]
    assert "0 packaged, 0 skipped, 1 failed" in result.stdout
    left = sorted(p.name for p in (store / "tracks").iterdir()) if (store / "tracks").exists() else []
    assert left == [], f"left in the store: {left}"
    return failed[0][len(prefix):]


def assert_outcome(result: subprocess.CompletedProcess[str], src: Path, store: Path) -> dict | None:
    """Either of the two acceptable outcomes."""
    if result.returncode == 0:
        return assert_packaged(result, src, store)
    assert_failed_cleanly(result, src, store)
    return None


def flac_block(data: bytes | bytearray, block_type: int) -> int:
    """Offset of the first FLAC metadata block of ``block_type``."""
    assert data[:4] == b"fLaC"
    pos = 4
    while True:
        header = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 4], "big")
        if header & 0x7F == block_type:
            return pos
        assert not header & 0x80, f"no metadata block of type {block_type}"
        pos += 4 + length


# --- inputs that cannot be packaged --------------------------------------------

def _empty(d: Path) -> Path:
    (d / "empty.flac").write_bytes(b"")
    return d / "empty.flac"


def _truncated(name: str, codec: str):  # type: ignore[no-untyped-def]
    def make(d: Path) -> Path:
        full = write_sample(d / "full" / name, 10.0, codec=codec)
        data = full.read_bytes()
        out = d / name
        out.write_bytes(data[: int(len(data) * 0.4)])
        full.unlink()
        return out
    return make


def _text(d: Path) -> Path:
    (d / "notes.flac").write_text("These are my liner notes, not audio.\n" * 200)
    return d / "notes.flac"


@pytest.mark.parametrize("make", [_empty, _truncated("cut.flac", "flac"), _truncated("cut.wav", "pcm_s16le"), _text],
                         ids=["empty", "truncated-flac", "truncated-wav", "text-as-flac"])
def test_undecodable_input_fails_cleanly(tmp_path: Path, cli, make) -> None:  # type: ignore[no-untyped-def]
    src = make(tmp_path)
    store = tmp_path / "store"
    assert_failed_cleanly(package(cli, src, store), src, store)


# --- awkward tags ----------------------------------------------------------------

def test_huge_tags_package_with_the_title_cut(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "huge-tags.flac", 4.0)
    tags = mutagen.flac.FLAC(src)
    tags["title"] = "T" * (1 << 20)
    for i in range(10_000):
        tags[f"custom{i:05d}"] = f"value {i}"
    tags.save()
    assert src.stat().st_size > 1 << 20
    store = tmp_path / "store"
    doc = assert_packaged(package(cli, src, store), src, store)
    title = doc["metadata"]["title"]
    assert title and set(title) == {"T"} and len(title) <= 4096, len(title or "")
    assert len(json.dumps(doc)) < 200_000, "track.json carries the tag blob"
    for name in ("master.m3u8", "manifest.mpd"):
        text = (store / "tracks" / doc["track_id"] / name).read_text()
        assert "TTTTTTTT" not in text


def _flac_bad_vorbis_comment(d: Path) -> Path:
    """Vendor-string length in the VORBIS_COMMENT block set to 2 GiB."""
    src = write_sample(d / "bad-comment.flac", 4.0)
    data = bytearray(src.read_bytes())
    at = flac_block(data, 4)
    data[at + 4:at + 8] = struct.pack("<I", 0x7FFFFFFF)
    src.write_bytes(bytes(data))
    return src


def _flac_bad_comment_count(d: Path) -> Path:
    """Comment count after the vendor string set to 2^32-1."""
    src = write_sample(d / "bad-count.flac", 4.0)
    data = bytearray(src.read_bytes())
    at = flac_block(data, 4)
    vendor = struct.unpack_from("<I", data, at + 4)[0]
    data[at + 8 + vendor:at + 12 + vendor] = struct.pack("<I", 0xFFFFFFFF)
    src.write_bytes(bytes(data))
    return src


def _mp3_absurd_id3_size(d: Path) -> Path:
    """ID3v2 header claiming a 256 MB tag in an 80 kB file."""
    src = write_sample(d / "absurd-id3.mp3", 4.0, codec="libmp3lame")
    data = bytearray(src.read_bytes())
    assert data[:3] == b"ID3"
    data[6:10] = b"\x7f\x7f\x7f\x7f"  # syncsafe size 2^28 - 1
    src.write_bytes(bytes(data))
    return src


def _mp3_garbage_id3_frames(d: Path) -> Path:
    """A well-sized ID3v2 tag whose frames are garbage bytes."""
    src = write_sample(d / "garbage-id3.mp3", 4.0, codec="libmp3lame")
    data = bytearray(src.read_bytes())
    size = sum(b << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    data[14:10 + size] = b"\xff" * (size - 4)  # keep the first frame id, trash its size and everything after
    src.write_bytes(bytes(data))
    return src


@pytest.mark.parametrize("make", [_flac_bad_vorbis_comment, _flac_bad_comment_count, _mp3_absurd_id3_size,
                                  _mp3_garbage_id3_frames],
                         ids=["flac-vendor-length", "flac-comment-count", "mp3-id3-absurd-size", "mp3-id3-garbage"])
def test_malformed_tags_package_or_fail_cleanly(tmp_path: Path, cli, make) -> None:  # type: ignore[no-untyped-def]
    src = make(tmp_path)
    store = tmp_path / "store"
    assert_outcome(package(cli, src, store), src, store)


def test_unreadable_tags_are_a_warning_not_a_failure(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """The audio of a FLAC with a broken comment block is fine: package it and say so."""
    src = _flac_bad_vorbis_comment(tmp_path)
    store = tmp_path / "store"
    doc = assert_packaged(package(cli, src, store), src, store)
    assert any("tags" in w for w in doc["source"]["warnings"]), doc["source"]


# --- awkward but valid audio -----------------------------------------------------

def test_path_with_spaces_and_non_ascii(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "my music" / "Björk – Jóga (live) ♫.flac", 4.0, title="Jóga ♫",
                       artist="Björk")
    store = tmp_path / "store dir ♫"
    doc = assert_packaged(package(cli, src, store), src, store)
    assert doc["source"]["name"] == "Björk – Jóga (live) ♫.flac"
    assert (doc["metadata"]["title"], doc["metadata"]["artist"]) == ("Jóga ♫", "Björk")


def test_silence_has_no_loudness_and_no_gain(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "silence.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo",
                    "-t", "8", "-c:a", "flac", str(src)], check=True)
    store = tmp_path / "store"
    doc = assert_packaged(package(cli, src, store), src, store)
    loud = doc["loudness"]
    assert loud["integrated_lufs"] is None
    assert loud["gain_db"] == 0
    assert loud["true_peak_dbtp"] is None


def test_one_second_track(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "one.flac", 1.0)
    store = tmp_path / "store"
    doc = assert_packaged(package(cli, src, store), src, store)
    assert doc["duration"] == 1.0
    assert all([s["duration"] for s in r["segments"]] == [1.0] for r in doc["renditions"])


def test_thirty_minute_track(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """1800 s in ~300 segments.  The ladder is cut to one AAC rendition and FLAC: the 320k AAC
    encoder alone runs at about 8x real time on a 2-core runner, so the default ladder takes
    5 minutes here (over the 300-s per-test timeout); length handling does not depend on bit rate."""
    src = write_sample(tmp_path / "long.flac", 1800.0)
    ladder = tmp_path / "ladder.toml"
    ladder.write_text('[[rendition]]\nid = "aac-96k"\ncodec = "aac"\nbitrate = 96000\n\n'
                      '[[rendition]]\nid = "flac"\ncodec = "flac"\n')
    store = tmp_path / "store"
    doc = assert_packaged(package(cli, src, store, "--ladder", str(ladder)), src, store)
    assert doc["duration"] == 1800.0
    step = 65 * 4096  # round(6 s * 44100 / 4096) grid units
    for r in doc["renditions"]:
        assert len(r["segments"]) == -(-1800 * 44100 // step) == 299
        assert sum(s["duration"] for s in r["segments"]) == pytest.approx(1800.0, abs=1e-4)


# --- loudness --------------------------------------------------------------------

def test_loudness_matches_an_independent_meter(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "loud.flac", 12.0, style="harbour")
    store = tmp_path / "store"
    doc = assert_packaged(package(cli, src, store), src, store)
    log = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-i", str(src), "-af",
                          "loudnorm=print_format=json", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    meter = json.loads(log[log.rindex("{"):log.rindex("}") + 1])
    loud = doc["loudness"]
    assert abs(loud["integrated_lufs"] - float(meter["input_i"])) <= 0.5, (loud, meter)
    assert abs(loud["true_peak_dbtp"] - float(meter["input_tp"])) <= 0.5, (loud, meter)
    assert (loud["target_lufs"], loud["ceiling_dbtp"]) == (-14.0, -1.0)
    expected = round(min(-14 - loud["integrated_lufs"], -1 - loud["true_peak_dbtp"]), 2)
    assert loud["gain_db"] == expected


# --- atomic publish and interrupted runs -------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (xxhash.xxh3_64_hexdigest(p.read_bytes()), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_forced_repackage_keeps_the_old_track(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "song.flac", 8.0)
    store = tmp_path / "store"
    assert_packaged(package(cli, src, store, "--track-id", "song"), src, store)
    before = snapshot(store / "tracks" / "song")
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * 0.4)])  # the source is damaged after packaging
    result = package(cli, src, store, "--track-id", "song", "--force")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out
    assert [ln for ln in out.splitlines() if ln.startswith("failed")] == [
        ln for ln in result.stdout.splitlines() if ln.startswith(f"failed    {src}: ")]
    assert sorted(p.name for p in (store / "tracks").iterdir()) == ["song"]
    assert snapshot(store / "tracks" / "song") == before


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (any of its threads may have started them)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_and_kill_midway(src: Path, store: Path) -> list[int]:
    """Start `legato package` on ``src``, SIGKILL it once ffmpeg has written part of the
    renditions; returns the PIDs of the children it had (ffmpeg)."""
    proc = subprocess.Popen([sys.executable, "-m", "legato.cli", "package", str(src), "--store", str(store),
                             "--no-progress", "--protect", "none"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            work = list((store / "tracks").glob(".tmp-*/.work/*.mp4")) if (store / "tracks").exists() else []
            if work and min(p.stat().st_size for p in work) > 64 * 1024:
                break
            assert proc.poll() is None, "the packager finished before it could be interrupted"
            time.sleep(0.05)
        else:
            raise AssertionError("the packager never started writing")
        children = _children(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return children


def _reap(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_interrupted_run_leaves_no_track_and_the_next_run_sweeps_up(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "long.flac", 60.0)
    store = tmp_path / "store"
    children = _start_and_kill_midway(src, store)
    try:
        left = list((store / "tracks").iterdir())
        assert all(p.name.startswith(".tmp-") for p in left), [p.name for p in left]
        assert len(left) <= 1
        stale = [p.name for p in left]
        doc = assert_packaged(package(cli, src, store), src, store)
        assert sorted(p.name for p in (store / "tracks").iterdir()) == [doc["track_id"]]
        assert not any((store / "tracks" / name).exists() for name in stale)
    finally:
        _reap(children)


def test_killed_packager_takes_its_ffmpeg_with_it(tmp_path: Path) -> None:
    """After `legato package` is killed, the ffmpeg it started must not keep encoding the
    whole track into a staging directory nobody will publish (it would also be racing the
    next run's sweep of that directory).  A 5-minute source keeps ffmpeg busy for well over
    the 3 s allowed here, so a survivor is not one that was about to finish anyway."""
    src = write_sample(tmp_path / "long.flac", 300.0)
    store = tmp_path / "store"
    children = _start_and_kill_midway(src, store)
    try:
        assert children, "no ffmpeg child seen"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.1)
        survivors = [p for p in children if _alive(p)]
        assert not survivors, f"ffmpeg {survivors} still running 3 s after its packager was killed"
    finally:
        _reap(children)
