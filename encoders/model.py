"""Lowering of an :class:`~encoders.encoding.Encoding` to a plain LP or MILP.

``lp`` mode: an unstable ReLU becomes its triangle relaxation, a max-pool block the rows
``out >= in_i`` plus ``out <= max_i l_i + sum_i (in_i - l_i)``. ``milp`` mode: big-M rows with
one binary per unstable ReLU (``y >= p``, ``y <= p - l (1 - z)``, ``y <= u z``; ``M`` from the
intermediate bounds) and one binary per max-pool candidate (``sum z = 1``,
``out <= in_i + (U - l_i)(1 - z_i)``). An ℓ2 input ball is carried as ``cone`` (a quadratic
constraint for back ends that have one). A clause ``C y <= d`` adds the variable ``t`` with
rows ``(C y)_i - d_i <= t``; the objective is ``min t``. Rows of kind ``"phase"`` (branching
decisions) are relaxed by ``phase_slack`` so that a solver's "infeasible" is robust.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from encoders.encoding import Encoding, Expr, resize


@dataclass
class LinearModel:
    """``min obj·v + obj_const`` s.t. ``row_lo <= A v <= row_hi``, ``lb <= v <= ub``."""

    lb: np.ndarray
    ub: np.ndarray
    integer: np.ndarray
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    obj: np.ndarray
    obj_const: float = 0.0
    inputs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    t: int | None = None
    obj_stop: float | None = None  # stop as soon as a point this good is found
    cone: tuple[np.ndarray, np.ndarray, float] | None = None  # ||v[idx] - c||_2 <= r (ℓ2 ball)

    @property
    def n_vars(self) -> int:
        return int(self.lb.size)

    @property
    def n_rows(self) -> int:
        return int(self.A.shape[0])

    @property
    def is_mip(self) -> bool:
        return bool(self.integer.any())


class _Rows:
    """Rows collected as COO triplets."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.m = 0

    def add(self, cols: list[np.ndarray], vals: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> None:
        """``k`` rows; term ``j`` of row ``i`` is ``vals[j][i] * v[cols[j][i]]``."""
        k = lo.size
        rows = np.arange(self.m, self.m + k)
        for col, val in zip(cols, vals):
            self.r.append(rows)
            self.c.append(np.asarray(col, np.int64))
            self.v.append(np.broadcast_to(np.asarray(val, np.float64), (k,)))
        self.lo.append(lo)
        self.hi.append(hi)
        self.m += k

    def add_ragged(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray) -> None:
        """Rows given as triplets with local row numbers ``0..len(lo)-1``."""
        self.r.append(rows + self.m)
        self.c.append(cols)
        self.v.append(vals)
        self.lo.append(lo)
        self.hi.append(hi)
        self.m += lo.size

    def matrix(self, n: int) -> sp.csr_matrix:
        if not self.r:
            return sp.csr_matrix((0, n))
        return sp.csr_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                             shape=(self.m, n))


def lower(enc: Encoding, mode: str, C: np.ndarray | None = None, d: np.ndarray | None = None,
          t_bounds: tuple[float, float] = (-np.inf, np.inf), phase_slack: float = 0.0) -> LinearModel:
    """The LP (``mode="lp"``) or MILP (``"milp"``) of ``enc``, with clause rows when ``C`` is given."""
    if mode not in ("lp", "milp"):
        raise ValueError(f"mode must be 'lp' or 'milp', got {mode!r}")
    lb, ub = [enc.lb], [enc.ub]
    n = enc.n_vars
    extra = _Rows()
    if mode == "lp":
        _relu_triangle(enc, extra)
    else:
        n = _relu_bigm(enc, extra, lb, ub, n)
    n = _maxpool_rows(enc, extra, lb, ub, n, mode == "milp")
    t = None
    if C is not None:
        t, n = n, n + 1
        lb.append(np.array([t_bounds[0]]))
        ub.append(np.array([t_bounds[1]]))
    blocks = [resize(b.A, n) for b in enc.rows]
    los = [b.lo - (phase_slack if b.kind == "phase" else 0.0) for b in enc.rows]
    his = [b.hi + (phase_slack if b.kind == "phase" else 0.0) for b in enc.rows]
    blocks.append(extra.matrix(n))
    los += extra.lo
    his += extra.hi
    if C is not None:
        A_c, rhs = clause_rows(enc.output, np.asarray(C, np.float64), np.asarray(d, np.float64), n)
        tcol = sp.csr_matrix((-np.ones(rhs.size), (np.arange(rhs.size), np.full(rhs.size, t))), shape=(rhs.size, n))
        blocks.append((A_c + tcol).tocsr())
        los.append(np.full(rhs.size, -np.inf))
        his.append(rhs)
    lbs, ubs = np.concatenate(lb), np.concatenate(ub)
    los.append(np.zeros(0))
    his.append(np.zeros(0))
    integer = np.zeros(n, bool)
    if mode == "milp":
        integer[enc.n_vars:enc.n_vars + _n_binaries(enc)] = True
    obj = np.zeros(n)
    if t is not None:
        obj[t] = 1.0
    return LinearModel(lbs, ubs, integer, sp.vstack(blocks).tocsr(), np.concatenate(los),
                       np.concatenate(his), obj, 0.0, enc.inputs.copy(), t, cone=enc.cone)


def clause_rows(out: Expr, C: np.ndarray, d: np.ndarray, n: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(C A, d - C c)``: the clause ``C y <= d`` over the model variables."""
    A = resize(out.A, n)
    return sp.csr_matrix(C @ A), d - C @ out.c


def _n_binaries(enc: Encoding) -> int:
    return sum(b.pre.size for b in enc.relus) + sum(m.ins.size for m in enc.maxes)


def _relu_triangle(enc: Encoding, rows: _Rows) -> None:
    for b in enc.relus:
        k = b.pre.size
        rows.add([b.post, b.pre], [np.ones(k), -np.ones(k)], np.zeros(k), np.full(k, np.inf))
        s = b.hi / (b.hi - b.lo)
        rows.add([b.post, b.pre], [np.ones(k), -s], np.full(k, -np.inf), -s * b.lo)


def _relu_bigm(enc: Encoding, rows: _Rows, lb: list, ub: list, n: int) -> int:
    for b in enc.relus:
        k = b.pre.size
        z = np.arange(n, n + k)
        n += k
        lb.append(np.zeros(k))
        ub.append(np.ones(k))
        one = np.ones(k)
        rows.add([b.post, b.pre], [one, -one], np.zeros(k), np.full(k, np.inf))
        rows.add([b.post, b.pre, z], [one, -one, -b.lo], np.full(k, -np.inf), -b.lo)
        rows.add([b.post, z], [one, -b.hi], np.full(k, -np.inf), np.zeros(k))
    return n


def _maxpool_rows(enc: Encoding, rows: _Rows, lb: list, ub: list, n: int, milp: bool) -> int:
    for m in enc.maxes:
        k = m.ins.size
        out = np.full(k, m.out)
        one = np.ones(k)
        rows.add([out, m.ins], [one, -one], np.zeros(k), np.full(k, np.inf))
        cols = np.concatenate([[m.out], m.ins])
        vals = np.concatenate([[1.0], -one])
        rows.add_ragged(np.zeros(k + 1, np.int64), cols, vals, np.array([-np.inf]),
                        np.array([m.lo.max() - m.lo.sum()]))
        if milp:
            z = np.arange(n, n + k)
            n += k
            lb.append(np.zeros(k))
            ub.append(np.ones(k))
            big = m.hi.max() - m.lo
            rows.add([out, m.ins, z], [one, -one, big], np.full(k, -np.inf), big)
            rows.add_ragged(np.zeros(k, np.int64), z, one, np.ones(1), np.ones(1))
    return n
