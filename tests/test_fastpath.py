"""The NumPy fast path (bab/fastpath/): reading, bounds, verdicts, hand-over."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bab.config import Config, load, parse_override
from bab.fastpath.crown import crown_bounds, intermediate_bounds, rounding_slack
from bab.fastpath.model import OutOfScope, read_fc_net
from bab.fastpath.run import run_fast_path
from tests.builders import ROOT, random_mlp, robustness_output, write_property

CFG = load(overrides=[parse_override("verify.threads=1")])


def _save(path: Path, nodes, inits, in_shape, out_shape) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _const(name: str, a) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def acas_style(path: Path, seed: int = 0) -> Path:
    """``[1,1,1,4]`` input, Sub/Div normalisation, Flatten, MatMul+Add, Relu; final Relu-less."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(0, 0.7, (4, 6)), rng.normal(0, 0.5, (6, 3))
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["n"]),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("MatMul", ["f", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["z1"]), helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "W2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["y"])]
    inits = [_const("mean", rng.normal(0, 0.1, (1, 1, 1, 4))), _const("std", [[[[1.5, 2.0, 0.5, 1.0]]]]),
             _const("W1", w1), _const("b1", rng.normal(0, 0.1, 6)), _const("W2", w2), _const("b2", rng.normal(0, 0.1, 3))]
    return _save(path, nodes, inits, [1, 1, 1, 4], [1, 3])


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    from onnx_models.reference import OnnxReference

    return OnnxReference(path).run(x)


def _net(path: Path):
    return read_fc_net(onnx.load(str(path)), 10_000)


@pytest.mark.parametrize("kind", ["gemm", "acas"])
def test_reader_matches_onnxruntime(tmp_path: Path, kind: str) -> None:
    path = random_mlp(tmp_path / "m.onnx", [5, 7, 6, 3], seed=1) if kind == "gemm" else acas_style(tmp_path / "m.onnx")
    net = _net(path)
    x = np.random.default_rng(0).uniform(-1, 1, (50, net.n_inputs))
    np.testing.assert_allclose(net.forward(x)[0], _onnxruntime(path, x), rtol=1e-5, atol=1e-5)


def test_relu_bounds_hand_computed() -> None:
    """``y = relu(x)`` on ``[-1, 2]``: lower line ``y >= x`` (u > -l) gives -1; the upper line
    ``y <= (2/3)(x + 1)`` gives 2 as the bound of y from above (exact values)."""
    from bab.fastpath.model import FcNet

    net = FcNet((np.eye(1), np.eye(1)), (np.zeros(1), np.zeros(1)))
    b = crown_bounds(net, np.array([[1.0], [-1.0]]), np.array([[-1.0]]), np.array([[2.0]]))
    np.testing.assert_allclose(b.lower[0], [-1.0, -2.0], atol=1e-15)
    assert np.all(rounding_slack(b, 0.0) < 1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_contain_dense_samples(tmp_path: Path, seed: int) -> None:
    net = _net(random_mlp(tmp_path / "m.onnx", [3, 12, 10, 8, 4], seed=seed))
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, (6, 3))
    lo, up = centre - rng.uniform(0.05, 0.6, (6, 3)), centre + rng.uniform(0.05, 0.6, (6, 3))
    C = rng.normal(0, 1, (5, 4))
    b = crown_bounds(net, C, lo, up)
    relax = intermediate_bounds(net, lo, up)
    for i in range(6):
        x = lo[i] + rng.random((4000, 3)) * (up[i] - lo[i])
        x = np.concatenate([x, lo[i] + np.array(np.meshgrid(*[[0, 1]] * 3)).reshape(3, -1).T * (up[i] - lo[i])])
        y, pre = net.forward(x)
        assert np.all(b.lower[i] <= (y @ C.T).min(axis=0) + 1e-12)
        for (sl, su, tu), z in zip(relax, pre):  # the ReLU lines hold on every sample
            h = np.maximum(z, 0)
            assert np.all(h >= sl[i] * z - 1e-12) and np.all(h <= su[i] * z + tu[i] + 1e-12)


def _property(path: Path, lower, upper, n_out: int, output: str) -> Path:
    return write_property(path, [float(v) for v in lower], [float(v) for v in upper], n_out, output)


def _torch_verdict(model: Path, prop: Path) -> str:
    from bab.api import verify

    return verify(model, prop, CFG, timeout=60).status.value


def _check_witness(model: Path, prop: Path, cex) -> None:
    import vnnlib

    y = _onnxruntime(model, cex.x[None])[0]
    spec = vnnlib.load_property(prop)
    assert spec.is_violated_by(cex.x, y)


@pytest.mark.parametrize("seed", range(6))
def test_verdicts_agree_with_torch_pipeline(tmp_path: Path, seed: int) -> None:
    """Random 3-input networks and thresholds on both sides of the sampled maximum of ``y0``:
    the fast path's verdicts match the torch pipeline's, and sat witnesses replay."""
    model = random_mlp(tmp_path / "m.onnx", [3, 10, 10, 2], seed=seed)
    net = _net(model)
    rng = np.random.default_rng(seed)
    lo, up = -rng.uniform(0.2, 1, 3), rng.uniform(0.2, 1, 3)
    x = lo + rng.random((20000, 3)) * (up - lo)
    top = float(net.forward(x)[0][:, 0].max())
    verdicts = []
    for k, t in enumerate((top + 0.05 * (abs(top) + 0.1), top - 0.05 * (abs(top) + 0.1))):
        prop = _property(tmp_path / f"p{k}.vnnlib", lo, up, 2, f"(assert (>= Y_0 {t!r}))")
        out = run_fast_path(model, prop, CFG, time.monotonic() + 30)
        assert out.status in ("sat", "unsat"), out.reason
        assert out.status == _torch_verdict(model, prop)
        if out.status == "sat":
            _check_witness(model, prop, out.counterexample)
        verdicts.append(out.status)
    assert verdicts[1] == "sat"  # a sampled point beats the lower threshold


def test_robustness_property_with_many_clauses(tmp_path: Path) -> None:
    model = random_mlp(tmp_path / "m.onnx", [4, 16, 16, 5], seed=3)
    net = _net(model)
    centre = np.full(4, 0.3)
    label = int(np.argmax(net.forward(centre[None])[0][0]))
    for eps, want in ((1e-3, "unsat"), (5.0, "sat")):
        prop = _property(tmp_path / f"r{eps}.vnnlib", centre - eps, centre + eps, 5, robustness_output(label, 5))
        out = run_fast_path(model, prop, CFG, time.monotonic() + 30)
        assert out.status == want == _torch_verdict(model, prop)
        if want == "sat":
            _check_witness(model, prop, out.counterexample)


def test_declines_conv_and_sigmoid(tmp_path: Path) -> None:
    conv = _save(tmp_path / "c.onnx", [helper.make_node("Conv", ["x", "K"], ["c"]),
                                       helper.make_node("Relu", ["c"], ["r"]),
                                       helper.make_node("Flatten", ["r"], ["y"])],
                 [_const("K", np.ones((1, 1, 2, 2)))], [1, 1, 3, 3], [1, 4])
    sig = random_mlp(tmp_path / "s.onnx", [3, 5, 2], act="Sigmoid")
    for model, n_in, n_out in ((conv, 9, 4), (sig, 3, 2)):
        with pytest.raises(OutOfScope):
            _net(model)
        prop = _property(tmp_path / f"{model.stem}.vnnlib", [0] * n_in, [1] * n_in, n_out, "(assert (>= Y_0 100.0))")
        out = run_fast_path(model, prop, CFG, time.monotonic() + 10)
        assert out.status == "undecided" and out.reason.startswith("out of scope")


def test_cli_hands_over_and_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bab verify`` on a sigmoid network: the fast path declines, the torch pipeline decides.

    The timeout counts from ``bab.cli.PROCESS_START``: in a long test session that is minutes
    ago, so it is reset here (else the hard-stop watchdog fires at once and ends pytest)."""
    import time

    import bab.cli
    from bab.cli import build_parser

    monkeypatch.setattr(bab.cli, "PROCESS_START", time.monotonic())

    model = random_mlp(tmp_path / "s.onnx", [3, 5, 2], act="Sigmoid")
    prop = _property(tmp_path / "p.vnnlib", [0] * 3, [1] * 3, 2, "(assert (>= Y_0 100.0))")
    res = tmp_path / "out.txt"
    args = build_parser("verify").parse_args(["verify", str(model), str(prop), "--timeout", "120",
                                              "--results-file", str(res), "--set", "verify.threads=1"])
    assert args.func(args) == 0
    assert res.read_text().split()[0] == "unsat"


def test_budget_and_switch_are_typed() -> None:
    assert Config().verify.fast_path is True and Config().verify.fast_path_budget > 0
    assert load(overrides=[parse_override("verify.fast_path=false")]).verify.fast_path is False


def test_shared_acas_pair_without_torch(bench_dir: Path) -> None:
    """The ACAS Xu-sized test pair: ``sat``/``unsat`` as expected, and torch never imported."""
    t = bench_dir / "test"
    code = ("import sys, time; from bab.config import load, parse_override; "
            "from bab.fastpath.run import run_fast_path; "
            "cfg = load(overrides=[parse_override('verify.threads=1')]); "
            f"a = run_fast_path({str(t / 'test_sat.onnx')!r}, {str(t / 'test_prop.vnnlib')!r}, cfg, time.monotonic() + 60); "
            f"b = run_fast_path({str(t / 'test_unsat.onnx')!r}, {str(t / 'test_prop.vnnlib')!r}, cfg, time.monotonic() + 60); "
            "print(a.status, b.status, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["sat", "unsat", "False"], out.stderr


def _search(net, C, d, lo, up, split: bool = True):
    from bab.fastpath.search import ClauseRows, RegionSearch

    rows = ClauseRows.of([(np.atleast_2d(C).astype(float), np.atleast_1d(d).astype(float))], net.n_outputs)
    s = RegionSearch(net, rows, 1e-6, lambda x, k: False, 64, split)
    s.root_width = np.asarray(up, float) - np.asarray(lo, float)
    return s


def test_split_prefers_a_starved_input_over_the_scored_pick() -> None:
    """The score |coefficient| x width picks input 0; once input 1 is relatively more than
    ASPECT times wider (its final coefficient is near zero), input 1 is halved instead."""
    from bab.fastpath.model import FcNet
    from bab.fastpath.search import ASPECT

    net = FcNet((np.eye(2), np.eye(2)), (np.zeros(2), np.zeros(2)))
    s = _search(net, [1.0, 0.0], 0.0, [0.0, 0.0], [1.0, 1.0])
    coef = np.array([[[1.0, 1e-9]]])
    best, open_ = np.zeros((1, 1), int), np.ones((1, 1), bool)
    for w0, want in ((1.0 / ASPECT, 0), (0.5 / ASPECT, 1)):
        lo, up = np.array([[0.0, 0.0]]), np.array([[w0, 1.0]])
        clo, cup = s._split(lo.copy(), up.copy(), coef, best, open_)
        halved = np.flatnonzero(cup[0] - clo[0] < up[0] - lo[0])
        assert list(halved) == [want], (w0, clo, cup)


def test_search_hands_over_when_the_open_volume_stops_shrinking(monkeypatch) -> None:
    """min relu(x) over [-1, 1] is 0 while the clause asks for y <= -1e-9: unsat with no margin
    for x <= 0, so half the box never closes. On a clock that advances 0.1 s per reading, the
    search stops as stalled once STALL_AFTER has passed, long before its deadline."""
    import bab.fastpath.search as S
    from bab.fastpath.model import FcNet

    clock = [0.0]

    def tick() -> float:
        clock[0] += 0.1
        return clock[0]

    monkeypatch.setattr(S, "time", __import__("types").SimpleNamespace(monotonic=tick))
    net = FcNet((np.eye(1), np.eye(1)), (np.zeros(1), np.zeros(1)))
    s = _search(net, [1.0], -1e-9, [-1.0], [1.0])
    res = s.run(np.array([-1.0]), np.array([1.0]), 60.0)
    assert res.verdict is S.Verdict.UNDECIDED and res.reason.startswith("stalled"), res.reason
    assert S.STALL_AFTER <= clock[0] < 60.0
    assert s.closed_volume <= 0.5
