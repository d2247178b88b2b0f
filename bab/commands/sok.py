"""``bab compare --sok``: train the default zoo and run both SoK tables into ``--output``.

Progress goes to stderr; ``report/README.md`` (the findings) is printed to stdout at the end.
Exit code 0 for any result, 2 for bad input (one line).
"""

from __future__ import annotations

import argparse
import sys
import time

EXIT_BAD_INPUT = 2


def _log(message: str) -> None:
    print(f"[sok {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_sok_command(args: argparse.Namespace) -> int:
    """Check the options that --sok fixes itself, then run it."""
    from bab.commands.compare import Progress, _bad, point_executor
    from bab.compare.data import CompareInputError
    from bab.compare.sok import run_sok, settings_for
    from bab.executors import ExecutorUnavailable

    fixed = [name for name, given in (("MODEL.onnx", bool(args.models)), ("--data", args.data is not None),
                                      ("--eps", args.eps is not None), ("--smoothing", args.smoothing),
                                      ("--methods", args.methods != "all"),
                                      ("--norm", str(args.norm) != "inf")) if given]
    if fixed:
        return _bad(f"--sok trains its own models and fixes its settings; drop {', '.join(fixed)}")
    try:
        executor = point_executor(args)
        s = settings_for(args.output or "report", quick=args.quick, jobs=args.jobs, limit=args.limit,
                         timeout=args.timeout, seed=args.seed)
        result = run_sok(s, log=_log, on_row=Progress(), executor=executor)
    except (CompareInputError, ExecutorUnavailable) as exc:
        return _bad(" ".join(str(exc).split()))
    _log(f"done in {result.times.get('total_s', 0.0):.0f} s; report in {s.output}")
    readme = s.output / "README.md"
    if readme.is_file():
        print(readme.read_text(encoding="utf-8"), end="", flush=True)
    return 0
