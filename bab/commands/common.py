"""Options shared by the commands that run the verifier (config file and overrides)."""

from __future__ import annotations

import argparse
from typing import Any


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--method``, ``--config``, ``--device``, ``--seed`` and repeated ``--set key=value``."""
    p.add_argument("--method", default=None, help="verification method (see `bab config --dump`)")
    p.add_argument("--config", default=None, help="TOML or YAML configuration file")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="torch device")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--branching", choices=("babsr", "fsb", "widest"), default=None,
                   help="ReLU-split brancher (bab.relu_branching)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one configuration option (repeatable)")


def config_from_args(args: argparse.Namespace) -> Any:
    """The frozen :class:`~bab.config.Config`: file, then ``--set``, then dedicated flags."""
    from bab import config as C

    overrides = [C.parse_override(s) for s in args.set]
    flags: dict[str, Any] = {}
    for key in ("method", "device", "seed"):
        if getattr(args, key, None) is not None:
            flags[key] = getattr(args, key)
    if getattr(args, "timeout", None) is not None:
        flags["timeout"] = args.timeout
    if flags:
        overrides.append({"verify": flags})
    if getattr(args, "branching", None) is not None:
        overrides.append({"bab": {"relu_branching": args.branching}})
    return C.load(args.config, overrides)
