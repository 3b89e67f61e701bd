"""Command line of the cache nodes: `legato regional` and `legato edge` share it.

Settings come from ``--config FILE`` (cache.config.NodeConfig, TOML); flags
override the file so one node can run without a topology.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from legato import config as cfg
from legato.cli import HelpFormatter

if TYPE_CHECKING:
    from aiohttp import web

    from cache.config import NodeConfig

N = TypeVar("N", bound="NodeConfig")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
ADMIN_TOKEN_ENV = "LEGATO_ADMIN_TOKEN"

DESCRIPTIONS = {
    "regional": "Run a regional (mid-tier) cache node: a pull-through cache of the origin, shared by edges "
                "that shard objects over the regionals by consistent hashing.",
    "edge": "Run an edge cache node: the tier players talk to; keeps segments on SSD, prefetches the next "
            "segments of a listen, and fetches misses from the regionals by consistent hashing.",
}


def parse_size(text: str) -> int:
    """'10G', '512MiB', '1048576' -> bytes (binary units)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 10G, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], role: str) -> argparse.ArgumentParser:
    """The node's parser with the flags every cache node has; a role may add its own (edge/cli.py)."""
    from cache.config import NodeConfig

    d = NodeConfig()
    p = subparsers.add_parser(role, help=DESCRIPTIONS[role].split(":")[0].lower(), formatter_class=HelpFormatter,
                              description=DESCRIPTIONS[role] + "\n\nOnce listening, prints one line to stdout: "
                              f"'{role} listening on http://HOST:PORT'. SIGTERM/SIGINT let in-flight transfers "
                              "finish; SIGHUP reloads the config file.\nThe purge token is read from the config or "
                              f"the {ADMIN_TOKEN_ENV} environment variable (never from the command line).")
    p.add_argument("--config", type=Path, metavar="FILE", default=None,
                   help=f"TOML config file (see config/{role}.toml); built-in defaults when omitted")
    p.add_argument("--name", default=None, help=f"node name, sent in Via (default: from the config, else {role!r})")
    p.add_argument("--listen", metavar="HOST:PORT", default=None,
                   help=f"address to listen on, port 0 for any free port (default from config: {d.listen})")
    p.add_argument("--upstream", metavar="URL", action="append", default=None,
                   help="upstream peer base URL; repeat for several peers to hash over (replaces the config's list)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", default=None,
                   help=f"cache directory (default from config: {d.cache.dir})")
    p.add_argument("--cache-size", type=parse_size, metavar="BYTES", default=None,
                   help=f"disk tier size, e.g. 20G (default from config: {d.cache.size})")
    p.add_argument("--cache-ram", type=parse_size, metavar="BYTES", default=None,
                   help="RAM tier per worker for the hottest small objects (up to 64 KiB each), 0 to turn off "
                   f"(default from config: {d.cache.ram})")
    p.add_argument("--policy", default=None, help="eviction policy by name: lru, lfu, sieve, s3fifo, listen (default from config; without one: "
                   f"{'listen' if role == 'edge' else 's3fifo'})")
    p.add_argument("--workers", type=int, metavar="N", default=None,
                   help=f"worker processes sharing the port via SO_REUSEPORT (default from config: {d.workers})")
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const=False, default=None,
                   help="do not write the JSON access log to stderr")
    p.set_defaults(func=lambda args: run(args, role))
    return p


def load_config(args: argparse.Namespace, role: str, cls: type[N] | None = None) -> N:
    """The node's config: ``--config`` (loaded as ``cls``, default NodeConfig) or defaults, then the flags."""
    from cache.config import CacheSettings, NodeConfig, PrefetchConfig

    kind: Any = cls or NodeConfig
    if args.config is not None:
        config = cfg.load(kind, args.config)
    else:  # edges prefetch for the listeners (a regional doing it too would only cascade) and keep
        # listens (`listen`); a regional serves many edges, where s3fifo sends least to origin (bench/README.md)
        edge = role == "edge"
        config = kind(name=role, prefetch=PrefetchConfig(segments=2 if edge else 0),
                      cache=CacheSettings(policy="listen" if edge else "s3fifo"))
    try:
        upstream = cfg.replace(config.upstream, peers=tuple(args.upstream) if args.upstream else None)
        cache = cfg.replace(config.cache, dir=args.cache_dir, size=args.cache_size, ram=args.cache_ram,
                            policy=args.policy)
        token = config.admin_token or os.environ.get(ADMIN_TOKEN_ENV, "")
        return cfg.replace(config, name=args.name, listen=args.listen, workers=args.workers,
                           access_log=args.access_log, upstream=upstream, cache=cache, admin_token=token)
    except ValueError as exc:
        raise cfg.ConfigError(f"command line: {exc}") from None


def run(args: argparse.Namespace, role: str, *, load: Callable[[], NodeConfig] | None = None,
        make_app: Callable[[NodeConfig], web.Application] | None = None) -> int:
    """Run the node.  ``load()`` reads the config (also on SIGHUP; raises ConfigError), ``make_app(config)``
    builds the app in each worker; by default the plain engine (cache.node.create_app)."""
    try:
        config = load() if load is not None else load_config(args, role)
        from cache.policy import POLICIES

        if config.cache.policy not in POLICIES:
            raise cfg.ConfigError(f"cache.policy: unknown policy {config.cache.policy!r} "
                                  f"(known: {', '.join(sorted(POLICIES))})")
        if not config.upstream.peers:
            raise cfg.ConfigError("upstream.peers: no upstream configured (use --upstream URL)")
    except cfg.ConfigError as exc:
        print(f"legato {role}: {exc}", file=sys.stderr)
        return 2
    from cache.node import create_app
    from legato.server import ServeOptions, serve

    if make_app is None:
        def make_app(config: NodeConfig) -> web.Application:
            return create_app(config, role=role, config_file=args.config, args=args)

    try:
        config.cache.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"legato {role}: cache dir {config.cache.dir}: {exc.strerror}", file=sys.stderr)
        return 2
    options = ServeOptions(role=role, listen=config.listen, workers=config.workers, access_log=config.access_log,
                           shutdown_timeout=config.shutdown_timeout)
    try:
        return serve(options, lambda: make_app(config))
    except OSError as exc:
        print(f"legato {role}: cannot listen on {config.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
