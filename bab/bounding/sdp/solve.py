"""The S-procedure SDP shared by ``sdp`` and ``lmi``: solver choice, solve, sound recovery.

Both bounders describe the feasible set of ``v = (1, x, z)`` (input and unstable activations)
by quadratic constraints ``q_i(v) = (u_i·v)(w_i·v) >= 0`` (or ``= 0``; a linear constraint
has ``u_i = e_0``) and look for the largest ``t`` such that

    M(t, y) = sym(e_0 q^T) - t e_0 e_0^T - sum_i y_i sym(u_i w_i^T)  is PSD,  y_i >= 0 (ineq.)

where ``q·v = c·f(x)``. That ``t`` is never used as is: :func:`certify` recomputes ``M`` in
float64 from the solver's multipliers (negative inequality multipliers clipped), bounds its
smallest eigenvalue rigorously, and lowers ``t`` by ``|lambda_min| * R^2`` (``R^2 >= |v|^2``
on the feasible set) and by the rounding error of every form. See docs/sdp.md.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

log = logging.getLogger("bab.bounding.sdp")
EPS = float(np.finfo(np.float64).eps)
PREFERENCE = ("MOSEK", "CLARABEL", "SCS")
_MOSEK: dict[str, Any] = {}


@dataclass
class QcSystem:
    """Quadratic constraints ``(U[i]·v)(W[i]·v) >= 0`` (``= 0`` where ``eq[i]``) on ``v``.

    ``Uabs``/``Wabs``: entrywise bounds ``A >= |form|`` with ``|exact - computed| <= gamma*A``
    (the forms' rounding error). ``vmax``: ``|v_k| <= vmax[k]`` on the feasible set.
    """

    U: sp.csr_matrix
    W: sp.csr_matrix
    eq: np.ndarray
    Uabs: sp.csr_matrix
    Wabs: sp.csr_matrix
    vmax: np.ndarray
    gamma: float

    @property
    def n(self) -> int:
        """Dimension of ``v``."""
        return int(self.vmax.size)

    @property
    def m(self) -> int:
        """Number of constraints."""
        return int(self.eq.size)

    def r2(self) -> float:
        """An upper bound of ``|v|^2`` on the feasible set (rounded up)."""
        return float(np.sum(self.vmax ** 2)) * (1 + 4 * self.n * EPS) + 1e-300

    def form_errors(self) -> np.ndarray:
        """Per constraint: a bound on ``|computed q_i(v) - exact q_i(v)|`` over the feasible set."""
        a = self.Uabs @ self.vmax
        b = self.Wabs @ self.vmax
        g = self.gamma
        return g * (2 + g) * a * b * (1 + 1e-10)


@dataclass
class SolveInfo:
    """One row's solve: solver, status, times and the numbers of the recovery."""

    solver: str
    status: str
    time: float
    bound: float = float("-inf")
    dual_t: float = float("nan")
    primal: float = float("nan")
    residuals: dict[str, float] = field(default_factory=dict)


def _mosek_works() -> bool:
    """Whether MOSEK solves a tiny SDP here (licence check, once per process)."""
    if "ok" not in _MOSEK:
        import cvxpy as cp

        try:
            X = cp.Variable((2, 2), PSD=True)
            cp.Problem(cp.Minimize(cp.trace(X)), [X[0, 0] >= 1]).solve(solver="MOSEK")
            _MOSEK["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any licence/solver failure means "not usable"
            _MOSEK["ok"] = False
            log.warning("MOSEK unusable (%s); falling back to Clarabel/SCS", exc)
    return _MOSEK["ok"]


def choose_solver(preferred: str | None = None) -> str:
    """``preferred`` if given, else the first of MOSEK (licensed), Clarabel, SCS installed."""
    import cvxpy as cp

    have = set(cp.installed_solvers())
    if preferred is not None:
        name = preferred.upper()
        if name not in have:
            raise ValueError(f"SDP solver {preferred!r} not installed; have {sorted(have)}")
        return name
    for name in PREFERENCE:
        if name in have and (name != "MOSEK" or _mosek_works()):
            return name
    raise ValueError(f"no SDP-capable cvxpy solver installed (have {sorted(have)})")


def _khatri_rao(U: sp.csr_matrix, W: sp.csr_matrix, n: int) -> sp.csc_matrix:
    """Columns ``vec(U[i]^T W[i])`` (Fortran order: entry ``a + b n`` is ``U[i,a] W[i,b]``)."""
    rows, cols, vals = [], [], []
    for i in range(U.shape[0]):
        ua, uv = U.indices[U.indptr[i]:U.indptr[i + 1]], U.data[U.indptr[i]:U.indptr[i + 1]]
        wb, wv = W.indices[W.indptr[i]:W.indptr[i + 1]], W.data[W.indptr[i]:W.indptr[i + 1]]
        rows.append((ua[:, None] + n * wb[None, :]).ravel())
        vals.append(np.outer(uv, wv).ravel())
        cols.append(np.full(rows[-1].size, i))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
    return sp.csc_matrix((cat(vals, float), (cat(rows, np.int64), cat(cols, np.int64))),
                         shape=(n * n, U.shape[0]))


def sym_columns(qc: QcSystem) -> sp.csc_matrix:
    """``B``: column ``i`` is ``vec(sym(u_i w_i^T))``."""
    n = qc.n
    return ((_khatri_rao(qc.U, qc.W, n) + _khatri_rao(qc.W, qc.U, n)) * 0.5).tocsc()


def objective_map(n: int) -> sp.csc_matrix:
    """``D`` with ``D q = vec(sym(e_0 q^T))``."""
    j = np.arange(n)
    rows = np.concatenate([n * j, j])
    return sp.csc_matrix((np.full(2 * n, 0.5), (rows, np.concatenate([j, j]))), shape=(n * n, n))


def time_limit_options(solver: str, seconds: float) -> dict[str, Any]:
    """The cvxpy keyword that caps ``solver``'s run time at ``seconds``."""
    seconds = max(0.01, float(seconds))
    if solver == "SCS":
        return {"time_limit_secs": seconds}
    if solver == "CLARABEL":
        return {"time_limit": seconds}
    if solver == "MOSEK":
        return {"mosek_params": {"MSK_DPAR_OPTIMIZER_MAX_TIME": seconds}}
    return {}


class DualSdp:
    """The dual SDP of one constraint system, compiled once and solved per objective ``q``."""

    def __init__(self, qc: QcSystem, solver: str, opts: dict[str, Any] | None = None) -> None:
        import cvxpy as cp

        self.qc, self.solver, self.opts = qc, solver, dict(opts or {})
        n = qc.n
        self.B, self.D = sym_columns(qc), objective_map(n)
        self.e00 = sp.csc_matrix(([1.0], ([0], [0])), shape=(n * n, 1))
        self.y, self.t, self.q = cp.Variable(qc.m), cp.Variable(1), cp.Parameter(n)
        vec = self.D @ self.q - self.B @ self.y - self.e00 @ self.t
        self.psd = cp.reshape(vec, (n, n), order="F") >> 0
        cons = [self.psd]
        ineq = np.flatnonzero(~qc.eq)
        if ineq.size:
            cons.append(self.y[ineq] >= 0)
        self.problem = cp.Problem(cp.Maximize(cp.sum(self.t)), cons)
        self.errors = qc.form_errors()
        self.terms = np.diff(self.B.tocsr().indptr) + 6  # rounding terms per entry of vec(M)

    def solve(self, q: np.ndarray, qerr: float, time_limit: float | None = None) -> SolveInfo:
        """Certified lower bound of ``q·v`` (``qerr``: rounding bound of ``q·v``), as a SolveInfo;
        ``time_limit`` (seconds) is passed to the solver (a solve stopped by it is not optimal)."""
        import cvxpy as cp

        self.q.value = q
        start = time.perf_counter()
        opts = dict(self.opts)
        if time_limit is not None:
            opts.update(time_limit_options(self.solver, time_limit))
        try:
            with warnings.catch_warnings():  # an inaccurate status is reported, not warned
                warnings.simplefilter("ignore")
                self.problem.solve(solver=self.solver, **opts)
            status = str(self.problem.status)
        except cp.error.SolverError as exc:
            status = f"error: {exc}"
        info = SolveInfo(self.solver, status, time.perf_counter() - start)
        if status != cp.OPTIMAL or self.t.value is None or self.y.value is None:
            return info
        info.dual_t = float(np.asarray(self.t.value).ravel()[0])
        P = self.psd.dual_value
        if P is not None:
            info.primal = float(q @ np.asarray(P)[:, 0])
        info.bound, info.residuals = certify(self, q, qerr, info.dual_t, np.asarray(self.y.value, float))
        return info


def certify(dual: DualSdp, q: np.ndarray, qerr: float, t: float,
            y: np.ndarray) -> tuple[float, dict[str, float]]:
    """A lower bound of ``q*·v`` on the feasible set, valid in exact arithmetic (docs/sdp.md).

    ``c·f >= t + min(0, lambda_min(M)) R^2 - sum_i |y_i| err_i - qerr`` where ``M`` is the
    exact matrix for the (clipped) multipliers and ``lambda_min`` is bounded from below by the
    float64 eigenvalue minus the rounding of forming ``M`` and of the eigen-solver.
    """
    qc, n = dual.qc, dual.qc.n
    clipped = float(np.max(-y[~qc.eq], initial=0.0))
    y = np.where(qc.eq, y, np.maximum(y, 0.0))
    vec = dual.D @ q - dual.B @ y
    vec[0] -= t
    absum = abs(dual.D) @ np.abs(q) + abs(dual.B) @ np.abs(y)
    absum[0] += abs(t)
    form_err = float(np.linalg.norm(dual.terms * EPS * absum)) * 1.01
    M = vec.reshape(n, n, order="F")
    lam = float(np.linalg.eigvalsh(M)[0])
    eig_err = 64 * n * EPS * float(np.linalg.norm(M)) + form_err
    lam_low = lam - eig_err
    repair = max(0.0, -lam_low) * qc.r2()
    slack = float(np.abs(y) @ dual.errors) + qerr
    bound = t - repair - slack
    bound -= 4 * EPS * (abs(t) + repair + slack)  # rounding of the three subtractions
    res = dict(lambda_min=lam, eig_err=eig_err, repair=repair, form_slack=slack,
               clipped=clipped)
    return bound, res
