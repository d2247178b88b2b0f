"""``bab smooth`` and ``bab train-smoothed`` as a user runs them, plus the training and demo
functions behind them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.builders import mlp_onnx
from tests.builders import run_bab as bab


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-input, 3-class linear ONNX model and 12 samples (as 2x2 images) labelled by it."""
    d = tmp_path_factory.mktemp("smooth")
    w = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    model = mlp_onnx(d / "lin.onnx", [w], [np.zeros(3)])
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    x = rng.normal(0.0, 0.05, (12, 4)).astype(np.float32)
    x[np.arange(12), y] += 1.0
    np.savez(d / "data.npz", x=x.reshape(12, 2, 2), y=y)
    np.savez(d / "short.npz", x=x[:, :3], y=y)
    return {"dir": d, "model": model, "data": d / "data.npz", "short": d / "short.npz"}


def test_smooth_writes_csv_plot_and_table(tiny: dict[str, Path]) -> None:
    out, png = tiny["dir"] / "r.csv", tiny["dir"] / "curve.png"
    p = bab("smooth", str(tiny["model"]), str(tiny["data"]), "--sigma", "0.5", "--n0", "50",
            "--n", "2000", "--alpha", "0.001", "--limit", "10", "--output", str(out),
            "--plot", str(png), "--seed", "3")
    assert p.returncode == 0, p.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    assert list(rows[0])[:6] == ["index", "label", "prediction", "radius", "correct", "time"]
    assert all(r["prediction"] == r["label"] and float(r["radius"]) > 0.3 for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "certified accuracy" in p.stdout and "confidence 1-alpha = 0.999" in p.stdout
    assert "100.0%" in p.stdout and "unsat" not in p.stdout


@pytest.mark.parametrize("args,message", [
    (("--sigma", "0"), "sigma must be a finite number > 0"),
    (("--noise", "laplace", "--sigma", "-1"), "lambda must be a finite number > 0"),
    (("--alpha", "1.5"), "alpha must be in (0, 1)"),
])
def test_smooth_bad_parameters_exit_2(tiny: dict[str, Path], args: tuple[str, ...],
                                      message: str) -> None:
    p = bab("smooth", str(tiny["model"]), str(tiny["data"]), *args)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and message in p.stderr and "Traceback" not in p.stderr


def test_smooth_shape_mismatch_exits_2(tiny: dict[str, Path]) -> None:
    p = bab("smooth", str(tiny["model"]), str(tiny["short"]))
    assert p.returncode == 2
    assert p.stderr.strip() == ("bab smooth: error: short.npz: x has 3 features per sample "
                                "but the model takes 4")


def test_smooth_warns_when_n_cannot_certify(tiny: dict[str, Path]) -> None:
    p = bab("smooth", str(tiny["model"]), str(tiny["data"]), "--n", "5", "--limit", "2")
    assert p.returncode == 0, p.stderr
    assert "warning: n=5 is too small to ever certify" in p.stderr
    assert "2 abstained" in p.stdout


def test_train_smoothed_cli_and_function(tmp_path: Path) -> None:
    import onnx_models
    from bab.smoothing.train import train_smoothed

    p = bab("train-smoothed", "--sigma", "0.25", "--output-dir", str(tmp_path / "cli"),
            "--epochs", "3", "--seed", "1")
    assert p.returncode == 0, p.stderr
    paths = train_smoothed(0.25, tmp_path / "fn", epochs=3, seed=1)
    assert (tmp_path / "cli" / "model.onnx").read_bytes() == paths.model.read_bytes()
    with np.load(paths.test_data) as npz:
        assert npz["x"].shape == (450, 64) and npz["y"].shape == (450,)
    net = onnx_models.load(paths.model)
    assert (net.n_inputs, net.n_outputs) == (64, 10) and paths.accuracy > 0.5


def test_smoothing_demo_certifies_test_images(tmp_path: Path) -> None:
    from bab.smoothing.demo import smoothing_demo

    demo = smoothing_demo(tmp_path, n_images=3, n=500, epochs=20)
    assert len(demo.certificates) == 3 and demo.accuracy > 0.8
    assert sum(c.label == y for c, y in zip(demo.certificates, demo.labels)) >= 2
    again = smoothing_demo(tmp_path, n_images=1, n=500, epochs=20)
    assert again.from_cache
