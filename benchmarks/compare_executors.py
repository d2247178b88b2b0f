"""``bab compare`` with the process executor against ``--executor ray`` (a local cluster).

Trains two tiny digits MLPs (``tests/compare_zoo.py``), runs the same comparison twice as a
``bab compare`` process (``--jobs N``; Ray: a local N-CPU cluster started by the command,
its start-up included) and prints both wall times and whether ``points.csv`` (all columns but
``time_s``) and ``summary.csv`` (all but the median times) agree row for row.

    python benchmarks/compare_executors.py [--points 20] [--jobs 2] [--methods crown,...]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path, drop: str) -> list[dict[str, str]]:
    """A CSV's rows without the columns whose name contains ``drop``."""
    with path.open(newline="") as fh:
        return [{k: v for k, v in r.items() if drop not in k} for r in csv.DictReader(fh)]


def zoo(folder: Path) -> tuple[list[str], str]:
    """Two trained digits MLPs as ONNX files and the test points as .npz."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.compare_zoo import digits, export, train_mlp

    torch.set_num_threads(1)
    models = [export(train_mlp((32, 32), seed=0), folder / "mlp32x2.onnx"),
              export(train_mlp((16,), seed=1), folder / "mlp16.onnx")]
    _, _, x, y = digits()
    np.savez(folder / "test.npz", x=x, y=y)
    return [str(m) for m in models], str(folder / "test.npz")


def run(models: list[str], data: str, out: Path, args: argparse.Namespace, executor: str) -> float:
    """One ``bab compare`` process; its wall time."""
    cmd = [sys.executable, "-m", "bab", "compare", *models, "--data", data, "--eps", str(args.eps),
           "--methods", args.methods, "--limit", str(args.points), "--timeout", str(args.timeout),
           "--jobs", str(args.jobs), "--output", str(out), "--executor", executor]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Parse the options, run both executors, print the comparison."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--eps", type=float, default=0.06)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--methods", default="crown,alpha-crown,milp,bab")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models, data = zoo(folder)
        times = {ex: run(models, data, folder / ex, args, ex) for ex in ("process", "ray")}
        same_points = rows(folder / "process" / "points.csv", "time") == rows(folder / "ray" / "points.csv", "time")
        same_summary = rows(folder / "process" / "summary.csv", "time") == rows(folder / "ray" / "summary.csv", "time")
        n = len(rows(folder / "ray" / "points.csv", "time"))
    print(f"points={args.points} methods={args.methods} jobs={args.jobs}: process {times['process']:.1f} s, "
          f"ray {times['ray']:.1f} s (local cluster start included); points.csv rows={n} "
          f"identical={same_points}; summary identical={same_summary}")


if __name__ == "__main__":
    main()
