"""`legato edge`: the edge cache node (the shared engine and CLI live in cache/, the gates in edge/)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cache import cli as node_cli
from edge.config import EdgeConfig
from legato import config as cfg

if TYPE_CHECKING:
    from aiohttp import web

    from cache.config import NodeConfig

PUBLIC_KEY_HELP = ("token verifying key as KEYID=PEMFILE (an Ed25519 public key); repeat for several, e.g. "
                   "while rotating. Adds to the config's [tokens] public_keys (the flag wins for the same KEYID). "
                   "Without any public key the edge checks no tokens (the key service still does)")


def public_key_arg(text: str) -> tuple[str, Path]:
    key_id, eq, path = text.partition("=")
    if not eq or not key_id or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEYID=PEMFILE")
    return key_id, Path(path)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = node_cli.add_parser(subparsers, "edge")
    p.description = (p.description or "") + (
        "\n\nGates: manifests, keys (/keys/KID) and ClearKey licences (/license/clearkey) need a session token "
        "(?token=...) verified with the [tokens] public keys; manifests requested with a token are served with "
        "it carried into their key/licence URIs. Keys and licences are forwarded upstream, never stored.")
    p.add_argument("--public-key", metavar="KEYID=PEMFILE", type=public_key_arg, action="append", default=None,
                   help=PUBLIC_KEY_HELP)
    p.add_argument("--geo-database", metavar="PATH", default=None,
                   help="MaxMind Country/City .mmdb for licence checks (the config's [geo] database; 'bundled' "
                   "for the demo GeoLite2); a broken file stops the edge at start")
    p.add_argument("--trusted-proxy", metavar="CIDR", action="append", default=None,
                   help="network of a proxy whose X-Forwarded-For names the client; repeat for several "
                   "(replaces the config's [geo] trusted_proxies)")
    p.set_defaults(func=run)


def load_config(args: argparse.Namespace) -> EdgeConfig:
    """The edge's config (file, then flags); the public keys are loaded once to fail early on bad ones."""
    from drm.config import load_public_keys

    config = node_cli.load_config(args, "edge", EdgeConfig)
    try:
        if args.public_key:
            keys = {**config.tokens.public_keys, **dict(args.public_key)}
            config = cfg.replace(config, tokens=cfg.replace(config.tokens, public_keys=keys))
        proxies = tuple(args.trusted_proxy) if args.trusted_proxy else None
        config = cfg.replace(config, geo=cfg.replace(config.geo, database=args.geo_database,
                                                     trusted_proxies=proxies))
    except ValueError as exc:
        raise cfg.ConfigError(f"command line: {exc}") from None
    load_public_keys(config.tokens)  # raises ConfigError naming the file
    if config.geo.enabled:  # a broken database stops the node now, not at its first request
        from geo.country import CountryDB, GeoDBError

        try:
            CountryDB(config.geo.database_path(), config.geo.anonymous_database or None).close()
        except (GeoDBError, ValueError) as exc:
            raise cfg.ConfigError(f"geo.database: {exc}") from None
    return config


def run(args: argparse.Namespace) -> int:
    from edge.app import create_app

    def make_app(config: NodeConfig) -> web.Application:
        assert isinstance(config, EdgeConfig)
        return create_app(config, load_config=lambda: load_config(args))

    return node_cli.run(args, "edge", load=lambda: load_config(args), make_app=make_app)
