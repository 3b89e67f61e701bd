"""`legato package` on many sources: summary, idempotence, --force, ids, usage errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from packager.samples import write_sample

SUMMARY = re.compile(r"^(\d+) packaged, (\d+) skipped, (\d+) failed$", re.MULTILINE)
LINE = re.compile(r"^(packaged|skipped|failed)\s+(.+?)(?: -> tracks/(\S+)(?: \((.*)\))?|: (.*))$")


def outcomes(stdout: str) -> dict[str, tuple[str, str | None, str]]:
    """source path -> (status, track id, reason) from the CLI's per-source lines."""
    out = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            status, src, tid, why, reason = m.groups()
            assert src not in out, f"two lines for {src}"
            out[src] = (status, tid, why or reason or "")
    return out


def summary(stdout: str) -> tuple[int, int, int]:
    found = SUMMARY.findall(stdout)
    assert len(found) == 1, stdout
    return tuple(map(int, found[0]))  # type: ignore[return-value]


def state(store: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file under tracks/."""
    return {str(p.relative_to(store)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted((store / "tracks").rglob("*")) if p.is_file()}


def segment_hashes(store: Path, tid: str) -> dict[str, str]:
    doc = json.loads((store / "tracks" / tid / "track.json").read_text())
    return {f"{r['id']}/{s['name']}": s["xxh3"] for r in doc["renditions"] for s in r["segments"]} | {
        f"{r['id']}/init.mp4": r["init_xxh3"] for r in doc["renditions"]}


def timed(cli, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:  # type: ignore[no-untyped-def]
    t = time.monotonic()
    result = cli(*args, check=False)
    return result, time.monotonic() - t


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, cli):  # type: ignore[no-untyped-def]
    """Three good sources and a bad one in a directory, packaged with --jobs 2."""
    root = tmp_path_factory.mktemp("batch")
    music = root / "music"
    good = [
        write_sample(music / "a-sunrise.flac", 4.0, style="sunrise"),
        write_sample(music / "b-harbour.flac", 4.0, style="harbour"),
        write_sample(music / "sub" / "c-lanterns.wav", 4.0, style="lanterns", codec="pcm_s16le"),
    ]
    bad = music / "d-broken.flac"
    bad.write_text("not audio at all\n" * 50)
    (music / "cover.jpg").write_bytes(b"\xff\xd8\xff not audio, not an audio suffix either")
    store = root / "store"
    result, seconds = timed(cli, "package", str(music), "--store", str(store), "--jobs", "2", "--no-progress", "--protect", "none")
    return music, store, good, bad, result, seconds


def test_summary_and_one_line_per_source(batch) -> None:  # type: ignore[no-untyped-def]
    _, store, good, bad, result, _ = batch
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode == 1, out
    assert summary(result.stdout) == (3, 0, 1)
    lines = outcomes(result.stdout)
    assert set(lines) == {str(p) for p in good + [bad]}, lines
    assert all(lines[str(p)][0] == "packaged" for p in good)
    assert lines[str(bad)][0] == "failed" and lines[str(bad)][2]
    tids = {lines[str(p)][1] for p in good}
    assert len(tids) == 3
    assert sorted(p.name for p in (store / "tracks").iterdir()) == sorted(tids)  # type: ignore[type-var]


def test_rerun_skips_without_rewriting_and_force_rebuilds(batch, cli) -> None:  # type: ignore[no-untyped-def]
    music, store, good, bad, first, first_seconds = batch
    ids = {src: tid or "" for src, (_, tid, _) in outcomes(first.stdout).items()}
    before = state(store)
    hashes = {ids[str(p)]: segment_hashes(store, ids[str(p)]) for p in good}

    again, seconds = timed(cli, "package", str(music), "--store", str(store), "--jobs", "2", "--no-progress", "--protect", "none")
    assert again.returncode == 1, again.stdout + again.stderr
    assert summary(again.stdout) == (0, 3, 1)
    lines = outcomes(again.stdout)
    for p in good:
        status, tid, reason = lines[str(p)]
        assert (status, tid) == ("skipped", ids[str(p)])
        assert "already packaged" in reason
    assert lines[str(bad)][0] == "failed"
    assert state(store) == before, "a skipped track was rewritten"
    assert seconds < first_seconds / 2, f"re-run took {seconds:.1f} s, first run {first_seconds:.1f} s"

    forced = cli("package", str(music), "--store", str(store), "--jobs", "2", "--no-progress", "--protect", "none", "--force",
                 check=False)
    assert forced.returncode == 1
    assert summary(forced.stdout) == (3, 0, 1)
    assert {s: tid or "" for s, (_, tid, _) in outcomes(forced.stdout).items()} == ids, "track ids changed on rebuild"
    after = state(store)
    assert set(after) == set(before)
    assert all(after[f] != before[f] for f in before), "--force left files untouched"
    assert not list((store / "tracks").glob(".tmp-*"))
    # Segment URLs are immutable and cached everywhere: rebuilding the same source with the
    # same ladder must give the same bytes, or caches would mix two versions of one track.
    for tid, h in hashes.items():
        assert segment_hashes(store, tid) == h, f"{tid}: --force produced different segment bytes"


def test_track_id_is_stable_and_follows_content(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a = write_sample(tmp_path / "a.flac", 3.0, style="sunrise")
    b = write_sample(tmp_path / "b.flac", 3.0, style="harbour")
    moved = tmp_path / "elsewhere" / "renamed.flac"
    moved.parent.mkdir()
    shutil.copyfile(a, moved)
    ids = {}
    for name, src in (("a", a), ("b", b), ("moved", moved)):
        store = tmp_path / f"store-{name}"
        result = cli("package", str(src), "--store", str(store), "--no-progress", "--protect", "none")
        ((status, tid, _),) = outcomes(result.stdout).values()
        assert status == "packaged"
        ids[name] = tid
    assert ids["a"] == ids["moved"], "same content, different id"
    assert ids["a"] != ids["b"], "different content, same id"
    assert re.fullmatch(r"[0-9a-f]{8,}", ids["a"] or ""), ids


def test_identical_files_in_one_batch_make_one_track(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a = write_sample(tmp_path / "in" / "one.flac", 3.0)
    b = tmp_path / "in" / "two.flac"
    shutil.copyfile(a, b)
    store = tmp_path / "store"
    result = cli("package", str(a.parent), "--store", str(store), "--jobs", "2", "--no-progress", "--protect", "none", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result.stdout) == (1, 1, 0)
    lines = outcomes(result.stdout)
    (kept,) = [s for s, (status, _, _) in lines.items() if status == "packaged"]
    (dup,) = [s for s, (status, _, _) in lines.items() if status == "skipped"]
    assert lines[kept][1] == lines[dup][1]
    assert lines[dup][2] == f"same content as {kept}"
    assert [p.name for p in (store / "tracks").iterdir()] == [lines[kept][1]]


def test_track_id_with_two_sources_is_a_usage_error(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a = write_sample(tmp_path / "a.flac", 2.0, style="sunrise")
    b = write_sample(tmp_path / "b.flac", 2.0, style="harbour")
    store = tmp_path / "store"
    result = cli("package", str(a), str(b), "--store", str(store), "--track-id", "both", "--no-progress", "--protect", "none",
                 check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out
    assert "--track-id" in result.stderr
    assert not (store / "tracks").exists() or not list((store / "tracks").iterdir())


LADDERS = {
    "unknown-top-level-key": ("segment_seconds = 4.0\n", "segment_seconds"),
    "unknown-nested-key": ("[loudness]\ntarget = -16.0\n", "loudness.target"),
    "wrong-type": ('segment_duration = "six"\n', "segment_duration"),
    "wrong-type-in-array": ('[[rendition]]\nid = "aac-64k"\ncodec = "aac"\nbitrate = "64k"\n', "rendition[0].bitrate"),
    "unknown-key-in-array": ('[[rendition]]\nid = "aac-64k"\ncodec = "aac"\nbitrate = 64000\nprofile = "he"\n',
                             "rendition[0].profile"),
    "bad-value": ('[[rendition]]\nid = "mp3-128k"\ncodec = "mp3"\nbitrate = 128000\n', "rendition[0]"),
    "array-expected": ('rendition = "aac"\n', "rendition"),
}


@pytest.mark.parametrize("key", list(LADDERS))
def test_bad_ladder_is_a_usage_error_naming_the_key(tmp_path: Path, cli, key: str) -> None:  # type: ignore[no-untyped-def]
    text, path = LADDERS[key]
    ladder = tmp_path / "ladder.toml"
    ladder.write_text(text)
    src = write_sample(tmp_path / "a.flac", 2.0) if key == "wrong-type" else tmp_path / "a.flac"
    if not src.exists():
        src.write_bytes(b"")  # never read: the config is checked first
    store = tmp_path / "store"
    result = cli("package", str(src), "--store", str(store), "--ladder", str(ladder), "--no-progress", "--protect", "none", check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out, out
    assert re.search(rf"(^|[\s:]){re.escape(path)}([\s:]|$)", result.stderr), result.stderr
    assert str(ladder) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (store / "tracks").exists()


def test_verbose_names_the_ffmpeg_binary(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "a.flac", 2.0)
    result = cli("package", str(src), "--store", str(tmp_path / "store"), "--verbose", "--no-progress", "--protect", "none")
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg
    assert re.search(rf"^using ffmpeg \S+ at {re.escape(ffmpeg)}\b", result.stderr, re.MULTILINE), result.stderr
