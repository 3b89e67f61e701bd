"""`legato regional`: the regional cache node (the shared engine and CLI live in cache/)."""

from __future__ import annotations

import argparse

from cache.cli import add_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_parser(subparsers, "regional")
