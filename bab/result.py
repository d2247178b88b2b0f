"""Typed verification results: a ``Status`` enum plus dataclasses for counterexamples and stats."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Status(enum.Enum):
    """The verdict on a whole instance (the VNN-COMP result word is ``value``)."""

    SAT = "sat"  # a counterexample exists (and was replayed with onnxruntime)
    UNSAT = "unsat"  # proven: no counterexample exists
    UNKNOWN = "unknown"
    TIMEOUT = "timeout"

    @property
    def solved(self) -> bool:
        """True for a definite verdict."""
        return self in (Status.SAT, Status.UNSAT)


@dataclass(frozen=True)
class Counterexample:
    """An input ``x`` (flat, float64) and the onnxruntime output ``y`` it produced."""

    x: np.ndarray
    y: np.ndarray
    region: int = 0
    clause: int = 0
    dtype: str = "float32"  # the ONNX input dtype: sets how many digits the witness keeps


@dataclass
class Stats:
    """What the pipeline did; phases record seconds spent per stage."""

    phases: dict[str, float] = field(default_factory=dict)
    method: str = ""
    proved_by: str = ""
    attack_candidates: int = 0
    replay_rejections: int = 0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """The answer to one instance."""

    status: Status
    counterexample: Counterexample | None = None
    time_s: float = 0.0
    stats: Stats = field(default_factory=Stats)
    reason: str = ""
