"""Input-split BaB: verdicts against dense enumeration, two input regions, branchers, stats."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import bab
from bab.bab_method import choose_strategy
from bab.config import BabConfig, Config, FalsifyConfig, VerifyConfig
from bab.result import Status
from heuristics.input_split import BoundImprovement, Smear, Widest, get_input_brancher
from tests.builders import random_mlp as random_mlp_onnx
from tests.builders import write_property
from vnnlib.spec import Clause, Region, Spec


def _grid_min(net, lo, hi, row, n=401) -> float:
    """Dense grid minimum of ``row . f(x)`` over a 2-D box (the oracle)."""
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    x = np.stack([g0.ravel(), g1.ravel()], 1)
    return float((net.evaluate(x) @ np.asarray(row)).min())


def _cfg(method: str = "default", **bab_kw) -> Config:
    # no attack phase: the search itself must find counterexamples and proofs
    return Config(verify=VerifyConfig(method=method), falsify=FalsifyConfig(enabled=False),
                  bab=BabConfig(**bab_kw))


@pytest.mark.parametrize("seed", range(6))
def test_verdict_matches_dense_grid(tmp_path, seed) -> None:
    import onnx_models

    path = random_mlp_onnx(tmp_path / f"n{seed}.onnx", [2, 8, 8, 2], seed=seed)
    net = onnx_models.load(path)
    lo, hi, row = [-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]
    m = _grid_min(net, lo, hi, row)
    for d, expect in ((m - 0.05, Status.UNSAT), (m + 0.05, Status.SAT)):
        spec = Spec((Region(np.array(lo), np.array(hi), (Clause(np.array([row]), np.array([d])),)),), 2, 2)
        res = bab.verify(path, spec, _cfg(input_branching="widest"), timeout=60)
        assert res.status is expect, (seed, d, m, res.reason)
        if expect is Status.SAT:
            assert res.counterexample.y @ np.array(row) <= d


def test_second_region_only_has_counterexample(tmp_path) -> None:
    """Two input boxes (ACAS Xu property 6 style): only the second contains a violation."""
    import onnx_models

    path = random_mlp_onnx(tmp_path / "two.onnx", [2, 8, 2], seed=11)
    net = onnx_models.load(path)
    row = [1.0, 0.0]
    m1 = _grid_min(net, [-1, -1], [0, 1], row)
    m2 = _grid_min(net, [0.5, -1], [1, 1], row)
    d = min(m1, m2) + 0.5 * abs(m1 - m2) if m2 < m1 else None
    if d is None:  # make region 2 the one with the smaller output by swapping boxes
        (lo1, hi1), (lo2, hi2) = ([0.5, -1], [1, 1]), ([-1, -1], [0, 1])
        m1, m2 = m2, m1
        d = m2 + 0.5 * (m1 - m2)
    else:
        (lo1, hi1), (lo2, hi2) = ([-1, -1], [0, 1]), ([0.5, -1], [1, 1])
    clause = (Clause(np.array([row]), np.array([d])),)
    spec = Spec((Region(np.array(lo1, float), np.array(hi1, float), clause),
                 Region(np.array(lo2, float), np.array(hi2, float), clause)), 2, 2)
    res = bab.verify(path, spec, _cfg(), timeout=60)
    assert res.status is Status.SAT and res.counterexample.region == 1
    assert spec.regions[1].contains(res.counterexample.x)
    assert res.stats.extra["strategy"] == "input-split"


def test_stats_and_strategy_reason(tmp_path) -> None:
    path = random_mlp_onnx(tmp_path / "s.onnx", [3, 6, 2], seed=3)
    prop = write_property(tmp_path / "s.vnnlib", [0, 0, 0], [1, 1, 1], 2, "(assert (<= Y_0 -1000))")
    res = bab.verify(path, prop, _cfg("bab"), timeout=60)
    assert res.status is Status.UNSAT and res.stats.extra["bab"].domains_visited >= 1
    assert "3 inputs <= input_split_threshold 20" in res.stats.extra["strategy_reason"]


def test_choose_strategy() -> None:
    assert choose_strategy(5, 20)[0] == "input-split"
    assert choose_strategy(784, 20)[0] == "relu-split"
    assert choose_strategy(784, 20, "input-split") == ("input-split", "forced by --method input-split")


class _Problem:
    """Just enough of an InputSplitProblem for the branchers."""

    def __init__(self) -> None:
        from onnx_models import layers as L
        from tests.irnets import chain

        # f(x) = [10 * x0 + x1]: the first input matters ten times more
        self.net = chain([L.Linear(torch.tensor([[10.0, 1.0]]), torch.tensor([0.0]))], (2,))
        self.C = torch.tensor([[1.0]])
        self.d = torch.tensor([0.0])
        self.R = torch.tensor([[True]])
        self.root_width = torch.tensor([1.0, 1.0])

    def open_rows(self, batch):
        return batch["open"]

    def rows_of(self, batch):
        return self.C.expand(len(batch), 1, 1)

    def root_width_of(self, batch):
        return self.root_width.expand(len(batch), -1)

    def _row_bounds(self, bounder, lower, upper, region):
        from bab.bounding import Domains

        C = self.C.expand(lower.shape[0], 1, 1)
        return bounder.bound(self.net, Domains(lower, upper, C)).lower - self.d


def test_branchers_pick_expected_dimension() -> None:
    from bab.store import TensorBatch

    p = _Problem()
    batch = TensorBatch({"lower": torch.tensor([[0.0, 0.0]]), "upper": torch.tensor([[1.0, 2.0]]),
                         "open": torch.tensor([[True]]), "region": torch.tensor([0])})
    assert Widest().choose(p, batch).tolist() == [1]  # dimension 1 is twice as wide
    assert Smear().choose(p, batch).tolist() == [0]  # 10 * 1 > 1 * 2
    assert BoundImprovement().choose(p, batch).tolist() == [0]
    with pytest.raises(ValueError, match="available"):
        get_input_brancher("nope")


@pytest.mark.parametrize("solver", [True, False])
def test_unsplittable_box_goes_to_the_leaf_solver(tmp_path, solver, monkeypatch) -> None:
    """A point box cannot be split: the exact solver decides it (a 5e-7 margin that the bounds
    cannot certify under their float slack); without a solver the answer is unknown."""
    from tests.builders import mlp_onnx

    if not solver:
        import bab.relu_bab as rb

        monkeypatch.setattr(rb, "make_leaf_solver", lambda cfg: None)
    path = mlp_onnx(tmp_path / "abs.onnx", [np.array([[1.0], [-1.0]]), np.array([[1.0, 1.0]])],
                    [np.zeros(2), np.zeros(1)])
    spec = Spec((Region(np.array([0.5]), np.array([0.5]), (Clause(np.array([[1.0]]), np.array([0.5 - 5e-7])),)),), 1, 1)
    res = bab.verify(path, spec, _cfg("input-split", input_branching="smear"), timeout=60)
    stats = res.stats.extra["bab"]
    if solver:
        assert res.status is Status.UNSAT, res.reason
        assert stats.extra["lp_leaves"] == 1 and stats.leaves_closed == 1
    else:
        assert res.status is Status.UNKNOWN and stats.unknown_leaf == 1


def test_boxes_with_few_unstable_relus_try_the_exact_solver_first(tmp_path) -> None:
    """Once the instance counts as hard, boxes with at most ``input_exact_unstable`` unstable
    ReLUs go to MILP before splitting on; the verdicts still match the dense grid."""
    import onnx_models

    path = random_mlp_onnx(tmp_path / "n.onnx", [2, 8, 8, 2], seed=1)
    net = onnx_models.load(path)
    lo, hi, row = [-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]
    m = _grid_min(net, lo, hi, row)
    for d, expect in ((m - 0.02, Status.UNSAT), (m + 0.02, Status.SAT)):
        spec = Spec((Region(np.array(lo), np.array(hi), (Clause(np.array([row]), np.array([d])),)),), 2, 2)
        cfg = Config(verify=VerifyConfig(method="input-split"), falsify=FalsifyConfig(enabled=False),
                     bab=BabConfig(input_branching="widest", input_exact_unstable=16, input_exact_share=1.0,
                                   input_late_after=0, input_exact_after=0.0))
        res = bab.verify(path, spec, cfg, timeout=60)
        assert res.status is expect, (d, m, res.reason)
        stats = res.stats.extra["bab"]
        if expect is Status.UNSAT:
            assert stats.extra.get("milp_leaves", 0) + stats.extra.get("lp_leaves", 0) > 0
            assert stats.leaves_closed > 0


def test_late_bounder_joins_the_cascade_after_the_first_boxes(tmp_path) -> None:
    """``input_late_after`` boxes are bounded with the cascade alone; after that the late
    bounder also sees the survivors, and verdicts still match the grid."""
    import onnx_models
    from bab.bounding.polyhedra.alpha import AlphaCrown

    calls: list[int] = []
    original = AlphaCrown.bound

    def spy(self, network, domains, state=None):
        calls.append(domains.size)
        return original(self, network, domains, state)

    path = random_mlp_onnx(tmp_path / "n.onnx", [2, 8, 8, 2], seed=2)
    net = onnx_models.load(path)
    lo, hi, row = [-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]
    m = _grid_min(net, lo, hi, row)
    spec = Spec((Region(np.array(lo), np.array(hi), (Clause(np.array([row]), np.array([m - 0.02])),)),), 2, 2)
    AlphaCrown.bound = spy
    try:
        for after in (10**9, 3):
            calls.clear()
            res = bab.verify(path, spec, _cfg("input-split", input_branching="widest", input_late_after=after,
                                                 input_exact_unstable=0), timeout=60)
            assert res.status is Status.UNSAT, res.reason
            assert (len(calls) > 0) == (after == 3)
    finally:
        AlphaCrown.bound = original


@pytest.mark.parametrize("bounder", ["ibp", "fastlin"])
def test_any_bounder_drives_bab(tmp_path, bounder) -> None:
    """``bab.bounder`` swaps the bounder of the same engine: verdicts still match the grid,
    even on a network with more inputs than the input-split threshold."""
    import onnx_models

    path = random_mlp_onnx(tmp_path / "any.onnx", [2, 8, 8, 2], seed=4)
    net = onnx_models.load(path)
    lo, hi, row = [-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]
    m = _grid_min(net, lo, hi, row)
    for d, expect in ((m - 0.05, Status.UNSAT), (m + 0.05, Status.SAT)):
        spec = Spec((Region(np.array(lo), np.array(hi), (Clause(np.array([row]), np.array([d])),)),), 2, 2)
        res = bab.verify(path, spec, _cfg("bab", bounder=bounder, input_split_threshold=0), timeout=60)
        assert res.status is expect, (bounder, d, m, res.reason)
        assert res.stats.extra["strategy"] == "input-split"
        assert res.stats.extra["strategy_reason"] == f"bab.bounder = {bounder} drives input-split BaB"


def test_unknown_bab_bounder_is_a_config_error() -> None:
    from bab.config import ConfigError

    with pytest.raises(ConfigError, match="zonotop"):
        BabConfig(bounder="zonotop")
