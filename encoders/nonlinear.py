"""Solver encodings of the general-graph layers that are not plain affine maps.

- Concat (several inputs): the operands' expressions stacked in the concatenated order
  (:func:`encoders.affine.concat_index`), exact.
- Floor, Sign: a :class:`~encoders.encoding.StepBlock` per non-constant neuron (exact in MILP
  and Z3, convex hull in LP; see :mod:`encoders.model`); constant neurons are constants.
- Sigmoid, Tanh and every other layer of ``relax.UNARY``: the input gets variables ``p``, the
  output variables ``y`` bounded by the node's sound interval, tied by the CROWN lines
  ``lw p + lb <= y <= uw p + ub`` (computed in float64 on the widened input interval, the
  intercepts widened by the relaxation itself). Rows of kind ``"relax"``.
- Mul, MatMul: both operands become variables; each scalar product gets a variable in a
  :class:`~encoders.encoding.BilinearBlock` (McCormick rows in LP/MILP, the exact product in
  Z3); MatMul sums the products ``a[.., i, t] * b[.., t, j]`` over ``t``.
- Softmax: ``s_i = 1 / sum_j exp(x_j - x_i)`` with the Exp and Reciprocal relaxations of
  ``relax.UNARY`` on the differences' intervals, plus the exact row ``sum_i s_i = 1``.

Every relaxed node is named in the encoding's ``relaxed`` list (and ``smt_relaxed`` when Z3
cannot take it exactly either).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from encoders.affine import concat_index
from encoders.encoding import (BilinearBlock, Expr, StepBlock, UnsupportedNetwork, _Ctx, resize,
                               widen)
from onnx_models import layers as L

ROW_SLACK = 1e-9  # relative widening of hull-row right-hand sides computed in float64


def unary_table() -> dict[type, Any]:
    """``relax.UNARY`` with every rule module registered."""
    from bab.bounding.polyhedra import graph_ops  # noqa: F401  (registers the elementwise rules)
    from bab.bounding.polyhedra.relax import UNARY

    return UNARY


def supported(layer: L.Layer) -> bool:
    """Whether :func:`encode_node` has an encoding for this (non-affine) layer."""
    return isinstance(layer, (L.Concat, L.Floor, L.Sign, L.Mul, L.MatMul, L.Softmax)) \
        or type(layer) in unary_table()


def encode_node(ctx: _Ctx, idx: int, args: list[Expr]) -> Expr:
    """The expression of node ``idx`` (its operands' expressions ``args``)."""
    layer = ctx.network.nodes[idx].layer
    if isinstance(layer, L.Concat):
        return _concat(ctx, idx, args)
    if isinstance(layer, (L.Floor, L.Sign)):
        return _step(ctx, idx, args[0])
    if isinstance(layer, L.Mul):
        return _mul(ctx, idx, args)
    if isinstance(layer, L.MatMul):
        return _matmul(ctx, idx, args)
    if isinstance(layer, L.Softmax):
        return _softmax(ctx, idx, args[0])
    if type(layer) in unary_table():
        return _unary(ctx, idx, args[0])
    raise UnsupportedNetwork(
        f"{layer.kind} (node {idx}) cannot be encoded for the LP/MILP/SMT solvers (no exact "
        "encoding and no registered relaxation)")


def _name(ctx: _Ctx, idx: int) -> str:
    return f"{ctx.network.nodes[idx].layer.kind} (node {idx})"


def _in_bounds(ctx: _Ctx, idx: int, k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return widen(*ctx.bounds(ctx.network.nodes[idx].inputs[k]))


def _concat(ctx: _Ctx, idx: int, args: list[Expr]) -> Expr:
    node = ctx.network.nodes[idx]
    perm = concat_index(node.layer, [ctx.in_shape(j) for j in node.inputs])
    n = ctx.b.n
    A = sp.vstack([resize(a.A, n) for a in args]).tocsr()[perm]
    return Expr(A.tocsr(), np.concatenate([a.c for a in args])[perm])


# --- step functions ---------------------------------------------------------------------------

def _step(ctx: _Ctx, idx: int, pre: Expr) -> Expr:
    """Constant neurons are constants; the others get ``p``/``y`` variables and a block."""
    b, n = ctx.b, pre.c.size
    lo, hi = _in_bounds(ctx, idx)
    floor = isinstance(ctx.network.nodes[idx].layer, L.Floor)
    ylo, yhi = (np.floor(lo), np.floor(hi)) if floor else (np.sign(lo), np.sign(hi))
    const = ylo == yhi
    c = np.where(const, ylo, 0.0)
    nc = np.nonzero(~const)[0]
    if nc.size == 0:
        return Expr(sp.csr_matrix((n, b.n)), c)
    p = b.materialise(pre.rows(nc), lo[nc], hi[nc])
    y = b.new_vars(ylo[nc], yhi[nc])
    ctx.steps.append(StepBlock(idx, "floor" if floor else "sign", p, y, lo[nc], hi[nc]))
    return Expr(sp.csr_matrix((np.ones(nc.size), (nc, y)), shape=(n, b.n)), c)


# --- relaxed elementwise nonlinearities -------------------------------------------------------

def _lines(layer: L.Layer, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(lw, lb, uw, ub)`` of ``relax.UNARY`` on ``[lo, hi]`` in float64 (raises on refusal)."""
    from bab.bounding.base import BounderRefusal

    l, u = torch.as_tensor(lo, dtype=torch.float64)[None], torch.as_tensor(hi, dtype=torch.float64)[None]
    try:
        r = unary_table()[type(layer)](layer, l, u)
    except BounderRefusal as exc:
        raise UnsupportedNetwork(str(exc)) from exc
    zero = torch.zeros_like(l)
    out = tuple((zero if t is None else t).detach().double().reshape(-1).numpy()
                for t in (r.lw, r.lb, r.uw, r.ub))
    if not all(np.isfinite(t).all() for t in out):
        raise UnsupportedNetwork(f"{layer.kind}: its relaxation is not finite on the input interval")
    return out


def _line_rows(ctx: _Ctx, p: np.ndarray, y: np.ndarray, lines: tuple[np.ndarray, ...]) -> None:
    """Rows ``lw p + lb <= y <= uw p + ub`` (kind ``"relax"``)."""
    lw, lb, uw, ub = lines
    k = p.size
    r = np.concatenate([np.arange(k), np.arange(k)])
    for w, lo, hi in ((lw, lb, np.full(k, np.inf)), (uw, np.full(k, -np.inf), ub)):
        A = sp.csr_matrix((np.concatenate([np.ones(k), -w]), (r, np.concatenate([y, p]))),
                          shape=(k, ctx.b.n))
        ctx.b.add_rows(Expr(A, np.zeros(k)), lo, hi, "relax")


def relaxed_unary(ctx: _Ctx, layer: L.Layer, pre: Expr, lo0: np.ndarray, hi0: np.ndarray,
                  olo: np.ndarray, ohi: np.ndarray) -> np.ndarray:
    """Variables ``y ~ layer(pre)`` from the relaxation on ``[lo0, hi0]`` widened (unwidened
    when the widened interval leaves the op's domain); ``y`` bounded by ``[olo, ohi]``."""
    lo, hi = widen(lo0, hi0)
    try:
        lines = _lines(layer, lo, hi)
    except UnsupportedNetwork:
        lo, hi = lo0, hi0
        lines = _lines(layer, lo, hi)
    p = ctx.b.materialise(pre, lo, hi)
    y = ctx.b.new_vars(olo, ohi)
    _line_rows(ctx, p, y, lines)
    return y


def _unary(ctx: _Ctx, idx: int, pre: Expr) -> Expr:
    layer = ctx.network.nodes[idx].layer
    lo, hi = ctx.bounds(ctx.network.nodes[idx].inputs[0])
    try:
        y = relaxed_unary(ctx, layer, pre, lo, hi, *widen(*ctx.bounds(idx)))
    except UnsupportedNetwork as exc:
        raise UnsupportedNetwork(f"{_name(ctx, idx)}: {exc}") from exc
    ctx.relaxed.append(_name(ctx, idx))
    ctx.smt_relaxed.append(_name(ctx, idx))
    return ctx.b.unit(y)


# --- products ---------------------------------------------------------------------------------

def corner_bounds(xl: np.ndarray, xu: np.ndarray, yl: np.ndarray,
                  yu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interval of ``x * y`` (widened against rounding)."""
    c = np.stack([xl * yl, xl * yu, xu * yl, xu * yu])
    return widen(c.min(0), c.max(0))


def products(ctx: _Ctx, idx: int, x: np.ndarray, y: np.ndarray, bx: tuple, by: tuple) -> np.ndarray:
    """Variables ``w = x * y`` (entrywise over index arrays) in a bilinear block."""
    xl, xu = bx
    yl, yu = by
    w = ctx.b.new_vars(*corner_bounds(xl, xu, yl, yu))
    ctx.bilinear.append(BilinearBlock(idx, x, y, w, xl, xu, yl, yu))
    return w


def _mul(ctx: _Ctx, idx: int, args: list[Expr]) -> Expr:
    bx, by = _in_bounds(ctx, idx, 0), _in_bounds(ctx, idx, 1)
    x = ctx.b.materialise(args[0], *bx)
    y = ctx.b.materialise(args[1], *by)
    w = products(ctx, idx, x, y, bx, by)
    olo, ohi = widen(*ctx.bounds(idx))
    ctx.b.lb[-1] = np.maximum(ctx.b.lb[-1], olo)  # the node's own bounds, where tighter
    ctx.b.ub[-1] = np.minimum(ctx.b.ub[-1], ohi)
    ctx.relaxed.append(_name(ctx, idx))
    return ctx.b.unit(w)


def _matmul(ctx: _Ctx, idx: int, args: list[Expr]) -> Expr:
    """``a [.., m, k] @ b [.., k, n]``: one product variable per ``(.., i, j, t)``."""
    node = ctx.network.nodes[idx]
    sa, sb = ctx.in_shape(node.inputs[0]), ctx.in_shape(node.inputs[1])
    if len(sa) < 2 or len(sb) < 2 or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise UnsupportedNetwork(f"{_name(ctx, idx)}: operand shapes {sa} and {sb} (the solvers "
                                 "take [.., m, k] @ [.., k, n] with equal leading axes)")
    bs, m, k, n = math.prod(sa[:-2]), sa[-2], sa[-1], sb[-1]
    B, i, j, t = np.meshgrid(np.arange(bs), np.arange(m), np.arange(n), np.arange(k), indexing="ij")
    ia = (B * m * k + i * k + t).reshape(-1)
    ib = (B * k * n + t * n + j).reshape(-1)
    io = (B * m * n + i * n + j).reshape(-1)
    bx, by = _in_bounds(ctx, idx, 0), _in_bounds(ctx, idx, 1)
    x = ctx.b.materialise(args[0], *bx)
    y = ctx.b.materialise(args[1], *by)
    w = products(ctx, idx, x[ia], y[ib], (bx[0][ia], bx[1][ia]), (by[0][ib], by[1][ib]))
    n_out = bs * m * n
    out = Expr(sp.csr_matrix((np.ones(w.size), (io, w)), shape=(n_out, ctx.b.n)), np.zeros(n_out))
    ctx.b.add_rows(out, *widen(*ctx.bounds(idx)), "relax")  # the node's own interval
    ctx.relaxed.append(_name(ctx, idx))
    return out


# --- softmax ----------------------------------------------------------------------------------

def _softmax(ctx: _Ctx, idx: int, pre: Expr) -> Expr:
    """``s_i = 1 / sum_j exp(x_j - x_i)`` per softmax row, relaxed, with ``sum_i s_i = 1``."""
    node = ctx.network.nodes[idx]
    shape = ctx.in_shape(node.inputs[0])
    axis = node.layer.axis % len(shape)
    pos = np.moveaxis(np.arange(math.prod(shape)).reshape(shape), axis, -1).reshape(-1, shape[axis])
    lo, hi = ctx.bounds(node.inputs[0])
    olo, ohi = widen(*ctx.bounds(idx))
    table = unary_table()
    if L.Exp not in table or L.Reciprocal not in table:
        raise UnsupportedNetwork(f"{_name(ctx, idx)}: needs the Exp and Reciprocal relaxations")
    out_vars = np.empty(pos.size, np.int64)
    for row in pos:
        out_vars[row] = _softmax_row(ctx, pre, row, lo, hi, olo[row], ohi[row])
    ctx.relaxed.append(_name(ctx, idx))
    ctx.smt_relaxed.append(_name(ctx, idx))
    return ctx.b.unit(out_vars)


def _softmax_row(ctx: _Ctx, pre: Expr, row: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 olo: np.ndarray, ohi: np.ndarray) -> np.ndarray:
    """Output variables of one softmax row (inputs ``row``)."""
    d = row.size
    I, J = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
    off = I != J
    I, J = I[off], J[off]  # the terms exp(x_j - x_i), j != i (the j == i term is 1)
    diff = Expr((pre.A[row[J]] - pre.A[row[I]]).tocsr(), pre.c[row[J]] - pre.c[row[I]])
    e = relaxed_unary(ctx, L.Exp(), diff, lo[row[J]] - hi[row[I]], hi[row[J]] - lo[row[I]],
                      *widen(np.exp(lo[row[J]] - hi[row[I]]) * (1 - 1e-12),
                             np.exp(hi[row[J]] - lo[row[I]]) * (1 + 1e-12)))
    S = sp.csr_matrix((np.ones(e.size), (I, e)), shape=(d, ctx.b.n))
    s_lo = 1.0 + np.bincount(I, ctx.b.lb[-1], d)
    s_hi = 1.0 + np.bincount(I, ctx.b.ub[-1], d)
    y = relaxed_unary(ctx, L.Reciprocal(), Expr(S, np.ones(d)), np.maximum(s_lo, 1.0), s_hi,
                      np.maximum(olo, 0.0), np.minimum(ohi, 1.0 + 1e-9))
    total = sp.csr_matrix((np.ones(d), (np.zeros(d, np.int64), y)), shape=(1, ctx.b.n))
    slack = ROW_SLACK * d
    ctx.b.add_rows(Expr(total, np.zeros(1)), np.array([1.0 - slack]), np.array([1.0 + slack]), "relax")
    return y
