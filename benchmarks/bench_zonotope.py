"""pytest-benchmark: one batched ``zonotope`` (DeepZ) pass versus one ``crown`` pass.

Run (one torch thread)::

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_zonotope.py --benchmark-enable -o addopts="" -q

mnistfc ``mnist-net_256x6``, 256 sub-domains (random boxes a quarter of the width of
``prop_0_0.03``'s box, as in ``bench_crown.py``), ``C`` = the property's 9 rows. Besides the
timings, the extra info records the mean lower bound of each method on the batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bab.bounding import get_bounder
from benchmarks.bench_crown import sub_domains


@pytest.mark.parametrize("method", ["zonotope", "crown"])
def test_bound_pass(benchmark, bench_dir: Path, method: str) -> None:
    """Median time of one bound pass of ``method`` over the 256 sub-domains."""
    torch.set_num_threads(1)
    net, dom = sub_domains(bench_dir, "mnist256x6")
    bounder = get_bounder(method)
    bounds = benchmark.pedantic(bounder.bound, (net, dom), rounds=5, iterations=1, warmup_rounds=1)
    assert bounds.lower.shape == dom.C.shape[:2]
    benchmark.extra_info["mean_lower"] = float(bounds.lower.mean())
