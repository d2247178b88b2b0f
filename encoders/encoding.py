"""Solver-neutral encoding of a network on one sub-domain (input box + fixed ReLU phases).

Every node's output is an affine expression ``A v + c`` over the model variables ``v``
(:class:`Expr`). Affine and shape layers compose sparse maps (:mod:`encoders.affine`) without
new variables; a residual ``Add`` sums expressions. A stable ReLU is its input expression
(active) or zero (inactive); an unstable one gets a pre-activation variable ``p`` (bounded by
its intermediate bounds, tied to its expression by an equality row) and an output variable
``y`` with the nonlinear constraint ``y = max(p, 0)`` kept abstract in a :class:`ReluBlock`.
Max-pool outputs with several candidates get a :class:`MaxBlock`. The LP/MILP lowering
(:mod:`encoders.model`) and Z3 (:mod:`encoders.smt`) turn the blocks into triangles, big-M
rows or ``If`` terms.

General graphs (:mod:`encoders.nonlinear`): Gather, ReduceSum, ConvTranspose2d and Concat are
exact affine maps. Floor and Sign get a :class:`StepBlock` (exact in MILP and Z3, convex hull
in LP). Sigmoid, Tanh, the elementwise ops of ``relax.UNARY`` and Softmax are encoded by their
sound linear relaxation (rows of kind ``"relax"``), Mul and MatMul by McCormick rows in LP/MILP
(a :class:`BilinearBlock`, exact products in Z3). Every relaxed node is named in
:attr:`Encoding.relaxed`: a solver point is then only a candidate, never a proof of ``sat``,
while an infeasible relaxation is still a proof.

An l_p input ball (``ball``: anything with ``center``, ``eps``, ``p``, e.g. a
:class:`vnnlib.spec.Ball`) intersects the box: ℓ∞ needs nothing (the box is exact), ℓ1 adds
variables ``t_i >= |x_i - x0_i|`` (two rows each) and the row ``Σ t_i <= eps``, ℓ2 is kept as a
second-order cone ``||x - x0||_2 <= eps`` (:attr:`Encoding.cone`) that only back ends with
quadratic constraints (Gurobi) accept. Radii are widened by :data:`BALL_SLACK` (relative) so
that a solver's "infeasible" stays a proof under its tolerances.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from encoders.affine import AFFINE, affine_map, maxpool_windows
from onnx_models import layers as L
from onnx_models.network import Network

BOUND_SLACK = 1e-9  # relative widening of intermediate bounds (float rounding of the bounders)
BALL_SLACK = 1e-9  # relative widening of ball radii
Bounds = dict[int, tuple[Any, Any]]


class UnsupportedNetwork(ValueError):
    """The network has a layer the solvers cannot encode (the message names it and why)."""


@dataclass
class Expr:
    """Rows ``A @ v + c`` (``A``: CSR ``[k, n_cols]``; columns grow as variables are added)."""

    A: sp.csr_matrix
    c: np.ndarray

    def rows(self, idx: np.ndarray) -> Expr:
        """The sub-expression of the selected rows."""
        return Expr(self.A[idx], self.c[idx])


@dataclass
class RowBlock:
    """Linear rows ``lo <= A v <= hi``; ``kind``: ``"def"`` (exact) or ``"phase"`` (a split)."""

    A: sp.csr_matrix
    lo: np.ndarray
    hi: np.ndarray
    kind: str = "def"


@dataclass
class ReluBlock:
    """Unstable neurons of one ReLU node: ``post = max(pre, 0)`` with ``pre`` in ``[lo, hi]``."""

    node: int
    pre: np.ndarray
    post: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass
class MaxBlock:
    """``out = max(ins)`` with the inputs' bounds ``[lo, hi]``."""

    out: int
    ins: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass
class StepBlock:
    """``post = step(pre)`` for ``kind`` ``"floor"`` or ``"sign"``, ``pre`` in ``[lo, hi]``
    (the closure of the graph: ``floor`` may take ``p - 1`` at an integer ``p``)."""

    node: int
    kind: str
    pre: np.ndarray
    post: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass
class BilinearBlock:
    """``out = x * y`` per entry, with ``x`` in ``[xl, xu]`` and ``y`` in ``[yl, yu]``."""

    node: int
    x: np.ndarray
    y: np.ndarray
    out: np.ndarray
    xl: np.ndarray
    xu: np.ndarray
    yl: np.ndarray
    yu: np.ndarray


@dataclass
class Encoding:
    """The whole sub-domain: variables, linear rows, nonlinear blocks and the output."""

    lb: np.ndarray
    ub: np.ndarray
    rows: list[RowBlock]
    relus: list[ReluBlock]
    maxes: list[MaxBlock]
    inputs: np.ndarray
    output: Expr
    nodes: dict[int, Expr] = field(default_factory=dict)
    pre_bounds: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    empty: bool = False
    cone: tuple[np.ndarray, np.ndarray, float] | None = None  # ℓ2 ball: (input vars, centre, radius)
    steps: list[StepBlock] = field(default_factory=list)
    bilinear: list[BilinearBlock] = field(default_factory=list)
    relaxed: list[str] = field(default_factory=list)  # nodes relaxed in LP/MILP ("Sigmoid (node 3)")
    smt_relaxed: list[str] = field(default_factory=list)  # ... and in Z3 (transcendental ops)

    @property
    def exact(self) -> bool:
        """Whether the MILP of this encoding is the network itself (no relaxed node)."""
        return not self.relaxed

    @property
    def n_vars(self) -> int:
        """Number of continuous variables (binaries are added by the MILP lowering)."""
        return int(self.lb.size)

    @property
    def n_unstable(self) -> int:
        """Unstable ReLU neurons, max-pool outputs with several candidates, non-constant step
        neurons and bilinear products (0: the encoding is one LP)."""
        return (sum(b.pre.size for b in self.relus) + len(self.maxes)
                + sum(b.pre.size for b in self.steps) + sum(b.out.size for b in self.bilinear))


def widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds widened by :data:`BOUND_SLACK` (relative) against the bounders' rounding."""
    return lo - BOUND_SLACK * (1 + np.abs(lo)), hi + BOUND_SLACK * (1 + np.abs(hi))


def resize(A: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """``A`` with ``n`` columns (only ever grows)."""
    if A.shape[1] == n:
        return A
    return sp.csr_matrix((A.data, A.indices, A.indptr), shape=(A.shape[0], n))


_F64: weakref.WeakKeyDictionary[Network, Network] = weakref.WeakKeyDictionary()


def float64_network(network: Network) -> Network:
    """A float64 CPU copy of ``network`` (cached; the network itself if it already is one)."""
    p = next((t for n in network.nodes for t in n.layer.tensors().values()), None)
    if p is None or (p.dtype == torch.float64 and p.device.type == "cpu"):
        return network
    if network not in _F64:
        _F64[network] = copy.deepcopy(network).to(dtype=torch.float64, device="cpu")
    return _F64[network]


def interval_bounds(network: Network, lower: np.ndarray, upper: np.ndarray,
                    phases: dict[int, Any] | None = None) -> Bounds:
    """IBP bounds (float64) of every node's output, honouring fixed phases."""
    from bab.bounding.base import Domains
    from bab.bounding.interval.ibp import propagate

    net = float64_network(network)
    ph = {k: torch.as_tensor(np.asarray(v)).reshape(1, *net.nodes[k].out_shape)
          for k, v in (phases or {}).items()}
    dom = Domains(torch.as_tensor(lower, dtype=torch.float64)[None],
                  torch.as_tensor(upper, dtype=torch.float64)[None],
                  torch.zeros(1, 0, net.n_outputs, dtype=torch.float64), ph)
    with torch.no_grad():
        return dict(enumerate(propagate(net, dom)))


def flat(value: Any, n: int) -> np.ndarray:
    """A bound or phase array (numpy or torch, optional batch dim of 1) as float64 ``[n]``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise ValueError(f"expected {n} values for one domain, got {arr.size}")
    return arr


class _Builder:
    """Accumulates variables and rows while the network is walked."""

    def __init__(self) -> None:
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.n = 0
        self.rows: list[RowBlock] = []

    def new_vars(self, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
        """Fresh variables with the given bounds; their indices."""
        idx = np.arange(self.n, self.n + lb.size)
        self.lb.append(np.asarray(lb, np.float64))
        self.ub.append(np.asarray(ub, np.float64))
        self.n += lb.size
        return idx

    def unit(self, idx: np.ndarray) -> Expr:
        """The expression ``v[idx]``."""
        k = idx.size
        return Expr(sp.csr_matrix((np.ones(k), (np.arange(k), idx)), shape=(k, self.n)), np.zeros(k))

    def materialise(self, e: Expr, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Variables ``p = e`` bounded by ``[lo, hi]``; their indices."""
        idx = self.new_vars(lo, hi)
        A = resize(e.A, self.n) - resize(self.unit(idx).A, self.n)
        self.rows.append(RowBlock(A.tocsr(), -e.c, -e.c, "def"))
        return idx

    def add_rows(self, e: Expr, lo: np.ndarray, hi: np.ndarray, kind: str) -> None:
        """Rows ``lo <= e <= hi``."""
        self.rows.append(RowBlock(e.A, lo - e.c, hi - e.c, kind))


@dataclass
class _Ctx:
    """State of one :func:`encode` walk."""

    network: Network
    b: _Builder
    lower: np.ndarray
    upper: np.ndarray
    phases: dict[int, Any]
    intermediate: Bounds | None
    relus: list[ReluBlock] = field(default_factory=list)
    maxes: list[MaxBlock] = field(default_factory=list)
    steps: list[StepBlock] = field(default_factory=list)
    bilinear: list[BilinearBlock] = field(default_factory=list)
    relaxed: list[str] = field(default_factory=list)
    smt_relaxed: list[str] = field(default_factory=list)
    pre_bounds: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    empty: bool = False
    _ibp: Bounds | None = None

    def in_shape(self, j: int) -> tuple[int, ...]:
        return tuple(self.network.input_shape) if j < 0 else tuple(self.network.nodes[j].out_shape)

    def bounds(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat bounds of node ``j``'s output (``-1``: the input box)."""
        if j < 0:
            return self.lower, self.upper
        n = math.prod(self.network.nodes[j].out_shape)
        src = self.intermediate
        if src is None or j not in src:
            if self._ibp is None:
                self._ibp = interval_bounds(self.network, self.lower, self.upper, self.phases)
            src = self._ibp
        lo, hi = src[j]
        return flat(lo, n), flat(hi, n)


def encode(network: Network, lower: Any, upper: Any, phases: dict[int, Any] | None = None,
           intermediate: Bounds | None = None, *, upto: int | None = None,
           keep_nodes: bool = False, check: Callable[[], None] | None = None, ball: Any = None) -> Encoding:
    """Encode ``network`` (or its prefix up to node ``upto``) on the box ``[lower, upper]``
    (intersected with ``ball``, see the module docstring).

    ``phases``: ``{relu node: -1/0/+1 per neuron}``; ``intermediate``: ``{node: (lo, hi)}``
    bounds of node outputs (IBP in float64 is computed for missing nodes; they must be sound
    over the set encoded). ``check`` is called between nodes (a deadline check that raises).
    """
    lower = np.asarray(lower, np.float64).reshape(-1)
    upper = np.asarray(upper, np.float64).reshape(-1)
    last = len(network.nodes) - 1 if upto is None else upto
    if not keep_nodes and (ball is None or str(ball.p) == "inf"):
        from encoders.chain_encoding import chain_nodes, encode_chain

        if chain_nodes(network, last):  # the dense walk: same model, a tenth of the time
            return encode_chain(network, lower, upper, dict(phases or {}), intermediate, last, check)
    b = _Builder()
    ctx = _Ctx(network, b, lower, upper, dict(phases or {}), intermediate)
    inp = b.unit(b.new_vars(lower, upper))
    cone = _ball_rows(b, inp, lower.size, ball)
    last_use = {j: i for i, n in enumerate(network.nodes[:last + 1]) for j in n.inputs}
    exprs: dict[int, Expr] = {}
    for idx in range(last + 1):
        if check is not None:
            check()
        node = network.nodes[idx]
        exprs[idx] = _encode_node(ctx, idx, [inp if j < 0 else exprs[j] for j in node.inputs])
        if not keep_nodes:
            for j in node.inputs:
                if j >= 0 and last_use.get(j) == idx and j != last:
                    exprs.pop(j, None)
    out = exprs[last]
    return Encoding(np.concatenate(b.lb), np.concatenate(b.ub), b.rows, ctx.relus, ctx.maxes,
                    np.arange(lower.size), Expr(resize(out.A, b.n), out.c),
                    exprs if keep_nodes else {}, ctx.pre_bounds, ctx.empty, cone, ctx.steps,
                    ctx.bilinear, ctx.relaxed, ctx.smt_relaxed)


def _ball_rows(b: _Builder, inp: Expr, n: int, ball: Any) -> tuple[np.ndarray, np.ndarray, float] | None:
    """ℓ1: ``t >= ±(x - x0)`` and ``Σ t <= eps`` rows; ℓ2: the cone to hand to the back end."""
    if ball is None or str(ball.p) == "inf":
        return None
    x0 = np.asarray(ball.center, np.float64).reshape(-1)
    if x0.size != n:
        raise ValueError(f"ball centre has {x0.size} values, the network {n} inputs")
    eps = float(ball.eps) * (1 + BALL_SLACK) + BALL_SLACK
    if str(ball.p) == "2":
        return np.arange(n), x0, eps
    t = b.new_vars(np.zeros(n), np.full(n, eps))
    T = b.unit(t)
    b.add_rows(Expr((resize(inp.A, b.n) - resize(T.A, b.n)).tocsr(), np.zeros(n)), np.full(n, -np.inf), x0, "def")
    b.add_rows(Expr((resize(inp.A, b.n) + resize(T.A, b.n)).tocsr(), np.zeros(n)), x0, np.full(n, np.inf), "def")
    total = sp.csr_matrix((np.ones(n), (np.zeros(n, np.int64), t)), shape=(1, b.n))
    b.add_rows(Expr(total, np.zeros(1)), np.array([-np.inf]), np.array([eps]), "def")
    return None


def _encode_node(ctx: _Ctx, idx: int, args: list[Expr]) -> Expr:
    node = ctx.network.nodes[idx]
    layer = node.layer
    if isinstance(layer, AFFINE):
        M, off = affine_map(layer, ctx.in_shape(node.inputs[0]), tuple(node.out_shape))
        return Expr((M @ args[0].A).tocsr(), M @ args[0].c + off)
    if isinstance(layer, L.Add):
        n = ctx.b.n
        return Expr((resize(args[0].A, n) + resize(args[1].A, n)).tocsr(), args[0].c + args[1].c)
    if isinstance(layer, L.ReLU):
        return _relu(ctx, idx, args[0])
    if isinstance(layer, L.MaxPool2d):
        return _maxpool(ctx, idx, args[0])
    from encoders import nonlinear

    return nonlinear.encode_node(ctx, idx, args)


def relu_phase_bounds(ctx: _Ctx, idx: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, pos, neg)`` of the ReLU node ``idx``: its input bounds clipped by the fixed
    phases, and the neurons whose active (``pos``) or inactive (``neg``) phase needs a row.
    Marks the domain empty when a fixed phase contradicts the sound bounds."""
    lo0, hi0 = ctx.bounds(ctx.network.nodes[idx].inputs[0])
    ph = flat(ctx.phases[idx], n) if idx in ctx.phases else np.zeros(n)
    lo = np.where(ph > 0, np.maximum(lo0, 0.0), lo0)
    hi = np.where(ph < 0, np.minimum(hi0, 0.0), hi0)
    if np.any(lo - hi > BOUND_SLACK * (1 + np.abs(lo) + np.abs(hi))):
        ctx.empty = True
    pos, neg = np.nonzero((ph > 0) & (lo0 < 0))[0], np.nonzero((ph < 0) & (hi0 > 0))[0]
    return lo, hi, pos, neg


def _relu(ctx: _Ctx, idx: int, pre: Expr) -> Expr:
    """Stable neurons pass or vanish; unstable ones get ``p``/``y`` variables and a block."""
    b, n = ctx.b, pre.c.size
    lo, hi, pos, neg = relu_phase_bounds(ctx, idx, n)
    if pos.size:
        b.add_rows(pre.rows(pos), np.zeros(pos.size), np.full(pos.size, np.inf), "phase")
    if neg.size:
        b.add_rows(pre.rows(neg), np.full(neg.size, -np.inf), np.zeros(neg.size), "phase")
    active = lo >= 0
    unstable = np.nonzero(~active & (hi > 0))[0]
    ctx.pre_bounds[idx] = (lo, hi)
    A = sp.diags(active.astype(np.float64)) @ pre.A
    if unstable.size == 0:
        return Expr(A.tocsr(), np.where(active, pre.c, 0.0))
    lw, hw = widen(lo[unstable], hi[unstable])
    p = b.materialise(pre.rows(unstable), lw, hw)
    y = b.new_vars(np.zeros(unstable.size), hw)
    ctx.relus.append(ReluBlock(idx, p, y, lw, hw))
    U = sp.csr_matrix((np.ones(unstable.size), (unstable, y)), shape=(n, b.n))
    return Expr((resize(A.tocsr(), b.n) + U).tocsr(), np.where(active, pre.c, 0.0))


def _maxpool(ctx: _Ctx, idx: int, inp: Expr) -> Expr:
    """Dominated window entries are dropped; a single survivor is copied, else a block."""
    b, node = ctx.b, ctx.network.nodes[idx]
    win = maxpool_windows(node.layer, ctx.in_shape(node.inputs[0]), tuple(node.out_shape))
    lo, hi = ctx.bounds(node.inputs[0])
    keeps: list[np.ndarray] = []
    for row in win:
        cand = row[row >= 0]
        best = cand[np.argmax(lo[cand])]
        keeps.append(np.union1d([best], cand[hi[cand] > lo[best]]))
    multi = [k for k, kp in enumerate(keeps) if kp.size > 1]
    single = [k for k, kp in enumerate(keeps) if kp.size == 1]
    n_out = len(keeps)
    S = sp.csr_matrix((np.ones(len(single)), (single, [keeps[k][0] for k in single])),
                      shape=(n_out, inp.c.size))
    A, c = S @ inp.A, S @ inp.c
    if not multi:
        return Expr(A.tocsr(), c)
    need = np.unique(np.concatenate([keeps[k] for k in multi]))
    var_of = dict(zip(need.tolist(), b.materialise(inp.rows(need), *widen(lo[need], hi[need])).tolist()))
    lo_k = np.array([lo[keeps[k]].max() for k in multi])
    hi_k = np.array([hi[keeps[k]].max() for k in multi])
    outs = b.new_vars(*widen(lo_k, hi_k))
    for k, o in zip(multi, outs):
        kp = keeps[k]
        ctx.maxes.append(MaxBlock(int(o), np.array([var_of[i] for i in kp]), *widen(lo[kp], hi[kp])))
    U = sp.csr_matrix((np.ones(len(multi)), (multi, outs)), shape=(n_out, b.n))
    return Expr((resize(A.tocsr(), b.n) + U).tocsr(), c)
