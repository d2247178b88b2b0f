"""Z3 back end: the same encoding decided exactly over the reals.

Every float64 coefficient and bound becomes the exact rational it denotes
(``fractions.Fraction``), an unstable ReLU becomes ``y == If(p >= 0, p, 0)``, a max-pool
block ``out >= in_i`` plus ``Or(out == in_i)``, Floor ``y == ToInt(p)``, Sign nested ``If``
terms and a product ``w == x * y`` (nonlinear real arithmetic: then the general solver runs
instead of ``QF_LRA``; only tiny models finish). Relaxation rows of transcendental ops (kind
``"relax"``) stay linear rows: Z3 then decides the relaxation, so ``sat`` needs the replay
(``Encoding.smt_relaxed`` names them). Rows of kind ``"phase"`` are kept exact (no
slack), so ``unsat`` is exact for the encoded (float64) network. Z3's ``timeout`` parameter
carries the time limit; ``unknown`` maps to ``limit``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp

from encoders.backends import SolveResult
from encoders.encoding import Encoding
from encoders.model import clause_rows


def _q(z3: Any, v: float) -> Any:
    f = Fraction(float(v))
    return z3.RealVal(f"{f.numerator}/{f.denominator}")


def _terms(z3: Any, X: list[Any], A: sp.csr_matrix, i: int) -> Any:
    s, e = A.indptr[i], A.indptr[i + 1]
    parts = [_q(z3, a) * X[j] for j, a in zip(A.indices[s:e], A.data[s:e]) if a != 0.0]
    return z3.Sum(parts) if parts else z3.RealVal(0)


def _rows(z3: Any, solver: Any, X: list[Any], A: sp.csr_matrix, lo: np.ndarray, hi: np.ndarray,
          check: Callable[[], None] | None = None) -> None:
    for i in range(A.shape[0]):
        if check is not None and i % 256 == 0:
            check()
        e = _terms(z3, X, A, i)
        if lo[i] == hi[i]:
            solver.add(e == _q(z3, lo[i]))
            continue
        if np.isfinite(lo[i]):
            solver.add(e >= _q(z3, lo[i]))
        if np.isfinite(hi[i]):
            solver.add(e <= _q(z3, hi[i]))


def build(enc: Encoding, C: np.ndarray, d: np.ndarray, strict_margin: float = 0.0,
          check: Callable[[], None] | None = None) -> tuple[Any, list[Any]]:
    """A Z3 solver holding the encoding and the clause ``C y <= d - strict_margin``.

    ``check`` is called now and then while the (Python-side) construction runs.
    """
    import z3

    solver = z3.SolverFor("QF_LRA") if not (enc.steps or enc.bilinear) else z3.Solver()
    X = [z3.Real(f"v{i}") for i in range(enc.n_vars)]
    for v, lo, hi in zip(X, enc.lb, enc.ub):
        if np.isfinite(lo):
            solver.add(v >= _q(z3, lo))
        if np.isfinite(hi):
            solver.add(v <= _q(z3, hi))
    for block in enc.rows:
        _rows(z3, solver, X, block.A.tocsr(), block.lo, block.hi, check)
    for b in enc.relus:
        for p, y in zip(b.pre, b.post):
            solver.add(X[y] == z3.If(X[p] >= 0, X[p], z3.RealVal(0)))
    for m in enc.maxes:
        ins = [X[i] for i in m.ins]
        solver.add(*[X[m.out] >= v for v in ins])
        solver.add(z3.Or(*[X[m.out] == v for v in ins]))
    _general_blocks(z3, solver, X, enc)
    A, rhs = clause_rows(enc.output, np.asarray(C, np.float64), np.asarray(d, np.float64), enc.n_vars)
    _rows(z3, solver, X, A, np.full(rhs.size, -np.inf), rhs - strict_margin)
    return solver, X


def _general_blocks(z3: Any, solver: Any, X: list[Any], enc: Encoding) -> None:
    """Floor, Sign and products, exactly."""
    one, zero = z3.RealVal(1), z3.RealVal(0)
    for b in enc.steps:
        for p, y in zip(b.pre, b.post):
            if b.kind == "floor":
                solver.add(X[y] == z3.ToReal(z3.ToInt(X[p])))
            else:
                solver.add(X[y] == z3.If(X[p] > 0, one, z3.If(X[p] < 0, -one, zero)))
    for b in enc.bilinear:
        for x, y, w in zip(b.x, b.y, b.out):
            solver.add(X[w] == X[x] * X[y])


def solve(enc: Encoding, C: np.ndarray, d: np.ndarray, time_limit: float,
          strict_margin: float = 0.0, check: Callable[[], None] | None = None) -> SolveResult:
    """``infeasible`` (exact), ``feasible`` with the input point, or ``limit``."""
    import z3

    if enc.empty:
        return SolveResult("infeasible", backend="z3")
    if enc.cone is not None:
        return SolveResult("error", backend="z3", message="z3 (linear real arithmetic) cannot handle an ℓ2 ball")
    t0 = time.monotonic()
    solver, X = build(enc, C, d, strict_margin, check)
    left = time_limit - (time.monotonic() - t0)
    if left <= 0:
        return SolveResult("limit", backend="z3", message="time limit while building")
    solver.set("timeout", int(max(1, 1000 * left)))
    res = solver.check()
    if res == z3.unsat:
        return SolveResult("infeasible", backend="z3")
    if res == z3.sat:
        model = solver.model()
        x = np.array([_to_float(model.eval(X[i], model_completion=True)) for i in enc.inputs])
        return SolveResult("feasible", x=x, backend="z3")
    return SolveResult("limit", backend="z3", message=str(solver.reason_unknown()))


def _to_float(v: Any) -> float:
    if hasattr(v, "as_fraction"):
        return float(v.as_fraction())
    return float(v.as_decimal(30).rstrip("?"))
