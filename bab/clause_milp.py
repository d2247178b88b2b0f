"""Whole-clause MILPs searched in slices beside ReLU-split BaB.

On deep ReLU networks the relaxation gap of a clause can stay wide through thousands of
beta-CROWN domains, while a MILP solver (presolve, cuts, its own branching) decides the same
clause in seconds. :class:`ClauseMilpSide` is the engine's side hook: between BaB steps, while
its slices have taken at most ``share`` of the search's time, it advances one clause's MILP
(:class:`encoders.clause_search.ClauseSearch`, built over the region with the root's
intermediate boxes). Clauses take turns: the clause in progress keeps the solver until it has
had ``STINT`` seconds more than the least-served open clause (clauses not started yet count as
unserved, the one with the worst open domain first), so one clause that neither the solver nor
BaB can decide does not hold up the others. When the solver answers for a clause:

- ``infeasible``: the clause holds nowhere; its domains leave the store (all of them: a clause
  is one BaB root);
- a candidate point: replayed on the original network (``sat`` only when the replay agrees);
- anything else: the clause is left to BaB alone.

Nothing is tried without a resumable solver (Gurobi, within its licence); the first clause
that cannot be searched in slices turns the side search off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bab.engine import BabOutcome, TimeShare
from bab.store import DomainStore

MIN_SLICE = 0.5  # seconds: shorter slices are not worth the solver's restart
MAX_SLICE = 4.0  # seconds: BaB gets a turn at least this often
STINT = 4.0  # seconds of solver time a clause gets ahead of the least-served open clause


class ClauseMilpSide:
    """Advances whole-clause MILPs of a :class:`~bab.relu_split.ReluSplitProblem` in slices."""

    def __init__(self, problem: Any, share: float) -> None:
        self.problem, self.time = problem, TimeShare(share)
        self.searches: dict[int, Any] = {}
        self.finished: set[int] = set()
        self.off = False
        self.current = -1
        problem.stats.update(clause_milp_closed=0, clause_milp_started=0, clause_milp_time=0.0)

    def __call__(self, store: DomainStore) -> BabOutcome | None:
        """One slice when the share allows; ``sat`` with a replayed counterexample, or ``None``."""
        budget = self.time.allowance()
        if self.off or budget < MIN_SLICE or not len(store):
            return None
        try:
            with self.time.charged():
                return self._slice(store, min(budget, MAX_SLICE, max(0.0, self.problem.remaining())))
        finally:
            self.problem.stats["clause_milp_time"] = self.time.spent

    def _slice(self, store: DomainStore, seconds: float) -> BabOutcome | None:
        k = self._pick(store)
        if k is None:
            return None
        search = self.searches.get(k)
        if search is None:
            search = self._start(k)
            if search is None:
                self.off = True
                return None
        res = search.advance(seconds)
        if res is None:
            return None
        self.finished.add(k)
        self.searches.pop(k, None)
        if res.status == "infeasible":
            store.batch = store.batch.select(store.batch["root"] != k)
            self.problem.stats["clause_milp_closed"] += 1
        elif res.status == "feasible" and res.x is not None:
            p = self.problem
            cex = p.replay(np.asarray(res.x, np.float64), p.indices[int(p.root_region[k])])
            if cex is not None:
                return BabOutcome("sat", cex, reason="whole-clause MILP")
        return None

    def _pick(self, store: DomainStore) -> int | None:
        """The clause searched now, in turns: the current one until it has had ``STINT`` more
        solver time than the least-served open clause, then the least-served (clauses not
        started yet first, the one with the worst open domain first among them)."""
        roots = store.batch["root"]
        worst = torch.full((int(roots.max()) + 1,), float("inf"), dtype=store.batch["priority"].dtype)
        worst = worst.scatter_reduce(0, roots.long().cpu(), store.batch["priority"].cpu(), "amin")
        open_ = [k for k in torch.isfinite(worst).nonzero().flatten().tolist() if k not in self.finished]
        for k in [k for k in self.searches if k not in open_]:  # BaB closed it first
            del self.searches[k]
            self.finished.add(k)
        if not open_:
            return None
        served = {k: self.searches[k].seconds if k in self.searches else 0.0 for k in open_}
        cur = self.current
        if cur in served and served[cur] < min((v for k, v in served.items() if k != cur), default=np.inf) + STINT:
            return cur
        self.current = min(open_, key=lambda k: (served[k], float(worst[k])))
        return self.current

    def _start(self, k: int) -> Any:
        """The MILP of clause ``k`` over its region, with the root's (widened) boxes."""
        p = self.problem
        rows = p.valid[k]
        one = p.roots().select(torch.tensor([k], device=p.device))
        boxes = {j: tuple(t[0].cpu().numpy() for t in box) for j, box in p.state_of(one, widen=1e-6).boxes.items()}
        region = p.regions[int(p.root_region[k])]
        ball = region.ball if p.ball else None
        search = p.leaf_solver.clause_search(p.net, region.lower, region.upper,
                                             p.C[k][rows].cpu().double().numpy(),
                                             p.d[k][rows].cpu().double().numpy(), boxes, ball)
        if search is not None:
            self.searches[k] = search
            p.stats["clause_milp_started"] += 1
        return search
