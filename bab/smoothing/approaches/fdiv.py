"""f-divergence certificates (Dvijotham, Hayes, Balle, Kolter, Qin, György, Xiao, Gowal &
Kohli, "A framework for robustness certification of smoothed classifiers using
f-divergences", ICLR 2020): the KL and Hellinger instances, binary (top class vs the rest).

The noise at ``x + delta`` is within divergence ``D(delta)`` of the noise at ``x``. By data
processing every distribution ``nu`` in that ball has ``D(Ber(nu(A)), Ber(pA)) <= D(delta)``,
so the smoothed prediction is ``A`` as long as no ``q <= 1/2`` fits: the exact solution of the
1-D dual is the threshold ``kappa = D(Ber(1/2), Ber(pA))`` (``pA`` the lower bound; the binary
divergence grows as ``q`` moves away from ``pA``), and the certified radius is the largest
``|delta|`` with ``D(delta) < kappa``.

* KL. For Gaussian and Laplace shifts KL is symmetric, so both directions of the ball hold and
  ``kappa = max(kl(1/2 || pA), kl(pA || 1/2))``. Gaussian: ``KL = |delta|_2^2 / (2 sigma^2)``;
  Laplace: ``KL = t + e^-t - 1`` with ``t = |delta|_1 / lambda`` (convex per coordinate and
  zero at 0: the worst l1 shift is on one coordinate).
* Squared Hellinger ``1 - BC``: Gaussian ``BC = exp(-|delta|^2 / (8 sigma^2))``; Laplace
  ``BC = (1 + t/2) e^(-t/2)`` (its log is concave per coordinate: worst case one coordinate).
"""

from __future__ import annotations

import math

from bab.smoothing.approaches.base import Approach, Bounds, bisect_last_true, shave
from bab.smoothing.noise import Noise

SLACK = 1e-14  # absolute margin on the divergence threshold


def binary_kl(q: float, p: float) -> float:
    """``KL(Ber(q) || Ber(p))``."""
    def term(a: float, b: float) -> float:
        return 0.0 if a == 0.0 else a * math.log(a / b)
    return term(q, p) + term(1.0 - q, 1.0 - p)


def kl_threshold(p_a: float) -> float:
    """``max(kl(1/2 || pA), kl(pA || 1/2))`` (0 when ``pA <= 1/2``; inf when ``pA = 1``)."""
    if p_a <= 0.5:
        return 0.0
    if p_a >= 1.0:
        return math.inf
    return max(binary_kl(0.5, p_a), binary_kl(p_a, 0.5))


def hellinger_threshold(p_a: float) -> float:
    """The binary Bhattacharyya coefficient ``sqrt(pA/2) + sqrt((1-pA)/2)`` at ``q = 1/2``."""
    return math.sqrt(p_a / 2.0) + math.sqrt((1.0 - p_a) / 2.0)


def kl_radius(noise: Noise, p_a: float) -> float:
    """The largest shift whose KL divergence stays below the threshold."""
    kappa = kl_threshold(p_a) - SLACK
    if kappa <= 0.0 or math.isinf(kappa):
        return max(kappa, 0.0)
    if noise.name == "gaussian":
        return shave(noise.scale * math.sqrt(2.0 * kappa))
    t = bisect_last_true(lambda s: s + math.expm1(-s) < kappa, 0.0, kappa + 2.0)
    return shave(noise.scale * t)


def hellinger_radius(noise: Noise, p_a: float) -> float:
    """The largest shift whose Bhattacharyya coefficient stays above the threshold."""
    if p_a <= 0.5:
        return 0.0
    if p_a >= 1.0:
        return math.inf
    bc = hellinger_threshold(p_a) + SLACK
    if noise.name == "gaussian":
        return shave(noise.scale * math.sqrt(max(-8.0 * math.log(bc), 0.0)))
    t = bisect_last_true(lambda s: math.log1p(s / 2.0) - s / 2.0 > math.log(bc), 0.0, 1.0)
    return shave(noise.scale * t)


class FDivergence(Approach):
    """Dvijotham et al.'s binary certificate with one f-divergence (``kl`` or ``hellinger``)."""

    supports = frozenset({("gaussian", 2), ("laplace", 1)})
    binary = True

    def __init__(self, divergence: str = "kl") -> None:
        if divergence not in ("kl", "hellinger"):
            raise ValueError(f"unknown f-divergence {divergence!r}")
        self.divergence = divergence
        self.name = "fdiv" if divergence == "kl" else "fdiv-hellinger"
        self.title = f"f-divergence, {'KL' if divergence == 'kl' else 'Hellinger'} (Dvijotham 2020)"

    def radius(self, noise: Noise, bounds: Bounds) -> float:
        """The radius from ``pA_lower`` alone (top class vs the rest)."""
        if self.divergence == "kl":
            return kl_radius(noise, bounds.pA_lower)
        return hellinger_radius(noise, bounds.pA_lower)
