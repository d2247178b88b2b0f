"""Certified ℓ2 radii on the demo's digits network: ``python benchmarks/bench_radius.py [N]``.

For the first ``N`` (default 20) test images of ``bab.demo``'s 64-32-32-10 MLP, every method
that handles ℓ2 balls computes its certified radius (``bab.radius``, data box [0, 1]); prints
one line per (method, image) to stderr and a Markdown table (median radius, median and total
time per image) to stdout. ``--methods a,b`` restricts the list; ``--json PATH`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

L2_METHODS = ("ibp", "symbolic", "crown-fwd", "fastlin", "crown", "deeppoly", "crown-ibp", "alpha-crown", "wk",
              "lipschitz-opnorm", "fastlip", "recurjac", "lp", "lp-full", "milp", "bab")
COMPLETE = {"milp", "bab", "default", "input-split"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=20)
    ap.add_argument("--methods", default=",".join(L2_METHODS))
    ap.add_argument("--max-eps", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--complete-steps", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    import bab
    from bab.demo import export_onnx, load_digits_split, load_or_train

    torch.set_num_threads(1)
    data = load_digits_split()
    layers, _ = load_or_train(data)
    path = export_onnx(layers, Path(tempfile.mkdtemp()) / "digits.onnx")
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        for i in range(args.n):
            x, y = data.x_test[i].astype(np.float64), int(data.y_test[i])
            steps = args.complete_steps if method in COMPLETE else args.steps
            t0 = time.monotonic()
            res = bab.radius(path, x, y, norm="2", method=method, lo=0.0, hi=1.0, max_eps=args.max_eps,
                             steps=steps, timeout=args.timeout)
            wall = time.monotonic() - t0
            rows.append({"method": method, "image": i, "radius": res.radius, "upper": res.upper,
                         "interval": list(res.interval), "steps": res.steps, "time_s": wall})
            print(f"{method} image {i}: radius {res.radius:.4g} interval [{res.interval[0]:.4g}, "
                  f"{res.interval[1]:.4g}] {res.steps} steps {wall:.2f}s", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """Median certified radius and time per image, per method."""
    out = ["| method | median certified ℓ2 radius | median time / image (s) | total time (s) |",
           "|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        out.append(f"| `{method}` | {statistics.median(r['radius'] for r in mine):.4f} | "
                   f"{statistics.median(r['time_s'] for r in mine):.2f} | {sum(r['time_s'] for r in mine):.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
