"""``bab smooth MODEL.onnx DATA.npz``: randomized-smoothing certification of a data set.

Probabilistic certificates (Cohen, Rosenfeld & Kolter 2019): each one holds with confidence
``1 - alpha``; they are not proofs and are never reported as ``unsat``. One CSV row per
sample, a certified-accuracy table on stdout, progress and warnings on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_RADII = "0,0.25,0.5,0.75,1,1.25,1.5"


def register(sub: Any) -> None:
    """Add the ``smooth`` sub-command."""
    p = sub.add_parser(
        "smooth", help="certify a data set by randomized smoothing (probabilistic)",
        description="Randomized smoothing (Cohen et al. 2019): for each sample of DATA.npz "
                    "(arrays x: N x inputs, y: N labels) run CERTIFY on MODEL.onnx and report "
                    "the certified radius. Gaussian noise certifies l2 radii, Laplace and "
                    "uniform noise l1 radii. Each certificate holds with probability >= "
                    "1-alpha over the sampling.")
    p.add_argument("model", help="classifier (.onnx or .onnx.gz)")
    p.add_argument("data", help=".npz file with arrays x and y")
    p.add_argument("--noise", choices=("gaussian", "laplace", "uniform"), default="gaussian",
                   help="noise distribution (default gaussian)")
    p.add_argument("--sigma", "--scale", dest="sigma", type=float, default=0.25, metavar="S",
                   help="noise scale: the standard deviation for gaussian, lambda for laplace "
                        "(density ~ exp(-|z|_1/lambda)) and uniform (on [-lambda, lambda]) "
                        "(default 0.25)")
    p.add_argument("--n0", type=int, default=100, help="samples to guess the class (default 100)")
    p.add_argument("--n", type=int, default=100_000,
                   help="samples to bound its probability (default 100000)")
    p.add_argument("--alpha", type=float, default=0.001,
                   help="failure probability of each certificate (default 0.001)")
    p.add_argument("--batch", type=int, default=1000, help="noisy inputs per forward pass")
    p.add_argument("--limit", type=int, default=None, metavar="K", help="only the first K samples")
    p.add_argument("--output", default=None, metavar="RESULTS.csv",
                   help="CSV: index,label,prediction,radius,correct,time,pA_lower "
                        "(prediction -1: abstained)")
    p.add_argument("--plot", default=None, metavar="CURVE.png",
                   help="plot certified accuracy against radius")
    p.add_argument("--radii", default=DEFAULT_RADII, metavar="R,R,...",
                   help=f"radii of the accuracy table (default {DEFAULT_RADII})")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: one for small networks, else torch's default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Certify every sample; exit 0 (2 for bad input)."""
    from bab.cli import BadInput
    from bab.smoothing.errors import SmoothingError

    try:
        return _run(args)
    except SmoothingError as exc:
        raise BadInput(str(exc)) from exc


def _settings(args: argparse.Namespace) -> tuple[Any, tuple[float, ...]]:
    """Validated noise and table radii (SmoothingError on bad values)."""
    from bab.smoothing.data import parse_radii
    from bab.smoothing.noise import make_noise
    from bab.smoothing.errors import check_alpha, check_count

    noise = make_noise(args.noise, args.sigma)
    check_alpha(args.alpha)
    for name in ("n0", "n", "batch", "threads" if args.threads else "", "limit" if
                 args.limit is not None else ""):
        if name:
            check_count(f"--{name}", getattr(args, name))
    return noise, parse_radii(args.radii)


def _set_threads(network: Any, threads: int) -> None:
    """``threads`` torch threads, or one for a small network when 0."""
    import torch

    if threads <= 0:
        from bab.api import SMALL_NETWORK_PARAMS

        params = sum(t.numel() for n in network.nodes for t in n.layer.tensors().values())
        threads = 1 if params < SMALL_NETWORK_PARAMS else 0
    if threads > 0:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    """The work of :func:`run`."""
    noise, radii = _settings(args)  # before the heavy imports: bad values fail fast

    from rich.console import Console

    import onnx_models
    from bab.cli import BadInput
    from bab.smoothing.data import load_npz
    from bab.smoothing.stats import feasibility_warnings, max_radius

    network = onnx_models.load(args.model)
    if network.n_outputs < 2:
        raise BadInput(f"{args.model}: a classifier needs at least 2 outputs, "
                       f"this model has {network.n_outputs}")
    x, y = load_npz(args.data, network.n_inputs)
    if args.limit is not None:
        x, y = x[:args.limit], y[:args.limit]
    err = Console(stderr=True)
    for note in feasibility_warnings(noise, args.n0, args.n, args.alpha):
        print(f"bab smooth: warning: {note}", file=sys.stderr)
    _set_threads(network, args.threads)
    rows = _certify_all(args, network, noise, x, y, err)
    _report(args, noise, rows, radii, max_radius(noise, args.n, args.alpha))
    return 0


def _certify_all(args: argparse.Namespace, network: Any, noise: Any, x: Any, y: Any,
                 err: Any) -> list[Any]:
    """CERTIFY each sample with a rich progress bar on stderr; rows also go to the CSV."""
    import torch
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from bab.smoothing.certify import certify
    from bab.smoothing.data import CsvWriter, SampleRow

    gen = torch.Generator().manual_seed(args.seed)
    writer = CsvWriter(args.output) if args.output else None
    rows: list[SampleRow] = []
    hits = 0
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=err, transient=not err.is_terminal) as progress:
            task = progress.add_task("certifying", total=len(x))
            for i in range(len(x)):
                cert = certify(network, x[i], noise, args.n0, args.n, args.alpha, args.batch, gen)
                pred = -1 if cert.label is None else cert.label
                row = SampleRow(i, int(y[i]), pred, cert.radius, pred == int(y[i]), cert.time_s,
                                cert.pA_lower)
                rows.append(row)
                hits += row.correct
                if writer is not None:
                    writer.write(row)
                progress.update(task, advance=1,
                                description=f"certifying (correct so far {hits}/{i + 1})")
    finally:
        if writer is not None:
            writer.close()
    return rows


def _report(args: argparse.Namespace, noise: Any, rows: list[Any], radii: tuple[float, ...],
            best: float) -> None:
    """The certified-accuracy table and summary on stdout; the plot."""
    from rich.console import Console
    from rich.table import Table

    from bab.smoothing.data import certified_accuracy

    out = Console(highlight=False)
    conf = 1.0 - args.alpha
    out.print(f"certified accuracy of the smoothed classifier, {noise.describe()}: each "
              f"certificate holds with confidence 1-alpha = {conf:g}, radii in the "
              f"l{noise.norm} norm")
    table = Table()
    table.add_column(f"radius (l{noise.norm})", justify="right")
    table.add_column("certified accuracy", justify="right")
    for r, acc in zip(radii, certified_accuracy(rows, radii)):
        table.add_row(f"{r:g}", f"{acc:.1%}")
    out.print(table)
    total = sum(r.time_s for r in rows)
    abstained = sum(r.prediction < 0 for r in rows)
    out.print(f"{len(rows)} samples: {sum(r.correct for r in rows)} certified correct, "
              f"{abstained} abstained; n0={args.n0} n={args.n} alpha={args.alpha:g} "
              f"(largest possible radius {best:.4g}); {total / max(len(rows), 1):.3f} s per "
              f"sample, {total:.1f} s in all")
    if args.output:
        out.print(f"rows: {args.output}")
    if args.plot:
        from bab.smoothing.plot import plot_certified_accuracy

        title = (f"{noise.describe()}, n={args.n}, alpha={args.alpha:g}, "
                 f"{len(rows)} samples")
        out.print(f"plot: {plot_certified_accuracy(rows, args.plot, title, noise.norm)}")
