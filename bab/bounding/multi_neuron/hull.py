"""Sound joint ReLU constraints over a group of ``k`` neurons (k-ReLU / PRIMA style).

The input polytope ``P = {x in R^k : G x <= h}`` of a group is its box plus octagonal rows
(bounds of ``x_i ± x_j`` and, for ``k = 3``, of ``x_i ± x_j ± x_l``). Every row normal of
``G`` is in ``{-1, 0, 1}^k``, so every non-singular ``k x k`` sub-system has an integer
determinant of magnitude at least 1 and its solution is computed to a few ulps.

The set to relax is ``S = {(x, relu(x)) : x in P}``. On each orthant ``relu`` is linear, so
``conv S`` is the convex hull of the lifted vertices of the pieces ``P ∩ orthant``; every such
vertex is a point of ``P`` where ``k`` rows of ``G`` or coordinate planes ``x_i = 0`` are
tight (:func:`candidates`). The facets of that hull (scipy's Qhull in ``2k`` dimensions) give
the directions ``(b, a)`` of rows ``b·x + a·y <= c``; the right-hand side ``c`` is then
recomputed as the maximum over the candidate points plus a slack for rounding
(:func:`tighten_rhs`), so a row is valid whatever Qhull's own rounding was: every candidate is
a true point ``(x, relu(x))`` with ``x`` in ``P``, and every vertex of ``conv S`` is a
candidate (up to rounding, which the slack covers).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

FEAS_TOL = 1e-9  # relative feasibility tolerance when keeping candidate points
RHS_SLACK = 1e-9  # relative and absolute slack added to every right-hand side


@dataclass
class JointRows:
    """Rows ``bx · x + ay · y <= c`` over one group (``bx``, ``ay``: ``[R, k]``; ``c``: ``[R]``)."""

    bx: np.ndarray
    ay: np.ndarray
    c: np.ndarray

    @property
    def size(self) -> int:
        return int(self.c.size)


def octagon_directions(k: int) -> np.ndarray:
    """Directions in ``{-1, 0, 1}^k`` with at least two non-zeros, first non-zero ``+1``."""
    out = []
    for d in itertools.product((-1, 0, 1), repeat=k):
        nz = [v for v in d if v != 0]
        if len(nz) >= 2 and nz[0] == 1:
            out.append(d)
    return np.array(out, dtype=np.float64).reshape(-1, k)


def polytope(lo: np.ndarray, hi: np.ndarray, dirs: np.ndarray, dlo: np.ndarray,
             dhi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(G, h)`` of ``{x : lo <= x <= hi, dlo <= dirs x <= dhi}`` (infinite rows dropped)."""
    k = lo.size
    eye = np.eye(k)
    G = np.concatenate([eye, -eye, dirs, -dirs])
    h = np.concatenate([hi, -lo, dhi, -dlo])
    keep = np.isfinite(h)
    return G[keep], h[keep]


def candidates(G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Points of ``P`` where ``k`` rows of ``G`` or planes ``x_i = 0`` are tight ``[V, k]``.

    Contains every vertex of every piece ``P ∩ orthant`` (empty when ``P`` is empty).
    """
    k = G.shape[1]
    combos, inv = _systems(np.concatenate([G, np.eye(k)]))
    if combos.shape[0] == 0:
        return np.zeros((0, k))
    b = np.concatenate([h, np.zeros(k)])
    X = np.einsum("sij,sj->si", inv, b[combos])
    scale = 1.0 + np.abs(h).max(initial=0.0)
    X = X[(X @ G.T <= h + FEAS_TOL * scale).all(1)]
    if X.shape[0] <= 1:
        return X.reshape(-1, k)
    return np.unique(np.round(X, 12), axis=0)


_SYSTEMS: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}


def _systems(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row combinations of ``A`` that form non-singular ``k x k`` systems, and their inverses
    (cached by ``A``: the row normals repeat from group to group)."""
    key = A.tobytes() + bytes(str(A.shape), "ascii")
    if key not in _SYSTEMS:
        k = A.shape[1]
        combos = np.array(list(itertools.combinations(range(A.shape[0]), k)), dtype=np.int64)
        M = A[combos]
        ok = np.abs(np.linalg.det(M)) > 0.5  # integer determinants: 0 or at least 1
        _SYSTEMS[key] = (combos[ok], np.linalg.inv(M[ok]))
    return _SYSTEMS[key]


def lift(X: np.ndarray) -> np.ndarray:
    """``[x, relu(x)]`` for each row of ``X``."""
    return np.concatenate([X, np.maximum(X, 0.0)], axis=1)


def _facets(points: np.ndarray) -> np.ndarray:
    """Qhull facet equations ``[F, d + 1]`` (joggled when the points are flat; empty if that fails)."""
    from scipy.spatial import ConvexHull, QhullError

    if points.shape[0] <= points.shape[1]:
        return np.zeros((0, points.shape[1] + 1))
    for options in (None, "QJ"):
        try:
            return ConvexHull(points, qhull_options=options).equations
        except QhullError:
            continue
    return np.zeros((0, points.shape[1] + 1))


def y_patterns(k: int) -> np.ndarray:
    """Output coefficient patterns ``a`` in ``{-1, 0, 1}^k``, non-zero, first non-zero ``+1``."""
    out = [d for d in itertools.product((-1, 0, 1), repeat=k)
           if any(d) and next(v for v in d if v) == 1]
    return np.array(out, dtype=np.float64)


def hull_directions(points: np.ndarray, exact_dims: int = 4) -> np.ndarray:
    """Outer facet normals ``[F, 2k]`` of the convex hull of the lifted ``points``
    (max-abs 1, deduplicated).

    Up to ``exact_dims`` dimensions (``k = 2``) the hull itself; above (``k = 3``, where a
    6-dimensional hull has thousands of facets) the facets of its projections onto
    ``(x, a·y)`` for every pattern ``a`` of :func:`y_patterns`, i.e. every hull facet whose
    output part is proportional to such a pattern (as in k-ReLU/PRIMA's fixed output
    directions). Normals are directions only: :func:`tighten_rhs` recomputes the offsets.
    """
    dim = points.shape[1]
    if dim <= exact_dims:
        normals = _facets(points)[:, :dim]
    else:
        k = dim // 2
        parts = []
        for a in y_patterns(k):
            eq = _facets(np.concatenate([points[:, :k], points[:, k:] @ a[:, None]], 1))
            eq = eq[np.abs(eq[:, k]) > 1e-9]
            parts.append(np.concatenate([eq[:, :k], eq[:, k:k + 1] * a[None]], 1))
        normals = np.concatenate(parts) if parts else np.zeros((0, dim))
    if normals.shape[0] == 0:
        return normals
    normals = normals / np.abs(normals).max(1, keepdims=True)
    normals[np.abs(normals) < 1e-7] = 0.0
    return np.unique(np.round(normals, 7), axis=0)


def tighten_rhs(normals: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Right-hand sides: the maximum of each normal over ``points`` plus rounding slack."""
    vals = points @ normals.T
    c = vals.max(0)
    mag = np.abs(points).max(initial=0.0) * np.abs(normals).sum(1)
    return c + RHS_SLACK * (1.0 + np.abs(c) + mag)


def triangle_max(bx: np.ndarray, ay: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Maximum of each row ``bx·x + ay·y`` over the product of the neurons' triangles
    (vertices ``(lo, relu(lo))``, ``(0, 0)``, ``(hi, relu(hi))``): what the triangle LP allows."""
    at_lo = bx * lo + ay * np.maximum(lo, 0.0)
    at_hi = bx * hi + ay * np.maximum(hi, 0.0)
    at_0 = np.where((lo < 0) & (hi > 0), 0.0, -np.inf)
    return np.maximum(np.maximum(at_lo, at_hi), at_0).sum(1)


def joint_rows(lo: np.ndarray, hi: np.ndarray, dirs: np.ndarray, dlo: np.ndarray,
               dhi: np.ndarray, max_rows: int | None = None) -> JointRows:
    """Valid rows over ``(x, relu(x))`` for ``x`` in the box ``[lo, hi]`` with octagon bounds
    ``dlo <= dirs x <= dhi``.

    Only facets of the exact hull that cut the product of triangles are kept (the others are
    implied by the triangle rows and the box), deepest cut first, at most ``max_rows``.
    """
    k = lo.size
    G, h = polytope(lo, hi, dirs, dlo, dhi)
    pts = lift(candidates(G, h))
    empty = JointRows(np.zeros((0, k)), np.zeros((0, k)), np.zeros(0))
    if pts.shape[0] == 0:
        return empty
    normals = hull_directions(pts)
    if normals.shape[0] == 0:
        return empty
    c = tighten_rhs(normals, pts)
    depth = triangle_max(normals[:, :k], normals[:, k:], lo, hi) - c
    keep = np.nonzero(depth > RHS_SLACK * (1.0 + np.abs(c)))[0]
    keep = keep[np.argsort(-depth[keep], kind="stable")][:max_rows]
    return JointRows(normals[keep, :k], normals[keep, k:], c[keep])
