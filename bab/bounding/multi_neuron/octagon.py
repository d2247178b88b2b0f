"""Sound octagonal bounds of the pre-activations of neuron groups, by CROWN back-substitution.

For a group of ``k`` neurons of node ``j`` and each direction ``d`` of
:func:`~bab.bounding.multi_neuron.hull.octagon_directions`, ``min d·x`` and ``max d·x`` over
the domain come from one backward pass of the CROWN sweep that produced the intermediate
boxes (spec rows ``±d`` placed on the group's neurons; all groups of all domains batched, rows
chunked to the sweep's memory budget). Each bound is intersected with the interval bound of
``d·x`` on the group's box and widened by a relative ``1e-9`` against rounding, like the
encoder's intermediate bounds.
"""

from __future__ import annotations

import numpy as np
import torch

from bab.bounding.polyhedra.crown import Sweep
from encoders.encoding import BOUND_SLACK


def interval(dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds ``[G, D]`` of ``dirs · x`` over boxes ``lo, hi`` ``[G, k]``."""
    pos, neg = np.maximum(dirs, 0.0), np.minimum(dirs, 0.0)
    return lo @ pos.T + hi @ neg.T, hi @ pos.T + lo @ neg.T


def octagons(sweep: Sweep | None, node: int, groups: list[np.ndarray], dirs: np.ndarray,
             boxes: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per domain ``(dlo, dhi)`` ``[G_i, D]`` for its groups ``[G_i, k]`` of node ``node``'s flat
    neurons; ``boxes[i]``: the groups' interval bounds ``[G_i, k]`` (``node < 0``: the input
    box, where the interval bound is exact and no backward pass is needed)."""
    out = [interval(dirs, lo, hi) for lo, hi in boxes]
    if sweep is None or node < 0 or max((g.shape[0] for g in groups), default=0) == 0:
        return [_widen(lo, hi) for lo, hi in out]
    low = _crown_lower(sweep, node, groups, dirs)
    res = []
    for i, (ilo, ihi) in enumerate(out):
        G, D = groups[i].shape[0], dirs.shape[0]
        vals = low[i, :2 * G * D].reshape(2, G, D)
        res.append(_widen(np.maximum(ilo, vals[0]), np.minimum(ihi, -vals[1])))
    return res


def _widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lo - BOUND_SLACK * (1 + np.abs(lo)), hi + BOUND_SLACK * (1 + np.abs(hi))


def _crown_lower(sweep: Sweep, node: int, groups: list[np.ndarray], dirs: np.ndarray) -> np.ndarray:
    """Lower bounds ``[N, R]`` of the rows ``[+d on each group; -d on each group]``."""
    N, D = len(groups), dirs.shape[0]
    shape = tuple(sweep.network.nodes[node].out_shape)
    n = int(np.prod(shape))
    R = 2 * D * max(g.shape[0] for g in groups)
    dtype = sweep.domains.lower.dtype
    out = torch.zeros(N, R, dtype=torch.float64)
    step = max(1, sweep.chunk(node))
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        A0 = torch.zeros(N, r1 - r0, n, dtype=dtype)
        for i, g in enumerate(groups):
            rows, cols, vals = _spec(g, dirs, r0, r1)
            A0[i, rows - r0, cols] = torch.as_tensor(vals, dtype=dtype)
        with torch.no_grad():
            out[:, r0:r1] = sweep.lower(node, A0.reshape(N, r1 - r0, *shape)).double()
    return out.numpy()


def _spec(g: np.ndarray, dirs: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, ...]:
    """Triplets of the spec rows ``r0..r1-1`` of one domain (row ``s·G·D + g·D + d``)."""
    G, D, k = g.shape[0], dirs.shape[0], dirs.shape[1]
    sign = np.array([1.0, -1.0])[:, None, None, None]
    rows = np.arange(2 * G * D).reshape(2, G, D, 1).repeat(k, 3)
    cols = np.broadcast_to(g[None, :, None, :], (2, G, D, k))
    vals = sign * np.broadcast_to(dirs[None, None], (2, G, D, k))
    keep = (vals != 0) & (rows >= r0) & (rows < r1)
    return rows[keep], cols[keep], vals[keep]
