"""CROWN family (crown, deeppoly, fastlin, alpha-crown): exact cases, soundness, tightness."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bab.bounding import BOUNDERS, Domains, UnsupportedLayerError, get_bounder
from bab.bounding.polyhedra.alpha import AlphaCrown, AlphaState
from bab.bounding.polyhedra.backward import make_registry
from bab.bounding.polyhedra.crown import Crown
from bab.bounding.polyhedra.relax import s_shaped_relax
from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO
from tests.irnets import chain, hand_221, random_mlp, small_cnn

METHODS = ["crown", "deeppoly", "fastlin", "alpha-crown"]
BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"


def _dom(lo, hi, C, phases=None, dtype=torch.float32) -> Domains:
    t = lambda v: torch.tensor(v, dtype=dtype)
    return Domains(t(lo), t(hi), t(C), phases or {})


def dag(spec: list[tuple[L.Layer, tuple[int, ...]]], input_shape: tuple[int, ...]) -> Network:
    """A DAG network from ``(layer, inputs)`` pairs; shapes found by a forward pass."""
    vals: list[torch.Tensor] = []
    nodes = []
    x = torch.zeros(1, *input_shape)
    for layer, ins in spec:
        vals.append(layer.forward(*[x if i < 0 else vals[i] for i in ins]))
        nodes.append(L.Node(layer, ins, tuple(vals[-1].shape[1:])))
    n_out = math.prod(vals[-1].shape[1:])
    io = OnnxIO("x", (1, *input_shape), "float32", "y", (1, n_out), True)
    return Network(nodes, input_shape, tuple(vals[-1].shape[1:]), io)


def residual_net(seed: int = 0) -> Network:
    """x -> A -> relu -> B -> (+ A x) -> relu -> D, with node A feeding two consumers."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / math.sqrt(s[-1])
    return dag([(L.Linear(r(8, 4), r(8)), (-1,)), (L.ReLU(), (0,)), (L.Linear(r(8, 8), r(8)), (1,)),
                (L.Add(), (2, 0)), (L.ReLU(), (3,)), (L.Linear(r(6, 8), r(6)), (4,)),
                (L.Tanh(), (5,)), (L.Linear(r(3, 6), r(3)), (6,))], (4,))


def zoo_cnn(seed: int = 0) -> Network:
    """Strided/dilated/grouped convs, cropping pad, padded overlapping max-pool, odd avg-pools."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / 3
    return chain([
        L.Conv2d(r(4, 2, 3, 3), r(4), (2, 2), (1, 1)),              # 2x9x9 -> 4x5x5
        L.ReLU(),
        L.Pad((1, 0, 1, 0), 0.5),                                   # 4x6x6
        L.Conv2d(r(4, 2, 2, 2), r(4), (1, 1), (1, 1), (2, 2), 2),   # dilated, grouped: 4x5x5
        L.ReLU(),
        L.MaxPool2d((3, 3), (2, 2), (1, 1)),                        # 4x3x3
        L.AvgPool2d((2, 2), (2, 2), (1, 1), count_include_pad=False),  # 4x2x2
        L.Pad((0, -1, 0, 0)),                                       # crop: 4x2x1
        L.ElementwiseAffine(torch.tensor([1.5, -1.0, 0.5, 2.0]).reshape(4, 1, 1), torch.tensor(0.1)),
        L.Reshape((8,)),
        L.Linear(r(6, 8), r(6)),
        L.Sigmoid(),
        L.Linear(r(3, 6), r(3)),
    ], (2, 9, 9))


NETS = {
    "mlp": lambda: random_mlp([5, 16, 16, 3], seed=1),
    "deep_mlp": lambda: random_mlp([4, 12, 12, 12, 12, 3], seed=2),
    "tanh_mlp": lambda: random_mlp([4, 10, 10, 3], seed=3, act=L.Tanh),
    "sigmoid_mlp": lambda: random_mlp([4, 10, 10, 3], seed=4, act=L.Sigmoid),
    "small_cnn": small_cnn,
    "residual": residual_net,
    "zoo_cnn": zoo_cnn,
}


def _random_domains(net: Network, N: int, seed: int, rad: float = 0.4, M: int = 4):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(N, net.n_inputs, generator=g) * 2 - 1
    r = rad * torch.rand(N, net.n_inputs, generator=g)
    C = torch.randn(N, M, net.n_outputs, generator=g)
    return Domains(centre - r, centre + r, C), g


def _samples(dom: Domains, n: int, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(dom.size, n, dom.lower.shape[1], generator=g)
    return dom.lower[:, None] + (dom.upper - dom.lower)[:, None] * u


def _cy(net: Network, C: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    N, S, n_in = x.shape
    with torch.no_grad():
        y = net.forward(x.reshape(-1, n_in)).reshape(N, S, -1)
    return torch.einsum("nmo,nso->nsm", C, y)


# --------------------------------------------------------------------------- exact cases

def test_hand_221_exact_by_hand() -> None:
    """x in [-1,1]^2, h = [x1+x2, x1-x2] in [-2,2]^2 (IBP exact), y = relu(h1) + relu(h2).

    Upper relaxation of each ReLU on [-2, 2]: slope u/(u-l) = 1/2, intercept -l*u/(u-l) = 1.
      upper(y)  <= (x1+x2)/2 + 1 + (x1-x2)/2 + 1 = x1 + 2          -> max over box: 3
    Lower slope, by method (the two ReLUs are tied: u = -l = 2):
      crown    (1 iff u >= -l: tie -> 1): y >= h1 + h2 = 2 x1       -> -2
      deeppoly (1 iff u >  -l: tie -> 0): y >= 0                    ->  0
      fastlin  (slope u/(u-l) = 1/2):     y >= (h1+h2)/2 = x1       -> -1
      alpha    (a1 h1 + a2 h2 with a in [0,1]^2; min over box is -|a1+a2|-|a1-a2|,
                best at a = 0)                                      ->  0
    For C = [[-1]]: lower(-y) = -upper(y) = -3, upper(-y) = -lower(y). With the default
    ``final_ibp`` the result is intersected with IBP's y in [0, 4].
    """
    net = hand_221()
    dom = _dom([[-1, -1]], [[1, 1]], [[[1.0], [-1.0]]])
    raw = {"crown": -2.0, "deeppoly": 0.0, "fastlin": -1.0}
    for method, lo in raw.items():
        b = Crown(method, final_ibp=False).bound(net, dom)
        assert b.lower[0].tolist() == pytest.approx([lo, -3.0], abs=2e-5)
        assert b.upper[0].tolist() == pytest.approx([3.0, -lo], abs=2e-5)
        b = get_bounder(method).bound(net, dom)
        assert b.lower[0].tolist() == pytest.approx([max(lo, 0.0), -3.0], abs=2e-5)
        assert b.upper[0].tolist() == pytest.approx([3.0, min(-lo, 0.0)], abs=2e-5)
    b = AlphaCrown(final_ibp=False, iterations=100, patience=100).bound(net, dom)
    assert b.lower[0].tolist() == pytest.approx([0.0, -3.0], abs=2e-5)


def test_hand_221_fixed_phases() -> None:
    """h1 fixed inactive, h2 fixed active: y = h2 = x1 - x2 exactly; box bound [-2, 2];
    IBP's clipped h2 in [0, 2] tightens the lower bound to 0 by default."""
    net = hand_221()
    phases = {1: torch.tensor([[-1, 1]])}
    dom = _dom([[-1, -1]], [[1, 1]], [[[1.0]]], phases)
    b = Crown("crown", final_ibp=False).bound(net, dom)
    assert b.lower.tolist() == [[pytest.approx(-2.0, abs=2e-5)]] and b.upper.tolist() == [[pytest.approx(2.0, abs=2e-5)]]
    b = get_bounder("crown").bound(net, dom)
    assert b.lower.tolist() == [[pytest.approx(0.0, abs=2e-5)]] and b.upper.tolist() == [[pytest.approx(2.0, abs=2e-5)]]


def test_intermediate_bounds_reported() -> None:
    net = hand_221()
    b = get_bounder("crown").bound(net, _dom([[-1, -1]], [[1, 1]], [[[1.0]]]))
    assert b.intermediate[0][0][0].tolist() == pytest.approx([-2.0, -2.0], abs=2e-5)
    assert b.intermediate[0][1][0].tolist() == pytest.approx([2.0, 2.0], abs=2e-5)


def _reference_crown(net: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Textbook dense CROWN for one domain of a Linear/ReLU chain (float64, adaptive slope).

    Same conventions as ours: interval bounds from the tightened previous layer, CROWN values
    taken for the neurons that interval calls unstable, final bound not intersected.
    """
    lins = [n.layer for n in net.nodes if isinstance(n.layer, L.Linear)]
    W, b = [m.weight.double() for m in lins], [m.bias.double() for m in lins]
    relax: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def back(A: torch.Tensor, k: int) -> torch.Tensor:
        bias, A = A @ b[k], A @ W[k]
        for j in reversed(range(k)):
            lw, uw, ub = relax[j]
            bias = bias + A.clamp(max=0) @ ub
            A = A.clamp(min=0) * lw + A.clamp(max=0) * uw
            bias, A = bias + A @ b[j], A @ W[j]
        return A @ ((lo + hi) / 2) - A.abs() @ ((hi - lo) / 2) + bias

    a_lo, a_hi = lo, hi
    for k in range(len(W) - 1):
        mid, rad = W[k] @ ((a_lo + a_hi) / 2) + b[k], W[k].abs() @ ((a_hi - a_lo) / 2)
        l, u = mid - rad, mid + rad
        eye = torch.eye(len(l), dtype=torch.float64)
        cl, cu = back(eye, k), -back(-eye, k)
        unstable = (l < 0) & (u > 0)
        l, u = torch.where(unstable, torch.maximum(l, cl), l), torch.where(unstable, torch.minimum(u, cu), u)
        unstable = (l < 0) & (u > 0)
        slope = torch.where(unstable, u / (u - l), (l >= 0).double())
        lw = torch.where(unstable, (u >= -l).double(), (l >= 0).double())
        relax.append((lw, slope, torch.where(unstable, -l * slope, torch.zeros_like(l))))
        a_lo, a_hi = l.clamp(min=0), u.clamp(min=0)
    return back(C, len(W) - 1)


@pytest.mark.parametrize("name", ["mlp", "deep_mlp"])
def test_matches_dense_reference(name: str) -> None:
    net = NETS[name]()
    dom, _ = _random_domains(net, N=4, seed=8, rad=0.8)
    d64 = Domains(dom.lower.double(), dom.upper.double(), dom.C.double())
    got = Crown("crown", final_ibp=False, memory_elements=200).bound(net, d64).lower
    for n in range(dom.size):
        want = _reference_crown(net, d64.lower[n], d64.upper[n], d64.C[n])
        assert torch.allclose(got[n], want, atol=1e-9), (got[n], want)


# --------------------------------------------------------------------------- soundness

@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("method", METHODS)
def test_sound_on_samples(name: str, method: str) -> None:
    net = NETS[name]()
    dom, g = _random_domains(net, N=5, seed=sorted(NETS).index(name))
    b = get_bounder(method).bound(net, dom)
    cy = _cy(net, dom.C, _samples(dom, 2000, g))
    assert torch.all(b.lower <= cy.amin(1) + 1e-5)
    assert torch.all(b.upper >= cy.amax(1) - 1e-5)
    for idx, (lo, hi) in b.intermediate.items():  # every node interval holds too
        assert lo.shape[0] == dom.size and torch.all(lo <= hi + 1e-5)


@pytest.mark.parametrize("name", ["mlp", "residual", "zoo_cnn", "small_cnn"])
def test_sound_variants(name: str) -> None:
    """IBP intermediate bounds, float64, tiny memory budget (many chunks), optimised intermediates."""
    net = NETS[name]()
    dom, g = _random_domains(net, N=3, seed=7)
    cy = _cy(net, dom.C, _samples(dom, 2000, g)).amin(1)
    bounders = [Crown("crown", intermediate="ibp"), Crown("fastlin", dtype="float64"),
                Crown("crown", memory_elements=64), AlphaCrown(optimize_intermediate=True, iterations=5)]
    for bounder in bounders:
        b = bounder.bound(net, dom)
        assert b.lower.dtype == (torch.float64 if bounder.dtype else torch.float32)
        assert torch.all(b.lower.float() <= cy + 1e-5), bounder.__dict__


def _phased(net: Network, dom: Domains, g: torch.Generator, x: torch.Tensor):
    """Random phases consistent with one sample per domain; mask of consistent samples."""
    N, S, n_in = x.shape
    vals = net.forward_all(x.reshape(-1, n_in))
    phases, keep = {}, torch.ones(N, S, dtype=torch.bool)
    for idx, node in enumerate(net.nodes):
        if not isinstance(node.layer, L.ReLU):
            continue
        pre = vals[node.inputs[0]].reshape(N, S, *node.out_shape)
        ref = torch.where(pre[:, 0] >= 0, 1, -1)
        pick = torch.rand(ref.shape, generator=g) < 0.4
        phase = torch.where(pick, ref, torch.zeros_like(ref))
        phases[idx] = phase
        ok = ((phase[:, None] > 0) & (pre < 0)) | ((phase[:, None] < 0) & (pre > 0))
        keep &= ~ok.flatten(2).any(-1)
    return Domains(dom.lower, dom.upper, dom.C, phases), keep


@pytest.mark.parametrize("name", ["mlp", "deep_mlp", "residual", "small_cnn", "zoo_cnn"])
@pytest.mark.parametrize("method", METHODS)
def test_sound_with_fixed_phases(name: str, method: str) -> None:
    net = NETS[name]()
    dom, g = _random_domains(net, N=4, seed=11)
    x = _samples(dom, 2000, g)
    pdom, keep = _phased(net, dom, g, x)
    assert keep[:, 0].all()
    b = get_bounder(method).bound(net, pdom)
    cy = _cy(net, dom.C, x)
    inf = torch.tensor(float("inf"))
    assert torch.all(b.lower <= torch.where(keep[..., None], cy, inf).amin(1) + 1e-5)
    assert torch.all(b.upper >= torch.where(keep[..., None], cy, -inf).amax(1) - 1e-5)


def test_phases_change_the_bound() -> None:
    """Fixing every ReLU to the phase of one point makes the net affine: bounds tighten."""
    net = NETS["mlp"]()
    dom, g = _random_domains(net, N=2, seed=3)
    free = get_bounder("crown").bound(net, dom)
    x = _samples(dom, 1, g)
    vals = net.forward_all(x.reshape(-1, net.n_inputs))
    phases = {i: torch.where(vals[n.inputs[0]] >= 0, 1, -1) for i, n in enumerate(net.nodes)
              if isinstance(n.layer, L.ReLU)}
    fixed = get_bounder("crown").bound(net, Domains(dom.lower, dom.upper, dom.C, phases))
    assert torch.all(fixed.lower >= free.lower - 1e-6) and torch.any(fixed.lower > free.lower + 1e-3)


@pytest.mark.parametrize("kind", [L.Sigmoid, L.Tanh])
def test_s_shaped_relaxation_sound_and_touching(kind) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3000, generator=g, dtype=torch.float64) * 4
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    l[:20] = u[:20]
    l[20:40] = u[20:40] - 1e-6
    r = s_shaped_relax(kind, l[:, None].float(), u[:, None].float())
    x = l[:, None] + (u - l)[:, None] * torch.linspace(0, 1, 801, dtype=torch.float64)
    fx = kind().forward(x)
    lw, lb, uw, ub = (v.reshape(-1, 1).double() for v in (r.lw, r.lb, r.uw, r.ub))
    low, up = fx - (lw * x + lb), (uw * x + ub) - fx
    assert low.min() >= -1e-9 and up.min() >= -1e-9
    assert low.amin(1).max() < 1e-5 and up.amin(1).max() < 1e-5  # each line touches f


# --------------------------------------------------------------------------- tightness

@pytest.mark.parametrize("name", list(NETS))
def test_tightness_order(name: str) -> None:
    net = NETS[name]()
    dom, _ = _random_domains(net, N=5, seed=5)
    ibp = get_bounder("ibp").bound(net, dom)
    crown = get_bounder("crown").bound(net, dom)
    alpha = get_bounder("alpha-crown").bound(net, dom)
    assert torch.all(crown.lower >= ibp.lower - 1e-6) and torch.all(crown.upper <= ibp.upper + 1e-6)
    assert torch.all(alpha.lower >= crown.lower - 1e-6)
    for idx, (lo, hi) in crown.intermediate.items():
        assert torch.all(lo >= ibp.intermediate[idx][0] - 1e-6)
        assert torch.all(hi <= ibp.intermediate[idx][1] + 1e-6)


def test_crown_beats_ibp_on_deep_net() -> None:
    net = NETS["deep_mlp"]()
    dom, _ = _random_domains(net, N=4, seed=1)
    ibp, crown = (get_bounder(m).bound(net, dom).lower for m in ("ibp", "crown"))
    assert (crown - ibp).mean() > 0.1


def test_alpha_warm_start_and_state() -> None:
    net = NETS["deep_mlp"]()
    dom, _ = _random_domains(net, N=3, seed=2)
    bounder = AlphaCrown(iterations=15)
    first = bounder.bound(net, dom)
    assert isinstance(first.state, AlphaState) and first.state.alphas
    for key, a in first.state.alphas.items():
        assert key[0] == "final" and a.shape[:2] == (3, 4) and a.min() >= 0 and a.max() <= 1
    again = AlphaCrown(iterations=1).bound(net, dom, state=first.state)
    assert torch.all(again.lower >= first.lower - 1e-5)
    idx = torch.tensor([0, 0, 2])
    child = Domains(dom.lower[idx], dom.upper[idx], dom.C[idx])
    warm = AlphaCrown(iterations=1).bound(net, child, state=first.state.select(idx))
    assert torch.all(warm.lower >= first.lower[idx] - 1e-5)
    mismatched = AlphaCrown(iterations=1).bound(net, child, state=first.state)  # wrong N: ignored
    assert mismatched.lower.shape == (3, 4)


def test_alpha_time_and_iteration_budget() -> None:
    net = NETS["deep_mlp"]()
    dom, _ = _random_domains(net, N=2, seed=2)
    crown = get_bounder("crown").bound(net, dom).lower
    for bounder in (AlphaCrown(iterations=0), AlphaCrown(time_limit=0.0)):
        assert torch.all(bounder.bound(net, dom).lower >= crown - 1e-6)


# --------------------------------------------------------------------------- rules and API

def _vjp(layer: L.Layer, in_shape, A: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(A.shape[0] * A.shape[1], *in_shape, dtype=torch.float64)
    out = torch.func.vjp(layer.forward, x)[1](A.reshape(-1, *A.shape[2:]))[0]
    return out.reshape(*A.shape[:2], *in_shape)


_G = torch.Generator().manual_seed(0)
_r = lambda *s: torch.randn(*s, generator=_G, dtype=torch.float64)
AFFINE_CASES = [
    (L.Conv2d(_r(3, 2, 3, 3), _r(3), (2, 2), (1, 1)), (2, 8, 7)),
    (L.Conv2d(_r(4, 1, 2, 3), _r(4), (3, 2), (0, 1), (2, 1), 2), (2, 9, 8)),
    (L.AvgPool2d((3, 3), (2, 2), (1, 1)), (2, 7, 8)),
    (L.AvgPool2d((2, 2), (2, 2), (1, 1), count_include_pad=False), (2, 5, 5)),
    (L.AvgPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True), (1, 5, 5)),
    (L.Pad((1, -1, 2, 0)), (2, 4, 4)),
    (L.Transpose((2, 0, 1)), (2, 3, 4)),
    (L.ElementwiseAffine(_r(3, 1, 1), torch.zeros(1, dtype=torch.float64)), (3, 2, 2)),
]


@pytest.mark.parametrize("layer,in_shape", AFFINE_CASES)
def test_affine_rules_are_exact_transposes(layer: L.Layer, in_shape) -> None:
    out_shape = tuple(layer.forward(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    A = torch.randn(2, 3, *out_shape, dtype=torch.float64)

    class Ctx:
        def in_shape(self, idx, k=0):
            return in_shape

    (got,), _ = make_registry("crown").rule(layer)(Ctx(), 0, layer, A)
    assert got.shape == (2, 3, *in_shape)
    assert torch.allclose(got, _vjp(layer, in_shape, A), atol=1e-10)


def test_unknown_layer_and_names() -> None:
    class Weird(L.Layer):
        def forward(self, x):
            return x

    net = chain([Weird()], (2,))
    for method in METHODS:
        with pytest.raises(UnsupportedLayerError, match=f"'{method}'.*Weird"):
            get_bounder(method).bound(net, _dom([[0, 0]], [[1, 1]], [[[1.0, 0.0]]]))
    assert set(METHODS) <= set(BOUNDERS)
    assert all(get_bounder(m).name == m for m in BOUNDERS)
    with pytest.raises(ValueError, match="intermediate"):
        Crown(intermediate="lp")


def test_config_accepts_methods() -> None:
    from bab.config import from_dict

    for method in METHODS:
        assert from_dict({"verify": {"method": method}}).verify.method == method


def test_float64_domains_and_no_grad_caller() -> None:
    net = NETS["residual"]()
    dom, _ = _random_domains(net, N=2, seed=9)
    d64 = Domains(dom.lower.double(), dom.upper.double(), dom.C.double())
    with torch.no_grad():
        for method in METHODS:
            b = get_bounder(method).bound(net, d64)
            assert b.lower.dtype == torch.float64
    b64 = get_bounder("crown").bound(net, d64).lower
    assert torch.allclose(b64.float(), get_bounder("crown").bound(net, dom).lower, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    net = NETS["zoo_cnn"]()
    dom, _ = _random_domains(net, N=3, seed=4)
    cpu = Crown("crown", dtype="float64").bound(net, dom).lower
    gpu = Crown("crown", dtype="float64", device="cuda").bound(net, dom).lower
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-8)


# --------------------------------------------------------------------------- shared benchmarks

BENCH_CASES = [
    ("mnistfc/mnist-net_256x2.onnx", "mnistfc/prop_0_0.03.vnnlib"),
    ("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_2.vnnlib"),
    ("eran/nets/ffnnSIGMOID__Point_6x200.onnx", "eran/specs/mnist/mnist_spec_idx_7167_eps_0.01200.vnnlib"),
    ("verivital/Convnet_maxpool.onnx", "verivital/specs/maxpool_specs/prop_0_0.004.vnnlib"),
    ("verivital/Convnet_avgpool.onnx", "verivital/specs/avgpool_specs/prop_0_0.02.vnnlib"),
    ("oval21/nets/cifar_base_kw.onnx", "oval21/vnnlib/cifar_base_kw-img4549-eps0.00392156862745098.vnnlib"),
]


@pytest.mark.parametrize("net_path,spec_path", BENCH_CASES, ids=[c[0].split("/")[-1] for c in BENCH_CASES])
def test_shared_benchmarks_sound(net_path: str, spec_path: str) -> None:
    if not (BENCH / net_path).is_file() or not (BENCH / spec_path).is_file():
        pytest.skip("shared vnncomp2021 benchmarks not present")
    import onnx_models
    import vnnlib

    net = onnx_models.load(BENCH / net_path)
    region = vnnlib.parse(BENCH / spec_path).regions[0]
    C = torch.tensor(np.concatenate([c.C for c in region.clauses]), dtype=torch.float32)
    lo, hi = (torch.tensor(v, dtype=torch.float32) for v in (region.lower, region.upper))
    g = torch.Generator().manual_seed(0)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    shift = (torch.rand(lo.shape, generator=g) * 2 - 1) * rad * 0.7
    sub_lo, sub_hi = torch.maximum(lo, mid + shift - 0.3 * rad), torch.minimum(hi, mid + shift + 0.3 * rad)
    dom = Domains(torch.stack([lo, sub_lo]), torch.stack([hi, sub_hi]), C.expand(2, *C.shape))
    cy = _cy(net, dom.C, _samples(dom, 500, g)).amin(1)
    bounders = [get_bounder(m) for m in ["ibp", "crown", "deeppoly", "fastlin"]] + [AlphaCrown(iterations=8)]
    for bounder in bounders:
        b = bounder.bound(net, dom)
        assert torch.all(b.lower <= cy + 1e-5), bounder.name
