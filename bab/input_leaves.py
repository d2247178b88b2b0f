"""Exact decisions of input-split boxes (the leaf half of :class:`bab.input_split.InputSplitProblem`).

Two kinds of box go to the exact solver (``encoders.decide.LeafSolver``: LP when the box leaves
no ReLU unstable, else MILP, with float64 CROWN boxes of every node):

- boxes narrower than ``MIN_WIDTH`` in every input: they cannot be split, so the solver decides
  them (``leaf_time_limit`` each) or the answer is ``unknown``;
- boxes whose bounding pass left at most ``exact_unstable`` ReLU neurons unstable, on hard
  instances only: still open after ``exact_after`` seconds, with ``late_after`` boxes bounded (when
  the late bounder joins). A MILP's cost grows steeply with its binaries (on ACAS Xu
  ``3_3 prop_2``, one thread: medians of 9-28 ms at 5-30 unstable ReLUs, 23-241 ms at 40-60, the
  2 s limit past 100; docs/input_split.md). Near a tight margin a box can need thousands of
  split-and-bound passes, but on instances that splitting decides anyway it closes such boxes
  sooner.
  The tries take at most ``exact_share`` of the run's time and ``exact_time_limit`` per clause; a
  box they do not settle goes back to splitting, and its sub-boxes try again only once their
  count fell by a quarter.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bab.bounding import Domains
from bab.result import Counterexample
from bab.store import TensorBatch

MIN_WIDTH = 1e-9  # boxes narrower than this in every dimension cannot be split further
BOX_CHUNK = 32  # leaf boxes whose float64 node bounds one pass computes (decide_leaves)
NEVER = 1 << 30  # the ``tried`` count of a box whose lineage has not tried the solver yet


def unstable_counts(intermediate: dict[int, Any] | None, keys: list[int], n: int,
                    device: torch.device) -> torch.Tensor:
    """``[n]``: per box, the ReLU inputs (``keys``) whose bounds straddle 0; ``NEVER`` when a
    bound is missing (a bounder without intermediate bounds) or there are no keys."""
    if not keys or not intermediate or any(j not in intermediate for j in keys):
        return torch.full((n,), NEVER, dtype=torch.long, device=device)
    total = torch.zeros(n, dtype=torch.long, device=device)
    for j in keys:
        lo, hi = intermediate[j]
        total += ((lo < 0) & (hi > 0)).reshape(n, -1).sum(1).to(device)
    return total


class ExactLeaves:
    """Mixin of :class:`~bab.input_split.InputSplitProblem`: which boxes the exact solver sees,
    and the Engine's leaf hook."""

    leaf_solver: Any = None  # decides boxes (see decide_leaves)
    leaf_time_limit = 10.0  # seconds per clause of an unsplittable box
    exact_unstable = 0  # boxes with at most this many unstable ReLUs try the solver first (0: none)
    exact_share = 0.2  # ... within this share of the run's time
    exact_time_limit = 1.0  # ... and seconds per clause
    exact_after = 0.0  # ... and only after this many seconds of search

    def leaves(self, batch: TensorBatch) -> tuple[TensorBatch, TensorBatch]:
        """(boxes to split, boxes for the solver): the unsplittable ones, plus, within the time
        share and once the instance proved hard, those with few unstable ReLUs whose lineage has not
        tried at a count this high."""
        leaf = ((batch["upper"] - batch["lower"]) <= MIN_WIDTH).all(1)
        hard = self.bounded >= self.late_after and time.monotonic() - self._t0 >= self.exact_after
        if self.leaf_solver is not None and self.exact_unstable > 0 and hard and self._exact_allowed():
            u = batch["unstable"]
            leaf = leaf | ((u <= self.exact_unstable) & (4 * u <= 3 * batch["tried"]))
        return batch.select(~leaf), batch.select(leaf)

    def _exact_allowed(self) -> bool:
        return self._exact_time <= self.exact_share * (time.monotonic() - self._t0)

    def decide_leaves(self, leaves: TensorBatch) -> tuple[Any, ...]:
        """The Engine's leaf hook: each open clause of each box goes to the exact solver.
        Refuted clauses close; a box with none left is proven. A tiny box the solver cannot
        settle makes the answer unknown; a larger one goes back to splitting (also untried,
        once the time share is spent)."""
        back: list[int] = []
        boxes: dict[int, dict[int, Any]] = {}
        for i in range(len(leaves)):
            tiny = bool(((leaves["upper"][i] - leaves["lower"][i]) <= MIN_WIDTH).all())
            if not tiny and not self._exact_allowed():
                back.append(i)
                continue
            t0 = time.monotonic()
            if i not in boxes:
                boxes = self._boxes64(leaves, i, min(len(leaves), i + BOX_CHUNK))
            verdict, cex = self._decide_box(leaves, i, tiny, boxes[i])
            if not tiny:
                self._exact_time += time.monotonic() - t0
                leaves["tried"][i] = leaves["unstable"][i]
            if verdict == "sat":
                return "sat", cex  # the search ends: nothing goes back
            if verdict == "open":
                if tiny:
                    return "unknown", None
                back.append(i)
        return "unsat", None, leaves.select(torch.tensor(back, dtype=torch.long, device=self.device))

    def _decide_box(self, leaves: TensorBatch, i: int, tiny: bool,
                    boxes: dict[int, Any]) -> tuple[str, Counterexample | None]:
        """``("closed"|"open"|"sat", cex)`` for box ``i`` (``boxes``: its float64 node bounds);
        refuted clauses leave its ``open`` mask."""
        lo, hi = (leaves[k][i].double().cpu().numpy() for k in ("lower", "upper"))
        r = int(leaves["region"][i])
        region = self.regions[r]
        limit = self.leaf_time_limit if tiny else self.exact_time_limit
        still_open = False
        for k in leaves["open"][i].nonzero().flatten().tolist():
            self.check_time()
            clause = region.clauses[k]
            ball = {"ball": region.ball} if self.ball else {}
            res = self.leaf_solver.decide(self.net, lo, hi, clause.C, clause.d, intermediate=boxes,
                                          time_limit=max(0.05, min(limit, self.remaining())), **ball)
            key = f"{res.kind or 'solver'}_leaves"
            self.stats[key] = self.stats.get(key, 0) + 1
            if res.status == "infeasible":
                leaves["open"][i, k] = False
                continue
            if res.status == "feasible" and res.x is not None:
                cex = self.replay(np.asarray(res.x, np.float64), self.indices[r])
                if cex is not None:
                    return "sat", cex
            still_open = True
        return ("open" if still_open else "closed"), None

    def _boxes64(self, leaves: TensorBatch, start: int, stop: int) -> dict[int, dict[int, Any]]:
        """Float64 bounds of every node's output on boxes ``start .. stop - 1`` of ``leaves``
        (one batched pass), widened by a hair (for the MILP): ``{box: {node: (lo, hi)}}``."""
        lo, hi = leaves["lower"][start:stop].double(), leaves["upper"][start:stop].double()
        reg = leaves["region"][start:stop].to(self.device)
        dom = Domains(lo, hi, self.C[reg].double(), **self._ball_kw(reg, torch.float64))
        out = self.exact.bound(self._net_for(torch.float64), dom).intermediate or {}
        pad = lambda t: 1e-9 * (1.0 + t.abs())
        wide = {j: ((a - pad(a)).cpu().numpy(), (b + pad(b)).cpu().numpy()) for j, (a, b) in out.items()}
        return {start + k: {j: (a[k], b[k]) for j, (a, b) in wide.items()} for k in range(stop - start)}
