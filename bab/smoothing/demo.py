"""The smoothing part of ``bab demo``: certify a few digits test images with Gaussian noise.

Nothing here prints; :mod:`bab.commands.demo` shows the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bab.smoothing.certify import SmoothingCertificate, certify_batch


@dataclass
class SmoothingDemo:
    """The noise-trained network, its clean test accuracy, and one certificate per image."""

    onnx_path: Path
    accuracy: float
    from_cache: bool
    sigma: float
    images: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    certificates: list[SmoothingCertificate] = field(default_factory=list)


def smoothing_demo(out_dir: Path, sigma: float = 0.25, n_images: int = 5, n0: int = 100,
                   n: int = 10_000, alpha: float = 0.001, epochs: int = 60,
                   seed: int = 0) -> SmoothingDemo:
    """Train (or load from the cache) the digits MLP with Gaussian noise ``sigma``, export it
    to ``out_dir/digits_smoothed.onnx`` and CERTIFY the first ``n_images`` test images."""
    import torch

    import onnx_models
    from bab.demo import accuracy, export_onnx, load_digits_split
    from bab.smoothing.noise import gaussian
    from bab.smoothing.train import load_or_train_noisy, one_thread

    data = load_digits_split(seed=0)
    layers, cached = load_or_train_noisy(sigma, epochs=epochs, seed=seed)
    path = export_onnx(layers, Path(out_dir) / f"digits_smoothed_sigma{sigma:g}.onnx")
    demo = SmoothingDemo(path, accuracy(layers, data.x_test, data.y_test), cached, sigma)
    network = onnx_models.load(path)
    gen = torch.Generator().manual_seed(seed)
    with one_thread():
        demo.certificates = certify_batch(network, data.x_test[:n_images], gaussian(sigma),
                                          n0, n, alpha, batch=10_000, generator=gen)
    demo.images = list(range(n_images))
    demo.labels = [int(v) for v in data.y_test[:n_images]]
    return demo
