"""LP/MILP back ends behind one interface, and the dispatcher that picks one.

A back end solves a :class:`~encoders.model.LinearModel` (minimisation) within a time limit and
returns a :class:`SolveResult`. ``ortools`` (SCIP or CBC for MILPs, GLOP or PDLP for LPs) needs
no licence. ``gurobi`` (:mod:`encoders.gurobi_backend`) is used when gurobipy is importable and
licensed; a licence or size-limit error (the pip licence stops at 2000 variables/constraints)
makes the :class:`Dispatcher` fall back to OR-Tools with one warning per process. A solver
stopped by its time limit reports ``limit`` (or ``feasible`` with its best point), never a
proof. A model with an ℓ2 ball (``LinearModel.cone``) needs Gurobi's quadratic constraints;
OR-Tools answers ``error`` with :data:`NO_CONE` as the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from encoders.model import LinearModel

log = logging.getLogger("encoders")

# status words: optimal | feasible (a point, not proven optimal) | infeasible | limit | error
STATUSES = ("optimal", "feasible", "infeasible", "limit", "error")


@dataclass
class SolveResult:
    """``value``: objective of the best point ``x``; ``bound``: proven lower bound (min)."""

    status: str
    value: float | None = None
    bound: float | None = None
    x: np.ndarray | None = None
    backend: str = ""
    message: str = ""


class LicenceError(RuntimeError):
    """Gurobi cannot solve this model with the licence at hand (missing, expired, size limit)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(f"Gurobi error {errno}: {message}")
        self.errno = errno


class Backend(Protocol):
    """An LP/MILP solver."""

    name: str

    def solve(self, model: LinearModel, time_limit: float, tol: float) -> SolveResult:
        """Minimise the model's objective within ``time_limit`` seconds."""
        ...


def _mb() -> Any:
    import ortools.linear_solver.python.model_builder_helper as mbh

    return mbh


NO_CONE = ("an ℓ2 ball needs a second-order cone, which OR-Tools lacks (Gurobi has one, but it is "
           "not available or the model exceeds its licence)")


def _no_cone(name: str) -> SolveResult:
    return SolveResult("error", backend=name, message=NO_CONE)


class OrToolsBackend:
    """OR-Tools: SCIP/CBC for MILPs, GLOP/PDLP for LPs (model built from sparse arrays)."""

    name = "ortools"

    def __init__(self, mip_solver: str = "SCIP", lp_solver: str = "GLOP") -> None:
        self.mip_solver = mip_solver.upper()
        self.lp_solver = lp_solver.upper()

    def build(self, model: LinearModel) -> Any:
        """The model-builder helper holding ``model``."""
        mbh = _mb()
        h = mbh.ModelBuilderHelper()
        h.fill_model_from_sparse_data(model.lb, model.ub, model.obj, model.row_lo, model.row_hi,
                                      model.A)
        h.set_objective_offset(float(model.obj_const))
        for i in np.nonzero(model.integer)[0]:
            h.set_var_integrality(int(i), True)
        return h

    def solve(self, model: LinearModel, time_limit: float, tol: float) -> SolveResult:
        """Solve once; CBC goes through pywraplp, everything else through the model builder."""
        if model.cone is not None:
            return _no_cone(self.name)
        h = self.build(model)
        if model.is_mip and self.mip_solver == "CBC":
            return self._solve_cbc(h, model, time_limit)
        return self.solve_built(h, model, time_limit, tol)

    def solve_many(self, model: LinearModel, objs: Any, consts: np.ndarray, time_limit: float,
                   tol: float) -> list[SolveResult]:
        """Minimise each row of ``objs`` (CSR ``[K, n]``) plus ``consts`` over the same LP."""
        if model.cone is not None:
            return [_no_cone(self.name) for _ in range(objs.shape[0])]
        h = self.build(model)

        def solve_one(row: Any, const: float, left: float) -> SolveResult:
            h.clear_objective()
            h.set_objective_coefficients(row.indices.tolist(), row.data.tolist())
            h.set_objective_offset(const)
            return self.solve_built(h, model, left, tol)

        return solve_rows(objs, consts, time.monotonic() + time_limit, self.name, solve_one)

    def solve_built(self, h: Any, model: LinearModel, time_limit: float, tol: float) -> SolveResult:
        """Solve an already built helper (objective possibly changed since)."""
        mbh = _mb()
        name = self.mip_solver.lower() if model.is_mip else self.lp_solver.lower()
        s = mbh.ModelSolverHelper(name)
        s.set_time_limit_in_seconds(max(0.01, float(time_limit)))
        extra = f"\nlimits/primal = {model.obj_stop:.17g}" if name == "scip" and model.obj_stop is not None else ""
        s.set_solver_specific_parameters(_params(name, tol) + extra)
        s.solve(h)
        st = s.status()
        S = mbh.SolveStatus
        x = np.asarray(s.variable_values(), np.float64) if s.has_solution() else None
        value = float(s.objective_value()) if x is not None else None
        if st == S.OPTIMAL:
            bound = float(s.best_objective_bound()) if model.is_mip else value
            return SolveResult("optimal", value, bound, x, self.name)
        if st == S.INFEASIBLE:
            return SolveResult("infeasible", backend=self.name)
        if st == S.FEASIBLE:
            bound = float(s.best_objective_bound()) if model.is_mip else None
            return SolveResult("feasible", value, bound, x, self.name, "stopped early")
        if st == S.NOT_SOLVED:
            return SolveResult("limit", backend=self.name, message="no solution within the limit")
        return SolveResult("error", backend=self.name, message=f"{st.name}: {s.status_string()}")

    def _solve_cbc(self, h: Any, model: LinearModel, time_limit: float) -> SolveResult:
        from ortools.linear_solver import pywraplp

        solver = pywraplp.Solver.CreateSolver("CBC")
        if solver is None:
            return SolveResult("error", backend=self.name, message="CBC is not available")
        err = solver.LoadModelFromProto(_mb().to_mpmodel_proto(h))
        if err:
            return SolveResult("error", backend=self.name, message=err)
        solver.SetTimeLimit(int(max(10, 1000 * time_limit)))
        st = solver.Solve()
        P = pywraplp.Solver
        has = st in (P.OPTIMAL, P.FEASIBLE)
        x = np.array([v.solution_value() for v in solver.variables()]) if has else None
        value = solver.Objective().Value() if has else None
        bound = solver.Objective().BestBound()
        if st == P.OPTIMAL:
            return SolveResult("optimal", value, bound, x, self.name)
        if st == P.FEASIBLE:
            return SolveResult("feasible", value, bound, x, self.name, "stopped early")
        if st == P.INFEASIBLE:
            return SolveResult("infeasible", backend=self.name)
        if st == P.NOT_SOLVED:
            return SolveResult("limit", backend=self.name)
        return SolveResult("error", backend=self.name, message=f"CBC status {st}")


def _params(solver: str, tol: float) -> str:
    """Solver-specific tolerance parameters (text format of each solver)."""
    if solver == "scip":
        return f"numerics/feastol = {tol:g}\nnumerics/dualfeastol = {tol:g}\nnumerics/lpfeastolfactor = 1"
    if solver == "glop":
        return f"primal_feasibility_tolerance: {tol:g} dual_feasibility_tolerance: {tol:g}"
    if solver == "pdlp":
        return ("termination_criteria { simple_optimality_criteria { "
                f"eps_optimal_relative: {tol:g} eps_optimal_absolute: {tol:g} }} }}")
    return ""


# --- dispatcher -------------------------------------------------------------------------------

SIZE_LIMIT = 2000  # the pip (restricted) Gurobi licence: variables and linear constraints
_STATE: dict[str, Any] = {"unusable": None, "too_big": None, "warned": False}


def gurobi_state() -> dict[str, Any]:
    """Process-wide Gurobi facts learnt so far (unusable reason, size limit, warning given)."""
    return _STATE


def _warn_once(reason: str) -> None:
    if not _STATE["warned"]:
        _STATE["warned"] = True
        log.warning("Gurobi unavailable (%s); falling back to OR-Tools", reason)


class Dispatcher:
    """Solves with Gurobi when configured and possible, otherwise with OR-Tools."""

    def __init__(self, backend: str = "auto", mip_solver: str = "SCIP", lp_solver: str = "GLOP",
                 threads: int = 1) -> None:
        if backend not in ("auto", "gurobi", "ortools"):
            raise ValueError(f"unknown solver back end {backend!r}")
        self.choice = backend
        self.ortools = OrToolsBackend(mip_solver, lp_solver)
        self.threads = threads
        self._gurobi: Any = None
        self.last_backend = ""

    def gurobi(self) -> Any:
        """The Gurobi back end, or ``None`` when not configured, not installed or unusable."""
        if self.choice == "ortools" or _STATE["unusable"]:
            return None
        if self._gurobi is None:
            try:
                from encoders.gurobi_backend import GurobiBackend
            except ImportError as exc:  # gurobipy missing
                _STATE["unusable"] = f"gurobipy not importable: {exc}"
                if self.choice == "gurobi":
                    _warn_once(_STATE["unusable"])
                return None
            self._gurobi = GurobiBackend(self.threads)
        return self._gurobi

    def fits(self, model: LinearModel) -> bool:
        """False when the model is known to exceed the licence's size limit."""
        too_big = _STATE["too_big"]
        return too_big is None or max(model.n_vars, model.n_rows) < too_big

    def solve(self, model: LinearModel, time_limit: float, tol: float) -> SolveResult:
        """Solve with the preferred back end; licence trouble falls back to OR-Tools."""
        g = self.gurobi()
        if g is not None and self.fits(model):
            try:
                res = g.solve(model, time_limit, tol)
                self.last_backend = res.backend
                return res
            except LicenceError as exc:
                self.licence_failure(exc, model)
        res = self.ortools.solve(model, time_limit, tol)
        self.last_backend = res.backend
        return res

    def solve_many(self, model: LinearModel, objs: Any, consts: np.ndarray, time_limit: float,
                   tol: float) -> list[SolveResult]:
        """Minimise several objectives over one model (same back-end choice as :meth:`solve`)."""
        g = self.gurobi()
        if g is not None and self.fits(model):
            try:
                res = g.solve_many(model, objs, consts, time_limit, tol)
                self.last_backend = g.name
                return res
            except LicenceError as exc:
                self.licence_failure(exc, model)
        self.last_backend = self.ortools.name
        return self.ortools.solve_many(model, objs, consts, time_limit, tol)

    def dual_bounds(self, model: LinearModel, objs: Any, consts: np.ndarray, per_row: float,
                    end: float, tol: float, stop: np.ndarray | None = None,
                    skip: Callable[[int, np.ndarray], bool] | None = None) -> np.ndarray | None:
        """Proven lower bounds of each row's minimum
        (:meth:`~encoders.gurobi_backend.GurobiBackend.dual_bounds`), or ``None`` when Gurobi is
        not configured, not usable, or the model exceeds its licence (OR-Tools reports no
        bound of a stopped MILP through this interface)."""
        g = self.gurobi()
        if g is None or not self.fits(model):
            return None
        try:
            return g.dual_bounds(model, objs, consts, per_row, end, tol, stop, skip)
        except LicenceError as exc:
            self.licence_failure(exc, model)
            return None

    def resumable(self, model: LinearModel, tol: float) -> Any:
        """A Gurobi solve to run in slices (``advance(seconds)``), or ``None`` when Gurobi is not
        configured, not usable, or the model exceeds its licence (OR-Tools cannot resume)."""
        g = self.gurobi()
        if g is None or not self.fits(model):
            return None
        try:
            return g.resumable(model, tol)
        except LicenceError as exc:
            self.licence_failure(exc, model)
            return None

    def licence_failure(self, exc: LicenceError, model: LinearModel) -> None:
        """Remember what failed (size limit or no licence) and warn once."""
        size = max(model.n_vars, model.n_rows)
        if exc.errno == 10010:
            limit = min(size, SIZE_LIMIT)
            _STATE["too_big"] = min(_STATE["too_big"] or limit, limit)
        else:
            _STATE["unusable"] = str(exc)
        _warn_once(str(exc))


def solve_rows(objs: Any, consts: np.ndarray, end: float, backend: str,
               solve_one: Callable[[Any, float, float], SolveResult]) -> list[SolveResult]:
    """``solve_one(row, const, seconds left)`` for each row of ``objs`` (CSR) until the
    monotonic clock reaches ``end``; the rows after that get a ``limit`` result."""
    out = []
    for k in range(objs.shape[0]):
        left = end - time.monotonic()
        if left <= 0:
            out.append(SolveResult("limit", backend=backend, message="time limit"))
        else:
            out.append(solve_one(objs.getrow(k), float(consts[k]), left))
    return out
