"""The `legato` command: one subcommand per role, each defined by its package.

Each subcommand module exposes ``register(subparsers)`` which adds its parser
and sets ``func``; the function returns the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from legato import __version__

# subcommand -> module that registers it (imported lazily: `legato token` must
# not pay for ffmpeg-python, `legato package` not for aiohttp).
SUBCOMMANDS = {
    "package": "packager.cli",
    "origin": "origin.cli",
    "demo": "legato.demo",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps description paragraphs."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="legato",
        description="Legato: package music into encrypted CMAF ladders and serve it "
        "through tiered pull-through caches.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"legato {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("legato: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
