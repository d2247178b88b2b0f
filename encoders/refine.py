"""MILP refinement of intermediate bounds (as ERAN's refinepoly and alpha-beta-CROWN's MIP-refined
intermediate bounds do for deep fully connected networks).

:func:`milp_refine` walks the ReLU layers in order. For each unstable neuron (input bounds
straddling 0) it minimises and maximises the neuron's pre-activation over the exact MILP of the
network prefix (one binary per unstable ReLU before it, big-M from the bounds tightened so far)
and keeps Gurobi's proven dual bound (``ObjBound``), which is valid even when the per-neuron
time limit stops the solve. Each new bound is loosened by the solver slack
(:func:`~encoders.decide.prove_eps`) and intersected with the old one, so bounds never get
looser. A side whose bound proves the neuron stable stops there (``BestBdStop``) and the other
side is skipped. Within a layer the widest kinks (largest ``min(-lo, hi)``) go first, so a walk
cut short by its time limit has refined the neurons whose relaxation loses most. Gurobi runs
without cuts and primal heuristics here: only the dual bound is wanted.

Why it pays: CROWN-family bounds of a deep network compound the single-neuron relaxation's
looseness layer by layer, and the MILP of the first layers is exact. On ERAN's
``mnist_relu_9_200`` (``idx 225``) exact bounds for the second ReLU layer alone lift the root
bound from -13.6 to -2.8 (docs/relu_split.md, "MILP-refined intermediate bounds").

Gurobi only: a stopped OR-Tools MILP reports no bound through the back-end interface, and a
prefix over the licence's size limit ends the walk (``RefineReport.stopped``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from encoders.backends import Dispatcher
from encoders.decide import prove_eps
from encoders.lp import intersect_loosened
from encoders.encoding import Bounds, UnsupportedNetwork, encode, float64_network, resize
from encoders.model import lower
from onnx_models import layers as L
from onnx_models.network import Network


@dataclass
class RefineReport:
    """What a refinement did: ``layers`` ReLU layers visited with binaries before them,
    ``solves`` bounds computed, ``stabilised`` neurons no longer unstable, ``seconds`` spent,
    ``stopped`` why the walk ended early (``""``: it did not)."""

    layers: int = 0
    solves: int = 0
    stabilised: int = 0
    seconds: float = 0.0
    stopped: str = ""


def milp_refine(network: Network, lower_box: np.ndarray, upper_box: np.ndarray, intermediate: Bounds,
                cfg: Any, disp: Dispatcher, *, per_neuron: float, time_limit: float,
                check: Callable[[], None] | None = None) -> tuple[Bounds, RefineReport]:
    """``intermediate`` (``{node: (lo, hi)}``, flat float64) with the unstable ReLU inputs
    tightened by MILP, at most ``per_neuron`` seconds per side and ``time_limit`` in all."""
    t0 = time.monotonic()
    end = t0 + time_limit
    bounds = {k: (_flat64(lo), _flat64(hi)) for k, (lo, hi) in intermediate.items()}
    report = RefineReport()
    eps = prove_eps(cfg)
    try:
        for j, sel, enc, model in _layer_models(network, lower_box, upper_box, bounds, check):
            if time.monotonic() >= end - 0.01:
                report.stopped = "time"
                break
            lo, hi = bounds[j]
            sel = sel[np.argsort(-np.minimum(-lo[sel], hi[sel]), kind="stable")]  # widest kinks first
            vals = _layer_bounds(disp, model, enc.output.rows(sel), per_neuron, end, cfg)
            if vals is None:
                report.stopped = "licence"
                break
            report.layers += 1
            report.solves += int(np.isfinite(vals).sum())
            intersect_loosened(lo, hi, sel, vals[0::2], vals[1::2], eps)
            hi[sel] = np.maximum(hi[sel], lo[sel])
            report.stabilised += int(sel.size - ((lo[sel] < 0) & (hi[sel] > 0)).sum())
    except UnsupportedNetwork:
        report.stopped = "unsupported"
    report.seconds = time.monotonic() - t0
    return bounds, report


def refinable(network: Network, lower_box: np.ndarray, upper_box: np.ndarray, intermediate: Bounds,
              cfg: Any, disp: Dispatcher) -> bool:
    """Whether :func:`milp_refine` can tighten anything: some unstable ReLU input has binaries
    before it, and Gurobi bounds that layer's MILP (one short solve; licence limits show here)."""
    bounds = {k: (_flat64(lo), _flat64(hi)) for k, (lo, hi) in intermediate.items()}
    try:
        for _, sel, enc, model in _layer_models(network, lower_box, upper_box, bounds):
            out = enc.output.rows(sel[:1])
            A = sp.csr_matrix(resize(out.A, model.n_vars))
            got = disp.dual_bounds(model, A, out.c, 0.05, time.monotonic() + 1.0, float(cfg.feasibility_tol))
            return got is not None
    except UnsupportedNetwork:
        return False
    return False


def _layer_models(network: Network, lower_box: np.ndarray, upper_box: np.ndarray, bounds: Bounds,
                  check: Callable[[], None] | None = None) -> Iterator[tuple[int, np.ndarray, Any, Any]]:
    """``(node, unstable neurons, encoding, MILP)`` for every ReLU input in order that has an
    unstable neuron and a binary before it (the first layer's bounds are exact already), each
    encoded with ``bounds`` as they are when it is reached (the caller may tighten them in
    between); stops at an empty prefix. :class:`UnsupportedNetwork` propagates."""
    net64 = float64_network(network)
    for j in _relu_inputs(network):
        if j not in bounds:
            continue
        if check is not None:
            check()
        lo, hi = bounds[j]
        sel = np.nonzero((lo < 0) & (hi > 0))[0]
        if sel.size == 0:
            continue
        enc = encode(net64, lower_box, upper_box, None, bounds, upto=j)
        if enc.empty:
            return
        model = lower(enc, "milp")
        if model.integer.any():
            yield j, sel, enc, model


def _flat64(value: Any) -> np.ndarray:
    """A bound (numpy or torch, one domain) as a fresh float64 vector."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.array(value, dtype=np.float64).reshape(-1)


def _relu_inputs(network: Network) -> list[int]:
    """The input node of every ReLU, in order."""
    return [n.inputs[0] for n in network.nodes if isinstance(n.layer, L.ReLU) and n.inputs[0] >= 0]


def _layer_bounds(disp: Dispatcher, model: Any, out: Any, per_neuron: float, end: float,
                  cfg: Any) -> np.ndarray | None:
    """``[2k]`` dual bounds, neuron by neuron: row ``2i`` bounds ``min z_i``, row ``2i + 1``
    bounds ``min -z_i``. Each side may stop once it proves the neuron stable (bound >= 0), and
    then the other side is skipped."""
    A = resize(out.A, model.n_vars)
    k = A.shape[0]
    objs = sp.vstack([A, -A]).tocsr()[np.arange(2 * k).reshape(2, k).T.reshape(-1)]
    consts = np.stack([out.c, -out.c], 1).reshape(-1)
    return disp.dual_bounds(model, objs, consts, per_neuron, end, float(cfg.feasibility_tol),
                            stop=np.zeros(2 * k), skip=lambda r, got: r % 2 == 1 and got[r - 1] >= 0)
