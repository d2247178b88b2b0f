"""``bab config --dump``: the options reference, generated from the config dataclasses."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``config`` sub-command."""
    p = sub.add_parser("config", help="print the configuration reference or check a config file")
    p.add_argument("--dump", action="store_true", help="print every option with its default and help")
    p.add_argument("--check", metavar="FILE", help="validate a TOML/YAML config file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the reference (default) or validate a file."""
    from bab import config as C

    if args.check:
        cfg = C.load(args.check)
        print(f"{args.check}: ok")
        print(C.dump_values(cfg), end="")
        return 0
    print(C.dump_reference(), end="")
    return 0
