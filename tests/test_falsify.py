"""Falsification: candidates satisfy their clause; PGD finds violations random sampling misses."""

from __future__ import annotations

import numpy as np
import torch

from bab.config import FalsifyConfig
from bab.falsify import Falsifier, clause_tensors, margins
from tests.irnets import hand_221, random_mlp
from vnnlib.spec import Clause, Region


def _region(lo, hi, clauses) -> Region:
    return Region(np.array(lo, float), np.array(hi, float),
                  tuple(Clause(np.array(C, float), np.array(d, float)) for C, d in clauses))


def test_clause_tensors_pad_and_rowless() -> None:
    reg = _region([0, 0], [1, 1], [([[1.0], [-1.0]], [0.5, 0.0]), (np.zeros((0, 1)), [])])
    C, d = clause_tensors(reg, torch.float64, "cpu")
    assert C.shape == (2, 2, 1)
    m = margins(torch.tensor([[0.25]], dtype=torch.float64), C, d)
    assert m[0, 0].item() == -0.25  # max(0.25 - 0.5, -0.25 - 0)
    assert m[0, 1].item() < -1e29  # a rowless clause always holds


def test_random_phase_finds_easy_violation() -> None:
    net = hand_221()  # y = relu(x1+x2) + relu(x1-x2) = 2*max(x1, |x2|)... >= 0
    reg = _region([-1, -1], [1, 1], [([[1.0]], [0.1])])  # unsafe: y <= 0.1
    cands = list(Falsifier(net, FalsifyConfig(pgd_steps=0)).run((reg,)))
    assert cands, "random sampling should hit y <= 0.1"
    for c in cands:
        y = net.evaluate(c.x)[0]
        assert y[0] <= 0.1 and reg.contains(c.x)


def test_pgd_finds_narrow_violation() -> None:
    net = hand_221()
    # y <= 1e-3 only in a tiny neighbourhood of the origin within a large box
    reg = _region([-10, -10], [10, 10], [([[1.0]], [1e-3])])
    cfg = FalsifyConfig(random_samples=16, pgd_restarts=4, pgd_steps=200, pgd_step_size=0.05)
    cands = [c for c in Falsifier(net, cfg, seed=3).run((reg,))]
    assert cands and all(net.evaluate(c.x)[0, 0] <= 1e-3 for c in cands)


def test_no_candidates_when_safe() -> None:
    net = random_mlp([3, 8, 2], seed=4)
    reg = _region([0, 0, 0], [0.1, 0.1, 0.1], [([[1.0, 0.0]], [-1e6])])
    assert list(Falsifier(net, FalsifyConfig(random_samples=64, pgd_steps=10)).run((reg,))) == []


def test_deadline_interrupts() -> None:
    net = random_mlp([3, 8, 2], seed=4)
    reg = _region([0, 0, 0], [1, 1, 1], [([[1.0, 0.0]], [-1e6])])

    class Stop(Exception):
        pass

    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise Stop

    try:
        list(Falsifier(net, FalsifyConfig(pgd_steps=1000), check_time=check).run((reg,)))
    except Stop:
        pass
    assert len(calls) == 4
