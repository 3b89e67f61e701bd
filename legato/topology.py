"""A local topology (origin -> regionals -> edges, and a director) from one
TOML file: `legato up` starts it, `legato purge` fans a purge out to its cache
nodes.

Every node is a real `legato` process on 127.0.0.1.  Nodes are started in
tier order (origin, then regionals pointing at the origin, then edges
pointing at every regional, then the director pointing at every edge) so each
knows its upstream's actual URL, which also makes port 0 usable.  A node's
``config`` names its own TOML file (keys, tokens, geo...); the topology's
flags (listen, upstreams, cache) override it.  Each node's stderr goes to ``LOGS/NAME.log``; the
URLs of a running topology are written to ``STATE/topology.json`` for
`legato purge` and for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from legato import config as cfg
from legato.cli import HelpFormatter
from legato.config import section, setting

ADMIN_TOKEN_ENV = "LEGATO_ADMIN_TOKEN"
LISTENING = " listening on "


@dataclass(frozen=True)
class OriginNode:
    name: str = setting("origin", "node name")
    listen: str = setting("127.0.0.1:8080", "HOST:PORT (port 0: any free port)")
    store: Path = setting(Path("store"), "store directory written by `legato package`")  # noqa: RUF009
    workers: int = setting(1, "worker processes")
    config: Path = setting(Path(""), "the node's own TOML file (e.g. its key service); none when empty")  # noqa: RUF009


@dataclass(frozen=True)
class CacheNode:
    name: str = setting("", "node name (unique in the topology)")
    listen: str = setting("127.0.0.1:0", "HOST:PORT (port 0: any free port)")
    cache_dir: Path = setting(Path(""), "cache directory (default: STATE/cache/NAME)")  # noqa: RUF009
    cache_size: int = setting(1 << 30, "disk tier size in bytes")
    policy: str = setting("listen", "eviction policy")
    workers: int = setting(1, "worker processes")
    region: str = setting("", "region an edge serves (the director's country -> region map); empty: default")
    config: Path = setting(Path(""), "the node's own TOML file (e.g. an edge's tokens and geo); none when empty")  # noqa: RUF009

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("every regional/edge needs a name")


@dataclass(frozen=True)
class DirectorNode:
    name: str = setting("", "node name; empty: the topology has no director")
    listen: str = setting("127.0.0.1:0", "HOST:PORT (port 0: any free port)")
    workers: int = setting(1, "worker processes")
    config: Path = setting(Path(""), "the director's own TOML file (tokens, geo, regions); none when empty")  # noqa: RUF009


@dataclass(frozen=True)
class Topology:
    state_dir: Path = setting(Path(".legato"), "where logs, caches and topology.json of a running topology go")  # noqa: RUF009
    admin_token: str = setting("", f"purge token for every cache node (or ${ADMIN_TOKEN_ENV})")
    origin: OriginNode = section(OriginNode, "the origin")  # noqa: RUF009
    regional: tuple[CacheNode, ...] = setting((), "regional nodes ([[regional]] tables)")
    edge: tuple[CacheNode, ...] = setting((), "edge nodes ([[edge]] tables)")
    director: DirectorNode = section(DirectorNode, "the director (optional: set its name)")  # noqa: RUF009

    def __post_init__(self) -> None:
        names = [self.origin.name] + [n.name for n in self.regional + self.edge] + (
            [self.director.name] if self.director.name else [])
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        if not self.regional or not self.edge:
            raise ValueError("a topology needs at least one regional and one edge")


@dataclass
class Running:
    kind: str
    name: str
    url: str
    process: subprocess.Popen[str]


def _config(path: Path) -> list[str]:
    return ["--config", str(path)] if str(path) not in ("", ".") else []


def _token(topology: Topology) -> str:
    return topology.admin_token or os.environ.get(ADMIN_TOKEN_ENV, "")


def _spawn(kind: str, name: str, args: list[str], log_dir: Path, token: str) -> Running:
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **({ADMIN_TOKEN_ENV: token} if token else {}))
    with (log_dir / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "legato.cli", kind, *args], stdout=subprocess.PIPE,
                                stderr=log, stdin=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the readiness line, or EOF if it died
    if LISTENING not in line:
        proc.wait()
        tail = (log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{kind} {name} did not start (exit {proc.returncode}): {' | '.join(tail)}")
    return Running(kind, name, line.split(LISTENING, 1)[1].strip(), proc)


def _healthy(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become healthy within {timeout:.0f} s")
        time.sleep(0.05)


def stop(nodes: list[Running], timeout: float = 10.0) -> None:
    """SIGTERM every node (edges first), then SIGKILL what is left after ``timeout``."""
    for node in reversed(nodes):
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in reversed(nodes):
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
        if node.process.stdout:
            node.process.stdout.close()


@contextmanager
def start(topology: Topology, store: Path | None = None, access_log: bool = False) -> Iterator[list[Running]]:
    """Start every node, wait until all answer /healthz, yield them; stop them on exit."""
    logs = topology.state_dir / "logs"
    token = _token(topology)
    quiet = [] if access_log else ["--no-access-log"]
    nodes: list[Running] = []
    try:
        o = topology.origin
        nodes.append(_spawn("origin", o.name, [*_config(o.config), "--store", str(store or o.store),
                                                "--listen", o.listen, "--workers", str(o.workers), *quiet],
                            logs, token))
        for kind, members, ups in (("regional", topology.regional, lambda: [nodes[0].url]),
                                   ("edge", topology.edge, lambda: [n.url for n in nodes if n.kind == "regional"])):
            for n in members:
                cache_dir = n.cache_dir if str(n.cache_dir) not in ("", ".") else topology.state_dir / "cache" / n.name
                args = [*_config(n.config), "--name", n.name, "--listen", n.listen, "--cache-dir", str(cache_dir),
                        "--cache-size", str(n.cache_size), "--policy", n.policy, "--workers", str(n.workers), *quiet]
                for url in ups():
                    args += ["--upstream", url]
                nodes.append(_spawn(kind, n.name, args, logs, token))
        d = topology.director
        if d.name:
            regions = {n.name: n.region for n in topology.edge}
            args = [*_config(d.config), "--listen", d.listen, "--workers", str(d.workers), *quiet]
            for running in nodes:
                if running.kind == "edge":
                    args += ["--edge", f"{running.name}={running.url}"
                             + (f"@{regions[running.name]}" if regions[running.name] else "")]
            nodes.append(_spawn("director", d.name, args, logs, token))
        for node in nodes:
            _healthy(node.url)
        state = [{"kind": n.kind, "name": n.name, "url": n.url, "pid": n.process.pid} for n in nodes]
        (topology.state_dir / "topology.json").write_text(json.dumps(state, indent=1) + "\n")
        yield nodes
    finally:
        stop(nodes)
        (topology.state_dir / "topology.json").unlink(missing_ok=True)


# --- commands -----------------------------------------------------------------

def register_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start a local topology from a TOML file", formatter_class=HelpFormatter,
                       description=__doc__)
    p.add_argument("topology", type=Path, help="topology TOML (see config/topology.toml)")
    p.add_argument("--store", type=Path, default=None, help="store directory for the origin (default: from the file)")
    p.add_argument("--access-log", action="store_true", help="write each node's JSON access log into its log file")
    p.set_defaults(func=run_up)


def register_purge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("purge", help="purge a path or prefix from every cache node of a topology",
                       formatter_class=HelpFormatter,
                       description="POST /admin/purge to every regional and edge of a running topology and report "
                       "each node's answer. A target ending in '/' is a prefix (e.g. /tracks/ID/ purges a whole "
                       "track); otherwise an exact path. Exit status 1 if any node failed.")
    p.add_argument("target", metavar="PATH-OR-PREFIX", help="e.g. /tracks/ID/ or /tracks/ID/aac-96k/index.m3u8")
    p.add_argument("--config", type=Path, required=True, help="topology TOML the nodes were started from")
    p.set_defaults(func=run_purge)


def _load(path: Path) -> Topology:
    return cfg.load(Topology, path)


def run_up(args: argparse.Namespace) -> int:
    try:
        topology = _load(args.topology)
    except cfg.ConfigError as exc:
        print(f"legato up: {exc}", file=sys.stderr)
        return 2
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with start(topology, args.store, args.access_log) as nodes:
            for n in nodes:
                print(f"{n.kind} {n.name} {n.url}", flush=True)
            while not stopping:
                dead = [n for n in nodes if n.process.poll() is not None]
                if dead:
                    print(f"legato up: {dead[0].kind} {dead[0].name} exited with status "
                          f"{dead[0].process.returncode}; stopping (see {topology.state_dir / 'logs'})",
                          file=sys.stderr)
                    return 1
                time.sleep(0.2)
    except RuntimeError as exc:
        print(f"legato up: {exc}", file=sys.stderr)
        return 1
    return 0


def purge_targets(topology: Topology) -> list[tuple[str, str, str]]:
    """(kind, name, url) of every cache node: from a running topology's state file, else the TOML."""
    state = topology.state_dir / "topology.json"
    if state.exists():
        return [(n["kind"], n["name"], n["url"]) for n in json.loads(state.read_text())
                if n["kind"] in ("regional", "edge")]
    return [(kind, n.name, f"http://{n.listen}") for kind, group in (("regional", topology.regional),
                                                                      ("edge", topology.edge)) for n in group]


def run_purge(args: argparse.Namespace) -> int:
    try:
        topology = _load(args.config)
    except cfg.ConfigError as exc:
        print(f"legato purge: {exc}", file=sys.stderr)
        return 2
    token = _token(topology)
    if not token:
        print(f"legato purge: no admin_token in {args.config} and no ${ADMIN_TOKEN_ENV}", file=sys.stderr)
        return 2
    key = "prefix" if args.target.endswith("/") else "path"
    body = json.dumps({key: args.target}).encode()
    failed = 0
    for kind, name, url in purge_targets(topology):
        req = urllib.request.Request(url + "/admin/purge", data=body, method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = json.loads(resp.read() or b"{}")
                print(f"{kind} {name}: purged {answer.get('purged', 0)}")
        except urllib.error.HTTPError as exc:
            failed += 1
            print(f"{kind} {name}: HTTP {exc.code} {exc.read().decode(errors='replace').strip()[:200]}")
        except (urllib.error.URLError, OSError) as exc:
            failed += 1
            print(f"{kind} {name}: unreachable ({getattr(exc, 'reason', exc)})")
    return 1 if failed else 0
