"""Slow benchmark: the input-split branchers on ACAS Xu properties 1-4 of networks 1_1 ... 1_9.

Run::

    python -m pytest benchmarks/bench_input_branching.py -m slow -o addopts="" -s -q

Each of the 36 instances runs through the Python API with forced input-split BaB once per
brancher (``widest``, ``smear``, ``bound-improvement`` and the default ``auto`` portfolio), under
``BAB_BENCH_TIMEOUT`` seconds (default 60) with ``BAB_BENCH_THREADS`` torch threads (default 0:
automatic). The printed table gives, per brancher, the verdict, BaB domains visited and wall
time; the test fails on any answer that contradicts the expected results.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.compare import compare, env_settings

BRANCHERS = ("widest", "smear", "bound-improvement", "auto")


def _instances() -> list[tuple[str, str]]:
    return [(f"ACASXU_run2a_1_{net}_batch_2000.onnx", f"prop_{prop}.vnnlib")
            for net in range(1, 10) for prop in range(1, 5)]


@pytest.mark.slow
def test_input_branchers_on_acasxu(bench_dir: Path) -> None:
    from bab.config import BabConfig, Config, VerifyConfig

    timeout, threads = env_settings()
    configs = {name: Config(verify=VerifyConfig(method="input-split", threads=threads),
                            bab=BabConfig(input_branching=name))
               for name in BRANCHERS}
    wrong = compare(bench_dir, "acasxu", _instances(), configs, timeout)
    assert not wrong, wrong
