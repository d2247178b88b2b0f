"""The branch-and-bound loop, shared by input-split and ReLU-split search.

A :class:`SplitProblem` knows how to make root domains, bound a batch (dropping the proven
ones), look for counterexamples in a batch, and split a batch with a Brancher. The engine
owns the loop, the domain store, the deadline and the statistics; it never forks per kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from bab.result import Counterexample
from bab.store import DomainStore, TensorBatch


@dataclass
class BabStats:
    """What one BaB run did."""

    strategy: str = ""
    strategy_reason: str = ""
    domains_visited: int = 0
    iterations: int = 0
    max_queue: int = 0
    max_depth: int = 0
    unknown_leaf: int = 0
    leaves_closed: int = 0  # domains the leaf solver proved to hold no counterexample
    time_bounding: float = 0.0
    time_branching: float = 0.0
    time_attack: float = 0.0
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def domains_per_s(self) -> float:
        """Domains bounded per second of wall time."""
        return self.domains_visited / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class BabOutcome:
    """``verdict`` is ``"unsat"``, ``"sat"`` (with a replayed counterexample) or ``"unknown"``."""

    verdict: str
    counterexample: Counterexample | None = None
    reason: str = ""


class SplitProblem(Protocol):
    """The domain-kind-specific half of BaB (input boxes, or ReLU phases)."""

    def roots(self) -> TensorBatch:
        """Initial domains (not yet bounded)."""
        ...

    def bound(self, batch: TensorBatch) -> TensorBatch:
        """Bound ``batch``; return the still-open domains with a ``priority`` field."""
        ...

    def attack(self, batch: TensorBatch) -> Counterexample | None:
        """A replayed counterexample inside one of the domains, or ``None``."""
        ...

    def split(self, batch: TensorBatch, brancher: Any) -> TensorBatch:
        """Children of every domain of ``batch`` (two per domain, unbounded)."""
        ...

    def leaves(self, batch: TensorBatch) -> tuple[TensorBatch, TensorBatch]:
        """Split ``batch`` into (branchable domains, leaves that cannot be split further)."""
        ...


class TimeShare:
    """The time a side search may take: ``share`` of the wall time since it started (or since
    :meth:`restart`), less what its slices have spent (:meth:`charged`)."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.t0 = time.monotonic()
        self.spent = 0.0

    def restart(self) -> None:
        """Count the share from now."""
        self.t0 = time.monotonic()

    def allowance(self) -> float:
        """Seconds a slice may take now (negative when the side search is ahead of its share)."""
        return self.share * (time.monotonic() - self.t0) - self.spent

    @contextmanager
    def charged(self) -> Iterator[None]:
        """Add the wall time of the enclosed slice to what was spent."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.spent += time.monotonic() - t0


@dataclass
class EngineOptions:
    """Loop settings."""

    batch_size: int = 1024
    order: str = "best-first"
    max_domains: int = 5_000_000  # memory cap: beyond it the answer is unknown


class Engine:
    """Runs a SplitProblem to a verdict."""

    def __init__(self, problem: SplitProblem, brancher: Any, options: EngineOptions,
                 check_time: Callable[[], None], progress: Callable[[BabStats, int], None] | None = None,
                 leaf_solver: Callable[[TensorBatch], tuple[Any, ...]] | None = None) -> None:
        self.problem = problem
        self.brancher = brancher
        self.opts = options
        self.check_time = check_time
        self.progress = progress
        self.leaf_solver = leaf_solver
        self.stats = BabStats()
        self._store: DomainStore | None = None
        self.on_step: Callable[[], None] | None = None  # called between steps (checkpoints)
        # a side search run before each step: it may drop proven domains from the store, or
        # end the search with an outcome (``sat`` with a replayed counterexample)
        self.side: Callable[[DomainStore], BabOutcome | None] | None = None

    def _timed(self, attr: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            setattr(self.stats, attr, getattr(self.stats, attr) + time.monotonic() - t0)

    def run(self) -> BabOutcome:
        """Loop until the store empties (unsat), a counterexample replays (sat), or a limit."""
        outcome = self.run_for(None)
        assert outcome is not None
        return outcome

    def run_for(self, visits: int | None) -> BabOutcome | None:
        """Search on until a verdict, or until ``visits`` more domains were bounded (then
        ``None``: call again to resume where it stopped). ``None`` visits: no budget."""
        t0 = time.monotonic()
        target = None if visits is None else self.stats.domains_visited + visits
        try:
            outcome = self._start() if self._store is None else None
            while outcome is None and (target is None or self.stats.domains_visited < target):
                left = None if target is None else target - self.stats.domains_visited
                outcome = self._step(left)
                if outcome is None and self.on_step is not None:
                    self.on_step()
            return outcome
        finally:
            self.stats.elapsed += time.monotonic() - t0

    def state_dict(self) -> dict[str, Any]:
        """The search state between steps: every attribute of the domain store (its batch as
        a dict of tensors) and the statistics; ``store`` is ``None`` before the first step."""
        store = None
        if self._store is not None:
            store = {k: (dict(v.fields) if isinstance(v, TensorBatch) else v) for k, v in vars(self._store).items()}
        return {"store": store, "stats": {f.name: getattr(self.stats, f.name) for f in fields(self.stats)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the roots are not bounded again)."""
        if state.get("store") is not None:
            store = DomainStore(state["store"].get("order", self.opts.order))
            for name, value in state["store"].items():
                setattr(store, name, TensorBatch(dict(value)) if name == "batch" else value)
            self._store = store
        for name, value in state.get("stats", {}).items():
            if hasattr(self.stats, name):
                setattr(self.stats, name, value)

    def _start(self) -> BabOutcome | None:
        """Attack and bound the roots into a fresh store."""
        self._store = DomainStore(self.opts.order)
        roots = self.problem.roots()
        found = self._timed("time_attack", lambda: self.problem.attack(roots))
        if found is not None:
            return BabOutcome("sat", found)
        self._store.push(self._timed("time_bounding", lambda: self.problem.bound(roots)))
        self.stats.domains_visited += len(roots)
        return None

    def _step(self, left: int | None = None) -> BabOutcome | None:
        """One iteration: pop a batch, attack it, close its leaves, split and bound the rest
        (at most about ``left`` children when a visit budget is running out)."""
        store = self._store
        if not len(store):
            return BabOutcome("unsat")
        self.check_time()
        if self.side is not None:
            outcome = self.side(store)
            if outcome is not None:
                return outcome
            if not len(store):
                return BabOutcome("unsat")
        if len(store) > self.opts.max_domains:
            return BabOutcome("unknown", reason=f"more than {self.opts.max_domains} open domains")
        size = self.opts.batch_size if left is None else max(1, min(self.opts.batch_size, (left + 1) // 2))
        batch = store.pop(size)
        found = self._timed("time_attack", lambda: self.problem.attack(batch))
        if found is not None:
            return BabOutcome("sat", found)
        batch, leaves = self.problem.leaves(batch)
        outcome, back = self._close_leaves(leaves)
        if outcome is not None:
            return outcome
        if back is not None and len(back):
            batch = TensorBatch.cat([batch, back]) if len(batch) else back
        if len(batch):
            children = self._timed("time_branching", lambda: self.problem.split(batch, self.brancher))
            store.push(self._timed("time_bounding", lambda: self.problem.bound(children)))
            self._account(children, store)
        return None

    def _close_leaves(self, leaves: TensorBatch) -> tuple[BabOutcome | None, TensorBatch | None]:
        """Decide unsplittable domains exactly, or record them as unknown leaves.

        The hook returns ``(verdict, counterexample)`` or ``(verdict, counterexample, back)``
        where ``back`` holds domains it did not settle but that can still be split.
        """
        if not len(leaves):
            return None, None
        if self.leaf_solver is None:
            self.stats.unknown_leaf += len(leaves)
            return BabOutcome("unknown", reason=f"{len(leaves)} leaf domain(s) without a leaf solver"), None
        verdict, cex, *rest = self.leaf_solver(leaves)
        back = rest[0] if rest else None
        if verdict == "sat":
            return BabOutcome("sat", cex), None
        if verdict != "unsat":
            self.stats.unknown_leaf += len(leaves) - (len(back) if back is not None else 0)
            return BabOutcome("unknown", reason="a leaf domain could not be decided"), None
        self.stats.leaves_closed += len(leaves) - (len(back) if back is not None else 0)
        return None, back

    def _account(self, children: TensorBatch, store: DomainStore) -> None:
        self.stats.iterations += 1
        self.stats.domains_visited += len(children)
        self.stats.max_queue = max(self.stats.max_queue, len(store))
        if len(children) and "depth" in children.fields:
            self.stats.max_depth = max(self.stats.max_depth, int(children["depth"].max()))
        if self.progress is not None:
            self.progress(self.stats, len(store))
