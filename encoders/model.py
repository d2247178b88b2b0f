"""Lowering of an :class:`~encoders.encoding.Encoding` to a plain LP or MILP.

``lp`` mode: an unstable ReLU becomes its triangle relaxation, a max-pool block the rows
``out >= in_i`` plus ``out <= max_i l_i + sum_i (in_i - l_i)``. ``milp`` mode: big-M rows with
one binary per unstable ReLU (``y >= p``, ``y <= p - l (1 - z)``, ``y <= u z``; ``M`` from the
intermediate bounds) and one binary per max-pool candidate (``sum z = 1``,
``out <= in_i + (U - l_i)(1 - z_i)``). An ℓ2 input ball is carried as ``cone`` (a quadratic
constraint for back ends that have one). A clause ``C y <= d`` adds the variable ``t`` with
rows ``(C y)_i - d_i <= t``; the objective is ``min t``. Rows of kind ``"phase"`` (branching
decisions) are relaxed by ``phase_slack`` so that a solver's "infeasible" is robust.

General-graph blocks: Floor is ``y <= p <= y + 1`` (the closure of the graph) plus the convex
hull's end chords; in ``milp`` mode ``y`` is an integer variable, which makes it exact. Sign is
its convex hull in ``lp`` mode and exact with two binaries in ``milp`` mode (``y = z+ - z-``,
``p <= u z+``, ``p >= l z-``, ``z+ + z- <= 1``). A bilinear block is its McCormick envelope in
both modes (the encoding names it as a relaxation). Hull rows computed in float64 are widened by
:data:`ROW_SLACK` (relative); chords steeper than :data:`MAX_SLOPE` are left out (sound).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from encoders.encoding import Encoding, Expr, resize

ROW_SLACK = 1e-9  # relative widening of right-hand sides of hull and McCormick rows
MAX_SLOPE = 1e6  # hull chords steeper than this are dropped (they only tighten)


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
    ints: list[np.ndarray] = []
    if mode == "lp":
        _relu_triangle(enc, extra)
    else:
        n = _relu_bigm(enc, extra, lb, ub, n)
    n = _maxpool_rows(enc, extra, lb, ub, n, mode == "milp")
    n_bin = n - enc.n_vars
    n = _step_rows(enc, extra, lb, ub, n, mode == "milp", ints)
    _mccormick(enc, extra)
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
        integer[enc.n_vars:enc.n_vars + n_bin] = True
        for cols in ints:
            integer[cols] = True
    obj = np.zeros(n)
    if t is not None:
        obj[t] = 1.0
    return LinearModel(lbs, ubs, integer, sp.vstack(blocks).tocsr(), np.concatenate(los),
                       np.concatenate(his), obj, 0.0, enc.inputs.copy(), t, cone=enc.cone)


def clause_rows(out: Expr, C: np.ndarray, d: np.ndarray, n: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(C A, d - C c)``: the clause ``C y <= d`` over the model variables."""
    A = resize(out.A, n)
    return sp.csr_matrix(C @ A), d - C @ out.c


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


def _step_rows(enc: Encoding, rows: _Rows, lb: list, ub: list, n: int, milp: bool,
               ints: list[np.ndarray]) -> int:
    """Floor and Sign blocks (see the module docstring); returns the new column count."""
    for b in enc.steps:
        if b.kind == "floor":
            _floor_rows(b, rows)
            if milp:
                ints.append(b.post)
            continue
        if not milp:
            _sign_hull(b, rows)
            continue
        k = b.pre.size
        zp, zn = np.arange(n, n + k), np.arange(n + k, n + 2 * k)
        n += 2 * k
        lb += [np.zeros(k), np.zeros(k)]
        ub += [(b.hi > 0).astype(np.float64), (b.lo < 0).astype(np.float64)]
        ints.append(np.concatenate([zp, zn]))
        one, zero = np.ones(k), np.zeros(k)
        rows.add([b.post, zp, zn], [one, -one, one], zero, zero)
        rows.add([b.pre, zp], [one, -b.hi], np.full(k, -np.inf), zero)
        rows.add([b.pre, zn], [one, -b.lo], zero, np.full(k, np.inf))
        rows.add([zp, zn], [one, one], np.full(k, -np.inf), one)
    return n


def _floor_rows(b: Any, rows: _Rows) -> None:
    """``p - 1 <= y <= p`` and the hull's end chords (where not too steep)."""
    k = b.pre.size
    one, inf = np.ones(k), np.full(k, np.inf)
    rows.add([b.post, b.pre], [one, -one], -inf, np.zeros(k))
    rows.add([b.post, b.pre], [one, -one], -one, inf)
    fl, c, fu = np.floor(b.lo), np.ceil(b.lo), np.floor(b.hi)
    left = np.nonzero((c - b.lo > 1 / MAX_SLOPE) & (c <= fu))[0]
    if left.size:  # y <= fl + (p - lo) / (c - lo)
        s = 1 / (c[left] - b.lo[left])
        rhs = fl[left] - b.lo[left] * s
        rhs += ROW_SLACK * (1 + np.abs(fl[left]) + np.abs(b.lo[left] * s))
        rows.add([b.post[left], b.pre[left]], [np.ones(left.size), -s], -inf[left], rhs)
    right = np.nonzero((b.hi - fu > 1 / MAX_SLOPE) & (fu > fl))[0]
    if right.size:  # y >= fu - 1 + (p - fu) / (hi - fu)
        s = 1 / (b.hi[right] - fu[right])
        rhs = fu[right] - 1 - fu[right] * s
        rhs -= ROW_SLACK * (1 + np.abs(fu[right]) + np.abs(fu[right] * s))
        rows.add([b.post[right], b.pre[right]], [np.ones(right.size), -s], rhs, inf[right])


def _sign_hull(b: Any, rows: _Rows) -> None:
    """The convex hull of sign on ``[l, u]``: ``y <= 1 - 2p/l`` (or ``-p/l``) and
    ``y >= -1 + 2p/u`` (or ``p/u``), the steep ones left out."""
    neg, pos = b.lo < -1 / MAX_SLOPE, b.hi > 1 / MAX_SLOPE
    up = np.nonzero(neg)[0]
    if up.size:  # the hull's upper side through (l, -1) and (0, 1) (or (0, 0) when u <= 0)
        top = np.where(b.hi[up] > 0, 1.0, 0.0)
        w = (top + 1) / b.lo[up]
        rows.add([b.post[up], b.pre[up]], [np.ones(up.size), w], np.full(up.size, -np.inf),
                 top + ROW_SLACK * (1 + top))
    down = np.nonzero(pos)[0]
    if down.size:  # the lower side through (0, -1) (or (0, 0) when l >= 0) and (u, 1)
        bot = np.where(b.lo[down] < 0, -1.0, 0.0)
        w = (1 - bot) / b.hi[down]
        rows.add([b.post[down], b.pre[down]], [np.ones(down.size), -w],
                 bot - ROW_SLACK * (1 + np.abs(bot)), np.full(down.size, np.inf))


def _mccormick(enc: Encoding, rows: _Rows) -> None:
    """The four McCormick planes of every product ``w = x y``."""
    for b in enc.bilinear:
        k = b.out.size
        one, inf = np.ones(k), np.full(k, np.inf)
        s = ROW_SLACK * (1 + np.maximum(np.abs(b.xl), np.abs(b.xu)) * np.maximum(np.abs(b.yl), np.abs(b.yu)))
        for xa, ya, lower_side in ((b.xl, b.yl, True), (b.xu, b.yu, True), (b.xu, b.yl, False),
                                   (b.xl, b.yu, False)):
            # w >= (or <=) xa*y + ya*x - xa*ya
            rhs = -xa * ya
            lo, hi = (rhs - s, inf) if lower_side else (-inf, rhs + s)
            rows.add([b.out, b.y, b.x], [one, -xa, -ya], lo, hi)
