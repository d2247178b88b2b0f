"""A dense fast path of :func:`encoders.encoding.encode` for plain chains of fully connected
layers, normalisations, reshapes and ReLUs (ACAS Xu, mnistfc, ERAN's fully connected networks).

The general encoder composes one sparse matrix per node and pays scipy's fixed cost a hundred
times per call: about 10 ms for a six-layer, 50-neuron network, more than the MILP of a small
input-split box takes to solve (median 4 ms on ACAS Xu ``3_3 prop_2``). Here every node's
expression is a dense ``[k, n_vars]`` array while the chain is walked, and each row block is
made sparse once. The walk mirrors :func:`encoders.encoding._relu` step for step (same variables
in the same order, same rows, same blocks), so both encoders give the same model;
``tests/test_chain_encoding.py`` compares them entry by entry.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from encoders.affine import affine_map
from encoders.encoding import Encoding, Expr, ReluBlock, RowBlock, _Builder, _Ctx, relu_phase_bounds, widen
from onnx_models import layers as L
from onnx_models.network import Network

MAX_WIDTH = 1024  # widest node (and input) the dense walk takes; wider chains use the sparse encoder
DENSE_LAYERS = (L.Linear, L.ElementwiseAffine, L.Reshape, L.ReLU)  # (convolutions stay sparse)
_DENSE: weakref.WeakKeyDictionary[L.Layer, dict] = weakref.WeakKeyDictionary()


def chain_nodes(network: Network, last: int) -> bool:
    """Whether nodes ``0..last`` form a chain (each reads the one before it, the first the
    input) of :data:`DENSE_LAYERS`, none wider than :data:`MAX_WIDTH`."""
    if network.n_inputs > MAX_WIDTH:
        return False
    for i, node in enumerate(network.nodes[:last + 1]):
        if list(node.inputs) != [i - 1] or not isinstance(node.layer, DENSE_LAYERS):
            return False
        if int(np.prod(node.out_shape)) > MAX_WIDTH:
            return False
    return True


def encode_chain(network: Network, lower: np.ndarray, upper: np.ndarray, phases: dict[int, Any],
                 intermediate: Any, last: int, check: Callable[[], None] | None = None) -> Encoding:
    """:func:`encoders.encoding.encode` of nodes ``0..last`` of a chain (see
    :func:`chain_nodes`) on the box, without a ball; flat float64 ``lower``/``upper``."""
    walk = _Walk(_Ctx(network, _Builder(), lower, upper, phases, intermediate))
    E, c = None, np.zeros(lower.size)  # None: the identity on the input variables
    walk.b.new_vars(lower, upper)
    for idx in range(last + 1):
        if check is not None:
            check()
        node = network.nodes[idx]
        if isinstance(node.layer, L.ReLU):
            E, c = walk.relu(idx, np.eye(c.size) if E is None else E, c)
        else:
            M, off = _dense_map(node.layer, walk.ctx.in_shape(node.inputs[0]), tuple(node.out_shape))
            E, c = M.copy() if E is None else M @ E, M @ c + off
    ctx, b = walk.ctx, walk.b
    E = np.eye(c.size) if E is None else E
    out = Expr(_csr(_pad(E, b.n)), c)
    return Encoding(np.concatenate(b.lb), np.concatenate(b.ub), b.rows, ctx.relus, [],
                    np.arange(lower.size), out, {}, ctx.pre_bounds, ctx.empty)


def _dense_map(layer: L.Layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~encoders.affine.affine_map` as a dense array (cached per layer and shapes)."""
    key = (tuple(in_shape), tuple(out_shape))
    per_layer = _DENSE.setdefault(layer, {})
    if key not in per_layer:
        M, off = affine_map(layer, in_shape, out_shape)
        per_layer[key] = (M.toarray(), np.asarray(off, np.float64))
    return per_layer[key]


def _pad(E: np.ndarray, n: int) -> np.ndarray:
    """``E`` with ``n`` columns (zeros appended)."""
    if E.shape[1] == n:
        return E
    out = np.zeros((E.shape[0], n))
    out[:, :E.shape[1]] = E
    return out


def _csr(A: np.ndarray) -> sp.csr_matrix:
    """The nonzeros of a dense ``A`` as CSR (without scipy's detour through COO)."""
    rows, cols = np.nonzero(A)
    indptr = np.zeros(A.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=A.shape[0]), out=indptr[1:])
    return sp.csr_matrix((A[rows, cols], cols, indptr), shape=A.shape)


class _Walk:
    """Dense rows of one walk; variables and rows live in the walk's
    :class:`~encoders.encoding._Builder` (``ctx.b``), as in the sparse encoder."""

    def __init__(self, ctx: _Ctx) -> None:
        self.ctx, self.b = ctx, ctx.b

    def add_rows(self, A: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray, kind: str) -> None:
        self.b.rows.append(RowBlock(_csr(A), lo - c, hi - c, kind))

    def relu(self, idx: int, E: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Node ``idx`` (a ReLU) on the input rows ``E v + c``, as in ``encoding._relu``."""
        ctx, b = self.ctx, self.b
        lo, hi, pos, neg = relu_phase_bounds(ctx, idx, c.size)
        if pos.size:
            self.add_rows(E[pos], c[pos], np.zeros(pos.size), np.full(pos.size, np.inf), "phase")
        if neg.size:
            self.add_rows(E[neg], c[neg], np.full(neg.size, -np.inf), np.zeros(neg.size), "phase")
        active = lo >= 0
        unstable = np.nonzero(~active & (hi > 0))[0]
        ctx.pre_bounds[idx] = (lo, hi)
        out, c_out = E * active[:, None], np.where(active, c, 0.0)
        if unstable.size == 0:
            return out, c_out
        lw, hw = widen(lo[unstable], hi[unstable])
        p = b.new_vars(lw, hw)
        A = _pad(E[unstable], b.n)
        A[np.arange(unstable.size), p] -= 1.0
        self.add_rows(A, c[unstable], np.zeros(unstable.size), np.zeros(unstable.size), "def")
        y = b.new_vars(np.zeros(unstable.size), hw)
        ctx.relus.append(ReluBlock(idx, p, y, lw, hw))
        out = _pad(out, b.n)
        out[unstable, y] = 1.0
        return out, c_out
