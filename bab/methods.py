"""Verification methods (the Verifier plugins): what decides an instance after falsification.

A method is an object with ``name`` and ``decide(pipeline) -> Outcome``. The pipeline gives it
the network, the spec, the config, the deadline (``pipeline.deadline.check()``), statistics,
``pipeline.bound_network()`` and ``pipeline.replay(x, region)`` for counterexamples. Methods
are registered by name in ``METHODS`` as ``"module:factory"`` strings (built from the one
method table, :mod:`bab.taxonomy`), imported only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bab.result import Counterexample, Status

def _registry() -> dict[str, str]:
    """name -> "module:factory" (the factory takes the method name), from :mod:`bab.taxonomy`."""
    from bab.taxonomy import METHODS as TABLE

    return {m.name: m.entry for m in TABLE}


METHODS: dict[str, str] = _registry()


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

