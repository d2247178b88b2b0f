"""Slow benchmark: FSB versus BaBSR branching on the first 15 mnistfc 256x4 instances.

Run::

    python -m pytest benchmarks/bench_relu_branching.py -m slow -o addopts="" -s -q

Each instance runs through the Python API with forced ReLU-split BaB (the falsification phase
on, as in ``bab verify``) under ``BAB_BENCH_TIMEOUT`` seconds (default 60), with ``BAB_BENCH_THREADS`` torch threads
(default 0: automatic). The table printed at
the end gives, per brancher, the verdict, the BaB domains visited and the wall time; the test
fails on any answer that contradicts the expected results.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

BRANCHERS = ("fsb", "babsr")
N_INSTANCES = 15


def _expected(bench_dir: Path) -> dict[tuple[str, str], str]:
    path = bench_dir.parent / "vnncomp2021_expected.csv"
    with open(path, newline="") as fh:
        return {(r["onnx"], r["vnnlib"]): r["expected"] for r in csv.DictReader(fh) if r["benchmark"] == "mnistfc"}


def _instances(bench_dir: Path) -> list[tuple[str, str]]:
    with open(bench_dir / "mnistfc" / "mnistfc_instances.csv", newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and r[0] == "mnist-net_256x4.onnx"]
    return [(r[0], r[1]) for r in rows[:N_INSTANCES]]


@pytest.mark.slow
def test_fsb_vs_babsr_on_mnistfc_256x4(bench_dir: Path) -> None:
    import bab
    from bab.config import BabConfig, Config, VerifyConfig

    timeout = float(os.environ.get("BAB_BENCH_TIMEOUT", "60"))
    threads = int(os.environ.get("BAB_BENCH_THREADS", "0"))  # 0: automatic
    expected = _expected(bench_dir)
    rows, wrong = [], []
    for onnx, prop in _instances(bench_dir):
        line = [onnx, prop]
        for name in BRANCHERS:
            cfg = Config(verify=VerifyConfig(method="bab", threads=threads), bab=BabConfig(relu_branching=name))
            res = bab.verify(bench_dir / "mnistfc" / onnx, bench_dir / "mnistfc" / prop, cfg, timeout=timeout)
            stats = res.stats.extra.get("bab")
            visited = stats.domains_visited if stats is not None else 0
            line += [res.status.value, visited, f"{res.time_s:.1f}"]
            want = expected.get((onnx, prop), "unknown")
            if res.status.value in ("sat", "unsat") and want in ("sat", "unsat") and res.status.value != want:
                wrong.append((onnx, prop, name, res.status.value, want))
        rows.append(line)
    header = ["onnx", "vnnlib"] + [f"{n}_{k}" for n in BRANCHERS for k in ("result", "domains", "time_s")]
    print()
    print(",".join(header))
    for line in rows:
        print(",".join(map(str, line)))
    for i, name in enumerate(BRANCHERS):
        solved = sum(r[2 + 3 * i] in ("sat", "unsat") for r in rows)
        total_t = sum(float(r[4 + 3 * i]) for r in rows)
        dom = sum(int(r[3 + 3 * i]) for r in rows)
        print(f"{name}: solved {solved}/{len(rows)}, domains {dom}, time {total_t:.0f} s")
    assert not wrong, wrong
