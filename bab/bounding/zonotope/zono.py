"""The batched zonotope type of DeepZ, its symbol table and sound float helpers.

A zonotope over noise symbols ``eps`` in ``[-1, 1]`` is ``x = c + G eps_dense + D eps_block + e``:
centre ``c`` ``[N, *shape]``; dense generators ``G`` ``[N, K, *shape]`` (column ``k`` is the
pass's symbol ``k``); at most one *diagonal block* ``D`` whose symbols are one per neuron of the
layer that created it (neuron ``q`` carries ``coef[n, q] * eps[block, pos[q]]``), kept
unmaterialised until a mixing layer needs it, so fresh symbols cost ``O(shape)`` instead of
``O(shape^2)``; and a box term ``|e| <= err`` for float rounding. A block's symbols get dense
columns the first time they are materialised; the pass's :class:`Symbols` table remembers them
so every branch of a residual network uses the same columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

Interval = tuple[torch.Tensor, torch.Tensor]
ONEHOT_ELEMENTS = 1 << 22  # one-hot images per chunk when materialising a block
JACOBIAN_ELEMENTS = 1 << 26  # largest Jacobian of a local linear layer kept for a bound call


def down(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x64`` in ``dtype``, rounded toward ``-inf``."""
    t = x64.to(dtype)
    if dtype == torch.float64:
        return t
    return torch.where(t.double() > x64, torch.nextafter(t, torch.full_like(t, -math.inf)), t)


def up(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x64`` in ``dtype``, rounded toward ``+inf``."""
    return -down(-x64, dtype)


def gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n``: relative error bound of an ``n``-term float dot product."""
    return n * u / (1 - n * u)


@dataclass
class Diag:
    """Per-neuron symbols of one block (``pos``: flat position in the block, ``-1``: none)."""

    coef: torch.Tensor
    pos: torch.Tensor
    block: int


@dataclass
class Symbols:
    """The pass's symbol table: dense column count and each block's columns (``-1``: none yet)."""

    device: torch.device = torch.device("cpu")
    total: int = 0
    cols: dict[int, torch.Tensor] = field(default_factory=dict)

    def new_block(self, block: int, size: int, device: torch.device) -> None:
        """Register a block of ``size`` symbols (none materialised yet)."""
        self.cols[block] = torch.full((size,), -1, dtype=torch.long, device=device)

    def columns(self, block: int, pos: torch.Tensor) -> torch.Tensor:
        """Dense columns of the block's symbols ``pos``, allocating the missing ones."""
        table = self.cols[block]
        new = torch.unique(pos[table[pos] < 0])
        if new.numel():
            table[new] = torch.arange(self.total, self.total + new.numel(), device=pos.device)
            self.total += new.numel()
        return table[pos]


@dataclass
class Zono:
    """A batch of zonotopes (see the module docstring); ``G`` ``None`` means no dense symbols."""

    c: torch.Tensor
    G: torch.Tensor | None
    err: torch.Tensor
    D: Diag | None = None
    _rad64: torch.Tensor | None = field(default=None, repr=False)

    @property
    def k(self) -> int:
        """Number of dense symbols."""
        return 0 if self.G is None else int(self.G.shape[1])

    def rad64(self) -> torch.Tensor:
        """``sum |generators|`` per neuron, an upper bound in float64 (cached)."""
        if self._rad64 is None:
            r = torch.zeros_like(self.c, dtype=torch.float64)
            if self.G is not None:  # any summation order errs by at most gamma_K (relative)
                u = torch.finfo(self.G.dtype).eps / 2
                r = torch.linalg.vector_norm(self.G, 1, dim=1).double() / (1 - gamma(self.k + 1, u))
            if self.D is not None:
                r = r + self.D.coef.abs().double()
            self._rad64 = r
        return self._rad64

    def rad(self) -> torch.Tensor:
        """``sum |generators|`` in the working dtype, rounded up (for rounding-error terms)."""
        return up(self.rad64(), self.c.dtype)

    def box(self) -> Interval:
        """Sound interval hull (rounded outward)."""
        c64, r64 = self.c.double(), self.rad64() + self.err.double()
        slack = 4 * 2.0 ** -53 * (c64.abs() + r64)
        return down(c64 - r64 - slack, self.c.dtype), up(c64 + r64 + slack, self.c.dtype)


def pad_k(G: torch.Tensor | None, k: int, like: torch.Tensor) -> torch.Tensor:
    """Dense generators with ``k`` symbols (zero columns appended; ``like``: the centre)."""
    if G is None:
        return torch.zeros(like.shape[0], k, *like.shape[1:], dtype=like.dtype, device=like.device)
    if G.shape[1] == k:
        return G
    extra = torch.zeros(G.shape[0], k - G.shape[1], *G.shape[2:], dtype=G.dtype, device=G.device)
    return torch.cat([G, extra], 1)


def materialise(D: Diag, syms: Symbols, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                op: Callable[[torch.Tensor], torch.Tensor] | None = None,
                columns: Callable[[torch.Tensor], torch.Tensor] | None = None,
                base: torch.Tensor | None = None) -> torch.Tensor:
    """``op`` (linear, no bias; ``None``: identity) applied to the block, added to the dense
    generators ``base`` (already mapped; ``[N, K0, *out]``): dense ``[N, K, *out]``.

    ``columns(q)``: the Jacobian columns ``op(e_q)`` ``[s, *out]`` when cheaper than pushing
    one-hot images through ``op``. Only positions with a nonzero coefficient in some domain
    get (or reuse) columns; positions sharing a symbol are summed.
    """
    N = D.coef.shape[0]
    coef, pos = D.coef.reshape(N, -1), D.pos.reshape(-1)
    q = (((coef != 0).any(0)) & (pos >= 0)).nonzero().flatten()
    cols = syms.columns(D.block, pos[q])
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    S = q.numel()
    if op is None and columns is None:  # identity: one entry per symbol
        contrib = torch.zeros(N, S, n_out, dtype=coef.dtype, device=coef.device)
        contrib[:, torch.arange(S, device=q.device), q] = coef[:, q]
    else:
        contrib = torch.empty(N, S, n_out, dtype=coef.dtype, device=coef.device)
        J_of = columns
        step = max(1, ONEHOT_ELEMENTS // max(n_in, n_out))
        for s0 in range(0, S, step):
            part = q[s0:s0 + step]
            J = J_of(part) if J_of is not None else _onehot(op, in_shape, part, coef)
            contrib[:, s0:s0 + part.numel()] = coef[:, part].unsqueeze(-1) * J.reshape(part.numel(), n_out)
    return _combine(base, cols, contrib, syms.total, out_shape)


def _combine(base: torch.Tensor | None, cols: torch.Tensor, contrib: torch.Tensor, total: int,
             out_shape: tuple[int, ...]) -> torch.Tensor:
    """Dense generators ``[N, total, *out]``: ``base`` (the first columns) plus ``contrib`` in ``cols``."""
    N, n_out = contrib.shape[0], contrib.shape[2]
    like = torch.empty(N, n_out, dtype=contrib.dtype, device=contrib.device)
    flat = None if base is None else base.reshape(N, base.shape[1], n_out)
    k0 = total - cols.numel()
    if (flat is None or flat.shape[1] <= k0) and bool((cols == torch.arange(k0, total, device=cols.device)).all()):
        out = torch.cat([pad_k(flat, k0, like), contrib], 1)  # the block is the last columns, in order
    else:
        out = pad_k(flat, total, like).clone()
        out.index_add_(1, cols, contrib)
    return out.reshape(N, total, *out_shape)


def _onehot(op: Callable, in_shape: tuple[int, ...], part: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``op(e_q)`` for the positions ``part``: ``[s, *out]``."""
    eye = torch.zeros(part.numel(), math.prod(in_shape), dtype=like.dtype, device=like.device)
    eye[torch.arange(part.numel(), device=part.device), part] = 1.0
    return op(eye.reshape(-1, *in_shape))


def jacobian(op: Callable, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
             like: torch.Tensor) -> torch.Tensor:
    """``[n_in, n_out]``: row ``q`` is ``op(e_q)`` for a linear ``op``; from one-hot inputs or,
    when the output is smaller, from one vector-Jacobian product per one-hot output."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    if n_in <= n_out:
        return _onehot(op, in_shape, torch.arange(n_in, device=like.device), like).reshape(n_in, n_out)
    rows = []
    step = max(1, ONEHOT_ELEMENTS // n_in)
    for o0 in range(0, n_out, step):
        k = min(step, n_out - o0)
        eye = torch.zeros(k, n_out, dtype=like.dtype, device=like.device)
        eye[torch.arange(k), torch.arange(o0, o0 + k)] = 1.0
        zeros = torch.zeros(k, *in_shape, dtype=like.dtype, device=like.device)
        rows.append(torch.func.vjp(op, zeros)[1](eye.reshape(k, *out_shape))[0].reshape(k, n_in))
    return torch.cat(rows).t()


def dense(z: Zono, syms: Symbols) -> Zono:
    """``z`` with its diagonal block materialised into the dense generators."""
    if z.D is None:
        return z
    shape = tuple(z.c.shape[1:])
    return Zono(z.c, materialise(z.D, syms, shape, shape, base=z.G), z.err, None, z._rad64)
