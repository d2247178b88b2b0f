"""``bab compare MODEL.onnx... --data test.npz --eps E``: the SoK's certified-accuracy table.

Every method of the taxonomy (or ``--methods``) certifies the first ``--limit`` points on every
model; the Markdown table goes to stdout, progress to stderr, the files to ``--output``.
``--smoothing`` runs the randomized-smoothing table (``bab/compare/smoothing.py``) instead.
Exit code 0 for any result, 2 for bad input (one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def register(sub: Any) -> None:
    """Add the ``compare`` sub-command."""
    from bab.commands.executor_options import add_executor_arguments

    p = sub.add_parser(
        "compare", help="certified accuracy of every method on every model (SoK Table III)",
        description="Certify the first --limit points of --data in an l_p ball (--norm) of radius --eps "
                    "with each method (falsification off), on each model; also PGD and clean "
                    "accuracy. Writes points.csv, summary.csv, table.md and heatmap.png.")
    p.add_argument("models", nargs="*", metavar="MODEL.onnx", help="models (named by file stem)")
    p.add_argument("--data", default=None, help=".npz with x, y (or x_test, y_test)")
    p.add_argument("--norm", default="inf", choices=("inf", "2", "1"), help="ball norm: inf, 2 or 1 (a method that cannot handle an l2/l1 ball "
                        "answers n/a or unknown with the reason)")
    p.add_argument("--eps", type=float, default=None, help="ball radius")
    p.add_argument("--methods", default="all", help="all, or comma-separated method names")
    p.add_argument("--limit", type=int, default=None, help="first N points of the data (default 100)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per (model, method, point) (default 60)")
    p.add_argument("--output", default=None, metavar="DIR", help="output folder (a rerun resumes it)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="points in parallel processes (default 1; with --executor ray: a local "
                        "cluster of N tasks' CPUs, or at most N tasks at once on --address)")
    add_executor_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (verify and PGD)")
    p.add_argument("--config", default=None, help="TOML or YAML configuration for verify")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one verify configuration option (repeatable)")
    p.add_argument("--smoothing", action="store_true",
                   help="run the randomized-smoothing comparison (SoK Table IV) instead")
    p.add_argument("--sok", action="store_true",
                   help="train the default zoo and run both SoK tables into --output (default "
                        "report/); see docs/compare.md")
    p.add_argument("--quick", action="store_true", help="with --sok: a tiny version (tests)")
    try:
        from bab.compare.smoothing import add_smoothing_arguments
    except Exception:  # noqa: BLE001 - the smoothing table is optional
        pass
    else:
        add_smoothing_arguments(p)
    p.set_defaults(func=run)


class Progress:
    """One line per finished row on stderr."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, row: Any) -> None:
        if row.method in ("clean", "pgd") or row.status in ("misclassified", "n/a"):
            return
        self.done += 1
        why = f" ({row.reason[:100]})" if row.status not in ("unsat", "sat", "unknown") and row.reason else ""
        print(f"[{self.done}] {row.model} {row.method} point {row.point}: {row.status} "
              f"{row.time_s:.2f}s{why}", file=sys.stderr, flush=True)


def _bad(message: str) -> int:
    print(f"bab compare: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print the Markdown table."""
    from bab.compare.data import CompareInputError
    from bab.executors import ExecutorUnavailable

    if args.sok:
        from bab.commands.sok import run_sok_command

        return run_sok_command(args)
    if args.quick:
        return _bad("--quick only goes with --sok")
    if args.smoothing:
        if args.executor != "process" or args.address:
            return _bad("--executor and --address apply to the certification table, not --smoothing")
        _defaults(args)
        return run_smoothing(args)
    try:
        executor = point_executor(args)
        _defaults(args)
        from bab.compare.data import check_norm

        check_norm(args.norm)
        if args.eps is None:
            raise CompareInputError("--eps is required")
        if not args.models or args.data is None:
            raise CompareInputError("give MODEL.onnx files and --data (or --sok)")
        if args.jobs < 1 or args.limit < 1 or not args.timeout > 0:
            raise CompareInputError("--jobs and --limit must be >= 1 and --timeout > 0")
        missing = [m for m in [*args.models, args.data] if not Path(m).is_file()]
        if missing:
            raise CompareInputError(f"file not found: {missing[0]}")
        result = _compare(args, executor)
    except (CompareInputError, ExecutorUnavailable) as exc:
        return _bad(" ".join(str(exc).split()))
    print(result.markdown(), end="", flush=True)
    return 0


def _defaults(args: argparse.Namespace) -> None:
    """Fill in --limit, --timeout and --jobs (None so that --sok can tell them apart)."""
    for key, value in (("limit", 100), ("timeout", 60.0), ("jobs", 1)):
        if getattr(args, key) is None:
            setattr(args, key, value)


def point_executor(args: argparse.Namespace) -> Any:
    """``None`` for ``--executor process`` (worker processes here), else the Ray executor:
    one task per (model, method, point), asking for its torch threads' CPUs (raises
    ``CompareInputError`` on a bad combination or without Ray). Call before ``--jobs`` gets
    its default (without ``--jobs`` a local cluster uses every core)."""
    from bab.commands.executor_options import executor_argument_error, ray_executor_for
    from bab.compare.data import CompareInputError
    from bab.compare.workers import POINT_THREADS
    from bab.executors import ExecutorUnavailable

    if (problem := executor_argument_error(args)) is not None:
        raise CompareInputError(problem)
    if args.executor != "ray":
        return None
    if args.jobs is not None and args.jobs < 1:
        raise CompareInputError("--jobs must be >= 1")
    try:
        return ray_executor_for(args.address, args.jobs, POINT_THREADS)
    except ExecutorUnavailable as exc:
        raise CompareInputError(f"--executor ray: {exc}") from None


def _compare(args: argparse.Namespace, executor: Any = None) -> Any:
    from bab import config as C
    from bab.compare.api import compare
    from bab.compare.data import CompareInputError
    from bab.config import ConfigError

    try:
        cfg = C.load(args.config, [C.parse_override(s) for s in args.set])
    except ConfigError as exc:
        raise CompareInputError(str(exc)) from None
    return compare(args.models, args.data, eps=args.eps, norm=args.norm, methods=args.methods,
                   limit=args.limit, timeout=args.timeout, jobs=args.jobs, output=args.output,
                   config=cfg, seed=args.seed, processes=True, on_row=Progress(), executor=executor)


def _tuple(value: Any, cast: Any) -> tuple:
    """A comma-separated string or a sequence -> a tuple of ``cast`` values."""
    if isinstance(value, str):
        return tuple(cast(v.strip()) for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)):
        return tuple(cast(v) for v in value)
    return (cast(value),)


def run_smoothing(args: argparse.Namespace) -> int:
    """``--smoothing``: hand over to ``bab.compare.smoothing`` (when it is there)."""
    try:
        from bab.compare.smoothing import compare_smoothing
    except Exception:  # noqa: BLE001 - the module may not exist yet
        return _bad("smoothing comparison is not available")
    needed = ("noises", "sigma", "approaches", "radii", "n0", "n", "alpha")
    if any(not hasattr(args, k) for k in needed):
        return _bad("smoothing comparison is not available (its options are not registered)")
    from bab.smoothing.errors import SmoothingError

    if not args.models or args.data is None:
        return _bad("give MODEL.onnx files and --data")
    try:
        result = compare_smoothing(
            [Path(m) for m in args.models], Path(args.data), norm=args.norm,
            noises=_tuple(args.noises, str), sigma=float(args.sigma),
            approaches=_tuple(args.approaches, str), radii=_tuple(args.radii, float),
            n0=int(args.n0), n=int(args.n), alpha=float(args.alpha), limit=args.limit,
            seed=int(args.seed), output=Path(args.output) if args.output else None)
    except SmoothingError as exc:
        return _bad(" ".join(str(exc).split()))
    print(result.markdown(), end="", flush=True)
    return 0
