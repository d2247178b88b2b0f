"""Bounding methods (Bounders) by name."""

from __future__ import annotations

from bab.bounding.base import Bounder, Bounds, Domains, Registry, UnsupportedLayerError


def get_bounder(name: str) -> Bounder:
    """The Bounder registered under ``name``; ``ValueError`` lists the known names."""
    from bab.bounding.alpha import AlphaCrown
    from bab.bounding.crown import Crown
    from bab.bounding.ibp import IBP
    from bab.bounding.symbolic import CrownForward, Symbolic

    bounders = {
        "ibp": IBP,
        "crown": lambda: Crown("crown"),
        "deeppoly": lambda: Crown("deeppoly"),
        "fastlin": lambda: Crown("fastlin"),
        "alpha-crown": AlphaCrown,
        "symbolic": Symbolic,
        "crown-fwd": CrownForward,
    }
    if name not in bounders:
        raise ValueError(f"unknown bounding method '{name}'; available: {', '.join(BOUNDERS)}")
    return bounders[name]()


BOUNDERS = ("ibp", "crown", "deeppoly", "fastlin", "alpha-crown", "symbolic", "crown-fwd")

__all__ = ["Bounder", "Bounds", "Domains", "Registry", "UnsupportedLayerError", "get_bounder", "BOUNDERS"]
