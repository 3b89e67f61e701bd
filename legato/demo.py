"""`legato demo`: the whole story on one machine.

1. synthesise three sample tracks;
2. make the secrets a deployment keeps apart: the key store's master key and
   the token signing key pair (DIR/keys/, mode 0600);
3. package the tracks with both protections (HLS AES-128 and CENC), their
   content keys wrapped in the key store outside the served store;
4. licence them worldwide (`legato license set`);
5. start a local topology on 127.0.0.1 with free ports: origin (with the key
   and licence service), two regionals, three token- and licence-checking
   edges (loopback clients count as GB) and the director;
6. prove a player gets music: ffmpeg decodes a track through the director
   with a session token, and the decoded length matches the source;
7. run `legato bench load`: a few hundred simulated players for about a
   minute with a viral surge in the middle, and print the summary (start-up
   p50/p99, rebuffer ratio, hit ratio per tier, origin fetches) with the
   path of the report.

Every step is the code and the commands a deployment runs.
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
KEY_ID = "k1"


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
    p.add_argument("--players", type=int, default=300, help="simulated players in the load run (0: no load run)")
    p.add_argument("--load-seconds", type=float, default=60.0, help="length of the load run")
    p.add_argument("--once", action="store_true", help="exit after the load run instead of serving until Ctrl-C")
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


def legato(*args: str) -> None:
    """Run a `legato` command as a user would; raise with its message when it fails."""
    proc = subprocess.run([sys.executable, "-m", "legato.cli", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr or proc.stdout).strip())


def make_secrets(keys: Path) -> None:
    """The master key and the token signing pair, made once and kept between runs."""
    keys.mkdir(parents=True, exist_ok=True)
    if not (keys / "master.key").exists():
        legato("keys", "genkey", "--out", str(keys / "master.key"))
    if not (keys / "signing" / f"{KEY_ID}.pem").exists():
        legato("token", "genkey", "--out", str(keys / "signing"), "--key-id", KEY_ID)


def write_configs(dir_: Path) -> dict[str, Path]:
    """Node configs for the demo topology (absolute paths: nodes may run anywhere)."""
    keys, conf = (dir_ / "keys").resolve(), dir_ / "config"
    conf.mkdir(parents=True, exist_ok=True)
    public = f'[tokens.public_keys]\n{KEY_ID} = "{keys / "signing" / f"{KEY_ID}.pub.pem"}"\n'
    files = {
        "origin": 'trusted_proxies = ["127.0.0.0/8"]  # the local tiers: their X-Forwarded-For names the client\n\n'
                  f'[keys]\nstore = "{keys / "keys.sqlite"}"\nmaster_key_file = "{keys / "master.key"}"\n\n'
                  f'[tokens]\nrate_per_session = 20.0\nburst = 40\n\n{public}',
        "edge": '[prefetch]\nsegments = 2\n\n[tokens]\nrate_per_session = 20.0\nburst = 40\n\n'
                f'{public}\n[geo]\ndatabase = "bundled"\nloopback_country = "GB"\n'
                'trusted_proxies = ["127.0.0.0/8"]\n',
        "issuer": f'[tokens]\nprivate_key_file = "{keys / "signing" / f"{KEY_ID}.pem"}"\nkey_id = "{KEY_ID}"\n',
        "director": f'default_region = "eu"\nload_floor = 20\n\n[regions]\neu = ["GB", "DE", "FR", "SE"]\n\n'
                    f'[tokens]\n\n{public}\n[geo]\nloopback_country = "GB"\n',
    }
    paths = {}
    for name, text in files.items():
        paths[name] = conf / f"{name}.toml"
        paths[name].write_text(f"# written by `legato demo`\n{text}")
    return paths


def demo_topology(path: Path, state_dir: Path, fixed_ports: bool, configs: dict[str, Path]):  # type: ignore[no-untyped-def]
    """The topology to run: the file's nodes with the demo's configs, free ports, a director,
    every edge in region eu (loopback clients count as GB)."""
    import dataclasses

    from legato.config import load
    from legato.topology import CacheNode, DirectorNode, Topology

    topology = load(Topology, path) if path.exists() else Topology(
        regional=(CacheNode(name="regional-a"), CacheNode(name="regional-b")),
        edge=tuple(CacheNode(name=f"edge-{i}") for i in (1, 2, 3)))
    listen = (lambda n: n.listen) if fixed_ports else (lambda n: "127.0.0.1:0")
    director = topology.director if topology.director.name else DirectorNode(name="director")
    return dataclasses.replace(
        topology, state_dir=state_dir,
        origin=dataclasses.replace(topology.origin, listen=listen(topology.origin), config=configs["origin"]),
        regional=tuple(dataclasses.replace(n, listen=listen(n)) for n in topology.regional),
        edge=tuple(dataclasses.replace(n, listen=listen(n), config=configs["edge"], region="eu")
                   for n in topology.edge),
        director=dataclasses.replace(director, listen=listen(director), config=configs["director"]))


def run(args: argparse.Namespace) -> int:
    from legato.config import ConfigError

    try:
        return _run(args)
    except (RuntimeError, ConfigError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from legato.config import load
    from packager.cli import progress_bar
    from packager.ladder import LadderConfig
    from packager.pipeline import package_batch
    from packager.protection import KeyStoreKeys, Protection, load_keys_config
    from packager.samples import write_sample

    sources_dir, store, keys_dir = args.dir / "sources", args.dir / "store", args.dir / "keys"
    configs = write_configs(args.dir)
    topology = demo_topology(args.topology, args.dir / "topology", args.fixed_ports, configs)  # fail early
    sources = []
    print(f"1/7 sample tracks in {sources_dir}")
    for style, title in DEMO_TRACKS:
        path = sources_dir / f"{style}.flac"
        if not path.exists():
            write_sample(path, args.seconds, style=style, title=title)
        sources.append(path)

    print(f"2/7 secrets in {keys_dir}: master key of the key store, token signing key {KEY_ID}")
    make_secrets(keys_dir)

    print(f"3/7 packaging into {store} (HLS AES-128 and CENC; content keys in {keys_dir / 'keys.sqlite'})")
    ladder_file = Path("config/ladder.toml")
    ladder = load(LadderConfig, ladder_file) if ladder_file.exists() else LadderConfig()
    keys = KeyStoreKeys(load_keys_config(configs["origin"], None))
    ids = {src: src.stem for src in sources}
    with progress_bar(args.seconds * len(sources), desc="    packaging") as bar:
        for src in sources:
            for o in package_batch([src], store, ladder, track_id=ids[src], progress=bar.update,
                                   protection=Protection.from_option("both"), keys=keys):
                bar.write(f"    {o.status:<9} {src.name} -> tracks/{ids[src]} {o.reason}")
                if o.status == "failed":
                    return 1

    print("4/7 licences: every track worldwide (legato license set TRACK --allow WW)")
    for src in sources:
        legato("license", "set", ids[src], "--store", str(store), "--allow", "WW")

    print("5/7 starting the topology (origin + key service, 2 regionals, 3 edges, director)")
    from legato.topology import start

    with start(topology, store) as nodes:
        for n in nodes:
            print(f"    {n.kind:<8} {n.name:<12} {n.url}")
        director = next(n.url for n in nodes if n.kind == "director")
        return _verify_and_load(args, store, sources, ids, director, nodes)


def _token(keys_dir: Path, track: str) -> str:
    import uuid

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from drm import tokens
    from legato.config import ConfigError

    key_file = keys_dir / "signing" / f"{KEY_ID}.pem"
    key = load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"private key file {key_file}: not an Ed25519 key")
    return tokens.issue(key, KEY_ID, user="demo", session=uuid.uuid4().hex, tracks=(track,), now=time.time(),
                        ttl=3600)


def _verify_and_load(args: argparse.Namespace, store: Path, sources: list[Path], ids: dict[Path, str],
                     director: str, nodes: list) -> int:  # type: ignore[type-arg]
    keys_dir = args.dir / "keys"
    first = ids[sources[0]]
    doc = json.loads((store / "tracks" / first / "track.json").read_text())
    url = f"{director}/tracks/{first}/master.m3u8?token={_token(keys_dir, first)}"
    print(f"6/7 ffmpeg plays {first} through the director with a session token (HLS, AES-128)")
    check = decode_over_http(url, doc["duration"])
    if not check.ok:
        print(f"demo: {first} did not decode: {check.error or f'{check.decoded} s of {check.expected} s'}",
              file=sys.stderr)
        return 1
    print(f"    ok  {check.decoded:.3f} s decoded, source {check.expected:.3f} s")
    report = args.dir / "report"
    if args.players > 0:
        print(f"7/7 bench load: {args.players} players for {args.load_seconds:.0f} s, viral surge in the middle")
        load = subprocess.run([sys.executable, "-m", "legato.cli", "bench", "load", "--entry", director,
                               "--tracks", ",".join(ids[s] for s in sources),
                               "--players", str(args.players), "--duration", str(args.load_seconds),
                               "--surge-at", str(args.load_seconds / 3), "--surge-for", str(args.load_seconds / 3),
                               "--signing-key", str(keys_dir / "signing" / f"{KEY_ID}.pem"), "--key-id", KEY_ID,
                               *[f"--metrics={n.kind}={n.url}" for n in nodes if n.kind != "director"],
                               "--out", str(report)], check=False)
        if load.returncode != 0:
            print(f"demo: the load run reported errors (see {report / 'report.md'})", file=sys.stderr)
            return 1
    print("\nPlay in a player (shaka-player, hls.js, Safari, ffplay), with a fresh token:")
    print(f"  legato token issue --config {args.dir / 'config' / 'issuer.toml'} --user me --track {first}")
    print(f"  HLS  {director}/tracks/{first}/master.m3u8?token=TOKEN")
    print(f"  DASH {director}/tracks/{first}/manifest.mpd?token=TOKEN")
    print(f"  node logs in {args.dir / 'topology' / 'logs'}")
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
