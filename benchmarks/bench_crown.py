"""pytest-benchmark: one batched CROWN pass versus a plain forward pass of the same batch.

Run::

    python -m pytest benchmarks/bench_crown.py --benchmark-enable -o addopts="" -q

mnistfc ``mnist-net_256x6``: 256 sub-domains (small random boxes inside a property box),
``C`` = the property's 9 rows. oval21 ``cifar_base_kw``: 32 sub-domains. The forward baseline
evaluates the 256 (32) box centres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bab.bounding import Domains, get_bounder

CASES = {
    "mnist256x6": ("mnistfc/mnist-net_256x6.onnx", "mnistfc/prop_0_0.03.vnnlib", 256),
    "cifar_base_kw": ("oval21/nets/cifar_base_kw.onnx",
                      "oval21/vnnlib/cifar_base_kw-img4549-eps0.00392156862745098.vnnlib", 32),
}


def sub_domains(bench_dir: Path, case: str):
    """The network and a batch of random sub-boxes of the property's box."""
    import onnx_models
    import vnnlib

    net_path, spec_path, n = CASES[case]
    net = onnx_models.load(bench_dir / net_path)
    region = vnnlib.parse(bench_dir / spec_path).regions[0]
    C = torch.tensor(np.concatenate([c.C for c in region.clauses]), dtype=torch.float32)
    lo, hi = (torch.tensor(v, dtype=torch.float32) for v in (region.lower, region.upper))
    g = torch.Generator().manual_seed(0)
    width = (hi - lo) * 0.25
    start = lo + (hi - lo - width) * torch.rand(n, lo.numel(), generator=g)
    return net, Domains(start, start + width, C.expand(n, *C.shape).contiguous())


@pytest.mark.parametrize("case", list(CASES))
def test_crown_pass(benchmark, bench_dir: Path, case: str) -> None:
    """Median time of one ``crown`` bound pass over the batch."""
    net, dom = sub_domains(bench_dir, case)
    bounder = get_bounder("crown")
    bounds = benchmark(bounder.bound, net, dom)
    assert bounds.lower.shape == dom.C.shape[:2]


@pytest.mark.parametrize("case", list(CASES))
def test_forward_baseline(benchmark, bench_dir: Path, case: str) -> None:
    """Median time of a plain forward pass of the batch's box centres."""
    net, dom = sub_domains(bench_dir, case)
    x = (dom.lower + dom.upper) / 2

    def run() -> torch.Tensor:
        with torch.no_grad():
            return net.forward(x)

    assert benchmark(run).shape == (dom.size, net.n_outputs)
