"""Mul and MatMul of two input-dependent tensors, and Softmax: IBP and CROWN-family bounds.

Hand-computed cases for each rule (the averaged McCormick planes, the square's tangent and
chord, the exact softmax interval), soundness on tiny attention-like IR networks (random
sub-boxes, dense samples and PGD points, slack 1e-5) for every CROWN-family method, and the
orders theory guarantees (CROWN >= IBP, strictly on attention; alpha-CROWN >= CROWN).
"""

from __future__ import annotations

import math

import pytest
import torch

from bab.bounding import Domains, get_bounder
from bab.bounding.interval.bilinear import matmul_interval, softmax_interval
from bab.bounding.polyhedra.crown import Crown
from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO

METHODS = ["ibp", "crown", "deeppoly", "fastlin", "crown-ibp", "alpha-crown"]
SLACK = 1e-5


def dag(spec: list[tuple[L.Layer, tuple[int, ...]]], input_shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32) -> Network:
    """A DAG network from ``(layer, inputs)`` pairs; shapes found by a forward pass."""
    vals: list[torch.Tensor] = []
    nodes = []
    x = torch.zeros(1, *input_shape, dtype=dtype)
    for layer, ins in spec:
        vals.append(layer.forward(*[x if i < 0 else vals[i] for i in ins]))
        nodes.append(L.Node(layer, ins, tuple(vals[-1].shape[1:])))
    n_out = math.prod(vals[-1].shape[1:])
    io = OnnxIO("x", (1, *input_shape), str(dtype).replace("torch.", ""), "y", (1, n_out), True)
    return Network(nodes, input_shape, tuple(vals[-1].shape[1:]), io, dtype=dtype)


def _pick(n_in: int, rows: list[int]) -> L.Gather:
    """A Gather selecting input coordinates ``rows`` (exact: a Linear would widen the box by
    its float rounding allowance, and a lower bound of exactly 0 would turn slightly negative)."""
    return L.Gather(torch.tensor(rows, dtype=torch.long), (len(rows),))


def attention(T: int = 3, d: int = 4, seed: int = 0, heads_scale: float = 0.5,
              dtype: torch.dtype = torch.float32) -> Network:
    """x [T, d] -> q, k, v (Linear); softmax(q k^T * s) v; flatten; Linear (3 outputs)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) / math.sqrt(s[-1])).to(dtype)
    spec = [(L.Linear(r(d, d), r(d)), (-1,)), (L.Linear(r(d, d), r(d)), (-1,)),
            (L.Linear(r(d, d), r(d)), (-1,)), (L.Transpose((1, 0)), (1,)),
            (L.MatMul(), (0, 3)),
            (L.ElementwiseAffine(torch.tensor(heads_scale, dtype=dtype), torch.tensor(0.0, dtype=dtype)), (4,)),
            (L.Softmax(-1), (5,)), (L.MatMul(), (6, 2)), (L.Reshape((T * d,)), (7,)),
            (L.Linear(r(3, T * d), r(3)), (8,))]
    return dag(spec, (T, d), dtype)


def attention_relu(seed: int = 1) -> Network:
    """Attention on axis 0 (softmax over the rows) then a Mul gate and a ReLU MLP head."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / math.sqrt(s[-1])
    spec = [(L.Linear(r(4, 3), r(4)), (-1,)),            # 0: [T=4, 4]
            (L.Linear(r(4, 3), r(4)), (-1,)),            # 1
            (L.Transpose((1, 0)), (1,)),                 # 2: [4, T]
            (L.MatMul(), (0, 2)),                        # 3: [T, T]
            (L.Softmax(0), (3,)),                        # 4: softmax over axis 0
            (L.MatMul(), (4, 0)),                        # 5: [T, 4]
            (L.Sigmoid(), (1,)),                         # 6
            (L.Mul(), (5, 6)),                           # 7: gate
            (L.Reshape((16,)), (7,)), (L.Linear(r(8, 16), r(8)), (8,)), (L.ReLU(), (9,)),
            (L.Linear(r(3, 8), r(3)), (10,))]
    return dag(spec, (4, 3))


def products() -> Network:
    """x in R^3: y = (x0 + x1) * (x0 - x1), z = (x1 + x2)^2 (one node feeding both operands)."""
    t = lambda v: torch.tensor(v)
    spec = [(L.Linear(t([[1.0, 1.0, 0.0]]), t([0.1])), (-1,)), (L.Linear(t([[1.0, -1.0, 0.0]]), t([0.0])), (-1,)),
            (L.Mul(), (0, 1)), (L.Linear(t([[0.0, 1.0, 1.0]]), t([-0.2])), (-1,)), (L.Mul(), (3, 3)),
            (L.Concat(0), (2, 4)), (L.Linear(t([[1.0, 0.5], [-1.0, 1.0]]), t([0.0, 0.3])), (5,))]
    return dag(spec, (3,))


# --- hand-computed cases -------------------------------------------------------------------


def _two_inputs(layer: L.Layer) -> Network:
    """x in R^2 -> layer(x0, x1) via two selecting Linear nodes."""
    return dag([(_pick(2, [0]), (-1,)), (_pick(2, [1]), (-1,)), (layer, (0, 1))], (2,))


def _plain(**kw) -> Crown:
    return Crown(final_ibp=False, **kw)


def _plane(net: Network, dom: Domains, node: int) -> tuple[list[float], float]:
    """Input coefficients and constant of CROWN's lower plane of node ``node`` (one row)."""
    from bab.bounding.polyhedra.backward import backward
    from bab.bounding.polyhedra.crown import _Ctx

    sweep = _plain().sweep(net, dom)
    A0 = torch.ones(1, 1, *net.nodes[node].out_shape)
    a_in, bias = backward(net, sweep.rules, _Ctx(sweep, None, None), node, A0)
    return a_in.flatten().tolist(), bias.item()


def test_mul_averaged_mccormick_hand_values() -> None:
    """x in [-1, 3], y in [-2, 1] (both of mixed sign): the averaged planes
    -0.5 x + y - 2.5 <= z <= -0.5 x + y + 3.5, so CROWN gives [-6, 5]; IBP [-6, 3]."""
    net = _two_inputs(L.Mul())
    dom = Domains(torch.tensor([[-1.0, -2.0]]), torch.tensor([[3.0, 1.0]]), torch.ones(1, 1, 1))
    ib = get_bounder("ibp").bound(net, dom)
    assert ib.lower.item() == pytest.approx(-6.0, abs=1e-4) and ib.upper.item() == pytest.approx(3.0, abs=1e-4)
    cr = _plain().bound(net, dom)
    assert cr.lower.item() == pytest.approx(-6.0, abs=1e-4) and cr.upper.item() == pytest.approx(5.0, abs=1e-4)
    assert cr.lower.item() <= -6.0 and cr.upper.item() >= 5.0  # widened outward, never inward
    coef, bias = _plane(net, dom, 2)
    assert coef == pytest.approx([-0.5, 1.0]) and bias == pytest.approx(-2.5, abs=1e-4)


def test_mul_nonnegative_operand_pair() -> None:
    """x in [1, 3] (non-negative), y in [-1, 2]: the McCormick pair exact along x = 1,
    -x + y + 1 <= z <= 2 x + y - 2, whose bounds over the box are IBP's [-3, 6]."""
    net = _two_inputs(L.Mul())
    dom = Domains(torch.tensor([[1.0, -1.0]]), torch.tensor([[3.0, 2.0]]), torch.ones(1, 1, 1))
    cr = _plain().bound(net, dom)
    assert cr.lower.item() == pytest.approx(-3.0, abs=1e-4) and cr.upper.item() == pytest.approx(6.0, abs=1e-4)
    coef, bias = _plane(net, dom, 2)
    assert coef == pytest.approx([-1.0, 1.0]) and bias == pytest.approx(1.0, abs=1e-4)


def test_square_tangent_and_chord() -> None:
    """x * x on [-1, 2] (one node, both operands): x - 0.25 <= x^2 <= x + 2, so CROWN gives
    [-1.25, 4], strictly tighter than IBP's corner interval [-2, 4]."""
    net = dag([(_pick(1, [0]), (-1,)), (L.Mul(), (0, 0))], (1,))
    dom = Domains(torch.tensor([[-1.0]]), torch.tensor([[2.0]]), torch.ones(1, 1, 1))
    ib = get_bounder("ibp").bound(net, dom)
    assert ib.lower.item() == pytest.approx(-2.0, abs=1e-4)
    cr = _plain().bound(net, dom)
    assert cr.lower.item() == pytest.approx(-1.25, abs=1e-4) and cr.upper.item() == pytest.approx(4.0, abs=1e-4)
    assert cr.lower.item() > ib.lower.item() + 0.7


def test_matmul_hand_values() -> None:
    """[a0, a1] @ [b0, b1]^T with a0 in [-1, 3], b0 in [-2, 1] (averaged planes: [-6, 5] as
    in the Mul case) and a1 in [0, 1], b1 in [2, 3] (non-negative a1: 2 a1 <= a1 b1 <= 3 a1,
    [0, 3]): CROWN [-6, 8]; IBP per term [-6, 3] + [0, 3] = [-6, 6]."""
    a = (torch.tensor([[[-1.0, 0.0]]]), torch.tensor([[[3.0, 1.0]]]))  # [1, 1, 2]
    b = (torch.tensor([[[-2.0], [2.0]]]), torch.tensor([[[1.0], [3.0]]]))  # [1, 2, 1]
    lo, hi = matmul_interval(a, b)
    assert lo.item() == -6.0 and hi.item() == 6.0
    net = dag([(_pick(4, [0, 1]), (-1,)), (L.Reshape((1, 2)), (0,)), (_pick(4, [2, 3]), (-1,)),
               (L.Reshape((2, 1)), (2,)), (L.MatMul(), (1, 3))], (4,))
    dom = Domains(torch.tensor([[-1.0, 0.0, -2.0, 2.0]]), torch.tensor([[3.0, 1.0, 1.0, 3.0]]),
                  torch.ones(1, 1, 1))
    cr = _plain().bound(net, dom)
    assert cr.lower.item() == pytest.approx(-6.0, abs=1e-4) and cr.upper.item() == pytest.approx(8.0, abs=1e-4)
    ib = get_bounder("ibp").bound(net, dom)
    assert ib.lower.item() == pytest.approx(-6.0, abs=1e-4) and ib.upper.item() == pytest.approx(6.0, abs=1e-4)
    coef, bias = _plane(net, dom, 4)
    assert coef == pytest.approx([-0.5, 2.0, 1.0, 0.0]) and bias == pytest.approx(-2.5, abs=1e-4)


def test_matmul_interval_chunking_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    al = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    bl = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    a, b = (al, al + torch.rand(al.shape, generator=g)), (bl, bl + torch.rand(bl.shape, generator=g))
    one = matmul_interval(a, b)
    chunked = matmul_interval(a, b, budget=50)
    assert torch.equal(one[0], chunked[0]) and torch.equal(one[1], chunked[1])
    x = a[0] + (a[1] - a[0]) * torch.rand(200, *al.shape, generator=g, dtype=torch.float64)
    y = b[0] + (b[1] - b[0]) * torch.rand(200, *bl.shape, generator=g, dtype=torch.float64)
    z = x @ y
    assert (z >= one[0] - 1e-12).all() and (z <= one[1] + 1e-12).all()


def test_softmax_interval_exact() -> None:
    """softmax([x, 0]) with x in [0, 1]: first entry in [1/2, sigmoid(1)], second in
    [1 - sigmoid(1), 1/2]; the IBP rule widens by a few ulps only."""
    x = (torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    lo, hi = softmax_interval(x, 1)
    s1 = 1 / (1 + math.exp(-1))
    assert lo.tolist()[0] == pytest.approx([0.5, 1 - s1], abs=1e-15)
    assert hi.tolist()[0] == pytest.approx([s1, 0.5], abs=1e-15)
    net = dag([(_pick(2, [0, 1]), (-1,)), (L.Softmax(0), (0,))], (2,))
    dom = Domains(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.eye(2)[None])
    ib = get_bounder("ibp").bound(net, dom)
    assert ib.lower.flatten().tolist() == pytest.approx([0.5, 1 - s1], abs=1e-5)
    assert (ib.lower.flatten() <= torch.tensor([0.5, 1 - s1])).all()
    cr = get_bounder("crown").bound(net, dom)
    assert cr.lower.flatten().tolist() == pytest.approx([0.5, 1 - s1], abs=1e-4)


def test_softmax_sum_to_one_is_used() -> None:
    """The sum of the softmax entries is 1: CROWN bounds it within 1e-4 (the rounding slack;
    IBP cannot)."""
    net = dag([(L.Linear(torch.randn(5, 3, generator=torch.Generator().manual_seed(3)), torch.zeros(5)), (-1,)),
               (L.Softmax(0), (0,))], (3,))
    dom = Domains(-torch.ones(1, 3), torch.ones(1, 3), torch.ones(1, 1, 5))
    cr = get_bounder("crown").bound(net, dom)
    ib = get_bounder("ibp").bound(net, dom)
    assert 1 - 1e-4 <= cr.lower.item() <= 1.0 <= cr.upper.item() <= 1 + 1e-4
    assert ib.lower.item() < 0.9


# --- soundness against samples and PGD -----------------------------------------------------


def _domains(net: Network, n: int, seed: int, width: float = 0.2) -> Domains:
    """``n`` random sub-boxes (half narrow) with 3 random clause rows each."""
    g = torch.Generator().manual_seed(seed)
    dt = net.dtype
    centre = torch.randn(n, net.n_inputs, generator=g, dtype=dt)
    rad = width * torch.rand(n, net.n_inputs, generator=g, dtype=dt)
    rad[::2] *= 0.1
    C = torch.randn(n, 3, net.n_outputs, generator=g, dtype=dt)
    return Domains(centre - rad, centre + rad, C)


def _pgd(net: Network, C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int = 8) -> torch.Tensor:
    """``n`` PGD-minimised inputs of ``min_rows C f(x)`` in the box."""
    x = lo + (hi - lo) * torch.rand(n, lo.numel(), dtype=lo.dtype)
    step = (hi - lo) / 10
    for it in range(30):
        x = x.detach().requires_grad_(True)
        obj = (net.forward(x) @ C.T).amin(1).sum()
        grad, = torch.autograd.grad(obj, x)
        x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
        if it % 10 == 9:
            step = step / 2
    return x.detach()


def _observed(net: Network, dom: Domains, n_samples: int) -> torch.Tensor:
    """Smallest ``C f(x)`` seen per domain and row (corners of the box included)."""
    out = torch.empty(dom.C.shape[:2], dtype=dom.C.dtype)
    for i in range(dom.size):
        lo, hi = dom.lower[i], dom.upper[i]
        x = torch.cat([lo[None], hi[None], lo + (hi - lo) * torch.rand(n_samples, lo.numel(), dtype=lo.dtype),
                       _pgd(net, dom.C[i], lo, hi)])
        with torch.no_grad():
            out[i] = (net.forward(x) @ dom.C[i].T).amin(0)
    return out


NETS = {"attention": attention, "attention_relu": attention_relu, "products": products,
        "attention_f64": lambda: attention(seed=5, dtype=torch.float64)}
_CACHE: dict = {}


def _case(name: str, n: int, n_samples: int, width: float = 0.2):
    key = (name, n, n_samples, width)
    if key not in _CACHE:
        torch.manual_seed(0)
        net = NETS[name]()
        dom = _domains(net, n, seed=len(name), width=width)
        _CACHE[key] = (net, dom, _observed(net, dom, n_samples))
    return _CACHE[key]


def _assert_sound(method: str, net: Network, dom: Domains, observed: torch.Tensor) -> torch.Tensor:
    b = get_bounder(method).bound(net, dom)
    lower = b.lower.detach()
    assert not torch.isnan(lower).any()
    bad = lower > observed + SLACK
    assert not bad.any(), f"{method}: bound exceeds observed by {(lower - observed)[bad].max():.3g}"
    return lower


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("method", METHODS)
def test_sound_on_bilinear_networks(name: str, method: str) -> None:
    net, dom, observed = _case(name, 6, 400)
    _assert_sound(method, net, dom, observed)


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_sound_on_wide_boxes(method: str) -> None:
    """Wide boxes (large logits, near-one-hot softmax): still sound, never NaN."""
    net, dom, observed = _case("attention", 4, 400, width=3.0)
    _assert_sound(method, net, dom, observed)


def test_upper_bounds_are_sound() -> None:
    net, dom, _ = _case("attention", 6, 400)
    neg = Domains(dom.lower, dom.upper, -dom.C)
    observed_max = -_observed(net, neg, 400)
    for method in ("ibp", "crown"):
        upper = get_bounder(method).bound(net, dom).upper
        assert (upper >= observed_max - SLACK).all(), method


def test_crown_tighter_than_ibp_on_attention() -> None:
    """CROWN >= IBP per row (theory, via the final interval), and strictly tighter on average."""
    net, dom, _ = _case("attention", 6, 400)
    ib = get_bounder("ibp").bound(net, dom).lower
    cr = get_bounder("crown").bound(net, dom).lower
    al = get_bounder("alpha-crown").bound(net, dom).lower
    assert (cr >= ib - 1e-6).all() and (al >= cr - 1e-6).all()
    assert (cr - ib).mean() > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("method", METHODS)
def test_sound_on_bilinear_networks_full(name: str, method: str) -> None:
    for width in (0.05, 0.5, 2.0):
        net, dom, observed = _case(name, 20, 3000, width)
        _assert_sound(method, net, dom, observed)


@pytest.mark.parametrize("flag", ["SOFTMAX_DIFFS", "SOFTMAX_SHIFT"])
def test_softmax_refinements_tighten(monkeypatch, flag: str) -> None:
    """CROWN bounds on the logit differences and the sum-to-one shift each tighten the
    attention network's bounds on average (both are sound either way)."""
    from bab.bounding.polyhedra import bilinear

    net, dom, observed = _case("attention", 6, 400)
    with_it = get_bounder("crown").bound(net, dom).lower
    monkeypatch.setattr(bilinear, flag, False)
    without = _assert_sound("crown", net, dom, observed)
    assert (with_it - without).mean() > 1e-3


@pytest.mark.slow
def test_sound_and_tighter_on_vit() -> None:
    """vit_2023 pgd_2_3_16: CROWN bounds on two sub-boxes of a property's box are finite,
    at least IBP's and below every sampled and PGD value."""
    from pathlib import Path

    import numpy as np

    import onnx_models
    import vnnlib

    root = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2024" / "vit_2023"
    if not (root / "onnx" / "pgd_2_3_16.onnx").is_file():
        pytest.skip("vit_2023 not present")
    torch.manual_seed(0)
    net = onnx_models.load(root / "onnx" / "pgd_2_3_16.onnx")
    region = vnnlib.parse_cached(root / "vnnlib" / "pgd_2_3_16_8835.vnnlib", net.n_inputs, net.n_outputs).regions[0]
    C = torch.tensor(np.concatenate([c.C for c in region.clauses]), dtype=torch.float32)
    lo, hi = (torch.tensor(v, dtype=torch.float32) for v in (region.lower, region.upper))
    start = torch.stack([lo, lo + (hi - lo) * 0.5 * torch.rand(lo.shape)])
    dom = Domains(start, start + (hi - lo) * 0.5, C.expand(2, *C.shape).contiguous())
    cr = get_bounder("crown").bound(net, dom).lower
    ib = get_bounder("ibp").bound(net, dom).lower
    assert torch.isfinite(cr).all() and (cr >= ib).all() and (cr - ib).mean() > 1.0
    observed = _observed(net, dom, 300)
    assert (cr <= observed + SLACK).all()
