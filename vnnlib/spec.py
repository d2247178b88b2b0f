"""The property model: a list of regions, each an input box and an output condition in DNF.

A VNN-LIB file describes the *unsafe* set. The instance is ``sat`` when some input ``x``
inside some region's box satisfies one of that region's clauses ``C @ f(x) <= d`` (every row).
A region built in Python may also carry an l_p ball (:class:`Ball`): its input set is then
the ball intersected with the box, and the box is the ball's box hull (VNN-LIB files stay
boxes), so code that only reads the box stays sound.
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


NORMS = ("inf", "2", "1")


def norm_name(p: object) -> str:
    """``'inf'``, ``'2'`` or ``'1'`` from the usual spellings (``ValueError`` otherwise)."""
    text = str(p).strip().lower()
    text = text[1:] if text.startswith("l") else text
    text = {"infinity": "inf", "oo": "inf", "2.0": "2", "1.0": "1"}.get(text, text)
    if text not in NORMS:
        raise ValueError(f"unknown norm {p!r} (inf, 2 or 1)")
    return text


def p_norm(v: np.ndarray, p: str) -> float:
    """The ``p``-norm (``'inf'``, ``'2'`` or ``'1'``) of a flat vector."""
    return float(np.linalg.norm(np.asarray(v, np.float64).reshape(-1), np.inf if p == "inf" else int(p)))


@dataclass(frozen=True, eq=False)
class Ball:
    """The l_p ball ``{x : ||x - center||_p <= eps}`` (``center``: float64 [n_in])."""

    center: np.ndarray
    eps: float
    p: str = "inf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", np.asarray(self.center, np.float64).reshape(-1))
        object.__setattr__(self, "p", norm_name(self.p))
        if not (np.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"ball radius must be finite and >= 0, got {self.eps!r}")

    def distance(self, x: np.ndarray) -> float:
        """``||x - center||_p``."""
        return p_norm(np.asarray(x, np.float64).reshape(-1) - self.center, self.p)

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """True when ``||x - center||_p <= eps + tol``."""
        return self.distance(x) <= self.eps + tol

    def hull(self, lower: np.ndarray | None = None,
             upper: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The box hull of the ball intersected with ``[lower, upper]`` (the centre must lie in
        that box: then every coordinate reaches ``center ± eps`` clipped, so the hull is exact)."""
        lo, hi = self.center - self.eps, self.center + self.eps
        if lower is not None:
            if np.any(self.center < lower) or np.any(self.center > upper):
                raise ValueError("the ball's centre lies outside the data box")
            lo, hi = np.maximum(lo, lower), np.minimum(hi, upper)
        return lo, hi


@dataclass(frozen=True, eq=False)
class Region:
    """An input box ``[lower, upper]`` (float64, [n_in]) and a disjunction of clauses.

    ``ball``: optional l_p ball; the input set is then ``ball ∩ [lower, upper]`` and the box
    must be the hull of that set (:meth:`with_ball` builds such a region).
    """

    lower: np.ndarray
    upper: np.ndarray
    clauses: tuple[Clause, ...]
    ball: Ball | None = None

    @classmethod
    def with_ball(cls, ball: Ball, clauses: tuple[Clause, ...], lower: np.ndarray | None = None,
                  upper: np.ndarray | None = None) -> "Region":
        """The region ``ball ∩ [lower, upper]`` (box: the hull of that set)."""
        lo, hi = ball.hull(None if lower is None else np.asarray(lower, np.float64).reshape(-1),
                           None if upper is None else np.asarray(upper, np.float64).reshape(-1))
        return cls(lo, hi, tuple(clauses), ball)

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """True when ``lower - tol <= x <= upper + tol`` elementwise (and, with a ball,
        ``||x - center||_p <= eps + tol``)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        in_box = bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))
        return in_box and (self.ball is None or self.ball.contains(x, tol))

    def satisfied_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
        """True when ``x`` lies in the input set and ``y`` satisfies some clause."""
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
