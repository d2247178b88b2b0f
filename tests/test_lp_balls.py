"""ℓp input balls: exact hand values, soundness of every bounder against samples and PGD,
refusals naming the set, ball geometry, LP/MILP encodings, and complete-verdict agreement
(MILP vs both BaB strategies) on 30 tiny networks with ℓ1 balls."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import bab
from bab.bounding import BOUNDERS, BounderRefusal, Domains, UnsupportedLayerError, check_input_set, get_bounder
from bab.bounding.balls import distance_to_box, misses_ball, project, sample
from bab.config import BabConfig, Config, FalsifyConfig, SolverConfig, VerifyConfig
from bab.result import Status
from onnx_models import layers as L
from tests.builders import mlp_onnx
from tests.test_encoders_diff import _forward
from tests.irnets import chain, random_mlp, small_cnn
from vnnlib.spec import Ball, Clause, Region, Spec

torch.set_num_threads(1)
NAMES = {"2": "ℓ2 ball", "1": "ℓ1 ball"}
SLOW_BOUNDERS = {"sdp", "lmi"}  # cvxpy solves; they refuse balls before solving anyway


# --- the input set --------------------------------------------------------------------------

def test_region_with_ball_is_the_hull_and_contains_checks_the_ball() -> None:
    ball = Ball(np.array([0.5, 0.9]), 0.3, "l2")
    reg = Region.with_ball(ball, (), np.zeros(2), np.ones(2))
    assert ball.p == "2"
    assert np.allclose(reg.lower, [0.2, 0.6]) and np.allclose(reg.upper, [0.8, 1.0])
    assert reg.contains([0.7, 0.9]) and not reg.contains([0.75, 0.65])  # a hull corner: outside
    assert reg.contains([0.5, 0.9 + 1e-7 + 0.0], tol=0.0)
    assert not reg.contains([0.5 + 0.3 + 1e-5, 0.9]) and reg.contains([0.5 + 0.3 + 1e-7, 0.9], tol=1e-6)
    with pytest.raises(ValueError):
        Ball(np.zeros(2), 1.0, "3")
    with pytest.raises(ValueError):
        Ball(np.array([2.0, 0.0]), 1.0, "2").hull(np.zeros(2), np.ones(2))  # centre outside the box


def test_check_input_set_refuses_by_name_and_defaults_to_boxes() -> None:
    class BoxOnly:
        name = "boxy"

    dom = Domains(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 1, 1),
                  center=torch.full((1, 2), 0.5), eps=torch.tensor([0.1]), p="2")
    with pytest.raises(BounderRefusal, match="boxy cannot handle an ℓ2 ball"):
        check_input_set(BoxOnly(), dom)
    assert check_input_set(BoxOnly(), "inf") == "exact" and check_input_set(BoxOnly(), "box") == "exact"
    assert check_input_set(get_bounder("ibp"), dom) == "hull"
    assert check_input_set(get_bounder("crown"), dom) == "exact"


def _lin_net() -> object:
    return chain([L.Linear(torch.tensor([[3.0, 4.0]]), torch.tensor([1.0]))], (2,))


@pytest.mark.parametrize("p,expected", [("2", 1.0 - 5.0), ("1", 1.0 - 4.0)])
@pytest.mark.parametrize("method", ["crown", "deeppoly", "fastlin", "alpha-crown", "symbolic", "crown-fwd", "wk"])
def test_hand_value_of_a_linear_map(method: str, p: str, expected: float) -> None:
    """min of 3x + 4y + 1 over the unit ball around 0 (box [-1, 1]^2: -6 for the box):
    -5 for ℓ2 (ε‖a‖_2), -3 for ℓ1 (ε‖a‖_∞)."""
    dom = Domains(-torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 1, 1),
                  center=torch.zeros(1, 2), eps=torch.tensor([1.0]), p=p)
    lb = float(get_bounder(method).bound(_lin_net(), dom).lower[0, 0])
    assert lb == pytest.approx(expected, abs=1e-5)


# --- geometry ------------------------------------------------------------------------------

def test_projection_hand_values() -> None:
    c, e = torch.zeros(1, 2), torch.tensor([1.0])
    assert torch.allclose(project(torch.tensor([[3.0, 0.0]]), c, e, "1"), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(project(torch.tensor([[1.0, 1.0]]), c, e, "1"), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(project(torch.tensor([[3.0, 4.0]]), c, e, "2"), torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(project(torch.tensor([[0.2, 0.3]]), c, e, "1"), torch.tensor([[0.2, 0.3]]))


@pytest.mark.parametrize("p", ["2", "1", "inf"])
def test_samples_and_projections_stay_in_ball_and_box(p: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.1, 0.5, 0.9, 0.5, 0.0], dtype=torch.float64)
    eps, lo, hi = 0.4, torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    order = math.inf if p == "inf" else float(p)
    xs = torch.minimum(torch.maximum(sample(x0, eps, p, 500, g), lo), hi)
    far = x0 + 3 * torch.randn(500, 5, generator=g, dtype=torch.float64)
    proj = project(far, x0[None], torch.tensor([eps], dtype=torch.float64), p, lo, hi)
    for pts in (xs, proj):
        assert bool((torch.linalg.vector_norm(pts - x0, order, dim=1) <= eps + 1e-9).all())
        assert bool(((pts >= lo) & (pts <= hi)).all())


def test_boxes_missing_the_ball() -> None:
    c, e = torch.zeros(1, 2), torch.tensor([1.0])
    lo, hi = torch.tensor([[0.8, 0.8]]), torch.tensor([[2.0, 2.0]])
    assert float(distance_to_box(c, lo, hi, "2")[0]) == pytest.approx(0.8 * math.sqrt(2))
    assert bool(misses_ball(c, e, lo, hi, "2")[0]) and not bool(misses_ball(c, e, lo, hi, "inf")[0])
    assert bool(misses_ball(c, e, lo, hi, "1")[0])
    assert not bool(misses_ball(c, e, torch.tensor([[0.5, 0.5]]), hi, "1")[0])  # touches: (0.5, 0.5)


# --- soundness of every bounder ------------------------------------------------------------

def _nets() -> list:
    return [random_mlp([5, 12, 10, 3], seed=1), random_mlp([6, 10, 10, 10, 4], seed=2), small_cnn(0)]


def _pgd_min(net, C: torch.Tensor, x0, eps, p, lo, hi, steps: int = 40) -> torch.Tensor:
    """Per row: the smallest value of ``C f(x)`` PGD finds in ``ball ∩ box``."""
    M = C.shape[0]
    g = torch.Generator().manual_seed(1)
    x = project(sample(x0, eps, p, 8 * M, g), x0[None], torch.tensor([eps]), p, lo, hi)
    rows = torch.arange(M).repeat(8)
    step = 0.2 * eps
    for it in range(steps):
        x = x.detach().requires_grad_(True)
        vals = (net.forward(x) * C[rows]).sum(1)
        grad, = torch.autograd.grad(vals.sum(), x)
        with torch.no_grad():
            d = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12) if p != "inf" else grad.sign()
            x = project(x - step * d, x0[None], torch.tensor([eps]), p, lo, hi)
        if it % 10 == 9:
            step /= 2
    with torch.no_grad():
        vals = (net.forward(x) * C[rows]).sum(1)
    return torch.stack([vals[rows == m].min() for m in range(M)])


@pytest.mark.parametrize("p,eps", [("2", 0.35), ("1", 0.6)])
@pytest.mark.parametrize("net_idx", [0, 1, 2])
def test_every_bounder_is_sound_on_balls_or_refuses_naming_the_set(net_idx: int, p: str, eps: float) -> None:
    net = _nets()[net_idx]
    n = net.n_inputs
    g = torch.Generator().manual_seed(net_idx)
    x0 = 0.2 + 0.6 * torch.rand(n, generator=g)
    lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    C = torch.randn(3, net.n_outputs, generator=g)
    dom = Domains(lo[None], hi[None], C[None], center=x0[None], eps=torch.tensor([eps]), p=p)
    box = Domains(lo[None], hi[None], C[None])
    xs = project(sample(x0, eps, p, 4000, g), x0[None], torch.tensor([eps]), p, lo, hi)
    pgd = _pgd_min(net, C, x0, eps, p, lo, hi)
    with torch.no_grad():
        observed = torch.minimum((net.forward(xs) @ C.T).min(0).values, pgd)
    accepted = 0
    for name in BOUNDERS:
        bounder = get_bounder(name)
        try:
            how = check_input_set(bounder, dom)
        except BounderRefusal as exc:
            assert NAMES[p] in str(exc) and name in str(exc)
            continue
        if name in SLOW_BOUNDERS:
            continue
        try:
            lb = bounder.bound(net, dom).lower[0].detach().double()
        except (UnsupportedLayerError, BounderRefusal):
            continue  # a layer or size this method's paper does not cover
        accepted += 1
        slack = 1e-4 * (1 + observed.abs().double())
        assert bool((lb <= observed.double() + slack).all()), (name, how, lb, observed)
        if how == "exact" and name in ("crown", "deeppoly", "fastlin", "crown-fwd", "symbolic", "wk"):
            lb_box = bounder.bound(net, box).lower[0].detach().double()
            assert bool((lb >= lb_box - 1e-5).all()), name  # the ball never loosens the bound
    assert accepted >= 6


def _onnx_case(tmp_path, seed: int = 0):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 0.7, (8, 4)), rng.normal(0, 0.5, (3, 8))]
    bs = [rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 3)]
    return mlp_onnx(tmp_path / f"m{seed}.onnx", ws, bs)


def _ball_spec(ball: Ball, n_out: int, label: int, lo=0.0, hi=1.0) -> Spec:
    from bab.radius_api import robustness_spec

    n = ball.center.size
    return robustness_spec(ball, label, n_out, np.full(n, lo), np.full(n, hi))


def _cfg(method: str, backend: str = "auto", falsify: bool = False, threshold: int | None = None) -> Config:
    bab_cfg = BabConfig() if threshold is None else BabConfig(input_split_threshold=threshold)
    return Config(verify=VerifyConfig(method=method, timeout=60), falsify=FalsifyConfig(enabled=falsify),
                  solver=SolverConfig(backend=backend), bab=bab_cfg)


@pytest.mark.parametrize("method", ["zonotope", "refinezono", "sdp"])
def test_box_only_methods_answer_unknown_naming_the_set(tmp_path, method: str) -> None:
    path = _onnx_case(tmp_path)
    spec = _ball_spec(Ball(np.full(4, 0.5), 0.05, "2"), 3, 0)
    res = bab.verify(path, spec, _cfg(method))
    assert res.status is Status.UNKNOWN and "ℓ2 ball" in res.reason


def test_ai2_input_split_with_a_box_only_bounder_refuses(tmp_path) -> None:
    res = bab.verify(_onnx_case(tmp_path), _ball_spec(Ball(np.full(4, 0.5), 0.05, "1"), 3, 0), _cfg("ai2"))
    assert res.status is Status.UNKNOWN and "ℓ1 ball" in res.reason


def test_l2_needs_a_cone_ortools_and_z3_say_so(tmp_path) -> None:
    path = _onnx_case(tmp_path)
    spec = _ball_spec(Ball(np.full(4, 0.5), 0.3, "2"), 3, 0)
    res = bab.verify(path, spec, _cfg("milp", backend="ortools"))
    assert res.status is Status.UNKNOWN and "second-order cone" in res.reason
    assert "ℓ2 ball" in bab.verify(path, spec, _cfg("smt")).reason


def test_l2_milp_with_gurobi_agrees_with_bab(tmp_path) -> None:
    from encoders.backends import Dispatcher

    if Dispatcher("gurobi").gurobi() is None:
        pytest.skip("gurobipy not available")
    path = _onnx_case(tmp_path, 1)
    for eps in (0.02, 0.6):
        spec = _ball_spec(Ball(np.full(4, 0.5), eps, "2"), 3, _label(path))
        a = bab.verify(path, spec, _cfg("milp", backend="gurobi")).status
        b = bab.verify(path, spec, _cfg("bab")).status
        assert a == b and a in (Status.SAT, Status.UNSAT), (eps, a, b)


def _label(path) -> int:
    import onnx_models

    net = onnx_models.load(path)
    return int(net.forward(torch.full((1, net.n_inputs), 0.5))[0].argmax())


def test_falsifier_and_replay_keep_to_the_ball(tmp_path) -> None:
    from bab.falsify import Falsifier
    from bab.replay import Replayer
    from onnx_models import OnnxReference, load

    path = _onnx_case(tmp_path, 2)
    ball = Ball(np.full(4, 0.5), 0.4, "1")
    region = _ball_spec(ball, 3, _label(path)).regions[0]
    net = load(path)
    fal = Falsifier(net, FalsifyConfig(random_samples=300, pgd_restarts=4, pgd_steps=10))
    _, ordered = fal.random_phase(0, region)
    assert all(ball.contains(x.numpy(), 1e-6) for x in ordered)
    for cand in fal.pgd_phase(0, region, ordered):
        assert region.contains(cand.x, 1e-6)
    rep = Replayer(OnnxReference(str(path)), (region,), "float32")
    x = np.full(4, 0.5)
    x[0] += 0.4  # on the ℓ1 sphere: rounding to float32 must not leave the ball
    cex = rep.check(x, 0)
    assert cex is None or ball.contains(cex.x, 1e-6)


# --- complete verdicts agree on ℓ1 balls ----------------------------------------------------

N_CASES = 30


def _l1_case(seed: int):
    """A tiny random network, an ℓ1 ball in a box and a row ``C y <= d`` with ``d`` from
    samples of the ball (sat and unsat both occur)."""
    rng = np.random.default_rng(5000 + seed)
    while True:
        n_in, n_out = int(rng.integers(2, 5)), int(rng.integers(2, 4))
        sizes = [n_in, *[int(rng.integers(2, 7)) for _ in range(int(rng.integers(1, 3)))], n_out]
        ws = [rng.normal(0, 1 / np.sqrt(a), (b, a)).astype(np.float32) for a, b in itertools.pairwise(sizes)]
        bs = [rng.normal(0, 0.3, b).astype(np.float32) for b in sizes[1:]]
        x0 = rng.uniform(-0.5, 0.5, n_in)
        ball = Ball(x0, float(rng.uniform(0.2, 1.2)), "1")
        lo, hi = x0 - rng.uniform(0.1, 1.0, n_in), x0 + rng.uniform(0.1, 1.0, n_in)
        xs = project(sample(torch.as_tensor(x0), ball.eps, "1", 4000, torch.Generator().manual_seed(seed)),
                     torch.as_tensor(x0)[None], torch.tensor([ball.eps], dtype=torch.float64), "1",
                     torch.as_tensor(lo), torch.as_tensor(hi)).numpy()
        C = rng.normal(0, 1, (1, n_out))
        vals = (_forward(ws, bs, xs) @ C.T)[:, 0]
        if vals.max() - vals.min() < 1e-2:
            continue
        d = np.quantile(vals, 0.02) + rng.choice([-0.2, -0.05, 0.05, 0.3]) * (vals.max() - vals.min())
        return ws, bs, Region.with_ball(ball, (Clause(C, np.array([d])),), lo, hi), bool(vals.min() <= d)


def test_l1_complete_verdicts_agree_on_30_tiny_networks(tmp_path) -> None:
    counts = {"sat": 0, "unsat": 0}
    for seed in range(N_CASES):
        ws, bs, region, sample_sat = _l1_case(seed)
        path = mlp_onnx(tmp_path / f"c{seed}.onnx", ws, bs)
        spec = Spec((region,), region.lower.size, ws[-1].shape[0])
        got = {
            "milp": bab.verify(path, spec, _cfg("milp")).status,
            "milp-ortools": bab.verify(path, spec, _cfg("milp", backend="ortools")).status,
            "input-split": bab.verify(path, spec, _cfg("input-split")).status,
            "relu-split": bab.verify(path, spec, _cfg("bab", threshold=0)).status,
        }
        assert len(set(got.values())) == 1, (seed, got)
        verdict = next(iter(got.values()))
        assert verdict in (Status.SAT, Status.UNSAT), (seed, got)
        if sample_sat:
            assert verdict is Status.SAT, seed
        counts[verdict.value] += 1
    assert counts["sat"] >= 3 and counts["unsat"] >= 3, counts


# --- bab compare / bab.certify accept l2 and l1 ---------------------------------------------

def test_certify_and_compare_accept_l2_and_l1(tmp_path) -> None:
    from bab.compare.api import certify
    from bab.compare.data import CompareInputError

    path = _onnx_case(tmp_path, 3)
    label = _label(path)
    x = np.full(4, 0.5)
    small = certify(path, x, label, eps=1e-3, norm="2", method="crown", clip=(0.0, 1.0), falsify=False)
    assert small.certified
    zono = certify(path, x, label, eps=1e-3, norm="1", method="zonotope", clip=(0.0, 1.0), falsify=False)
    assert not zono.certified and "ℓ1 ball" in zono.reason
    with pytest.raises(CompareInputError):
        certify(path, x, label, eps=0.1, norm="3")
    res = bab.compare([path], (np.stack([x, x]), np.array([label, label])), eps=1e-3, norm="2",
                      methods="crown,zonotope", limit=2, timeout=20)
    assert res.settings["norm"] == "2"
    assert res.cell(path.stem, "crown").certified == 2
    zcell = res.cell(path.stem, "zonotope")  # n/a with the refusal as its reason
    assert zcell.certified is None and "ℓ2 ball" in zcell.reason
