"""Train a digits classifier for randomized smoothing: Gaussian noise augmentation.

Cohen et al. (2019) train the base classifier on inputs corrupted with the same noise that
smoothing uses, so that ``f(x + noise)`` is mostly right. The data, the network shape and the
ONNX export come from :mod:`bab.demo`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bab.demo import (HIDDEN, N_IN, N_OUT, Digits, Layers, accuracy, cache_root,
                      export_onnx, load_digits_split)
from bab.smoothing.errors import SmoothingError


@dataclass(frozen=True)
class TrainedPaths:
    """What :func:`train_smoothed` wrote, and the clean test accuracy of the network."""

    model: Path
    test_data: Path
    accuracy: float


def _mlp(seed: int) -> "torch.nn.Sequential":  # noqa: F821 - torch is imported lazily
    """The demo's 64-32-32-10 ReLU MLP with a seeded initialisation."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    sizes = (N_IN, *HIDDEN, N_OUT)
    mods: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            bound = 1.0 / a ** 0.5
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        mods += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*mods[:-1])


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread (this network is too small to gain from more), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_noisy_mlp(data: Digits, sigma: float, epochs: int = 60, seed: int = 0,
                    lr: float = 5e-3, batch_size: int = 128) -> Layers:
    """Mini-batch Adam on ``x + N(0, sigma^2 I)`` (fresh noise every step; seeded).

    ``sigma = 0`` trains on clean data. Returns the float32 layers ``[(W, b), ...]``.
    """
    with one_thread():
        return _train(data, sigma, epochs, seed, lr, batch_size)


def _train(data: Digits, sigma: float, epochs: int, seed: int, lr: float,
           batch_size: int) -> Layers:
    """The training loop of :func:`train_noisy_mlp`."""
    import torch

    if not np.isfinite(sigma) or sigma < 0:
        raise SmoothingError(f"sigma must be >= 0, got {sigma!r}")
    if epochs < 1:
        raise SmoothingError(f"epochs must be >= 1, got {epochs!r}")
    gen = torch.Generator().manual_seed(seed + 1)
    model = _mlp(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            noisy = x[idx] + sigma * torch.randn(len(idx), N_IN, generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(noisy), y[idx]).backward()
            opt.step()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().numpy().astype(np.float32).copy(),
             m.bias.detach().numpy().astype(np.float32).copy()) for m in linears]


def train_smoothed(sigma: float, output_dir: str | Path, epochs: int = 60,
                   seed: int = 0) -> TrainedPaths:
    """Train the digits MLP with Gaussian noise augmentation (standard deviation ``sigma``)
    and write ``output_dir/model.onnx`` and ``output_dir/test.npz`` (``x [N, 64]`` float32
    in [0, 1], ``y [N]``; the demo's fixed test split).

    Example::

        paths = train_smoothed(0.25, "out")   # then: bab smooth out/model.onnx out/test.npz
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise SmoothingError(f"{out} exists and is not a folder")
    data = load_digits_split(seed=0)
    layers = train_noisy_mlp(data, sigma, epochs=epochs, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model = export_onnx(layers, out / "model.onnx")
    test = out / "test.npz"
    np.savez(test, x=data.x_test, y=data.y_test)
    return TrainedPaths(model, test, accuracy(layers, data.x_test, data.y_test))


def load_or_train_noisy(sigma: float, epochs: int = 60, seed: int = 0) -> tuple[Layers, bool]:
    """Cached noise-trained layers (under ``cache_root()/smoothing``), else train and cache;
    returns ``(layers, from_cache)``."""
    folder = cache_root() / "smoothing"
    path = folder / f"mlp-64-32-32-10-sigma{sigma:g}-seed{seed}-ep{epochs}.npz"
    if path.is_file():
        try:
            with np.load(path) as npz:
                return [(npz[f"w{i}"], npz[f"b{i}"]) for i in range(len(npz.files) // 2)], True
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache entry: retrain
    layers = train_noisy_mlp(load_digits_split(seed=0), sigma, epochs=epochs, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"{k}{i}": a for i, (w, b) in enumerate(layers) for k, a in (("w", w), ("b", b))}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return layers, False
