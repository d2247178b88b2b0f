"""``bab radius MODEL.onnx --center x.npy --label y --norm 2 --method M``: the largest certified radius.

Lipschitz methods use their closed form; every other method bisects the radius with ``verify``
on the l_p ball (intersected with ``[--lo, --hi]`` when given), ``--steps`` times after a first
try at ``--max-eps``, ``--timeout`` seconds per step. One line per step on stderr; stdout
ends with ``radius=<certified radius>``. Exit code 0 for any result, 2 for bad input (one line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_BAD_INPUT = 2


def register(sub: Any) -> None:
    """Add the ``radius`` sub-command."""
    p = sub.add_parser("radius", help="the largest l_p radius a method certifies around a point",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("model", metavar="MODEL.onnx", help="the network")
    p.add_argument("--center", required=True, metavar="X.npy", help="the centre point (.npy, any shape)")
    p.add_argument("--label", required=True, type=int, help="its class")
    p.add_argument("--norm", default="inf", help="inf, 2 or 1")
    p.add_argument("--method", default="default", help="any --method of bab verify")
    p.add_argument("--lo", type=float, default=None, help="lower end of the data box (with --hi)")
    p.add_argument("--hi", type=float, default=None, help="upper end of the data box (with --lo)")
    p.add_argument("--max-eps", type=float, default=None, help="largest radius tried")
    p.add_argument("--steps", type=int, default=10, help="bisection steps (default 10)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per verify call (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the steps, the interval and the last line ``radius=<r>``."""
    from bab.radius_api import RadiusInputError, radius

    try:
        res = radius(args.model, args.center, args.label, norm=args.norm, method=args.method,
                     lo=args.lo, hi=args.hi, max_eps=args.max_eps, steps=args.steps, timeout=args.timeout)
    except RadiusInputError as exc:
        print(f"bab radius: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for (eps, status), t in zip(res.statuses, res.times):
        print(f"eps={eps:.6g} {status} {t:.2f}s", file=sys.stderr)
    how = "closed form" if res.closed_form else f"{res.steps} bisection steps"
    print(f"method={res.method} norm={res.norm} {how} interval=[{res.interval[0]:.6g}, {res.interval[1]:.6g}] "
          f"time={res.time_s:.2f}s")
    if res.upper is not None:
        print(f"adversarial distance <= {res.upper:.6g}")
    print(f"radius={res.radius:.6g}")
    return 0
