"""Shared driver for the slow brancher-comparison benchmarks.

Each instance runs through the Python API once per configuration under ``BAB_BENCH_TIMEOUT``
seconds with ``BAB_BENCH_THREADS`` torch threads (0: automatic). A CSV table (verdict, BaB
domains visited, wall time per configuration) and one summary line per configuration are
printed; answers that contradict the expected results are returned for the caller to assert on.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

Instance = tuple[str, str]


def expected_answers(bench_dir: Path, family: str) -> dict[Instance, str]:
    """``(onnx, vnnlib) -> expected`` for one benchmark family."""
    with open(bench_dir.parent / "vnncomp2021_expected.csv", newline="") as fh:
        return {(r["onnx"], r["vnnlib"]): r["expected"] for r in csv.DictReader(fh) if r["benchmark"] == family}


def env_settings(default_timeout: float = 60.0) -> tuple[float, int]:
    """``(timeout, threads)`` from ``BAB_BENCH_TIMEOUT`` and ``BAB_BENCH_THREADS``."""
    return (float(os.environ.get("BAB_BENCH_TIMEOUT", str(default_timeout))),
            int(os.environ.get("BAB_BENCH_THREADS", "0")))


def compare(bench_dir: Path, family: str, instances: list[Instance], configs: dict[str, Any],
            timeout: float) -> list[tuple[str, str, str, str, str]]:
    """Run every instance under every named config; print the table; return wrong answers."""
    import bab

    expected = expected_answers(bench_dir, family)
    rows, wrong = [], []
    for onnx, prop in instances:
        line: list[Any] = [onnx, prop]
        for name, cfg in configs.items():
            res = bab.verify(bench_dir / family / onnx, bench_dir / family / prop, cfg, timeout=timeout)
            stats = res.stats.extra.get("bab")
            line += [res.status.value, stats.domains_visited if stats is not None else 0, f"{res.time_s:.2f}"]
            want = expected.get((onnx, prop), "unknown")
            if res.status.value in ("sat", "unsat") and want in ("sat", "unsat") and res.status.value != want:
                wrong.append((onnx, prop, name, res.status.value, want))
        rows.append(line)
    _print_table(rows, list(configs))
    return wrong


def _print_table(rows: list[list[Any]], names: list[str]) -> None:
    header = ["onnx", "vnnlib"] + [f"{n}_{k}" for n in names for k in ("result", "domains", "time_s")]
    print()
    print(",".join(header))
    for line in rows:
        print(",".join(map(str, line)))
    for i, name in enumerate(names):
        solved = sum(r[2 + 3 * i] in ("sat", "unsat") for r in rows)
        total_t = sum(float(r[4 + 3 * i]) for r in rows)
        dom = sum(int(r[3 + 3 * i]) for r in rows)
        times = sorted(float(r[4 + 3 * i]) for r in rows)
        median = times[len(times) // 2] if times else 0.0
        print(f"{name}: solved {solved}/{len(rows)}, domains {dom}, time {total_t:.1f} s, median {median:.2f} s")
