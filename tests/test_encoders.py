"""Solver encodings: exact affine maps, the encoding, back ends, numerics and the leaf API."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
import scipy.optimize
import torch

import bab
from bab.config import Config, FalsifyConfig, SolverConfig, VerifyConfig
from bab.result import Status
from encoders import backends
from encoders.affine import affine_map
from encoders.decide import decide_leaf, dispatcher_for, solve_clause
from encoders.encoding import UnsupportedNetwork, encode, float64_network
from encoders.model import lower
from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO
from tests.builders import random_mlp as onnx_mlp
from tests.irnets import chain, random_mlp
from vnnlib.spec import Clause, Region, Spec

CFG = SolverConfig()


def _conv_net(seed: int = 0) -> Network:
    """Normalise, pad, conv, ReLU, max-pool, avg-pool, transpose, flatten, linear (no sigmoid)."""
    g = torch.Generator().manual_seed(seed)
    return chain([
        L.ElementwiseAffine(torch.tensor([[[2.0]]]), torch.tensor(-0.5)),
        L.Pad((1, 0, 1, 1), value=0.25),
        L.Conv2d(torch.randn(4, 1, 3, 3, generator=g) / 3, 0.1 * torch.randn(4, generator=g), stride=(1, 1)),
        L.ReLU(),
        L.MaxPool2d((2, 2), (2, 2), ceil_mode=True),
        L.Conv2d(torch.randn(4, 2, 2, 2, generator=g) / 2, 0.1 * torch.randn(4, generator=g), groups=2),
        L.AvgPool2d((2, 2), (1, 1), padding=(1, 1), count_include_pad=False),
        L.Transpose((0, 2, 1)),
        L.Reshape((-1,)),
        L.ReLU(),
        L.Linear(torch.randn(3, 24, generator=g) / 5, torch.zeros(3)),
    ], (1, 6, 5)).to(torch.float64)


def _residual_net() -> Network:
    """x -> Linear -> ReLU -> Linear, plus a skip Add from the first Linear."""
    g = torch.Generator().manual_seed(1)
    lin = lambda a, b: L.Linear(torch.randn(b, a, generator=g, dtype=torch.float64), torch.randn(b, generator=g, dtype=torch.float64) * 0.1)
    nodes = [L.Node(lin(3, 5), (-1,), (5,)), L.Node(L.ReLU(), (0,), (5,)), L.Node(lin(5, 5), (1,), (5,)),
             L.Node(L.Add(), (2, 0), (5,)), L.Node(L.ReLU(), (3,), (5,)), L.Node(lin(5, 2), (4,), (2,))]
    io = OnnxIO("x", (1, 3), "float64", "y", (1, 2), True)
    return Network(nodes, (3,), (2,), io, dtype=torch.float64)


def test_affine_maps_are_exact() -> None:
    net = _conv_net()
    x = torch.randn(3, *net.input_shape, dtype=torch.float64)
    vals = net.forward_all(x.reshape(3, -1))
    for i, node in enumerate(net.nodes):
        if isinstance(node.layer, (L.ReLU, L.MaxPool2d)):
            continue
        inp = x if node.inputs[0] < 0 else vals[node.inputs[0]]
        in_shape = net.input_shape if node.inputs[0] < 0 else net.nodes[node.inputs[0]].out_shape
        M, b = affine_map(node.layer, tuple(in_shape), tuple(node.out_shape))
        got = inp.reshape(3, -1).numpy() @ M.T + b
        assert np.allclose(got, vals[i].reshape(3, -1).numpy(), atol=1e-12), node.layer.kind


@pytest.mark.parametrize("make", [_conv_net, _residual_net])
def test_point_box_encoding_is_the_network(make) -> None:
    net = make()
    x = np.random.default_rng(0).uniform(0, 1, net.n_inputs)
    enc = encode(net, x, x)
    assert enc.n_unstable == 0
    v = np.zeros(enc.n_vars)
    v[enc.inputs] = x
    assert np.allclose(enc.output.A @ v + enc.output.c, net.evaluate(x)[0], atol=1e-10)


@pytest.mark.parametrize("make", [_conv_net, _residual_net])
def test_milp_minimum_matches_sampling(make) -> None:
    net = make()
    rng = np.random.default_rng(2)
    lo = rng.uniform(0, 0.5, net.n_inputs)
    hi = lo + 0.04
    enc = encode(net, lo, hi)
    assert enc.n_unstable > 0
    C, disp = np.array([[1.0, -1.0] + [0.0] * (net.n_outputs - 2)]), dispatcher_for(CFG)
    mins = {}
    for mode in ("milp", "lp"):
        res = disp.solve(lower(enc, mode, C, np.zeros(1)), 30, 1e-7)
        assert res.status == "optimal"
        mins[mode] = res.value
    sample = net.evaluate(rng.uniform(lo, hi, (5000, net.n_inputs))) @ C.T
    assert mins["lp"] <= mins["milp"] + 1e-7 and mins["milp"] <= sample.min() + 1e-7
    x = np.asarray(disp.solve(lower(enc, "milp", C, np.zeros(1)), 30, 1e-7).x)[enc.inputs]
    assert abs((net.evaluate(x) @ C.T).item() - mins["milp"]) < 1e-5  # the MILP point is real


def test_sigmoid_is_relaxed_and_smt_refuses(tmp_path) -> None:
    """Sigmoid is encoded by its relaxation (milp/lp prove a far property); z3 refuses it."""
    net = random_mlp([2, 3, 2], act=L.Sigmoid)
    assert encode(net, np.zeros(2), np.ones(2)).relaxed == ["Sigmoid (node 1)"]

    class Odd(L.Layer):
        def forward(self, x):
            return x

    with pytest.raises(UnsupportedNetwork, match="Odd"):
        encode(chain([Odd()], (2,)), np.zeros(2), np.ones(2))
    path = onnx_mlp(tmp_path / "s.onnx", [2, 3, 2], act="Sigmoid")
    spec = Spec((Region(np.zeros(2), np.ones(2), (Clause(np.array([[1.0, -1.0]]), np.array([-50.0])),)),), 2, 2)
    for method, want in (("milp", Status.UNSAT), ("lp", Status.UNSAT), ("smt", Status.UNKNOWN)):
        res = bab.verify(path, spec, Config(verify=VerifyConfig(method=method), falsify=FalsifyConfig(enabled=False)))
        assert res.status is want and (want is Status.UNSAT or "Sigmoid" in res.reason)


def _linear_regions(net: Network, x0: np.ndarray) -> dict[int, np.ndarray]:
    vals = float64_network(net).forward_all(torch.as_tensor(x0)[None])
    return {i: np.where(vals[n.inputs[0]][0].numpy() > 0, 1, -1)
            for i, n in enumerate(net.nodes) if isinstance(n.layer, L.ReLU)}


def _exact_split_min(net: Network, lo, hi, phases, C, d) -> float | None:
    """min over the box of max_i (C y - d)_i on the fixed pattern, by scipy (None: empty)."""
    n = lo.size
    A, c, A_ub, b_ub = np.eye(n), np.zeros(n), [], []
    for i, node in enumerate(net.nodes):
        if isinstance(node.layer, L.Linear):
            w, b = node.layer.weight.double().numpy(), node.layer.bias.double().numpy()
            A, c = w @ A, w @ c + b
        else:
            s = phases[i]
            A_ub += [np.r_[-sj * A[j], 0.0] for j, sj in enumerate(s)]
            b_ub += [sj * c[j] for j, sj in enumerate(s)]
            A, c = A * (s > 0)[:, None], c * (s > 0)
    A_ub += [np.r_[C[i] @ A, -1.0] for i in range(C.shape[0])]
    b_ub += [d[i] - C[i] @ c for i in range(C.shape[0])]
    res = scipy.optimize.linprog(np.r_[np.zeros(n), 1.0], A_ub=np.array(A_ub), b_ub=np.array(b_ub),
                                 bounds=[*zip(lo, hi), (None, None)], method="highs")
    return float(res.fun) if res.status == 0 else None


def test_leaf_on_fully_split_domain_is_exact() -> None:
    rng = np.random.default_rng(5)
    checked = 0
    for seed in range(8):
        net = random_mlp([3, 6, 5, 2], seed=seed)
        lo = rng.uniform(-1, 0, 3)
        hi = lo + 1.0
        phases = _linear_regions(net, rng.uniform(lo, hi))
        C = rng.normal(0, 1, (2, 2))
        exact = _exact_split_min(float64_network(net), lo, hi, phases, C, np.zeros(2))
        for shift in (-0.05, 0.05):
            d = np.full(2, (exact if exact is not None else 0.0) + shift)
            want = "infeasible" if exact is None or shift < 0 else "feasible"
            res = decide_leaf(net, lo, hi, C, d, phases=phases, time_limit=20)
            assert res.status == want, (seed, shift, exact, res)
            if res.status == "feasible":
                y = float64_network(net).evaluate(res.x)[0]
                assert np.all(C @ y <= d + 1e-6) and np.all(res.x >= lo) and np.all(res.x <= hi)
            checked += 1
    assert checked == 16


def test_leaf_with_unstable_neurons_uses_milp() -> None:
    net = random_mlp([3, 8, 2], seed=3)
    lo, hi = -np.ones(3), np.ones(3)
    C = np.array([[1.0, -1.0]])
    vals = net.evaluate(np.random.default_rng(0).uniform(lo, hi, (20000, 3))) @ C.T
    assert decide_leaf(net, lo, hi, C, [vals.min() + 0.01]).status == "feasible"
    assert decide_leaf(net, lo, hi, C, [vals.min() - 0.5]).status == "infeasible"
    phases = {1: np.zeros(8)}  # all free: same answers with explicit (free) phases
    assert decide_leaf(net, lo, hi, torch.tensor(C), torch.tensor([vals.min() - 0.5]), phases).status == "infeasible"


def test_near_tolerance_is_not_unsat() -> None:
    net = chain([L.Linear(torch.eye(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))], (1,), torch.float64)
    enc = encode(net, np.zeros(1), np.ones(1))
    C, d = np.array([[1.0]]), np.array([-1e-9])  # min of y - d is 1e-9 > 0: infeasible by a hair
    res = solve_clause(enc, C, d, CFG, 10, dispatcher_for(CFG))
    assert res.status == "unknown" and "tolerance" in res.reason
    assert decide_leaf(net, [0.0], [1.0], C, d).status == "infeasible"  # Z3 re-check is exact
    off = SolverConfig(recheck=False)
    assert decide_leaf(net, [0.0], [1.0], C, d, config=off).status == "unknown"
    assert decide_leaf(net, [0.0], [1.0], C, [-1e-3]).status == "infeasible"  # clear margin


@pytest.fixture
def fresh_gurobi_state(monkeypatch):
    monkeypatch.setitem(backends._STATE, "unusable", None)
    monkeypatch.setitem(backends._STATE, "too_big", None)
    monkeypatch.setitem(backends._STATE, "warned", False)


def test_gurobi_size_limit_falls_back_once(monkeypatch, caplog, fresh_gurobi_state) -> None:
    gp = pytest.importorskip("gurobipy")
    from encoders.gurobi_backend import GurobiBackend

    def too_large(self, m):
        raise gp.GurobiError(10010, "Model too large for size-limited license")

    monkeypatch.setattr(GurobiBackend, "_optimize", too_large)
    net = random_mlp([3, 8, 2], seed=3)
    enc = encode(net, -np.ones(3), np.ones(3))
    disp = dispatcher_for(SolverConfig(backend="auto"))
    with caplog.at_level(logging.WARNING, logger="encoders"):
        for d in (-5.0, 5.0):
            res = solve_clause(enc, np.array([[1.0, -1.0]]), np.array([d]), CFG, 10, disp)
            assert res.backend == "ortools" and res.status in ("infeasible", "feasible")
    warnings = [r for r in caplog.records if "falling back to OR-Tools" in r.getMessage()]
    assert len(warnings) == 1 and "10010" in warnings[0].getMessage()


def test_missing_gurobipy_is_not_an_error(monkeypatch, fresh_gurobi_state) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gurobipy", None)
    monkeypatch.delitem(sys.modules, "encoders.gurobi_backend", raising=False)
    net = random_mlp([3, 8, 2], seed=3)
    res = decide_leaf(net, -np.ones(3), np.ones(3), [[1.0, -1.0]], [-5.0], config=SolverConfig(backend="gurobi"))
    assert res.status == "infeasible"


@pytest.mark.parametrize("backend", ["ortools", "gurobi"])
def test_solver_time_limit_is_never_a_proof(backend) -> None:
    if backend == "gurobi":
        pytest.importorskip("gurobipy")
    net = random_mlp([8, 50, 50, 50, 2], seed=0)  # 150 unstable neurons: a hard MILP
    enc = encode(net, -np.ones(8), np.ones(8))
    C, disp = np.array([[1.0, -1.0]]), dispatcher_for(SolverConfig(backend=backend))
    d = (net.evaluate(np.random.default_rng(0).uniform(-1, 1, (5000, 8))) @ C.T).min() - 0.05
    t0 = time.monotonic()
    res = solve_clause(enc, C, np.array([d]), CFG, 0.05, disp)
    assert res.status == "timeout" and time.monotonic() - t0 < 2.0


def test_lp_methods_prove_what_ibp_cannot(tmp_path) -> None:
    from tests.builders import mlp_onnx

    # h = relu([x, -x]); y0 = h0 + h1 = |x|, y1 = h0 - h1 = x: y0 - y1 = 2 relu(-x) >= 0,
    # but intervals give y0 - y1 >= -1 on [-1, 1]
    w1, w2 = np.array([[1.0], [-1.0]]), np.array([[1.0, 1.0], [1.0, -1.0]])
    path = mlp_onnx(tmp_path / "m.onnx", [w1, w2], [np.zeros(2), np.zeros(2)])
    spec = Spec((Region(-np.ones(1), np.ones(1), (Clause(np.array([[1.0, -1.0]]), np.array([-1e-3])),)),), 1, 2)
    cfg = lambda m: Config(verify=VerifyConfig(method=m), falsify=FalsifyConfig(enabled=False),
                           solver=SolverConfig(intermediate="ibp"))
    assert bab.verify(path, spec, cfg("ibp")).status is Status.UNKNOWN
    for method in ("lp", "lp-full", "milp", "smt"):
        res = bab.verify(path, spec, cfg(method))
        assert res.status is Status.UNSAT, (method, res.reason)


def test_config_section() -> None:
    from bab.config import dump_reference, from_dict

    assert Config().solver.backend == "auto" and Config().solver.mip_solver == "SCIP"
    assert "[solver]" in dump_reference()
    assert from_dict({"solver": {"backend": "ortools", "z3_max_neurons": "8"}}).solver.z3_max_neurons == 8
    assert math.isclose(from_dict({"solver": {"feasibility_tol": "1e-8"}}).solver.feasibility_tol, 1e-8)
