"""``legato origin``: serve a store over HTTP.

Settings come from ``--config FILE`` (origin.config.OriginConfig, TOML); the
flags below override the file.  aiohttp and the server are imported only when
the command runs, so ``legato package --help`` does not pay for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from legato import config as cfg
from legato.cli import HelpFormatter
from origin.config import OriginConfig

_DEFAULTS = OriginConfig()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``origin`` subcommand."""
    parser = subparsers.add_parser(
        "origin",
        help="serve a packaged store over HTTP (HLS, DASH, CMAF segments, licences)",
        description="Serve a store written by `legato package` over Legato's URL space.\n\n"
        "Settings are read from --config (TOML) when given; flags override the file.\n"
        "With [keys] store and [tokens] public_keys in the config it is also the key and licence\n"
        "service: GET /keys/{kid}?token=... and POST /license/clearkey?token=... (see config/drm.toml).\n"
        "Once listening, prints one line to stdout: 'origin listening on http://HOST:PORT'.\n"
        "SIGTERM/SIGINT stop accepting, finish in-flight responses and exit 0.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", default=None,
                        help="TOML config file (see config/origin.toml); built-in defaults when omitted")
    parser.add_argument("--store", type=Path, metavar="DIR", default=None,
                        help=f"store directory to serve (default from config: {_DEFAULTS.store})")
    parser.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help=f"address to listen on, port 0 for any free port (default from config: {_DEFAULTS.listen})")
    parser.add_argument("--workers", type=int, metavar="N", default=None,
                        help=f"worker processes sharing the port via SO_REUSEPORT (default from config: {_DEFAULTS.workers})")
    parser.add_argument("--no-access-log", dest="access_log", action="store_const", const=False, default=None,
                        help="do not write the JSON access log to stderr (overrides access_log in the config)")
    parser.set_defaults(func=run)


def load_config(args: argparse.Namespace) -> OriginConfig:
    """The config file (or defaults) with command-line overrides applied and checked."""
    config = cfg.load(OriginConfig, args.config) if args.config is not None else OriginConfig()
    try:
        return cfg.replace(config, store=args.store, listen=args.listen, workers=args.workers,
                           access_log=args.access_log)
    except ValueError as exc:
        raise cfg.ConfigError(f"command line: {exc}") from None


def check_key_service(config: OriginConfig) -> str | None:
    """Open the key store and load the public keys once (then close): the problem, or None."""
    from drm.config import load_master_key, load_public_keys
    from drm.keys import KeyStore, KeyStoreError

    try:
        load_public_keys(config.tokens)
        with KeyStore.open(config.keys.require_store(), load_master_key(config.keys), create=False):
            return None
    except (cfg.ConfigError, KeyStoreError) as exc:
        return str(exc)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``legato origin``; returns the exit status."""
    try:
        config = load_config(args)
    except cfg.ConfigError as exc:
        print(f"legato origin: {exc}", file=sys.stderr)
        return 2
    from legato.server import ServeOptions, serve
    from origin.app import create_app

    if not config.store.is_dir():
        print(f"legato origin: store {config.store}: not a directory", file=sys.stderr)
        return 2
    if config.keys.store is not None:  # the key service: fail now on a bad key store, master or public key
        error = check_key_service(config)
        if error:
            print(f"legato origin: {error}", file=sys.stderr)
            return 2
    options = ServeOptions(role="origin", listen=config.listen, workers=config.workers,
                           access_log=config.access_log, shutdown_timeout=config.shutdown_timeout)
    try:
        return serve(options, lambda: create_app(config))
    except OSError as exc:
        print(f"legato origin: cannot listen on {config.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
