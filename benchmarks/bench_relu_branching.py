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
from pathlib import Path

import pytest

from benchmarks.compare import compare, env_settings

BRANCHERS = ("fsb", "babsr")
N_INSTANCES = 15


def _instances(bench_dir: Path) -> list[tuple[str, str]]:
    with open(bench_dir / "mnistfc" / "mnistfc_instances.csv", newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and r[0] == "mnist-net_256x4.onnx"]
    return [(r[0], r[1]) for r in rows[:N_INSTANCES]]


@pytest.mark.slow
def test_fsb_vs_babsr_on_mnistfc_256x4(bench_dir: Path) -> None:
    from bab.config import BabConfig, Config, VerifyConfig

    timeout, threads = env_settings()
    configs = {name: Config(verify=VerifyConfig(method="bab", threads=threads), bab=BabConfig(relu_branching=name))
               for name in BRANCHERS}
    wrong = compare(bench_dir, "mnistfc", _instances(bench_dir), configs, timeout)
    assert not wrong, wrong
