"""Bounding methods (Bounders) by name."""

from __future__ import annotations

from bab.bounding.base import Bounder, Bounds, Domains, Registry, UnsupportedLayerError


def get_bounder(name: str) -> Bounder:
    """The Bounder registered under ``name``; ``ValueError`` lists the known names."""
    from bab.bounding.ibp import IBP

    bounders = {"ibp": IBP}
    if name not in bounders:
        raise ValueError(f"unknown bounding method '{name}'; available: {', '.join(sorted(bounders))}")
    return bounders[name]()


BOUNDERS = ("ibp",)

__all__ = ["Bounder", "Bounds", "Domains", "Registry", "UnsupportedLayerError", "get_bounder", "BOUNDERS"]
