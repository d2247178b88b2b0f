"""LP/MILP/SMT encodings of the general-graph layers (encoders/nonlinear.py, issue 15).

Oracles: the network itself (float64). Every sampled ``(x, f(x))`` must lie in the encoding's
feasible set (checked by minimising and maximising each output over the LP/MILP with the input
fixed to ``x``); LP and MILP lower bounds must not exceed the sampled (and PGD) minimum, with
LP <= MILP; Floor/Sign MILP bounds equal hand-computed extremes; the ``milp``/``lp``/``smt``
methods never contradict each other or the float64 network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import bab
from bab.config import Config, FalsifyConfig, SolverConfig, VerifyConfig
from bab.result import Status
from encoders.affine import affine_map
from encoders.decide import dispatcher_for
from encoders.encoding import encode, float64_network, interval_bounds, resize
from encoders.lp import row_bounds, tighten
from encoders.model import lower
from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO
from tests.irnets import chain
from vnnlib.spec import Clause, Region, Spec

D = torch.float64
CFG = SolverConfig(backend="ortools")
DISP = dispatcher_for(CFG)
SLACK = 1e-5


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=D)


def _lin(g: torch.Generator, n_out: int, n_in: int, scale: float = 1.0) -> L.Linear:
    w = torch.randn(n_out, n_in, generator=g, dtype=D) * scale / math.sqrt(n_in)
    return L.Linear(w, 0.3 * torch.randn(n_out, generator=g, dtype=D))


def _graph(nodes: list[L.Node], in_shape: tuple[int, ...]) -> Network:
    n_out = math.prod(nodes[-1].out_shape)
    io = OnnxIO("x", (1, *in_shape), "float64", "y", (1, n_out), True)
    return Network(nodes, in_shape, tuple(nodes[-1].out_shape), io, dtype=D)


def unary_net(act: L.Layer, seed: int = 0) -> Network:
    """x (2) -> Linear 4 -> act -> Linear 2 (inputs shifted positive for Log/Sqrt/1/x/x^0.5)."""
    g = torch.Generator().manual_seed(seed)
    positive = isinstance(act, (L.Log, L.Sqrt, L.Reciprocal)) or (
        isinstance(act, L.Pow) and not float(act.exponent).is_integer())
    first = L.ElementwiseAffine(_t(0.5), _t(2.0)) if positive else _lin(g, 4, 2, 2.0)
    width = 2 if positive else 4
    return chain([first, act, _lin(g, 2, width)], (2,), dtype=D)


def graph_net(seed: int = 0) -> Network:
    """Linear/Reshape branches into MatMul, Softmax, Gather, Mul, Concat, ReduceSum, Linear."""
    g = torch.Generator().manual_seed(seed)
    nodes = [
        L.Node(_lin(g, 6, 3, 1.5), (-1,), (6,)),                                     # 0
        L.Node(L.Reshape((2, 3)), (0,), (2, 3)),                                     # 1
        L.Node(_lin(g, 6, 3, 1.5), (-1,), (6,)),                                     # 2
        L.Node(L.Tanh(), (2,), (6,)),                                                # 3
        L.Node(L.Reshape((3, 2)), (3,), (3, 2)),                                     # 4
        L.Node(L.MatMul(), (1, 4), (2, 2)),                                          # 5
        L.Node(L.Softmax(axis=1), (5,), (2, 2)),                                     # 6
        L.Node(L.Gather(torch.tensor([3, 1, 0, 2]), (2, 2)), (5,), (2, 2)),          # 7
        L.Node(L.Mul(), (6, 7), (2, 2)),                                             # 8
        L.Node(L.Concat(axis=1), (8, 1), (2, 5)),                                    # 9
        L.Node(L.ReduceSum((1,), keepdims=False), (9,), (2,)),                       # 10
        L.Node(_lin(g, 2, 2), (10,), (2,)),                                          # 11
    ]
    return _graph(nodes, (3,))


def conv_t_net(seed: int = 0) -> Network:
    """[1, 2, 2] -> ConvTranspose2d (stride 2, padding, output padding) -> ReLU -> Linear."""
    g = torch.Generator().manual_seed(seed)
    ct = L.ConvTranspose2d(torch.randn(1, 2, 3, 3, generator=g, dtype=D) / 3, 0.1 * torch.randn(2, generator=g, dtype=D),
                           stride=(2, 2), padding=(1, 1), output_padding=(1, 1))
    return chain([ct, L.ReLU(), L.Reshape((-1,)), _lin(g, 2, 32)], (1, 2, 2), dtype=D)


def step_net(kind: type, seed: int = 0) -> Network:
    g = torch.Generator().manual_seed(seed)
    return chain([_lin(g, 4, 2, 3.0), kind(), _lin(g, 2, 4)], (2,), dtype=D)


NETS = {
    **{f"unary-{a.kind}{getattr(a, 'exponent', '')}": (lambda a=a: unary_net(a))
       for a in (L.Sigmoid(), L.Tanh(), L.Exp(), L.Log(), L.Sqrt(), L.Reciprocal(), L.Sin(), L.Cos(),
                 L.Pow(2.0), L.Pow(3.0), L.Pow(0.5))},
    "floor": lambda: step_net(L.Floor), "sign": lambda: step_net(L.Sign),
    "graph": graph_net, "conv-transpose": conv_t_net,
    "softmax": lambda: chain([_lin(torch.Generator().manual_seed(5), 3, 2, 3.0), L.Softmax(axis=0)], (2,), dtype=D),
}


def _box(net: Network, seed: int = 0, width: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.uniform(-0.5, 0.5, net.n_inputs)
    return c - width / 2, c + width / 2


def _samples(net: Network, lo: np.ndarray, hi: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = np.where(rng.random((4, lo.size)) < 0.5, lo, hi)
    return np.concatenate([corners, rng.uniform(lo, hi, (n, lo.size))])


def _pgd(net: Network, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, steps: int = 30) -> np.ndarray:
    """Points that locally minimise each row of ``C f(x)`` (signed-gradient steps from 8 starts)."""
    l, u = torch.as_tensor(lo), torch.as_tensor(hi)
    pts = []
    for row in torch.as_tensor(C):
        x = (l + (u - l) * torch.rand(8, l.numel(), generator=torch.Generator().manual_seed(1), dtype=D))
        for _ in range(steps):
            x.requires_grad_(True)
            (net.forward(x) @ row).sum().backward()
            with torch.no_grad():
                x = torch.clamp(x - 0.05 * (u - l) * torch.sign(x.grad), l, u)
        pts.append(x.detach())
    return torch.cat(pts).numpy()


def _fixed_extremes(enc, mode: str, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: min and max of every output over the model with the inputs fixed."""
    model = lower(enc, mode)
    A = resize(enc.output.A, model.n_vars)
    objs = sp.vstack([A, -A]).tocsr()
    consts = np.concatenate([enc.output.c, -enc.output.c])
    lo, hi = [], []
    for x in xs:
        model.lb[enc.inputs] = x
        model.ub[enc.inputs] = x
        res = DISP.solve_many(model, objs, consts, 20, 1e-9)
        assert all(r.status == "optimal" for r in res), [r.status for r in res]
        v = np.array([r.value for r in res])
        lo.append(v[:enc.output.c.size])
        hi.append(-v[enc.output.c.size:])
    return np.array(lo), np.array(hi)


@pytest.mark.parametrize("name", sorted(NETS))
def test_encoding_contains_the_network(name: str) -> None:
    net = NETS[name]()
    lo, hi = _box(net)
    enc = encode(net, lo, hi)
    xs = _samples(net, lo, hi, 6)
    ys = net.evaluate(xs)
    for mode in ("lp", "milp"):
        mn, mx = _fixed_extremes(enc, mode, xs)
        scale = 1 + np.abs(ys)
        assert (mn <= ys + SLACK * scale).all() and (ys <= mx + SLACK * scale).all(), (mode, mn - ys, ys - mx)
    if name in ("floor", "sign", "conv-transpose"):  # exact encodings: the MILP pins the output
        mn, mx = _fixed_extremes(enc, "milp", xs[4:])  # (random points: no step sits on a jump)
        assert np.allclose(mn, ys[4:], atol=1e-6) and np.allclose(mx, ys[4:], atol=1e-6)
        assert enc.exact
    else:
        exact = (L.Linear, L.ElementwiseAffine, L.Reshape, L.Gather, L.Concat, L.ReduceSum, L.ReLU)
        want = {n.layer.kind for n in net.nodes if not isinstance(n.layer, exact)}
        assert not enc.exact and {r.split(" ")[0] for r in enc.relaxed} == want


@pytest.mark.parametrize("name", sorted(NETS))
def test_lp_and_milp_bounds_are_sound(name: str) -> None:
    net = NETS[name]()
    lo, hi = _box(net, seed=1)
    C = np.concatenate([np.eye(net.n_outputs), -np.eye(net.n_outputs)])
    lp = row_bounds(net, lo, hi, C, CFG, DISP, 30)
    enc = encode(net, lo, hi)
    milp = []
    for row in C:
        model = lower(enc, "milp")
        model.obj = np.zeros(model.n_vars)
        obj = resize(sp.csr_matrix(row @ enc.output.A), model.n_vars)
        res = DISP.solve_many(model, obj, np.array([row @ enc.output.c]), 20, 1e-9)[0]
        assert res.status == "optimal"
        milp.append(res.bound if res.bound is not None else res.value)
    milp = np.array(milp)
    rng = np.random.default_rng(2)
    xs = np.concatenate([rng.uniform(lo, hi, (3000, lo.size)), _pgd(net, lo, hi, C)])
    seen = (net.evaluate(xs) @ C.T).min(0)
    scale = 1 + np.abs(seen)
    assert (lp <= milp + SLACK * scale).all()
    assert (milp <= seen + SLACK * scale).all(), (milp, seen)
    assert np.isfinite(lp).all()


@pytest.mark.parametrize("name", ["graph", "unary-Sin", "floor"])
def test_lp_tightening_of_nonlinear_inputs_is_sound(name: str) -> None:
    """lp-full's tightening now also visits the inputs of relaxed, step and product nodes:
    the new boxes are inside the old ones and still contain every sampled value."""
    net = NETS[name]()
    lo, hi = _box(net, seed=6)
    old = interval_bounds(net, lo, hi)
    new = tighten(net, lo, hi, old, CFG, DISP, 30)
    vals = net.forward_all(torch.as_tensor(_samples(net, lo, hi, 2000)))
    shrunk = 0.0
    for k, (a, b) in new.items():
        v = vals[k].reshape(vals[k].shape[0], -1).numpy()
        oa, ob = (np.asarray(t).reshape(-1) for t in old[k])
        assert (a >= oa - 1e-12).all() and (b <= ob + 1e-12).all()
        assert (v >= a - SLACK).all() and (v <= b + SLACK).all(), k
        shrunk += float(((ob - oa) - (b - a)).sum())
    if name == "graph":  # (elsewhere the nonlinear inputs are a Linear of the box: IBP is exact)
        assert shrunk > 0  # the LPs tightened the MatMul/Mul/Softmax inputs


def test_affine_graph_layers_are_exact() -> None:
    """Gather, ReduceSum, ConvTranspose2d, Concat: exact maps; a point box is the network."""
    for net in (conv_t_net(), graph_net()):
        x = torch.randn(3, net.n_inputs, dtype=D, generator=torch.Generator().manual_seed(0))
        vals = net.forward_all(x)
        for i, node in enumerate(net.nodes):
            if not isinstance(node.layer, (L.Gather, L.ReduceSum, L.ConvTranspose2d)):
                continue
            j = node.inputs[0]
            inp = x if j < 0 else vals[j]
            in_shape = net.input_shape if j < 0 else net.nodes[j].out_shape
            M, b = affine_map(node.layer, tuple(in_shape), tuple(node.out_shape))
            got = inp.reshape(3, -1).numpy() @ M.T + b
            assert np.allclose(got, vals[i].reshape(3, -1).numpy(), atol=1e-12), node.layer.kind
    g = torch.Generator().manual_seed(3)
    nodes = [L.Node(_lin(g, 6, 4), (-1,), (6,)), L.Node(L.Reshape((2, 3)), (0,), (2, 3)),
             L.Node(L.Gather(torch.tensor([5, 0, 4, 1]), (2, 2)), (1,), (2, 2)),
             L.Node(L.Concat(axis=1), (1, 2, 1), (2, 8)),
             L.Node(L.ReduceSum((0,), keepdims=True), (3,), (1, 8)),
             L.Node(L.Concat(axis=0), (4, 3), (3, 8)), L.Node(L.Reshape((24,)), (5,), (24,))]
    net = _graph(nodes, (4,))
    x = np.random.default_rng(0).uniform(-1, 1, 4)
    enc = encode(net, x, x)
    assert enc.n_unstable == 0 and enc.exact and enc.n_vars == 4
    got = enc.output.A @ x + enc.output.c
    assert np.allclose(got, net.evaluate(x[None])[0], atol=1e-12)


def test_floor_and_sign_milp_bounds_are_the_true_extremes() -> None:
    # f(x) = [floor(2x - 0.5), -floor(-x), sign(x) - sign(x - 0.5)] on x in [-0.7, 1.6]:
    # floor(2x - 0.5) in {-2..2}: min -2 (x < -0.25), max 2 (x >= 1.25);
    # -floor(-x) = ceil(x) in {0, 1, 2}: min 0, max 2;
    # sign(x) - sign(x - 0.5): 0 for x < 0, 1 at 0, 2 on (0, 0.5), 1 at 0.5, 0 above: min 0, max 2.
    nodes = [L.Node(L.Linear(_t(2.0, -1.0, 1.0, 1.0).reshape(4, 1), _t(-0.5, 0.0, 0.0, -0.5)), (-1,), (4,)),
             L.Node(L.Floor(), (0,), (4,)), L.Node(L.Sign(), (0,), (4,)),
             L.Node(L.Concat(axis=0), (1, 2), (8,)),
             L.Node(L.Linear(torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0], [0, -1, 0, 0, 0, 0, 0, 0],
                                           [0, 0, 0, 0, 0, 0, 1, -1]], dtype=D), torch.zeros(3, dtype=D)),
                    (3,), (3,))]
    net = _graph(nodes, (1,))
    lo, hi = np.array([-0.7]), np.array([1.6])
    enc = encode(net, lo, hi)
    assert enc.exact and len(enc.steps) == 2
    want_min, want_max = np.array([-2.0, 0.0, 0.0]), np.array([2.0, 2.0, 2.0])
    grid = np.concatenate([np.linspace(-0.7, 1.6, 2301), [0.0, 0.5, 1.25]])[:, None]
    ys = net.evaluate(grid)
    assert np.allclose(ys.min(0), want_min) and np.allclose(ys.max(0), want_max)
    for k in range(3):
        for sign, want in ((1.0, want_min[k]), (-1.0, -want_max[k])):
            model = lower(enc, "milp", sign * np.eye(3)[k:k + 1], np.zeros(1))
            res = DISP.solve(model, 20, 1e-9)
            assert res.status == "optimal" and abs(res.value - want) < 1e-6, (k, sign, res.value)


def test_step_lp_hulls_by_hand() -> None:
    """Floor on [0.3, 2.7] and Sign on [-1, 2] (one neuron each): LP optima of the hulls."""
    for layer, (a, b), C, want in (
            (L.Floor(), (0.3, 2.7), [[1.0, -1.0]], -1.0),   # min floor(x) - x: -1 (closure at 1)
            (L.Floor(), (0.3, 2.7), [[-1.0, 0.0]], -2.0),   # max floor(x) = 2
            (L.Floor(), (0.3, 2.7), [[1.0, 0.0]], 0.0),     # min floor(x) = 0
            (L.Sign(), (-1.0, 2.0), [[-1.0, 1.0]], -1.0),   # max sign(x) - x: 1 (at 0+)
            (L.Sign(), (-1.0, 2.0), [[1.0, 1.0]], -2.0)):   # min sign(x) + x: -2 (at -1)
        nodes = [L.Node(layer, (-1,), (1,)), L.Node(L.Concat(axis=0), (0, -1), (2,))]
        net = _graph(nodes, (1,))
        enc = encode(net, np.array([a]), np.array([b]))
        res = DISP.solve(lower(enc, "lp", np.array(C), np.zeros(1)), 20, 1e-9)
        assert res.status == "optimal" and abs(res.value - want) < 1e-6, (layer.kind, C, res.value)


# --- methods ----------------------------------------------------------------------------------

class _Reference:
    """Replays candidates on the float64 IR network (what onnxruntime does for ONNX files)."""

    def __init__(self, net: Network) -> None:
        self.net = float64_network(net)

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net.forward(torch.as_tensor(x, dtype=D)).numpy()


def _verify(net: Network, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray, method: str):
    spec = Spec((Region(lo, hi, (Clause(np.atleast_2d(C), np.atleast_1d(d)),)),), net.n_inputs, net.n_outputs)
    cfg = Config(verify=VerifyConfig(method=method, timeout=30), falsify=FalsifyConfig(enabled=False),
                 solver=CFG)
    res = bab.verify(net, spec, cfg, reference=_Reference(net))
    if res.status is Status.SAT:  # a witness must be real
        x = np.asarray(res.counterexample.x)
        assert (x >= lo - 1e-9).all() and (x <= hi + 1e-9).all()
        y = net.evaluate(x[None])[0]
        assert (np.atleast_2d(C) @ y <= np.atleast_1d(d) + 1e-6).all()
    return res


@pytest.mark.parametrize("name", ["floor", "sign", "unary-Sigmoid", "unary-Sin", "graph"])
def test_methods_never_contradict(name: str) -> None:
    """Properties ``y0 <= d`` with ``d`` below the LP bound (unsat) and above a sampled value
    (sat): milp/lp/smt/crown never answer wrongly; exact encodings make milp decide both."""
    net = NETS[name]()
    lo, hi = _box(net, seed=4)
    C = np.eye(net.n_outputs)[:1]
    lp = row_bounds(net, lo, hi, C, CFG, DISP, 30)[0]
    seen = (net.evaluate(_samples(net, lo, hi, 500)) @ C.T).min()
    for d, truth in ((lp - 0.1 * (1 + abs(lp)), Status.UNSAT), (seen + 1e-3, Status.SAT)):
        got = {}
        for method in ("milp", "lp", "smt", "crown"):
            got[method] = _verify(net, lo, hi, C, np.array([d]), method).status
            assert got[method] in (truth, Status.UNKNOWN), (method, d, got[method])
        if truth is Status.UNSAT:
            assert got["milp"] is Status.UNSAT and got["lp"] is Status.UNSAT
        elif name in ("floor", "sign"):
            assert got["milp"] is Status.SAT and got["smt"] is Status.SAT


def test_relaxation_points_give_unknown_with_reason() -> None:
    """sigmoid(x) + sigmoid(-x) = 1 everywhere, but the relaxation reaches below 1: milp finds
    only spurious points, fails their replay and says unknown naming the relaxed nodes."""
    nodes = [L.Node(L.Linear(_t(1.0, -1.0).reshape(2, 1), torch.zeros(2, dtype=D)), (-1,), (2,)),
             L.Node(L.Sigmoid(), (0,), (2,)), L.Node(L.Linear(_t(1.0, 1.0).reshape(1, 2), torch.zeros(1, dtype=D)), (1,), (1,))]
    net = _graph(nodes, (1,))
    lo, hi = np.array([-3.0]), np.array([3.0])
    lp = row_bounds(net, lo, hi, np.eye(1), CFG, DISP, 30)[0]
    assert lp < 0.99
    d = np.array([(lp + 1.0) / 2])
    res = _verify(net, lo, hi, np.eye(1), d, "milp")
    assert res.status is Status.UNKNOWN and "relaxes Sigmoid (node 1)" in res.reason, res.reason
    res = _verify(net, lo, hi, np.eye(1), d, "smt")
    assert res.status is Status.UNKNOWN and "Sigmoid" in res.reason and "z3" in res.reason


def test_smt_decides_products_exactly() -> None:
    """Outputs ``[x*y, x, y]`` on ``[-1, 1]^2``: ``x*y <= -0.99`` is sat (at (1, -1));
    ``x*y - x - y = (x - 1)(y - 1) - 1 >= -1``, so ``<= -1.01`` is unsat. z3 takes the
    product exactly; milp (McCormick, a relaxation) must not contradict it."""
    nodes = [L.Node(L.Reshape((2,)), (-1,), (2,)), L.Node(L.Gather(torch.tensor([0]), (1,)), (0,), (1,)),
             L.Node(L.Gather(torch.tensor([1]), (1,)), (0,), (1,)), L.Node(L.Mul(), (1, 2), (1,)),
             L.Node(L.Concat(axis=0), (3, 0), (3,))]
    net = _graph(nodes, (2,))
    lo, hi = -np.ones(2), np.ones(2)
    for method in ("smt", "milp"):
        assert _verify(net, lo, hi, np.array([[1.0, 0, 0]]), np.array([-0.99]), method).status is Status.SAT
    C = np.array([[1.0, -1.0, -1.0]])
    assert _verify(net, lo, hi, C, np.array([-1.01]), "smt").status is Status.UNSAT
    assert _verify(net, lo, hi, C, np.array([-1.01]), "milp").status in (Status.UNSAT, Status.UNKNOWN)
