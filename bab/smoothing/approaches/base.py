"""What every smoothing certification approach shares: the sampled evidence, the confidence
bounds on the class probabilities, the result type and the base class.

One sampling pass per (model, noise, point) gives an :class:`Evidence`; every approach turns
the same evidence into a radius. All approaches but the first-order one use the same
:class:`Bounds` — Clopper-Pearson bounds with a Bonferroni split of ``alpha``: ``alpha/2`` for
the lower bound on the top class's probability ``pA`` and ``alpha/2`` shared by the upper
bounds on the other classes (the runner-up bound ``pB`` is the largest of them, and never above
``1 - pA_lower``). So each certificate holds with probability at least ``1 - alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from bab.smoothing.errors import SmoothingError, check_alpha
from bab.smoothing.noise import Noise
from bab.smoothing.stats import lower_confidence_bound

SHAVE = 1e-9  # relative margin every radius is rounded down by (floating point)


@dataclass(frozen=True)
class Evidence:
    """The samples of one point: ``guess`` is the top class of the ``n0`` selection samples,
    ``counts [C]`` the class counts of the ``n`` estimation samples. For Gaussian noise
    ``grad_sum [d]`` is the sum of ``w_i = noise_i / sigma`` over the estimation samples
    classified as ``guess`` and ``max_norm`` the largest ``|w_i|_2`` (first-order approach)."""

    guess: int
    counts: np.ndarray
    n0: int
    grad_sum: np.ndarray | None = None
    max_norm: float = math.inf

    @property
    def n(self) -> int:
        """The number of estimation samples."""
        return int(np.sum(self.counts))

    @property
    def count_a(self) -> int:
        """Hits of the guessed class."""
        return int(self.counts[self.guess])


@dataclass(frozen=True)
class Bounds:
    """``pA_lower <= P(f(x + noise) = A)`` and ``pB_upper >= max_{c != A} P(f = c)``."""

    pA_lower: float
    pB_upper: float


def upper_confidence_bound(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson upper bound ``beta.ppf(1 - alpha, k + 1,
    n - k)`` (1 where ``k == n``)."""
    k_arr = np.asarray(k, dtype=np.float64)
    safe = np.minimum(k_arr, n - 1.0)
    return np.where(k_arr < n, beta.ppf(1.0 - alpha, safe + 1.0, n - safe), 1.0)


def probability_bounds(evidence: Evidence, alpha: float) -> Bounds:
    """Bonferroni: ``pA_lower`` at level ``alpha/2``; each other class's upper bound at
    ``alpha / (2 (C - 1))``; ``pB_upper`` the largest, capped at ``1 - pA_lower``."""
    alpha = check_alpha(alpha)
    counts = np.asarray(evidence.counts)
    n, others = evidence.n, np.delete(counts, evidence.guess)
    if n < 1 or len(others) < 1:
        raise SmoothingError("probability_bounds: need n >= 1 samples and >= 2 classes")
    p_a = float(lower_confidence_bound(evidence.count_a, n, alpha / 2.0))
    p_b = float(np.max(upper_confidence_bound(others, n, alpha / (2.0 * len(others)))))
    return Bounds(p_a, min(p_b, 1.0 - p_a))


@dataclass(frozen=True)
class ApproachResult:
    """One approach's certificate for one point: ``label`` None (and radius 0) when it
    abstained; the radius is in the noise's norm; ``note`` says what limited it."""

    label: int | None
    radius: float
    pA_lower: float
    pB_upper: float
    note: str = ""


class Approach:
    """A certification approach: its name, the (noise, norm) pairs it supports, and the radius
    it certifies from :class:`Bounds` (override :meth:`certify` to use more evidence)."""

    name = "approach"
    title = ""
    supports: frozenset[tuple[str, int]] = frozenset()
    binary = False  # certifies top-vs-rest (P(A) > 1/2) instead of P(A) > P(B)

    def unsupported(self, noise: str, norm: int) -> str | None:
        """None when ``(noise, norm)`` is supported, else the reason."""
        if (noise, norm) in self.supports:
            return None
        pairs = ", ".join(f"{k}/l{p}" for k, p in sorted(self.supports))
        return f"{self.name} certifies only {pairs}; not {noise} noise in l{norm}"

    def radius(self, noise: Noise, bounds: Bounds) -> float:
        """The certified radius (0 when nothing is certified)."""
        raise NotImplementedError

    def predicts(self, bounds: Bounds) -> bool:
        """Whether the smoothed prediction is certified at radius 0."""
        return bounds.pA_lower > (0.5 if self.binary else bounds.pB_upper)

    def certify(self, noise: Noise, evidence: Evidence, alpha: float) -> ApproachResult:
        """The certificate of one point at confidence ``1 - alpha``."""
        reason = self.unsupported(noise.name, noise.norm)
        if reason:
            raise SmoothingError(reason)
        bounds = probability_bounds(evidence, alpha)
        if not self.predicts(bounds):
            return ApproachResult(None, 0.0, bounds.pA_lower, bounds.pB_upper, "abstained")
        r = max(0.0, float(self.radius(noise, bounds)))
        return ApproachResult(evidence.guess, r, bounds.pA_lower, bounds.pB_upper)


def shave(radius: float) -> float:
    """Round a radius down by the relative margin :data:`SHAVE` (0 stays 0, inf stays inf)."""
    if not math.isfinite(radius):
        return radius
    return max(0.0, radius * (1.0 - SHAVE))


def bisect_last_true(pred: Callable[[float], bool], lo: float, hi: float,
                     steps: int = 200) -> float:
    """For a predicate true at ``lo`` that switches to false once (monotone), the largest
    point found where it holds: the lower end of the final bracket (``hi`` doubles first
    while the predicate still holds there)."""
    while pred(hi):
        if hi > 1e12:
            return hi
        lo, hi = hi, 2.0 * hi
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if pred(mid):
            lo = mid
        else:
            hi = mid
    return lo
