"""``bab train``: train a preset classifier (natural, PGD, IBP, CROWN-IBP or noise), export it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

ARCH_HELP = "fcnn-a, fcnn-b, fcnn-c, cnn-a, cnn-b, cnn-c, cnn-d"
ROBUST_HELP = "none, pgd, ibp, crown-ibp, noise-gaussian, noise-laplace, noise-uniform"


def register(sub: Any) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser(
        "train", help="train a preset classifier (optionally robustly) and export it to ONNX",
        description="Train one of the SoK-style presets on scikit-learn's digits (or a .npz "
                    "with x_train, y_train, x_test, y_test) and write DIR/model.onnx, "
                    "DIR/test.npz (arrays x, y: the flat test split) and DIR/train.json "
                    "(configuration, accuracy, training curve). See docs/training.md.")
    p.add_argument("--arch", required=True, metavar="ARCH", help=f"preset: {ARCH_HELP}")
    p.add_argument("--robust", default="none", metavar="METHOD",
                   help=f"training method: {ROBUST_HELP} (default none)")
    p.add_argument("--eps", type=float, default=None,
                   help="l-inf radius for pgd/ibp/crown-ibp (default 0.05)")
    p.add_argument("--sigma", type=float, default=None,
                   help="noise scale for noise-* (default 0.25; lambda for laplace/uniform)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 20)")
    p.add_argument("--data", metavar="FILE.npz", help="training data (default: digits)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where to write the files")
    p.add_argument("--plot", metavar="curve.png", help="also plot loss/accuracy per epoch")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar even when stderr is not a terminal")
    p.set_defaults(func=run)


def _train(args: argparse.Namespace) -> Any:
    """Run the training, with a rich progress bar on stderr when wanted."""
    from bab.training import train_model
    from bab.training.loop import DEFAULT_EPOCHS

    kw = dict(data=args.data, eps=args.eps, sigma=args.sigma, epochs=args.epochs, seed=args.seed)
    if not (args.progress or sys.stderr.isatty()):
        return train_model(args.arch, args.robust, **kw)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total} epochs"), TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"{args.arch} {args.robust}", info="",
                            total=args.epochs or DEFAULT_EPOCHS)

        def on_epoch(s: Any) -> None:
            info = f"loss {s.loss:.3f} test acc {s.test_acc:.1%}"
            bar.update(task, completed=s.epoch, info=info)

        return train_model(args.arch, args.robust, on_epoch=on_epoch, **kw)


def run(args: argparse.Namespace) -> int:
    """Train, save, optionally plot, and print where the files went."""
    from rich.console import Console

    from bab.cli import BadInput
    from bab.training import TrainingError, save_model

    console = Console(highlight=False, soft_wrap=True)
    try:
        trained = _train(args)
        paths = save_model(trained, args.output_dir)
    except TrainingError as exc:
        raise BadInput(str(exc)) from exc
    if args.plot:
        from bab.training.plot import plot_curve

        plot_curve(trained.curve, args.plot, f"{args.arch}, {args.robust}")
    last = trained.curve[-1]
    cert = "" if last.ibp_certified is None else \
        f", IBP-certified at eps={trained.config.eps:g}: {last.ibp_certified:.1%}"
    console.print(f"model: {paths.model} (clean test accuracy {trained.accuracy:.1%}{cert}; "
                  f"{trained.time_s:.1f}s)")
    console.print(f"test data: {paths.test_data}")
    console.print(f"training record: {paths.meta}")
    if args.plot:
        console.print(f"plot: {args.plot}")
    console.print(f"next: bab check {paths.model}")
    return 0
