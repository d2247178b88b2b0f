"""Bounding methods (Bounders) by name, grouped by SoK family.

``interval/`` (IBP), ``polyhedra/`` (the CROWN family and forward symbolic bounds),
``zonotope/`` (DeepZ, RefineZono), ``duality/`` (Wong-Kolter dual network) and
``multi_neuron/`` (k-ReLU). Names and factories come from the one method table,
:mod:`bab.taxonomy`.
"""

from __future__ import annotations

import importlib

from bab.bounding.base import (Bounder, BounderRefusal, Bounds, Domains, Registry,
                               UnsupportedLayerError, check_input_set)
from bab.taxonomy import METHODS as _TABLE

BOUNDERS: tuple[str, ...] = tuple(m.name for m in _TABLE if m.bounder is not None)


def get_bounder(name: str) -> Bounder:
    """The Bounder registered under ``name``; ``ValueError`` lists the known names."""
    row = next((m for m in _TABLE if m.name == name and m.bounder is not None), None)
    if row is None:
        raise ValueError(f"unknown bounding method '{name}'; available: {', '.join(BOUNDERS)}")
    module, cls = row.bounder.entry.split(":")
    return getattr(importlib.import_module(module), cls)(**dict(row.bounder.kwargs))


__all__ = ["Bounder", "BounderRefusal", "Bounds", "Domains", "Registry", "UnsupportedLayerError", "get_bounder",
           "BOUNDERS", "check_input_set"]
