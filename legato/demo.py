"""`legato demo`: synthesise sample tracks, package them, serve them through
the tiers, prove they play.

Runs the same code a deployment runs: the packager on real (synthesised)
audio, a local topology (origin, two regionals, edges: config/topology.toml
with free ports) on 127.0.0.1, and ffmpeg decoding every rendition through
an edge exactly as a player would fetch it; a second pass shows the edge
answering from its cache.
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


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from legato.cli import HelpFormatter

    p = sub.add_parser("demo", help="generate, package, serve and verify sample tracks",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dir", type=Path, default=Path(".demo"),
                   help="working directory: sources/ and store/ are kept here between runs")
    p.add_argument("--topology", type=Path, default=Path("config/topology.toml"),
                   help="topology TOML; its ports are replaced by free ones unless --fixed-ports")
    p.add_argument("--fixed-ports", action="store_true", help="use the topology's own listen addresses")
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
                           "-"], capture_output=True, timeout=300, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        return Check(url, expected, None, lines[-1] if lines else f"ffmpeg exit status {proc.returncode}")
    return Check(url, expected, len(proc.stdout) / 4 / 48000)


def demo_topology(path: Path, state_dir: Path, fixed_ports: bool):  # type: ignore[no-untyped-def]
    """The topology to run: the file's, with free ports and state under the demo dir."""
    import dataclasses

    from legato.config import load
    from legato.topology import Topology

    topology = load(Topology, path) if path.exists() else Topology(
        regional=(_node("regional-a"), _node("regional-b")), edge=(_node("edge-1"),))
    if not fixed_ports:
        free = "127.0.0.1:0"
        topology = dataclasses.replace(
            topology, origin=dataclasses.replace(topology.origin, listen=free),
            regional=tuple(dataclasses.replace(n, listen=free) for n in topology.regional),
            edge=tuple(dataclasses.replace(n, listen=free) for n in topology.edge))
    return dataclasses.replace(topology, state_dir=state_dir)


def _node(name: str):  # type: ignore[no-untyped-def]
    from legato.topology import CacheNode

    return CacheNode(name=name)


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

    print("3/4 starting the topology (origin, regionals, edges)")
    from legato.topology import start

    topology = demo_topology(args.topology, args.dir / "topology", args.fixed_ports)
    try:
        with start(topology, store) as nodes:
            for n in nodes:
                print(f"    {n.kind:<8} {n.name:<12} {n.url}")
            edge = next(n.url for n in nodes if n.kind == "edge")
            return _verify_and_serve(args, store, sources, ids, edge, nodes)
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


def _verify_and_serve(args: argparse.Namespace, store: Path, sources: list[Path], ids: dict[Path, str],
                      edge: str, nodes: list) -> int:  # type: ignore[type-arg]
    import urllib.request

    print(f"4/4 decoding every rendition through the edge {edge} with ffmpeg")
    failures = 0
    for src in sources:
        doc = json.loads((store / "tracks" / ids[src] / "track.json").read_text())
        for r in doc["renditions"]:
            check = decode_over_http(f"{edge}/tracks/{ids[src]}/{r['id']}/index.m3u8", doc["duration"])
            status = "ok " if check.ok else "BAD"
            detail = f"{check.decoded:.3f} s decoded, source {check.expected:.3f} s" if check.decoded is not None \
                else check.error
            print(f"    {status} {ids[src]}/{r['id']}: {detail}")
            failures += not check.ok
    if failures:
        print(f"demo: {failures} rendition(s) did not decode correctly", file=sys.stderr)
        return 1
    first = ids[sources[0]]
    with urllib.request.urlopen(f"{edge}/tracks/{first}/aac-160k/seg-00001.m4s", timeout=10) as resp:
        print(f"    replay of {first}/aac-160k/seg-00001.m4s at the edge: X-Cache {resp.headers.get('X-Cache')}, "
              f"Age {resp.headers.get('Age')}, Via {resp.headers.get('Via')}")
    print("\nPlay these in a player (shaka-player, hls.js, Safari, ffplay, VLC):")
    for src in sources:
        print(f"  HLS  {edge}/tracks/{ids[src]}/master.m3u8")
        print(f"  DASH {edge}/tracks/{ids[src]}/manifest.mpd")
    print(f"  metrics {edge}/metrics   health {edge}/healthz   node logs in {args.dir / 'topology' / 'logs'}")
    if args.once:
        return 0
    print("\nServing until Ctrl-C.")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(n.process.poll() is None for n in nodes):
            time.sleep(0.5)
        print("demo: a node exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
