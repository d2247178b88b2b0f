"""Branch and bound on any nonlinearity: interval splits of Sigmoid/Tanh neurons (alone and mixed
with ReLU), optimisable tangent points, and the brancher's choice among all nonlinear neurons.

Oracles: dense samples of tiny networks (every open domain's bound stays below the sampled
minimum over the points of that domain), hand-computed chord/tangent lines, and exact verdicts
on tiny ReLU networks from the existing MILP-backed search.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from bab.bounding import Domains
from bab.bounding.polyhedra.alpha import AlphaCrown
from bab.bounding.polyhedra.beta import BetaCrown
from bab.bounding.polyhedra.crown import Crown
from bab.bounding.polyhedra.relax import s_shaped_relax
from bab.bounding.polyhedra.sshape import default_t, remap_t, sshape_data, sshape_relax
from bab.engine import Engine, EngineOptions
from bab.relu_split import ReluSplitOptions, ReluSplitProblem, split_point
from bab.result import Counterexample
from heuristics.relu import BaBSR, FSB, Widest
from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO
from tests.irnets import chain
from vnnlib.spec import Clause, Region

SLACK = 1e-5
FUNCS = {L.Sigmoid: torch.sigmoid, L.Tanh: torch.tanh}


def dag(spec: list[tuple[L.Layer, tuple[int, ...]]], n_in: int) -> Network:
    """A DAG network from ``(layer, inputs)`` pairs (shapes by a forward pass)."""
    vals, nodes = [], []
    x = torch.zeros(1, n_in)
    for layer, ins in spec:
        vals.append(layer.forward(*[x if i < 0 else vals[i] for i in ins]))
        nodes.append(L.Node(layer, ins, tuple(vals[-1].shape[1:])))
    n_out = math.prod(vals[-1].shape[1:])
    io = OnnxIO("x", (1, n_in), "float32", "y", (1, n_out), True)
    return Network(nodes, (n_in,), tuple(vals[-1].shape[1:]), io)


def mlp(sizes: list[int], acts: list[type], seed: int) -> Network:
    """A random MLP with the given activation after each hidden layer."""
    g = torch.Generator().manual_seed(seed)
    layers: list[L.Layer] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(L.Linear(2.0 * torch.randn(b, a, generator=g) / math.sqrt(a), 0.3 * torch.randn(b, generator=g)))
        if i < len(sizes) - 2:
            layers.append(acts[i]())
    return chain(layers, (sizes[0],))


def node_values(net: Network, x: torch.Tensor) -> list[torch.Tensor]:
    """Every node's output for the inputs ``x`` ``[S, n_in]`` (float64)."""
    vals: list[torch.Tensor] = []
    for node in net.nodes:
        vals.append(node.layer.forward(*[x if i < 0 else vals[i] for i in node.inputs]))
    return vals


def grid(lo: np.ndarray, hi: np.ndarray, n: int = 81) -> torch.Tensor:
    """A dense grid of a 2-D box plus its corners, float64 ``[n*n, 2]``."""
    a, b = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return torch.tensor(np.stack([a.ravel(), b.ravel()], 1))


def _replay(net: Network, C: np.ndarray, d: np.ndarray):
    """The replay of a counterexample: the network's own forward pass satisfies every row."""
    def replay(x: np.ndarray, index: int):
        with torch.no_grad():
            y = net.forward(torch.tensor(x, dtype=torch.float32)[None])[0].double().numpy()
        return Counterexample(x, y) if bool(np.all(C @ y <= d)) else None
    return replay


def problem(net: Network, lo, hi, C, d, **opts) -> ReluSplitProblem:
    region = Region(np.asarray(lo, float), np.asarray(hi, float), (Clause(np.asarray(C, float), np.asarray(d, float)),))
    options = ReluSplitOptions(**({"root_iterations": 5, "attack": False} | opts))
    return ReluSplitProblem(net, region, 0, BetaCrown(iterations=10), _replay(net, np.asarray(C), np.asarray(d)), options)


# --- tangent points ---------------------------------------------------------------------------

INTERVALS = [(-6.0, -0.5), (0.3, 5.0), (-4.0, 0.7), (-0.6, 5.0), (-3.0, 3.0), (-9.0, 9.0), (-0.01, 0.02), (1.0, 1.0)]


@pytest.mark.parametrize("kind", [L.Sigmoid, L.Tanh])
def test_every_tangent_point_gives_valid_lines(kind) -> None:
    """Any parameter in [0, 1] (and out of range: clamped) yields lines valid on the interval."""
    l = torch.tensor([a for a, _ in INTERVALS])[None]
    u = torch.tensor([b for _, b in INTERVALS])[None]
    data = sshape_data(kind, l, u)
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.zeros(1, 1, 2, len(INTERVALS)), torch.ones(1, 1, 2, len(INTERVALS)),
                   torch.rand(1, 30, 2, len(INTERVALS), generator=g), torch.full((1, 1, 2, len(INTERVALS)), 1.7)], 1)
    r = sshape_relax(data, t)
    x = l.double() + torch.linspace(0, 1, 2001, dtype=torch.float64)[:, None] * (u - l).double()  # [S, n]
    fx = FUNCS[kind](x)[:, None]  # [S, 1, n]
    low = r.lw.double()[0] * x[:, None] + r.lb.double()[0]
    up = r.uw.double()[0] * x[:, None] + r.ub.double()[0]
    assert bool((low <= fx).all()) and bool((up >= fx).all())


@pytest.mark.parametrize("kind", [L.Sigmoid, L.Tanh])
def test_default_points_reproduce_the_fixed_relaxation(kind) -> None:
    l = torch.tensor([a for a, _ in INTERVALS])[None]
    u = torch.tensor([b for _, b in INTERVALS])[None]
    data = sshape_data(kind, l, u)
    r, base = sshape_relax(data, default_t(data).unsqueeze(1)), s_shaped_relax(kind, l, u)
    for a, b in ((r.lw, base.lw), (r.lb, base.lb), (r.uw, base.uw), (r.ub, base.ub)):
        assert torch.allclose(a, b, atol=1e-6)


def test_remap_keeps_the_tangent_point_inside_the_child() -> None:
    """Splitting [-4, 2] at 0: the lower tangent point of the parent (in [l, d_l]) stays the same
    point in the convex child [-4, 0]."""
    l, u = torch.tensor([[-4.0]]), torch.tensor([[2.0]])
    t = torch.tensor([[[[0.4], [0.0]]]])
    parent = sshape_data(L.Sigmoid, l, u)
    d = parent.lo_a + 0.4 * (parent.lo_b - parent.lo_a)
    t2 = remap_t(L.Sigmoid, l, u, l, torch.zeros_like(u), t)
    child = sshape_data(L.Sigmoid, l, torch.zeros_like(u))
    assert float(child.lo_a + t2[0, 0, 0] * (child.lo_b - child.lo_a)) == pytest.approx(float(d), abs=1e-5)


@pytest.mark.parametrize("kind", [L.Sigmoid, L.Tanh])
def test_alpha_tangents_tighten_and_stay_sound(kind) -> None:
    """alpha-CROWN with optimised tangent points: never below CROWN, never above sampled minima."""
    net = mlp([2, 8, 8, 3], [kind, kind], seed=5)
    lo, hi = np.array([-1.0, -0.5]), np.array([0.5, 1.0])
    C = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]]])
    dom = Domains(torch.tensor(lo, dtype=torch.float32)[None], torch.tensor(hi, dtype=torch.float32)[None], C)
    crown = Crown().bound(net, dom).lower
    alpha = AlphaCrown(iterations=12, optimize_intermediate=True).bound(net, dom).lower
    with torch.no_grad():
        y = net.forward(grid(lo, hi).float()).double()
    true_min = (y @ C[0].double().T).min(0).values
    assert bool((alpha >= crown - 1e-6).all())
    assert bool((alpha[0].double() <= true_min + SLACK).all())
    assert float((alpha - crown).max()) > 1e-3  # the tangent points moved somewhere useful


# --- a hand-computed sigmoid split ------------------------------------------------------------

def test_sigmoid_split_children_are_tighter_by_hand() -> None:
    """``y = sigmoid(x)`` on [-2, 2], split at 0. The concave child [0, 2] has the chord
    ``0.5 + x (s(2) - 0.5) / 2`` below (hand values; above the parent's lower line on [0, 2]) and
    the tangent at 1 above (hand values; the least area of all tangents, so at most the parent's
    upper line's area on [0, 2], whose tangent point is also a valid choice in the child)."""
    s = lambda v: 1 / (1 + math.exp(-v))
    l, u = torch.tensor([[-2.0, 0.0]]), torch.tensor([[2.0, 2.0]])
    r = s_shaped_relax(L.Sigmoid, l, u)
    lw, lb, uw, ub = (t[0, 0] for t in (r.lw, r.lb, r.uw, r.ub))
    assert float(lw[1]) == pytest.approx((s(2) - 0.5) / 2, abs=1e-6)
    assert float(lb[1]) == pytest.approx(0.5, abs=1e-6)
    assert float(uw[1]) == pytest.approx(s(1) * (1 - s(1)), abs=1e-6)
    assert float(ub[1]) == pytest.approx(s(1) - s(1) * (1 - s(1)), abs=1e-6)
    xs = torch.linspace(0, 2, 101)
    assert bool((lw[1] * xs + lb[1] >= lw[0] * xs + lb[0] - 1e-7).all())  # child lower line above
    assert float((uw[1] * xs + ub[1]).mean()) <= float((uw[0] * xs + ub[0]).mean())  # less area
    t = torch.tensor([[[[1.0, 0.5], [0.0, 0.5]]]])  # the parent's default points, remapped
    same = sshape_relax(sshape_data(L.Sigmoid, l[:, 1:], u[:, 1:]),
                        remap_t(L.Sigmoid, l[:, :1], u[:, :1], l[:, 1:], u[:, 1:], t[..., :1]))
    assert float(same.uw[0, 0, 0]) == pytest.approx(float(uw[0]), abs=1e-6)
    # the same order through BaB: splitting y = sigmoid(x) lifts the bound of the child [0, 2]
    net = chain([L.Linear(torch.tensor([[1.0]]), torch.tensor([0.0])), L.Sigmoid(),
                 L.Linear(torch.tensor([[1.0]]), torch.tensor([0.0]))], (1,))
    p = problem(net, [-2.0], [2.0], [[1.0]], [0.5])
    root = p.bound(p.roots())
    kids = p.bound(p.with_splits(root, torch.tensor([0]), +1))
    gap_root, gap_kid = float(root["priority"][0]), float(kids["priority"][0])
    assert gap_root == pytest.approx(s(-2) - 0.5, abs=1e-4)  # IBP/CROWN: min y = s(-2)
    assert gap_kid == pytest.approx(0.0, abs=1e-4) and gap_kid > gap_root


def test_split_point_is_zero_inside_else_midpoint() -> None:
    l, u = torch.tensor([-3.0, 1.0, -4.0]), torch.tensor([1.0, 3.0, -2.0])
    assert split_point(L.Sigmoid, l, u).tolist() == [0.0, 2.0, -3.0]
    assert split_point(L.Exp, l, u).tolist() == [-1.0, 2.0, -3.0]


# --- soundness of split domains ---------------------------------------------------------------

NETS = {
    "sigmoid": lambda: mlp([2, 8, 8, 3], [L.Sigmoid, L.Sigmoid], seed=1),
    "tanh": lambda: mlp([2, 8, 8, 3], [L.Tanh, L.Tanh], seed=2),
    "mixed": lambda: mlp([2, 8, 8, 8, 3], [L.ReLU, L.Sigmoid, L.Tanh], seed=3),
}


def _in_domain(p: ReluSplitProblem, batch, i: int, vals: list[torch.Tensor]) -> torch.Tensor:
    """Samples inside domain ``i``: ReLU phases and non-ReLU clips (phase bits) respected."""
    ok = torch.ones(vals[0].shape[0], dtype=torch.bool)
    for r in p.split_nodes:
        z = vals[p.pre[r]].reshape(vals[0].shape[0], -1)
        ph = batch[f"ph{r}"][i].reshape(-1)
        if r in p.branchable:
            ok &= ((z >= 0) | (ph <= 0)).all(1) & ((z <= 0) | (ph >= 0)).all(1)
            continue
        lo, hi = batch[f"lo{p.pre[r]}"][i].reshape(-1).double(), batch[f"hi{p.pre[r]}"][i].reshape(-1).double()
        ok &= ((z >= lo) | ((ph & 1) == 0)).all(1) & ((z <= hi) | ((ph & 2) == 0)).all(1)
    return ok


def _sampled(net: Network, lo: np.ndarray, hi: np.ndarray, row: np.ndarray) -> tuple[list, torch.Tensor]:
    """Every node's values on a 61 x 61 grid of the box (float64), and ``row . y`` there."""
    x = grid(lo, hi, 61)
    with torch.no_grad():
        vals = [v.double() for v in node_values(net, x.float())]
    return vals, vals[-1] @ torch.tensor(row[0])


@pytest.mark.parametrize("name", list(NETS))
def test_split_domains_bounds_contain_samples(name) -> None:
    """Three rounds of splitting: every open child's bound is at most the minimum over the sampled
    points of that child (domains are never refuted while holding a sample below ``d``)."""
    net = NETS[name]()
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    row = np.array([[1.0, -0.5, 0.25]])
    vals, values = _sampled(net, lo, hi, row)
    d = float(values.min()) + 0.01  # sat: the search keeps splitting around the minimiser
    p = problem(net, lo, hi, row, [d], refine="all")
    batch = p.bound(p.roots())
    split_kinds = set()
    for _ in range(3):
        if not len(batch):
            break
        kids = p.split(batch, BaBSR())
        split_kinds |= {type(net.nodes[int(s)].layer) for s in kids["split"]}
        batch = p.bound(kids)
        for i in range(len(batch)):
            inside = _in_domain(p, batch, i, vals)
            if bool(inside.any()):
                assert float(batch["priority"][i]) <= float(values[inside].min()) - d + SLACK
    assert split_kinds - {L.ReLU}  # a non-ReLU neuron was split


VERDICTS = [("sigmoid", -0.1, False), ("sigmoid", 0.1, True), ("mixed", 0.1, True),
            pytest.param("mixed", -0.1, False, marks=pytest.mark.slow),
            pytest.param("sigmoid", -0.02, False, marks=pytest.mark.slow)]


def _search(name: str, offset: float, limit: float, **opts):
    """The whole search on ``NETS[name]`` against ``0.5 y0 + y1 - y2 <= min + offset`` (the
    minimum over a dense grid); with ``lp_share`` in ``opts``, also with the leaf solver.
    Returns the outcome, the problem, the row and ``d``."""
    from encoders.decide import LeafSolver

    net = NETS[name]()
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    row = np.array([[0.5, 1.0, -1.0]])
    with torch.no_grad():
        values = net.forward(grid(lo, hi).float()).double() @ torch.tensor(row[0])
    d = float(values.min()) + offset
    p = problem(net, lo, hi, row, [d], attack=True, **opts)
    leaf = None
    if "lp_share" in opts:
        p.leaf_solver = LeafSolver()
        leaf = p.decide_leaves
    end = time.monotonic() + limit

    def check() -> None:
        if time.monotonic() > end:
            raise TimeoutError(f"the search did not finish in {limit:.0f} s")
    out = Engine(p, FSB(k=2), EngineOptions(batch_size=16, max_domains=20000), check, leaf_solver=leaf).run()
    return out, p, row, d


@pytest.mark.parametrize("name, offset, sat", VERDICTS)
def test_verdicts_agree_with_dense_sampling(name, offset, sat) -> None:
    """The whole search: unsat below the sampled minimum, sat above it (found by the search's
    own attacks; the unsat cases that need many interval splits run under ``-m slow``). The
    tanh network's unsat case at -0.1 is left out: its root gap (~1.8) closes too slowly by
    neuron splits on a 2-input network (over 600 s; input splitting is the tool there)."""
    out, _, row, d = _search(name, offset, limit=600)
    assert out.verdict == ("sat" if sat else "unsat"), out.reason
    if sat:
        assert float(row[0] @ out.counterexample.y) <= d + 1e-6


def test_relu_network_search_unchanged() -> None:
    """On a ReLU-only network no non-ReLU node is split and the phases are the whole domain."""
    net = mlp([2, 8, 8, 3], [L.ReLU, L.ReLU], seed=4)
    p = problem(net, [-1.0, -1.0], [1.0, 1.0], [[1.0, -1.0, 0.0]], [-100.0])
    roots = p.roots()
    assert p.shaped == [] and p.split_nodes == p.branchable
    assert not any(k.startswith("al") and int(k[2:]) not in p.branchable for k in roots.fields)


# --- the brancher -----------------------------------------------------------------------------

def _mixed_pair(relu_w: float = 0.05, relu_b: float = 4.995, sig_w: float = 5.0) -> Network:
    """``relu_w relu(5.005 x1 + relu_b) + sig_w sigmoid(4 x2)`` on [-1, 1]^2. By default the ReLU
    is barely unstable ([-0.01, 10], a thin triangle) and weighted little; the sigmoid spans
    [-4, 4] with a large weight."""
    t = torch.tensor
    return dag([(L.Linear(t([[5.005, 0.0]]), t([relu_b])), (-1,)), (L.ReLU(), (0,)),
                (L.Linear(t([[0.0, 4.0]]), t([0.0])), (-1,)), (L.Sigmoid(), (2,)),
                (L.Linear(t([[relu_w]]), t([0.0])), (1,)), (L.Linear(t([[sig_w]]), t([0.0])), (3,)),
                (L.Add(), (4, 5))], 2)


@pytest.mark.parametrize("brancher", [BaBSR(), FSB(k=1), Widest()])
@pytest.mark.parametrize("weights, best", [((0.05, 4.995, 5.0), 3), ((-5.0, 0.0, 0.05), 1)])
def test_brancher_ranks_relu_and_sigmoid_neurons_together(brancher, weights, best) -> None:
    """One search over both kinds: the sigmoid when it dominates the bound's looseness, the
    ReLU (a balanced [-5, 5] triangle under a large negative weight: its upper line is used) in
    the mirrored network."""
    net = _mixed_pair(*weights)
    p = problem(net, [-1.0, -1.0], [1.0, 1.0], [[1.0]], [5.2])  # above the minimum: stays open
    batch = p.bound(p.roots())
    assert p.branchable == [1] and p.shaped == [3] and len(batch) == 1
    which, _ = p.locate(brancher.choose(p, batch))
    assert [p.split_nodes[int(w)] for w in which] == [best]


# --- LP refutation of domains (networks with non-ReLU nonlinearities) ---------------------------

@pytest.mark.parametrize("name, offset, sat", [("sigmoid", -0.02, False), ("sigmoid", 0.1, True), ("mixed", 0.1, True),
                                               pytest.param("mixed", -0.1, False, marks=pytest.mark.slow)])
def test_lp_refutation_keeps_verdicts_and_closes_domains(name, offset, sat) -> None:
    """With LP tries the verdicts still agree with dense sampling; on the unsat cases the LP
    refutes domains."""
    out, p, row, d = _search(name, offset, limit=300, lp_share=0.5)
    assert out.verdict == ("sat" if sat else "unsat"), out.reason
    if sat:
        assert float(row[0] @ out.counterexample.y) <= d + 1e-6
    else:
        assert p.stats["lp_pruned"] > 0 and p.stats["relaxed_leaves"] >= p.stats["lp_pruned"]


def test_lp_refute_never_closes_a_domain_holding_a_violation() -> None:
    """Soundness: after two rounds of splits, the LP refutes no child that holds a sampled
    point below ``d`` (a sat property: the minimiser's neighbourhood stays open)."""
    from encoders.decide import LeafSolver

    net = NETS["mixed"]()
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    row = np.array([[1.0, -0.5, 0.25]])
    vals, values = _sampled(net, lo, hi, row)
    d = float(values.min()) + 0.05
    p = problem(net, lo, hi, row, [d], refine="all")
    p.leaf_solver = LeafSolver()
    batch = p.bound(p.roots())
    held = 0
    for _ in range(2):
        batch = p.bound(p.split(batch, BaBSR()))
        for i in range(len(batch)):
            res = p._solve_leaf(batch.select(torch.tensor([i])), 10.0, relaxed=True)
            inside = _in_domain(p, batch, i, vals)
            violated = bool((values[inside] <= d).any())
            held += violated
            assert not (violated and res.status == "infeasible")
            assert res.status in ("infeasible", "unknown")
    assert held > 0


def test_lp_refute_gives_up_when_encoding_outlasts_its_time_limit() -> None:
    """The encoding of a (possibly large) network is checked against the try's time limit."""
    from encoders.decide import LeafSolver

    net = NETS["mixed"]()
    res = LeafSolver().refute(net, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([[1.0, -0.5, 0.25]]),
                              np.array([-100.0]), time_limit=0.0)
    assert res.status == "unknown" and "encoding" in res.reason
    ok = LeafSolver().refute(net, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([[1.0, -0.5, 0.25]]),
                             np.array([-100.0]), time_limit=30.0)
    assert ok.status == "infeasible"  # the row's value is far above -100 everywhere
