"""Rényi-divergence certificates (Li, Chen, Wang & Carin, "Certified adversarial robustness
with additive noise", NeurIPS 2019).

The smoothed prediction stays ``A`` at ``x + delta`` when, for some order ``alpha > 1``, the
Rényi divergence between the shifted and the clean noise is below
``B(alpha) = -log(1 - pA - pB + 2 ((pA^(1-alpha) + pB^(1-alpha)) / 2)^(1/(1-alpha)))``.

* Gaussian, l2: ``D_alpha = alpha |delta|^2 / (2 sigma^2)``, so ``R(alpha) = sigma
  sqrt(2 B(alpha) / alpha)``.
* Laplace, l1: ``D_alpha = 1/(alpha-1) log(alpha/(2alpha-1) e^((alpha-1)t) + (alpha-1)/(2alpha-1)
  e^(-alpha t))`` with ``t = |delta|_1 / lambda`` (per coordinate, additive; the summand is
  convex and zero at 0, so the l1 ball's worst case puts the whole shift on one coordinate);
  increasing in ``t``, inverted by bisection (rounding down).

The radius is the best ``R(alpha)`` over a log grid of orders refined twice around the best;
every order tried gives a sound radius, so the maximum found is sound.
"""

from __future__ import annotations

import math

import numpy as np

from bab.smoothing.approaches.base import Approach, Bounds, shave
from bab.smoothing.noise import Noise

SLACK = 1e-14  # absolute margin on B(alpha): its last bits cancel when pA is close to pB
GRID = {"gaussian": (-4.0, 4.0, 241), "laplace": (-3.0, 3.0, 181)}  # log10(alpha - 1)


def divergence_budget(p_a: float, p_b: float, order: np.ndarray) -> np.ndarray:
    """``B(alpha)`` for an array of orders ``alpha > 1`` (0 where ``pA <= pB``)."""
    order = np.asarray(order, dtype=np.float64)
    if p_a <= p_b:
        return np.zeros_like(order)
    if p_b <= 0.0:
        return np.full_like(order, -math.log1p(-p_a))
    k = 1.0 - order  # < 0
    log_mean = (np.logaddexp(k * math.log(p_a), k * math.log(p_b)) - math.log(2.0)) / k
    with np.errstate(divide="ignore"):
        budget = -np.log1p(2.0 * np.exp(log_mean) - p_a - p_b)
    return np.maximum(budget - SLACK, 0.0)


def laplace_divergence(t: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The Rényi divergence of order ``alpha`` between Laplace(0, 1) and Laplace(t, 1)."""
    a = order / (2.0 * order - 1.0)
    c = (order - 1.0) / (2.0 * order - 1.0)
    return np.logaddexp(np.log(a) + (order - 1.0) * t, np.log(c) - order * t) / (order - 1.0)


def laplace_shift(budget: np.ndarray, order: np.ndarray, steps: int = 64) -> np.ndarray:
    """The largest ``t`` found with ``D_alpha(t) < B`` (vectorised bisection, rounding down)."""
    budget, order = np.broadcast_arrays(np.asarray(budget, float), np.asarray(order, float))
    lo = np.zeros_like(budget)
    # D_alpha(t) >= t + log(alpha/(2alpha-1))/(alpha-1): past this t the budget is exceeded
    hi = budget - np.log(order / (2.0 * order - 1.0)) / (order - 1.0) + 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok = laplace_divergence(mid, order) < budget
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return np.where(budget > 0.0, lo, 0.0)


def radius_at(noise: Noise, p_a: float, p_b: float, order: np.ndarray) -> np.ndarray:
    """``R(alpha)`` for each order (in the noise's norm)."""
    budget = divergence_budget(p_a, p_b, order)
    if noise.name == "gaussian":
        return noise.scale * np.sqrt(2.0 * budget / order)
    return noise.scale * laplace_shift(budget, order)


def best_radius(noise: Noise, p_a: float, p_b: float) -> float:
    """``max_alpha R(alpha)``: a grid in ``log10(alpha - 1)``, then two finer grids around
    the best order (vectorised; any order tried is sound)."""
    if p_a <= p_b:
        return 0.0
    start, stop, num = GRID[noise.name]
    logs = np.linspace(start, stop, num)
    best_log, best = 0.0, 0.0
    for _ in range(3):
        values = radius_at(noise, p_a, p_b, 1.0 + 10.0 ** logs)
        k = int(np.argmax(values))
        if values[k] > best:
            best_log, best = float(logs[k]), float(values[k])
        step = logs[1] - logs[0]
        logs = np.linspace(best_log - step, best_log + step, 41)
    return shave(best)


class Renyi(Approach):
    """Li et al.'s Rényi-divergence bound, maximised over the order."""

    name = "renyi"
    title = "Rényi divergence (Li 2019)"
    supports = frozenset({("gaussian", 2), ("laplace", 1)})

    def radius(self, noise: Noise, bounds: Bounds) -> float:
        """``sup_alpha R(alpha)`` (lower estimate)."""
        return best_radius(noise, bounds.pA_lower, bounds.pB_upper)
