"""``bab verify --checkpoint FILE [--checkpoint-interval S] [--resume]``: resumable searches
(:mod:`bab.checkpoint`; docs/cluster.md)."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_INTERVAL_S = 60.0


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """The checkpoint options of ``bab verify MODEL PROP``."""
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="write the search state to FILE every --checkpoint-interval seconds")
    p.add_argument("--checkpoint-interval", type=float, default=DEFAULT_INTERVAL_S, metavar="S",
                   help=f"seconds between checkpoints (default {DEFAULT_INTERVAL_S:g})")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint FILE when it exists (same model, property "
                        "and configuration, checked by SHA-256; else exit 2)")


def checkpoint_from_args(args: argparse.Namespace, cfg: Any) -> Any:
    """The :class:`~bab.checkpoint.Checkpointer` of the command line, or ``None``."""
    from bab.cli import BadInput

    if args.checkpoint is None:
        if args.resume:
            raise BadInput("--resume needs --checkpoint FILE")
        return None
    from bab.checkpoint import CheckpointError, open_checkpoint  # imports torch: only when asked

    try:
        return open_checkpoint(args.checkpoint, args.model, args.property, cfg,
                               args.checkpoint_interval, args.resume)
    except CheckpointError as exc:
        raise BadInput(str(exc)) from None
