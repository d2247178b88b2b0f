"""Gurobi back end (gurobipy's matrix API). Importing this module needs gurobipy.

Licence problems (no licence, the pip licence's size limit: error 10010 "Model too large for
size-limited license") are raised as :class:`~encoders.backends.LicenceError` so that the
dispatcher can fall back to OR-Tools. The banner is suppressed by starting an empty
environment with ``OutputFlag=0``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gurobipy as gp
import numpy as np
import scipy.sparse as sp

from encoders.backends import LicenceError, SolveResult, solve_rows
from encoders.model import LinearModel

LICENCE_ERRORS = {10009, 10010}  # NO_LICENSE, SIZE_LIMIT_EXCEEDED
_ENV: dict[str, Any] = {}


def _env() -> Any:
    """One quiet Gurobi environment per process."""
    if "env" not in _ENV:
        try:
            env = gp.Env(empty=True)
            env.setParam("OutputFlag", 0)
            env.start()
        except gp.GurobiError as exc:
            raise LicenceError(getattr(exc, "errno", 0) or 10009, str(exc)) from None
        _ENV["env"] = env
    return _ENV["env"]


class GurobiBackend:
    """Solves a :class:`LinearModel` with Gurobi."""

    name = "gurobi"

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def build(self, model: LinearModel, time_limit: float, tol: float) -> tuple[Any, Any]:
        """The gurobipy model and its variable vector."""
        m = gp.Model(env=_env())
        lb = np.where(np.isfinite(model.lb), model.lb, -gp.GRB.INFINITY)
        ub = np.where(np.isfinite(model.ub), model.ub, gp.GRB.INFINITY)
        vtype = np.where(model.integer, gp.GRB.INTEGER, gp.GRB.CONTINUOUS)
        x = m.addMVar(model.n_vars, lb=lb, ub=ub, vtype=vtype)
        eq = model.row_lo == model.row_hi
        _add(m, x, model.A, eq, "=", model.row_hi)
        _add(m, x, model.A, ~eq & np.isfinite(model.row_hi), "<", model.row_hi)
        _add(m, x, model.A, ~eq & np.isfinite(model.row_lo), ">", model.row_lo)
        if model.cone is not None:  # the ℓ2 ball: a convex quadratic constraint
            idx, centre, radius = model.cone
            diff = x[np.asarray(idx)] - np.asarray(centre, np.float64)
            m.addConstr(diff @ diff <= float(radius) ** 2)
        m.setObjective(model.obj @ x + float(model.obj_const), gp.GRB.MINIMIZE)
        p = m.Params
        p.TimeLimit = max(0.01, float(time_limit))
        p.Threads = max(0, int(self.threads))
        p.FeasibilityTol = min(1e-2, max(1e-9, tol))
        p.IntFeasTol = min(1e-1, max(1e-9, tol))
        p.OptimalityTol = min(1e-2, max(1e-9, tol))
        p.DualReductions = 0  # INFEASIBLE rather than INF_OR_UNBD
        if model.cone is not None:
            p.BarQCPConvTol = min(1e-6, max(1e-10, tol))  # QCP optima as tight as the LP ones
        if model.obj_stop is not None:
            p.BestObjStop = float(model.obj_stop)
        return m, x

    def _optimize(self, m: Any) -> None:
        """The single call into the solver (tests monkeypatch it to simulate licence errors)."""
        m.optimize()

    def solve(self, model: LinearModel, time_limit: float, tol: float) -> SolveResult:
        """Solve once; licence errors raise :class:`LicenceError`."""
        try:
            m, x = self.build(model, time_limit, tol)
            self._optimize(m)
            return self._result(m, x, model)
        except gp.GurobiError as exc:
            errno = getattr(exc, "errno", 0)
            if errno in LICENCE_ERRORS:
                raise LicenceError(errno, getattr(exc, "message", str(exc))) from None
            return SolveResult("error", backend=self.name, message=f"Gurobi error {errno}: {exc}")

    def solve_many(self, model: LinearModel, objs: Any, consts: np.ndarray, time_limit: float,
                   tol: float) -> list[SolveResult]:
        """Minimise each row of ``objs`` plus ``consts`` (warm-started re-solves)."""
        end = time.monotonic() + time_limit
        try:
            m, x = self.build(model, time_limit, tol)

            def solve_one(row: Any, const: float, left: float) -> SolveResult:
                _set_objective(m, x, model, row, const)
                m.Params.TimeLimit = max(0.01, left)
                self._optimize(m)
                return self._result(m, x, model)

            return solve_rows(objs, consts, end, self.name, solve_one)
        except gp.GurobiError as exc:
            errno = getattr(exc, "errno", 0)
            if errno in LICENCE_ERRORS:
                raise LicenceError(errno, getattr(exc, "message", str(exc))) from None
            msg = f"Gurobi error {errno}: {exc}"
            return [SolveResult("error", backend=self.name, message=msg) for _ in range(objs.shape[0])]

    def dual_bounds(self, model: LinearModel, objs: Any, consts: np.ndarray, per_row: float,
                    end: float, tol: float, stop: np.ndarray | None = None,
                    skip: Callable[[int, np.ndarray], bool] | None = None) -> np.ndarray:
        """Gurobi's proven lower bound (``ObjBound``) of the minimum of each row of ``objs``
        plus ``consts`` (MILP: valid even when stopped early), one model and at most
        ``per_row`` seconds per row, until the monotonic clock reaches ``end``; ``-inf`` where
        nothing was proven, ``+inf`` where the model is infeasible. ``stop[k]``: row ``k`` may
        stop once its bound reaches this value (``BestBdStop``); ``skip(k, bounds so far)``:
        leave row ``k`` out."""
        out = np.full(objs.shape[0], -np.inf)
        try:
            m, x = self.build(model, per_row, tol)
            m.Params.Cuts = 0  # bounds only: cuts and primal heuristics cost more than they prove
            m.Params.Heuristics = 0  # (eran mnist_relu_9_200, 10 layer-2 bounds: 10.1 s -> 6.5 s, tighter)
            m.Params.Presolve = 0  # re-presolving per objective costs more than it saves here (layer-2
            # bounds at 0.5-1 s each: eran idx 2697 6.75 -> 6.19 s, mnistfc 256x6 prop_6_0.05 8.73 -> 7.89 s,
            # both a little tighter; the leaf MILPs of solve() are the other way round, so only here)
            G = gp.GRB
            for k in range(objs.shape[0]):
                left = end - time.monotonic()
                if left <= 0.01:
                    break
                if skip is not None and skip(k, out):
                    continue
                _set_objective(m, x, model, objs.getrow(k), float(consts[k]))
                m.Params.TimeLimit = max(0.01, min(per_row, left))
                m.Params.BestBdStop = G.INFINITY if stop is None else float(stop[k])
                self._optimize(m)
                if m.Status in (G.INFEASIBLE, G.INF_OR_UNBD):
                    out[k] = np.inf
                elif m.Status in (G.OPTIMAL, G.TIME_LIMIT, G.USER_OBJ_LIMIT, G.INTERRUPTED, G.SUBOPTIMAL):
                    b = float(m.ObjBound)
                    out[k] = b if np.isfinite(b) else -np.inf
        except gp.GurobiError as exc:
            errno = getattr(exc, "errno", 0)
            if errno in LICENCE_ERRORS:
                raise LicenceError(errno, getattr(exc, "message", str(exc))) from None
        return out

    def resumable(self, model: LinearModel, tol: float) -> "ResumableSolve":
        """A solve that :meth:`ResumableSolve.advance` runs in slices (Gurobi resumes its
        branch and bound where the previous slice stopped, as long as the model is unchanged)."""
        try:
            m, x = self.build(model, 0.01, tol)
        except gp.GurobiError as exc:
            errno = getattr(exc, "errno", 0)
            if errno in LICENCE_ERRORS:
                raise LicenceError(errno, getattr(exc, "message", str(exc))) from None
            raise
        return ResumableSolve(self, m, x, model)

    def _result(self, m: Any, x: Any, model: LinearModel) -> SolveResult:
        G = gp.GRB
        st = m.Status
        sol = np.asarray(x.X, np.float64) if m.SolCount > 0 else None
        value = float(m.ObjVal) if sol is not None else None
        bound = None
        if model.is_mip and st in (G.OPTIMAL, G.TIME_LIMIT, G.USER_OBJ_LIMIT, G.INTERRUPTED, G.SUBOPTIMAL):
            bound = float(m.ObjBound)
        if st == G.OPTIMAL:
            return SolveResult("optimal", value, bound if model.is_mip else value, sol, self.name)
        if st in (G.INFEASIBLE, G.INF_OR_UNBD):
            return SolveResult("infeasible", backend=self.name)
        if sol is not None and st in (G.TIME_LIMIT, G.USER_OBJ_LIMIT, G.INTERRUPTED, G.SUBOPTIMAL):
            return SolveResult("feasible", value, bound, sol, self.name, "stopped early")
        if st in (G.TIME_LIMIT, G.INTERRUPTED, G.WORK_LIMIT, G.NODE_LIMIT, G.ITERATION_LIMIT):
            return SolveResult("limit", backend=self.name, message="no solution within the limit")
        return SolveResult("error", backend=self.name, message=f"Gurobi status {st}")


def _set_objective(m: Any, x: Any, model: LinearModel, row: Any, const: float) -> None:
    """Minimise the sparse ``row`` (one CSR row) plus ``const`` over ``x``."""
    obj = np.zeros(model.n_vars)
    obj[row.indices] = row.data
    m.setObjective(obj @ x + const, gp.GRB.MINIMIZE)


def _add(m: Any, x: Any, A: sp.csr_matrix, mask: np.ndarray, sense: str, rhs: np.ndarray) -> None:
    idx = np.nonzero(mask)[0]
    if idx.size:
        m.addMConstr(A[idx], x, sense, rhs[idx])


class ResumableSolve:
    """One Gurobi model solved in time slices: each :meth:`advance` continues the search."""

    def __init__(self, backend: GurobiBackend, m: Any, x: Any, model: LinearModel) -> None:
        self.backend, self.m, self.x, self.model = backend, m, x, model
        self.seconds = 0.0

    def advance(self, seconds: float) -> SolveResult:
        """Search on for at most ``seconds``; licence errors raise :class:`LicenceError`."""
        t0 = time.monotonic()
        try:
            self.m.Params.TimeLimit = max(0.01, float(seconds))
            self.backend._optimize(self.m)
            return self.backend._result(self.m, self.x, self.model)
        except gp.GurobiError as exc:
            errno = getattr(exc, "errno", 0)
            if errno in LICENCE_ERRORS:
                raise LicenceError(errno, getattr(exc, "message", str(exc))) from None
            return SolveResult("error", backend=self.backend.name, message=f"Gurobi error {errno}: {exc}")
        finally:
            self.seconds += time.monotonic() - t0
