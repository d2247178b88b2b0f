"""ReLU-split BaB as a method step: config -> problem, brancher, leaf solver, engine, progress.

:func:`run_relu_split` runs the engine on one region, or on several regions as one batch
(``bab.bab_method.decide_regions`` groups them: ``bab.batch_regions``). Options come from the
``bab`` section (``relu_branching``, ``fsb_candidates``, ``relu_batch_size``,
``memory_budget_mb``, ``order``, ``dtype``) and the ``beta`` section (optimiser and root
settings); missing options take the defaults of :class:`~bab.relu_split.ReluSplitOptions`.
The domain batch is the configured size capped by the memory budget, and the open-domain cap
is what the budget holds. Progress goes to the ``bab.relu_split`` logger at INFO level (shown
by ``bab verify -v``) at most once a second.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bab.engine import BabOutcome, BabStats, Engine, EngineOptions

log = logging.getLogger("bab.relu_split")
ROOT_SHARE = 0.25  # of the remaining time, at most, for the root's slope optimisation
WORK_FACTOR = 24  # bytes of working memory per child, per output element of every node and row


def _opt(section: Any, name: str, default: Any) -> Any:
    return getattr(section, name, default) if section is not None else default


def problem_options(cfg: Any, remaining: float | None = None) -> Any:
    """:class:`~bab.relu_split.ReluSplitOptions` from a :class:`~bab.config.Config` (the root
    optimisation gets at most a quarter of the ``remaining`` seconds)."""
    from bab.relu_split import ReluSplitOptions

    beta, base = getattr(cfg, "beta", None), ReluSplitOptions()
    return ReluSplitOptions(
        margin=cfg.bounding.safety_margin,
        root_time_limit=None if remaining is None else max(0.5, ROOT_SHARE * remaining),
        root_iterations=_opt(beta, "root_iterations", base.root_iterations),
        root_optimize_intermediate=_opt(beta, "root_optimize_intermediate", base.root_optimize_intermediate),
        root_intermediate_share=_opt(beta, "root_intermediate_share", base.root_intermediate_share),
        refine=_opt(beta, "intermediate", base.refine),
        refine_depth=_opt(beta, "intermediate_depth", base.refine_depth),
        refine_share=_opt(beta, "intermediate_share", base.refine_share),
        attack=_opt(beta, "attack", base.attack),
        attack_steps=_opt(beta, "attack_steps", base.attack_steps),
        leaf_time_limit=_opt(beta, "leaf_time_limit", base.leaf_time_limit),
        milp_unstable=_opt(beta, "milp_unstable", base.milp_unstable),
        milp_time_limit=_opt(beta, "milp_time_limit", base.milp_time_limit),
        milp_share=_opt(beta, "milp_share", base.milp_share),
        lp_share=_opt(beta, "lp_share", base.lp_share))


def make_bounder(cfg: Any) -> Any:
    """The beta-CROWN bounder configured by the ``beta`` section."""
    from bab.bounding.polyhedra.beta import BetaCrown

    beta = getattr(cfg, "beta", None)
    return BetaCrown(iterations=_opt(beta, "iterations", 20), lr_alpha=_opt(beta, "lr_alpha", 0.1),
                     lr_beta=_opt(beta, "lr_beta", 0.05), lr_decay=_opt(beta, "lr_decay", 0.98))


def make_leaf_solver(cfg: Any) -> Any:
    """``encoders.decide.LeafSolver`` when the encoders package provides it, else ``None``."""
    try:
        from encoders.decide import LeafSolver
    except ImportError:
        return None
    try:
        return LeafSolver(getattr(cfg, "solver", None))
    except Exception as exc:  # noqa: BLE001 - a broken solver set-up must not stop BaB
        log.warning("leaf solver unavailable: %s", exc)
        return None


def sizes(problem: Any, roots: Any, cfg: Any) -> tuple[int, int]:
    """``(batch_size, max_domains)`` from the memory budget and the configured batch size."""
    budget = int(_opt(cfg.bab, "memory_budget_mb", 4096)) * 2 ** 20
    stored = max(1, problem.bytes_per_domain(roots)) if len(roots) else 1
    rows = int(problem.C.shape[1])
    work = WORK_FACTOR * rows * sum(math.prod(n.out_shape) for n in problem.net.nodes) + 4 * stored
    want = int(_opt(cfg.bab, "relu_batch_size", 256)) or 256
    batch = max(1, min(want, budget // 2 // (2 * work)))
    max_domains = max(batch, budget // 2 // (2 * stored))  # the store is copied on every push
    return batch, min(max_domains, cfg.bab.max_domains)


def progress_logger(problem: Any, start: float, every: float = 1.0,
                    also: Callable[[BabStats, int], None] | None = None) -> Callable[[BabStats, int], None]:
    """An Engine progress callback logging at INFO at most every ``every`` seconds."""
    last = [0.0]

    def report(stats: BabStats, left: int) -> None:
        if also is not None:
            also(stats, left)
        now = time.monotonic()
        if now - last[0] < every or not log.isEnabledFor(logging.INFO):
            return
        last[0] = now
        elapsed = now - start
        log.info("relu-split bab: %d domains left, global lower bound %.5g, %d visited (%.0f/s), "
                 "depth %d, elapsed %.1f s", left, problem.global_lb, stats.domains_visited,
                 stats.domains_visited / max(elapsed, 1e-9), stats.max_depth, elapsed)

    return report


def run_relu_split(pipeline: Any, region: Any, index: Any) -> tuple[BabOutcome, BabStats]:
    """ReLU-split BaB with beta-CROWN on one region, or on a list of regions (and their
    indices) searched as one batch (a clause without rows holds everywhere: its region's box
    centre is replayed, else the answer is ``unknown``)."""
    regions = list(region) if isinstance(region, (list, tuple)) else [region]
    indices = list(index) if isinstance(index, (list, tuple)) else [index]
    for reg, idx in zip(regions, indices):
        if any(c.n_rows == 0 for c in reg.clauses):
            ball = getattr(reg, "ball", None)  # the ball's centre lies in its input set
            mid = ball.center if ball is not None else (np.asarray(reg.lower) + np.asarray(reg.upper)) / 2
            cex = pipeline.replay(mid, idx)
            if cex is not None:
                return BabOutcome("sat", cex), BabStats(strategy="relu-split")
            reason = "a clause without rows holds everywhere"
            return BabOutcome("unknown", reason=reason), BabStats(strategy="relu-split")
    from bab.root_refine import PhaseClock, PhaseOver, refine_plan

    refine = refine_plan(pipeline, regions)
    if refine is None:
        return _search(pipeline, regions, indices, pipeline.deadline.check)
    phase, held = PhaseClock(pipeline.deadline.check, time.monotonic() + refine.after), {}
    phase.may_stop = lambda: refine.worth_it(pipeline, regions[0], held)
    try:
        return _search(pipeline, regions, indices, phase.check, held=held)
    except PhaseOver:
        pass
    first = pipeline.stats.extra["bab"]
    boxes = getattr(held.get("problem"), "root_intermediate", None)
    floor, report = refine.run(pipeline, regions[0], boxes) if boxes else (None, None)
    facts = {"milp_refine": None if report is None else vars(report),
             "first_search": {"seconds": round(refine.after, 3), "domains_visited": first.domains_visited}}
    return _search(pipeline, regions, indices, pipeline.deadline.check, floor, facts=facts)


def _search(pipeline: Any, regions: list, indices: list, check: Callable[[], None],
            floor: dict | None = None, held: dict | None = None,
            facts: dict | None = None) -> tuple[BabOutcome, BabStats]:
    """One ReLU-split search (``check`` raises to stop it); ``floor``: sound root intervals per
    node (MILP-refined) that the root pass intersects its boxes with; ``held["problem"]``
    receives the problem (its root boxes feed the restart decision and the refinement);
    ``facts`` join the statistics however the search ends (a timeout included)."""
    from bab.relu_split import ReluSplitProblem
    from heuristics.relu import get_relu_brancher

    cfg = pipeline.cfg
    net = pipeline.network
    dtype = getattr(torch, cfg.bab.dtype)
    if net.dtype != dtype:
        net = copy.deepcopy(net).to(dtype)
    leaf = make_leaf_solver(cfg)
    bounder = make_bounder(cfg)
    bounder.deadline = check
    problem = ReluSplitProblem(net, regions, indices, bounder, pipeline.replay,
                               problem_options(cfg, pipeline.deadline.remaining()), check, leaf)
    problem.remaining = pipeline.deadline.remaining
    problem.floor = floor
    if held is not None:
        held["problem"] = problem
    ckpt = getattr(pipeline, "checkpoint", None)  # resumable runs: restores the roots, store and stats
    if ckpt is not None:
        ckpt.attach_problem(problem)
    name = _opt(cfg.bab, "relu_branching", "fsb")
    brancher = get_relu_brancher(name, k=_opt(cfg.bab, "fsb_candidates", 3)) if name == "fsb" else get_relu_brancher(name)
    t0 = time.monotonic()
    engine = Engine(problem, brancher, EngineOptions(), check)
    try:
        roots = problem.roots()
        batch, max_domains = sizes(problem, roots, cfg)
        options = EngineOptions(batch_size=batch, order=cfg.bab.order, max_domains=max_domains)
        engine = Engine(problem, brancher, options, check,
                        progress=progress_logger(problem, t0, also=getattr(pipeline, "progress", None)),
                        leaf_solver=problem.decide_leaves if leaf is not None else None)
        engine.stats.strategy = "relu-split"
        engine.stats.extra.update(branching=name, batch_size=batch, max_domains=max_domains,
                                  root_time=time.monotonic() - t0)
        share = float(_opt(getattr(cfg, "beta", None), "clause_milp_share", 0.0))
        if leaf is not None and share > 0 and not problem.shaped:
            from bab.clause_milp import ClauseMilpSide

            engine.side = ClauseMilpSide(problem, share)
        if ckpt is not None:
            ckpt.attach_engine("relu-split", engine)
        outcome = engine.run()
        if outcome.verdict == "unknown" and outcome.reason:
            engine.stats.extra["stop_reason"] = outcome.reason
        return outcome, engine.stats
    finally:
        engine.stats.extra.update(problem.stats, global_lower_bound=problem.global_lb, **(facts or {}))
        pipeline.stats.extra["bab"] = engine.stats
