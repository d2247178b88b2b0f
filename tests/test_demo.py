"""Tests for the demo: training, ONNX export, property writing, cache and verification loop."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bab import demo


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[demo.Digits, demo.Layers, Path]:
    """A quickly trained network (few epochs) and its cache folder."""
    cache = tmp_path_factory.mktemp("cache")
    data = demo.load_digits_split()
    layers, cached = demo.load_or_train(data, cache, epochs=40, seed=1)
    assert not cached
    return data, layers, cache


def test_data_split_is_fixed_and_scaled() -> None:
    a, b = demo.load_digits_split(), demo.load_digits_split()
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_train, b.x_train)
    assert a.x_train.dtype == np.float32 and a.x_train.shape[1] == 64
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0


def test_training_accuracy_and_cache(trained: tuple[demo.Digits, demo.Layers, Path]) -> None:
    data, layers, cache = trained
    assert [w.shape for w, _ in layers] == [(32, 64), (32, 32), (10, 32)]
    assert demo.accuracy(layers, data.x_test, data.y_test) > 0.8
    again, cached = demo.load_or_train(data, cache, epochs=40, seed=1)
    assert cached and all(np.array_equal(w1, w2) for (w1, _), (w2, _) in zip(layers, again))


def test_training_is_seeded() -> None:
    data = demo.load_digits_split()
    first = demo.train_mlp(data, epochs=3, seed=5)
    second = demo.train_mlp(data, epochs=3, seed=5)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))


def test_onnx_export_matches_torch(tmp_path: Path,
                                   trained: tuple[demo.Digits, demo.Layers, Path]) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    data, layers, _ = trained
    path = demo.export_onnx(layers, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    assert {n.op_type for n in model.graph.node} == {"Gemm", "Relu"}
    assert model.opset_import[0].version == 13
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 64] and sess.get_outputs()[0].shape == [1, 10]
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10))
    with torch.no_grad():
        for lin, (w, b) in zip([net[0], net[2], net[4]], layers):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        for x in data.x_test[:10]:
            y_ort = sess.run(None, {"input": x.reshape(1, 64)})[0]
            y_torch = net(torch.from_numpy(x).reshape(1, 64)).numpy()
            np.testing.assert_allclose(y_ort, y_torch, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(demo.forward(layers, x[None]), y_torch, atol=1e-5)


def test_property_text_parses(tmp_path: Path) -> None:
    parser = pytest.importorskip("vnnlib.parser")
    x = np.linspace(0.0, 1.0, 64)
    path = tmp_path / "p.vnnlib"
    path.write_text(demo.robustness_vnnlib(x, label=3, eps=0.1))
    spec = parser.parse(path)
    assert spec.n_inputs == 64 and spec.n_outputs == 10
    lo = np.min([r.lower for r in spec.regions], axis=0)
    hi = np.max([r.upper for r in spec.regions], axis=0)
    assert lo.min() == 0.0 and hi.max() == 1.0
    np.testing.assert_allclose(lo, np.clip(x - 0.1, 0, 1))
    np.testing.assert_allclose(hi, np.clip(x + 0.1, 0, 1))
    y_robust = np.zeros(10)
    y_robust[3] = 1.0
    assert not spec.is_violated_by(x, y_robust)
    y_tie = y_robust.copy()
    y_tie[7] = 1.0  # a tie already counts as a counterexample
    assert spec.is_violated_by(x, y_tie)


def test_build_demo_and_verify_all(tmp_path: Path,
                                   trained: tuple[demo.Digits, demo.Layers, Path]) -> None:
    _, _, cache = trained
    setup = demo.build_demo(tmp_path / "out", epochs=40, seed=1, cache_dir=cache)
    assert setup.from_cache and setup.accuracy > 0.8 and setup.onnx_path.is_file()
    assert len(setup.instances) == 10
    assert sorted({i.eps for i in setup.instances}) == [0.01, 0.1]
    assert len({i.image for i in setup.instances}) == 5
    assert all(i.vnnlib_path.is_file() for i in setup.instances)
    calls: list[tuple[str, str, float | None]] = []

    def fake_verify(model: str, spec: str, timeout: float | None = None) -> SimpleNamespace:
        calls.append((model, spec, timeout))
        if "eps0.1" in spec:
            raise RuntimeError("boom")
        return SimpleNamespace(status=SimpleNamespace(value="unsat"), time_s=0.25, reason="")

    seen = []
    results = demo.verify_all(setup, timeout=7.0, verify=fake_verify, on_result=seen.append)
    assert len(results) == len(calls) == len(seen) == 10 and calls[0][2] == 7.0
    assert {r.result for r in results if r.instance.eps == 0.01} == {"unsat"}
    assert {r.result for r in results if r.instance.eps == 0.1} == {"error"}
    assert all(r.time_s == 0.25 for r in results if r.result == "unsat")


def test_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAB_CACHE_DIR", str(tmp_path / "c"))
    assert demo.demo_dir() == tmp_path / "c" / "demo"
    monkeypatch.delenv("BAB_CACHE_DIR")
    assert demo.demo_dir().name == "demo" and "bab-verifier" in str(demo.demo_dir())
