"""Zonotope bounders (SoK category "zonotope"): DeepZ (``zonotope``) and RefineZono (``refinezono``).

:mod:`~bab.bounding.zonotope.zono` holds the batched zonotope type, :mod:`~bab.bounding.zonotope.deepz`
the per-layer transformers and the ``zonotope`` bounder, :mod:`~bab.bounding.zonotope.refinezono`
the LP/MILP refinement.
"""

from bab.bounding.zonotope.deepz import Zonotope
from bab.bounding.zonotope.refinezono import RefineZono

__all__ = ["RefineZono", "Zonotope"]
