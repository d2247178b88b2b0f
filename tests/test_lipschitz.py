"""The Lipschitz family (lipschitz-opnorm, fastlip, recurjac) and the Lipschitz API.

Oracles: gradient norms sampled in the ``ℓp`` ball (every constant must dominate them), dense
samples plus PGD points in boxes (every bound must contain them), hand-computable networks
(exact values), and the orders theory guarantees (recurjac <= fastlip by construction;
fastlip <= opnorm in ``ℓ∞`` and ``ℓ1`` for MLPs, see docs/lipschitz.md).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bab.bounding import Domains, get_bounder
from bab.bounding.lipschitz import (BisectStep, Norm, certified_radius, lipschitz_constant,
                                    margin_constants)
from bab.bounding.lipschitz.jacobian import activation_slopes, build_problem
from bab.bounding.lipschitz.fastlip import FastLip, crown_intermediate
from bab.bounding.lipschitz.recurjac import RecurJac
from onnx_models import layers as L
from tests.builders import mlp_onnx, robustness_output, run_bab, write_property
from tests.irnets import chain, hand_221, random_mlp, small_cnn
from tests.test_bounding_crown import dag, residual_net, zoo_cnn

METHODS = ["lipschitz-opnorm", "fastlip", "recurjac"]
LOCAL = ["fastlip", "recurjac"]
NORMS = ["inf", 2, 1]


def _f64(net):
    return copy.deepcopy(net).to(dtype=torch.float64)


def _ball(x0: torch.Tensor, eps: float, norm, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points of the ``ℓp`` ball (interior and boundary) around ``x0`` (float64)."""
    d = x0.numel()
    p = Norm.parse(norm)
    if p is Norm.LINF:
        u = 2 * torch.rand(n, d, generator=gen, dtype=torch.float64) - 1
        u[: n // 4] = u[: n // 4].sign()  # vertices
    else:
        u = torch.randn(n, d, generator=gen, dtype=torch.float64)
        if p is Norm.L1:
            u = u.sign() * torch.empty_like(u).exponential_(generator=gen)
        u = u / torch.linalg.vector_norm(u, p.p, -1, keepdim=True)
        u = u * torch.rand(n, 1, generator=gen, dtype=torch.float64) ** (1 / d)
    return x0 + eps * u


def _grad_norms(net64, c: torch.Tensor, x: torch.Tensor, q: float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    g, = torch.autograd.grad((net64.forward(x) @ c).sum(), x)
    return torch.linalg.vector_norm(g, q, -1)


def _nets20() -> list:
    out = []
    for s in range(20):
        rng = np.random.default_rng(s)
        n_in, width, depth = int(rng.integers(2, 7)), int(rng.integers(6, 17)), int(rng.integers(1, 4))
        out.append(random_mlp([n_in] + [width] * depth + [3], seed=100 + s))
    return out


# --------------------------------------------------------------------------- constants


def test_constants_dominate_sampled_gradients(record_property) -> None:
    """20 random ReLU networks x 3 norms: every constant >= the largest sampled gradient norm
    (10,000 points of the ball); recurjac <= fastlip; fastlip <= opnorm in ℓ∞ and ℓ1 (theory),
    and the ℓ2 count of fastlip <= opnorm is recorded."""
    gen = torch.Generator().manual_seed(0)
    l2_count, local_hits = 0, 0
    for k, net in enumerate(_nets20()):
        net64 = _f64(net)
        x0 = torch.rand(net.n_inputs, generator=gen, dtype=torch.float64)
        c = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
        eps = 0.05 + 0.25 * k / 20
        for norm in NORMS:
            nrm = Norm.parse(norm)
            seen = float(_grad_norms(net64, c, _ball(x0, eps, norm, 10_000, gen), nrm.q).max())
            L_ = {m: lipschitz_constant(net, c, x0, eps, norm, m) for m in METHODS}
            for m, v in L_.items():
                assert v >= seen * (1 - 1e-9), f"net {k} {norm} {m}: {v} < observed {seen}"
            assert L_["recurjac"] <= L_["fastlip"] * (1 + 1e-9) + 1e-12
            local_hits += L_["recurjac"] < L_["fastlip"] * (1 - 1e-6)
            if nrm is Norm.L2:
                l2_count += L_["fastlip"] <= L_["lipschitz-opnorm"]
            else:
                assert L_["fastlip"] <= L_["lipschitz-opnorm"] * (1 + 1e-9), f"net {k} {norm}"
    record_property("fastlip_le_opnorm_l2", f"{l2_count}/20")
    print(f"fastlip <= opnorm in l2 on {l2_count}/20 networks; recurjac < fastlip in {local_hits}/60 cases")
    assert local_hits > 0  # the recursion does tighten somewhere


def test_hand_network_exact_constants() -> None:
    """f = relu(x1+x2) + relu(x1-x2): op-norm L = ‖[1,1] W1‖_q-ish by hand; on a box where
    both neurons are active the gradient is exactly (2, 0)."""
    net = hand_221()
    x0 = torch.tensor([1.5, 0.0])
    expect = {"inf": 4.0, 2: 2.0, 1: 2.0}  # ‖c'‖_q ‖W1‖_{p->p}: 2*2, sqrt2*sqrt2, 1*2
    for norm, v in expect.items():
        assert lipschitz_constant(net, [1.0], x0, 0.5, norm, "opnorm") == pytest.approx(v, rel=1e-8)
        for m in LOCAL:  # both neurons active on [1, 2] x [-0.5, 0.5]: J = (2, 0)
            assert lipschitz_constant(net, [1.0], x0, 0.5, norm, m) == pytest.approx(2.0, rel=1e-8)
    # around the origin both neurons are unstable: J1 in [0, 2], J2 in [-1, 1]
    assert lipschitz_constant(net, [1.0], torch.zeros(2), 1.0, "inf", "fastlip") == pytest.approx(3.0, rel=1e-8)


@pytest.mark.parametrize("act, peak", [(L.Sigmoid, 0.25), (L.Tanh, 1.0)])
def test_s_shaped_constants_exact_in_1d(act, peak: float) -> None:
    """x -> 3 act(2x): op-norm L = 2 * f'(0) * 3 in every norm; the local constants on a ball
    around 0 are the same (the derivative peaks at 0)."""
    t = lambda v: torch.tensor(v)
    net = chain([L.Linear(t([[2.0]]), t([0.0])), act(), L.Linear(t([[3.0]]), t([0.0]))], (1,))
    for norm in NORMS:
        for m in METHODS:
            assert lipschitz_constant(net, [1.0], torch.zeros(1), 0.1, norm, m) == pytest.approx(6 * peak, rel=1e-8)
    seen = float(_grad_norms(_f64(net), torch.ones(1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), 1.0).max())
    assert seen == pytest.approx(6 * peak, rel=1e-12)


def test_maxpool_jacobian_routing_and_overlap() -> None:
    """max(x1, x2) as a 1x2 max-pool: both inputs can win on [0, 1]^2 (J in [0, 1] each), x1
    always wins on [2, 3] x [0, 1] (J = (1, 0) exactly); with c = -1 the signs flip."""
    from bab.bounding.lipschitz.opnorm import pool_overlap

    net = _f64(chain([L.MaxPool2d((1, 2), (1, 2)), L.Reshape((1,))], (1, 1, 2)))
    lo = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    hi = torch.tensor([[1.0, 1.0], [3.0, 1.0]], dtype=torch.float64)
    C = torch.tensor([[[1.0]], [[-1.0]]], dtype=torch.float64)
    J = FastLip().jacobian(build_problem(net, lo, hi, C, crown_intermediate(net, lo, hi)))
    assert J[0].flatten(1).tolist() == [[0.0, 0.0], [-1.0, 0.0]]
    assert J[1].flatten(1).tolist() == [[1.0, 1.0], [-1.0, 0.0]]
    assert pool_overlap(L.MaxPool2d((2, 2), (2, 2))) == 1
    assert pool_overlap(L.MaxPool2d((3, 3), (2, 2))) == 4
    assert pool_overlap(L.MaxPool2d((3, 2), (1, 1), dilation=(2, 1))) == 6


def test_residual_gains_add_up() -> None:
    """f = x + A x with A = [[1]] (an Add of two branches): L = 2 in every norm, op-norm and
    local methods alike (no activation)."""
    t = lambda v: torch.tensor(v)
    net = dag([(L.Linear(t([[1.0]]), t([0.0])), (-1,)), (L.Linear(t([[1.0]]), t([0.5])), (0,)),
               (L.Add(), (0, 1))], (1,))
    for norm in NORMS:
        for m in METHODS:
            assert lipschitz_constant(net, [1.0], torch.zeros(1), 1.0, norm, m) == pytest.approx(2.0, rel=1e-8)


def test_operator_norms_exact_and_fallback_sound(monkeypatch) -> None:
    """ℓ∞/ℓ1 induced norms are the max row/column sums; ℓ2 is the SVD of the (unrolled) op;
    the no-unroll fallback sqrt(‖A‖_1 ‖A‖_∞) is an upper bound of it."""
    from bab.bounding.lipschitz import opnorm

    g = torch.Generator().manual_seed(2)
    W = torch.randn(5, 7, generator=g)
    lin = L.Linear(W, torch.zeros(5))
    assert opnorm.op_norm(lin, (7,), math.inf) == pytest.approx(float(W.abs().sum(1).max()), rel=1e-7)
    assert opnorm.op_norm(lin, (7,), 1.0) == pytest.approx(float(W.abs().sum(0).max()), rel=1e-7)
    assert opnorm.op_norm(lin, (7,), 2.0) == pytest.approx(float(torch.linalg.matrix_norm(W.double(), 2)), rel=1e-7)
    conv = L.Conv2d(torch.randn(3, 2, 3, 3, generator=g), torch.zeros(3), (2, 2), (1, 1))
    eye = torch.eye(2 * 36, dtype=torch.float64).reshape(-1, 2, 6, 6)
    A = torch.nn.functional.conv2d(eye, conv.weight.double(), None, (2, 2), (1, 1)).reshape(72, -1).T
    for p, exact in ((math.inf, A.abs().sum(1).max()), (1.0, A.abs().sum(0).max()), (2.0, torch.linalg.matrix_norm(A, 2))):
        assert opnorm.op_norm(conv, (2, 6, 6), p) == pytest.approx(float(exact), rel=1e-7)
    monkeypatch.setattr(opnorm, "UNROLL_LIMIT", 0)
    fresh = L.Conv2d(conv.weight, conv.bias, (2, 2), (1, 1))
    bound = opnorm.op_norm(fresh, (2, 6, 6), 2.0)
    assert bound >= float(torch.linalg.matrix_norm(A, 2))
    assert bound == pytest.approx(math.sqrt(float(A.abs().sum(0).max() * A.abs().sum(1).max())), rel=1e-7)


def test_activation_slopes_contain_derivatives() -> None:
    gen = torch.Generator().manual_seed(1)
    lo = 4 * torch.randn(200, generator=gen, dtype=torch.float64)
    hi = lo + 3 * torch.rand(200, generator=gen, dtype=torch.float64)
    z = lo + (hi - lo) * torch.rand(50, 200, generator=gen, dtype=torch.float64)
    for layer, df in ((L.Sigmoid(), lambda t: torch.sigmoid(t) * (1 - torch.sigmoid(t))),
                      (L.Tanh(), lambda t: 1 - torch.tanh(t) ** 2)):
        dl, du = activation_slopes(layer, lo, hi)
        assert torch.all(dl <= df(z)) and torch.all(df(z) <= du)
    dl, du = activation_slopes(L.ReLU(), torch.tensor([-2.0, 0.0, 1.0]).double(), torch.tensor([-1.0, 1.0, 2.0]).double())
    assert dl.tolist() == [0.0, 0.0, 1.0] and du.tolist() == [0.0, 1.0, 1.0]


def test_recurjac_jacobian_inside_fastlip() -> None:
    """Elementwise, RecurJac's Jacobian interval lies inside Fast-Lip's, and is strictly
    narrower somewhere on a deeper network."""
    net = _f64(random_mlp([4, 12, 12, 12, 12, 3], seed=2))
    gen = torch.Generator().manual_seed(3)
    lo = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    hi = lo + 0.4
    C = torch.randn(6, 3, 3, generator=gen, dtype=torch.float64)
    prob = build_problem(net, lo, hi, C, crown_intermediate(net, lo, hi))
    fl, rj = FastLip().jacobian(prob), RecurJac().jacobian(prob)
    assert torch.all(rj[0] >= fl[0]) and torch.all(rj[1] <= fl[1])
    assert torch.all(rj[0] <= rj[1] + 1e-12)
    assert ((fl[1] - fl[0]) - (rj[1] - rj[0])).max() > 1e-3


def test_recurjac_budget_zero_is_fastlip() -> None:
    net = random_mlp([4, 10, 10, 3], seed=5)
    dom = Domains(torch.zeros(2, 4), torch.ones(2, 4) * 0.3, torch.randn(2, 2, 3))
    a = RecurJac(budget=0).bound(net, dom).lower
    b = get_bounder("fastlip").bound(net, dom).lower
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- bounders


NETS = {
    "mlp": lambda: random_mlp([5, 16, 16, 3], seed=1),
    "deep_mlp": lambda: random_mlp([4, 12, 12, 12, 12, 3], seed=2),
    "tanh_mlp": lambda: random_mlp([4, 10, 10, 3], seed=3, act=L.Tanh),
    "sigmoid_mlp": lambda: random_mlp([4, 10, 10, 3], seed=4, act=L.Sigmoid),
    "small_cnn": small_cnn,
    "residual": residual_net,
    "zoo_cnn": zoo_cnn,
}
MLPS = {"mlp", "deep_mlp", "tanh_mlp", "sigmoid_mlp"}


def _domains(net, N: int, seed: int, phases: bool) -> Domains:
    gen = torch.Generator().manual_seed(seed)
    n = net.n_inputs
    lo = torch.rand(N, n, generator=gen)
    hi = lo + 0.05 + 0.3 * torch.rand(N, n, generator=gen)
    C = torch.randn(N, 3, net.n_outputs, generator=gen)
    ph: dict[int, torch.Tensor] = {}
    if phases:  # fix random neurons to the phase of the centre point (never empty)
        values = net.forward_all((lo + hi) / 2)
        for r, node in enumerate(net.nodes):
            if isinstance(node.layer, L.ReLU):
                z = values[node.inputs[0]] if node.inputs[0] >= 0 else None
                sign = torch.where(z >= 0, 1, -1)
                mask = torch.rand(z.shape, generator=gen) < 0.4
                mask[: N // 2] = False
                ph[r] = torch.where(mask, sign, 0).to(torch.int8)
    return Domains(lo, hi, C, ph)


def _consistent(net, x: torch.Tensor, dom: Domains, i: int) -> torch.Tensor:
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    values = net.forward_all(x)
    for r, ph in dom.phases.items():
        z = values[net.nodes[r].inputs[0]].reshape(x.shape[0], -1)
        p = ph[i].reshape(-1)
        ok &= ((p == 0) | ((p > 0) & (z >= 0)) | ((p < 0) & (z <= 0))).all(1)
    return ok


def _pgd(net, C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, sign: float, gen) -> torch.Tensor:
    x = lo + (hi - lo) * torch.rand(8, lo.numel(), generator=gen)
    step = (hi - lo) / 10
    for it in range(30):
        x = x.detach().requires_grad_(True)
        obj = sign * (net.forward(x) @ C.T).sum()
        g, = torch.autograd.grad(obj, x)
        x = torch.minimum(torch.maximum(x - step * g.sign(), lo), hi)
        if it % 10 == 9:
            step = step / 2
    return x.detach()


def _observed(net, dom: Domains, n: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest observed ``C f(x)`` per domain over consistent samples and PGD."""
    gen = torch.Generator().manual_seed(7)
    mins = torch.full(dom.C.shape[:2], math.inf)
    maxs = torch.full(dom.C.shape[:2], -math.inf)
    for i in range(dom.size):
        lo, hi = dom.lower[i], dom.upper[i]
        x = torch.cat([lo + (hi - lo) * torch.rand(n, lo.numel(), generator=gen),
                       _pgd(net, dom.C[i], lo, hi, 1.0, gen), _pgd(net, dom.C[i], lo, hi, -1.0, gen)])
        with torch.no_grad():
            x = x[_consistent(net, x, dom, i)]
            y = net.forward(x) @ dom.C[i].T
        mins[i], maxs[i] = y.amin(0), y.amax(0)
    return mins, maxs


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("phases", [False, True])
def test_bounders_sound_on_boxes(name: str, phases: bool) -> None:
    net = NETS[name]()
    dom = _domains(net, N=6, seed=11, phases=phases)
    mins, maxs = _observed(net, dom)
    out = {m: get_bounder(m).bound(net, dom) for m in METHODS}
    for m, b in out.items():
        assert b.lower.shape == (6, 3) and b.lower.dtype == torch.float32
        assert torch.all(b.lower <= mins + 1e-5), f"{m} lower on {name}: {(b.lower - mins).max():.3g}"
        assert torch.all(b.upper >= maxs - 1e-5), f"{m} upper on {name}: {(maxs - b.upper).max():.3g}"
    assert torch.all(out["recurjac"].lower >= out["fastlip"].lower)
    assert torch.all(out["recurjac"].upper <= out["fastlip"].upper)
    if name in MLPS:  # theory: fastlip's weighted-ℓ1 Jacobian bound <= the op-norm product
        assert torch.all(out["lipschitz-opnorm"].lower <= out["fastlip"].lower)
    inter = out["fastlip"].intermediate
    assert inter is not None and len(inter) == len(net.nodes)
    values = net.forward_all((dom.lower + dom.upper) / 2)
    for k, (a, b) in inter.items():  # centre points need not respect the phases
        if not phases:
            assert torch.all(a <= values[k] + 1e-5) and torch.all(values[k] <= b + 1e-5)


def test_fixed_phases_are_honoured_exactly() -> None:
    """hand_221 on [-1, 1]^2: free, Fast-Lip's J is [0,2] x [-1,1] (lower -3); both neurons
    fixed active gives g~ = 2 x1 (lower -2; the true minimum on the sub-domain is 0)."""
    net = hand_221()
    lo, hi = -torch.ones(1, 2), torch.ones(1, 2)
    C = torch.ones(1, 1, 1)
    free = get_bounder("fastlip").bound(net, Domains(lo, hi, C)).lower
    fixed = get_bounder("fastlip").bound(net, Domains(lo, hi, C, {1: torch.ones(1, 2, dtype=torch.int8)})).lower
    assert free.item() == pytest.approx(-3.0, abs=1e-6)
    assert fixed.item() == pytest.approx(-2.0, abs=1e-6)
    on = get_bounder("lipschitz-opnorm").bound(net, Domains(lo, hi, C, {1: -torch.ones(1, 2, dtype=torch.int8)}))
    assert on.lower.item() == pytest.approx(0.0, abs=1e-6)  # both inactive: g~ = 0 exactly


def test_opnorm_box_bound_by_hand() -> None:
    """hand_221 on [1, 2] x [-0.5, 0.5]: f(x0) = 3, L_r = ‖[1,1]‖_1 * max(|W1| r) = 2 * 1."""
    net = hand_221()
    b = get_bounder("lipschitz-opnorm").bound(net, Domains(torch.tensor([[1.0, -0.5]]), torch.tensor([[2.0, 0.5]]),
                                                           torch.ones(1, 1, 1)))
    assert b.lower.item() == pytest.approx(1.0, abs=1e-6) and b.upper.item() == pytest.approx(5.0, abs=1e-6)
    f = get_bounder("fastlip").bound(net, Domains(torch.tensor([[1.0, -0.5]]), torch.tensor([[2.0, 0.5]]),
                                                  torch.ones(1, 1, 1)))
    assert f.lower.item() == pytest.approx(2.0, abs=1e-6)  # exact: f = 2 x1 there


@pytest.mark.parametrize("p", ["2", "1"])
@pytest.mark.parametrize("name", ["mlp", "tanh_mlp", "small_cnn"])
def test_bounders_sound_on_balls(name: str, p: str) -> None:
    """ℓ2/ℓ1 balls ∩ box: sound on ball samples, accepted as exact, and tighter than the box
    alone when the ball is small."""
    from bab.bounding import check_input_set
    from bab.bounding.balls import project, sample

    net = NETS[name]()
    gen = torch.Generator().manual_seed(5)
    N, n = 4, net.n_inputs
    x0 = torch.rand(N, n, generator=gen)
    lo, hi = x0 - 0.5, x0 + 0.5
    eps = torch.full((N,), 0.3 if p == "2" else 0.6)
    C = torch.randn(N, 3, net.n_outputs, generator=gen)
    dom = Domains(lo, hi, C, center=x0, eps=eps, p=p)
    box = Domains(lo, hi, C)
    for m in METHODS:
        b = get_bounder(m).bound(net, dom)
        assert check_input_set(get_bounder(m), dom) == "exact"
        assert torch.all(b.lower >= get_bounder(m).bound(net, box).lower - 1e-6)
        for i in range(N):
            x = project(sample(x0[i], float(eps[i]), p, 3000, gen), x0[i], eps[i:i + 1], p, lo[i], hi[i])
            with torch.no_grad():
                y = net.forward(x) @ C[i].T
            assert torch.all(b.lower[i] <= y.amin(0) + 1e-5), m
            assert torch.all(b.upper[i] >= y.amax(0) - 1e-5), m
    tight = get_bounder("fastlip").bound(net, dom).lower - get_bounder("fastlip").bound(net, box).lower
    assert tight.max() > 1e-3


# --------------------------------------------------------------------------- certified radius


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", NORMS)
def test_certified_radius_verifies_and_holds(method: str, norm) -> None:
    gen = torch.Generator().manual_seed(4)
    for seed in range(3):
        net = random_mlp([4, 12, 12, 3], seed=30 + seed)
        net64 = _f64(net)
        x0 = torch.rand(4, generator=gen, dtype=torch.float64)
        label = int(net64.forward(x0[None]).argmax())
        eps, steps = certified_radius(net, x0, label, norm, method, return_steps=True)
        assert 0 < eps < math.inf
        C = torch.eye(3, dtype=torch.float64)[label] - torch.eye(3, dtype=torch.float64)
        C = C[[j for j in range(3) if j != label]]
        m = C @ net64.forward(x0[None])[0]
        assert torch.all(m - margin_constants(net, C, x0, eps, norm, method) * eps > 0)
        x = _ball(x0, eps, norm, 5000, gen)
        x = torch.cat([x, _pgd_ball(net64, x0, eps, norm, label)])
        with torch.no_grad():
            assert torch.all(net64.forward(x).argmax(1) == label)
        if method in LOCAL:
            assert steps and all(isinstance(s, BisectStep) for s in steps)
            good = [s.eps for s in steps if s.verified]
            bad = [s.eps for s in steps if not s.verified]
            assert max(good) == eps and (not bad or min(bad) > eps)
        else:  # closed form
            assert eps == pytest.approx(float((m / margin_constants(net, C, x0, 0.0, norm, method)).min()), rel=1e-6)


def _pgd_ball(net64, x0: torch.Tensor, eps: float, norm, label: int) -> torch.Tensor:
    """Points found by minimising the margin over the ``ℓp`` ball (projected steps)."""
    p = Norm.parse(norm)
    gen = torch.Generator().manual_seed(9)
    x = x0 + 0.5 * eps * (2 * torch.rand(16, x0.numel(), generator=gen, dtype=torch.float64) - 1) / x0.numel()
    for _ in range(40):
        x = x.detach().requires_grad_(True)
        y = net64.forward(x)
        others = y.clone()
        others[:, label] = -math.inf
        g, = torch.autograd.grad((y[:, label] - others.amax(1)).sum(), x)
        d = x.detach() - x0 - 0.1 * eps * (g.sign() if p is Norm.LINF else g / (g.norm(dim=1, keepdim=True) + 1e-12))
        if p is Norm.LINF:
            d = d.clamp(-eps, eps)
        else:
            n = torch.linalg.vector_norm(d, p.p, -1, keepdim=True)
            d = d * torch.clamp(eps / n, max=1.0) * (1 - 1e-12)
        x = x0 + d
    return x.detach()


def test_certified_radius_orders_and_misclassified() -> None:
    net = random_mlp([4, 12, 12, 3], seed=40)
    x0 = torch.full((4,), 0.5, dtype=torch.float64)
    label = int(net.forward(x0[None].float()).argmax())
    r = {m: certified_radius(net, x0, label, "inf", m) for m in METHODS}
    assert r["recurjac"] >= r["fastlip"] * (1 - 1e-5)  # tighter constants verify at least as far
    assert certified_radius(net, x0, (label + 1) % 3, "inf", "fastlip") == 0.0


# --------------------------------------------------------------------------- shared networks


def _shared_check(bench: Path, method: str, full: bool) -> None:
    from tests.test_bounding_soundness import _cases

    for name, net, dom, observed in _cases(bench, full):
        lower = get_bounder(method).bound(net, dom).lower.detach()
        bad = lower > observed + 1e-5
        assert not bad.any(), f"{method} on {name}: bound exceeds observed by {(lower - observed)[bad].max():.3g}"


@pytest.mark.parametrize("method", METHODS)
def test_sound_on_shared_networks(bench_dir: Path, method: str) -> None:
    _shared_check(bench_dir, method, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_sound_on_every_shared_network(bench_dir: Path, method: str) -> None:
    _shared_check(bench_dir, method, full=True)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lip")
    w1 = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.2]])
    w2 = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.2]])
    zeros = [np.zeros(3), np.zeros(2)]
    return {"relu": mlp_onnx(d / "net.onnx", [w1, w2], zeros),
            # at x = (.5, .5): y = [.525, -.49], class 0 wins on the whole small box
            "prop": write_property(d / "p.vnnlib", [0.49, 0.49], [0.51, 0.51], 2, robustness_output(0, 2))}


@pytest.mark.parametrize("method", ["fastlip"])
def test_cli_verify_method(tiny, method: str) -> None:
    p = run_bab("verify", str(tiny["relu"]), str(tiny["prop"]), "--method", method, "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("unsat") and f"[{method}]" in p.stdout
