"""The `legato` command: one subcommand per role, each defined by its package.

Each subcommand module exposes ``register(subparsers)`` (or the function named
after a colon in the table) which adds its parser and sets ``func``; the
function returns the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from legato import __version__

# subcommand -> (module that registers it, one-line summary).  Only the module of
# the command being run is imported: `legato token` must not pay for
# ffmpeg-python, nor `legato package` for aiohttp.
SUBCOMMANDS = {
    "package": ("packager.cli", "package source tracks into a store"),
    "origin": ("origin.cli", "serve a store over HTTP (the origin tier)"),
    "regional": ("regional.cli", "run a regional (mid-tier) cache node"),
    "edge": ("edge.cli", "run an edge cache node"),
    "up": ("legato.topology:register_up", "start a local topology (origin, regionals, edges) from a TOML file"),
    "purge": ("legato.topology:register_purge", "purge a path or prefix from every cache node of a topology"),
    "keys": ("drm.cli:register_keys", "show content key ids, rotate the key store's master key"),
    "token": ("drm.cli:register_token", "issue and verify short-lived session tokens"),
    "license": ("geo.cli", "set and import per-territory licence records"),
    "director": ("edge.director", "run the director: sticky 302 redirects of sessions to edges"),
    "bench": ("bench.cli", "traces, cache simulation, live load and capacity planning"),
    "demo": ("legato.demo", "generate, package, serve and verify sample tracks"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description paragraphs and shows each option's default, unless the
    help already says it or there is none worth showing (unset, off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser for ``command``; other subcommands appear by name and summary."""
    parser = argparse.ArgumentParser(
        prog="legato",
        description="Legato: package music into encrypted CMAF ladders and serve it "
        "through tiered pull-through caches.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"legato {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in SUBCOMMANDS.items():
        if name == command:
            module_name, _, function = module.partition(":")
            getattr(importlib.import_module(module_name), function or "register")(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("legato: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
