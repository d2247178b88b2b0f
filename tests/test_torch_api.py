"""The PyTorch-native API: torch modules -> IR networks (checked against the module's forward),
``bab.certify`` on a module versus its ONNX export, and ``bab.compare`` on modules."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bab
from bab.result import Status
from bab.torch_model import TorchModelError, TorchReference, check_against, from_torch
from tests.compare_zoo import digits, export, train_mlp


@pytest.fixture(scope="module")
def mlp() -> nn.Sequential:
    torch.set_num_threads(1)
    return train_mlp((16,), epochs=40, seed=3)


def _conv_net(act: type = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), act()), nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 3, stride=1, bias=False), nn.Tanh(), nn.MaxPool2d(2, stride=1),
        nn.Flatten(), nn.Dropout(0.5), nn.Identity(), nn.Linear(4, 5), nn.Sigmoid(),
        nn.Linear(5, 3)).eval()


def test_translation_matches_the_module_on_every_supported_module() -> None:
    model = _conv_net()
    net = from_torch(model, (1, 8, 8))
    assert [n.layer.kind for n in net.nodes] == [
        "Conv2d", "ReLU", "AvgPool2d", "Conv2d", "Tanh", "MaxPool2d", "Reshape", "Linear",
        "Sigmoid", "Linear"]
    assert net.n_inputs == 64 and net.n_outputs == 3
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net.forward(x.reshape(7, -1)), model(x), atol=1e-6)
    ref = TorchReference(model, (1, 8, 8))
    assert np.allclose(ref.run(x.reshape(7, -1).numpy()), model(x).detach().numpy(), atol=1e-6)


def test_unsupported_modules_are_all_listed_at_once() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Softmax(dim=1), nn.Linear(4, 2))
    with pytest.raises(TorchModelError) as err:
        from_torch(model, (4,))
    text = str(err.value)
    assert "#1 BatchNorm1d" in text and "#3 Softmax" in text and "supported:" in text
    train_mode = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    with pytest.raises(TorchModelError, match=r"Dropout in training mode \(call model.eval\(\)\)"):
        from_torch(train_mode, (4,))


def test_a_wrong_translation_is_caught_by_the_forward_check(mlp: nn.Sequential) -> None:
    other = train_mlp((16,), epochs=1, seed=4)
    with pytest.raises(TorchModelError, match="differs from the module's forward"):
        check_against(from_torch(other, (64,)), mlp, (64,))
    assert check_against(from_torch(mlp, (64,)), mlp, (64,)) <= 1e-5


def test_a_custom_module_goes_through_the_onnx_exporter() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)) + x)

    model = Residual().eval()
    net = from_torch(model, (6,))
    assert "Add" in [n.layer.kind for n in net.nodes] and net.source == ""
    res = bab.certify(model, np.full(6, 0.3), int(model(torch.full((1, 6), 0.3)).argmax()), eps=0.01,
                      input_shape=(6,), method="crown", timeout=20)
    assert res.status in (Status.UNSAT, Status.UNKNOWN)


def test_certify_needs_an_input_shape_and_a_known_norm(mlp: nn.Sequential) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        bab.certify(mlp, np.zeros(64), 0, eps=0.01)
    with pytest.raises(ValueError, match="unknown norm '3'"):
        bab.certify(mlp, np.zeros(64), 0, eps=0.01, norm="3", input_shape=(64,))


def test_certify_agrees_between_the_module_and_its_onnx_export(mlp: nn.Sequential, tmp_path: Path) -> None:
    """20 test points, the complete default method with falsification: the same verdicts; a
    counterexample is replayed on (and reproduces on) the module itself."""
    path = export(mlp, tmp_path / "mlp.onnx")
    _, _, x, y = digits()
    answers = []
    for i in range(20):
        kw = dict(eps=0.05, clip=(0.0, 1.0), method="default", timeout=30)
        a = bab.certify(mlp, x[i], int(y[i]), input_shape=(64,), **kw)
        b = bab.certify(path, x[i], int(y[i]), **kw)
        assert a.status == b.status, (i, a, b)
        assert a.certified == (a.status is Status.UNSAT)
        if a.counterexample is not None:
            cex = torch.as_tensor(a.counterexample.x, dtype=torch.float32)
            assert np.all(np.abs(a.counterexample.x - x[i]) <= 0.05 + 1e-6)
            with torch.no_grad():
                out = mlp(cex[None])[0]
            assert out.max() >= out[int(y[i])]  # some other class scores at least as high
        answers.append(a.status)
    assert Status.UNSAT in answers and Status.SAT in answers  # a radius that separates points


def test_bab_compare_on_torch_modules_and_arrays(mlp: nn.Sequential) -> None:
    _, _, x, y = digits()
    res = bab.compare({"a": mlp, "b": train_mlp((8,), epochs=40, seed=5)}, (torch.from_numpy(x), y),
                      eps=0.05, methods="ibp,crown", limit=6, timeout=20, input_shape=(64,))
    assert isinstance(res, bab.compare.CompareResult)
    assert {r.model for r in res.rows} == {"a", "b"}
    for model in ("a", "b"):
        assert res.cell(model, "ibp").certified <= res.cell(model, "crown").certified <= res.cell(model, "pgd").certified
    frame = res.to_dataframe()
    assert list(frame.columns[:6]) == ["model", "method", "category", "certified", "total", "median_time_s"]
    assert "| category | method | a | b |" in res.markdown()


def test_bab_compare_stays_callable_after_importing_the_package() -> None:
    import importlib

    import bab.compare.report  # noqa: F401 - binds the package as the attribute bab.compare

    assert callable(bab.compare) and bab.compare.compare is importlib.import_module("bab.compare.api").compare
    assert bab.certify is importlib.import_module("bab.compare.api").certify


def test_to_dataframe_without_pandas_names_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    from bab.compare.api import CompareResult

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pandas"):
        CompareResult([], []).to_dataframe()
