"""MILP refinement of intermediate bounds (encoders/refine.py) and the restart of ReLU-split BaB
with the refined root boxes (bab/relu_bab.py).

Oracle: the exact polygon enumeration of ``tests/test_relu_split.py`` applied to each network
prefix, which gives every hidden pre-activation's exact range over the input box.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bab.relu_bab
import bab.root_refine
import onnx_models
from bab.bounding.base import Domains
from bab.bounding.polyhedra.alpha import AlphaCrown, AlphaState
from bab.bounding.polyhedra.crown import Crown
from bab.result import Status
from bab.config import BabConfig, BetaConfig, Config, FalsifyConfig, SolverConfig, VerifyConfig
from encoders.backends import Dispatcher
from encoders.decide import dispatcher_for
from encoders.refine import milp_refine, refinable
from tests.test_clause_milp import needs_gurobi
from tests.test_relu_split import exact_min, linear_pieces, random_instance

SEEDS = range(300, 312)


def _setup(tmp_path, seed):
    path, spec, _ = random_instance(tmp_path, seed)
    net = onnx_models.load(path)
    region = spec.regions[0]
    ws = [n.layer.weight.double().numpy() for n in net.nodes if hasattr(n.layer, "weight")]
    bs = [n.layer.bias.double().numpy() for n in net.nodes if hasattr(n.layer, "weight")]
    lo = torch.tensor(region.lower, dtype=net.dtype)[None]
    hi = torch.tensor(region.upper, dtype=net.dtype)[None]
    C = torch.tensor(np.concatenate([c.C for c in region.clauses]), dtype=net.dtype)[None]
    return net, region, ws, bs, Domains(lo, hi, C)


def _exact_ranges(ws, bs, region, k):
    """Exact ``(min, max)`` of every pre-activation of hidden layer ``k``."""
    pieces = linear_pieces(ws[:k + 1], bs[:k + 1], region.lower, region.upper)
    eye = np.eye(len(bs[k]))
    return (np.array([exact_min(pieces, e) for e in eye]), np.array([-exact_min(pieces, -e) for e in eye]))


@needs_gurobi
@pytest.mark.parametrize("seed", SEEDS)
def test_refined_bounds_are_sound_tighter_and_exact(tmp_path, seed) -> None:
    """Refined bounds lie inside CROWN's, contain every neuron's exact range, and equal it
    (within the solver slack) for neurons whose exact range still straddles 0."""
    net, region, ws, bs, dom = _setup(tmp_path, seed)
    crown = Crown().bound(net, dom).intermediate
    cfg = SolverConfig()
    refined, report = milp_refine(net, region.lower, region.upper, crown, cfg, dispatcher_for(cfg),
                                  per_neuron=5.0, time_limit=60.0)
    assert report.stopped == ""
    relu_in = [n.inputs[0] for n in net.nodes if type(n.layer).__name__ == "ReLU"]
    for k, j in enumerate(relu_in):
        lo0, hi0 = (t[0].double().numpy().reshape(-1) for t in crown[j])
        lo, hi = refined[j]
        emin, emax = _exact_ranges(ws, bs, region, k)
        assert np.all(lo >= lo0) and np.all(hi <= hi0)
        assert np.all(lo <= emin + 1e-6) and np.all(hi >= emax - 1e-6), (seed, k)
        both = (lo0 < 0) & (hi0 > 0) & (emin < 0) & (emax > 0)
        if k > 0:  # a layer with binaries before it: solved to optimality
            tol = (1e-4 * (1 + np.abs(emin) + np.abs(emax)))[both]
            assert np.all(lo[both] >= emin[both] - tol) and np.all(hi[both] <= emax[both] + tol), (seed, k)


@needs_gurobi
@pytest.mark.parametrize("seed", SEEDS[:6])
def test_alpha_crown_with_a_refined_floor_is_tighter_and_sound(tmp_path, seed) -> None:
    """alpha-CROWN whose sweeps intersect with the refined boxes: never looser than without,
    and still below the exact minimum of every row."""
    net, region, ws, bs, dom = _setup(tmp_path, seed)
    plain = AlphaCrown(iterations=10).bound(net, dom)
    cfg = SolverConfig()
    refined, _ = milp_refine(net, region.lower, region.upper, plain.intermediate, cfg, dispatcher_for(cfg),
                             per_neuron=5.0, time_limit=60.0)
    floor = {k: (torch.as_tensor(lo).reshape(plain.intermediate[k][0].shape),
                 torch.as_tensor(hi).reshape(plain.intermediate[k][1].shape)) for k, (lo, hi) in refined.items()}
    tight = AlphaCrown(iterations=10).bound(net, dom, AlphaState(floor=floor))
    pieces = linear_pieces(ws, bs, region.lower, region.upper)
    exact = np.array([exact_min(pieces, row) for row in dom.C[0].double().numpy()])
    assert torch.all(tight.lower[0] >= plain.lower[0] - 1e-5)
    assert np.all(tight.lower[0].double().numpy() <= exact + 1e-5)


def test_refinement_without_gurobi_changes_nothing(tmp_path) -> None:
    """OR-Tools reports no bound of a stopped MILP: the walk ends at once, bounds untouched."""
    net, region, _, _, dom = _setup(tmp_path, SEEDS[0])
    crown = Crown().bound(net, dom).intermediate
    refined, report = milp_refine(net, region.lower, region.upper, crown, SolverConfig(), Dispatcher("ortools"),
                                  per_neuron=1.0, time_limit=10.0)
    assert report.stopped == "licence" and report.layers == 0
    for j, (lo, hi) in refined.items():
        assert np.array_equal(lo, crown[j][0].double().numpy().reshape(-1))


@needs_gurobi
def test_refinable_needs_binaries_before_a_layer_and_gurobi(tmp_path) -> None:
    """A net with two hidden layers and an unstable first layer can be refined with Gurobi,
    with OR-Tools only it cannot."""
    net, region, _, _, dom = _setup(tmp_path, SEEDS[1])
    crown = Crown().bound(net, dom).intermediate
    cfg = SolverConfig()
    first = [n.inputs[0] for n in net.nodes if type(n.layer).__name__ == "ReLU"][0]
    assert bool(((crown[first][0] < 0) & (crown[first][1] > 0)).any())
    assert refinable(net, region.lower, region.upper, crown, cfg, dispatcher_for(cfg))
    assert not refinable(net, region.lower, region.upper, crown, cfg, Dispatcher("ortools"))


def _cfg(share: float) -> Config:
    return Config(verify=VerifyConfig(method="bab"), falsify=FalsifyConfig(enabled=False),
                  bab=BabConfig(input_split_threshold=0, relu_branching="widest"),
                  beta=BetaConfig(attack=False, milp_unstable=0, clause_milp_share=0.0, refine_share=share))


@needs_gurobi
@pytest.mark.parametrize("seed", range(100, 112))
def test_restart_with_refined_roots_keeps_the_verdict(tmp_path, monkeypatch, seed) -> None:
    """The first search is cut short right after its roots: the refined restart answers as the
    exact oracle does, and reports the refinement."""
    from tests.test_relu_split import random_instance as inst

    path, spec, sat = inst(tmp_path, seed)
    calls = {"n": 0}
    run = bab.relu_bab.Engine.run

    def cut_first(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise bab.root_refine.PhaseOver
        return run(self)

    monkeypatch.setattr(bab.relu_bab.Engine, "run", cut_first)
    res = bab.verify(path, spec, _cfg(0.5), timeout=60)
    assert res.status == (Status.SAT if sat else Status.UNSAT), seed
    assert calls["n"] == 2  # the first search was cut, the restart answered
    extra = res.stats.extra["bab"].extra
    assert extra["first_search"]["seconds"] > 0
    assert extra["milp_refine"] is not None


def test_no_restart_without_a_deadline_or_for_several_regions(tmp_path) -> None:
    """``refine_plan``: none without a deadline, for several regions, or with refine_share 0."""
    from types import SimpleNamespace

    from bab.api import Deadline

    path, spec, _ = random_instance(tmp_path, SEEDS[0])
    net = onnx_models.load(path)
    region = spec.regions[0]

    def pipe(seconds: float, share: float) -> SimpleNamespace:
        return SimpleNamespace(cfg=_cfg(share), deadline=Deadline(seconds), network=net, checkpoint=None)

    assert bab.root_refine.refine_plan(pipe(float("inf"), 0.5), [region]) is None
    assert bab.root_refine.refine_plan(pipe(60.0, 0.5), [region, region]) is None
    assert bab.root_refine.refine_plan(pipe(60.0, 0.0), [region]) is None
    plan = bab.root_refine.refine_plan(pipe(60.0, 0.5), [region])
    assert plan is not None and 0 < plan.after <= 0.2 * 60.0


def test_floors_are_rounded_outward_when_cast_to_float32() -> None:
    """A float64 bound cast to float32 never moves inside the interval."""
    from bab.root_refine import _outward

    vals = np.array([0.1, -0.3, 1 / 3, -2 / 3, 1e-9, 5.0])
    like = torch.zeros(1, 6, dtype=torch.float32)
    lo, hi = _outward(vals, like, -1), _outward(vals, like, 1)
    assert lo.shape == hi.shape == like.shape and lo.dtype == torch.float32
    assert np.all(lo.double().numpy().reshape(-1) <= vals) and np.all(hi.double().numpy().reshape(-1) >= vals)
    assert torch.equal(lo[0, 5], torch.tensor(5.0)) and torch.equal(hi[0, 5], torch.tensor(5.0))
