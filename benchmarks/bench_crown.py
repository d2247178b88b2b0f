"""pytest-benchmark: one batched CROWN pass versus a plain forward pass of the same batch.

Run::

    python -m pytest benchmarks/bench_crown.py --benchmark-enable -o addopts="" -q

mnistfc ``mnist-net_256x6``: 256 sub-domains (small random boxes inside a property box),
``C`` = the property's 9 rows. oval21 ``cifar_base_kw``: 32 sub-domains. The forward baseline
evaluates the 256 (32) box centres.

Throughput against the machine's limit (issue 16, item 5; ``test_crown_gflops``, printed with
``-s``): one CROWN pass with intermediate bounds on a fully connected network with hidden
widths ``n_1 .. n_{L-1}`` (``n_0`` inputs), ``N`` boxes and ``R`` spec rows is a known number
of multiply-adds. Layer 1's bounds are interval arithmetic of the input box (``2 N n_1 n_0``:
centre and radius products). The bounds of hidden layer ``k >= 2`` are one backward pass of
``r_k`` rows from ``z_k`` to the input, one ``[N r_k, n_j] x [n_j, n_{j-1}]`` product per
layer ``j = k .. 1`` (``N r_k sum_{j<=k} n_j n_{j-1}``); the final pass does the same with
the ``R`` rows through every layer. ``r_k = 2 u_k`` (lower and upper bound of each neuron)
where ``u_k`` is the number of neurons of layer ``k`` unstable in some box of the batch: the
torch bounder recomputes only those (the NumPy fast path, ``bab.fastpath.crown``, those that
its interval bounds leave unstable in some box: its own count). Only these matrix products are counted (the ReLU relaxation and
concretisation are elementwise, lower order). FLOPs = 2 x multiply-adds. The baseline runs
exactly the same list of matrix products with ``torch.matmul`` on random data, same dtype,
same thread count; ``ratio`` = achieved / baseline GFLOP/s is how far the bound pass is from
what this CPU does with those products.

    python -m pytest benchmarks/bench_crown.py -k gflops -o addopts="" -q -s
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


GFLOP_CASES = {  # onnx, vnnlib, boxes (torch), boxes (NumPy: it recomputes every neuron), box width
    "mnist256x6": ("mnistfc/mnist-net_256x6.onnx", "mnistfc/prop_0_0.03.vnnlib", 256, 4, 0.25),
    "acasxu_1_1": ("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_3.vnnlib", 256, 256, 0.05),
}


def gemm_shapes(widths: list[int], unstable: list[int], n_box: int, rows: int) -> list[tuple[int, int, int]]:
    """The ``(m, k, n)`` matrix products of one CROWN pass (module docstring)."""
    shapes = [(n_box, widths[0], widths[1])] * 2  # layer 1: centre and radius
    for k in range(2, len(widths) - 1):
        shapes += [(n_box * 2 * unstable[k], widths[j], widths[j - 1]) for j in range(k, 0, -1)]
    shapes += [(n_box * rows, widths[j], widths[j - 1]) for j in range(len(widths) - 2, 0, -1)]
    return shapes


def _median_time(fn, reps: int = 5) -> float:
    import time

    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _matmul_seconds(shapes: list[tuple[int, int, int]], dtype: torch.dtype) -> float:
    mats = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in set(shapes)]
    lookup = {(a.shape[0], a.shape[1], b.shape[1]): (a, b) for a, b in mats}
    return _median_time(lambda: [torch.matmul(*lookup[s]) for s in shapes], reps=3)


@pytest.mark.parametrize("case", list(GFLOP_CASES))
def test_crown_gflops(bench_dir: Path, case: str) -> None:
    """Achieved GFLOP/s of one CROWN pass (torch ``crown``, float32, and the NumPy fast path,
    float64) next to ``torch.matmul`` on the same products; one thread."""
    import onnx
    import onnx_models
    import vnnlib
    from threadpoolctl import threadpool_limits

    from bab.fastpath.crown import crown_bounds, intermediate_bounds
    from bab.fastpath.model import read_fc_net

    torch.set_num_threads(1)
    onnx_path, spec_path, n, n_np, frac = GFLOP_CASES[case]
    fc = read_fc_net(onnx.load(str(bench_dir / onnx_path)), 100_000)
    region = vnnlib.parse(bench_dir / spec_path).regions[0]
    C = np.concatenate([c.C for c in region.clauses])
    rng = np.random.default_rng(0)
    width = (region.upper - region.lower) * frac
    lo = region.lower + (region.upper - region.lower - width) * rng.random((n, fc.n_inputs))
    up = lo + width
    widths = [fc.n_inputs] + [w.shape[0] for w in fc.weights]
    with threadpool_limits(1):
        relax = intermediate_bounds(fc, lo, up)
        unstable = [0, 0] + [int((((sl != su) | (tu != 0)).any(axis=0)).sum()) for sl, su, tu in relax[1:]]
        np_time = _median_time(lambda: crown_bounds(fc, C, lo[:n_np], up[:n_np]), reps=3)
        np_rows: list[int] = []
        intermediate_bounds(fc, lo[:n_np], up[:n_np], np_rows)
        dense = gemm_shapes(widths, [0] + np_rows, n_np, C.shape[0])
        np_base = _matmul_seconds(dense, torch.float64)
    net = onnx_models.load(bench_dir / onnx_path)
    dom = Domains(torch.tensor(lo, dtype=torch.float32), torch.tensor(up, dtype=torch.float32),
                  torch.tensor(C, dtype=torch.float32).expand(n, *C.shape).contiguous())
    bounder = get_bounder("crown")
    t_time = _median_time(lambda: bounder.bound(net, dom))
    sparse = gemm_shapes(widths, [0, 0] + unstable[2:], n, C.shape[0])
    t_base = _matmul_seconds(sparse, torch.float32)
    for name, shapes, secs, base in (("torch crown f32", sparse, t_time, t_base),
                                     ("numpy fastpath f64", dense, np_time, np_base)):
        flop = 2 * sum(m * k * q for m, k, q in shapes)
        got, lim = flop / secs / 1e9, flop / base / 1e9
        print(f"{case} {name}: {flop / 1e9:.2f} GFLOP in {secs * 1e3:.1f} ms = {got:.2f} GFLOP/s; "
              f"matmul {lim:.2f} GFLOP/s; ratio {got / lim:.2f}")
        assert 0 < got and 0 < lim
