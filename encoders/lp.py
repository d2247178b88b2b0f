"""LP bounds on the triangle relaxation: per-row clause bounds and layer-by-layer tightening.

:func:`row_bounds` minimises every row of ``C y`` over the relaxation (the ``lp`` bounder's
lower bounds). :func:`tighten` (``lp-full``) walks the ReLU, max-pool and other nonlinear
nodes (relaxed elementwise ops, steps, products) in order and replaces the bounds of their
input neurons by LP minima/maxima over the relaxation of the
network prefix (built with the bounds tightened so far), each loosened by a relative slack of
``eps`` (the LP's optimum is only optimal within the solver's tolerances) and intersected with
the previous bounds, so bounds never get looser.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from encoders.backends import Dispatcher
from encoders.decide import prove_eps
from encoders.encoding import Bounds, encode, flat, resize
from encoders.model import lower
from onnx_models import layers as L
from onnx_models.network import Network


def row_bounds(network: Network, lower_box: np.ndarray, upper_box: np.ndarray, C: np.ndarray,
               cfg: Any, disp: Dispatcher, time_limit: float, phases: dict | None = None,
               intermediate: Bounds | None = None, ball: Any = None) -> np.ndarray:
    """LP lower bounds of each row of ``C f(x)`` (``-inf`` where the LP did not finish).

    An infeasible relaxation gives ``+inf`` for every row (the domain is empty).
    """
    enc = encode(network, lower_box, upper_box, phases, intermediate, ball=ball)
    C = np.atleast_2d(np.asarray(C, np.float64))
    if enc.empty:
        return np.full(C.shape[0], np.inf)
    model = lower(enc, "lp")
    objs = sp.csr_matrix(C @ enc.output.A)
    res = disp.solve_many(model, objs, C @ enc.output.c, time_limit, float(cfg.feasibility_tol))
    return np.array([solve_value(r) for r in res])


def solve_value(res: Any) -> float:
    """A solver result as a bound: its optimum, ``+inf`` when infeasible (an empty domain),
    ``-inf`` when it did not finish."""
    if res.status == "infeasible":
        return np.inf
    if res.status == "optimal" and res.value is not None:
        return float(res.value)
    return -np.inf


def tighten(network: Network, lower_box: np.ndarray, upper_box: np.ndarray, intermediate: Bounds,
            cfg: Any, disp: Dispatcher, time_limit: float, phases: dict | None = None,
            check: Callable[[], None] | None = None, ball: Any = None) -> Bounds:
    """``intermediate`` with the inputs of every ReLU, max-pool and other nonlinear node
    tightened by LP."""
    end = time.monotonic() + time_limit
    bounds = {k: (flat(lo, _numel(network, k)).copy(), flat(hi, _numel(network, k)).copy())
              for k, (lo, hi) in intermediate.items()}
    eps = prove_eps(cfg)
    for idx, j in dict.fromkeys(_targets(network)):
        if j not in bounds:
            continue
        if check is not None:
            check()
        lo, hi = bounds[j]
        sel = _selection(network.nodes[idx].layer, lo, hi, phases.get(idx) if phases else None)
        if sel.size == 0 or time.monotonic() >= end:
            continue
        enc = encode(network, lower_box, upper_box, phases, bounds, upto=j, ball=ball)
        if enc.empty:
            break
        model = lower(enc, "lp")
        out = enc.output.rows(sel)
        A = resize(out.A, model.n_vars)
        objs = sp.vstack([A, -A]).tocsr()
        consts = np.concatenate([out.c, -out.c])
        res = disp.solve_many(model, objs, consts, end - time.monotonic(), float(cfg.feasibility_tol))
        vals = np.array([solve_value(r) for r in res])
        intersect_loosened(lo, hi, sel, vals[:sel.size], vals[sel.size:], eps)
        bounds[j] = (lo, np.maximum(hi, lo))
    return bounds


def intersect_loosened(lo: np.ndarray, hi: np.ndarray, sel: np.ndarray, low: np.ndarray,
                       neg_high: np.ndarray, eps: float) -> None:
    """Intersect ``[lo, hi]`` at ``sel`` with solver bounds ``min z >= low`` and
    ``min -z >= neg_high``, each loosened by the relative slack ``eps`` (the solver's optimum
    holds within its tolerances); non-finite bounds (unfinished, or ``+inf`` for an infeasible
    program) change nothing."""
    new_lo = low - eps * (1 + np.abs(low))
    new_hi = -neg_high + eps * (1 + np.abs(neg_high))
    lo[sel] = np.maximum(lo[sel], np.where(np.isfinite(new_lo), new_lo, -np.inf))
    hi[sel] = np.minimum(hi[sel], np.where(np.isfinite(new_hi), new_hi, np.inf))


def _numel(network: Network, k: int) -> int:
    return math.prod(network.nodes[k].out_shape)


def _targets(network: Network) -> list[tuple[int, int]]:
    """``(node, input node)`` pairs whose input bounds matter: the ReLU and max-pool inputs,
    and every input of the nonlinear general-graph layers (relaxations, steps, products)."""
    from encoders.nonlinear import supported

    out = []
    for idx, node in enumerate(network.nodes):
        layer = node.layer
        if isinstance(layer, (L.ReLU, L.MaxPool2d)):
            out += [(idx, node.inputs[0])] if node.inputs[0] >= 0 else []
        elif not isinstance(layer, L.Concat) and supported(layer):
            out += [(idx, j) for j in node.inputs if j >= 0]
    return out


def _selection(layer: L.Layer, lo: np.ndarray, hi: np.ndarray, phase: Any) -> np.ndarray:
    """Neurons worth an LP: unstable (and unfixed) ReLU inputs; every max-pool input; the
    non-degenerate inputs of the other nonlinear layers."""
    if isinstance(layer, L.MaxPool2d):
        return np.arange(lo.size)
    if not isinstance(layer, L.ReLU):
        return np.nonzero(lo < hi)[0]
    mask = (lo < 0) & (hi > 0)
    if phase is not None:
        mask &= flat(phase, lo.size) == 0
    return np.nonzero(mask)[0]
