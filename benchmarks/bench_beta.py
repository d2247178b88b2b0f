"""pytest-benchmark: beta-CROWN sub-domains bounded per second (the ReLU-split BaB hot loop).

Run::

    python -m pytest benchmarks/bench_beta.py --benchmark-enable -o addopts="" -q

mnistfc ``mnist-net_256x6`` with ``prop_0_0.03``: the roots of the 9 clauses are split on
random unstable neurons until there are 256 sub-domains (each with 1-6 fixed phases), then one
:meth:`~bab.relu_split.ReluSplitProblem.bound` call bounds the whole batch (default beta-CROWN
settings: warm-started Adam on alpha and beta, CROWN refinement above shallow splits). The
rate is in ``extra_info["domains_per_s"]``. ``BAB_BENCH_THREADS`` sets torch's thread count
(default: torch's own); with another busy process on the machine, use 1 (OpenMP teams
larger than the free cores stall at every parallel region).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

BATCH = 256


def split_batch(bench_dir: Path, n: int = BATCH, seed: int = 0):
    """The ReLU-split problem and ``n`` unbounded sub-domains of its roots."""
    import onnx_models
    import vnnlib
    from bab.bounding.polyhedra.beta import BetaCrown
    from bab.relu_split import ReluSplitProblem
    from bab.store import TensorBatch

    net = onnx_models.load(bench_dir / "mnistfc/mnist-net_256x6.onnx")
    region = vnnlib.parse(bench_dir / "mnistfc/prop_0_0.03.vnnlib").regions[0]
    problem = ReluSplitProblem(net, region, 0, BetaCrown(), lambda x, i: None)
    roots = problem.roots()
    g = torch.Generator().manual_seed(seed)
    batch = roots.select(torch.randint(len(roots), (n,), generator=g))
    depth = torch.randint(1, 7, (n,), generator=g)
    for step in range(6):
        data = problem.branch_data(batch)
        free = torch.cat([d["unstable"] for d in data], 1).float()
        pick = torch.multinomial(free + 1e-12, 1, generator=g).squeeze(1)
        sign = 1 if step % 2 == 0 else -1
        split = problem.with_splits(batch, pick, sign)
        take = (depth > step)
        batch = TensorBatch({k: torch.where(take.reshape(-1, *[1] * (v.dim() - 1)), split[k], v)
                             for k, v in batch.fields.items()})
    batch["depth"] = depth
    return problem, batch


def test_beta_domains_per_second(benchmark, bench_dir: Path) -> None:
    """Median time of bounding 256 sub-domains in one batched beta-CROWN pass."""
    threads = int(os.environ.get("BAB_BENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    problem, batch = split_batch(bench_dir)
    problem.opts.attack = False

    def setup():
        from bab.store import TensorBatch

        return (TensorBatch({k: v.clone() for k, v in batch.fields.items()}),), {}

    out = benchmark.pedantic(problem.bound, setup=setup, rounds=5, iterations=1, warmup_rounds=1)
    assert len(out) <= BATCH
    benchmark.extra_info["domains_per_s"] = BATCH / benchmark.stats.stats.median
