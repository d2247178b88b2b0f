"""A whole-clause MILP searched in time slices, beside a BaB search.

BaB on a deep ReLU network can stall on a clause whose relaxation gap is wide, while a MILP
solver (cuts, presolve, its own branching) decides the same clause in seconds. A
:class:`ClauseSearch` holds one clause's MILP (``t <= tau`` over the whole region, with the
BaB root's intermediate boxes) in a resumable solver; :meth:`ClauseSearch.advance` gives it
another slice. Numerics are those of :func:`encoders.decide.solve_clause`: ``infeasible``
proves the clause, and a point is only a candidate until the caller replays it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from encoders.backends import LicenceError
from encoders.decide import LeafResult, LeafSolver, interpret, prove_eps
from encoders.encoding import Encoding, UnsupportedNetwork, encode
from encoders.model import lower
from onnx_models.network import Network


class ClauseSearch:
    """One clause's MILP, searched in slices (``done`` once it has a verdict or gave up)."""

    def __init__(self, solver: LeafSolver, network: Network, enc: Encoding, C: np.ndarray, d: np.ndarray,
                 handle: Any, model: Any, tau: float) -> None:
        self.solver, self.network, self.enc = solver, network, enc
        self.C, self.d, self.handle, self.model, self.tau = C, d, handle, model, tau
        self.done = False

    @classmethod
    def start(cls, solver: LeafSolver, network: Network, lower_box: Any, upper_box: Any, C: Any, d: Any,
              intermediate: dict[int, Any] | None = None, ball: Any = None) -> "ClauseSearch | None":
        """Encode the clause over the region; ``None`` when it cannot be searched in slices."""
        C = np.atleast_2d(np.asarray(C, np.float64)).reshape(-1, network.n_outputs)
        d = np.asarray(d, np.float64).reshape(-1)
        if C.shape[0] == 0:
            return None
        try:
            enc = encode(network, np.asarray(lower_box, np.float64), np.asarray(upper_box, np.float64), None,
                         intermediate, ball=ball)
        except UnsupportedNetwork:
            return None
        if enc.empty or enc.n_unstable == 0 or enc.smt_relaxed:
            return None  # (linear or empty: the leaf solver's business; relaxed: not exact)
        cfg = solver.cfg
        scale = 1.0 + float(np.abs(d).max())
        tau = prove_eps(cfg) * scale
        model = lower(enc, "milp", C, d, (-np.inf, tau), phase_slack=tau)
        model.obj_stop = -float(cfg.cex_margin) * scale
        handle = solver.disp.resumable(model, float(cfg.feasibility_tol))
        return None if handle is None else cls(solver, network, enc, C, d, handle, model, tau)

    @property
    def seconds(self) -> float:
        """Solver time spent so far."""
        return float(self.handle.seconds)

    def advance(self, seconds: float) -> LeafResult | None:
        """Search on for ``seconds``: ``infeasible`` (the clause holds nowhere), ``feasible``
        (a float64-checked candidate), ``unknown`` (gave up), or ``None`` (undecided yet)."""
        if self.done:
            return LeafResult("unknown", reason="search ended", kind="milp")
        try:
            res = self.handle.advance(seconds)
        except LicenceError as exc:
            self.solver.disp.licence_failure(exc, self.model)
            self.done = True
            return LeafResult("unknown", reason=str(exc), kind="milp")
        out = interpret(res, self.enc, self.tau)
        if out.status == "timeout":
            return None
        self.done = True
        if out.status == "infeasible":
            return LeafResult("infeasible", kind="milp")
        if out.status == "feasible" and out.x is not None:
            checked = self.solver.checked(self.network, out.x, self.C, self.d)
            checked.kind = "milp"
            return checked
        return LeafResult("unknown", reason=out.reason or out.status, kind="milp")
