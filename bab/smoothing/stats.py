"""The statistics of PREDICT and CERTIFY (Cohen, Rosenfeld & Kolter 2019), on class counts.

Everything here works on counts only, so it can be tested (and vectorised over many
independent trials) separately from the sampling in :mod:`bab.smoothing.certify`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest

from bab.smoothing.errors import SmoothingError, check_alpha, check_count  # noqa: F401
from bab.smoothing.noise import Noise

ABSTAIN = -1


def lower_confidence_bound(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray | float:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on a binomial proportion.

    ``beta.ppf(alpha, k, n - k + 1)`` (0 where ``k == 0``), the same number as Cohen's
    ``proportion_confint(k, n, alpha=2*alpha, method="beta")[0]``.
    """
    k_arr = np.asarray(k, dtype=np.float64)
    safe = np.maximum(k_arr, 1.0)
    bound = np.where(k_arr > 0, beta.ppf(alpha, safe, n - safe + 1.0), 0.0)
    return float(bound) if bound.ndim == 0 else bound


def best_possible_lower_bound(n: int, alpha: float) -> float:
    """The largest ``pA_lower`` that ``n`` samples can give (all ``n`` hits): ``alpha^(1/n)``."""
    return float(alpha ** (1.0 / n))


@dataclass(frozen=True)
class CertifyStats:
    """Vectorised CERTIFY outcome for ``K`` points; ``label`` is ``ABSTAIN`` where abstained."""

    label: np.ndarray  # [K] int
    guess: np.ndarray  # [K] int, the class guessed from the n0 selection samples
    count: np.ndarray  # [K] int, hits of the guess among the n estimation samples
    pA_lower: np.ndarray  # [K] float
    radius: np.ndarray  # [K] float, 0 where abstained


def certify_counts(counts0: np.ndarray, counts: np.ndarray, noise: Noise,
                   alpha: float) -> CertifyStats:
    """CERTIFY from counts: ``counts0 [K, C]`` (selection), ``counts [K, C]`` (estimation).

    The guess is the top class of ``counts0``; ``pA_lower`` the Clopper-Pearson bound on its
    share of ``counts``; the radius is ``noise.radius(pA_lower)``; abstain when
    ``pA_lower <= 1/2`` (every noise here certifies a positive radius exactly then).
    """
    alpha = check_alpha(alpha)
    counts0 = np.atleast_2d(np.asarray(counts0))
    counts = np.atleast_2d(np.asarray(counts))
    n = int(counts.sum(axis=1).max()) if counts.size else 0
    if counts.shape != counts0.shape or np.any(counts.sum(axis=1) != n):
        raise SmoothingError("certify_counts: counts must be [K, C] with equal row sums")
    guess = counts0.argmax(axis=1)
    hits = counts[np.arange(len(guess)), guess]
    p_low = np.asarray(lower_confidence_bound(hits, n, alpha), dtype=np.float64).reshape(-1)
    ok = p_low > 0.5
    radius = np.where(ok, np.asarray(noise.radius(np.where(ok, p_low, 0.5))).reshape(-1), 0.0)
    label = np.where(ok, guess, ABSTAIN)
    return CertifyStats(label, guess, hits, p_low, radius.astype(np.float64))


def two_sided_pvalue(n_a: int, n_b: int) -> float:
    """Two-sided binomial test of ``n_a`` successes in ``n_a + n_b`` trials against p = 1/2."""
    total = int(n_a) + int(n_b)
    if total == 0:
        return 1.0
    return float(binomtest(int(n_a), total, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PredictStats:
    """Vectorised PREDICT outcome for ``K`` points."""

    label: np.ndarray  # [K] int, ABSTAIN where p > alpha
    top: np.ndarray  # [K] int, the most frequent class
    n_a: np.ndarray  # [K] top count
    n_b: np.ndarray  # [K] runner-up count
    pvalue: np.ndarray  # [K]


def predict_counts(counts: np.ndarray, alpha: float) -> PredictStats:
    """PREDICT from counts ``[K, C]``: the top two counts ``nA >= nB`` go into a two-sided
    binomial test; abstain when its p-value exceeds ``alpha``."""
    alpha = check_alpha(alpha)
    counts = np.atleast_2d(np.asarray(counts))
    if counts.shape[1] < 2:
        raise SmoothingError("predict needs a classifier with at least 2 outputs")
    order = np.argsort(-counts, axis=1, kind="stable")
    rows = np.arange(counts.shape[0])
    top, second = order[:, 0], order[:, 1]
    n_a, n_b = counts[rows, top], counts[rows, second]
    pvalue = np.array([two_sided_pvalue(a, b) for a, b in zip(n_a, n_b)], dtype=np.float64)
    label = np.where(pvalue <= alpha, top, ABSTAIN)
    return PredictStats(label, top, n_a, n_b, pvalue)


def feasibility_warnings(noise: Noise, n0: int, n: int, alpha: float) -> list[str]:
    """Explanations for settings that can never (or barely) certify; empty when fine."""
    notes = []
    best = best_possible_lower_bound(n, alpha)
    if best <= 0.5:
        notes.append(
            f"n={n} is too small to ever certify at alpha={alpha:g}: even with all {n} samples "
            f"on the top class the Clopper-Pearson lower bound is {best:.4f} <= 1/2, so every "
            f"input abstains (n must be at least {min_certifying_n(alpha)})")
    elif noise.radius(best) <= 0:
        notes.append(f"n={n}: the largest possible radius is 0, so every input abstains")
    if n0 < 2:
        notes.append(f"n0={n0}: the top-class guess rests on a single noisy sample")
    return notes


def min_certifying_n(alpha: float) -> int:
    """The smallest ``n`` with ``alpha^(1/n) > 1/2``: fewer samples can never certify."""
    n = max(1, math.floor(math.log2(1.0 / alpha)))
    while best_possible_lower_bound(n, alpha) <= 0.5:
        n += 1
    return n


def predict_warnings(n: int, alpha: float) -> list[str]:
    """A note when ``n`` samples can never pass PREDICT's test: its smallest p-value,
    ``2 * 2^-n`` (all ``n`` samples on one class), exceeds ``alpha``."""
    smallest = min(1.0, 2.0 * 0.5 ** n)
    if smallest <= alpha:
        return []
    return [f"n={n} is too small for PREDICT at alpha={alpha:g}: the smallest possible "
            f"p-value is {smallest:.3g} > alpha, so every input abstains"]


def max_radius(noise: Noise, n: int, alpha: float) -> float:
    """The largest radius any input can get with ``n`` samples at level ``alpha``."""
    return float(noise.radius(best_possible_lower_bound(n, alpha)))
