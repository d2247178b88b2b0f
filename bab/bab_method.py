"""Complete verification by branch and bound, with the strategy chosen from the instance.

``default``: IBP first (cheap proofs), then BaB. ``bab``: BaB directly. ``input-split``
forces input splitting. ``ai2`` (Gehr et al. 2018) is BaB driven by the zonotope bounder:
the same engine, loop, deadline, statistics and replay rules with ``bab.bounder =
"zonotope"``. Any Bounder can drive BaB through ``bab.bounder``; since ReLU-split BaB is
built on beta-CROWN's warm starts, a bounder set there makes BaB split the input box. The
strategy is chosen from the network and the property only: input
splitting when the network has at most ``bab.input_split_threshold`` inputs, otherwise ReLU
splitting. The regions of a property (a disjunction of input boxes) are searched as one batch
(``bab.batch_regions``: every domain carries its region, or its root's region for ReLU
splits); the instance is ``unsat`` only when every region is.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from bab.engine import BabOutcome, BabStats, Engine, EngineOptions, TimeShare
from bab.methods import Outcome
from bab.region_batch import group_regions
from bab.result import Status


COUNTERS = {"bound_calls", "regions", "adam_steps", "infeasible", "hair_rechecks", "attack_candidates",
            "ball_dropped"}  # statistics of a region's search that sum over regions


def choose_strategy(n_inputs: int, threshold: int, forced: str | None = None) -> tuple[str, str]:
    """``(strategy, reason)`` from the input dimension (or a forced choice)."""
    if forced:
        return forced, f"forced by --method {forced}"
    if n_inputs <= threshold:
        return "input-split", f"{n_inputs} inputs <= input_split_threshold {threshold}"
    return "relu-split", f"{n_inputs} inputs > input_split_threshold {threshold}"


class BabMethod:
    """The complete method (``default``, ``bab``, ``input-split`` and ``ai2``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def decide(self, pipeline: Any) -> Outcome:
        """Cheap IBP proof first (default only), then BaB per region."""
        if self.name == "default":
            from bab.bound_method import BoundMethod

            quick = BoundMethod("ibp").decide(pipeline)
            if quick.status is Status.UNSAT:
                return quick
        if self.name == "ai2":
            cfg = pipeline.cfg
            pipeline.cfg = dataclasses.replace(cfg, bab=dataclasses.replace(cfg.bab, bounder="zonotope"))
        forced = "input-split" if self.name == "input-split" else None
        strategy, reason = choose_strategy(pipeline.network.n_inputs,
                                           pipeline.cfg.bab.input_split_threshold, forced)
        if pipeline.cfg.bab.bounder:
            strategy, reason = "input-split", f"bab.bounder = {pipeline.cfg.bab.bounder} drives input-split BaB"
        pipeline.stats.extra["strategy"] = strategy
        pipeline.stats.extra["strategy_reason"] = reason
        if strategy != "input-split":
            from bab.relu_bab import run_relu_split

            return decide_regions(pipeline, "relu-split", run_relu_split)
        pipeline.sampler = UniformSampler(pipeline)
        cex = pipeline.sampler.first()
        if cex is not None:
            pipeline.stats.proved_by = "input-split bab (uniform samples)"
            return Outcome(Status.SAT, cex)
        return decide_regions(pipeline, "input-split", run_input_split)


SAMPLE_FIRST = 0.25  # seconds of uniform samples before the first split; the rest between steps
SAMPLE_SLICE = 0.5  # seconds at most per slice between steps


class UniformSampler:
    """Uniform samples of the box regions for input-split BaB: ``falsify.sample_seconds`` in
    all (at most ``falsify.sample_share`` of the time left), ``SAMPLE_FIRST`` of them before the
    search and the rest between its steps (the engine's side hook) while they have taken at
    most ``falsify.sample_side_share`` of the search's time. Hits are replayed."""

    def __init__(self, pipeline: Any) -> None:
        from bab.falsify import Falsifier

        cfg = pipeline.cfg.falsify
        self.pipeline = pipeline
        self.index = [i for i, r in enumerate(pipeline.spec.regions) if getattr(r, "ball", None) is None]
        self.regions = tuple(pipeline.spec.regions[i] for i in self.index)
        self.left = min(cfg.sample_seconds, cfg.sample_share * pipeline.deadline.remaining())
        if not cfg.enabled or not self.regions or not pipeline._can_replay():
            self.left = 0.0
        self.between = TimeShare(cfg.sample_side_share)
        self.falsifier = Falsifier(pipeline.network, cfg, pipeline.cfg.verify.seed + 1, pipeline.deadline.check)

    def sample(self, seconds: float) -> Any:
        """Sample for up to ``seconds`` (within the budget left): the replayed hit, or ``None``."""
        seconds = min(seconds, self.left)
        if seconds <= 0:
            return None
        t0 = time.monotonic()
        try:
            for cand in self.falsifier.sample_more(self.regions, seconds):
                cex = self.pipeline.replay(cand.x, self.index[cand.region])
                if cex is not None:
                    return cex
            return None
        finally:
            self.left -= time.monotonic() - t0

    def first(self) -> Any:
        """The samples before the search."""
        self.between.restart()
        return self.sample(SAMPLE_FIRST)

    def __call__(self, store: Any) -> BabOutcome | None:
        """Between two steps: a slice while the share allows; ``sat`` on a replayed hit."""
        allowed = self.between.allowance()
        if self.left <= 0 or allowed < 0.02:
            return None
        with self.between.charged():
            cex = self.sample(min(allowed, SAMPLE_SLICE))
        if cex is not None:
            return BabOutcome("sat", cex, reason="uniform samples")
        return None


def decide_regions(pipeline: Any, strategy: str,
                   run: Callable[[Any, Any, Any], tuple[BabOutcome, BabStats]]) -> Outcome:
    """BaB per group of regions: with ``bab.batch_regions``, one search over all
    regions of one input-set kind (``run(pipeline, regions, indices)``), else one per region
    (``run(pipeline, region, index)``). ``sat`` on the first replayed counterexample, ``unsat``
    only when every region is, statistics summed."""
    totals = BabStats(strategy=strategy)
    ckpt = getattr(pipeline, "checkpoint", None)  # bab.checkpoint.Checkpointer (resumable runs)
    regions = list(pipeline.spec.regions)
    groups = group_regions(regions, pipeline.cfg.bab.batch_regions)
    totals.extra["region_groups"] = len(groups)
    for g, members in enumerate(groups):
        if ckpt is not None and not ckpt.enter_region(g, totals):
            continue  # a resumed run finished this group before
        if len(members) == 1:
            outcome, stats = run(pipeline, regions[members[0]], members[0])
        else:
            outcome, stats = run(pipeline, [regions[i] for i in members], members)
        _merge(totals, stats)
        pipeline.stats.extra["bab"] = totals
        if outcome.verdict == "sat":
            pipeline.stats.proved_by = f"{strategy} bab ({outcome.reason or 'counterexample'})"
            return Outcome(Status.SAT, outcome.counterexample)
        if outcome.verdict != "unsat":
            return Outcome(Status.UNKNOWN, reason=outcome.reason)
    pipeline.stats.proved_by = f"{strategy} bab"
    return Outcome(Status.UNSAT)


def run_input_split(pipeline: Any, region: Any, index: Any) -> tuple[BabOutcome, BabStats]:
    """Input-split BaB on one region (or a list of regions and their indices, searched as one
    batch): one brancher, or the ``auto`` portfolio of several."""
    from bab.portfolio import interleave

    from bab.bounding import BounderRefusal

    cfg = pipeline.cfg.bab
    problem = _input_problem(pipeline, region, index)
    try:
        problem.check_sets()
    except BounderRefusal as exc:
        return BabOutcome("unknown", reason=str(exc)), BabStats(strategy="input-split")
    names = cfg.input_portfolio.split("+") if cfg.input_branching == "auto" else [cfg.input_branching]
    engines = {name: _input_engine(pipeline, problem, name) for name in names}
    ckpt = getattr(pipeline, "checkpoint", None)
    if ckpt is not None:
        ckpt.attach_problem(problem)
        for name, engine in engines.items():
            ckpt.attach_engine(name, engine)
    totals = BabStats(strategy="input-split")
    winner = ""
    try:
        if len(engines) == 1:
            winner, engine = next(iter(engines.items()))
            outcome = engine.run()
        else:
            outcome, winner = interleave(engines, cfg.portfolio_slice)
        return outcome, totals
    finally:
        for engine in engines.values():
            _merge(totals, engine.stats)
        totals.extra.update(problem.stats)
        totals.extra["input_branching"] = winner or "+".join(names)
        if len(engines) > 1:
            totals.extra["portfolio_domains"] = {n: e.stats.domains_visited for n, e in engines.items()}
        pipeline.stats.extra["bab"] = totals


def _input_problem(pipeline: Any, region: Any, index: Any) -> Any:
    """The InputSplitProblem of one region (or a batch of them), with its bounder cascade and
    leaf solver."""
    from bab.bounding import get_bounder
    from bab.input_split import InputSplitProblem
    from bab.relu_bab import make_leaf_solver

    cfg = pipeline.cfg.bab
    net = pipeline.network
    dtype = getattr(torch, cfg.dtype)
    if net.dtype != dtype:
        net = copy.deepcopy(net).to(dtype)
    names = [cfg.bounder] if cfg.bounder else cfg.input_bounder.split("+")
    cascade = [get_bounder(name) for name in names]
    problem = InputSplitProblem(net, region, index, cascade, cascade[-1],
                                pipeline.replay, margin=pipeline.cfg.bounding.safety_margin,
                                check_time=pipeline.deadline.check, chunk=cfg.bound_chunk)
    problem.leaf_solver = make_leaf_solver(pipeline.cfg)
    problem.remaining = pipeline.deadline.remaining
    problem.leaf_time_limit = pipeline.cfg.beta.leaf_time_limit
    late = cfg.input_late_bounder if not cfg.bounder else ""
    problem.late_bounders = [get_bounder(late)] if late else []
    problem.late_after = cfg.input_late_after
    problem.exact_unstable = cfg.input_exact_unstable
    problem.exact_share = cfg.input_exact_share
    left = pipeline.deadline.remaining()  # without a deadline, the tries start with the late phase
    problem.exact_after = cfg.input_exact_after * left if math.isfinite(left) else 0.0
    problem.exact_time_limit = cfg.input_exact_time_limit
    return problem


def _input_engine(pipeline: Any, problem: Any, brancher: str) -> Engine:
    """An input-split Engine over ``problem`` with the named brancher."""
    from heuristics.input_split import get_input_brancher

    cfg = pipeline.cfg.bab
    options = EngineOptions(batch_size=cfg.batch_size, order=cfg.order, max_domains=cfg.max_domains)
    engine = Engine(problem, get_input_brancher(brancher), options, pipeline.deadline.check,
                    progress=getattr(pipeline, "progress", None),
                    leaf_solver=problem.decide_leaves if problem.leaf_solver is not None else None)
    engine.stats.strategy = "input-split"
    engine.side = getattr(pipeline, "sampler", None)
    return engine


def _merge(total: BabStats, part: BabStats) -> None:
    """Add one region's statistics to the totals."""
    for name in ("domains_visited", "iterations", "unknown_leaf", "leaves_closed"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for name in ("time_bounding", "time_branching", "time_attack", "elapsed"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.max_queue = max(total.max_queue, part.max_queue)
    total.max_depth = max(total.max_depth, part.max_depth)
    for key, value in part.extra.items():  # counters add up over regions; the rest: the latest
        old = total.extra.get(key)
        counter = key in COUNTERS or key.endswith("_leaves")
        summable = isinstance(value, int) and isinstance(old, int) and not isinstance(value, bool)
        total.extra[key] = old + value if counter and summable else value
