"""Tiny digits classifiers for the comparison and torch-API tests (trained in seconds)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn


@functools.lru_cache(maxsize=None)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's fixed digits split: x_train, y_train, x_test, y_test (x in [0, 1])."""
    from bab.demo import load_digits_split

    d = load_digits_split()
    return d.x_train, d.y_train, d.x_test, d.y_test


def train_mlp(hidden: tuple[int, ...], epochs: int = 60, seed: int = 0, act: type = nn.ReLU) -> nn.Sequential:
    """A 64-hidden-10 MLP trained with full-batch Adam on digits (float32, eval mode)."""
    torch.manual_seed(seed)
    sizes = (64, *hidden, 10)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(act())
    model = nn.Sequential(*mods)
    x_tr, y_tr, _, _ = digits()
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def export(model: nn.Module, path: Path, input_shape: tuple[int, ...] = (64,)) -> Path:
    """ONNX export with torch's TorchScript exporter (offline)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *input_shape),), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"])
    return path
