"""Package tracks into a store: the I/O shell around the pure packager modules.

One track: probe -> one ffmpeg run (every rendition + loudness) -> content
keys (protected tracks) -> re-cut each rendition on the segment plan, once per
protection scheme, encrypting as it goes -> manifests + track.json -> atomic
publish.
Everything is written under ``STORE/tracks/.tmp-*`` and renamed into place
only when complete, so origin never sees a half-built track; a crashed run
leaves only a ``.tmp-`` directory (never a valid track id), swept by the
next run.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import xxhash

from drm import aes128, cenc
from drm.keys import ContentKey, KeyStoreError
from legato.config import ConfigError
from legato.proc import pid_alive
from legato.urls import TRACK_ID_RE
from packager import catalog, dash, hls, mp4, plan, transcode
from packager.ladder import LadderConfig
from packager.probe import Source, SourceError, probe
from packager.protection import Protection, TrackKeys

AUDIO_SUFFIXES = {".flac", ".wav", ".wave", ".aif", ".aiff", ".mp3", ".m4a", ".mp4", ".aac", ".ogg", ".oga",
                  ".opus", ".wv", ".ape", ".alac", ".caf", ".w64"}
TRUNCATION_TOLERANCE = 0.25  # seconds a source may decode short of its declared length


class PackageError(Exception):
    """A track that could not be packaged; one line, without the path."""


@dataclass(frozen=True)
class Outcome:
    source: Path
    status: str  # 'packaged' | 'skipped' | 'failed'
    track_id: str | None = None
    reason: str = ""


def source_hash(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def expand_sources(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories walked for audio files, in a stable order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            out.append(p)
    return out


# --- store layout and atomic publish -----------------------------------------

def tracks_dir(store: Path) -> Path:
    return store / "tracks"


def staging_dir(store: Path, track_id: str) -> Path:
    return tracks_dir(store) / f".tmp-{track_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def sweep_stale(store: Path) -> None:
    """Remove staging directories left by packager processes that are gone."""
    for d in tracks_dir(store).glob(".tmp-*"):
        pid = d.name.rsplit("-", 2)[-2]
        alive = pid.isdigit() and pid_alive(int(pid))
        if not alive:
            shutil.rmtree(d, ignore_errors=True)




_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def publish(staging: Path, final: Path) -> None:
    """Move a finished track into place; an existing one is swapped atomically."""
    if not final.exists():
        os.rename(staging, final)
        return
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None and renameat2(_AT_FDCWD, bytes(staging), _AT_FDCWD, bytes(final), _RENAME_EXCHANGE) == 0:
        shutil.rmtree(staging)  # now holds the old version
        return
    old = final.with_name(f".tmp-old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)  # brief window without the track on filesystems lacking RENAME_EXCHANGE
    os.rename(staging, final)
    shutil.rmtree(old)


def up_to_date(store: Path, track_id: str, src_hash: str, ladder: LadderConfig,
               protection: Protection = Protection()) -> bool:  # noqa: B008 - frozen, immutable default
    try:
        doc = json.loads((tracks_dir(store) / track_id / "track.json").read_text())
    except (OSError, ValueError):
        return False
    return (doc.get("source", {}).get("xxh3") == src_hash and doc.get("ladder") == ladder.fingerprint()
            and doc.get("format_version") == catalog.FORMAT_VERSION and protection.matches(doc.get("protection")))


# --- one track ---------------------------------------------------------------

def cut_rendition(work: Path, staging: Path, rendition_id: str, codec: str, bitrate: int, fmt: plan.OutputFormat,
                  points: list[int], channels: int, outputs: tuple[str | None, ...] = (None,),
                  key: ContentKey | None = None) -> list[catalog.Rendition]:
    """Re-cut ffmpeg's fragmented MP4 into our init + numbered segments, once per output.

    ``outputs`` are protection schemes (None: clear); each is written to
    ``staging/[{scheme}/]{rendition_id}/``.  ``hls-aes128`` is the clear
    segment encrypted whole (the init stays clear); ``cenc`` encrypts every
    sample and writes the protected sample entry, ``pssh`` and the per-sample
    IVs into the boxes.
    """
    if any(outputs) and key is None:
        raise PackageError(f"{rendition_id}: protected output needs a content key")
    rate = fmt.flac_rate if codec == "flac" else fmt.aac_rate
    priming = plan.AAC_PRIMING if codec == "aac" else 0
    dirs = {scheme: staging / (f"{scheme}/{rendition_id}" if scheme else rendition_id) for scheme in outputs}
    for d in dirs.values():
        d.mkdir(parents=True)
    segments: dict[str | None, list[catalog.Segment]] = {scheme: [] for scheme in outputs}
    need_clear = any(scheme != "cenc" for scheme in outputs)  # clear output, or the plaintext of hls-aes128
    with work.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        samples = mp4.read_fragmented(buf)
        if samples.timescale != rate:
            raise PackageError(f"{rendition_id}: encoder wrote timescale {samples.timescale}, expected {rate}")
        presentation = min(round(points[-1] * rate / fmt.aac_rate), sum(samples.durations) - priming)
        padding = sum(samples.durations) - priming - presentation
        inits = {}
        for scheme in outputs:
            stsd, psshs = samples.stsd, []
            if scheme == "cenc":
                assert key is not None
                stsd = mp4.protect_stsd(samples.stsd, key.kid, cenc.IV_SIZE)
                psshs = [mp4.pssh(cenc.COMMON_SYSTEM_ID.bytes, [key.kid])]
            inits[scheme] = mp4.init_segment(stsd, rate, priming, presentation, padding, psshs)
            (dirs[scheme] / "init.mp4").write_bytes(inits[scheme])
        for number, c in enumerate(plan.cut(samples.durations, points, fmt.aac_rate, rate, priming), start=1):
            data = [buf[o:o + s] for o, s in zip(samples.offsets[c.first_sample:c.end_sample],
                                                 samples.sizes[c.first_sample:c.end_sample])]
            durations = samples.durations[c.first_sample:c.end_sample]
            clear = mp4.media_segment(number, c.decode_time, durations, data) if need_clear else b""
            for scheme in outputs:
                iv = None
                if scheme is None:
                    body = clear
                elif scheme == "hls-aes128":
                    assert key is not None
                    iv = aes128.derive_iv(key.key, f"{scheme}/{rendition_id}/{number}", clear)
                    body = aes128.encrypt_cbc(clear, key.key, iv)
                else:
                    assert key is not None
                    encrypted, ivs = cenc.encrypt_samples(data, key.key, f"{scheme}/{rendition_id}/{number}")
                    body = mp4.media_segment(number, c.decode_time, durations, encrypted, ivs)
                seg = catalog.Segment(number, round(c.presentation, 6), c.decode_time, c.media_duration, len(body),
                                      xxhash.xxh3_64_hexdigest(body), iv.hex() if iv else None)
                (dirs[scheme] / seg.name).write_bytes(body)
                segments[scheme].append(seg)
    bits = fmt.flac_bits if codec == "flac" else None
    return [catalog.Rendition(rendition_id, codec, bitrate, rate, channels, bits, priming, len(inits[scheme]),
                              xxhash.xxh3_64_hexdigest(inits[scheme]), tuple(segments[scheme]), scheme,
                              key.kid_hex if scheme and key else None)
            for scheme in outputs]


def package_one(src: Path, store: Path, ladder: LadderConfig, track_id: str | None, src_hash: str,
                progress: Callable[[float], None] | None = None,
                protection: Protection = Protection(),  # noqa: B008 - frozen, immutable default
                keys: TrackKeys | None = None) -> catalog.Track:
    """Build one track in a staging directory and publish it.

    A protected track's keys are fetched (or minted) from ``keys`` once the
    source has decoded, so a bad source mints nothing; they are in the key
    store before the track is published.
    """
    if protection.enabled and keys is None:
        raise PackageError("protected packaging needs a key store")
    try:
        source = probe(src)
    except SourceError as exc:
        raise PackageError(str(exc)) from None
    track_id = track_id or src_hash[:20]
    fmt = plan.output_format(source.sample_rate, source.channels, source.bits, source.lossless)
    staging = staging_dir(store, track_id)
    work = staging / ".work"
    work.mkdir(parents=True)
    try:
        args = transcode.command(src, ladder, fmt, work)
        try:
            measured = transcode.run(args, source.duration, progress)
        except transcode.TranscodeError as exc:
            raise PackageError(str(exc)) from None
        decoded = measured.samples / source.sample_rate
        if measured.samples == 0:
            raise PackageError("no audio decoded (empty or corrupt stream)")
        if source.duration and decoded < source.duration - TRUNCATION_TOLERANCE:
            raise PackageError(f"truncated or corrupt: decoded {decoded:.2f} s of the {source.duration:.2f} s "
                               "its header declares")
        total = round(measured.samples * fmt.aac_rate / source.sample_rate)
        points = plan.boundaries(total, ladder.segment_duration, fmt.aac_rate)
        content_keys: dict[str, ContentKey] = {}
        if keys is not None and protection.enabled:
            try:
                content_keys = keys(track_id, protection.groups([r.id for r in ladder.rendition]))
            except (KeyStoreError, ConfigError) as exc:
                raise PackageError(str(exc)) from None
        renditions = tuple(
            out
            for r in ladder.rendition
            for out in cut_rendition(work / f"{r.id}.mp4", staging, r.id, r.codec, r.bitrate, fmt, points, 2,
                                     protection.outputs, content_keys.get(protection.group(r.id)))
        )
        shutil.rmtree(work)
        track = catalog.Track(
            track_id=track_id,
            duration=round(total / fmt.aac_rate, 6),
            segment_target=ladder.segment_duration,
            renditions=renditions,
            metadata=metadata(source, decoded),
            loudness=loudness(measured, ladder),
            source={"name": src.name, "bytes": source.size, "xxh3": src_hash, "warnings": list(source.warnings)},
            ladder=ladder.fingerprint(),
            protection=protection.record(content_keys),
        )
        write_track_files(staging, track)
        publish(staging, tracks_dir(store) / track_id)
        return track
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def metadata(source: Source, decoded: float) -> dict[str, object]:
    return {
        **{k: source.tags.get(k) for k in ("title", "artist", "album", "isrc")},
        "duration": round(decoded, 6),
        "sample_rate": source.sample_rate,
        "channels": source.channels,
        "bit_depth": source.bits,
        "codec": source.codec,
    }


def loudness(m: transcode.Measurement, ladder: LadderConfig) -> dict[str, object]:
    return {
        "standard": "ITU-R BS.1770-4",
        "integrated_lufs": m.integrated_lufs,
        "true_peak_dbtp": m.true_peak_dbtp,
        "target_lufs": ladder.loudness.target_lufs,
        "ceiling_dbtp": ladder.loudness.ceiling_dbtp,
        "gain_db": transcode.replay_gain(m, ladder.loudness.target_lufs, ladder.loudness.ceiling_dbtp),
    }


def write_track_files(directory: Path, track: catalog.Track) -> None:
    """Manifests for what the track has (HLS: clear or hls-aes128; DASH: clear or cenc) and track.json."""
    for_hls = track.renditions_for(hls.SCHEMES)
    if for_hls:
        (directory / "master.m3u8").write_text(hls.master_playlist(track))
    for r in for_hls:
        (directory / r.path / "index.m3u8").write_text(hls.media_playlist(r))
    if track.renditions_for(dash.SCHEMES):
        (directory / "manifest.mpd").write_text(dash.mpd(track))
    (directory / "track.json").write_text(json.dumps(catalog.to_json(track), indent=1, ensure_ascii=False) + "\n")


# --- batch -------------------------------------------------------------------

def package_batch(sources: list[Path], store: Path, ladder: LadderConfig, *, track_id: str | None = None,
                  jobs: int = 1, force: bool = False, progress: Callable[[float], None] | None = None,
                  on_done: Callable[[Outcome], None] | None = None, verbose: bool = False,
                  protection: Protection = Protection(),  # noqa: B008 - frozen, immutable default
                  keys: TrackKeys | None = None) -> list[Outcome]:
    """Package many sources with ``jobs`` in parallel; never raises for a bad source.

    ``protection`` defaults to clear output here (the library call the demo
    uses); the ``legato package`` command defaults to both schemes.
    """
    if protection.enabled and keys is None:
        raise PackageError("protected packaging needs a key store (or clear output)")
    if track_id is not None and len(sources) != 1:
        raise PackageError("--track-id names one track; give exactly one source with it")
    if track_id is not None and not TRACK_ID_RE.fullmatch(track_id):
        raise PackageError(f"track id {track_id!r} must match {TRACK_ID_RE.pattern}")
    tracks_dir(store).mkdir(parents=True, exist_ok=True)
    sweep_stale(store)
    claimed: dict[str, Path] = {}
    lock = threading.Lock()

    def one(src: Path) -> Outcome:
        try:
            try:
                src_hash = source_hash(src)
            except OSError as exc:
                raise PackageError(f"cannot read: {exc.strerror}") from None
            tid = track_id or src_hash[:20]
            with lock:
                first = claimed.setdefault(tid, src)
            if first != src:
                return Outcome(src, "skipped", tid, f"same content as {first}")
            if not force and up_to_date(store, tid, src_hash, ladder, protection):
                return Outcome(src, "skipped", tid, "already packaged with this ladder")
            package_one(src, store, ladder, tid, src_hash, progress, protection, keys)
            return Outcome(src, "packaged", tid)
        except PackageError as exc:
            return Outcome(src, "failed", None, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug, not bad input: one line, traceback only when asked
            if verbose:
                traceback.print_exc()
            return Outcome(src, "failed", None, f"internal error: {type(exc).__name__}: {exc}")

    def run(src: Path) -> Outcome:
        outcome = one(src)
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(run, sources))
