"""Standalone verification methods built on the solvers: ``milp``, ``lp``, ``lp-full``, ``smt``.

Each region is bounded once (CROWN, or IBP when CROWN is unavailable; ``solver.intermediate``)
for big-M constants and relaxations; clauses those bounds already prove are skipped. ``milp``
and ``smt`` are complete: a solver point becomes ``sat`` only after ``pipeline.replay``
confirms it with onnxruntime (a failed replay asks once for a larger violation, then tries Z3 on
small models, else the clause stays unknown). ``lp``/``lp-full`` are incomplete: they prove
clauses infeasible, and find counterexamples only when a region's relaxation is exact.

Networks with relaxed nodes (Sigmoid, Tanh, Exp, ..., Softmax; Mul/MatMul by McCormick; see
:mod:`encoders.nonlinear`) are still encoded: an infeasible relaxation proves ``unsat``, but
``milp`` is no longer complete there, and a clause whose solver points all fail the replay
ends ``unknown`` with a reason naming the relaxed nodes. ``smt`` refuses transcendental ops
(z3 has no exact encoding of them) and products beyond :data:`SMT_MAX_PRODUCTS`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from bab.methods import Outcome
from bab.result import Counterexample, Status
from encoders.decide import ClauseResult, dispatcher_for, solve_clause, z3_recheck
from encoders.encoding import Encoding, UnsupportedNetwork, encode, float64_network
from onnx_models import layers as L
from vnnlib.spec import Region

log = logging.getLogger("encoders")
RESERVE_S = 0.3  # kept back from the deadline for replay and writing the result
TIGHTEN_SHARE = 0.3  # at most this share of the time left goes to LP bound tightening
UNSUPPORTED: tuple[type, ...] = ()  # every layer is encoded (exactly or as a relaxation)
SMT_MAX_PRODUCTS = 64  # scalar products z3 takes exactly (nonlinear real arithmetic)


def smt_refusal(net: Any) -> str | None:
    """Why z3 cannot decide ``net`` exactly (transcendental ops), or ``None``."""
    from encoders.nonlinear import unary_table

    bad = sorted({n.layer.kind for n in net.nodes
                  if isinstance(n.layer, L.Softmax)
                  or (type(n.layer) in unary_table() and not isinstance(n.layer, (L.Floor, L.Sign)))})
    if bad:
        return (f"{', '.join(bad)}: transcendental, no exact z3 encoding (the milp/lp methods "
                "take their linear relaxation)")
    return None


def relaxed_note(enc: Encoding) -> str:
    """`` (relaxed: ...)`` naming an encoding's relaxed nodes, or empty."""
    if enc.exact:
        return ""
    more = f" and {len(enc.relaxed) - 3} more" if len(enc.relaxed) > 3 else ""
    return f" (the encoding relaxes {', '.join(enc.relaxed[:3])}{more}: not complete)"


def region_bounds(pipeline: Any, net: Any, region: Region, kind: str) -> tuple[dict, list[bool], str]:
    """Intermediate bounds (numpy, flat) and the clauses the final bounds already prove."""
    from bab.bound_method import clause_rows, clauses_infeasible
    from bab.bounding import Domains, get_bounder

    from bab.bounding.balls import region_ball

    rows, d, counts = clause_rows(region)
    C = rows if rows.shape[0] else np.zeros((1, net.n_outputs))
    dom = Domains(torch.as_tensor(region.lower)[None], torch.as_tensor(region.upper)[None],
                  torch.as_tensor(C, dtype=torch.float64)[None], **region_ball(region, dtype=torch.float64))
    kinds = ["crown", "ibp"] if kind == "auto" else [kind]
    for i, name in enumerate(kinds):
        try:
            with torch.no_grad():
                b = get_bounder(name).bound(net, dom)
            break
        except Exception as exc:
            if i == len(kinds) - 1:
                raise
            pipeline.stats.notes.append(f"{name} bounds failed ({type(exc).__name__}); using ibp")
    inter = {k: (lo[0].double().numpy().reshape(-1), hi[0].double().numpy().reshape(-1))
             for k, (lo, hi) in b.intermediate.items()}
    if not rows.shape[0]:
        return inter, [False] * len(counts), name
    lb = b.lower[0].double().numpy()
    return inter, clauses_infeasible(lb, d, counts, pipeline.cfg.bounding.safety_margin, 1e-12), name


def _refuse(pipeline: Any, reason: str) -> Outcome:
    """``unknown`` because the method cannot handle the instance (reports show ``n/a``)."""
    pipeline.stats.extra["refused"] = reason
    return Outcome(Status.UNKNOWN, reason=reason)


class SolverMethod:
    """Shared driver: bound each region, encode it, decide its open clauses."""

    mode = "milp"

    def __init__(self, name: str) -> None:
        self.name = name

    def decide(self, pipeline: Any) -> Outcome:
        """``sat`` (replayed), ``unsat`` (every clause infeasible), else unknown/timeout."""
        cfg = pipeline.cfg.solver
        net = float64_network(pipeline.network)
        if self.mode == "smt" and (why := smt_refusal(net)):
            return _refuse(pipeline, f"{self.name}: {why}")
        if self.mode == "smt" and any(r.ball is not None and r.ball.p == "2" for r in pipeline.spec.regions):
            return _refuse(pipeline, f"{self.name}: z3 (linear real arithmetic) cannot handle an ℓ2 ball")
        self.disp = dispatcher_for(cfg)
        open_reasons: list[str] = []
        for r, region in enumerate(pipeline.spec.regions):
            pipeline.deadline.check()
            inter, proven, bounder = region_bounds(pipeline, net, region, cfg.intermediate)
            if all(proven):
                continue
            try:
                inter = self.prepare(pipeline, net, region, inter)
                enc = encode(net, region.lower, region.upper, None, inter, check=pipeline.deadline.check,
                             ball=region.ball)
            except UnsupportedNetwork as exc:
                return _refuse(pipeline, f"{self.name}: {exc}")
            if self.mode == "smt" and sum(b.out.size for b in enc.bilinear) > SMT_MAX_PRODUCTS:
                return Outcome(Status.UNKNOWN, reason=f"{self.name}: more than {SMT_MAX_PRODUCTS} "
                               "products of two variables (z3's nonlinear arithmetic would not finish)")
            self._note(pipeline, enc, bounder)
            for k, clause in enumerate(region.clauses):
                if proven[k]:
                    continue
                pipeline.deadline.check()
                res, cex = self.clause(pipeline, enc, clause.C, clause.d, r)
                pipeline.stats.extra["solver"]["backend"] = res.backend or self.disp.last_backend
                if cex is not None:
                    pipeline.stats.proved_by = f"{self.name} ({res.backend})"
                    return Outcome(Status.SAT, cex)
                if res.status == "timeout":
                    return Outcome(Status.TIMEOUT, reason=f"{self.name}: {res.reason}")
                if res.status != "infeasible":
                    note = relaxed_note(enc) if self.mode != "lp" else ""
                    open_reasons.append(f"region {r} clause {k}: {res.reason or res.status}{note}")
        if open_reasons:
            return Outcome(Status.UNKNOWN, reason=f"{self.name}: {open_reasons[0]}")
        pipeline.stats.proved_by = self.name
        return Outcome(Status.UNSAT)

    def prepare(self, pipeline: Any, net: Any, region: Region, inter: dict) -> dict:
        """Intermediate bounds tightened by LP (``solver.tighten``; ``lp-full`` always)."""
        if self.name != "lp-full" and (self.mode == "lp" or pipeline.cfg.solver.tighten == "none"):
            return inter
        from encoders.lp import tighten

        budget = self.time_left(pipeline) * (1.0 if self.name == "lp-full" else TIGHTEN_SHARE)
        return tighten(net, region.lower, region.upper, inter, pipeline.cfg.solver, self.disp,
                       budget, check=pipeline.deadline.check, ball=region.ball)

    def time_left(self, pipeline: Any) -> float:
        """Seconds a solver may use now (the deadline minus a small reserve)."""
        left = pipeline.deadline.remaining() - RESERVE_S
        if left <= 0:
            pipeline.deadline.check()
            left = max(0.05, pipeline.deadline.remaining())
        return left

    def clause(self, pipeline: Any, enc: Encoding, C: np.ndarray, d: np.ndarray,
               region: int) -> tuple[ClauseResult, Counterexample | None]:
        """Decide one clause; a candidate point is replayed (retried once with a larger margin)."""
        cfg = pipeline.cfg.solver
        res = solve_clause(enc, C, d, cfg, self.time_left(pipeline), self.disp, self.mode)
        retried = False
        for _ in range(2):
            if res.status != "feasible":
                break
            cex = pipeline.replay(res.x, region)
            if cex is not None:
                return res, cex
            retried = True
            want = 100.0 * float(cfg.cex_margin) * (1.0 + float(np.abs(d).max(initial=0.0)))
            res = solve_clause(enc, C, d, cfg, self.time_left(pipeline), self.disp, self.mode, want)
        near = self.mode != "lp" and res.status == "unknown" and res.value is not None
        if not (near or (retried and res.status in ("feasible", "unknown"))):
            return res, None
        z = z3_recheck(enc, C, d, cfg, self.time_left(pipeline))
        if z is not None and z.status == "feasible":
            cex = pipeline.replay(z.x, region)
            if cex is not None:
                return z, cex
        elif z is not None:
            return z, None
        reason = "solver points fail the onnxruntime replay" if retried else res.reason
        return ClauseResult("unknown", backend=res.backend, reason=reason), None

    def _note(self, pipeline: Any, enc: Encoding, bounder: str) -> None:
        extra = pipeline.stats.extra.setdefault("solver", {"regions": 0, "unstable": 0})
        extra["regions"] += 1
        extra["unstable"] = max(extra["unstable"], enc.n_unstable)
        extra["bounds"] = bounder
        if enc.relaxed:
            extra["relaxed"] = sorted(set(extra.get("relaxed", [])) | set(enc.relaxed))


class MilpMethod(SolverMethod):
    """Complete: big-M MILP per clause (Gurobi or OR-Tools)."""

    mode = "milp"


class LpMethod(SolverMethod):
    """Incomplete: the triangle-relaxation LP per clause; ``lp-full`` tightens bounds first."""

    mode = "lp"


class SmtMethod(SolverMethod):
    """Complete: Z3 over the reals (small networks)."""

    mode = "smt"

    def clause(self, pipeline: Any, enc: Encoding, C: np.ndarray, d: np.ndarray,
               region: int) -> tuple[ClauseResult, Counterexample | None]:
        from encoders import smt

        cfg = pipeline.cfg.solver
        strict = 0.0
        for _ in range(2):
            res = smt.solve(enc, C, d, self.time_left(pipeline), strict, pipeline.deadline.check)
            if res.status == "infeasible":
                return ClauseResult("infeasible" if strict == 0.0 else "unknown", backend="z3",
                                    reason="" if strict == 0.0 else "z3 points fail the replay"), None
            if res.status != "feasible":
                return ClauseResult("timeout", backend="z3", reason="z3 time limit"), None
            cex = pipeline.replay(res.x, region)
            if cex is not None:
                return ClauseResult("feasible", res.x, backend="z3"), cex
            strict = float(cfg.cex_margin) * (1.0 + float(np.abs(d).max(initial=0.0)))
        return ClauseResult("unknown", backend="z3", reason="z3 points fail the onnxruntime replay"), None
