"""Differential-privacy certificates (PixelDP; Lecuyer, Atlidakis, Geambasu, Hsu & Jana,
IEEE S&P 2019).

If the noisy classifier is ``(eps, delta)``-DP for inputs within ``L`` (l2 or l1), the expected
indicator of every class moves by at most ``E' <= e^eps E + delta`` (expected output
stability), so the prediction is robust at radius ``L`` when (their Proposition 1)
``pA > e^(2 eps) pB + (1 + e^eps) delta``.

* Gaussian mechanism (l2): ``sigma = sqrt(2 ln(1.25/delta)) L / eps`` with ``eps <= 1``; for
  each ``delta`` the largest ``eps`` with the condition is the root of a quadratic in
  ``e^eps``, so ``L(delta) = min(eps*, 1) sigma / sqrt(2 ln(1.25/delta))``; the radius is the
  best ``L(delta)`` over a log grid of ``delta`` plus a bounded local refinement. Every
  ``delta`` tried is admissible, so the maximum found is sound.
* Laplace mechanism (l1): scale ``lambda = L / eps``, ``delta = 0``: ``L = lambda/2 ln(pA/pB)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from bab.smoothing.approaches.base import Approach, Bounds, shave
from bab.smoothing.noise import Noise

EPS_MAX = 1.0  # the Gaussian mechanism's theorem needs eps <= 1


def eps_star(p_a: float, p_b: float, delta: float) -> float:
    """The largest ``eps`` with ``pA >= e^(2 eps) pB + (1 + e^eps) delta`` (-inf if none):
    ``u = e^eps`` solves ``pB u^2 + delta u + (delta - pA) = 0``."""
    if p_a <= delta:
        return -math.inf
    disc = delta * delta + 4.0 * p_b * (p_a - delta)
    u = 2.0 * (p_a - delta) / (delta + math.sqrt(disc))  # the positive root, stable form
    return math.log(u) if u > 1.0 else -math.inf


def gaussian_radius_at(p_a: float, p_b: float, sigma: float, delta: float) -> float:
    """``L(delta)``: the radius the Gaussian mechanism certifies with this ``delta``."""
    if not 0.0 < delta < 1.0:
        return 0.0
    eps = min(eps_star(p_a, p_b, delta), EPS_MAX)
    if eps <= 0.0:
        return 0.0
    return eps * sigma / math.sqrt(2.0 * math.log(1.25 / delta))


def holds(p_a: float, p_b: float, sigma: float, delta: float, radius: float) -> bool:
    """PixelDP's condition for the Gaussian mechanism at ``(radius, delta)``, rechecked."""
    eps = radius * math.sqrt(2.0 * math.log(1.25 / delta)) / sigma
    return eps <= EPS_MAX and p_a > math.exp(2.0 * eps) * p_b + (1.0 + math.exp(eps)) * delta


def gaussian_radius(p_a: float, p_b: float, sigma: float) -> float:
    """The best ``L(delta)`` over ``0 < delta < (pA - pB)/2`` (0 when ``pA <= pB``)."""
    top = min(0.5 * (p_a - p_b), 1.0 - 1e-12)
    if top <= 0.0:
        return 0.0
    logs = np.linspace(math.log(top) - 40.0, math.log(top), 400)[:-1]
    values = [gaussian_radius_at(p_a, p_b, sigma, math.exp(v)) for v in logs]
    best = int(np.argmax(values))
    lo, hi = logs[max(best - 1, 0)], logs[min(best + 1, len(logs) - 1)]
    res = minimize_scalar(lambda v: -gaussian_radius_at(p_a, p_b, sigma, math.exp(v)),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    delta, radius = math.exp(logs[best]), float(values[best])
    if -res.fun > radius:
        delta, radius = math.exp(float(res.x)), -float(res.fun)
    radius = shave(radius)
    for step in range(60):  # floating point: step down until the condition holds
        if radius <= 0.0 or holds(p_a, p_b, sigma, delta, radius):
            return radius
        radius *= 1.0 - 1e-9 * 2.0 ** step
    return 0.0


class PixelDP(Approach):
    """Expected-output stability of the (eps, delta)-DP noise layer."""

    name = "dp"
    title = "Differential privacy (PixelDP, Lecuyer 2019)"
    supports = frozenset({("gaussian", 2), ("laplace", 1)})

    def radius(self, noise: Noise, bounds: Bounds) -> float:
        """Gaussian mechanism (l2) or Laplace mechanism (l1)."""
        p_a, p_b = bounds.pA_lower, bounds.pB_upper
        if p_a <= p_b:
            return 0.0
        if noise.name == "laplace":
            return shave(0.5 * noise.scale * math.log(p_a / p_b)) if p_b > 0 else math.inf
        return gaussian_radius(p_a, p_b, noise.scale)
