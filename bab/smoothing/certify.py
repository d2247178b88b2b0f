"""Smoothed prediction and certification of any classifier ``f(x_flat [B, n_in]) -> [B, C]``.

``g(x) = argmax_c P(f(x + noise) = c)``. :func:`predict` and :func:`certify` are Cohen,
Rosenfeld & Kolter's (ICML 2019) PREDICT and CERTIFY: the noise is sampled and the classifier
evaluated in batches with torch; the statistics live in :mod:`bab.smoothing.stats`. A
certificate holds with probability at least ``1 - alpha`` over the sampling — it is a
probabilistic statement, never a proof (so never reported as ``unsat``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bab.smoothing.errors import SmoothingError
from bab.smoothing.noise import Noise
from bab.smoothing.stats import (ABSTAIN, certify_counts, check_alpha, check_count,
                                 predict_counts)

Classifier = Callable[[torch.Tensor], torch.Tensor]
"""A network (e.g. :class:`onnx_models.Network`) or any function on flat batches."""


def model_dtype(model: Any) -> torch.dtype:
    """The model's float dtype (``Network.dtype``), float32 for a plain function."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def as_points(model: Any, x: Any) -> torch.Tensor:
    """``x`` (one input of any shape, or ``[K, ...]`` with ``K`` inputs) as ``[K, n_in]``."""
    t = torch.as_tensor(np.asarray(x), dtype=model_dtype(model))
    n_in = getattr(model, "n_inputs", None)
    if n_in is None:
        return t.reshape(1, -1) if t.ndim <= 1 else t.reshape(t.shape[0], -1)
    n_in = int(n_in)
    if t.numel() == n_in:
        return t.reshape(1, n_in)
    if t.ndim >= 2 and t[0].numel() == n_in:
        return t.reshape(t.shape[0], n_in)
    raise SmoothingError(f"input has {t.numel()} values; the model takes {n_in} per sample")


def sample_counts(model: Classifier, xs: torch.Tensor, noise: Noise, num: int, batch: int,
                  generator: torch.Generator | None = None) -> np.ndarray:
    """Class counts ``[K, C]`` of ``f(x_k + noise)`` over ``num`` fresh samples per point.

    The ``K * num`` noisy inputs are evaluated ``batch`` rows at a time (the rows of one
    batch may belong to several points), every row with its own independent noise.
    """
    num, batch = check_count("the number of samples", num), check_count("batch", batch)
    k, n_in = xs.shape
    n_classes = getattr(model, "n_outputs", None)
    counts: torch.Tensor | None = None
    total = k * num
    with torch.inference_mode():
        for start in range(0, total, batch):
            rows = torch.arange(start, min(start + batch, total))
            point = torch.div(rows, num, rounding_mode="floor")
            noisy = xs[point] + noise.sample((len(rows), n_in), generator, xs.dtype)
            logits = model(noisy).reshape(len(rows), -1)
            if counts is None:
                n_classes = int(n_classes or logits.shape[1])
                counts = torch.zeros(k * n_classes, dtype=torch.int64)
            flat = point * n_classes + logits.argmax(dim=1)
            counts += torch.bincount(flat, minlength=k * n_classes)
    assert counts is not None
    return counts.reshape(k, n_classes).numpy()


@dataclass(frozen=True)
class SmoothingCertificate:
    """A probabilistic robustness certificate (CERTIFY): with probability at least
    ``1 - alpha`` the smoothed classifier predicts ``label`` everywhere within ``radius``
    (``norm``) of the input. ``label`` is None and ``radius`` 0 when it abstained."""

    label: int | None
    radius: float
    norm: int
    alpha: float
    pA_lower: float
    abstained: bool
    reason: str
    n0: int
    n: int
    time_s: float
    noise: str = ""
    count: int = 0  # hits of the guessed class among the n estimation samples

    def text(self) -> str:
        """One line, e.g. ``class 3 certified with confidence 1-alpha = 0.999, radius …``."""
        if self.abstained:
            return f"abstained: {self.reason}"
        return (f"class {self.label} certified with confidence 1-alpha = {1 - self.alpha:g}, "
                f"radius {self.radius:.4g}, norm l{self.norm} "
                f"(pA_lower {self.pA_lower:.4f}, n={self.n}, {self.noise})")

    __str__ = text


@dataclass(frozen=True)
class SmoothedPrediction:
    """PREDICT's answer: ``label`` (None when it abstained) is the smoothed classifier's
    output with probability at least ``1 - alpha`` of being right when not abstaining."""

    label: int | None
    abstained: bool
    pvalue: float
    n_a: int
    n_b: int
    n: int
    alpha: float
    time_s: float

    def text(self) -> str:
        """One line."""
        if self.abstained:
            return (f"abstained: top counts {self.n_a} vs {self.n_b}, binomial p-value "
                    f"{self.pvalue:.3g} > alpha {self.alpha:g}")
        return f"class {self.label} (p-value {self.pvalue:.3g} <= alpha {self.alpha:g})"

    __str__ = text


def certify_batch(model: Classifier, xs: Any, noise: Noise, n0: int, n: int, alpha: float,
                  batch: int = 1000, generator: torch.Generator | None = None,
                  ) -> list[SmoothingCertificate]:
    """CERTIFY for each of ``K`` inputs, with independent samples per input and per stage."""
    alpha = check_alpha(alpha)
    n0, n = check_count("n0", n0), check_count("n", n)
    pts = as_points(model, xs)
    start = time.perf_counter()
    counts0 = sample_counts(model, pts, noise, n0, batch, generator)
    counts = sample_counts(model, pts, noise, n, batch, generator)
    stats = certify_counts(counts0, counts, noise, alpha)
    each = (time.perf_counter() - start) / len(pts)
    out = []
    for k in range(len(pts)):
        label, p_low = int(stats.label[k]), float(stats.pA_lower[k])
        abstained = label == ABSTAIN
        reason = (f"pA_lower {p_low:.4f} <= 1/2 for the guessed class {int(stats.guess[k])} "
                  f"({int(stats.count[k])}/{n} samples)" if abstained else "")
        out.append(SmoothingCertificate(
            None if abstained else label, float(stats.radius[k]), noise.norm, alpha, p_low,
            abstained, reason, n0, n, each, noise.describe(), int(stats.count[k])))
    return out


def certify(model: Classifier, x: Any, noise: Noise, n0: int, n: int, alpha: float,
            batch: int = 1000, generator: torch.Generator | None = None) -> SmoothingCertificate:
    """Cohen's CERTIFY for one input ``x``: guess the top class from ``n0`` samples,
    lower-bound its probability from ``n`` fresh samples (one-sided Clopper-Pearson at level
    ``1 - alpha``), and return the noise's radius, or abstain when ``pA_lower <= 1/2``."""
    pts = as_points(model, x)
    if len(pts) != 1:
        raise SmoothingError(f"certify takes one input, got {len(pts)}; use certify_batch")
    return certify_batch(model, pts, noise, n0, n, alpha, batch, generator)[0]


def predict_batch(model: Classifier, xs: Any, noise: Noise, n: int, alpha: float,
                  batch: int = 1000, generator: torch.Generator | None = None,
                  ) -> list[SmoothedPrediction]:
    """PREDICT for each of ``K`` inputs, independent samples per input."""
    alpha = check_alpha(alpha)
    n = check_count("n", n)
    pts = as_points(model, xs)
    start = time.perf_counter()
    stats = predict_counts(sample_counts(model, pts, noise, n, batch, generator), alpha)
    each = (time.perf_counter() - start) / len(pts)
    return [SmoothedPrediction(None if stats.label[k] == ABSTAIN else int(stats.label[k]),
                               bool(stats.label[k] == ABSTAIN), float(stats.pvalue[k]),
                               int(stats.n_a[k]), int(stats.n_b[k]), n, alpha, each)
            for k in range(len(pts))]


def predict(model: Classifier, x: Any, noise: Noise, n: int, alpha: float, batch: int = 1000,
            generator: torch.Generator | None = None) -> SmoothedPrediction:
    """Cohen's PREDICT for one input: the top two classes' counts over ``n`` samples go into a
    two-sided binomial test (p = 1/2); abstain when the p-value exceeds ``alpha``."""
    pts = as_points(model, x)
    if len(pts) != 1:
        raise SmoothingError(f"predict takes one input, got {len(pts)}; use predict_batch")
    return predict_batch(model, pts, noise, n, alpha, batch, generator)[0]
