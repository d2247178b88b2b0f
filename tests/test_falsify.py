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


def _bump() -> "Network":
    """``y = relu(1 - 200 (|x1 - 0.3| + |x2 - 0.6|))``: zero (flat, no gradient) outside a
    diamond of radius 5e-3 (area 5e-5 of the unit box); ``y >= 0.5`` only inside radius 2.5e-3."""
    from onnx_models import layers as L
    from tests.irnets import chain

    t = torch.tensor
    first = L.Linear(t([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]), t([-0.3, 0.3, -0.6, 0.6]))
    return chain([first, L.ReLU(), L.Linear(t([[-200.0, -200.0, -200.0, -200.0]]), t([1.0])), L.ReLU()], (2,))


def test_extra_sampling_finds_a_tiny_flat_region() -> None:
    """PGD has no gradient outside the bump and the 2048 samples of seed 1 miss it; batches of
    uniform samples (``sample_more``, about 20,000 samples expected) hit it."""
    net = _bump()
    reg = _region([0, 0], [1, 1], [([[-1.0]], [-0.5])])  # unsafe: y >= 0.5
    assert list(Falsifier(net, FalsifyConfig(), seed=1).run((reg,))) == []
    cands = Falsifier(net, FalsifyConfig(), seed=1).sample_more((reg,), 60.0)
    assert cands and all(net.evaluate(c.x)[0, 0] >= 0.5 and reg.contains(c.x) for c in cands)


def test_pipeline_samples_before_input_split(tmp_path) -> None:
    """End to end: the bump as an ONNX file, ``unsafe: y >= 0.5``; a short attack phase misses
    it and the uniform batches before the input-split search find it (replayed)."""
    import bab
    from bab.config import Config
    from bab.result import Status
    from tests.builders import mlp_onnx, write_property

    w1 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    model = mlp_onnx(tmp_path / "bump.onnx", [w1, np.full((1, 4), -200.0), np.ones((1, 1))],
                     [np.array([-0.3, 0.3, -0.6, 0.6]), np.ones(1), np.zeros(1)])
    prop = write_property(tmp_path / "p.vnnlib", [0.0, 0.0], [1.0, 1.0], 1, "(assert (>= Y_0 0.5))")
    cfg = Config(falsify=FalsifyConfig(random_samples=16, pgd_steps=0))  # a short attack misses it
    res = bab.verify(model, prop, cfg, timeout=60)
    assert res.status is Status.SAT and res.stats.proved_by == "input-split bab (uniform samples)"
    assert res.counterexample.y[0] >= 0.5


def test_uniform_samples_also_run_between_input_split_steps(tmp_path, monkeypatch) -> None:
    """Without samples before the search, the slices between its steps (the engine's side
    hook, within ``falsify.sample_side_share``) still find the bump, and the hit is replayed."""
    import bab
    import bab.bab_method
    from bab.config import Config
    from bab.result import Status
    from tests.builders import mlp_onnx, write_property

    monkeypatch.setattr(bab.bab_method, "SAMPLE_FIRST", 0.0)
    w1 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    model = mlp_onnx(tmp_path / "bump.onnx", [w1, np.full((1, 4), -200.0), np.ones((1, 1))],
                     [np.array([-0.3, 0.3, -0.6, 0.6]), np.ones(1), np.zeros(1)])
    prop = write_property(tmp_path / "p.vnnlib", [0.0, 0.0], [1.0, 1.0], 1, "(assert (>= Y_0 0.5))")
    cfg = Config(falsify=FalsifyConfig(random_samples=16, pgd_steps=0, sample_side_share=0.5))
    res = bab.verify(model, prop, cfg, timeout=60)
    assert res.status is Status.SAT and res.stats.proved_by == "input-split bab (uniform samples)"
    assert res.counterexample.y[0] >= 0.5
    assert res.stats.extra["bab"].domains_visited >= 1  # found after the roots were bounded
