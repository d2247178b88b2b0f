"""pytest-benchmark: noisy samples evaluated per second by randomized smoothing.

Run::

    python -m pytest benchmarks/bench_smoothing.py --benchmark-enable -o addopts="" -q

The digits model (64-32-32-10 ReLU MLP, trained for a few epochs with Gaussian noise by
:func:`bab.smoothing.train.train_smoothed` in a temporary folder) is loaded with
``onnx_models.load``; one round draws 10,000 Gaussian samples around one test image and
counts the classes at batch 1,000 (``sample_counts``, the loop behind ``bab smooth``). Torch
runs on one thread, as ``bab smooth`` picks for a network this small. Samples per second =
10,000 / the round time; it is stored in ``extra_info``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLES, BATCH = 10_000, 1000


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, torch.Tensor]:
    """The noise-trained digits network and one test image ``[1, 64]``."""
    import onnx_models
    from bab.smoothing.train import train_smoothed

    paths = train_smoothed(0.25, Path(tmp_path_factory.mktemp("smoothing")), epochs=5)
    with np.load(paths.test_data) as npz:
        x = torch.as_tensor(npz["x"][:1])
    return onnx_models.load(paths.model), x


@pytest.mark.parametrize("noise_kind", ["gaussian", "laplace", "uniform"])
def test_noisy_samples_per_second(benchmark, digits, noise_kind: str) -> None:
    from bab.smoothing import make_noise, sample_counts

    net, x = digits
    noise = make_noise(noise_kind, 0.25)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts = benchmark.pedantic(sample_counts, args=(net, x, noise, SAMPLES, BATCH, gen),
                                    rounds=20, iterations=1, warmup_rounds=2)
    finally:
        torch.set_num_threads(threads)
    assert counts.sum() == SAMPLES
    median = benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s_median"] = round(SAMPLES / median)
    benchmark.extra_info["batch"] = BATCH
