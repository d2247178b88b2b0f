"""The Wong-Kolter dual network (``wk``) and CROWN-IBP (``crown-ibp``): exact cases, the
dual/Fast-Lin equality, soundness against samples and PGD, unsupported ops, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bab.bounding import Domains, UnsupportedLayerError, get_bounder
from bab.bounding.duality.wk import RULES, DualNet, DualSweep, WongKolter, dual_nodes
from bab.bounding.interval.ibp import IBP
from bab.bounding.polyhedra.crown import Crown, Options, Sweep, plan_for, prepare
from bab.bounding.polyhedra.relax import POLICIES
from onnx_models import layers as L
from onnx_models.network import Network
from tests.builders import mlp_onnx, robustness_output, run_bab, write_property
from tests.irnets import chain, random_mlp
from tests.test_bounding_crown import _cy, _phased, _random_domains, _samples, dag
from tests.test_bounding_soundness import _pgd

t = torch.tensor


def one_unstable_221() -> Network:
    """x in R^2 -> h = [x1+x2, x1-x2+2] -> ReLU -> y = relu(h1) - relu(h2)."""
    return chain([L.Linear(t([[1.0, 1.0], [1.0, -1.0]]), t([0.0, 2.0])), L.ReLU(),
                  L.Linear(t([[1.0, -1.0]]), t([0.0]))], (2,))


def residual_relu(seed: int = 0) -> Network:
    """Two residual Adds (one from a hidden node, one from the network input), ReLU only."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / math.sqrt(s[-1])
    return dag([(L.Linear(r(8, 4), r(8)), (-1,)), (L.ReLU(), (0,)), (L.Linear(r(8, 8), r(8)), (1,)),
                (L.Add(), (2, 0)), (L.ReLU(), (3,)), (L.Linear(r(4, 8), r(4)), (4,)),
                (L.Add(), (5, -1)), (L.ReLU(), (6,)), (L.Linear(r(3, 4), r(3)), (7,))], (4,))


def conv_net(seed: int = 0) -> Network:
    """Every op of the paper's framework: scale, pad, strided/grouped convs, avg-pool with a
    border divisor, transpose, flatten, linear."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / 3
    return chain([
        L.ElementwiseAffine(t([1.5, -1.0]).reshape(2, 1, 1), t(0.1)),
        L.Pad((1, 0, 1, 0), 0.5),                                 # 2x9x9
        L.Conv2d(r(4, 2, 3, 3), r(4), (2, 2), (1, 1)),            # 4x5x5
        L.ReLU(),
        L.AvgPool2d((2, 2), (1, 1), (1, 1), count_include_pad=False),  # 4x6x6
        L.Conv2d(r(4, 2, 3, 3), r(4), (2, 2), (0, 0), (1, 1), 2),  # 4x2x2
        L.ReLU(),
        L.Transpose((0, 2, 1)),
        L.Reshape((16,)),
        L.Linear(r(6, 16), r(6)),
        L.ReLU(),
        L.Linear(r(3, 6), r(3)),
    ], (2, 8, 8))


NETS = {
    "mlp": lambda: random_mlp([5, 16, 16, 3], seed=1),
    "deep_mlp": lambda: random_mlp([4, 12, 12, 12, 12, 3], seed=2),
    "residual": residual_relu,
    "conv": conv_net,
}


def _dom64(dom: Domains) -> Domains:
    return Domains(dom.lower.double(), dom.upper.double(), dom.C.double(), dom.phases)


def _maybe_phased(net: Network, phased: bool, seed: int, N: int = 4, dtype=torch.float32):
    """Random domains (optionally with phases consistent with their first sample), samples,
    and the mask of samples consistent with the phases."""
    dom, g = _random_domains(net, N=N, seed=seed)
    x = _samples(dom, 2000, g)
    keep = torch.ones(x.shape[:2], dtype=torch.bool)
    if phased:
        dom, keep = _phased(net, dom, g, x)
    if dtype == torch.float64:
        dom = _dom64(dom)
    return dom, x, keep


# --------------------------------------------------------------------------- exact cases

def test_one_unstable_relu_by_hand() -> None:
    """Dual network of y = relu(x1+x2) - relu(x1-x2+2) (J from Theorem 1 with W1, b1, W2, b2=0).

    Domain A: x in [-1,1]^2 (centre 0, radius 1): h1 in [-2,2] unstable, d1 = 2/4 = 1/2;
    h2 in [0,4] active, d2 = 1 (the first layer's interval is exact).
      c = +1: nu3 = -1, nu^2 = W2^T nu3 = [-1, 1], nu2 = D nu^2 = [-1/2, 1],
              nu^1 = W1^T nu2 = [1/2, -3/2].
              J = -nu2.b1 - nu^1.x^ - |nu^1|.r + l1 [nu21]_+ = -2 - 0 - 2 + (-2)(0) = -4.
      c = -1: nu2 = [1/2, -1], nu^1 = [-1/2, 3/2]: J = 2 - 0 - 2 + (-2)(1/2) = -1
              (so y <= 1).
    Domain B: x1 in [0,1], x2 in [-2,1] (centre (1/2,-1/2), radius (1/2,3/2)): h1 in [-2,2],
    h2 in [1,5]; the same nu. c = +1: J = -2 - (1/4 + 3/4) - (1/4 + 9/4) + 0 = -5.5;
    c = -1: J = 2 + 1 - 2.5 - 1 = -0.5.
    """
    dom = Domains(t([[-1.0, -1.0], [0.0, -2.0]]), t([[1.0, 1.0], [1.0, 1.0]]), t([[[1.0], [-1.0]]] * 2))
    b = WongKolter().bound(one_unstable_221(), dom)
    assert b.lower.tolist() == [[pytest.approx(-4.0, abs=2e-5), pytest.approx(-1.0, abs=2e-5)],
                                [pytest.approx(-5.5, abs=2e-5), pytest.approx(-0.5, abs=2e-5)]]
    assert torch.allclose(b.upper, -b.lower.flip(1), atol=2e-5)
    assert b.intermediate[0][0].flatten().tolist() == pytest.approx([-2.0, 0.0, -2.0, 1.0], abs=2e-5)
    assert b.intermediate[0][1].flatten().tolist() == pytest.approx([2.0, 4.0, 2.0, 5.0], abs=2e-5)


def test_fixed_phase_by_hand() -> None:
    """Fix h1 inactive on x in [-1,1]^2: D = diag(0, 1), y = -(x1 - x2 + 2) exactly in [-4, 0].
    c = +1: nu2 = [0, 1], nu^1 = [1, -1]: J = -2 - 2 = -4; c = -1: J = 2 - 2 = 0."""
    dom = Domains(t([[-1.0, -1.0]]), t([[1.0, 1.0]]), t([[[1.0], [-1.0]]]), {1: t([[-1, 0]])})
    b = WongKolter().bound(one_unstable_221(), dom)
    assert b.lower[0].tolist() == pytest.approx([-4.0, 0.0], abs=1e-6)


def test_dual_of_first_layer_is_its_interval() -> None:
    """Theorem 1 on a single affine layer is the closed form of Algorithm 1's first step."""
    net = NETS["conv"]()
    dom, _ = _random_domains(net, N=3, seed=4)
    dom = _dom64(dom)
    net64, dom = prepare(net, dom)
    sw = DualSweep(net64, dom, {}, 1 << 20).run()
    assert 2 not in dual_nodes(net) and 5 in dual_nodes(net)
    lo, hi = sw.node_bounds(2)
    assert torch.allclose(lo, sw.boxes[2][0], atol=1e-10) and torch.allclose(hi, sw.boxes[2][1], atol=1e-10)


_G = torch.Generator().manual_seed(0)
_r = lambda *s: torch.randn(*s, generator=_G, dtype=torch.float64)
AFFINE_CASES = [
    (L.Linear(_r(3, 5), _r(3)), (5,)),
    (L.Linear(_r(3, 4), _r(3)), (2, 4)),
    (L.Conv2d(_r(3, 2, 3, 3), _r(3), (2, 2), (1, 1)), (2, 8, 7)),
    (L.Conv2d(_r(4, 1, 2, 3), _r(4), (3, 2), (0, 1), (2, 1), 2), (2, 9, 8)),
    (L.AvgPool2d((3, 3), (2, 2), (1, 1)), (2, 7, 8)),
    (L.AvgPool2d((2, 2), (2, 2), (1, 1), count_include_pad=False), (2, 5, 5)),
    (L.AvgPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True), (1, 5, 5)),
    (L.Pad((1, -1, 2, 0), 0.7), (2, 4, 4)),
    (L.Transpose((2, 0, 1)), (2, 3, 4)),
    (L.Reshape((12,)), (3, 2, 2)),
    (L.ElementwiseAffine(_r(3, 1, 1), _r(1, 2, 1)), (3, 2, 2)),
    (L.ElementwiseAffine(_r(1), _r(2, 1)), (3, 2, 2)),
]


@pytest.mark.parametrize("layer,in_shape", AFFINE_CASES, ids=lambda v: getattr(v, "kind", str(v)))
def test_affine_dual_rules(layer: L.Layer, in_shape) -> None:
    """Each affine layer ``z -> J z + β`` (``β = layer(0)``) has dual ``ν̂ = J^T ν`` and
    objective term ``-ν·β`` (``J`` from autograd on the layer's own forward)."""
    net = chain([layer], in_shape, dtype=torch.float64)
    out_shape = net.nodes[0].out_shape
    nu = _r(2, 3, *out_shape)
    z = torch.zeros(1, *in_shape, dtype=torch.float64, requires_grad=True)
    y = layer.forward(z)
    want = torch.stack([torch.autograd.grad(y, z, nu[i, j][None], retain_graph=True)[0][0]
                        for i in range(2) for j in range(3)]).reshape(2, 3, *in_shape)
    (got,), term = RULES.rule(layer)(DualNet(net), 0, layer, nu)
    assert got.shape == (2, 3, *in_shape) and torch.allclose(got, want, atol=1e-10)
    beta = y.detach()[0]
    want_term = -(nu * beta).flatten(2).sum(-1)
    assert torch.allclose(torch.zeros(2, 3, dtype=torch.float64) if term is None else term,
                          want_term, atol=1e-10)


# --------------------------------------------------------------------------- dual == Fast-Lin

def _fastlin_on(net: Network, dom: Domains, boxes: dict) -> tuple[Sweep, torch.Tensor]:
    """Fast-Lin's plain final pass (no IBP intersection) on exactly the node intervals ``boxes``
    (lower bounds of ``[C; -C] f(x)``)."""
    net, dom = prepare(net, dom)
    fl = Crown("fastlin")
    sw = Sweep(net, plan_for(net), dom, fl.rules, POLICIES["fastlin"],
               Options(intermediate="ibp", final_ibp=False))
    sw.boxes = [boxes[i] for i in range(len(net.nodes))]
    return sw, sw.final(torch.cat([dom.C, -dom.C], 1))


@pytest.mark.parametrize("phased", [False, True])
@pytest.mark.parametrize("name", list(NETS))
def test_equals_fastlin_with_same_intermediate_bounds(name: str, phased: bool) -> None:
    """Three sets of shared intermediate bounds: Fast-Lin's own, IBP's, and the dual network's
    (the last is the default ``wk`` bound itself)."""
    net = NETS[name]()
    dom, _, _ = _maybe_phased(net, phased, seed=13, dtype=torch.float64)
    M = dom.C.shape[1]
    fl = Crown("fastlin", final_ibp=False).bound(net, dom)
    wk = WongKolter().bound(net, dom, intermediate=fl.intermediate)
    assert torch.allclose(wk.lower, fl.lower, atol=1e-6) and torch.allclose(wk.upper, fl.upper, atol=1e-6)
    fl_ibp = Crown("fastlin", intermediate="ibp", final_ibp=False).bound(net, dom)
    ibp = IBP().bound(*prepare(net, dom)).intermediate  # IBP runs in the network's dtype
    wk_ibp = WongKolter().bound(net, dom, intermediate=ibp)
    assert torch.allclose(wk_ibp.lower, fl_ibp.lower, atol=1e-6)
    own = WongKolter().bound(net, dom)  # the default wk bound, on its own dual intervals
    _, out = _fastlin_on(net, dom, own.intermediate)
    assert torch.allclose(own.lower, out[:, :M], atol=1e-6)
    assert torch.allclose(own.upper, -out[:, M:], atol=1e-6)


def test_equals_fastlin_in_float32() -> None:
    net = NETS["deep_mlp"]()
    dom, _ = _random_domains(net, N=4, seed=3)
    fl = Crown("fastlin", final_ibp=False).bound(net, dom)
    wk = WongKolter().bound(net, dom, intermediate=fl.intermediate)
    assert wk.lower.dtype == torch.float32
    assert torch.allclose(wk.lower, fl.lower, atol=1e-4, rtol=1e-5)


def test_intermediate_bounds_are_the_dual_networks() -> None:
    """A ReLU input past the first layer is bounded by the dual network of its prefix: the
    same numbers as Fast-Lin's back-substitution from that node on the same earlier bounds."""
    net = NETS["deep_mlp"]()
    dom = _dom64(_random_domains(net, N=3, seed=6)[0])
    own = WongKolter().bound(net, dom).intermediate
    sw, _ = _fastlin_on(net, dom, own)
    assert dual_nodes(net) == {2, 4, 6}
    for idx in sorted(dual_nodes(net)):
        n = math.prod(net.nodes[idx].out_shape)
        eye = torch.eye(n, dtype=torch.float64).expand(dom.size, n, n)
        assert torch.allclose(sw.lower(idx, eye), own[idx][0].flatten(1), atol=1e-6)
        assert torch.allclose(-sw.lower(idx, -eye), own[idx][1].flatten(1), atol=1e-6)


# --------------------------------------------------------------------------- soundness

def _pgd_points(net: Network, dom: Domains) -> torch.Tensor:
    """10 PGD-minimised inputs per domain (``[N, 10, n_in]``)."""
    torch.manual_seed(0)
    return torch.stack([_pgd(net, dom.C[i], dom.lower[i], dom.upper[i]) for i in range(dom.size)])


def _keep(net: Network, dom: Domains, x: torch.Tensor) -> torch.Tensor:
    """Mask ``[N, S]`` of inputs consistent with the domains' fixed phases."""
    N, S, n_in = x.shape
    with torch.no_grad():
        vals = net.forward_all(x.reshape(-1, n_in))
    keep = torch.ones(N, S, dtype=torch.bool)
    for r, ph in dom.phases.items():
        z = vals[net.nodes[r].inputs[0]].reshape(N, S, -1)
        ph = ph.reshape(N, 1, -1)
        keep &= ~(((ph > 0) & (z < 0)) | ((ph < 0) & (z > 0))).any(-1)
    return keep


@pytest.mark.parametrize("phased", [False, True])
@pytest.mark.parametrize("name", list(NETS))
def test_sound_on_samples_and_pgd(name: str, phased: bool) -> None:
    net = NETS[name]()
    dom, x, _ = _maybe_phased(net, phased, seed=sorted(NETS).index(name))
    x = torch.cat([x, _pgd_points(net, dom)], 1)
    keep = _keep(net, dom, x)
    assert keep[:, 0].all()
    b = WongKolter().bound(net, dom)
    cy = _cy(net, dom.C, x)
    inf = torch.tensor(float("inf"))
    assert torch.all(b.lower <= torch.where(keep[..., None], cy, inf).amin(1) + 1e-5)
    assert torch.all(b.upper >= torch.where(keep[..., None], cy, -inf).amax(1) - 1e-5)
    with torch.no_grad():
        vals = net.forward_all(x.reshape(-1, x.shape[-1]))
    for idx, (lo, hi) in b.intermediate.items():  # every node interval holds on kept inputs
        v = vals[idx].reshape(*x.shape[:2], -1)
        lo, hi = lo.flatten(1)[:, None], hi.flatten(1)[:, None]
        ok = (v >= lo - 1e-5) & (v <= hi + 1e-5)
        assert ok[keep].all(), (name, idx)


def test_memory_budget_and_dtype_options() -> None:
    """Many tiny chunks give the same bound; float64 and upper=False are honoured."""
    net = NETS["conv"]()
    dom, _ = _random_domains(net, N=3, seed=2)
    ref = WongKolter().bound(net, dom)
    tiny = WongKolter(memory_elements=50, upper=False).bound(net, dom)
    assert tiny.upper is None and torch.allclose(tiny.lower, ref.lower, atol=1e-5)
    b64 = WongKolter(dtype="float64").bound(net, dom)
    assert b64.lower.dtype == torch.float64 and torch.allclose(b64.lower.float(), ref.lower, atol=1e-4)


def test_phases_fixing_every_relu_give_the_affine_map() -> None:
    """All ReLUs fixed to one point's pattern: the net is affine, the dual bound is exact there."""
    net = NETS["mlp"]()
    dom, g = _random_domains(net, N=2, seed=3, rad=0.05)
    x = _samples(dom, 1, g)
    vals = net.forward_all(x.reshape(-1, net.n_inputs))
    phases = {i: torch.where(vals[n.inputs[0]] >= 0, 1, -1) for i, n in enumerate(net.nodes)
              if isinstance(n.layer, L.ReLU)}
    fixed = Domains(dom.lower, dom.upper, dom.C, phases)
    b = WongKolter().bound(net, fixed)
    for i in range(2):  # the affine map's minimum over the box, from its Jacobian at the point
        J = torch.autograd.functional.jacobian(lambda v: net.forward(v[None])[0], x[i, 0].clone())
        A = dom.C[i] @ J
        y0 = dom.C[i] @ net.forward(x[i, 0][None])[0].detach()
        mid, rad = (dom.lower[i] + dom.upper[i]) / 2, (dom.upper[i] - dom.lower[i]) / 2
        want = y0 + A @ (mid - x[i, 0]) - A.abs() @ rad
        assert torch.allclose(b.lower[i], want.detach(), atol=1e-4)


# --------------------------------------------------------------------------- unsupported ops

@pytest.mark.parametrize("net,op", [
    (lambda: random_mlp([3, 4, 2], seed=0, act=L.Sigmoid), "Sigmoid"),
    (lambda: random_mlp([3, 4, 2], seed=0, act=L.Tanh), "Tanh"),
    (lambda: chain([L.MaxPool2d((2, 2), (2, 2)), L.Reshape((4,))], (1, 4, 4)), "MaxPool2d"),
])
def test_unsupported_ops_named(net, op: str) -> None:
    network = net()
    n = network.n_inputs
    dom = Domains(torch.zeros(1, n), torch.ones(1, n), torch.ones(1, 1, network.n_outputs))
    with pytest.raises(UnsupportedLayerError, match=f"'wk'.*{op}"):
        get_bounder("wk").bound(network, dom)


# --------------------------------------------------------------------------- crown-ibp

CROWN_IBP_NETS = dict(NETS, tanh_mlp=lambda: random_mlp([4, 10, 10, 3], seed=3, act=L.Tanh),
                      sigmoid_mlp=lambda: random_mlp([4, 10, 10, 3], seed=4, act=L.Sigmoid))


@pytest.mark.parametrize("phased", [False, True])
@pytest.mark.parametrize("name", list(CROWN_IBP_NETS))
def test_crown_ibp_between_ibp_and_samples(name: str, phased: bool) -> None:
    """crown-ibp: intermediate boxes are IBP's exactly; IBP <= lower <= sampled minima."""
    net = CROWN_IBP_NETS[name]()
    dom, x, keep = _maybe_phased(net, phased, seed=21)
    b = get_bounder("crown-ibp").bound(net, dom)
    ibp = get_bounder("ibp").bound(net, dom)
    assert b.intermediate.keys() == ibp.intermediate.keys()
    for idx, (lo, hi) in b.intermediate.items():
        assert torch.equal(lo, ibp.intermediate[idx][0]) and torch.equal(hi, ibp.intermediate[idx][1])
    assert torch.all(b.lower >= ibp.lower) and torch.all(b.upper <= ibp.upper)
    cy = _cy(net, dom.C, x)
    inf = torch.tensor(float("inf"))
    assert torch.all(b.lower <= torch.where(keep[..., None], cy, inf).amin(1) + 1e-5)
    assert torch.all(b.upper >= torch.where(keep[..., None], cy, -inf).amax(1) - 1e-5)


def test_crown_ibp_tightens_ibp_somewhere() -> None:
    net = NETS["deep_mlp"]()
    dom, _ = _random_domains(net, N=4, seed=1)
    gain = get_bounder("crown-ibp").bound(net, dom).lower - get_bounder("ibp").bound(net, dom).lower
    assert gain.max() > 0.1


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wk")
    w1 = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.2]])
    w2 = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.2]])
    zeros = [np.zeros(3), np.zeros(2)]
    return {"relu": mlp_onnx(d / "net.onnx", [w1, w2], zeros),
            "sigmoid": mlp_onnx(d / "sig.onnx", [w1, w2], zeros, act="Sigmoid"),
            # at x = (.5, .5): y = [.525, -.49], class 0 wins on the whole small box
            "prop": write_property(d / "p.vnnlib", [0.49, 0.49], [0.51, 0.51], 2, robustness_output(0, 2))}


@pytest.mark.parametrize("method", ["wk", "crown-ibp"])
def test_cli_verify_method(tiny, method: str) -> None:
    p = run_bab("verify", str(tiny["relu"]), str(tiny["prop"]), "--method", method, "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("unsat") and f"[{method}]" in p.stdout


def test_cli_wk_unsupported_op_is_unknown_with_reason(tiny) -> None:
    p = run_bab("verify", str(tiny["sigmoid"]), str(tiny["prop"]), "--method", "wk", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("unknown") and "Sigmoid" in p.stdout and "'wk'" in p.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    net = NETS["conv"]()
    dom, _ = _random_domains(net, N=3, seed=4)
    cpu = WongKolter(dtype="float64").bound(net, dom).lower
    gpu = WongKolter(dtype="float64", device="cuda").bound(net, dom).lower
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-8)
