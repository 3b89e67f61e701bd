"""`legato demo`: synthesise sample tracks, package them, serve them, prove they play.

Runs the same code a deployment runs: the packager on real (synthesised)
audio, an origin process on 127.0.0.1, and ffmpeg decoding every rendition
over HTTP exactly as a player would fetch it.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEMO_TRACKS = (("sunrise", "Sunrise"), ("harbour", "Harbour Lights"), ("lanterns", "Paper Lanterns"))
LISTENING = " listening on "


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from legato.cli import HelpFormatter

    p = sub.add_parser("demo", help="generate, package, serve and verify sample tracks",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dir", type=Path, default=Path(".demo"),
                   help="working directory: sources/ and store/ are kept here between runs")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT for the origin (port 0: any free port)")
    p.add_argument("--seconds", type=float, default=75.0, help="length of each synthesised track")
    p.add_argument("--once", action="store_true", help="exit after verification instead of serving until Ctrl-C")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Check:
    url: str
    expected: float
    decoded: float | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.decoded is not None and abs(self.decoded - self.expected) < 1024 / 44100 + 1e-3


def decode_over_http(url: str, expected: float) -> Check:
    """Decode a playlist with ffmpeg over HTTP; report the decoded duration."""
    from packager.tools import ffmpeg

    proc = subprocess.run([ffmpeg(), "-nostdin", "-v", "error", "-i", url, "-f", "s16le", "-ac", "2", "-ar", "48000",
                           "-"], capture_output=True, timeout=300)
    if proc.returncode != 0:
        return Check(url, expected, None, proc.stderr.decode(errors="replace").strip().splitlines()[-1:][0]
                     if proc.stderr else f"ffmpeg exit {proc.returncode}")
    return Check(url, expected, len(proc.stdout) / 4 / 48000)


def start_origin(store: Path, listen: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "legato.cli", "origin", "--store", str(store), "--listen", listen,
                             "--no-access-log"], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        if LISTENING in line:
            return proc, line.split(LISTENING, 1)[1].strip()
        if time.monotonic() > deadline:
            break
    proc.terminate()
    raise RuntimeError(f"origin did not start (exit status {proc.wait()})")


def run(args: argparse.Namespace) -> int:
    from legato.config import load
    from packager.cli import progress_bar
    from packager.ladder import LadderConfig
    from packager.pipeline import package_batch
    from packager.samples import write_sample

    sources_dir, store = args.dir / "sources", args.dir / "store"
    sources = []
    print(f"1/4 sample tracks in {sources_dir}")
    for style, title in DEMO_TRACKS:
        path = sources_dir / f"{style}.flac"
        if not path.exists():
            write_sample(path, args.seconds, style=style, title=title)
        sources.append(path)

    print(f"2/4 packaging into {store}")
    ladder_file = Path("config/ladder.toml")
    ladder = load(LadderConfig, ladder_file) if ladder_file.exists() else LadderConfig()
    ids = {src: src.stem for src in sources}
    with progress_bar(args.seconds * len(sources), desc="    packaging") as bar:
        for src in sources:
            for o in package_batch([src], store, ladder, track_id=ids[src], progress=bar.update):
                bar.write(f"    {o.status:<9} {src.name} -> tracks/{ids[src]} {o.reason}")
                if o.status == "failed":
                    return 1

    print("3/4 starting origin")
    origin, base = start_origin(store, args.listen)
    try:
        print(f"    origin at {base} (pid {origin.pid})")
        print("4/4 decoding every rendition over HTTP with ffmpeg")
        failures = 0
        for src in sources:
            doc = json.loads((store / "tracks" / ids[src] / "track.json").read_text())
            for r in doc["renditions"]:
                check = decode_over_http(f"{base}/tracks/{ids[src]}/{r['id']}/index.m3u8", doc["duration"])
                status = "ok " if check.ok else "BAD"
                detail = f"{check.decoded:.3f} s decoded, source {check.expected:.3f} s" if check.decoded is not None \
                    else check.error
                print(f"    {status} {ids[src]}/{r['id']}: {detail}")
                failures += not check.ok
        if failures:
            print(f"demo: {failures} rendition(s) did not decode correctly", file=sys.stderr)
            return 1
        print("\nPlay these in a player (shaka-player, hls.js, Safari, ffplay, VLC):")
        for src in sources:
            print(f"  HLS  {base}/tracks/{ids[src]}/master.m3u8")
            print(f"  DASH {base}/tracks/{ids[src]}/manifest.mpd")
        print(f"  metrics {base}/metrics   health {base}/healthz")
        if args.once:
            return 0
        print("\nServing until Ctrl-C.")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            origin.wait()
        except KeyboardInterrupt:
            print("\nstopping")
        return 0
    finally:
        if origin.poll() is None:
            origin.terminate()
            try:
                origin.wait(timeout=10)
            except subprocess.TimeoutExpired:
                origin.kill()
                origin.wait()
