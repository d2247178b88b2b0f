"""The BaB loop on scripted problems: unsat, sat, leaves without a solver, deadline, memory cap."""

from __future__ import annotations

import pytest
import torch

from bab.engine import Engine, EngineOptions
from bab.store import TensorBatch


class Scripted:
    """Domains are integers (their depth); a domain is proven at ``proven_depth``."""

    def __init__(self, proven_depth: int = 3, sat_depth: int | None = None, leaf_depth: int | None = None):
        self.proven_depth, self.sat_depth, self.leaf_depth = proven_depth, sat_depth, leaf_depth

    def roots(self) -> TensorBatch:
        return TensorBatch({"depth": torch.zeros(1, dtype=torch.long)})

    def bound(self, batch: TensorBatch) -> TensorBatch:
        batch["priority"] = -batch["depth"].float()
        return batch.select(batch["depth"] < self.proven_depth)

    def attack(self, batch: TensorBatch):
        if self.sat_depth is not None and len(batch) and int(batch["depth"].max()) >= self.sat_depth:
            return "cex"
        return None

    def leaves(self, batch: TensorBatch):
        if self.leaf_depth is None:
            return batch, batch.select(torch.zeros(len(batch), dtype=torch.bool))
        leaf = batch["depth"] >= self.leaf_depth
        return batch.select(~leaf), batch.select(leaf)

    def split(self, batch: TensorBatch, brancher) -> TensorBatch:
        return TensorBatch({"depth": (batch["depth"] + 1).repeat(2)})


def _run(problem, **kw):
    return Engine(problem, None, EngineOptions(**kw), lambda: None)


def test_unsat_counts_domains() -> None:
    eng = _run(Scripted(proven_depth=3), batch_size=4)
    assert eng.run().verdict == "unsat"
    # 1 root + 2 + 4 + 8 children; depth 3 children are proven on arrival
    assert eng.stats.domains_visited == 15 and eng.stats.max_depth == 3


def test_sat_stops_search() -> None:
    out = _run(Scripted(proven_depth=10, sat_depth=2)).run()
    assert out.verdict == "sat" and out.counterexample == "cex"


def test_leaves_without_solver_are_unknown() -> None:
    eng = _run(Scripted(proven_depth=10, leaf_depth=2))
    out = eng.run()
    assert out.verdict == "unknown" and eng.stats.unknown_leaf > 0 and "leaf" in out.reason


def test_leaf_solver_closes_leaves() -> None:
    eng = Engine(Scripted(proven_depth=10, leaf_depth=2), None, EngineOptions(), lambda: None,
                 leaf_solver=lambda leaves: ("unsat", None))
    assert eng.run().verdict == "unsat"


def test_memory_cap_and_deadline() -> None:
    assert _run(Scripted(proven_depth=50), batch_size=1, max_domains=3).run().verdict == "unknown"

    class Stop(Exception):
        pass

    def check() -> None:
        raise Stop

    with pytest.raises(Stop):
        Engine(Scripted(proven_depth=50), None, EngineOptions(), check).run()


def test_leaf_solver_can_send_domains_back_to_splitting() -> None:
    """Domains the hook returns go on being split; the others count as closed."""
    calls = []

    def hook(leaves):
        calls.append(len(leaves))
        keep = leaves.select(leaves["depth"] < 2)  # undecided: split on
        return "unsat", None, keep

    problem = Scripted(proven_depth=3, leaf_depth=1)
    eng = Engine(problem, None, EngineOptions(batch_size=4), lambda: None, leaf_solver=hook)
    assert eng.run().verdict == "unsat"
    assert eng.stats.leaves_closed > 0 and len(calls) > 1
