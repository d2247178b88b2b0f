"""pytest-benchmark: one batched CROWN pass on the vit_2023 ViT versus a plain forward pass.

Run (one torch thread)::

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_vit.py --benchmark-enable -o addopts="" -q

VNN-COMP 2023/2024 ``vit_2023`` ``pgd_2_3_16.onnx`` (patch embedding, two attention blocks
with Softmax and MatMul of two input-dependent tensors, BatchNorm, ReLU MLPs): 16 sub-domains,
random boxes half as wide as the ℓ∞ box of ``pgd_2_3_16_6058.vnnlib`` (a property the 2024
competition proved ``unsat``), ``C`` = the property's 9 rows. The forward baseline evaluates the
16 box centres. The CROWN test also records the mean lower bound of CROWN and of IBP on the
batch and checks that CROWN's are finite and at least IBP's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bab.bounding import Domains, get_bounder

VIT = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2024" / "vit_2023"
MODEL, PROPERTY, BATCH = "onnx/pgd_2_3_16.onnx", "vnnlib/pgd_2_3_16_6058.vnnlib", 16


@pytest.fixture(scope="module")
def vit_batch():
    """The ViT network and 16 random half-width sub-boxes of the property's box."""
    if not (VIT / MODEL).is_file():
        pytest.skip("../shared/benchmarks/vnncomp2024/vit_2023 not present")
    import onnx_models
    import vnnlib

    net = onnx_models.load(VIT / MODEL)
    region = vnnlib.parse_cached(VIT / PROPERTY, net.n_inputs, net.n_outputs).regions[0]
    C = torch.tensor(np.concatenate([c.C for c in region.clauses]), dtype=torch.float32)
    lo, hi = (torch.tensor(v, dtype=torch.float32) for v in (region.lower, region.upper))
    g = torch.Generator().manual_seed(0)
    width = (hi - lo) * 0.5
    start = lo + (hi - lo - width) * torch.rand(BATCH, lo.numel(), generator=g)
    return net, Domains(start, start + width, C.expand(BATCH, *C.shape).contiguous())


def test_crown_pass(benchmark, vit_batch) -> None:
    """Median time of one ``crown`` bound pass over the 16 sub-domains."""
    torch.set_num_threads(1)
    net, dom = vit_batch
    bounder = get_bounder("crown")
    bounds = benchmark.pedantic(bounder.bound, (net, dom), rounds=3, iterations=1, warmup_rounds=0)
    ibp = get_bounder("ibp").bound(net, dom).lower
    assert bounds.lower.shape == dom.C.shape[:2]
    assert torch.isfinite(bounds.lower).all() and (bounds.lower >= ibp - 1e-6).all()
    benchmark.extra_info["mean_lower_crown"] = float(bounds.lower.mean())
    benchmark.extra_info["mean_lower_ibp"] = float(ibp.mean())
    benchmark.extra_info["rows_proved"] = int((bounds.lower > 0).sum())


def test_forward_baseline(benchmark, vit_batch) -> None:
    """Median time of a plain forward pass of the 16 box centres."""
    torch.set_num_threads(1)
    net, dom = vit_batch
    x = (dom.lower + dom.upper) / 2

    def run() -> torch.Tensor:
        with torch.no_grad():
            return net.forward(x)

    out = benchmark(run)
    assert out.shape == (BATCH, net.n_outputs)
