"""`legato package`: the content team's command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packager.pipeline import Outcome

DESCRIPTION = """\
Package source tracks into the store: AAC-LC and FLAC renditions as CMAF
segments, HLS and DASH manifests and a track.json catalog record per track.

Sources may be files or directories (searched recursively for audio files).
A track is built in a temporary directory inside the store and renamed into
place when complete. Re-running on an unchanged source with an unchanged
ladder and protection does nothing (use --force to rebuild). Exit status: 0
when every source was packaged or skipped, 1 when any failed, 2 on bad usage
or config (a key store that cannot be opened, a missing or wrong master key).

Protection (--protect, default both): every rendition is encrypted once at
packaging time with the track's content key (one random 128-bit key and key
id per track; per rendition with --key-scope rendition):
  hls-aes128  HLS, whole segments AES-128-CBC, key at /keys/{kid}:
              STORE/tracks/ID/master.m3u8 -> hls-aes128/RENDITION/index.m3u8
  cenc        DASH, Common Encryption (AES-CTR), ClearKey licence at
              /license/clearkey: STORE/tracks/ID/manifest.mpd -> cenc/RENDITION/
  both        both of the above (no clear renditions are written)
  none        clear HLS + DASH: STORE/tracks/ID/RENDITION/
Keys live in the key store (--keystore, or [keys] store in --keys-config),
wrapped with the master key from [keys] master_key_file or the environment
variable LEGATO_MASTER_KEY (or [keys] master_key_env); track.json records
only key ids. A track keeps its key across re-packaging (--force included);
a key is created only for a track the key store has no key for.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from legato.cli import HelpFormatter

    p = sub.add_parser("package", help="package source tracks into a store", description=DESCRIPTION,
                       formatter_class=HelpFormatter)
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="audio files or directories")
    p.add_argument("--store", type=Path, required=True, help="store directory (tracks go to STORE/tracks/ID/)")
    p.add_argument("--track-id", help="track id for a single source (default: derived from the source content)")
    p.add_argument("--ladder", type=Path, default=None,
                   help="ladder TOML (default: the built-in ladder, identical to config/ladder.toml)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="tracks packaged in parallel")
    p.add_argument("--force", action="store_true",
                   help="rebuild tracks that are already up to date (protected tracks keep their keys)")
    p.add_argument("--protect", choices=("both", "hls-aes128", "cenc", "none"), default="both",
                   help="encryption: HLS AES-128, DASH Common Encryption, both, or none (clear)")
    p.add_argument("--key-scope", choices=("track", "rendition"), default="track",
                   help="one content key per track, or one per rendition")
    p.add_argument("--keys-config", type=Path, metavar="FILE",
                   help="TOML file whose [keys] table names the key store and the master key "
                   "(store, master_key_file, master_key_env)")
    p.add_argument("--keystore", type=Path, metavar="PATH",
                   help="key store file (SQLite, outside the store tree); overrides [keys] store")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="say which ffmpeg is used, print each source's probe, tracebacks of internal errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a TTY)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `legato --help` and other subcommands stay fast.
    from legato.config import ConfigError, load
    from packager import tools
    from packager.ladder import LadderConfig
    from packager.pipeline import PackageError, expand_sources, package_batch
    from packager.probe import SourceError, probe
    from packager.protection import KeyStoreKeys, Protection, TrackKeys

    try:
        ladder = load(LadderConfig, args.ladder) if args.ladder else LadderConfig()
    except ConfigError as exc:
        print(f"legato package: {exc}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("legato package: --jobs must be at least 1", file=sys.stderr)
        return 2
    missing = [p for p in args.sources if not p.exists()]
    if missing:
        for p in missing:
            print(f"legato package: {p}: no such file or directory", file=sys.stderr)
        return 2
    sources = expand_sources(args.sources)
    if not sources:
        print("legato package: no audio files found in the given directories", file=sys.stderr)
        return 2
    protection = Protection.from_option(args.protect, args.key_scope)
    keys: TrackKeys | None = None
    if protection.enabled:
        from drm.keys import KeyStoreError
        from packager.protection import load_keys_config

        try:
            cfg = load_keys_config(args.keys_config, args.keystore)
            if cfg.store is not None and args.store.resolve() in cfg.store.resolve().parents:
                raise ConfigError(f"key store {cfg.store} is inside the store {args.store}, which is served: "
                                  "keep it outside")
            keys = KeyStoreKeys(cfg)
        except (ConfigError, KeyStoreError) as exc:
            print(f"legato package: {exc}", file=sys.stderr)
            return 2
    try:
        ffmpeg_line = tools.describe()
    except tools.ToolMissing as exc:
        print(f"legato package: {exc}", file=sys.stderr)
        return 2
    if args.verbose:
        print(f"using {ffmpeg_line}", file=sys.stderr)
        print(f"ffprobe: {tools.ffprobe() or 'not found (probing with mutagen only)'}", file=sys.stderr)

    total = 0.0
    for src in sources:
        try:
            info = probe(src)
            total += info.duration
            if args.verbose:
                print(f"probe {src}: {info.codec} {info.sample_rate} Hz {info.channels} ch "
                      f"{info.bits or '-'} bit {info.duration:.2f} s tags={info.tags}", file=sys.stderr)
        except SourceError:
            pass  # reported with the outcome
    bar = progress_bar(total, disable=True if args.no_progress else None)

    def done(outcome: Outcome) -> None:
        bar.write(_line(outcome), file=sys.stderr) if args.verbose else None

    try:
        outcomes = package_batch(sources, args.store, ladder, track_id=args.track_id, jobs=args.jobs,
                                 force=args.force, progress=bar.update, on_done=done, verbose=args.verbose,
                                 protection=protection, keys=keys)
    except PackageError as exc:
        bar.close()
        print(f"legato package: {exc}", file=sys.stderr)
        return 2
    bar.close()
    counts = {s: sum(o.status == s for o in outcomes) for s in ("packaged", "skipped", "failed")}
    for outcome in outcomes:
        print(_line(outcome))
    print(f"{counts['packaged']} packaged, {counts['skipped']} skipped, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def progress_bar(seconds: float, disable: bool | None = None, desc: str = "packaging"):  # type: ignore[no-untyped-def]
    """A bar counting seconds of audio packaged (off when stderr is not a TTY)."""
    from tqdm import tqdm

    return tqdm(total=round(seconds), desc=desc, file=sys.stderr, disable=disable,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]")


def _line(o: Outcome) -> str:
    if o.status == "failed":
        return f"failed    {o.source}: {o.reason}"
    suffix = f" ({o.reason})" if o.reason else ""
    return f"{o.status:<9} {o.source} -> tracks/{o.track_id}{suffix}"
