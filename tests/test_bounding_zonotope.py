"""DeepZ (``zonotope``) and RefineZono (``refinezono``): exact values, soundness, orders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bab.bounding import Domains, get_bounder
from bab.bounding.zonotope import RefineZono, Zonotope
from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO
from tests.builders import mlp_onnx, robustness_output, run_bab, write_property
from tests.irnets import chain, hand_221, random_mlp, small_cnn

SLACK = 1e-5


def _dag(specs: list[tuple[L.Layer, tuple[int, ...]]], input_shape: tuple[int, ...]) -> Network:
    """A DAG network from (layer, inputs) pairs; shapes found by a zero forward pass."""
    nodes: list[L.Node] = []
    vals: list[torch.Tensor] = []
    x = torch.zeros(1, *input_shape)
    for layer, inputs in specs:
        vals.append(layer.forward(*[x if j < 0 else vals[j] for j in inputs]))
        nodes.append(L.Node(layer, inputs, tuple(vals[-1].shape[1:])))
    io = OnnxIO("x", (1, *input_shape), "float32", "y", (1, math.prod(vals[-1].shape[1:])), True)
    return Network(nodes, input_shape, tuple(vals[-1].shape[1:]), io)


def residual_net(seed: int = 0) -> Network:
    """x -> Linear -> ReLU (a) -> Linear -> ReLU (b) -> a + b -> Linear: both branches add symbols."""
    g = torch.Generator().manual_seed(seed)
    lin = lambda i, o: L.Linear(torch.randn(o, i, generator=g) / math.sqrt(i), 0.1 * torch.randn(o, generator=g))
    return _dag([(lin(4, 6), (-1,)), (L.ReLU(), (0,)), (lin(6, 6), (1,)), (L.ReLU(), (2,)),
                 (L.Add(), (1, 3)), (lin(6, 3), (4,))], (4,))


def _box_batch(net: Network, n: int, seed: int, width: float = 0.6) -> Domains:
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, net.n_inputs, generator=g) * 2 - 1
    hi = lo + width * torch.rand(n, net.n_inputs, generator=g)
    C = torch.randn(n, 4, net.n_outputs, generator=g)
    return Domains(lo, hi, C)


def _with_phases(net: Network, dom: Domains) -> Domains:
    """Fix about a third of the ReLUs of every other domain to their phase at the box centre."""
    values = net.forward_all((dom.lower + dom.upper) / 2)
    phases = {}
    for r, node in enumerate(net.nodes):
        if isinstance(node.layer, L.ReLU):
            z = values[node.inputs[0]]
            mask = torch.rand(z.shape, generator=torch.Generator().manual_seed(r)) < 0.35
            mask[::2] = False
            phases[r] = torch.where(mask, torch.where(z >= 0, 1, -1), 0).to(torch.int8)
    return Domains(dom.lower, dom.upper, dom.C, phases)


def _consistent(net: Network, x: torch.Tensor, dom: Domains, i: int) -> torch.Tensor:
    values = net.forward_all(x)
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for r, ph in dom.phases.items():
        z = values[net.nodes[r].inputs[0]].reshape(x.shape[0], -1)
        p = ph[i].reshape(-1)
        ok &= ((p == 0) | ((p > 0) & (z >= 0)) | ((p < 0) & (z <= 0))).all(1)
    return ok


def _pgd(net: Network, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, sign: float) -> torch.Tensor:
    """Inputs minimising ``sign * c f(x)`` in the box (projected sign-gradient steps)."""
    x = lo + (hi - lo) * torch.rand(8, lo.numel())
    step = (hi - lo) / 8
    for it in range(40):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((sign * net.forward(x) @ c).sum(), x)
        x = torch.minimum(torch.maximum(x - step * g.sign(), lo), hi)
        if it % 10 == 9:
            step = step / 2
    return x.detach()


def observed(net: Network, dom: Domains, n: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest ``C f(x)`` seen on samples and PGD points consistent with the phases."""
    lo_obs = torch.full(dom.C.shape[:2], math.inf)
    hi_obs = torch.full(dom.C.shape[:2], -math.inf)
    for i in range(dom.size):
        lo, hi = dom.lower[i], dom.upper[i]
        pts = [lo + (hi - lo) * torch.rand(n, lo.numel()), lo[None], hi[None]]
        for m in range(dom.C.shape[1]):
            pts += [_pgd(net, dom.C[i, m], lo, hi, 1.0), _pgd(net, dom.C[i, m], lo, hi, -1.0)]
        x = torch.cat(pts)
        with torch.no_grad():
            x = x[_consistent(net, x, dom, i)]
            if len(x):
                v = net.forward(x) @ dom.C[i].T
                lo_obs[i], hi_obs[i] = v.amin(0), v.amax(0)
    return lo_obs, hi_obs


# --- exact values -------------------------------------------------------------------------

def test_hand_221_exact() -> None:
    """Hand derivation (hand_221: z1 = x1 + x2, z2 = x1 - x2, y = relu(z1) + relu(z2)).

    Box x1 in [0, 2], x2 in [0.5, 1.5]: x1 = 1 + e1, x2 = 1 + 0.5 e2.
    z1 = 2 + e1 + 0.5 e2 in [0.5, 3.5]: stable active, relu(z1) = z1.
    z2 = 0 + e1 - 0.5 e2 in [-1.5, 1.5]: unstable, lambda = u/(u-l) = 0.5, mu = -lambda l / 2 = 0.375,
    relu(z2) ~ 0.5 z2 + 0.375 + 0.375 e3 = 0.375 + 0.5 e1 - 0.25 e2 + 0.375 e3, box [-0.75, 1.5].
    y = 2.375 + 1.5 e1 + 0.25 e2 + 0.375 e3: radius 2.125, so y in [0.25, 4.5].
    (IBP gives [0.5, 5]: DeepZ is not always tighter than IBP, even with one hidden layer.)
    """
    net = hand_221()
    dom = Domains(torch.tensor([[0.0, 0.5]]), torch.tensor([[2.0, 1.5]]), torch.tensor([[[1.0], [-1.0]]]))
    b = Zonotope().bound(net, dom)
    assert torch.allclose(b.lower, torch.tensor([[0.25, -4.5]]), atol=2e-5)
    assert torch.allclose(b.upper, torch.tensor([[4.5, -0.25]]), atol=2e-5)
    lo, hi = b.intermediate[0]
    assert torch.allclose(lo, torch.tensor([[0.5, -1.5]]), atol=2e-5)
    assert torch.allclose(hi, torch.tensor([[3.5, 1.5]]), atol=2e-5)
    lo, hi = b.intermediate[1]
    assert torch.allclose(lo, torch.tensor([[0.5, -0.75]]), atol=2e-5)
    assert torch.allclose(hi, torch.tensor([[3.5, 1.5]]), atol=2e-5)
    ibp = get_bounder("ibp").bound(net, dom)
    assert torch.allclose(ibp.lower, torch.tensor([[0.5, -5.0]]), atol=2e-5)


def test_fixed_phases_exact() -> None:
    """Same box as above. Phase -1 on z2: relu(z2) = 0, y = z1 = 2 + e1 + 0.5 e2 in [0.5, 3.5].
    Phase +1 on z2: relu(z2) = z2, y = z1 + z2 = 2 x1 = 2 + 2 e1 in [0, 4]."""
    net = hand_221()
    base = (torch.tensor([[0.0, 0.5]] * 2), torch.tensor([[2.0, 1.5]] * 2), torch.tensor([[[1.0], [-1.0]]] * 2))
    phases = {1: torch.tensor([[0, -1], [0, 1]], dtype=torch.int8)}
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):  # float32: rounding allowance
        b = Zonotope(dtype=dtype).bound(net, Domains(*base, phases))
        assert torch.allclose(b.lower, torch.tensor([[0.5, -3.5], [0.0, -4.0]], dtype=dtype), atol=tol)
        assert torch.all(b.lower <= torch.tensor([[0.5, -3.5], [0.0, -4.0]], dtype=dtype))


def test_affine_network_exact_and_above_ibp() -> None:
    """Without nonlinear layers the zonotope is the exact image: its bound is the true
    optimum (a vertex of the box) and never below IBP's."""
    g = torch.Generator().manual_seed(3)
    net = chain([L.Linear(torch.randn(5, 3, generator=g), torch.randn(5, generator=g)),
                 L.ElementwiseAffine(torch.randn(5, generator=g), torch.randn(5, generator=g)),
                 L.Linear(torch.randn(2, 5, generator=g), torch.randn(2, generator=g))], (3,))
    dom = _box_batch(net, 5, 0)
    b = Zonotope().bound(net, dom)
    verts = torch.tensor([[(k >> i) & 1 for i in range(3)] for k in range(8)], dtype=torch.float32)
    for i in range(dom.size):
        x = dom.lower[i] + (dom.upper[i] - dom.lower[i]) * verts
        v = net.forward(x) @ dom.C[i].T
        assert torch.allclose(b.lower[i], v.amin(0), atol=1e-4)
        assert torch.allclose(b.upper[i], v.amax(0), atol=1e-4)
    ibp = get_bounder("ibp").bound(net, dom)
    assert torch.all(b.lower >= ibp.lower - 1e-6)


def test_first_layer_boxes_equal_ibp() -> None:
    """An affine image of the input box is exact in both domains: identical pre-activation boxes."""
    net = random_mlp([6, 10, 10, 3], seed=4)
    dom = _box_batch(net, 7, 1)
    z, i = Zonotope().bound(net, dom).intermediate[0], get_bounder("ibp").bound(net, dom).intermediate[0]
    assert torch.allclose(z[0], i[0], atol=1e-5) and torch.allclose(z[1], i[1], atol=1e-5)


# --- soundness ----------------------------------------------------------------------------

NETS = {
    "relu": lambda: random_mlp([4, 12, 12, 3], seed=1),
    "sigmoid": lambda: random_mlp([4, 10, 10, 3], seed=2, act=L.Sigmoid),
    "tanh": lambda: random_mlp([4, 10, 10, 3], seed=3, act=L.Tanh),
    "cnn": lambda: small_cnn(5),
    "residual": lambda: residual_net(6),
}


@pytest.mark.parametrize("phases", [False, True])
@pytest.mark.parametrize("kind", list(NETS))
def test_zonotope_sound(kind: str, phases: bool) -> None:
    torch.manual_seed(0)
    net = NETS[kind]()
    if phases and not any(isinstance(n.layer, L.ReLU) for n in net.nodes):
        pytest.skip("no ReLU to fix")
    dom = _box_batch(net, 4 if kind == "cnn" else 8, 2, width=0.2 if kind == "cnn" else 0.6)
    if phases:
        dom = _with_phases(net, dom)
    b = Zonotope().bound(net, dom)
    lo, hi = observed(net, dom)
    assert torch.all(b.lower <= lo + SLACK), (b.lower - lo).max()
    assert torch.all(b.upper >= hi - SLACK), (hi - b.upper).max()
    vals = net.forward_all((dom.lower + dom.upper) / 2)
    if not phases:  # every node's box contains the centre's values
        for k, (l, u) in b.intermediate.items():
            assert torch.all(l <= vals[k] + SLACK) and torch.all(u >= vals[k] - SLACK)


def test_zonotope_chunks_agree() -> None:
    """Chunking the batch (tiny memory budget) gives the same bounds; an empty batch works."""
    net = residual_net(1)
    dom = _box_batch(net, 9, 3)
    whole = Zonotope().bound(net, dom)
    parts = Zonotope(memory_elements=1).bound(net, dom)
    assert torch.allclose(whole.lower, parts.lower, atol=1e-6)
    assert torch.allclose(whole.intermediate[3][1], parts.intermediate[3][1], atol=1e-6)
    empty = Domains(dom.lower[:0], dom.upper[:0], dom.C[:0])
    assert Zonotope().bound(net, empty).lower.shape == (0, 4)


def test_zonotope_float64() -> None:
    """A float64 pass is sound and at least as tight as float32 up to rounding."""
    net = random_mlp([4, 12, 12, 3], seed=1)
    dom = _box_batch(net, 6, 4)
    b32 = Zonotope().bound(net, dom)
    b64 = Zonotope(dtype="float64").bound(net, dom)
    assert b64.lower.dtype == torch.float64
    assert torch.all(b64.lower >= b32.lower.double() - 1e-4)


# --- RefineZono ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed, phases", [(7, False), (8, False), (9, True)])
def test_refinezono_inside_zonotope_and_sound(seed: int, phases: bool) -> None:
    net = random_mlp([3, 12, 12, 12, 3], seed=seed)
    dom = _box_batch(net, 5, seed, width=1.0)
    if phases:
        dom = _with_phases(net, dom)
    z = Zonotope().bound(net, dom)
    r = RefineZono(seconds=2.0).bound(net, dom)
    for k, (lo, hi) in z.intermediate.items():
        assert torch.all(r.intermediate[k][0] >= lo - 1e-9) and torch.all(r.intermediate[k][1] <= hi + 1e-9)
    assert torch.all(r.lower >= z.lower - 1e-6)
    lo_obs, hi_obs = observed(net, dom)
    assert torch.all(r.lower <= lo_obs + SLACK) and torch.all(r.upper >= hi_obs - SLACK)


def test_refinezono_tightens() -> None:
    """On a deeper net with wide boxes the LP refinement strictly helps somewhere."""
    net = random_mlp([3, 12, 12, 12, 3], seed=7)
    dom = _box_batch(net, 5, 7, width=1.0)
    z = Zonotope().bound(net, dom)
    r = RefineZono(seconds=2.0).bound(net, dom)
    gain = (r.lower - z.lower).max().item()
    width = sum(float((z.intermediate[k][1] - z.intermediate[k][0]).sum() - (hi - lo).sum())
                for k, (lo, hi) in r.intermediate.items())
    assert gain > 1e-4 and width > 1e-3


def test_refinezono_sigmoid_is_zonotope() -> None:
    """No encodable ReLU (a Sigmoid net): RefineZono is DeepZ."""
    net = random_mlp([4, 10, 10, 3], seed=2, act=L.Sigmoid)
    dom = _box_batch(net, 4, 5)
    assert torch.equal(RefineZono().bound(net, dom).lower, Zonotope().bound(net, dom).lower)


# --- end to end ---------------------------------------------------------------------------

def test_cli_verify(tmp_path) -> None:
    """``bab verify --method zonotope`` proves a small robustness box with one bound pass."""
    w1 = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.2]])
    w2 = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.2]])
    model = mlp_onnx(tmp_path / "net.onnx", [w1, w2], [np.zeros(3), np.zeros(2)])
    small = write_property(tmp_path / "small.vnnlib", [0.49, 0.49], [0.51, 0.51], 2, robustness_output(0, 2))
    p = run_bab("verify", str(model), str(small), "--method", "zonotope", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("unsat"), p.stdout
