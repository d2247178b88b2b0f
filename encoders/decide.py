"""Deciding one clause ``C y <= d`` on one encoded sub-domain, and the LeafSolver API.

Numerics (see docs/solvers.md): with ``eps = max(margin, 10 * feasibility_tol)`` and
``scale = 1 + max|d|``, a clause is infeasible only when the solver proves that no point has
``max_i (C y - d)_i <= tau = eps * scale`` (the MILP carries ``t <= tau``; split rows are
relaxed by ``tau`` as well), or an LP's optimum exceeds ``tau``. A point is only a candidate:
the caller replays it (the pipeline with onnxruntime; :func:`decide_leaf` with a float64
forward pass). Results within tolerance are re-checked with Z3 on small models, else unknown
(not when the encoding relaxes a transcendental op: Z3 would see the same relaxation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from encoders.backends import Dispatcher, SolveResult
from encoders.encoding import Encoding, UnsupportedNetwork, encode, float64_network
from encoders.model import lower
from onnx_models.network import Network


@dataclass
class ClauseResult:
    """``status``: infeasible | feasible (``x`` is a candidate input) | unknown | timeout."""

    status: str
    x: np.ndarray | None = None
    value: float | None = None
    backend: str = ""
    reason: str = ""


def prove_eps(cfg: Any) -> float:
    """The relative margin a bound must clear: ``max(margin, 10 * feasibility_tol)``."""
    return max(float(cfg.margin), 10.0 * float(cfg.feasibility_tol), 1e-6)


def dispatcher_for(cfg: Any) -> Dispatcher:
    """The back-end dispatcher configured by a :class:`~bab.config.SolverConfig`."""
    return Dispatcher(cfg.backend, cfg.mip_solver, cfg.lp_solver, cfg.threads)


def _x_of(res: SolveResult, enc: Encoding) -> np.ndarray:
    x = np.asarray(res.x, np.float64)[enc.inputs]
    return np.clip(x, enc.lb[enc.inputs], enc.ub[enc.inputs])


def solve_clause(enc: Encoding, C: np.ndarray, d: np.ndarray, cfg: Any, time_limit: float,
                 disp: Dispatcher, mode: str = "milp", want: float | None = None) -> ClauseResult:
    """Decide the clause on the encoding (``mode``: ``"milp"`` exact, ``"lp"`` relaxation).

    ``want``: ask for a point violating every row by at least ``want`` (a retry after a
    failed replay); then "infeasible" only means "no such point" and maps to unknown.
    """
    C, d = np.atleast_2d(np.asarray(C, np.float64)), np.asarray(d, np.float64).reshape(-1)
    if enc.empty:
        return ClauseResult("infeasible", reason="empty domain (phases contradict bounds)")
    if C.shape[0] == 0:
        return ClauseResult("feasible", x=(enc.lb[enc.inputs] + enc.ub[enc.inputs]) / 2)
    scale = 1.0 + float(np.abs(d).max())
    tau = prove_eps(cfg) * scale
    exact = enc.n_unstable == 0
    if mode == "lp" and not exact:
        return _lp_clause(enc, C, d, cfg, time_limit, disp, tau)
    stop = -want if want is not None else -float(cfg.cex_margin) * scale
    t_max = stop if want is not None else tau
    model = lower(enc, "lp" if exact else "milp", C, d, (-np.inf, t_max), phase_slack=tau)
    model.obj_stop = stop
    res = disp.solve(model, time_limit, float(cfg.feasibility_tol))
    out = interpret(res, enc, tau)
    if want is not None and out.status == "infeasible":
        out = ClauseResult("unknown", backend=res.backend, reason=f"no point violating the clause by {want:.2g}")
    return out


def interpret(res: SolveResult, enc: Encoding, tau: float) -> ClauseResult:
    """Map an exact (MILP, or LP of a linear domain) solve with ``t <= tau`` to a verdict."""
    b = res.backend
    if res.status == "infeasible":
        return ClauseResult("infeasible", backend=b)
    if res.status in ("optimal", "feasible") and res.x is not None and res.value is not None:
        if res.value <= 0:
            return ClauseResult("feasible", _x_of(res, enc), res.value, b)
        if res.status == "optimal":
            return ClauseResult("unknown", None, res.value, b,
                                f"decided within tolerance (min max-row {res.value:.3g} <= {tau:.3g})")
        return ClauseResult("timeout", None, res.value, b, "solver time limit")
    if res.status == "limit":
        return ClauseResult("timeout", backend=b, reason="solver time limit")
    return ClauseResult("unknown", backend=b, reason=f"solver: {res.status} {res.message}".strip())


def _lp_clause(enc: Encoding, C: np.ndarray, d: np.ndarray, cfg: Any, time_limit: float,
               disp: Dispatcher, tau: float) -> ClauseResult:
    """The triangle-relaxation LP: infeasible when its minimum of the max row exceeds ``tau``."""
    model = lower(enc, "lp", C, d, (-np.inf, np.inf), phase_slack=tau)
    res = disp.solve(model, time_limit, float(cfg.feasibility_tol))
    if res.status == "infeasible":
        return ClauseResult("infeasible", backend=res.backend)
    if res.status == "optimal" and res.value is not None:
        bound = res.bound if res.bound is not None else res.value
        if bound > tau:
            return ClauseResult("infeasible", value=bound, backend=res.backend)
        return ClauseResult("unknown", value=bound, backend=res.backend,
                            reason=f"LP bound {bound:.3g} does not exceed {tau:.3g}")
    if res.status == "limit":
        return ClauseResult("timeout", backend=res.backend, reason="solver time limit")
    return ClauseResult("unknown", backend=res.backend, reason=f"LP: {res.status} {res.message}".strip())


def z3_recheck(enc: Encoding, C: np.ndarray, d: np.ndarray, cfg: Any, time_limit: float,
               strict: float = 0.0) -> ClauseResult | None:
    """Z3's exact answer when re-checks are on and the model is small, else ``None``."""
    if not cfg.recheck or enc.n_unstable > int(cfg.z3_max_neurons) or time_limit <= 0 or enc.cone is not None:
        return None  # (z3's linear arithmetic has no ℓ2 ball)
    if enc.smt_relaxed:
        return None  # z3 would decide the same relaxation: its points would fail the replay too
    from encoders import smt

    res = smt.solve(enc, C, d, time_limit, strict)
    if res.status == "infeasible":
        return ClauseResult("infeasible", backend="z3", reason="z3 re-check")
    if res.status == "feasible":
        return ClauseResult("feasible", res.x, None, "z3", "z3 re-check")
    return None


# --- LeafSolver API -------------------------------------------------------------------------

@dataclass
class LeafResult:
    """A leaf's verdict: ``infeasible`` (no counterexample in the domain), ``feasible`` with a
    float64-checked input ``x``, or ``unknown``."""

    status: str
    x: np.ndarray | None = None
    reason: str = ""
    kind: str = ""  # "lp" (the domain was linear: exact LP), "milp", or "relaxed" (refute only)


class LeafSolver:
    """Decides fully or partly split BaB domains exactly (LP when linear, else MILP, Z3 re-check)."""

    def __init__(self, config: Any = None) -> None:
        from bab.config import SolverConfig

        self.cfg = config or SolverConfig()
        self.disp = dispatcher_for(self.cfg)

    def decide(self, network: Network, region_lower: Any, region_upper: Any, C: Any, d: Any,
               phases: dict[int, Any] | None = None, intermediate: dict[int, Any] | None = None,
               time_limit: float = 10.0, ball: Any = None) -> LeafResult:
        """See :func:`decide_leaf` (``ball``: an optional l_p ball intersecting the box)."""
        end = time.monotonic() + time_limit
        C, d = _np(C).reshape(-1, network.n_outputs), _np(d).reshape(-1)
        try:
            enc = encode(network, _np(region_lower), _np(region_upper), phases, intermediate, ball=ball)
        except UnsupportedNetwork as exc:
            return LeafResult("unknown", reason=str(exc))
        kind = "lp" if enc.n_unstable == 0 else "milp"
        res = solve_clause(enc, C, d, self.cfg, end - time.monotonic(), self.disp)
        if res.status == "unknown" and res.value is not None:
            res = z3_recheck(enc, C, d, self.cfg, end - time.monotonic()) or res
        if res.status == "infeasible":
            return LeafResult("infeasible", reason=res.reason, kind=kind)
        if res.status == "feasible":
            out = self.checked(network, res.x, C, d)
            out.kind = kind
            return out
        return LeafResult("unknown", reason=res.reason or res.status, kind=kind)

    def refute(self, network: Network, region_lower: Any, region_upper: Any, C: Any, d: Any,
               phases: dict[int, Any] | None = None, intermediate: dict[int, Any] | None = None,
               time_limit: float = 10.0, ball: Any = None) -> LeafResult:
        """Try to prove a domain free of counterexamples with the LP relaxation only (the
        arguments of :meth:`decide`): ``infeasible``, else ``unknown`` (never ``feasible``: a
        relaxation's point need not be a real input's image)."""
        end = time.monotonic() + time_limit
        C, d = _np(C).reshape(-1, network.n_outputs), _np(d).reshape(-1)
        try:
            enc = encode(network, _np(region_lower), _np(region_upper), phases, intermediate, ball=ball,
                         check=lambda: _within(end))
        except UnsupportedNetwork as exc:
            return LeafResult("unknown", reason=str(exc), kind="relaxed")
        except _OverTime:
            return LeafResult("unknown", reason="time limit reached while encoding", kind="relaxed")
        res = solve_clause(enc, C, d, self.cfg, max(0.01, end - time.monotonic()), self.disp, "lp")
        if res.status == "infeasible":
            return LeafResult("infeasible", reason=res.reason, kind="relaxed")
        return LeafResult("unknown", reason=res.reason or res.status, kind="relaxed")

    def clause_search(self, network: Network, region_lower: Any, region_upper: Any, C: Any, d: Any,
                      intermediate: dict[int, Any] | None = None, ball: Any = None) -> Any:
        """A whole-clause MILP to run in slices beside a BaB search
        (:class:`encoders.clause_search.ClauseSearch`), or ``None`` when no resumable solver
        takes it (see :meth:`encoders.backends.Dispatcher.resumable`)."""
        from encoders.clause_search import ClauseSearch

        return ClauseSearch.start(self, network, region_lower, region_upper, C, d, intermediate, ball)

    def checked(self, network: Network, x: np.ndarray, C: np.ndarray, d: np.ndarray) -> LeafResult:
        """A candidate counts as feasible when the float64 forward pass agrees within tolerance."""
        net = float64_network(network)
        with torch.no_grad():
            y = net.forward(torch.as_tensor(x, dtype=torch.float64)[None])[0].numpy()
        tol = prove_eps(self.cfg) * (1.0 + float(np.abs(d).max(initial=0.0)))
        if C.shape[0] == 0 or float(np.max(C @ y - d)) <= tol:
            return LeafResult("feasible", x)
        return LeafResult("unknown", reason="solver point fails the float64 forward check")


def decide_leaf(network: Network, region_lower: Any, region_upper: Any, C: Any, d: Any,
                phases: dict[int, Any] | None = None, intermediate: dict[int, Any] | None = None,
                time_limit: float = 10.0, config: Any = None) -> LeafResult:
    """Decide ``exists x in [lower, upper] with the phases: C f(x) <= d``.

    ``phases``: ``{relu node: -1/0/+1 per neuron}``; ``intermediate``: ``{node: (lo, hi)}``
    (IBP in float64 fills the gaps). A domain without unstable neurons is linear and an LP
    decides it exactly; otherwise a MILP does. ``config``: a ``SolverConfig``.
    """
    return LeafSolver(config).decide(network, region_lower, region_upper, C, d, phases,
                                     intermediate, time_limit)


class _OverTime(Exception):
    """A leaf's time limit passed while its network was being encoded."""


def _within(end: float) -> None:
    if time.monotonic() > end:
        raise _OverTime


def _np(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().numpy()
    return np.asarray(v, np.float64)
