"""A single Bounder used once as an incomplete verifier (no branching)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bab.methods import Outcome
from bab.result import Status
from vnnlib.spec import Region


def clause_rows(region: Region) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """All rows of all clauses of a region stacked, plus each clause's row count."""
    rows = np.concatenate([c.C for c in region.clauses])
    d = np.concatenate([c.d for c in region.clauses])
    return rows, d, [c.n_rows for c in region.clauses]


def clauses_infeasible(lb: np.ndarray, d: np.ndarray, counts: list[int], margin: float,
                       rel: float) -> list[bool]:
    """Per clause: is some row's lower bound above its ``d`` by more than the float slack?"""
    tol = margin + rel * (np.abs(lb) + np.abs(d) + 1.0)
    row_ok = np.isfinite(lb) & (lb - d > tol)
    out, start = [], 0
    for n in counts:
        out.append(bool(row_ok[start:start + n].any()))
        start += n
    return out


class BoundMethod:
    """Bound every clause row of every region once with a named Bounder."""

    def __init__(self, name: str) -> None:
        self.name = name

    def decide(self, pipeline: Any) -> Outcome:
        """``unsat`` when every clause of every region is infeasible, else ``unknown``."""
        from bab.bounding import BounderRefusal, UnsupportedLayerError, get_bounder

        bounder = get_bounder(self.name)
        if hasattr(bounder, "remaining"):  # long-running bounders (solvers) stop in time
            bounder.remaining = pipeline.deadline.remaining
        for region in pipeline.spec.regions:
            pipeline.deadline.check()
            try:
                proven = self.region_infeasible(pipeline, bounder, region)
            except (BounderRefusal, UnsupportedLayerError) as exc:
                pipeline.stats.extra["refused"] = f"{type(exc).__name__}: {exc}"  # bab compare: n/a
                text = str(exc)
                reason = text if text.startswith(f"{self.name}:") else f"{self.name}: {text}"
                return Outcome(Status.UNKNOWN, reason=reason)
            if not all(proven):
                return Outcome(Status.UNKNOWN, reason=f"{self.name} bounds could not prove every clause")
        pipeline.stats.proved_by = self.name
        return Outcome(Status.UNSAT)

    def region_infeasible(self, pipeline: Any, bounder: Any, region: Region) -> list[bool]:
        """Per-clause infeasibility of one region, all rows bounded in one pass."""
        from bab.bounding import Domains, check_input_set
        from bab.bounding.balls import region_ball

        if any(c.n_rows == 0 for c in region.clauses):
            return [False] * len(region.clauses)  # a rowless clause always holds
        net = pipeline.bound_network()
        rows, d, counts = clause_rows(region)
        kw = dict(dtype=net.dtype, device=pipeline.cfg.verify.device)
        dom = Domains(lower=torch.as_tensor(region.lower, **kw)[None],
                      upper=torch.as_tensor(region.upper, **kw)[None],
                      C=torch.as_tensor(rows, **kw)[None], **region_ball(region, **kw))
        check_input_set(bounder, dom)  # BounderRefusal: a set the bounder cannot handle
        lb = bounder.bound(net, dom).lower[0].detach().double().cpu().numpy()
        rel = 1e-5 if net.dtype == torch.float32 else 1e-12
        return clauses_infeasible(lb, d, counts, pipeline.cfg.bounding.safety_margin, rel)
