"""``bab train`` and :mod:`bab.training`: presets, export, robust losses, data checks, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import onnx_models
from bab.bounding import Domains, get_bounder
from bab.bounding.polyhedra.crown import Crown
from bab.cli import main as cli_main
from bab.training import (ARCHS, METHODS, Dataset, TrainingError, build, save_model, to_network,
                          train_model)
from bab.training import robust
from bab.training.data import digits, load_npz
from tests.builders import run_bab as bab


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small() -> Dataset:
    """300 training and 60 test digits (fast epochs)."""
    d = digits()
    return Dataset(d.x_train[:300], d.y_train[:300], d.x_test[:60], d.y_test[:60], 10, "digits")


def _flat(d: Dataset) -> Dataset:
    n = lambda x: x.reshape(len(x), -1)
    return Dataset(n(d.x_train), d.y_train, n(d.x_test), d.y_test, d.n_classes, "flat")


# ---------------------------------------------------------------- presets and export
@pytest.mark.parametrize("arch", ARCHS)
def test_preset_trains_exports_and_matches_onnx(arch: str, small: Dataset, tmp_path: Path) -> None:
    trained = train_model(arch, "none", data=small, epochs=1)
    paths = save_model(trained, tmp_path)
    net = onnx_models.load(paths.model, use_cache=False)
    x = small.x_test[:20].reshape(20, -1)
    with torch.no_grad():
        want = trained.model(torch.from_numpy(x)).double().numpy()
    assert np.abs(net.evaluate(x) - want).max() < 1e-5
    ref = onnx_models.OnnxReference(paths.model)
    assert np.abs(ref.run(x) - want).max() < 1e-5
    twin = to_network(trained.model)  # the training-time IR twin computes the same function
    assert np.abs(twin.evaluate(x) - want).max() < 1e-6
    kinds = {n.layer.kind for n in net.nodes}
    assert kinds <= {"Conv2d", "ReLU", "Reshape", "Linear"}
    assert ("Conv2d" in kinds) == arch.startswith("cnn")


def test_fcnn_on_flat_data_and_sizes_grow(small: Dataset, tmp_path: Path) -> None:
    trained = train_model("fcnn-a", "none", data=_flat(small), epochs=1)
    net = onnx_models.load(save_model(trained, tmp_path).model, use_cache=False)
    assert net.input_shape == (64,) and net.n_outputs == 10
    sizes = {a: sum(p.numel() for p in build(a, (1, 8, 8), 10).parameters()) for a in ARCHS}
    assert sizes["fcnn-a"] < sizes["fcnn-b"] < sizes["fcnn-c"]
    neurons = {a: sum(n.out_shape[0] if len(n.out_shape) == 1 else int(np.prod(n.out_shape))
                      for n in to_network(build(a, (1, 8, 8), 10)).nodes
                      if n.layer.kind == "ReLU") for a in ARCHS}
    assert neurons["cnn-a"] < neurons["cnn-b"] < neurons["cnn-c"] < neurons["cnn-d"]


def test_seeded_training_is_deterministic(small: Dataset) -> None:
    a = train_model("fcnn-a", "pgd", data=small, epochs=1, eps=0.05, seed=3)
    b = train_model("fcnn-a", "pgd", data=small, epochs=1, eps=0.05, seed=3)
    c = train_model("fcnn-a", "pgd", data=small, epochs=1, eps=0.05, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in t.model.parameters()]) for t in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_records_its_curve(method: str, small: Dataset,
                                                 tmp_path: Path) -> None:
    trained = train_model("cnn-a", method, data=small, epochs=2, eps=0.03, sigma=0.2)
    meta = json.loads(save_model(trained, tmp_path).meta.read_text())
    assert meta["robust"] == method and meta["arch"] == "cnn-a" and len(meta["curve"]) == 2
    assert (meta["eps"] == 0.03) == (method in robust.EPS_METHODS)
    assert (meta["sigma"] == 0.2) == method.startswith("noise-")
    assert all(np.isfinite(s["loss"]) for s in meta["curve"])
    assert (meta["curve"][-1]["ibp_certified"] is None) == (method not in robust.EPS_METHODS)
    assert meta["test_accuracy"] == trained.accuracy


# ---------------------------------------------------------------- robust losses
def test_margin_spec_and_worst_case_ce_by_hand() -> None:
    C = robust.margin_spec(torch.tensor([1]), 3)
    assert C.tolist() == [[[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]]]
    m = torch.tensor([[2.0, -1.0]])  # worst-case logits (0 | -2, 1) for the true class first
    want = -torch.log_softmax(torch.tensor([0.0, -2.0, 1.0]), 0)[0]
    assert torch.allclose(robust.worst_case_ce(m, torch.tensor([1])), want)


def test_schedules_by_hand() -> None:
    ibp = robust.schedule_for("ibp", 0.1)
    assert ibp.at(0.05) == robust.Phase(0.0, 1.0, 0.0)
    mid = ibp.at(0.3)
    assert mid.eps == pytest.approx(0.05) and mid.kappa == pytest.approx(0.75)
    assert ibp.at(0.9) == robust.Phase(0.1, 0.5, 0.0)
    crown = robust.schedule_for("crown-ibp", 0.1)
    assert crown.at(0.0).beta == 1.0 and crown.at(0.3).beta == pytest.approx(0.5)
    assert crown.at(0.7) == robust.Phase(0.1, 0.0, 0.0)
    assert robust.schedule_for("pgd", 0.1).at(0.0).eps == 0.1


def _net_and_box(arch: str, eps: float, n: int = 16, seed: int = 0):
    model = build(arch, (1, 8, 8), 10, seed=seed)
    d = digits()
    x = torch.from_numpy(d.x_test[:n].reshape(n, -1))
    y = torch.from_numpy(d.y_test[:n])
    return model, to_network(model), x, y, *robust.input_box(x, eps)


def _sampled_margins(model, C, lo, hi, k: int = 200, seed: int = 0) -> torch.Tensor:
    """Margins ``C f(x)`` at ``k`` uniform points and all-corner-ish points of each box."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(k, *lo.shape, generator=g)
    u[:2] = torch.stack([torch.zeros_like(lo), torch.ones_like(lo)])
    pts = lo + u * (hi - lo)
    with torch.no_grad():
        out = model(pts.reshape(-1, lo.shape[1])).reshape(k, lo.shape[0], -1)
    return torch.einsum("nmk,snk->snm", C, out)


@pytest.mark.parametrize("arch", ["fcnn-b", "cnn-c"])
def test_crown_ibp_bound_sound_differentiable_and_matches_bounder(arch: str) -> None:
    model, net, x, y, lo, hi = _net_and_box(arch, 0.03)
    C = robust.margin_spec(y, 10)
    m = robust.crown_ibp_margins(net, lo, hi, C)
    assert m.requires_grad
    assert (m <= _sampled_margins(model, C, lo, hi).min(0).values + 1e-5).all()
    bounder = Crown("crown", intermediate="ibp", upper=False, final_ibp=False)
    ref = bounder.bound(net, Domains(lo, hi, C))
    assert torch.allclose(m.detach(), ref.lower, atol=1e-5)
    robust.worst_case_ce(m, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and all(g.abs().sum() > 0 for g in grads[:-1])


@pytest.mark.parametrize("arch", ["fcnn-a", "cnn-b"])
def test_ibp_margins_sound_and_no_looser_than_the_ibp_bounder(arch: str) -> None:
    model, net, x, y, lo, hi = _net_and_box(arch, 0.05, seed=1)
    C = robust.margin_spec(y, 10)
    m = robust.ibp_margins(net, lo, hi, C)
    assert (m <= _sampled_margins(model, C, lo, hi).min(0).values + 1e-5).all()
    plain = get_bounder("ibp").bound(net, Domains(lo, hi, C)).lower
    assert (m >= plain - 1e-5).all()  # folding the last layer into C only tightens


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_crown_ibp_loss_is_at_least_the_natural_loss(beta: float) -> None:
    model, net, x, y, lo, hi = _net_and_box("cnn-a", 0.02, n=32)
    ctx = robust.LossContext(model, net, 10, torch.Generator().manual_seed(0))
    phase = robust.Phase(0.02, kappa=0.0, beta=beta)
    natural = torch.nn.functional.cross_entropy(model(x), y)
    loss, _ = robust.step_loss("crown-ibp", ctx, x, y, phase)
    assert float(loss.detach()) >= float(natural.detach()) - 1e-6
    zero = robust.bound_loss("crown-ibp", ctx, x, y, robust.Phase(0.0, 0.0, beta))
    # eps 0: the bound is exact up to IBP's outward float rounding allowance (gamma_n times the
    # magnitudes), so the robust loss is the natural one, from above
    assert float(zero.detach()) == pytest.approx(float(natural.detach()), abs=1e-3)
    assert float(zero.detach()) >= float(natural.detach()) - 1e-6


def test_pgd_attack_stays_in_the_clipped_ball_and_raises_the_loss() -> None:
    model, net, x, y, lo, hi = _net_and_box("fcnn-b", 0.1, n=64)
    adv = robust.pgd_attack(model, x, y, 0.1, 10, torch.Generator().manual_seed(0))
    assert (adv >= lo - 1e-7).all() and (adv <= hi + 1e-7).all()
    assert adv.min() >= 0 and adv.max() <= 1
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model(adv), y) > ce(model(x), y)


def _ibp_certified_fraction(trained, out: Path, eps: float, n: int = 50) -> float:
    """Fraction of the first ``n`` test points the project's IBP bounder certifies on the
    exported model."""
    net = onnx_models.load(save_model(trained, out).model, use_cache=False)
    d = trained.data
    x = torch.from_numpy(d.x_test[:n].reshape(n, -1))
    y = torch.from_numpy(d.y_test[:n])
    lo, hi = robust.input_box(x, eps)
    lower = get_bounder("ibp").bound(net, Domains(lo, hi, robust.margin_spec(y, 10))).lower
    return float((lower > 0).all(1).float().mean())


def test_ibp_training_certifies_more_than_natural_training(tmp_path: Path) -> None:
    eps, d = 0.02, digits()
    fractions = {}
    for method in ("none", "ibp"):
        trained = train_model("fcnn-a", method, data=d, eps=eps, epochs=8)
        fractions[method] = _ibp_certified_fraction(trained, tmp_path / method, eps)
        assert trained.accuracy > 0.7
    assert fractions["ibp"] >= fractions["none"] + 0.2, fractions


# ---------------------------------------------------------------- input checks
def test_bad_parameters_raise_training_error(small: Dataset) -> None:
    for kwargs, message in [
        (dict(arch="vgg"), "unknown architecture 'vgg'"),
        (dict(robust_method="trades"), "unknown robust method 'trades'"),
        (dict(robust_method="ibp", eps=-0.1), "eps must be a finite number >= 0"),
        (dict(robust_method="pgd", eps=0.0), "eps must be > 0"),
        (dict(robust_method="noise-laplace", sigma=0.0), "sigma must be > 0"),
        (dict(epochs=0), "epochs must be an integer >= 1"),
    ]:
        args = dict(arch="fcnn-a", data=small, epochs=1) | kwargs
        with pytest.raises(TrainingError, match=re.escape(message)):
            train_model(**args)
    with pytest.raises(TrainingError, match="cnn-b is a conv net"):
        train_model("cnn-b", data=_flat(small), epochs=1)


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((10, 6, 6)).astype(np.float32)
    y = np.arange(10) % 3
    good = load_npz(_npz(tmp_path / "g.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4]))
    assert good.sample_shape == (1, 6, 6) and good.n_classes == 3 and good.y_train.dtype == np.int64
    cases = [
        (dict(x_train=x, y_train=y, x_test=x), "lacks array(s) y_test"),
        (dict(x_train=x, y_train=y + 0.5, x_test=x, y_test=y), "integer class labels"),
        (dict(x_train=x, y_train=y[:5], x_test=x, y_test=y), "vector of 10 labels"),
        (dict(x_train=x[:, :, :, None, None], y_train=y, x_test=x, y_test=y),
         "must be [N, C, H, W]"),
        (dict(x_train=x, y_train=y, x_test=x[:, :5], y_test=y), "differ in shape"),
        (dict(x_train=x * 3, y_train=y, x_test=x, y_test=y), "must lie in [0, 1]"),
    ]
    for i, (arrays, message) in enumerate(cases):
        with pytest.raises(TrainingError, match=re.escape(message)):
            load_npz(_npz(tmp_path / f"b{i}.npz", **arrays))
    assert load_npz(_npz(tmp_path / "f.npz", x_train=x, y_train=y.astype(float), x_test=x,
                         y_test=y)).y_train.dtype == np.int64


# ---------------------------------------------------------------- command line
def test_cli_writes_model_test_data_record_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "D", tmp_path / "curve.png"
    p = bab("train", "--arch", "fcnn-a", "--robust", "none", "--epochs", "1", "--output-dir",
            str(out), "--plot", str(png))
    assert p.returncode == 0, p.stderr
    assert {f.name for f in out.iterdir()} == {"model.onnx", "test.npz", "train.json"}
    with np.load(out / "test.npz") as npz:
        assert npz["x"].dtype == np.float32 and npz["x"].shape == (450, 64)
        assert 0 <= npz["x"].min() and npz["x"].max() <= 1 and npz["y"].dtype.kind == "i"
    meta = json.loads((out / "train.json").read_text())
    assert meta["epochs"] == 1 and meta["robust"] == "none" and 0 < meta["test_accuracy"] <= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "clean test accuracy" in p.stdout
    assert cli_main(["check", str(out / "model.onnx")]) == 0


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    flat = _npz(tmp_path / "flat.npz", x_train=np.zeros((4, 5)), y_train=np.arange(4),
                x_test=np.zeros((2, 5)), y_test=np.arange(2))
    partial = _npz(tmp_path / "partial.npz", x_train=np.zeros((4, 5)), y_train=np.arange(4))
    out = str(tmp_path / "D")
    cases = [
        (("--arch", "resnet"), "unknown architecture 'resnet'"),
        (("--arch", "fcnn-a", "--robust", "mixup"), "unknown robust method 'mixup'"),
        (("--arch", "fcnn-a", "--robust", "ibp", "--eps", "-0.1"), "eps must be"),
        (("--arch", "fcnn-a", "--data", str(partial)), "lacks array(s) x_test, y_test"),
        (("--arch", "cnn-a", "--data", str(flat)), "cnn-a is a conv net"),
        (("--arch", "fcnn-a", "--data", str(tmp_path / "none.npz")), "file not found"),
    ]
    for args, message in cases:
        code = cli_main(["train", *args, "--epochs", "1", "--output-dir", out])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("bab train: error: ") and message in err, err
    assert not Path(out).exists()
