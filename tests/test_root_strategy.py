"""Root strategy of ReLU-split BaB: the root alpha-CROWN optimises the intermediate slopes only
when its steps (estimated from the measured first CROWN sweep) fit in its time limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bab.bounding import Domains
from bab.bounding.polyhedra import alpha as alpha_mod
from bab.bounding.polyhedra.alpha import STEP_COST, AlphaCrown
from bab.bounding.polyhedra.beta import BetaCrown
from bab.bounding.polyhedra.crown import Crown
from bab.config import ConfigError, from_dict
from bab.relu_bab import problem_options
from bab.relu_split import ReluSplitOptions, ReluSplitProblem
from tests.irnets import random_mlp
from vnnlib.spec import Clause, Region


def test_affordable_rule_by_hand() -> None:
    a = AlphaCrown(iterations=10, optimize_intermediate=True, time_limit=6.0, intermediate_share=0.5)
    assert a.affordable(0.1 / STEP_COST * 0.99)  # 10 steps * 0.099 s = 0.99 s <= 3 s
    assert a.affordable(0.3 / STEP_COST)  # exactly 3 s
    assert not a.affordable(0.31 / STEP_COST)
    assert AlphaCrown(optimize_intermediate=True).affordable(1e9)  # no time limit: always
    assert not AlphaCrown(optimize_intermediate=False, time_limit=1e9).affordable(0.0)
    assert not AlphaCrown(optimize_intermediate=True, time_limit=1e9, intermediate_share=0.0).affordable(1e-12)
    assert AlphaCrown(optimize_intermediate=True, time_limit=1e-9).affordable(1e9)  # default share: never skip


def _domains(n_in: int, g: torch.Generator) -> Domains:
    x0 = torch.rand(2, n_in, generator=g)
    return Domains(x0 - 0.3, x0 + 0.3, torch.randn(2, 3, 4, generator=g))


@pytest.mark.parametrize("limit,expect", [(1e-9, False), (1e4, True), (None, True)])
def test_alpha_skips_intermediate_slopes_when_too_slow(limit, expect) -> None:
    """Too slow: only final slopes (state keys), bounds still >= CROWN and below samples."""
    g = torch.Generator().manual_seed(1)
    net, dom = random_mlp([6, 20, 20, 4], seed=2), _domains(6, g)
    a = AlphaCrown(iterations=4, optimize_intermediate=True, time_limit=limit, intermediate_share=1.0)
    out = a.bound(net, dom)
    assert a.last_optimized_intermediate is expect
    assert any(k[0] != "final" for k in out.state.alphas) is expect
    assert torch.all(out.lower >= Crown().bound(net, dom).lower - 1e-5)
    x = dom.lower[:, None] + (dom.upper - dom.lower)[:, None] * torch.rand(2, 3000, 6, generator=g)
    cy = torch.einsum("nmo,nso->nsm", dom.C, net.forward(x.reshape(-1, 6)).reshape(2, 3000, 4))
    assert torch.all(out.lower <= cy.min(1).values + 1e-5)


def _problem(**opts) -> ReluSplitProblem:
    net = random_mlp([5, 16, 16, 3], seed=4)
    C = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    region = Region(np.full(5, -1.0), np.full(5, 1.0), (Clause(C, np.zeros(2)),))
    options = ReluSplitOptions(**({"root_iterations": 3, "attack": False} | opts))
    return ReluSplitProblem(net, region, 0, BetaCrown(iterations=3), lambda x, i: None, options)


def test_relu_split_root_records_the_choice(monkeypatch) -> None:
    """A small network keeps the intermediate optimisation; a measured sweep that is too slow
    for the root's time limit (simulated by a slow clock) drops it, with the same roots."""
    fast = _problem(root_time_limit=30.0)
    fast.roots()
    assert fast.stats["root_optimized_intermediate"] is True
    slow = _problem(root_time_limit=30.0, root_intermediate_share=1e-9)
    slow.roots()
    assert slow.stats["root_optimized_intermediate"] is False
    assert slow.branchable and set(slow.roots().fields) == set(fast.roots().fields)
    clock = iter(np.arange(0.0, 1e6, 10.0))  # every reading 10 s later: a 10 s sweep
    monkeypatch.setattr(alpha_mod.time, "monotonic", lambda: float(next(clock)))
    timed = _problem(root_time_limit=30.0)
    timed.roots()
    assert timed.stats["root_optimized_intermediate"] is False


def test_config_knob_reaches_the_problem() -> None:
    cfg = from_dict({"beta": {"root_intermediate_share": "0.25"}})
    assert cfg.beta.root_intermediate_share == 0.25
    opts = problem_options(cfg, remaining=40.0)
    assert opts.root_intermediate_share == 0.25 and opts.root_time_limit == pytest.approx(10.0)
    assert problem_options(from_dict({})).root_intermediate_share == ReluSplitOptions().root_intermediate_share
    with pytest.raises(ConfigError):
        from_dict({"beta": {"root_intermediate_share": "lots"}})


def test_ascent_adam_matches_torch_adam() -> None:
    """Same iterates as torch.optim.Adam(maximize=True), also with a parameter that gets no
    gradient in some steps (its own step count, as torch keeps it)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(5, generator=g)
    ours = [torch.randn(5, generator=g).requires_grad_(True), torch.randn(3, generator=g).requires_grad_(True)]
    ref = [p.detach().clone().requires_grad_(True) for p in ours]
    mine, theirs = alpha_mod.AscentAdam(ours, lr=0.1), torch.optim.Adam(ref, lr=0.1, maximize=True)

    def objective(ps: list[torch.Tensor], k: int) -> torch.Tensor:
        val = -((ps[0] - target) ** 2).sum()
        return val - (ps[1] ** 4).sum() if k % 3 else val

    for k in range(12):
        mine.step(objective(ours, k))
        theirs.zero_grad(set_to_none=True)
        objective(ref, k).backward()
        theirs.step()
        for a, b in zip(ours, ref):
            assert torch.allclose(a, b, atol=1e-6), k
    mine.step(torch.tensor(1.0))  # no graph: nothing moves
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, ref))


def test_alpha_crown_does_not_import_dynamo() -> None:
    """alpha-CROWN's optimiser must not pull in torch._dynamo (seconds per verifier process)."""
    import subprocess
    import sys

    code = ("import sys, torch\nfrom bab.bounding.polyhedra.alpha import AlphaCrown\nfrom bab.bounding import Domains\n"
            "from tests.irnets import random_mlp\nnet = random_mlp([4, 8, 8, 2])\n"
            "AlphaCrown(iterations=3, optimize_intermediate=True).bound(net, Domains(-torch.ones(1, 4), torch.ones(1, 4), torch.eye(2)[None]))\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
