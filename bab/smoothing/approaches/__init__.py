"""Randomized-smoothing certification approaches (the SoK's Table IV), one module each.

Every approach turns the same sampled :class:`~bab.smoothing.approaches.base.Evidence` of a
point into a probabilistic certificate (confidence ``1 - alpha``) in the noise's norm:

========================  =========================================  =====================
name                      approach                                   noise / norm
========================  =========================================  =====================
``np``                    Neyman-Pearson (Cohen; Teng; Yang)         gaussian/l2, laplace/l1,
                                                                     uniform/l1
``dp``                    differential privacy (PixelDP)             gaussian/l2, laplace/l1
``renyi``                 Rényi divergence (Li et al. 2019)          gaussian/l2, laplace/l1
``fdiv``                  f-divergence, KL (Dvijotham et al. 2020)   gaussian/l2, laplace/l1
``fdiv-hellinger``        f-divergence, Hellinger                    gaussian/l2, laplace/l1
``first-order``           value + gradient (Mohapatra; Levine)       gaussian/l2
========================  =========================================  =====================
"""

from __future__ import annotations

from bab.smoothing.approaches.base import (Approach, ApproachResult, Bounds, Evidence,
                                           probability_bounds)
from bab.smoothing.approaches.dp import PixelDP
from bab.smoothing.approaches.fdiv import FDivergence
from bab.smoothing.approaches.first_order import FirstOrder
from bab.smoothing.approaches.neyman_pearson import NeymanPearson
from bab.smoothing.approaches.renyi import Renyi
from bab.smoothing.errors import SmoothingError

APPROACHES: dict[str, Approach] = {a.name: a for a in (
    NeymanPearson(), PixelDP(), Renyi(), FDivergence("kl"), FDivergence("hellinger"),
    FirstOrder())}
DEFAULT_APPROACHES = ("np", "dp", "renyi", "fdiv", "first-order")

__all__ = ["APPROACHES", "DEFAULT_APPROACHES", "Approach", "ApproachResult", "Bounds",
           "Evidence", "get_approach", "probability_bounds"]


def get_approach(name: str) -> Approach:
    """The approach registered as ``name`` (:class:`SmoothingError` naming the choices)."""
    if name not in APPROACHES:
        raise SmoothingError(f"unknown smoothing approach {name!r}; choose from "
                             f"{', '.join(APPROACHES)}")
    return APPROACHES[name]
