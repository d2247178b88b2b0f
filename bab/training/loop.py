"""The training loop: mini-batch Adam on a preset with one of the robust losses.

:func:`train_model` is the Python API; it prints nothing and reports each epoch through an
optional callback. :func:`save_model` writes ``model.onnx``, ``test.npz`` and ``train.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bab.training import robust
from bab.training.arch import Classifier, build, check_arch, describe, to_network
from bab.training.data import Dataset, load_data
from bab.training.errors import TrainingError

DEFAULT_EPS = 0.05
DEFAULT_SIGMA = 0.25
DEFAULT_EPOCHS = 20
DEFAULT_LR = 2e-3
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (``eps``/``sigma``: None when unused)."""

    arch: str
    robust: str
    eps: float | None
    sigma: float | None
    epochs: int
    seed: int = 0
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH
    pgd_steps: int = 7


@dataclass(frozen=True)
class EpochStats:
    """One point of the training curve (``ibp_certified``: fraction of the test set whose
    eps-ball IBP certifies at the target eps; eps methods only)."""

    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    eps: float
    kappa: float
    beta: float
    time_s: float
    ibp_certified: float | None = None


@dataclass
class TrainedModel:
    """A trained classifier with its configuration, data and curve."""

    model: Classifier
    config: TrainConfig
    data: Dataset
    curve: list[EpochStats] = field(default_factory=list)
    time_s: float = 0.0

    @property
    def accuracy(self) -> float:
        """Clean test accuracy."""
        return self.curve[-1].test_acc if self.curve else float("nan")


@dataclass(frozen=True)
class SavedPaths:
    """What :func:`save_model` wrote."""

    model: Path
    test_data: Path
    meta: Path


def _number(name: str, value: float | None, default: float, used: bool) -> float | None:
    """A checked finite, non-negative hyper-parameter; None when the method ignores it."""
    if value is not None:
        try:
            ok = math.isfinite(float(value)) and float(value) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise TrainingError(f"{name} must be a finite number >= 0, got {value!r}")
    if not used:
        return None
    value = default if value is None else float(value)
    if value <= 0:
        raise TrainingError(f"{name} must be > 0 for this robust method, got {value!r}")
    return value


def make_config(arch: str, method: str, eps: float | None = None, sigma: float | None = None,
                epochs: int | None = None, seed: int = 0, lr: float = DEFAULT_LR,
                batch_size: int = DEFAULT_BATCH) -> TrainConfig:
    """A validated :class:`TrainConfig` (:class:`TrainingError` on bad values)."""
    if method not in robust.METHODS:
        raise TrainingError(f"unknown robust method {method!r}; choose one of "
                            f"{', '.join(robust.METHODS)}")
    eps_v = _number("eps", eps, DEFAULT_EPS, method in robust.EPS_METHODS)
    sigma_v = _number("sigma", sigma, DEFAULT_SIGMA, method in robust.NOISE_METHODS)
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    if not isinstance(epochs, int) or epochs < 1:
        raise TrainingError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (math.isfinite(lr) and lr > 0) or batch_size < 1:
        raise TrainingError("lr must be > 0 and batch_size >= 1")
    return TrainConfig(arch, method, eps_v, sigma_v, epochs, int(seed), float(lr), int(batch_size))


def _context(cfg: TrainConfig, model: Classifier, data: Dataset) -> robust.LossContext:
    noise = None
    if cfg.robust in robust.NOISE_METHODS:
        from bab.smoothing.noise import make_noise

        noise = make_noise(cfg.robust.removeprefix("noise-"), cfg.sigma)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return robust.LossContext(model, to_network(model), data.n_classes, gen, noise, cfg.pgd_steps)


@torch.no_grad()
def _evaluate(model: Classifier, ctx: robust.LossContext, cfg: TrainConfig,
              x: torch.Tensor, y: torch.Tensor) -> tuple[float, float | None]:
    """Clean test accuracy and (eps methods) the IBP-certified fraction at the target eps."""
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    cert = None
    if cfg.eps is not None:
        cert = float(robust.ibp_certified(ctx.net, x, y, cfg.eps, ctx.n_classes).float().mean())
    model.train()
    return acc, cert


def _epoch(cfg: TrainConfig, ctx: robust.LossContext, opt: torch.optim.Optimizer,
           sched: robust.Schedule, x: torch.Tensor, y: torch.Tensor,
           epoch: int) -> tuple[float, float, robust.Phase]:
    """One pass over the training set; returns mean loss, accuracy and the last phase."""
    steps = math.ceil(len(x) / cfg.batch_size)
    order = torch.randperm(len(x), generator=ctx.gen)
    total, hits, phase = 0.0, 0, sched.at(0.0)
    for k in range(steps):
        phase = sched.at((epoch * steps + k) / (cfg.epochs * steps))
        idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        loss, logits = robust.step_loss(cfg.robust, ctx, x[idx], y[idx], phase)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        hits += int((logits.argmax(1) == y[idx]).sum())
    return total / len(x), hits / len(x), phase


def train_model(arch: str, robust_method: str = "none", data: Dataset | str | Path | None = None,
                eps: float | None = None, sigma: float | None = None, epochs: int | None = None,
                seed: int = 0, lr: float = DEFAULT_LR, batch_size: int = DEFAULT_BATCH,
                on_epoch: Callable[[EpochStats], None] | None = None) -> TrainedModel:
    """Train the preset ``arch`` with ``robust_method`` (see :data:`robust.METHODS`).

    ``data``: a :class:`Dataset`, a ``.npz`` path, or None for the digits. Defaults: eps
    0.05 (pgd, ibp, crown-ibp), sigma 0.25 (noise-*), 20 epochs. Seeded and deterministic
    for a fixed thread count. Raises :class:`TrainingError` on bad input.

    Example::

        trained = train_model("cnn-a", "crown-ibp", eps=0.05, epochs=20)
        save_model(trained, "zoo/cnn-a-crown-ibp")
    """
    cfg = make_config(arch, robust_method, eps, sigma, epochs, seed, lr, batch_size)
    data = data if isinstance(data, Dataset) else load_data(data)
    check_arch(cfg.arch, data.sample_shape)
    model = build(cfg.arch, data.sample_shape, data.n_classes, cfg.seed)
    ctx = _context(cfg, model, data)
    x = torch.from_numpy(data.x_train.reshape(len(data.x_train), -1))
    y = torch.from_numpy(data.y_train)
    xt = torch.from_numpy(data.x_test.reshape(len(data.x_test), -1))
    yt = torch.from_numpy(data.y_test)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = robust.schedule_for(cfg.robust, cfg.eps)
    trained, start = TrainedModel(model, cfg, data), time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        loss, acc, phase = _epoch(cfg, ctx, opt, sched, x, y, epoch)
        test_acc, cert = _evaluate(model, ctx, cfg, xt, yt)
        stats = EpochStats(epoch + 1, loss, acc, test_acc, phase.eps, phase.kappa, phase.beta,
                           time.perf_counter() - t0, cert)
        trained.curve.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    trained.time_s = time.perf_counter() - start
    return trained


def metadata(trained: TrainedModel) -> dict:
    """The ``train.json`` content: configuration, architecture, accuracy and curve."""
    model, cfg = trained.model, trained.config
    return {
        **asdict(cfg), "data": trained.data.source, "input_shape": list(model.input_shape),
        "n_classes": trained.data.n_classes, "layers": describe(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "schedule": asdict(robust.schedule_for(cfg.robust, cfg.eps)),
        "test_accuracy": trained.accuracy, "train_time_s": trained.time_s,
        "curve": [asdict(s) for s in trained.curve],
    }


def save_model(trained: TrainedModel, out_dir: str | Path) -> SavedPaths:
    """Write ``model.onnx``, ``test.npz`` (``x`` float32 ``[N, n_in]`` in [0, 1], ``y``
    int64; the test split) and ``train.json`` into ``out_dir``."""
    from bab.training.export import export_onnx

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    model = export_onnx(trained.model, out / "model.onnx")
    test = out / "test.npz"
    d = trained.data
    np.savez(test, x=d.x_test.reshape(len(d.x_test), -1).astype(np.float32),
             y=d.y_test.astype(np.int64))
    meta = out / "train.json"
    meta.write_text(json.dumps(metadata(trained), indent=2) + "\n")
    return SavedPaths(model, test, meta)
