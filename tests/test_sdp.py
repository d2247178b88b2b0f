"""The SDP family (``sdp``: SDPVerify, ``lmi``: Fazlyab et al.'s LMI) against exact oracles.

Oracles: the exact minimum of ``c·f(x)`` from the MILP encoding (and dense samples), hand
cases with known values, and the orders theory guarantees (``sdp >= ibp``: the relaxation keeps
every activation in its CROWN interval; ``lmi >= sdp``: its constraint set contains sdp's). The
floating-point recovery is checked directly: a deliberately infeasible dual (``t`` raised)
must be repaired to a bound below the exact minimum.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("cvxpy")

from bab.bounding import BounderRefusal, Domains, UnsupportedLayerError, get_bounder  # noqa: E402
from bab.bounding.sdp.lmi import LmiVerify  # noqa: E402
from bab.bounding.sdp.sdpverify import SdpVerify, lift, pre_bounds, sdp_constraints  # noqa: E402
from bab.bounding.sdp.solve import DualSdp, certify  # noqa: E402
from bab.config import SolverConfig  # noqa: E402
from encoders.decide import dispatcher_for  # noqa: E402
from encoders.encoding import encode  # noqa: E402
from encoders.model import lower as lower_model  # noqa: E402
from onnx_models import layers as L  # noqa: E402
from tests.builders import mlp_onnx, robustness_output, run_bab, write_property  # noqa: E402
from tests.irnets import chain, random_mlp, small_cnn  # noqa: E402

F64 = torch.float64


def _milp_min(net, lo: np.ndarray, hi: np.ndarray, c: np.ndarray, phases=None) -> float:
    """The exact minimum of ``c·f(x)`` over the box (and fixed phases)."""
    enc = encode(net, lo, hi, phases)
    res = dispatcher_for(SolverConfig()).solve(lower_model(enc, "milp", c[None], np.zeros(1)), 60, 1e-9)
    assert res.status == "optimal"
    return float(res.value)


def _case(seed: int):
    """A random 2-hidden-layer network (<= 16 units each), a margin row and a small/large box."""
    rng = np.random.default_rng(seed)
    n0, h1, h2 = int(rng.integers(2, 6)), int(rng.integers(4, 17)), int(rng.integers(4, 17))
    net = random_mlp([n0, h1, h2, 3], seed=seed).to(F64)
    c = rng.normal(size=3)
    centre, r = rng.uniform(-1, 1, n0), (0.05 if seed % 2 == 0 else 0.5)
    return net, c, centre - r, centre + r


def _dom(lo: np.ndarray, hi: np.ndarray, C: np.ndarray) -> Domains:
    t = lambda a: torch.as_tensor(a, dtype=F64)
    return Domains(t(lo)[None], t(hi)[None], t(np.atleast_2d(C))[None])


def test_random_networks_below_milp_and_above_ibp(capsys) -> None:
    beats_crown = 0
    for seed in range(20):
        net, c, lo, hi = _case(seed)
        exact = _milp_min(net, lo, hi, c)
        x = np.random.default_rng(seed).uniform(lo, hi, (4000, lo.size))
        assert exact <= (net.evaluate(x) @ c).min() + 1e-9  # the MILP oracle itself
        dom = _dom(lo, hi, c)
        got = {m: get_bounder(m).bound(net, dom).lower.item() for m in ("ibp", "crown", "sdp", "lmi")}
        assert got["sdp"] <= exact + 1e-6 and got["lmi"] <= exact + 1e-6, (seed, got, exact)
        assert got["sdp"] >= got["ibp"] - 1e-6, (seed, got)
        assert got["lmi"] >= got["sdp"] - 1e-5, (seed, got)
        beats_crown += got["sdp"] >= got["crown"] - 1e-9
    with capsys.disabled():
        print(f"\n[sdp] sdp >= crown on {beats_crown}/20 random networks")
    assert beats_crown >= 10  # the SDP is usually the tighter one on these nets


def test_hand_cases_are_exact() -> None:
    t = lambda a: torch.tensor(a, dtype=F64)
    relu1 = chain([L.Linear(t([[1.0]]), t([0.0])), L.ReLU(), L.Linear(t([[1.0]]), t([0.0]))], (1,), F64)
    b = SdpVerify().bound(relu1, _dom(np.array([-1.0]), np.array([2.0]), np.array([[1.0], [-1.0]])))
    assert np.allclose(b.lower.numpy(), [[0.0, -2.0]], atol=1e-6)  # min relu(x) = 0, max = 2
    assert (b.lower.numpy() <= np.array([[0.0, -2.0]])).all()
    lin = chain([L.Linear(t([[2.0, -3.0]]), t([0.5]))], (2,), F64)  # no ReLU: the box minimum
    for m in (SdpVerify(), LmiVerify()):
        v = m.bound(lin, _dom(np.array([0.0, -1.0]), np.array([1.0, 1.0]), np.array([[1.0]]))).lower.item()
        assert -2.5 - 1e-6 <= v <= -2.5


def test_repair_of_an_infeasible_dual_stays_below_the_minimum() -> None:
    net, c, lo, hi = _case(7)
    exact = _milp_min(net, lo, hi, c)
    dom = _dom(lo, hi, c)
    lf = lift(*_lift_args(net, dom))
    dual = DualSdp(sdp_constraints(lf).system(lf.vmax, lf.gamma), "CLARABEL")
    q, qerr = lf.objective(c)
    info = dual.solve(q, qerr)
    assert info.status == "optimal" and info.bound <= exact + 1e-9
    y = np.asarray(dual.y.value, float)
    for push in (0.5, 5.0):  # t raised above the minimum: M is indefinite, the repair must bite
        bound, res = certify(dual, q, qerr, exact + push, y)
        assert res["lambda_min"] < 0 and res["repair"] > push - 1e-9
        assert bound <= exact + 1e-9
    noisy = y + np.random.default_rng(0).normal(0, 1e-3, y.size)  # perturbed, some negative
    bound, res = certify(dual, q, qerr, info.dual_t, noisy)
    assert res["clipped"] > 0 and bound <= exact + 1e-9


def _lift_args(net, dom):
    sdp = SdpVerify()
    chain_ = sdp.check(net)
    b = pre_bounds(net, dom, chain_)
    return chain_, dom.lower[0].numpy(), dom.upper[0].numpy(), [(lo[0], hi[0]) for lo, hi in b]


def test_loose_scs_is_repaired_and_sound() -> None:
    net, c, lo, hi = _case(9)
    exact = _milp_min(net, lo, hi, c)
    b = SdpVerify(solver="SCS", solver_opts={"eps_abs": 1e-3, "eps_rel": 1e-3}).bound(net, _dom(lo, hi, c))
    info = b.state.solves[0][0]
    assert info.solver == "SCS" and info.status == "optimal"
    assert b.lower.item() <= exact + 1e-9 and b.lower.item() <= info.dual_t


def test_inaccurate_solve_gives_minus_inf() -> None:
    net, c, lo, hi = _case(1)
    b = SdpVerify(solver="SCS", solver_opts={"max_iters": 2}).bound(net, _dom(lo, hi, c))
    assert b.lower.item() == -math.inf
    assert b.state.solves[0][0].status != "optimal"


def test_deadline_caps_the_solves() -> None:
    """With no time left no solver runs (-inf, status says why); a tiny budget ends quickly."""
    import time

    net, c, lo, hi = _case(3)
    bounder = SdpVerify(solver="SCS")
    bounder.remaining = lambda: 0.0
    b = bounder.bound(net, _dom(lo, hi, np.stack([c, -c])))
    assert torch.all(b.lower == -math.inf)
    assert {s.status for s in b.state.solves[0]} == {"time limit reached"}
    bounder.remaining = lambda: 1e-3
    start = time.perf_counter()
    b = bounder.bound(net, _dom(lo, hi, c))
    assert time.perf_counter() - start < 5.0
    assert b.lower.item() == -math.inf or b.state.solves[0][0].status == "optimal"


def test_fixed_phases_batches_and_float32() -> None:
    net32 = random_mlp([3, 8, 8, 2], seed=4)
    net = random_mlp([3, 8, 8, 2], seed=4).to(F64)
    lo = np.array([[-0.5, -0.5, -0.5], [0.0, 0.1, -0.2]])
    hi = lo + np.array([[1.0], [0.3]])
    C = np.array([[1.0, -1.0], [-1.0, 0.0]])
    centre = torch.as_tensor((lo + hi) / 2, dtype=F64)
    pre = net.forward_all(centre)[0]  # node 1 is the first ReLU
    mask = torch.zeros_like(pre, dtype=torch.bool)
    mask[:, :3] = True
    phases = {1: torch.where(mask, torch.where(pre >= 0, 1, -1), 0).to(torch.int8)}
    dom = Domains(torch.as_tensor(lo), torch.as_tensor(hi), torch.as_tensor(C)[None].repeat(2, 1, 1), phases)
    for m in (SdpVerify(), LmiVerify()):
        got = m.bound(net, dom).lower
        assert got.shape == (2, 2)
        for d in range(2):
            ph = {1: phases[1][d].numpy()}
            for r in range(2):
                assert got[d, r].item() <= _milp_min(net, lo[d], hi[d], C[r], ph) + 1e-6
    dom32 = Domains(torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32),
                    torch.as_tensor(C, dtype=torch.float32)[None].repeat(2, 1, 1))
    got32 = SdpVerify().bound(net32, dom32).lower
    assert got32.dtype == torch.float32 and torch.isfinite(got32).all()


def test_limits_refuse_with_reason() -> None:
    net = random_mlp([4, 16, 16, 2], seed=0)
    dom = _dom(np.zeros(4), np.ones(4), np.array([[1.0, -1.0]]))
    with pytest.raises(BounderRefusal, match="32 hidden units > limit 10"):
        SdpVerify(max_hidden=10).bound(net, dom)
    with pytest.raises(BounderRefusal, match="hidden units > limit"):
        LmiVerify(max_hidden=10).bound(net, dom)
    big = random_mlp([784, 256, 256, 10], seed=0)  # the shape of mnist-net_256x2
    with pytest.raises(BounderRefusal, match="512 hidden units > limit 200"):
        get_bounder("sdp").bound(big, Domains(torch.zeros(1, 784), torch.ones(1, 784), torch.ones(1, 1, 10)))


def test_unsupported_ops_name_the_op() -> None:
    dom = Domains(torch.zeros(1, 36), torch.ones(1, 36), torch.ones(1, 1, 4))
    with pytest.raises(UnsupportedLayerError, match="'sdp' has no rule for layer Pad"):
        get_bounder("sdp").bound(small_cnn(), dom)
    with pytest.raises(UnsupportedLayerError, match="'lmi' has no rule for layer Sigmoid"):
        get_bounder("lmi").bound(random_mlp([2, 3, 2], act=L.Sigmoid), _dom(np.zeros(2), np.ones(2), np.ones((1, 2))))


def test_cli_verify_with_sdp(tmp_path) -> None:
    w1 = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.2]])
    w2 = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.2]])
    model = mlp_onnx(tmp_path / "net.onnx", [w1, w2], [np.zeros(3), np.zeros(2)])
    prop = write_property(tmp_path / "p.vnnlib", [0.49, 0.49], [0.51, 0.51], 2, robustness_output(0, 2))
    p = run_bab("verify", str(model), str(prop), "--method", "sdp", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("unsat") and "[sdp]" in p.stdout


@pytest.mark.slow
def test_scs_route_below_milp() -> None:
    """Matrices above ``ipm_max_dim`` go to SCS automatically; still below the MILP minimum."""
    for seed in (1, 3, 7, 9, 11):
        net, c, lo, hi = _case(seed)
        exact = _milp_min(net, lo, hi, c)
        for m in (SdpVerify(ipm_max_dim=10), LmiVerify(ipm_max_dim=10)):
            b = m.bound(net, _dom(lo, hi, c))
            assert b.state.dims[0] > 10 and b.state.solves[0][0].solver == "SCS"
            assert b.lower.item() <= exact + 1e-6
