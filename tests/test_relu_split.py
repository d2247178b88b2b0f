"""ReLU-split BaB with beta-CROWN: verdicts against an exact oracle, bound soundness and
tightness, branchers, leaves, memory caps, progress logging and the ``--branching`` flag.

The oracle enumerates the activation regions of a network on a 2-D input box exactly by
polygon clipping (every linear piece is a convex polygon; an affine function's minimum over a
polygon is at a vertex), so the properties are built with a known margin from the true minima.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import bab
from bab.bounding import Domains
from bab.bounding.polyhedra.alpha import AlphaCrown
from bab.bounding.polyhedra.beta import BetaCrown, BetaState
from bab.bounding.polyhedra.crown import Crown
from bab.config import BabConfig, BetaConfig, Config, FalsifyConfig, VerifyConfig
from bab.result import Status
from heuristics.relu import FSB, BaBSR, Widest, babsr_scores, get_relu_brancher
from tests.builders import mlp_onnx
from vnnlib.spec import Clause, Region, Spec

BRANCHERS = ("babsr", "fsb", "widest")


# --- the exact oracle -------------------------------------------------------------------------

def _clip(poly: np.ndarray, a: np.ndarray, b: float) -> np.ndarray:
    """The part of a convex polygon where ``a . x + b >= 0`` (Sutherland-Hodgman)."""
    out = []
    for i in range(len(poly)):
        p, q = poly[i], poly[(i + 1) % len(poly)]
        fp, fq = a @ p + b, a @ q + b
        if fp >= 0:
            out.append(p)
        if (fp >= 0) != (fq >= 0):
            out.append(p + fp / (fp - fq) * (q - p))
    return np.array(out).reshape(-1, 2)


def _area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(x @ np.roll(y, -1) - y @ np.roll(x, -1))


def linear_pieces(ws, bs, lo, hi) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every linear piece ``(polygon, A, a)`` of the network (``y = A x + a`` on the polygon)."""
    box = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]], float)
    pieces = [(box, np.eye(2), np.zeros(2))]
    for W, b in zip(ws[:-1], bs[:-1]):
        nxt = []
        for poly, G, g in pieces:
            P, q = W @ G, W @ g + b
            parts = [(poly, np.zeros(len(b)))]
            for j in range(len(b)):
                parts = [(c, np.where(np.arange(len(b)) == j, s, m)) for poly_, m in parts
                         for s, c in ((1.0, _clip(poly_, P[j], q[j])), (0.0, _clip(poly_, -P[j], -q[j])))
                         if _area(c) > 1e-14]
            nxt += [(poly_, m[:, None] * P, m * q) for poly_, m in parts]
        pieces = nxt
    return [(poly, ws[-1] @ G, ws[-1] @ g + bs[-1]) for poly, G, g in pieces]


def exact_min(pieces, row: np.ndarray) -> float:
    """``min row . f(x)`` over the box."""
    return min(float((poly @ (row @ A) + row @ a).min()) for poly, A, a in pieces)


def clause_feasible(pieces, C: np.ndarray, d: np.ndarray) -> bool:
    """Is there a point with ``C f(x) <= d`` (every row)?"""
    for poly, A, a in pieces:
        for r in range(len(d)):
            poly = _clip(poly, -(C[r] @ A), d[r] - C[r] @ a)
            if len(poly) == 0:
                break
        if len(poly):
            return True
    return False


def random_instance(tmp: Path, seed: int):
    """A random 2-D net (2-3 hidden layers of 3-8 ReLUs), a property and its true verdict."""
    rng = np.random.default_rng(seed)
    sizes = [2] + list(rng.integers(3, 9, size=int(rng.integers(2, 4)))) + [3]
    ws = [rng.normal(0, 1.2 / np.sqrt(a), (b, a)) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(0, 0.4, b) for b in sizes[1:]]
    path = mlp_onnx(tmp / f"net{seed}.onnx", [w.astype(np.float32) for w in ws], [b.astype(np.float32) for b in bs])
    ws = [w.astype(np.float32).astype(np.float64) for w in ws]
    bs = [b.astype(np.float32).astype(np.float64) for b in bs]
    lo, hi = -rng.uniform(0.3, 1.0, 2), rng.uniform(0.3, 1.0, 2)
    pieces = linear_pieces(ws, bs, lo, hi)
    want_sat = bool(rng.random() < 0.4)
    clauses = []
    for k in range(int(rng.integers(1, 4))):
        row = rng.normal(size=3)
        m = exact_min(pieces, row)
        gap = rng.uniform(0.001, 0.03) * (1 + abs(m))
        d = m + gap if (want_sat and k == 0) else m - gap
        clauses.append(Clause(row[None], np.array([d])))
    if rng.random() < 0.35:  # a two-row clause whose verdict the oracle decides by clipping
        C = rng.normal(size=(2, 3))
        d = np.array([exact_min(pieces, C[0]), exact_min(pieces, C[1])]) + rng.uniform(0.0, 0.4, 2)
        near = [clause_feasible(pieces, C, d + e) for e in (-0.01, 0.01)]
        if near[0] == near[1] and (near[0] is False or want_sat):
            clauses.append(Clause(C, d))
    sat = any(clause_feasible(pieces, c.C, c.d) for c in clauses)
    spec = Spec((Region(lo, hi, tuple(clauses)),), 2, 3)
    return path, spec, sat


def _cfg(branching: str = "fsb", attack: bool = True, milp_unstable: int = 0, **bab_kw) -> Config:
    """Forced ReLU-split BaB without the attack phase (the search must decide alone; without
    ``attack`` also without candidates from the bounds, so sat answers come from the leaves).
    MILP on partly split domains is off unless ``milp_unstable`` says otherwise."""
    return Config(verify=VerifyConfig(method="bab"), falsify=FalsifyConfig(enabled=False),
                  bab=BabConfig(input_split_threshold=0, relu_branching=branching, **bab_kw),
                  beta=BetaConfig(attack=attack, milp_unstable=milp_unstable))


@pytest.mark.parametrize("seed", range(30))
def test_verdict_matches_exact_enumeration(tmp_path, seed) -> None:
    path, spec, sat = random_instance(tmp_path, seed)
    res = bab.verify(path, spec, _cfg(BRANCHERS[seed % 3], attack=seed % 2 == 0), timeout=60)
    assert res.status is (Status.SAT if sat else Status.UNSAT), (seed, res.reason)
    assert res.stats.extra["strategy"] == "relu-split"
    if sat:
        clause_ok = [np.all(c.C @ res.counterexample.y <= c.d + 1e-5) for c in spec.regions[0].clauses]
        assert any(clause_ok)


def test_partly_split_domains_go_to_milp(tmp_path) -> None:
    """With a generous ``milp_unstable`` open roots go to MILP at once; verdicts stay exact."""
    used = 0
    for seed in range(30, 38):
        path, spec, sat = random_instance(tmp_path, seed)
        res = bab.verify(path, spec, _cfg("babsr", attack=False, milp_unstable=1000), timeout=60)
        assert res.status is (Status.SAT if sat else Status.UNSAT), (seed, res.reason)
        stats = res.stats.extra["bab"]
        used += stats.extra["milp_leaves"] > 0
        if not sat and stats.extra["milp_leaves"]:
            assert stats.leaves_closed >= 1
    assert used >= 4  # the others were refuted by the root bound alone


# --- beta-CROWN -------------------------------------------------------------------------------

def _tiny_net(tmp: Path, seed: int, sizes=(3, 8, 8, 2)):
    import onnx_models

    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 1.0 / np.sqrt(a), (b, a)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(0, 0.3, b).astype(np.float32) for b in sizes[1:]]
    return onnx_models.load(mlp_onnx(tmp / f"t{seed}.onnx", ws, bs))


def _split_domains(net, n: int, seed: int):
    """``n`` copies of one box with random phases fixed on unstable first-layer neurons."""
    g = torch.Generator().manual_seed(seed)
    lo = -torch.ones(1, net.n_inputs)
    hi = torch.ones(1, net.n_inputs)
    C = torch.eye(net.n_outputs)[None]
    base = Crown().bound(net, Domains(lo, hi, C))
    l1, h1 = base.intermediate[0]
    unstable = ((l1 < 0) & (h1 > 0))[0].nonzero().flatten()
    phases = torch.zeros(n, l1.shape[1], dtype=torch.int8)
    for i in range(n):
        pick = unstable[torch.randperm(len(unstable), generator=g)[:2]]
        phases[i, pick] = torch.where(torch.rand(len(pick), generator=g) < 0.5, 1, -1).to(torch.int8)
    return Domains(lo.repeat(n, 1), hi.repeat(n, 1), C.repeat(n, 1, 1), {1: phases})


@pytest.mark.parametrize("seed", range(4))
def test_beta_bounds_contain_consistent_samples(tmp_path, seed) -> None:
    net = _tiny_net(tmp_path, seed)
    dom = _split_domains(net, 6, seed)
    res = BetaCrown(iterations=30).run(net, dom, BetaState(refine=None))
    x = torch.rand(40000, net.n_inputs) * 2 - 1
    with torch.no_grad():
        vals = net.forward_all(x)
    z, y = vals[0], vals[-1]
    for i in range(dom.size):
        ph = dom.phases[1][i]
        ok = ((ph > 0) & (z < 0) | (ph < 0) & (z > 0)).sum(1) == 0
        if res.infeasible[i]:
            assert not bool(ok.any())
            continue
        if bool(ok.any()):
            assert bool((res.lower[i] <= y[ok].min(0).values + 1e-5).all()), (seed, i)


@pytest.mark.parametrize("seed", range(4))
def test_beta_at_least_alpha_and_crown_on_split_domains(tmp_path, seed) -> None:
    net = _tiny_net(tmp_path, seed + 10, sizes=(4, 10, 10, 3))
    dom = _split_domains(net, 8, seed)
    crown = Crown(upper=False).bound(net, dom).lower
    alpha = AlphaCrown(iterations=40, upper=False).bound(net, dom).lower
    beta = BetaCrown(iterations=40).run(net, dom, BetaState(refine=None))
    keep = ~beta.infeasible
    assert bool((beta.lower[keep] >= crown[keep] - 1e-5).all())
    assert float(beta.lower[keep].mean()) >= float(alpha[keep].mean()) - 1e-4


def test_contradictory_phase_is_infeasible(tmp_path) -> None:
    net = _tiny_net(tmp_path, 3)
    lo, hi, C = -0.01 * torch.ones(1, 3), 0.01 * torch.ones(1, 3), torch.eye(2)[None]
    l1, _ = Crown().bound(net, Domains(lo, hi, C)).intermediate[0]
    stable_on = ((l1 > 1e-3)[0]).nonzero().flatten()
    assert len(stable_on), "the test net needs an always-active neuron near 0"
    ph = torch.zeros(1, 8, dtype=torch.int8)
    ph[0, stable_on[0]] = -1
    res = BetaCrown().run(net, Domains(lo, hi, C, {1: ph}), BetaState())
    assert bool(res.infeasible[0]) and bool(torch.isinf(res.lower[0]).all())


# --- branchers --------------------------------------------------------------------------------

class _FakeProblem:
    """Branch data of two domains over one ReLU of four neurons."""

    def __init__(self) -> None:
        self.calls = 0

    def branch_data(self, batch):
        lo = torch.tensor([[-1.0, -2.0, 0.5, -1.0], [-1.0, -0.1, -3.0, -1.0]])
        hi = torch.tensor([[1.0, 2.0, 1.0, 3.0], [0.1, 0.1, 3.0, 1.0]])
        free = torch.tensor([[True, True, False, False], [True, True, True, True]])
        lA = torch.tensor([[-1.0, -1.0, -5.0, -9.0], [-1.0, -1.0, -1.0, 0.0]])
        return [{"relu": 1, "lo": lo, "hi": hi, "unstable": free, "lA": lA, "bias": None}]

    def try_splits(self, batch, cand):
        self.calls += 1
        # pretend splitting neuron 0 is best for every domain
        return torch.where(cand == 0, 1.0, -1.0)[:, :, None].expand(*cand.shape, 2)


def test_branchers_choose_free_unstable_neurons() -> None:
    p = _FakeProblem()
    # babsr: intercept term |lA| * (-l) u / (u - l): domain 0 -> neuron 1 (2*2/4*1 = 1 > 0.5)
    assert BaBSR().choose(p, None).tolist()[0] == 1
    # neurons 2, 3 of domain 0 are not free (fixed / stable): never chosen despite large scores
    assert babsr_scores(p.branch_data(None))[0, 2:].isinf().all()
    assert Widest().choose(p, None).tolist() == [1, 2]
    assert FSB(k=2).choose(p, None).tolist() == [0, 0] and p.calls == 1
    assert get_relu_brancher("fsb", k=5).k == 5
    with pytest.raises(ValueError):
        get_relu_brancher("nope")


# --- leaves -----------------------------------------------------------------------------------

def _abs_instance(tmp: Path, d: float):
    """``y = relu(x) + relu(-x) = |x|`` on ``[-1, 1]`` with the clause ``y <= d``: only exact
    reasoning at the fully split leaves decides it (d = -2e-6: unsat by 2e-6; d = 1e-4: sat only
    near 0, out of reach of the corner and PGD candidates)."""
    path = mlp_onnx(tmp / "abs.onnx", [np.array([[1.0], [-1.0]]), np.array([[1.0, 1.0]])], [np.zeros(2), np.zeros(1)])
    spec = Spec((Region(np.array([-1.0]), np.array([1.0]), (Clause(np.array([[1.0]]), np.array([d])),)),), 1, 1)
    return path, spec


@pytest.mark.parametrize("d, expect", [(-2e-6, Status.UNSAT), (1e-4, Status.SAT)])
def test_leaves_decided_by_the_leaf_solver(tmp_path, d, expect) -> None:
    pytest.importorskip("encoders.decide")
    path, spec = _abs_instance(tmp_path, d)
    res = bab.verify(path, spec, _cfg("babsr"), timeout=60)
    assert res.status is expect, res.reason
    stats = res.stats.extra["bab"]
    assert stats.max_depth == 2
    assert stats.extra["lp_leaves"] >= 1  # the fully split domains went to the exact LP
    assert stats.extra["milp_leaves"] == 0


def test_leaves_without_solver_are_unknown(tmp_path, monkeypatch) -> None:
    import bab.relu_bab as rb

    monkeypatch.setattr(rb, "make_leaf_solver", lambda cfg: None)
    path, spec = _abs_instance(tmp_path, -2e-6)
    res = bab.verify(path, spec, _cfg("babsr"), timeout=60)
    assert res.status is Status.UNKNOWN and "leaf" in res.reason
    assert res.stats.extra["bab"].unknown_leaf > 0


# --- engine wiring ----------------------------------------------------------------------------

def test_memory_budget_caps_the_store(tmp_path) -> None:
    path, spec, _ = random_instance(tmp_path, 3)
    res = bab.verify(path, spec, _cfg("babsr", memory_budget_mb=0, relu_batch_size=1), timeout=60)
    stats = res.stats.extra["bab"]
    assert stats.extra["batch_size"] == 1 and stats.extra["max_domains"] == 1
    if res.status is Status.UNKNOWN:
        assert "open domains" in res.reason


def test_progress_is_logged(tmp_path, caplog) -> None:
    path, spec, _ = random_instance(tmp_path, 5)
    import bab.relu_bab as rb

    with caplog.at_level(logging.INFO, logger="bab.relu_split"):
        rb_progress = rb.progress_logger
        rb.progress_logger = lambda problem, start, every=1.0, also=None: rb_progress(problem, start, 0.0, also)
        try:
            res = bab.verify(path, spec, _cfg("fsb"), timeout=60)
        finally:
            rb.progress_logger = rb_progress
    if res.stats.extra["bab"].iterations:
        assert any("domains left" in r.getMessage() for r in caplog.records)


def test_branching_flag_maps_to_config() -> None:
    from bab.cli import build_parser
    from bab.commands.common import config_from_args

    args = build_parser().parse_args(["verify", "m.onnx", "p.vnnlib", "--branching", "babsr"])
    assert config_from_args(args).bab.relu_branching == "babsr"
    args = build_parser().parse_args(["verify", "m.onnx", "p.vnnlib"])
    assert config_from_args(args).bab.relu_branching == BabConfig().relu_branching
