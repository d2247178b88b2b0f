"""Differential test of the exact solvers on 40 random tiny ReLU networks.

For each network, box and property (sat and unsat both occur: ``d`` comes from sampled output
ranges), these must agree: ``milp`` through the API with each back end (OR-Tools; Gurobi
where its size-limited licence allows), ``smt`` (Z3) through the API, ``bab`` (input-split on
these small inputs), ``bab`` forced to split ReLUs (``input_split_threshold = 0``), ``ai2``
(input-split BaB driven by the zonotope bounder: complete, so never ``unknown`` here), and an
independent decision by enumeration of activation patterns (one scipy LP per pattern of the neurons that
interval arithmetic leaves unstable) where there are at most 8 such neurons; a dense sample
that violates the property forces ``sat``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize

import bab
from bab.config import BabConfig, Config, FalsifyConfig, SolverConfig, VerifyConfig
from bab.result import Status
from tests.builders import mlp_onnx
from vnnlib.spec import Clause, Region, Spec

N_CASES = 40
MAX_ENUM = 8


def _case(seed: int):
    """A random network (weights, biases), box and spec with a d from sampled outputs."""
    rng = np.random.default_rng(1000 + seed)
    while True:  # redraw networks whose property outputs are (nearly) constant on the box
        case = _draw(rng)
        if case is not None:
            return case


def _draw(rng: np.random.Generator):
    n_in, n_out = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    hidden = [int(rng.integers(2, 7)) for _ in range(int(rng.integers(1, 4)))]
    sizes = [n_in, *hidden, n_out]
    ws = [rng.normal(0, 1 / np.sqrt(a), (b, a)).astype(np.float32) for a, b in itertools.pairwise(sizes)]
    bs = [rng.normal(0, 0.3, b).astype(np.float32) for b in sizes[1:]]
    centre, rad = rng.uniform(-1, 1, n_in), rng.uniform(0.05, 1.0, n_in)
    lo, hi = centre - rad, centre + rad
    m = int(rng.integers(1, 3))
    C = rng.normal(0, 1, (m, n_out))
    ys = _forward(ws, bs, rng.uniform(lo, hi, (4000, n_in)))
    vals = ys @ C.T
    if np.min(vals.max(0) - vals.min(0)) < 1e-2:
        return None
    q = rng.choice([-0.25, -0.05, 0.05, 0.3])
    d = np.quantile(vals, 0.02, axis=0) + q * (vals.max(0) - vals.min(0))
    return ws, bs, lo, hi, C, d


def _forward(ws, bs, x: np.ndarray) -> np.ndarray:
    h = np.asarray(x, np.float64)
    for i, (w, b) in enumerate(zip(ws, bs)):
        h = h @ w.T.astype(np.float64) + b
        if i < len(ws) - 1:
            h = np.maximum(h, 0)
    return h


def _unstable(ws, bs, lo, hi) -> list[np.ndarray]:
    """Per hidden layer: -1/+1 for neurons interval arithmetic proves stable, 0 otherwise."""
    out, l, u = [], lo, hi
    for w, b in zip(ws[:-1], bs[:-1]):
        w = w.astype(np.float64)
        mid, rad = (l + u) / 2, (u - l) / 2
        pl, pu = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        out.append(np.where(pl >= 0, 1, np.where(pu <= 0, -1, 0)))
        l, u = np.maximum(pl, 0), np.maximum(pu, 0)
    return out


def _pattern_lp(ws, bs, lo, hi, C, d, pattern: list[np.ndarray]) -> float | None:
    """min over the box of max_i (C y - d)_i on one activation pattern (None: empty)."""
    n = lo.size
    A, c = np.eye(n), np.zeros(n)
    A_ub, b_ub = [], []
    for (w, b), p in zip(zip(ws[:-1], bs[:-1]), pattern):
        A, c = w.astype(np.float64) @ A, w.astype(np.float64) @ c + b
        for j, s in enumerate(p):  # s=+1: pre >= 0 ; s=-1: pre <= 0
            A_ub.append(np.r_[-s * A[j], 0.0])
            b_ub.append(s * c[j])
        A, c = A * (p > 0)[:, None], c * (p > 0)
    A, c = ws[-1].astype(np.float64) @ A, ws[-1].astype(np.float64) @ c + bs[-1]
    for i in range(C.shape[0]):  # C y - d <= t
        A_ub.append(np.r_[C[i] @ A, -1.0])
        b_ub.append(d[i] - C[i] @ c)
    res = scipy.optimize.linprog(np.r_[np.zeros(n), 1.0], A_ub=np.array(A_ub), b_ub=np.array(b_ub),
                                 bounds=[*zip(lo, hi), (None, None)], method="highs")
    return float(res.fun) if res.status == 0 else None


def _enumerate(ws, bs, lo, hi, C, d) -> str | None:
    """Exact verdict by enumerating the unstable neurons' patterns (None when too many)."""
    stable = _unstable(ws, bs, lo, hi)
    free = [(k, j) for k, s in enumerate(stable) for j in np.nonzero(s == 0)[0]]
    if len(free) > MAX_ENUM:
        return None
    best = np.inf
    for signs in itertools.product((-1, 1), repeat=len(free)):
        pattern = [s.copy() for s in stable]
        for (k, j), s in zip(free, signs):
            pattern[k][j] = s
        v = _pattern_lp(ws, bs, lo, hi, C, d, pattern)
        if v is not None:
            best = min(best, v)
    assert abs(best) > 1e-6, "case too close to the decision boundary"
    return "sat" if best <= 0 else "unsat"


def _verify(path, spec, method: str, backend: str = "auto", threshold: int | None = None) -> Status:
    bab_cfg = BabConfig() if threshold is None else BabConfig(input_split_threshold=threshold)
    cfg = Config(verify=VerifyConfig(method=method, timeout=60), falsify=FalsifyConfig(enabled=False),
                 solver=SolverConfig(backend=backend), bab=bab_cfg)
    return bab.verify(path, spec, cfg).status


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    out = []
    for seed in range(N_CASES):
        ws, bs, lo, hi, C, dd = _case(seed)
        path = mlp_onnx(d / f"n{seed}.onnx", ws, bs)
        spec = Spec((Region(lo, hi, (Clause(C, dd),)),), lo.size, ws[-1].shape[0])
        out.append((seed, path, spec, (ws, bs, lo, hi, C, dd)))
    return out


def test_milp_smt_enumeration_agree(cases) -> None:
    from encoders.backends import gurobi_state

    verdicts = {"sat": 0, "unsat": 0}
    enumerated = 0
    for seed, path, spec, (ws, bs, lo, hi, C, d) in cases:
        got = {"milp-ortools": _verify(path, spec, "milp", "ortools"),
               "smt": _verify(path, spec, "smt"),
               "bab": _verify(path, spec, "bab"),  # input-split on these low-dimensional boxes
               "bab-relu": _verify(path, spec, "bab", threshold=0),  # forced ReLU-split
               "ai2": _verify(path, spec, "ai2")}  # input-split BaB driven by zonotopes
        try:
            import gurobipy  # noqa: F401
            got["milp-gurobi"] = _verify(path, spec, "milp", "gurobi")
        except ImportError:
            pass
        words = {k: v.value for k, v in got.items()}
        assert set(words.values()) <= {"sat", "unsat"} and len(set(words.values())) == 1, (seed, words)
        verdict = next(iter(words.values()))
        exact = _enumerate(ws, bs, lo, hi, C, d)
        if exact is not None:
            enumerated += 1
            assert exact == verdict, (seed, exact, words)
        sample = _forward(ws, bs, np.random.default_rng(seed).uniform(lo, hi, (20000, lo.size)))
        if np.any(np.all(sample @ C.T <= d, axis=1)):
            assert verdict == "sat", (seed, words)
        verdicts[verdict] += 1
    assert verdicts["sat"] >= 8 and verdicts["unsat"] >= 8, verdicts
    assert enumerated >= 20
    assert not gurobi_state()["unusable"] or "gurobipy not importable" in gurobi_state()["unusable"]
