"""A self-contained demo: train a small ReLU MLP on scikit-learn's digits, export it to ONNX,
write L-inf robustness properties, and verify them with :func:`bab.api.verify`.

Nothing here prints; :mod:`bab.commands.demo` shows the results.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = (32, 32)
N_IN, N_OUT = 64, 10
RADII = (0.01, 0.1)
Layers = list[tuple[np.ndarray, np.ndarray]]
"""``[(W [out, in], b [out]), ...]`` float32, a ReLU after every layer but the last."""


def cache_root() -> Path:
    """``$BAB_CACHE_DIR`` if set, else the platform's user cache folder for bab."""
    env = os.environ.get("BAB_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bab-verifier"))


def demo_dir() -> Path:
    """Where the demo caches weights and (by default) writes its files."""
    return cache_root() / "demo"


@dataclass(frozen=True)
class Digits:
    """The digits data (pixels scaled to [0, 1], float32) with a fixed train/test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(test_size: float = 0.25, seed: int = 0) -> Digits:
    """scikit-learn's bundled 8x8 digits, split with a fixed, stratified shuffle."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y)
    return Digits(x_tr, y_tr, x_te, y_te)


def train_mlp(data: Digits, epochs: int = 150, lr: float = 1e-2, seed: int = 0) -> Layers:
    """Train a 64-32-32-10 ReLU MLP with full-batch Adam; returns its float32 layers."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    sizes = (N_IN, *HIDDEN, N_OUT)
    linears = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    with torch.no_grad():
        for lin in linears:  # seeded init independent of the global RNG
            bound = 1.0 / lin.in_features ** 0.5
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
    mods: list[torch.nn.Module] = []
    for lin in linears:
        mods += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods[:-1])
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return [(lin.weight.detach().numpy().astype(np.float32).copy(),
             lin.bias.detach().numpy().astype(np.float32).copy()) for lin in linears]


def forward(layers: Layers, x: np.ndarray) -> np.ndarray:
    """Numpy forward pass (float32) on ``[B, 64]``."""
    h = np.asarray(x, dtype=np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def accuracy(layers: Layers, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` classified as ``y``."""
    return float(np.mean(forward(layers, x).argmax(axis=1) == y))


def load_or_train(
    data: Digits, cache_dir: Path | None = None, epochs: int = 150, seed: int = 0
) -> tuple[Layers, bool]:
    """Cached weights if present, else train and cache; returns ``(layers, from_cache)``."""
    folder = demo_dir() if cache_dir is None else Path(cache_dir)
    path = folder / f"mlp-64-32-32-10-seed{seed}-ep{epochs}.npz"
    if path.is_file():
        try:
            with np.load(path) as npz:
                n = len(npz.files) // 2
                return [(npz[f"w{i}"], npz[f"b{i}"]) for i in range(n)], True
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache entry: retrain
    layers = train_mlp(data, epochs=epochs, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"{k}{i}": a for i, (w, b) in enumerate(layers) for k, a in (("w", w), ("b", b))}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return layers, False


def export_onnx(layers: Layers, path: Path) -> Path:
    """Write the MLP as ONNX (Gemm + Relu, opset 13, input [1, 64], output [1, 10])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    h = "input"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        last = i == len(layers) - 1
        out = "output" if last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [h, f"W{i}", f"B{i}"], [out], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            out = f"relu{i}"
        h = out
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, N_IN])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, N_OUT])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="bab-demo")
    model.ir_version = 8  # readable by older onnxruntime releases too
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def robustness_vnnlib(x: np.ndarray, label: int, eps: float, n_outputs: int = N_OUT) -> str:
    """VNN-LIB text (shape B): the eps-box around ``x`` clipped to [0, 1]; unsafe when any
    other class scores at least as high as ``label``."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    lo = np.clip(x - eps, 0.0, 1.0)
    hi = np.clip(x + eps, 0.0, 1.0)
    lines = [f"; L-inf robustness: label {label}, eps {eps!r}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(x.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    for i in range(x.size):
        lines.append(f"(assert (<= X_{i} {float(hi[i])!r}))")
        lines.append(f"(assert (>= X_{i} {float(lo[i])!r}))")
    disjuncts = [f"    (and (>= Y_{j} Y_{label}))" for j in range(n_outputs) if j != label]
    lines += ["(assert (or", *disjuncts, "))"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DemoInstance:
    """One property: a test image (index into the test set), its label and radius."""

    image: int
    label: int
    eps: float
    vnnlib_path: Path


@dataclass
class DemoSetup:
    """The demo's files and the network's test accuracy."""

    onnx_path: Path
    accuracy: float
    from_cache: bool
    instances: list[DemoInstance] = field(default_factory=list)


def build_demo(
    out_dir: Path, *, epochs: int = 150, seed: int = 0, radii: Sequence[float] = RADII,
    n_images: int = 5, cache_dir: Path | None = None,
) -> DemoSetup:
    """Train (or load) the MLP, export it and write properties for correctly classified
    test images (the first ``n_images``) at every radius."""
    out_dir = Path(out_dir)
    data = load_digits_split(seed=0)
    layers, cached = load_or_train(data, cache_dir, epochs=epochs, seed=seed)
    setup = DemoSetup(export_onnx(layers, out_dir / "digits_mlp.onnx"),
                      accuracy(layers, data.x_test, data.y_test), cached)
    hits = np.flatnonzero(forward(layers, data.x_test).argmax(axis=1) == data.y_test)
    for image in hits[:n_images].tolist():
        label = int(data.y_test[image])
        for eps in radii:
            path = out_dir / f"digit_{image}_label{label}_eps{eps:g}.vnnlib"
            path.write_text(robustness_vnnlib(data.x_test[image], label, eps))
            setup.instances.append(DemoInstance(image, label, float(eps), path))
    return setup


@dataclass(frozen=True)
class DemoResult:
    """The verdict on one demo instance (``result`` is a VNN-COMP word or ``error``)."""

    instance: DemoInstance
    result: str
    time_s: float
    detail: str = ""


def verify_all(
    setup: DemoSetup, timeout: float | None = None,
    verify: Callable[..., Any] | None = None,
    on_result: Callable[[DemoResult], None] | None = None,
) -> list[DemoResult]:
    """Verify every instance with ``bab.api.verify`` (or ``verify``, for tests)."""
    if verify is None:
        from bab.api import verify as api_verify

        verify = api_verify
    results = []
    for inst in setup.instances:
        start = time.perf_counter()
        try:
            res = verify(str(setup.onnx_path), str(inst.vnnlib_path), timeout=timeout)
            elapsed = float(getattr(res, "time_s", 0.0)) or time.perf_counter() - start
            status = getattr(res.status, "value", str(res.status))
            item = DemoResult(inst, status, elapsed, str(getattr(res, "reason", "")))
        except Exception as exc:  # noqa: BLE001 - one failure must not end the demo
            item = DemoResult(inst, "error", time.perf_counter() - start,
                              f"{type(exc).__name__}: {exc}")
        results.append(item)
        if on_result is not None:
            on_result(item)
    return results
