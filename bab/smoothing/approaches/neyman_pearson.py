"""Neyman-Pearson certificates: the noises' own radii (Cohen et al. 2019 for Gaussian/l2,
Teng et al. 2020 for Laplace/l1, Yang et al. 2020 for uniform/l1), from ``(pA, pB)``.

The formulas live in :mod:`bab.smoothing.noise`; this module only wraps them. For Gaussian
noise the two-sided radius ``sigma/2 (Phi^-1(pA) - Phi^-1(pB))`` is the exact worst case over
all classifiers with those probabilities, so no other sound approach can beat it there.
"""

from __future__ import annotations

from bab.smoothing.approaches.base import Approach, Bounds, shave
from bab.smoothing.noise import Noise


class NeymanPearson(Approach):
    """``noise.radius(pA_lower, pB_upper)``."""

    name = "np"
    title = "Neyman-Pearson (Cohen 2019; Teng 2020; Yang 2020)"
    supports = frozenset({("gaussian", 2), ("laplace", 1), ("uniform", 1)})

    def radius(self, noise: Noise, bounds: Bounds) -> float:
        """The noise's two-sided radius, rounded down by the shared margin."""
        return shave(float(noise.radius(bounds.pA_lower, bounds.pB_upper)))
