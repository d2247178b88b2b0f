"""``bab.radius`` / ``bab radius``: the certified interval of a complete method contains the
exact minimal adversarial distance (an independent MILP minimising the distance for ℓ∞ and
ℓ1), every incomplete method's radius stays below it, ℓ2 radii stay below the counterexamples
complete methods find, the CLI's last line and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import bab
from tests.builders import mlp_onnx

torch.set_num_threads(1)
INCOMPLETE = ("ibp", "crown", "deeppoly", "fastlin", "crown-ibp", "alpha-crown", "symbolic", "wk", "lp")
LIPSCHITZ = ("lipschitz-opnorm", "fastlip", "recurjac")
QUICK = ("ibp", "crown", "wk", "lp", "lipschitz-opnorm", "fastlip")  # the default (fast) runs
SLOW = pytest.mark.slow


def _net(tmp_path, seed: int):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 0.8, (6, 3)), rng.normal(0, 0.6, (5, 6)), rng.normal(0, 0.6, (3, 5))]
    bs = [rng.normal(0, 0.2, 6), rng.normal(0, 0.2, 5), rng.normal(0, 0.2, 3)]
    path = mlp_onnx(tmp_path / f"r{seed}.onnx", ws, bs)
    import onnx_models

    net = onnx_models.load(path)
    x0 = np.full(3, 0.5)
    label = int(net.forward(torch.as_tensor(x0, dtype=torch.float32)[None])[0].argmax())
    return path, net, x0, label


def min_distance(net, x0: np.ndarray, label: int, p: str, lo: float = 0.0, hi: float = 1.0) -> float:
    """The exact minimal ``||x - x0||_p`` (ℓ∞ or ℓ1) over ``x in [lo, hi]`` with some class
    ``j != label`` scoring at least as high: one MILP per ``j`` minimising the distance."""
    from encoders.backends import Dispatcher
    from encoders.encoding import encode, float64_network
    from encoders.model import lower

    net = float64_network(net)
    n = x0.size
    best = np.inf
    for j in range(net.n_outputs):
        if j == label:
            continue
        C = np.zeros((1, net.n_outputs))
        C[0, label], C[0, j] = 1.0, -1.0
        enc = encode(net, np.full(n, lo), np.full(n, hi))
        m = lower(enc, "milp", C, np.zeros(1), (-np.inf, 0.0))
        N = m.n_vars
        r, s = N, np.arange(N + 1, N + 1 + n)  # the distance and (ℓ1) per-coordinate gaps
        extra = 1 + (n if p == "1" else 0)
        rows, lo_r, hi_r = [], [], []
        gap = s if p == "1" else np.full(n, r)
        for sign in (1.0, -1.0):  # sign * (x - x0) <= gap
            A = sp.csr_matrix((np.r_[np.full(n, sign), -np.ones(n)], (np.r_[np.arange(n), np.arange(n)],
                                                                        np.r_[enc.inputs, gap])), shape=(n, N + extra))
            rows.append(A)
            lo_r.append(np.full(n, -np.inf))
            hi_r.append(sign * x0)
        if p == "1":
            total = (np.r_[np.ones(n), -1.0], (np.zeros(n + 1, int), np.r_[s, r]))  # Σ s - r <= 0
            rows.append(sp.csr_matrix(total, shape=(1, N + extra)))
            lo_r.append(np.array([-np.inf]))
            hi_r.append(np.zeros(1))
        m.A = sp.vstack([sp.hstack([m.A, sp.csr_matrix((m.n_rows, extra))]), *rows]).tocsr()
        m.row_lo, m.row_hi = np.r_[m.row_lo, *lo_r], np.r_[m.row_hi, *hi_r]
        m.lb, m.ub = np.r_[m.lb, np.zeros(extra)], np.r_[m.ub, np.full(extra, np.inf)]
        m.integer = np.r_[m.integer, np.zeros(extra, bool)]
        m.obj = np.zeros(N + extra)
        m.obj[r] = 1.0
        res = Dispatcher("auto").solve(m, 60.0, 1e-9)
        if res.status == "optimal":
            best = min(best, float(res.value))
        else:
            assert res.status == "infeasible", res
    return best


@pytest.mark.parametrize("p", ["inf", "1"])
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=SLOW), pytest.param(2, marks=SLOW)])
def test_interval_contains_the_exact_distance_and_incomplete_radii_stay_below(tmp_path, seed: int, p: str) -> None:
    path, net, x0, label = _net(tmp_path, seed)
    exact = min_distance(net, x0, label, p)
    assert np.isfinite(exact) and exact > 0
    tol = 1e-4 * (1 + exact)
    for method in ("milp", "bab") if seed else ("bab",):
        res = bab.radius(path, x0, label, norm=p, method=method, lo=0, hi=1, steps=12, timeout=30)
        lo_, hi_ = res.interval
        assert lo_ - tol <= exact <= hi_ + tol, (method, res.interval, exact)
        assert res.radius == lo_ and hi_ - lo_ < 0.05 * exact
        if res.upper is not None:
            assert res.upper >= exact - tol
    for method in (INCOMPLETE + LIPSCHITZ) if seed else QUICK:
        try:
            res = bab.radius(path, x0, label, norm=p, method=method, lo=0, hi=1, steps=8, timeout=30)
        except ImportError:
            continue  # a method whose module is not there yet
        assert res.radius <= exact + tol, (method, res.radius, exact)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=SLOW)])
def test_l2_radii_stay_below_counterexample_distances(tmp_path, seed: int) -> None:
    path, net, x0, label = _net(tmp_path, seed)
    complete = bab.radius(path, x0, label, norm="2", method="bab", lo=0, hi=1, steps=10, timeout=5)
    assert complete.upper is not None and complete.radius <= complete.upper
    assert complete.interval[1] - complete.interval[0] < 0.05 * complete.upper
    assert complete.radius > 0
    for method in ("crown", "alpha-crown", "wk", "ibp", "symbolic") + LIPSCHITZ if seed else QUICK:
        try:
            res = bab.radius(path, x0, label, norm="2", method=method, lo=0, hi=1, steps=8, timeout=30)
        except ImportError:
            continue
        assert res.radius <= complete.upper + 1e-6, (method, res.radius, complete.upper)
    crown = bab.radius(path, x0, label, norm="2", method="crown", lo=0, hi=1, steps=8)
    ibp = bab.radius(path, x0, label, norm="2", method="ibp", lo=0, hi=1, steps=8)
    assert ibp.radius <= crown.radius + 1e-9 or ibp.radius == 0.0


def test_box_only_method_certifies_no_l2_radius(tmp_path) -> None:
    path, _, x0, label = _net(tmp_path, 0)
    res = bab.radius(path, x0, label, norm="2", method="zonotope", lo=0, hi=1, steps=3)
    assert res.radius == 0.0 and all(s == "unknown" for _, s in res.statuses)


def test_misclassified_centre_has_radius_zero(tmp_path) -> None:
    path, _, x0, label = _net(tmp_path, 0)
    res = bab.radius(path, x0, (label + 1) % 3, norm="2", method="crown")
    assert res.radius == 0.0 and res.interval == (0.0, 0.0) and res.steps == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bab", "radius", *args], capture_output=True, text=True, timeout=300)


def test_cli_last_line_and_bad_input(tmp_path, capsys) -> None:
    path, _, x0, label = _net(tmp_path, 1)
    xf = tmp_path / "x.npy"
    np.save(xf, x0)
    out = _cli(str(path), "--center", str(xf), "--label", str(label), "--norm", "2", "--method", "crown",
               "--lo", "0", "--hi", "1", "--steps", "6")
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("radius=") and float(last.split("=")[1]) > 0
    assert "interval=[" in out.stdout and "bisection steps" in out.stdout
    np.save(tmp_path / "bad.npy", np.zeros(5))
    from bab.cli import main

    bad = [
        [str(tmp_path / "none.onnx"), "--center", str(xf), "--label", "0"],
        [str(path), "--center", str(tmp_path / "none.npy"), "--label", "0"],
        [str(path), "--center", str(tmp_path / "bad.npy"), "--label", "0"],
        [str(path), "--center", str(xf), "--label", "7"],
        [str(path), "--center", str(xf), "--label", "0", "--norm", "3"],
        [str(path), "--center", str(xf), "--label", "0", "--method", "nope"],
    ]
    for args in bad:  # in this process (each subprocess would pay the torch import)
        assert main(["radius", *args]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "error" in err, err
