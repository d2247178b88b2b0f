"""``krelu``: joint ReLU constraints (hull validity, a hand case), tightness over the triangle
LP with the same intermediate bounds, soundness against MILP and sampling, refusals, config,
the orders lp >= wk and lp >= zonotope, and the CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from bab.bounding import BounderRefusal, Domains, get_bounder
from bab.bounding.multi_neuron import groups as grp
from bab.bounding.multi_neuron.hull import joint_rows, octagon_directions
from bab.bounding.multi_neuron.krelu import KRelu
from bab.config import Config, ConfigError, MultiNeuronConfig, SolverConfig, from_dict
from encoders.decide import dispatcher_for, prove_eps
from encoders.encoding import encode
from encoders.extra_rows import add_rows
from encoders.lp import row_bounds
from encoders.model import lower
from onnx_models import layers as L
from tests.irnets import random_mlp

CFG = SolverConfig()
DISP = dispatcher_for(CFG)


# --- the joint rows ---------------------------------------------------------------------------

def _random_group(rng: np.random.Generator, k: int) -> tuple[np.ndarray, ...]:
    """Pre-activations ``x = W z + b`` of a random group over a box of ``z``: a point cloud,
    and the box and octagon bounds of that cloud (so the cloud lies in ``P``)."""
    W = rng.normal(size=(k, 2))
    cloud = rng.uniform(-1, 1, (4000, 2)) @ W.T + rng.normal(0, 0.3, k)
    dirs = octagon_directions(k)
    proj = cloud @ dirs.T
    return cloud, dirs, cloud.min(0), cloud.max(0), proj.min(0), proj.max(0)


def _in_p(x: np.ndarray, lo, hi, dirs, dlo, dhi) -> np.ndarray:
    proj = x @ dirs.T
    return (x >= lo).all(1) & (x <= hi).all(1) & (proj >= dlo).all(1) & (proj <= dhi).all(1)


@pytest.mark.parametrize("k", [2, 3])
def test_rows_hold_on_dense_samples(k: int) -> None:
    rng = np.random.default_rng(k)
    total = 0
    for _ in range(6):
        cloud, dirs, lo, hi, dlo, dhi = _random_group(rng, k)
        rows = joint_rows(lo, hi, dirs, dlo, dhi)
        box = lo + (hi - lo) * rng.random((40000, k))
        x = np.concatenate([cloud, box[_in_p(box, lo, hi, dirs, dlo, dhi)]])
        lhs = x @ rows.bx.T + np.maximum(x, 0) @ rows.ay.T
        assert (lhs <= rows.c).all(), f"violated by {(lhs - rows.c).max():.3g}"
        total += rows.size
    assert total > 0  # the octagons of correlated neurons give rows that cut the triangles


def _lp_max(obj: np.ndarray, lo, hi, extra: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Max of ``obj · (x, y)`` over the two triangles, ``|x1 - x2| <= 0.2`` and extra rows."""
    k = lo.size
    A, b = [], []
    for i in range(k):
        s = hi[i] / (hi[i] - lo[i])
        for row, rhs in (({k + i: -1.0}, 0.0), ({i: 1.0, k + i: -1.0}, 0.0), ({i: -s, k + i: 1.0}, -s * lo[i])):
            r = np.zeros(2 * k)
            r[list(row)] = list(row.values())
            A.append(r), b.append(rhs)
    A += [np.array([1.0, -1.0, 0, 0]), np.array([-1.0, 1.0, 0, 0])]
    b += [0.2, 0.2]
    for rows, rhs in extra:
        A += list(rows)
        b += list(rhs)
    box = [(lo[0], hi[0]), (lo[1], hi[1]), (None, None), (None, None)]
    res = linprog(-obj, A_ub=np.array(A), b_ub=np.array(b), bounds=box, method="highs")
    return -res.fun


def test_hand_case_cuts_what_the_triangles_allow() -> None:
    """x in [-1, 1]^2 with |x1 - x2| <= 0.2: relu is 1-Lipschitz and monotone, so
    y1 - y2 <= 0.2; the triangles allow (x, y) = (0, 0, 0.5, 0), and y1 - y2 up to 0.6 (at
    x = (0.2, 0), y = (0.6, 0))."""
    lo, hi = -np.ones(2), np.ones(2)
    dirs = octagon_directions(2)  # rows (1, -1) and (1, 1)
    rows = joint_rows(lo, hi, dirs, np.array([-0.2, -np.inf]), np.array([0.2, np.inf]))
    point = np.array([0.0, 0.0, 0.5, 0.0])
    W = np.concatenate([rows.bx, rows.ay], 1)
    assert (W @ point > rows.c + 1e-6).any()
    obj = np.array([0.0, 0.0, 1.0, -1.0])
    assert _lp_max(obj, lo, hi, []) == pytest.approx(0.6, abs=1e-9)
    assert _lp_max(obj, lo, hi, [(W, rows.c)]) == pytest.approx(0.2, abs=1e-6)
    # a box alone adds nothing: conv of a product of graphs is the product of the triangles
    none = joint_rows(lo, hi, dirs, np.full(2, -np.inf), np.full(2, np.inf))
    assert none.size == 0


def test_groups_prefer_overlapping_inputs() -> None:
    """Neurons 0 and 1 share their input row (up to sign and scale), 2 and 3 another one."""
    W = np.array([[1.0, 2.0, 0.0], [-2.0, -4.0, 0.1], [0.0, 0.3, 1.0], [0.1, 0.6, 2.0], [1.0, -1.0, 1.0]])
    import scipy.sparse as sp

    lo, hi = -np.ones(5), np.ones(5)
    pairs = grp.choose(sp.csr_matrix(W), lo, hi, 2, 2)
    assert {tuple(sorted(p)) for p in pairs.tolist()} == {(0, 1), (2, 3)}
    triples = grp.choose(sp.csr_matrix(W), lo, hi, 3, 10)
    assert triples.shape[1] == 3 and len({frozenset(t) for t in triples.tolist()}) == len(triples)
    for a, b in itertools.combinations(triples.tolist(), 2):
        assert len(set(a) & set(b)) <= 1  # sparsity: groups share at most k - 2 neurons


def test_extra_rows_hook() -> None:
    net = random_mlp([2, 3, 1], seed=0).to(torch.float64)
    enc = encode(net, -np.ones(2), np.ones(2))
    model = lower(enc, "lp")
    import scipy.sparse as sp

    more = add_rows(model, sp.csr_matrix(np.ones((1, 2))), np.array([-1.0]), np.array([1.0]))
    assert more.n_rows == model.n_rows + 1 and more.n_vars == model.n_vars
    assert add_rows(model, sp.csr_matrix((0, 2)), np.zeros(0), np.zeros(0)) is model
    with pytest.raises(ValueError):
        add_rows(model, sp.csr_matrix(np.ones((1, model.n_vars + 1))), np.zeros(1), np.ones(1))


# --- the bounder on small networks ------------------------------------------------------------

def _domains(n_in: int, n_out: int, seed: int, N: int = 3, width: float = 0.8) -> Domains:
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(N, n_in, generator=g, dtype=torch.float64) - 0.5
    return Domains(lo, lo + width, torch.randn(N, 2, n_out, generator=g, dtype=torch.float64))


def _triangle_lp(net, dom: Domains, inter: dict) -> np.ndarray:
    """The ``lp`` bound (encoders' triangle LP) on the given intermediate boxes."""
    out = []
    for i in range(dom.size):
        mine = {k: (lo[i], hi[i]) for k, (lo, hi) in inter.items()}
        out.append(row_bounds(net, dom.lower[i].numpy(), dom.upper[i].numpy(), dom.C[i].numpy(),
                              CFG, DISP, 30.0, intermediate=mine))
    return np.array(out)


def _widen(v: np.ndarray) -> np.ndarray:
    """The downward widening krelu applies to its LP optima (monotone, so orders survive)."""
    eps = prove_eps(CFG)
    return np.where(np.isfinite(v), v - eps * (1 + np.abs(v)), v)


def test_tighter_than_triangle_lp_with_same_intermediate_bounds() -> None:
    tighter = total = 0
    for seed in range(5):
        net = random_mlp([4, 12, 12, 3], seed=seed).to(torch.float64)
        dom = _domains(4, 3, seed)
        b = KRelu().bound(net, dom)
        kr = b.lower.numpy()
        lp = _widen(_triangle_lp(net, dom, b.intermediate))
        assert np.isfinite(kr).all()
        assert (kr >= lp - 1e-6).all(), f"seed {seed}: krelu below lp by {(lp - kr).max():.3g}"
        tighter += int((kr > lp + 1e-4).sum())
        total += kr.size
    assert tighter >= 1
    print(f"krelu strictly tighter than lp on {tighter}/{total} rows")


def _milp_min(net, lo: np.ndarray, hi: np.ndarray, c: np.ndarray, inter: dict, phases: dict) -> float:
    """Exact minimum of ``c · f(x)`` (a MILP point's value: an upper bound of the minimum)."""
    enc = encode(net, lo, hi, phases, inter)
    model = lower(enc, "milp", c[None], np.zeros(1))
    res = DISP.solve(model, 30.0, CFG.feasibility_tol)
    assert res.status == "optimal"
    return float(res.value)


def _sampled_min(net, dom: Domains, n: int = 4000) -> np.ndarray:
    out = []
    for i in range(dom.size):
        x = dom.lower[i] + (dom.upper[i] - dom.lower[i]) * torch.rand(n, dom.lower.shape[1], dtype=torch.float64)
        out.append((net.forward(x) @ dom.C[i].T).amin(0).numpy())
    return np.array(out)


@pytest.mark.parametrize("k", [2, 3])
def test_sound_against_milp_and_samples(k: int) -> None:
    torch.manual_seed(0)
    for seed in range(3):
        net = random_mlp([3, 10, 10, 2], seed=10 + seed).to(torch.float64)
        dom = _domains(3, 2, seed, N=2, width=1.0)
        b = KRelu(k=k).bound(net, dom)
        kr = b.lower.numpy()
        assert (kr <= _sampled_min(net, dom) + 1e-6).all()
        for i in range(dom.size):
            inter = {j: (lo[i], hi[i]) for j, (lo, hi) in b.intermediate.items()}
            for r in range(dom.C.shape[1]):
                exact = _milp_min(net, dom.lower[i].numpy(), dom.upper[i].numpy(), dom.C[i, r].numpy(), inter, {})
                assert kr[i, r] <= exact + 1e-6


def test_sound_with_fixed_phases_on_conv_and_residual_nets() -> None:
    from tests.test_encoders import _conv_net, _residual_net

    for net in (_conv_net(), _residual_net()):
        n_in = net.n_inputs
        dom = _domains(n_in, net.n_outputs, 3, N=4, width=0.6)
        relus = [i for i, n in enumerate(net.nodes) if isinstance(n.layer, L.ReLU)]
        centre = (dom.lower + dom.upper) / 2
        vals = net.forward_all(centre)
        phases = {}
        for r in relus:
            z = vals[net.nodes[r].inputs[0]].reshape(dom.size, *net.nodes[r].out_shape)
            mask = torch.rand(z.shape, generator=torch.Generator().manual_seed(r)) < 0.3
            mask[:2] = False
            phases[r] = torch.where(mask, torch.where(z >= 0, 1, -1), 0).to(torch.int8)
        dom = Domains(dom.lower, dom.upper, dom.C, phases)
        kr = KRelu().bound(net, dom).lower
        x = dom.lower[:, None] + (dom.upper - dom.lower)[:, None] * torch.rand(dom.size, 3000, n_in, dtype=torch.float64)
        for i in range(dom.size):
            xs = torch.cat([centre[i:i + 1], x[i]])
            pre = net.forward_all(xs)
            ok = torch.ones(xs.shape[0], dtype=torch.bool)
            for r in relus:
                z = pre[net.nodes[r].inputs[0]].reshape(xs.shape[0], -1)
                ph = phases[r][i].reshape(-1)
                ok &= ((ph == 0) | ((ph > 0) & (z >= 0)) | ((ph < 0) & (z <= 0))).all(1)
            seen = (net.forward(xs[ok]) @ dom.C[i].T).amin(0)
            assert (kr[i] <= seen + 1e-6).all()


def test_refusals_and_settings() -> None:
    sig = random_mlp([2, 4, 2], seed=0, act=L.Sigmoid)
    with pytest.raises(BounderRefusal, match="Sigmoid"):
        KRelu().bound(sig, _domains(2, 2, 0))
    net = random_mlp([4, 12, 12, 3], seed=0)
    with pytest.raises(BounderRefusal, match="max_lp_size"):
        KRelu(max_lp_size=10).bound(net, _domains(4, 3, 0))
    cfg = from_dict({"multi_neuron": {"k": 3, "groups_per_layer": 5}})
    s, solver = KRelu(config=cfg).resolved()
    assert (s.k, s.groups_per_layer, s.time_limit) == (3, 5, MultiNeuronConfig().time_limit)
    assert KRelu(k=2, config=cfg).resolved()[0].k == 2  # explicit arguments win
    assert KRelu(config=MultiNeuronConfig(groups_per_layer=7)).resolved()[0].groups_per_layer == 7
    assert solver == Config().solver
    with pytest.raises(ConfigError):
        from_dict({"multi_neuron": {"k": 4}})
    with pytest.raises(ConfigError):
        from_dict({"multi_neuron": {"group": 4}})
    assert get_bounder("krelu").name == "krelu"


def test_float32_domains_get_float32_lower_bounds_rounded_down() -> None:
    net = random_mlp([4, 12, 12, 3], seed=1)
    dom64 = _domains(4, 3, 1)
    dom32 = Domains(dom64.lower.float(), dom64.upper.float(), dom64.C.float())
    out = KRelu().bound(net, dom32).lower
    assert out.dtype == torch.float32
    exact = KRelu().bound(net, Domains(dom32.lower.double(), dom32.upper.double(), dom32.C.double()))
    assert (out.double() <= exact.lower + 1e-12).all()


# --- orders with other methods (same intermediate bounds) -------------------------------------

@pytest.mark.parametrize("module, method", [("bab.bounding.duality.wk", "wk"),
                                            ("bab.bounding.zonotope.deepz", "zonotope")])
def test_triangle_lp_dominates_on_the_same_boxes(module: str, method: str) -> None:
    """The triangle LP over another method's intermediate boxes is at least that method's
    bound: wk's dual and DeepZ's parallelograms are both relaxations inside the triangles."""
    pytest.importorskip(module)
    for seed in range(3):
        net = random_mlp([4, 12, 12, 3], seed=seed).to(torch.float64)
        dom = _domains(4, 3, seed)
        b = get_bounder(method).bound(net, dom)
        lp = _triangle_lp(net, dom, b.intermediate)
        assert (lp >= b.lower.detach().double().numpy() - 1e-6).all(), method


# --- end to end --------------------------------------------------------------------------------

def test_cli_verify_with_krelu(tmp_path) -> None:
    from tests.builders import mlp_onnx, run_bab, write_property

    # h = relu([x, -x]); y0 = |x| + 1e-3, y1 = x: "y0 <= y1" never holds, but intervals give
    # y0 - y1 >= -1 + 1e-3 on [-1, 1]; the (triangle) LP is exact here
    w1, w2 = np.array([[1.0], [-1.0]]), np.array([[1.0, 1.0], [1.0, -1.0]])
    model = mlp_onnx(tmp_path / "m.onnx", [w1, w2], [np.zeros(2), np.array([1e-3, 0.0])])
    prop = write_property(tmp_path / "p.vnnlib", [-1.0], [1.0], 2, "(assert (<= Y_0 Y_1))")
    p = run_bab("verify", str(model), str(prop), "--method", "krelu", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("unsat") and "[krelu]" in p.stdout
