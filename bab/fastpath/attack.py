"""Counterexample search on an :class:`FcNet`: random points, box corners, then sign-gradient
steps on the clause margin ``max_i (C_i y - d_i)`` (a clause holds when it is <= 0).

Candidates are only proposals: the caller replays them on the ONNX file with onnxruntime.
"""

from __future__ import annotations

import itertools

import numpy as np

from bab.fastpath.model import FcNet

MAX_ALL_CORNERS = 10  # every corner of boxes with at most this many inputs, else random ones


def clause_margins(net: FcNet, x: np.ndarray, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``[B]``: ``max_i (C y - d)_i`` at each point (one clause)."""
    y, _ = net.forward(x)
    return (y @ C.T - d).max(axis=1)


def corners(lo: np.ndarray, up: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Every corner of a small box, else ``count`` random ones."""
    n = lo.shape[0]
    if n <= MAX_ALL_CORNERS:
        bits = np.array(list(itertools.product((0.0, 1.0), repeat=n)))
    else:
        bits = rng.integers(0, 2, size=(count, n)).astype(np.float64)
    return lo + bits * (up - lo)


def start_points(lo: np.ndarray, up: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """The centre, the corners and ``samples`` uniform points of the box."""
    rand = lo + rng.random((samples, lo.shape[0])) * (up - lo)
    return np.concatenate([((lo + up) / 2)[None], corners(lo, up, rng, 64), rand])


def pgd(net: FcNet, x: np.ndarray, C: np.ndarray, d: np.ndarray, lo: np.ndarray, up: np.ndarray,
        steps: int, step_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Sign-gradient descent on one clause's margin from points ``x`` kept in the box; the
    best point of each run and its margin (steps shrink geometrically)."""
    best_x, best_m = x.copy(), np.full(x.shape[0], np.inf)
    step = step_size * (up - lo)
    for _ in range(steps):
        y, pre = net.forward(x)
        rows = y @ C.T - d
        m = rows.max(axis=1)
        better = m < best_m
        best_x[better], best_m[better] = x[better], m[better]
        gy = C[rows.argmax(axis=1)]
        g = net.input_gradient(pre, gy)
        x = np.clip(x - step * np.sign(g), lo, up)
        step = step * 0.9
    m = clause_margins(net, x, C, d)
    better = m < best_m
    best_x[better], best_m[better] = x[better], m[better]
    return best_x, best_m


def falsify_box(net: FcNet, lo: np.ndarray, up: np.ndarray, clauses: list[tuple[np.ndarray, np.ndarray]],
                samples: int, restarts: int, steps: int, step_size: float,
                rng: np.random.Generator) -> list[tuple[np.ndarray, int, float]]:
    """Candidates ``(x, clause, margin)`` sorted by margin: the best sampled point of each
    clause, then the end of PGD runs from the ``restarts`` best samples of each clause."""
    pts = start_points(lo, up, samples, rng)
    y, _ = net.forward(pts)
    out: list[tuple[np.ndarray, int, float]] = []
    for k, (C, d) in enumerate(clauses):
        if C.shape[0] == 0:
            return [(pts[0], k, -np.inf)]
        m = (y @ C.T - d).max(axis=1)
        order = np.argsort(m)[:max(restarts, 1)]
        out.append((pts[order[0]], k, float(m[order[0]])))
        if m[order[0]] <= 0 or steps <= 0:
            continue
        xs, ms = pgd(net, pts[order], C, d, lo, up, steps, step_size)
        j = int(np.argmin(ms))
        out.append((xs[j], k, float(ms[j])))
    return sorted(out, key=lambda t: t[2])
