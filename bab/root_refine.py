"""The MILP refinement step of ReLU-split BaB (docs/relu_split.md, "MILP-refined intermediate
bounds and a restart"): when the first search has run ``beta.refine_after`` of the time and is
still open, :class:`PhaseClock` stops it, :class:`RootRefine` tightens the root's intermediate
boxes with :func:`encoders.refine.milp_refine`, and :func:`bab.relu_bab.run_relu_split` restarts
the search from roots bounded with those intervals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bab.relu_bab import _opt


class PhaseOver(Exception):
    """Raised by :class:`PhaseClock` once the first search's share of the time is spent."""


class PhaseClock:
    """A deadline check that also raises :class:`PhaseOver` at ``end`` (``time.monotonic``)."""

    def __init__(self, check: Callable[[], None], end: float) -> None:
        self.inner, self.end = check, end
        self.may_stop: Callable[[], bool] = lambda: True

    def check(self) -> None:
        """The pipeline's check, then the phase's (only while ``may_stop()``)."""
        self.inner()
        if time.monotonic() >= self.end and self.may_stop():
            raise PhaseOver


class RootRefine:
    """MILP refinement of the root's intermediate boxes between two searches
    (``beta.refine_*``, :mod:`encoders.refine`): the first search runs ``after`` seconds."""

    def __init__(self, after: float, share: float, per_neuron: float) -> None:
        self.after, self.share, self.per_neuron = after, share, per_neuron
        self._viable: bool | None = None

    def worth_it(self, pipeline: Any, region: Any, held: dict) -> bool:
        """Whether to stop the first search: its roots are bounded and the refinement can
        tighten something (:func:`~encoders.refine.refinable`, decided once). A whole-clause
        MILP running beside the search does not keep it going: the restarted search runs it
        again, on the refined boxes (mnistfc 256x4 measurement in docs/relu_split.md)."""
        boxes = getattr(held.get("problem"), "root_intermediate", None)
        if not boxes:
            return False
        if self._viable is None:
            from encoders.decide import dispatcher_for
            from encoders.refine import refinable

            cfg = pipeline.cfg.solver
            self._viable = refinable(pipeline.network, np.asarray(region.lower), np.asarray(region.upper),
                                     _first(boxes), cfg, dispatcher_for(cfg))
        return self._viable

    def run(self, pipeline: Any, region: Any, boxes: dict[int, Any]) -> tuple[dict | None, Any]:
        """``(floor, report)``: the refined root intervals (``[1, *shape]`` tensors) and the
        :class:`~encoders.refine.RefineReport`; ``floor`` is ``None`` when nothing changed."""
        from encoders.decide import dispatcher_for
        from encoders.refine import milp_refine

        cfg = pipeline.cfg.solver
        bounds, report = milp_refine(pipeline.network, np.asarray(region.lower), np.asarray(region.upper), _first(boxes),
                                     cfg, dispatcher_for(cfg), per_neuron=self.per_neuron,
                                     time_limit=self.share * pipeline.deadline.remaining(),
                                     check=pipeline.deadline.check)
        if report.layers == 0:
            return None, report
        floor = {k: (_outward(lo, boxes[k][0], -1), _outward(hi, boxes[k][1], 1)) for k, (lo, hi) in bounds.items()}
        return floor, report


def _first(boxes: dict[int, Any]) -> dict[int, Any]:
    """The root boxes of the (only) region: batch row 0 of every node."""
    return {k: (lo[0], hi[0]) for k, (lo, hi) in boxes.items()}


def _outward(values: np.ndarray, like: torch.Tensor, direction: int) -> torch.Tensor:
    """float64 ``values`` in the dtype and shape of ``like``, rounded away from the interval's
    inside (``direction`` -1 for lower bounds, +1 for upper) where the cast moved them inward."""
    out = values.astype(torch.empty(0, dtype=like.dtype).numpy().dtype)
    moved = out > values if direction < 0 else out < values
    out[moved] = np.nextafter(out[moved], np.inf * direction)
    return torch.from_numpy(out).reshape(like.shape).to(like.device)


def refine_plan(pipeline: Any, regions: list) -> RootRefine | None:
    """The root refinement for this run, or ``None``: only for one region of a ReLU-only
    network (no other elementwise nonlinearity), with a deadline, a solver section, no
    checkpoint, and ``beta.refine_share > 0``."""
    from bab.bounding.polyhedra.relax import UNARY

    beta, cfg = getattr(pipeline.cfg, "beta", None), pipeline.cfg
    share = float(_opt(beta, "refine_share", 0.0))
    left = pipeline.deadline.remaining()
    if (share <= 0 or len(regions) != 1 or not math.isfinite(left) or getattr(cfg, "solver", None) is None
            or getattr(pipeline, "checkpoint", None) is not None
            or any(type(n.layer) in UNARY for n in pipeline.network.nodes)):
        return None
    return RootRefine(float(_opt(beta, "refine_after", 0.2)) * left, share,
                      float(_opt(beta, "refine_neuron_time", 1.0)))
