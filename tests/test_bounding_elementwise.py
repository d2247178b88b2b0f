"""Exp, Log, Sqrt, Reciprocal, Pow, Sin, Cos, Sign, Floor: IBP ranges and CROWN-family lines.

Three oracles per op: (1) soundness of every bounder on tiny IR networks (the op after a
Linear, the op feeding a ReLU through a Linear, the op after a ReLU layer) over random
sub-boxes (degenerate, tiny and wide ones included) against dense samples and PGD points,
slack 1e-5; (2) hand-computed lines on known intervals; (3) the lines and ranges themselves on
10^5 points of random intervals, with no slack at all (float64 evaluation of the float32 lines).
Intervals outside an op's domain are refused with a reason, never a NaN or infinite bound.
The ``-m slow`` run repeats (1) and (3) with more seeds, points and wider networks.
"""

from __future__ import annotations

import math

import pytest
import torch

from bab.bounding import BounderRefusal, Domains, UnsupportedLayerError, get_bounder
from bab.bounding.interval.elementwise import sound_range
from bab.bounding.polyhedra.alpha import AlphaCrown
from bab.bounding.polyhedra.elementwise import KINDS, unary_relax
from bab.bounding.polyhedra.relax import UNARY
from onnx_models import layers as L
from tests.irnets import chain

METHODS = ["ibp", "crown", "deeppoly", "fastlin", "alpha-crown", "crown-ibp"]
OTHERS = ["symbolic", "crown-fwd", "zonotope", "refinezono", "wk", "krelu", "sdp", "lmi",
          "lipschitz-opnorm", "fastlip", "recurjac"]
SLACK = 1e-5

#: name -> (layer factory, side of 0 its input must stay on: "any", "pos", "nonneg", "neg")
OPS: dict[str, tuple] = {
    "exp": (L.Exp, "any"),
    "log": (L.Log, "pos"),
    "sqrt": (L.Sqrt, "nonneg"),
    "reciprocal": (L.Reciprocal, "pos"),
    "reciprocal_neg": (L.Reciprocal, "neg"),
    "pow0": (lambda: L.Pow(0.0), "any"),
    "pow1": (lambda: L.Pow(1.0), "any"),
    "pow2": (lambda: L.Pow(2.0), "any"),
    "pow3": (lambda: L.Pow(3.0), "any"),
    "pow4": (lambda: L.Pow(4.0), "any"),
    "pow5": (lambda: L.Pow(5.0), "any"),
    "pow0.5": (lambda: L.Pow(0.5), "nonneg"),
    "pow1.5": (lambda: L.Pow(1.5), "nonneg"),
    "pow-1": (lambda: L.Pow(-1.0), "pos"),
    "pow-1_neg": (lambda: L.Pow(-1.0), "neg"),
    "pow-2_neg": (lambda: L.Pow(-2.0), "neg"),
    "pow-0.5": (lambda: L.Pow(-0.5), "pos"),
    "sin": (L.Sin, "any"),
    "cos": (L.Cos, "any"),
    "sign": (L.Sign, "any"),
    "floor": (L.Floor, "any"),
}


def f64(layer: L.Layer, x: torch.Tensor) -> torch.Tensor:
    """The op in float64 (the reference the lines must bound)."""
    return layer.forward(x.double())


# --------------------------------------------------------------------------- networks

def _pre(side: str, g: torch.Generator, n_in: int, h: int) -> list[L.Layer]:
    """Layers producing ``h`` pre-activations on the required side of 0 (IBP-provably)."""
    r = lambda *s: torch.randn(*s, generator=g)
    if side == "any":
        return [L.Linear(1.5 * r(h, n_in), 0.5 * r(h))]
    w = r(h, h).abs() / h
    b = 0.05 + 0.3 * torch.rand(h, generator=g) if side != "nonneg" else torch.zeros(h)
    sign = -1.0 if side == "neg" else 1.0
    return [L.Linear(r(h, n_in), r(h)), L.Sigmoid(), L.Linear(sign * w, sign * b)]


def nets(op: str, seed: int = 0, h: int = 6, n_in: int = 3, n_out: int = 3) -> dict[str, object]:
    """The op after a Linear, feeding a ReLU through a Linear, and after a ReLU layer."""
    make, side = OPS[op]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / math.sqrt(s[-1])
    out = {"plain": chain(_pre(side, g, n_in, h) + [make(), L.Linear(r(n_out, h), r(n_out))], (n_in,)),
           "into_relu": chain(_pre(side, g, n_in, h) + [make(), L.Linear(r(h, h), r(h)), L.ReLU(),
                                                       L.Linear(r(n_out, h), r(n_out))], (n_in,))}
    if side == "any":
        out["after_relu"] = chain([L.Linear(r(h, n_in), r(h)), L.ReLU(), L.Linear(2 * r(h, h), r(h)),
                                   make(), L.Linear(r(n_out, h), r(n_out))], (n_in,))
    return out


def domains(net, N: int, g: torch.Generator, M: int = 4) -> Domains:
    """Random sub-boxes of [-1, 1]^n: the first degenerate, the second tiny, the third wide."""
    centre = torch.rand(N, net.n_inputs, generator=g) * 2 - 1
    rad = 0.5 * torch.rand(N, net.n_inputs, generator=g)
    rad[0], rad[1], rad[2] = 0.0, 1e-4 * rad[1], 1.0
    C = torch.randn(N, M, net.n_outputs, generator=g)
    t = lambda v: v.to(net.dtype)
    return Domains(t(centre - rad), t(centre + rad), t(C))


def _pgd(net, dom: Domains, g: torch.Generator, n: int = 10, steps: int = 20) -> torch.Tensor:
    """``[N, 2n, n_in]`` PGD points minimising (then maximising) the rows of ``C f(x)``."""
    lo, hi, C = dom.lower[:, None], dom.upper[:, None], dom.C
    pts = []
    for sgn in (1.0, -1.0):
        x = lo + (hi - lo) * torch.rand(dom.size, n, lo.shape[-1], generator=g)
        step = (hi - lo) / 8
        for it in range(steps):
            x = x.detach().requires_grad_(True)
            y = net.forward(x.reshape(-1, x.shape[-1])).reshape(dom.size, n, -1)
            grad, = torch.autograd.grad((sgn * torch.einsum("nmo,nso->nsm", C, y)).sum(), x)
            x = torch.minimum(torch.maximum(x - step * grad.nan_to_num().sign(), lo), hi)
            if it % 7 == 6:
                step = step / 2
        pts.append(x.detach())
    return torch.cat(pts, 1)


def observed(net, dom: Domains, g: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
    """Samples ``[N, S, n_in]`` (centre, dense, PGD) and the min/max of each row ``[N, M]``."""
    lo, hi = dom.lower[:, None], dom.upper[:, None]
    x = torch.cat([(lo + hi) / 2, lo + (hi - lo) * torch.rand(dom.size, n, lo.shape[-1], generator=g),
                   _pgd(net, dom, g)], 1)
    with torch.no_grad():
        y = net.forward(x.reshape(-1, x.shape[-1])).reshape(dom.size, x.shape[1], -1)
        cy = torch.einsum("nmo,nso->nsm", dom.C, y)
    return x, cy.amin(1), cy.amax(1)


def tol(v: torch.Tensor) -> torch.Tensor:
    """Slack 1e-5; in float32 relative beyond magnitude 1: float32 rounding upstream of a steep
    op (x**5, exp) is amplified by its slope, a harness effect that the float64 runs and the
    no-slack line tests below exclude."""
    return SLACK * (1 + v.abs()) if v.dtype == torch.float32 else torch.full_like(v, SLACK)


def _bounder(method: str, quick: bool):
    """The named bounder (alpha-CROWN with 8 Adam steps in the quick default run)."""
    return AlphaCrown(iterations=8) if quick and method == "alpha-crown" else get_bounder(method)


def check_network(net, dom: Domains, g: torch.Generator, n: int, label: str, quick: bool = True) -> None:
    """Every method's bounds (and node intervals) contain the observed values."""
    xs, ylo, yhi = observed(net, dom, g, n)
    with torch.no_grad():
        vals = net.forward_all(xs.reshape(-1, net.n_inputs))
    lowers = {}
    for method in METHODS:
        b = _bounder(method, quick).bound(net, dom)
        lowers[method] = b.lower
        assert torch.isfinite(b.lower).all(), (label, method)
        assert torch.all(b.lower <= ylo + tol(ylo)), (label, method, (b.lower - ylo).max())
        if b.upper is not None:
            assert torch.all(b.upper >= yhi - tol(yhi)), (label, method, (yhi - b.upper).max())
        for idx, (lo, hi) in b.intermediate.items():
            v = vals[idx].reshape(dom.size, xs.shape[1], -1)
            assert torch.all(lo.reshape(dom.size, 1, -1) <= v + tol(v)), (label, method, idx)
            assert torch.all(hi.reshape(dom.size, 1, -1) >= v - tol(v)), (label, method, idx)
    # orders theory guarantees (CROWN intersects with a tighter IBP; alpha starts at CROWN),
    # up to float rounding (on degenerate boxes CROWN's bounds may cross by an ulp, and a steep
    # op magnifies it): the tolerance of the soundness checks
    for hi, lo in (("crown", "ibp"), ("alpha-crown", "crown")):
        ref = lowers[lo]
        assert torch.all(lowers[hi] >= ref - tol(ref)), (label, hi, lo)


@pytest.mark.parametrize("op", list(OPS))
def test_sound_on_networks(op: str) -> None:
    g = torch.Generator().manual_seed(len(op))
    for shape, net in nets(op).items():
        check_network(net, domains(net, 6, g), g, 300, f"{op}/{shape}")
    net = nets(op, seed=1)["into_relu"].to(dtype=torch.float64)  # absolute slack 1e-5
    check_network(net, domains(net, 6, g), g, 300, f"{op}/into_relu/float64")


@pytest.mark.slow
@pytest.mark.parametrize("op", list(OPS))
def test_sound_on_networks_heavy(op: str) -> None:
    for seed in range(4):
        g = torch.Generator().manual_seed(100 + seed)
        for shape, net in nets(op, seed=seed, h=16, n_in=5).items():
            check_network(net, domains(net, 12, g), g, 4000, f"{op}/{shape}/{seed}", quick=False)
            net = net.to(dtype=torch.float64)
            check_network(net, domains(net, 12, g), g, 4000, f"{op}/{shape}/{seed}/float64", quick=False)


# --------------------------------------------------------------------------- lines on points

def intervals(side: str, n: int, g: torch.Generator, layer: L.Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 intervals: degenerate, tiny, ordinary and wide ones (integer ends for
    Floor, ends at 0 for Sign)."""
    u01 = lambda: torch.rand(n, generator=g, dtype=torch.float64)
    width = torch.where(u01() < 0.5, 2 * u01(), 15 * u01())
    width = torch.where(u01() < 0.15, torch.zeros(n, dtype=torch.float64), width)
    width = torch.where(u01() < 0.1, 1e-6 * u01(), width)
    if side == "any":
        scale = 20.0 if not isinstance(layer, (L.Exp, L.Pow)) else 4.0
        l = (u01() * 2 - 1) * scale
        width = width if not isinstance(layer, (L.Exp, L.Pow)) else width.clamp(max=6.0)
    else:
        l = torch.pow(10.0, u01() * 4 - 3)
        l = torch.where((u01() < 0.1) & torch.tensor(side == "nonneg"), torch.zeros_like(l), l)
    if isinstance(layer, L.Floor):
        l = torch.where(u01() < 0.2, l.round(), l)
        width = torch.where(u01() < 0.2, width.round(), width)
    u = l + width
    if isinstance(layer, L.Sign):
        l = torch.where(u01() < 0.1, torch.zeros_like(l), l)
        u = torch.where(u01() < 0.1, torch.zeros_like(u).clamp(min=l), u)
        u = torch.maximum(u, l)
    if side == "neg":
        l, u = -u, -l
    l32, u32 = l.float(), u.float()
    return l32, torch.maximum(u32, l32)


def check_lines(op: str, n: int, pts: int, seed: int) -> None:
    """Lines (default and with a random free parameter) and ranges hold with no slack."""
    make, side = OPS[op]
    layer = make()
    g = torch.Generator().manual_seed(seed)
    l, u = intervals(side, n, g, layer)
    t = torch.cat([torch.zeros(n, 1), torch.ones(n, 1), torch.rand(n, pts - 2, generator=g)], 1)
    x = (l[:, None] + (u - l)[:, None] * t).clamp(l[:, None], u[:, None])  # float32 points
    fx = f64(layer, x)
    fx32 = layer.forward(x).double()
    alpha = torch.rand(n, generator=g)
    if isinstance(layer, (L.Sin, L.Cos, L.Floor)):
        alpha = 3 * torch.rand(n, generator=g) - (1.5 if not isinstance(layer, L.Floor) else 0)
    for a in (None, alpha):
        r = unary_relax(layer, l, u, a)
        lw, lb, uw, ub = (v.reshape(n, 1).double() for v in (r.lw, r.lb, r.uw, r.ub))
        low, up = fx - (lw * x.double() + lb), (uw * x.double() + ub) - fx
        assert low.min() >= 0, (op, a is None, low.min(), low.argmin())
        assert up.min() >= 0, (op, a is None, up.min(), up.argmin())
    lo, hi = sound_range(layer, l, u)
    assert torch.all(lo[:, None].double() <= fx) and torch.all(hi[:, None].double() >= fx), op
    assert torch.all(lo[:, None].double() <= fx32) and torch.all(hi[:, None].double() >= fx32), op


@pytest.mark.parametrize("op", list(OPS))
def test_lines_on_points(op: str) -> None:
    check_lines(op, 2000, 50, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("op", list(OPS))
def test_lines_on_points_heavy(op: str) -> None:
    for seed in range(10):
        check_lines(op, 20000, 50, seed=10 + seed)


def test_lines_touch() -> None:
    """The default lines are not loose: on ordinary intervals each one meets f (or its range)."""
    g = torch.Generator().manual_seed(3)
    for op in ["exp", "log", "sqrt", "reciprocal", "reciprocal_neg", "pow2", "pow3", "pow1.5",
               "pow-2_neg", "sin", "cos"]:
        make, side = OPS[op]
        layer = make()
        l = torch.rand(200, generator=g) + (0.2 if side != "any" else -1.0)
        u = l + 0.1 + torch.rand(200, generator=g)
        if side == "neg":
            l, u = -u, -l
        x = l[:, None] + (u - l)[:, None] * torch.linspace(0, 1, 2001)
        r = unary_relax(layer, l, u)
        fx = f64(layer, x)
        low = fx - (r.lw.reshape(-1, 1) * x + r.lb.reshape(-1, 1)).double()
        up = (r.uw.reshape(-1, 1) * x + r.ub.reshape(-1, 1)).double() - fx
        scale = 1 + fx.abs().amax(1)
        assert (low.amin(1) / scale).max() < 1e-4, op
        assert (up.amin(1) / scale).max() < 1e-4, op


# --------------------------------------------------------------------------- by hand

def _lines(layer: L.Layer, l: float, u: float) -> list[float]:
    r = unary_relax(layer, torch.tensor([[l]], dtype=torch.float64), torch.tensor([[u]], dtype=torch.float64))
    return [float(v) for v in (r.lw, r.lb, r.uw, r.ub)]


E = math.e
S = math.sqrt(1 - 4 / math.pi ** 2)  # sin at the point where cos = 2/pi
XS = math.acos(2 / math.pi)
HAND = [
    # op, l, u, (lw, lb, uw, ub)
    (L.Exp(), 0.0, 1.0, (math.sqrt(E), math.sqrt(E) / 2, E - 1, 1.0)),  # tangent at 1/2, chord
    (L.Log(), 1.0, E, (1 / (E - 1), -1 / (E - 1), 2 / (1 + E), math.log((1 + E) / 2) - 1)),
    (L.Sqrt(), 0.0, 4.0, (0.5, 0.0, 1 / (2 * math.sqrt(2)), math.sqrt(2) / 2)),
    (L.Reciprocal(), 1.0, 2.0, (-1 / 2.25, 2 / 1.5, -0.5, 1.5)),
    (L.Reciprocal(), -2.0, -1.0, (-0.5, -1.5, -1 / 2.25, -2 / 1.5)),
    (L.Pow(2.0), -1.0, 2.0, (1.0, -0.25, 1.0, 2.0)),  # tangent at 1/2, chord
    (L.Pow(3.0), -1.0, 2.0, (0.75, -0.25, 3.0, 2.0)),  # tangent at 1/2 passes (-1, -1)
    (L.Pow(0.5), 0.0, 4.0, (0.5, 0.0, 1 / (2 * math.sqrt(2)), math.sqrt(2) / 2)),
    (L.Pow(-1.0), 1.0, 2.0, (-1 / 2.25, 2 / 1.5, -0.5, 1.5)),
    (L.Pow(0.0), -3.0, 5.0, (0.0, 1.0, 0.0, 1.0)),
    (L.Sin(), 0.0, math.pi, (0.0, 0.0, 0.0, 1.0)),  # concave: chord y = 0, top y = 1
    (L.Sin(), -math.pi / 2, math.pi / 2, (2 / math.pi, -(S - 2 / math.pi * XS), 2 / math.pi, S - 2 / math.pi * XS)),
    (L.Sin(), 0.0, 7.0, (0.0, -1.0, 0.0, 1.0)),  # wider than 2 pi
    (L.Cos(), -math.pi / 2, math.pi / 2, (0.0, 0.0, 0.0, 1.0)),
    (L.Sign(), -1.0, 3.0, (2 / 3, -1.0, 0.0, 1.0)),  # lower through (0, -1) and (3, 1)
    (L.Sign(), 0.0, 2.0, (0.5, 0.0, 0.0, 1.0)),
    (L.Sign(), -2.0, 1.0, (0.0, -1.0, 1.0, 1.0)),  # upper through (-2, -1) and (0, 1)
    (L.Sign(), 0.5, 2.0, (0.0, 1.0, 0.0, 1.0)),
    (L.Floor(), 0.9, 1.1, (5.0, -5.0, 5.0, -4.0)),
    (L.Floor(), 0.2, 0.7, (0.0, 0.0, 0.0, 0.0)),
    (L.Floor(), 0.0, 3.0, (1.0, -1.0, 1.0, 0.0)),  # x - 1 <= floor(x) <= x
]


@pytest.mark.parametrize("layer, l, u, want", HAND, ids=[f"{h[0].kind}[{h[1]:.3g},{h[2]:.3g}]" for h in HAND])
def test_hand_computed_lines(layer: L.Layer, l: float, u: float, want: tuple) -> None:
    got = _lines(layer, l, u)
    assert got == pytest.approx(list(want), abs=1e-9), got


@pytest.mark.parametrize("layer, l, u, want", [
    (L.Exp(), 0.0, 1.0, (1.0, E)), (L.Log(), 1.0, E, (0.0, 1.0)), (L.Sqrt(), 0.0, 4.0, (0.0, 2.0)),
    (L.Reciprocal(), -2.0, -0.5, (-2.0, -0.5)), (L.Pow(2.0), -1.0, 2.0, (0.0, 4.0)),
    (L.Pow(3.0), -2.0, 1.0, (-8.0, 1.0)), (L.Pow(-2.0), -2.0, -0.5, (0.25, 4.0)),
    (L.Sin(), 1.0, 2.0, (math.sin(1.0), 1.0)), (L.Sin(), 3.0, 5.0, (-1.0, math.sin(3.0))),
    (L.Cos(), 3.0, 3.5, (-1.0, math.cos(3.5))), (L.Cos(), -10.0, 10.0, (-1.0, 1.0)),
    (L.Sign(), -0.5, 0.0, (-1.0, 0.0)), (L.Floor(), -1.5, 2.5, (-2.0, 2.0)),
])
def test_ibp_ranges_by_hand(layer: L.Layer, l: float, u: float, want: tuple) -> None:
    lo, hi = sound_range(layer, torch.tensor([l], dtype=torch.float64), torch.tensor([u], dtype=torch.float64))
    assert float(lo) <= want[0] <= float(lo) + 1e-12 and float(hi) - 1e-12 <= want[1] <= float(hi)


def test_crown_by_hand_exp() -> None:
    """y = exp(x) on x in [0, 1]: CROWN's bounds are the tangent's and the chord's extremes."""
    net = chain([L.Exp()], (1,), dtype=torch.float64)
    dom = Domains(torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                  torch.ones(1, 1, 1, dtype=torch.float64))
    b = get_bounder("crown").bound(net, dom)
    assert float(b.lower) == pytest.approx(1.0, abs=1e-12)  # max(IBP exp(0), tangent at 0)
    assert float(b.upper) == pytest.approx(E, abs=1e-12)
    C = torch.tensor([[[-1.0]]], dtype=torch.float64)
    crown = get_bounder("crown")
    crown.opts.final_ibp = False  # the plain back-substitution: -(chord at x) >= -(e-1)x - 1
    b = crown.bound(net, Domains(dom.lower, dom.upper, C))
    assert float(b.lower) == pytest.approx(-E, abs=1e-12)


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("layer, l, u", [
    (L.Log(), -1.0, 1.0), (L.Log(), 0.0, 1.0), (L.Sqrt(), -0.1, 1.0), (L.Reciprocal(), -1.0, 1.0),
    (L.Reciprocal(), 0.0, 1.0), (L.Pow(-1.0), -1.0, 1.0), (L.Pow(-2.0), 0.0, 1.0),
    (L.Pow(0.5), -1.0, 1.0), (L.Pow(-0.5), 0.0, 1.0), (L.Exp(), 0.0, 100.0),
])
def test_outside_domain_refused(layer: L.Layer, l: float, u: float) -> None:
    """No finite sound bound exists: IBP and every CROWN-family method refuse, naming the op."""
    net = chain([L.Linear(torch.eye(1), torch.zeros(1)), layer, L.Linear(torch.eye(1), torch.zeros(1))], (1,))
    dom = Domains(torch.tensor([[l]]), torch.tensor([[u]]), torch.ones(1, 1, 1))
    for method in METHODS:
        with pytest.raises(BounderRefusal, match=layer.kind):
            get_bounder(method).bound(net, dom)


def test_domain_boundary_accepted() -> None:
    """Intervals touching a boundary where the op is finite (sqrt at 0, even powers) are bounded."""
    for layer in (L.Sqrt(), L.Pow(0.5), L.Pow(1.5), L.Pow(2.0), L.Pow(3.0)):
        net = chain([layer], (1,))
        dom = Domains(torch.tensor([[0.0]]), torch.tensor([[4.0]]), torch.ones(1, 1, 1))
        for method in METHODS:
            b = get_bounder(method).bound(net, dom)
            assert torch.isfinite(b.lower).all() and float(b.lower) <= 0.0 + SLACK


def test_norm_pattern_stays_in_domain() -> None:
    """sqrt(sum (Wx + b)**2): the widened range of x**2 keeps 0 as its lower bound, so the
    Sqrt is bounded (not refused) by every method, soundly, even where Wx + b crosses 0."""
    g = torch.Generator().manual_seed(5)
    net = chain([L.Linear(torch.randn(4, 3, generator=g), torch.randn(4, generator=g)), L.Pow(2.0),
                 L.ReduceSum((0,)), L.Sqrt(), L.Linear(torch.ones(1, 1), torch.zeros(1))], (3,))
    dom = domains(net, 6, g, M=1)
    dom = Domains(dom.lower, dom.upper, dom.C.abs())
    check_network(net, dom, g, 300, "norm")
    lo, _ = sound_range(L.Pow(2.0), torch.tensor([-1.0]), torch.tensor([1.0]))
    assert float(lo) == 0.0


def test_overflowing_lines_fall_back_to_range() -> None:
    """exp on [80, 88] in float32: the chord's intercept overflows, the range does not; the
    relaxation falls back to the constant range line there and stays finite and sound."""
    l, u = torch.tensor([80.0, 0.0]), torch.tensor([88.0, 1.0])
    r = unary_relax(L.Exp(), l, u)
    assert all(bool(torch.isfinite(t).all()) for t in (r.lw, r.lb, r.uw, r.ub))
    x = l[:, None] + (u - l)[:, None] * torch.linspace(0, 1, 1001)
    fx = torch.exp(x.double())
    lines = [t.reshape(2, 1).double() for t in (r.lw, r.lb, r.uw, r.ub)]
    assert torch.all(lines[0] * x + lines[1] <= fx) and torch.all(lines[2] * x + lines[3] >= fx)
    assert float(r.uw[0, 0]) == 0.0 and float(r.uw[1, 0]) == pytest.approx(E - 1)


def test_registered_everywhere() -> None:
    """Each op has an IBP rule, a UNARY relaxation and a backward rule in every CROWN method."""
    from bab.bounding.interval.ibp import RULES
    from bab.bounding.polyhedra.backward import make_registry

    for kind in KINDS:
        assert kind in UNARY
        RULES.rule(kind())  # raises if missing
        make_registry("crown").rule(kind())


@pytest.mark.parametrize("op", ["sin", "cos", "exp", "floor", "sign", "pow3"])
def test_other_bounders_refuse(op: str) -> None:
    """Methods without rules for these ops refuse with a clear error naming the op (the
    LP-based ones may instead bound it once the encoders learn the op: then soundly)."""
    net = nets(op)["plain"]
    g = torch.Generator().manual_seed(0)
    dom = domains(net, 3, g)
    kind = OPS[op][0]().kind
    for method in OTHERS:
        try:
            lower = get_bounder(method).bound(net, dom).lower
        except (UnsupportedLayerError, BounderRefusal) as exc:
            assert kind in str(exc), (method, str(exc))
            continue
        assert method in ("krelu", "refinezono"), f"{method} bounded a network with {kind}"
        _, ylo, _ = observed(net, dom, g, 300)
        assert torch.all(lower <= ylo + tol(ylo)), method
