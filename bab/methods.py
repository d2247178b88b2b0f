"""Verification methods (the Verifier plugins): what decides an instance after falsification.

A method is an object with ``name`` and ``decide(pipeline) -> Outcome``. The pipeline gives it
the network, the spec, the config, the deadline (``pipeline.deadline.check()``), statistics,
``pipeline.bound_network()`` and ``pipeline.replay(x, region)`` for counterexamples. Methods
are registered by name in ``METHODS`` as ``"module:factory"`` strings, imported only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bab.result import Counterexample, Status

# name -> "module:factory"; the factory takes the method name and returns a Method.
METHODS: dict[str, str] = {
    "default": "bab.bab_method:BabMethod",
    "bab": "bab.bab_method:BabMethod",
    "input-split": "bab.bab_method:BabMethod",
    "ibp": "bab.bound_method:BoundMethod",
    "crown": "bab.bound_method:BoundMethod",
    "deeppoly": "bab.bound_method:BoundMethod",
    "fastlin": "bab.bound_method:BoundMethod",
    "alpha-crown": "bab.bound_method:BoundMethod",
    "symbolic": "bab.bound_method:BoundMethod",
    "crown-fwd": "bab.bound_method:BoundMethod",
    "milp": "encoders.methods:MilpMethod",
    "lp": "encoders.methods:LpMethod",
    "lp-full": "encoders.methods:LpMethod",
    "smt": "encoders.methods:SmtMethod",
}


@dataclass
class Outcome:
    """A method's verdict (a ``sat`` must carry a replayed counterexample)."""

    status: "Status"
    counterexample: "Counterexample | None" = None
    reason: str = ""


class Method(Protocol):
    """A verification method."""

    name: str

    def decide(self, pipeline: Any) -> Outcome:
        """Decide the instance (falsification has already run)."""
        ...


def method_names() -> tuple[str, ...]:
    """Every registered method name."""
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """Instantiate the method registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(METHODS)}")
    module, factory = METHODS[name].split(":")
    return getattr(importlib.import_module(module), factory)(name)

