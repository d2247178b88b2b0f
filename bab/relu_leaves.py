"""Leaf decisions of ReLU-split BaB: which domains go to a solver, and what it says.

:class:`LeafDecisions` is the part of :class:`bab.relu_split.ReluSplitProblem` that hands
domains to the leaf solver (:class:`encoders.decide.LeafSolver`):

- fully split (linear) domains are decided exactly (LP), and an undecided one ends the search
  as ``unknown``;
- on ReLU networks, domains with at most ``milp_unstable`` free unstable ReLUs are tried once by
  MILP while those tries stay within ``milp_share`` of the run;
- on networks with other nonlinearities (no exact encoding), every domain is tried once by the
  LP over its relaxation (``LeafSolver.refute``) while those tries stay within ``lp_share``;
  children are tried again (narrower boxes).

A domain a try does not settle goes back to splitting, marked as tried (field ``milp``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bab.store import TensorBatch


class LeafDecisions:
    """Mixin of :class:`~bab.relu_split.ReluSplitProblem` (uses its options, boxes, clause
    rows, replay and statistics)."""

    def leaves(self, batch: TensorBatch) -> tuple[TensorBatch, TensorBatch]:
        """Linear leaves (no free unstable neuron), plus, with a leaf solver, domains not tried
        yet: with at most ``milp_unstable`` unstable ReLUs (MILP, ReLU networks), or any
        (the LP relaxation, networks with other nonlinearities), while the tries stay in
        their time share."""
        leaf = batch["unstable"] == 0
        if "milp" in batch.fields:
            if self._milp_allowed():
                leaf |= (batch["unstable"] <= self.opts.milp_unstable) & (batch["milp"] == 0)
            elif self._lp_allowed():
                leaf |= batch["milp"] == 0
        return batch.select(~leaf), batch.select(leaf)

    def _milp_allowed(self) -> bool:
        if self.leaf_solver is None or self.opts.milp_unstable <= 0 or self.shaped:
            return False  # (the exact encoders take ReLU networks only)
        return self._times["milp"] <= self.opts.milp_share * (time.monotonic() - self._t0)

    def _lp_allowed(self) -> bool:
        """LP refutation tries of domains of networks with non-ReLU nonlinearities (in share)."""
        if self.leaf_solver is None or self.opts.lp_share <= 0 or not self.shaped:
            return False
        return self._times["lp"] <= self.opts.lp_share * (time.monotonic() - self._t0)

    def decide_leaves(self, leaves: TensorBatch) -> tuple[Any, ...]:
        """The Engine's leaf hook: an exact solver per leaf; ``unsat`` when every linear leaf
        is infeasible. Partly split domains go to MILP (ReLU networks) or the LP relaxation
        (other nonlinearities); those the solver does not settle in ``milp_time_limit`` (or
        once the tries have used their time share) go back to splitting, marked as tried."""
        back = []
        for i in range(len(leaves)):
            self.check_time()
            leaf = leaves.select(torch.tensor([i], device=self.device))
            linear = int(leaf["unstable"][0]) == 0
            kind = "exact" if linear else "milp" if self._milp_allowed() else "lp" if self._lp_allowed() else ""
            if not kind:
                back.append(i)
                continue
            t0 = time.monotonic()
            limit = self.opts.leaf_time_limit if linear else self.opts.milp_time_limit
            res = self._solve_leaf(leaf, max(0.05, min(limit, self.remaining())), relaxed=kind == "lp")
            if not linear:
                self._times[kind] += time.monotonic() - t0
            if res.status == "infeasible":
                self.stats["lp_pruned"] += kind == "lp"
                continue
            if res.status == "feasible" and res.x is not None:
                region = self.indices[int(self.root_region[leaf["root"][0]])]
                cex = self.replay(np.asarray(res.x, np.float64), region)
                if cex is not None:
                    return "sat", cex  # the search ends: nothing goes back
            if linear:
                return "unknown", None
            back.append(i)
        rest = leaves.select(torch.tensor(back, dtype=torch.long, device=self.device))
        if len(rest):
            rest["milp"] = torch.ones_like(rest["milp"])
        return "unsat", None, rest

    def _solve_leaf(self, leaf: TensorBatch, time_limit: float, relaxed: bool = False) -> Any:
        """The leaf solver on one domain (its clause rows, fixed phases and widened boxes);
        ``relaxed``: only try to refute it with the LP relaxation."""
        k = int(leaf["root"][0])
        rows = self.valid[k]
        phases = {r: leaf[f"ph{r}"][0].cpu().numpy() for r in self.branchable}
        boxes = {j: tuple(t[0].cpu().numpy() for t in box) for j, box in self.state_of(leaf, widen=1e-6).boxes.items()}
        region = self.regions[int(self.root_region[k])]
        ball = {"ball": region.ball} if self.ball else {}
        solve = self.leaf_solver.refute if relaxed else self.leaf_solver.decide
        res = solve(self.net, region.lower, region.upper,
                                      self.C[k][rows].cpu().double().numpy(), self.d[k][rows].cpu().double().numpy(),
                                      phases, boxes, time_limit, **ball)
        key = f"{getattr(res, 'kind', '') or 'solver'}_leaves"
        self.stats[key] = self.stats.get(key, 0) + 1
        return res
