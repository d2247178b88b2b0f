"""Whole-clause MILPs beside ReLU-split BaB (bab/clause_milp.py, encoders/clause_search.py).

Oracle: the exact polygon enumeration of ``tests/test_relu_split.py`` on random 2-D networks.
The MILP is searched in slices with Gurobi (resumable); without a usable Gurobi the side
search must turn itself off and leave the verdicts to BaB.
"""

from __future__ import annotations

import numpy as np
import pytest

import bab
import bab.clause_milp
import onnx_models
from bab.config import BabConfig, BetaConfig, Config, FalsifyConfig, VerifyConfig
from bab.result import Status
from encoders.backends import Dispatcher
from encoders.decide import LeafSolver
from tests.test_relu_split import clause_feasible, linear_pieces, random_instance

SEEDS = range(100, 124)


def _gurobi_resumes() -> bool:
    from encoders.model import LinearModel
    import scipy.sparse as sp

    tiny = LinearModel(np.zeros(1), np.ones(1), np.zeros(1, bool), sp.csr_matrix((0, 1)), np.zeros(0),
                       np.zeros(0), np.ones(1), 0.0, np.arange(1), None)
    return Dispatcher().resumable(tiny, 1e-7) is not None


needs_gurobi = pytest.mark.skipif(not _gurobi_resumes(), reason="no usable Gurobi (the side MILP needs it)")


def _cfg(share: float, attack: bool = False) -> Config:
    return Config(verify=VerifyConfig(method="bab"), falsify=FalsifyConfig(enabled=False),
                  bab=BabConfig(input_split_threshold=0, relu_branching="widest"),
                  beta=BetaConfig(attack=attack, milp_unstable=0, clause_milp_share=share))


def _run(search, slice_s: float = 0.01):
    """Advance a clause search in short slices until it answers."""
    for _ in range(100_000):
        out = search.advance(slice_s)
        if out is not None:
            return out
    raise AssertionError("the clause search never answered")


@needs_gurobi
@pytest.mark.parametrize("seed", SEEDS)
def test_clause_search_in_slices_matches_the_oracle(tmp_path, seed) -> None:
    """Every clause's sliced MILP: infeasible exactly when the oracle finds no point; a
    feasible answer's point satisfies the clause in float64."""
    path, spec, _ = random_instance(tmp_path, seed)
    net = onnx_models.load(path)
    region = spec.regions[0]
    ws = [n.layer.weight.double().numpy() for n in net.nodes if hasattr(n.layer, "weight")]
    bs = [n.layer.bias.double().numpy() for n in net.nodes if hasattr(n.layer, "weight")]
    pieces = linear_pieces(ws, bs, region.lower, region.upper)
    solver = LeafSolver()
    for clause in region.clauses:
        search = solver.clause_search(net, region.lower, region.upper, clause.C, clause.d)
        if search is None:  # a linear network piece: nothing to search in slices
            continue
        out = _run(search)
        feasible = clause_feasible(pieces, clause.C, clause.d)
        assert out.status == ("feasible" if feasible else "infeasible"), (seed, out.reason)
        if feasible:
            y = net.forward(__import__("torch").as_tensor(out.x)[None].to(net.dtype))[0].double().numpy()
            assert np.all(clause.C @ y <= clause.d + 1e-4)


@needs_gurobi
def test_side_search_decides_clauses_inside_bab(tmp_path, monkeypatch) -> None:
    """With slices allowed at once, the side MILP closes clauses (their domains leave the
    store) and finds the sat points (replayed); every verdict agrees with the oracle."""
    monkeypatch.setattr(bab.clause_milp, "MIN_SLICE", 0.0)
    closed = found = 0
    for seed in SEEDS:
        path, spec, sat = random_instance(tmp_path, seed)
        res = bab.verify(path, spec, _cfg(0.9), timeout=60)
        assert res.status is (Status.SAT if sat else Status.UNSAT), (seed, res.reason)
        extra = res.stats.extra.get("bab")
        if extra is not None and extra.strategy == "relu-split":
            closed += extra.extra["clause_milp_closed"]
            found += sat and extra.extra["clause_milp_started"] > 0
        if sat:
            assert any(np.all(c.C @ res.counterexample.y <= c.d + 1e-5) for c in spec.regions[0].clauses)
    assert closed >= 3 and found >= 1


def test_side_search_turns_off_without_a_resumable_solver(tmp_path, monkeypatch) -> None:
    """No Gurobi (or a model over its licence): nothing is started and BaB decides alone."""
    monkeypatch.setattr(bab.clause_milp, "MIN_SLICE", 0.0)
    monkeypatch.setattr(Dispatcher, "resumable", lambda self, model, tol: None)
    for seed in list(SEEDS)[:8]:
        path, spec, sat = random_instance(tmp_path, seed)
        res = bab.verify(path, spec, _cfg(0.9), timeout=60)
        assert res.status is (Status.SAT if sat else Status.UNSAT), (seed, res.reason)
        extra = res.stats.extra.get("bab")
        if extra is not None and extra.strategy == "relu-split":
            assert extra.extra["clause_milp_started"] == 0


@needs_gurobi
def test_resumed_slices_reach_the_one_shot_answer(tmp_path) -> None:
    """A MILP advanced in 10 ms slices ends where one uninterrupted solve ends."""
    from encoders.encoding import encode
    from encoders.model import lower

    path, spec, _ = random_instance(tmp_path, 7)
    net = onnx_models.load(path)
    region = spec.regions[0]
    clause = region.clauses[0]
    model = lower(encode(net, region.lower, region.upper), "milp", clause.C, clause.d)
    disp = Dispatcher()
    once = disp.solve(model, 30.0, 1e-7)
    handle = disp.resumable(model, 1e-7)
    for _ in range(10_000):
        res = handle.advance(0.01)
        if res.status != "limit" and not (res.status == "feasible" and res.message == "stopped early"):
            break
    assert res.status == once.status
    if once.status == "optimal":
        assert res.value == pytest.approx(once.value, abs=1e-6)
    assert handle.seconds > 0


def test_clauses_take_turns_at_the_solver() -> None:
    """Hand-made store: clause 2 has the worst open domain, so it starts; it keeps the solver
    until it is STINT seconds ahead of the least-served clause; clauses BaB closed drop out."""
    import torch
    from types import SimpleNamespace

    from bab.clause_milp import STINT, ClauseMilpSide
    from bab.store import DomainStore, TensorBatch

    side = ClauseMilpSide(SimpleNamespace(stats={}), 0.5)
    store = DomainStore()
    store.push(TensorBatch({"root": torch.tensor([0, 0, 1, 2]), "priority": torch.tensor([-1.0, -3.0, -2.0, -5.0])}))
    assert side._pick(store) == 2
    side.searches = {2: SimpleNamespace(seconds=STINT - 0.1)}
    assert side._pick(store) == 2  # not yet STINT ahead of clauses 0 and 1 (0 s each)
    side.searches[2].seconds = STINT + 0.1
    assert side._pick(store) == 0  # unserved, and its worst domain (-3) is worse than clause 1's
    side.searches[0] = SimpleNamespace(seconds=STINT + 0.2)
    assert side._pick(store) == 1
    store.batch = store.batch.select(store.batch["root"] != 1)  # BaB closes clause 1
    side.searches[1] = SimpleNamespace(seconds=1.0)
    assert side._pick(store) in (0, 2) and 1 not in side.searches and 1 in side.finished
