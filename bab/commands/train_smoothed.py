"""``bab train-smoothed``: train a digits classifier with Gaussian noise for ``bab smooth``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``train-smoothed`` sub-command."""
    p = sub.add_parser(
        "train-smoothed", help="train a digits classifier with Gaussian noise augmentation",
        description="Train a 64-32-32-10 ReLU MLP on scikit-learn's bundled digits with "
                    "Gaussian noise augmentation (seeded), export it to DIR/model.onnx and "
                    "write the test split to DIR/test.npz (arrays x, y) for `bab smooth`.")
    p.add_argument("--sigma", type=float, default=0.25,
                   help="standard deviation of the training noise (default 0.25; 0: none)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where to write the files")
    p.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, export and print where the files went."""
    from rich.console import Console

    from bab.cli import BadInput
    from bab.smoothing.errors import SmoothingError
    from bab.smoothing.train import train_smoothed

    console = Console(highlight=False, soft_wrap=True)
    try:
        with console.status(f"training with noise sigma={args.sigma:g} ..."):
            paths = train_smoothed(args.sigma, args.output_dir, epochs=args.epochs,
                                   seed=args.seed)
    except SmoothingError as exc:
        raise BadInput(str(exc)) from exc
    console.print(f"model: {paths.model} (clean test accuracy {paths.accuracy:.1%})")
    console.print(f"test data: {paths.test_data}")
    console.print(f"next: bab smooth {paths.model} {paths.test_data} --sigma {args.sigma:g}")
    return 0
