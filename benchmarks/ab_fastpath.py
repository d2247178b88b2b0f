"""A/B of the NumPy fast path on a fixed subset of a VNN-COMP list, alternating on and off.

On a shared, loaded machine the two settings must be measured in the same sitting: each
instance runs once with ``verify.fast_path=true`` and once with ``false`` (the order flips
from one instance to the next), each in its own ``bab verify`` process, one thread. Prints one
line per run, then the median whole-process wall time, the solved count and the wrong count
of each setting (``expected``: ``benchmark,onnx,vnnlib,timeout,expected[,note]``).

    python benchmarks/ab_fastpath.py ../shared/benchmarks/vnncomp2021/acasxu/acasxu_instances.csv \
        --expected ../shared/benchmarks/vnncomp2021_expected.csv --count 30

``--before DIR`` runs the "off" setting from another checkout (e.g. a ``git worktree`` of the
commit before the fast path) instead, to compare whole start-up paths.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instances(path: Path, count: int, tail: int = 0) -> list[tuple[str, str, float]]:
    """The last ``tail`` rows of the list, plus ``count - tail`` rows evenly spaced over the
    others (ACAS Xu: properties 5-10 are the last six rows)."""
    rows = [r for r in csv.reader(path.open()) if r and not r[0].startswith("#")]
    head, n = len(rows) - tail, max(count - tail, 0)
    pick = sorted({i * head // n for i in range(min(n, head))} | set(range(head, len(rows))))
    return [(rows[i][0].strip(), rows[i][1].strip(), float(rows[i][2])) for i in pick]


def expected_answers(path: Path | None) -> dict[tuple[str, str], str]:
    """``(onnx name, vnnlib name) -> expected`` from the shared expected file."""
    if path is None:
        return {}
    out = {}
    for r in csv.reader(path.open()):
        if len(r) >= 5:
            out[(Path(r[1]).name, Path(r[2]).name)] = r[4].strip()
    return out


def run_once(cwd: Path, onnx: Path, prop: Path, timeout: float, fast: bool) -> tuple[str, float]:
    """The verdict word and the whole-process wall time of one ``bab verify``."""
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "out.txt"
        cmd = [sys.executable, "-m", "bab", "verify", str(onnx), str(prop), "--timeout", str(timeout),
               "--results-file", str(res), "--set", "verify.threads=1"]
        if cwd == ROOT:
            cmd += ["--set", f"verify.fast_path={'true' if fast else 'false'}"]
        t0 = time.monotonic()
        subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout + 30)
        wall = time.monotonic() - t0
        word = res.read_text().split()[0] if res.exists() and res.read_text().strip() else "error"
    return word, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("list", type=Path)
    ap.add_argument("--expected", type=Path, default=None)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--tail", type=int, default=6, help="always include the list's last rows")
    ap.add_argument("--timeout-cap", type=float, default=None)
    ap.add_argument("--before", type=Path, default=None, help="checkout that runs the 'off' side")
    args = ap.parse_args()
    want = expected_answers(args.expected)
    walls: dict[bool, list[float]] = {True: [], False: []}
    solved = {True: 0, False: 0}
    wrong = {True: 0, False: 0}
    for i, (onnx, prop, timeout) in enumerate(instances(args.list, args.count, args.tail)):
        timeout = min(timeout, args.timeout_cap or timeout)
        exp = want.get((Path(onnx).name, Path(prop).name), "")
        for fast in ((True, False) if i % 2 == 0 else (False, True)):
            cwd = args.before if (args.before and not fast) else ROOT
            word, wall = run_once(cwd, args.list.parent / onnx, args.list.parent / prop, timeout, fast)
            walls[fast].append(wall)
            solved[fast] += word in ("sat", "unsat")
            wrong[fast] += word in ("sat", "unsat") and exp in ("sat", "unsat") and word != exp
            print(f"{'on ' if fast else 'off'} {Path(onnx).stem} {Path(prop).stem}: {word} "
                  f"(expected {exp or '?'}) {wall:.2f} s", flush=True)
    for fast in (True, False):
        print(f"fast path {'on ' if fast else 'off'}: median {statistics.median(walls[fast]):.2f} s, "
              f"total {sum(walls[fast]):.1f} s, solved {solved[fast]}/{len(walls[fast])}, wrong {wrong[fast]}")


if __name__ == "__main__":
    main()
