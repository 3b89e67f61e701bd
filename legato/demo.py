"""`legato demo`: placeholder until the demo lands (registered so the CLI loads)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="generate sample tracks, package them, serve and verify them")
    p.set_defaults(func=lambda args: 1)
