"""The property model: a list of regions, each an input box and an output condition in DNF.

A VNN-LIB file describes the *unsafe* set. The instance is ``sat`` when some input ``x``
inside some region's box satisfies one of that region's clauses ``C @ f(x) <= d`` (every row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Clause:
    """A conjunction of linear output constraints ``C @ y <= d`` (``C``: [m, n_out], ``d``: [m]).

    A clause with zero rows is always true: every input of its region is a counterexample.
    """

    C: np.ndarray
    d: np.ndarray

    @property
    def n_rows(self) -> int:
        """Number of constraint rows."""
        return int(self.C.shape[0])

    def holds(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """True when ``C @ y <= d + tol`` for every row (``y``: [n_out])."""
        if self.n_rows == 0:
            return True
        return bool(np.all(self.C @ np.asarray(y, dtype=np.float64) <= self.d + tol))

    def margin(self, y: np.ndarray) -> float:
        """``max_i (C y - d)_i``: non-positive exactly when the clause holds (-inf with no rows)."""
        if self.n_rows == 0:
            return float("-inf")
        return float(np.max(self.C @ np.asarray(y, dtype=np.float64) - self.d))


@dataclass(frozen=True, eq=False)
class Region:
    """An input box ``[lower, upper]`` (float64, [n_in]) and a disjunction of clauses."""

    lower: np.ndarray
    upper: np.ndarray
    clauses: tuple[Clause, ...]

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """True when ``lower - tol <= x <= upper + tol`` elementwise."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))

    def satisfied_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
        """True when ``x`` lies in the box and ``y`` satisfies some clause."""
        return self.contains(x, tol) and any(c.holds(y, tol) for c in self.clauses)


@dataclass(frozen=True, eq=False)
class Spec:
    """A parsed property: ``regions`` plus the declared numbers of X and Y variables."""

    regions: tuple[Region, ...]
    n_inputs: int
    n_outputs: int

    def is_violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
        """True when ``(x, y)`` is a counterexample (lies in the unsafe set) within ``tol``."""
        return any(r.satisfied_by(x, y, tol) for r in self.regions)
