"""RecurJac (Zhang et al., AAAI 2019): recursive Jacobian bounds, never looser than Fast-Lip.

Fast-Lip boxes each node's adjoint and so forgets how adjoint entries depend on the same
activation derivatives further up. RecurJac bounds a linear function ``<w, a_y>`` of an
adjoint *recursively toward the output*: ``a_y`` is a sum over ``y``'s consumers; through a
linear op ``A`` the coefficient becomes ``A w`` (a forward tangent, one per-op rule in
:data:`TANGENT`); through an activation, ``<v, a_c ⊙ λ>`` with ``λ`` in its derivative interval
and ``a_c`` in its (already refined) adjoint bounds is bounded sign-aware: where ``v a_c`` has
a known sign the worst ``λ`` is fixed and the term stays exact; otherwise
``min_λ v a λ`` is concave in ``a`` and its chord over ``[a_lo, a_hi]`` is a linear lower
bound. At the output ``a = c`` exactly. Each ``λ`` appears once per expansion, so eliminating
it locally is exact. A max-pool (no tangent rule) is concretised against its interval
pullback.

Adjoints are refined node by node from the output (rows ``±e_j`` for the activation neurons
whose derivative is uncertain), then the Jacobian itself (rows ``±e_i`` on the input). The work
is quadratic in depth; ``budget`` caps the work of one ``bound`` call, and nodes past it keep
their Fast-Lip interval. By construction every refined interval is intersected with
the one it refines and the final Jacobian with Fast-Lip's own, so ``recurjac <= fastlip``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bab.bounding.base import Bounds, Domains, Registry
from bab.bounding.lipschitz import jacobian as jac
from bab.bounding.lipschitz.fastlip import FastLip
from onnx_models import layers as L
from onnx_models.network import Network

Interval = jac.Interval
Step = tuple[torch.Tensor | None, torch.Tensor | None]
TANGENT: Registry = Registry("recurjac")


@dataclass
class Pass:
    """Context of the tangent passes: the problem, the adjoint bounds found so far and the
    spent budget."""

    prob: jac.JacProblem
    bounds: dict[int, Interval]
    budget: float
    spent: float = 0.0
    _pulled: dict[tuple[int, int], Interval] = field(default_factory=dict)

    def pulled(self, idx: int, slot: int) -> Interval:
        """Interval pullback of node ``idx``'s adjoint to its input ``slot`` (cached)."""
        if (idx, slot) not in self._pulled:
            layer = self.prob.network.nodes[idx].layer
            parts = jac.PULLBACK.rule(layer)(self.prob, idx, layer, self.bounds[idx])
            for s, part in enumerate(parts):
                self._pulled[(idx, s)] = part
        return self._pulled[(idx, slot)]

    def spend(self, cost: float) -> bool:
        """Charge ``cost`` multiply-adds if the budget allows it."""
        if self.spent + cost > self.budget:
            return False
        self.spent += cost
        return True


def _flat(V: torch.Tensor, fn) -> torch.Tensor:
    """Apply a sample map ``[B, *in] -> [B, *out]`` to ``V`` ``[N, M, R, *in]``."""
    N, M, R = V.shape[:3]
    out = fn(V.reshape(N * M * R, *V.shape[3:]))
    return out.reshape(N, M, R, *out.shape[1:])


@TANGENT.register(L.Linear)
def _linear(ctx: Pass, idx: int, slot: int, layer: L.Linear, V: torch.Tensor) -> Step:
    return _flat(V, lambda v: F.linear(v, layer.weight)), None


@TANGENT.register(L.Conv2d)
def _conv(ctx: Pass, idx: int, slot: int, layer: L.Conv2d, V: torch.Tensor) -> Step:
    return _flat(V, lambda v: F.conv2d(v, layer.weight, None, layer.stride, layer.padding,
                                       layer.dilation, layer.groups)), None


@TANGENT.register(L.ElementwiseAffine)
def _scale(ctx: Pass, idx: int, slot: int, layer: L.ElementwiseAffine, V: torch.Tensor) -> Step:
    return _flat(V, lambda v: v * layer.scale), None


@TANGENT.register(L.Pad)
def _pad(ctx: Pass, idx: int, slot: int, layer: L.Pad, V: torch.Tensor) -> Step:
    return _flat(V, lambda v: F.pad(v, layer.pads, mode="constant", value=0.0)), None


@TANGENT.register(L.AvgPool2d, L.Reshape, L.Transpose)
def _shape(ctx: Pass, idx: int, slot: int, layer: L.Layer, V: torch.Tensor) -> Step:
    return _flat(V, layer.forward), None


@TANGENT.register(L.Add)
def _add(ctx: Pass, idx: int, slot: int, layer: L.Add, V: torch.Tensor) -> Step:
    return V, None


@TANGENT.register(*jac.ACTIVATIONS)
def _activation(ctx: Pass, idx: int, slot: int, layer: L.Layer, V: torch.Tensor) -> Step:
    """``<V, a ⊙ λ>``: exact where the sign of ``V a`` is known, else the chord of the concave
    ``min_λ V a λ`` over the adjoint bounds ``[a_lo, a_hi]``."""
    al, au = (t.unsqueeze(2) for t in ctx.bounds[idx])
    dl, du = (t[:, None, None] for t in ctx.prob.slopes[idx])
    ta, tb = V * al, V * au
    pl, pu = torch.minimum(ta * dl, ta * du), torch.minimum(tb * dl, tb * du)
    pos, neg = torch.minimum(ta, tb) >= 0, torch.maximum(ta, tb) <= 0
    width = au - al
    wide = width > 0
    chord = (pu - pl) / torch.where(wide, width, torch.ones_like(width))
    zero = torch.zeros_like(V)
    kappa = torch.where(pos, V * dl, torch.where(neg, V * du, torch.where(wide, chord, zero)))
    beta = torch.where(pos | neg, zero, torch.where(wide, pl - chord * al, torch.minimum(pl, pu)))
    return kappa, beta.flatten(3).sum(-1)


@TANGENT.register(L.MaxPool2d)
def _concretize(ctx: Pass, idx: int, slot: int, layer: L.Layer, V: torch.Tensor) -> Step:
    """No tangent rule: bound ``<V, pullback>`` by the interval pullback of the adjoint."""
    lo, hi = (t.unsqueeze(2) for t in ctx.pulled(idx, slot))
    return None, (V.clamp(min=0) * lo + V.clamp(max=0) * hi).flatten(3).sum(-1)


def tangent_lower(ctx: Pass, start: int, W0: torch.Tensor) -> torch.Tensor:
    """Lower bounds ``[N, M, R]`` of ``<W0_r, a_start>`` (``W0``: ``[N, M, R, *shape]``)."""
    nodes = ctx.prob.network.nodes
    last = len(nodes) - 1
    pending: dict[int, torch.Tensor] = {start: W0}
    const = torch.zeros(W0.shape[:3], dtype=W0.dtype, device=W0.device)
    for k in range(start, last + 1):
        V = pending.pop(k, None)
        if V is None:
            continue
        if k == last:
            const = const + (V * ctx.prob.margin().unsqueeze(2)).flatten(3).sum(-1)
            continue
        for cons, slot in ctx.prob.consumers.get(k, []):
            layer = nodes[cons].layer
            out, b = TANGENT.rule(layer)(ctx, cons, slot, layer, V)
            if b is not None:
                const = const + b
            if out is not None:
                pending[cons] = out if cons not in pending else pending[cons] + out
    return const


def _costs(network) -> list[float]:
    """Work per tangent row of each node (a budget cost model, in multiply-add units): the
    multiply-adds of Linear/Conv2d (BLAS-fast), 20 per output of the memory-bound elementwise
    and shape ops, 60 per output of an activation's sign-aware relaxation or a max-pool."""
    out = []
    for node in network.nodes:
        n = math.prod(node.out_shape)
        layer = node.layer
        if isinstance(layer, L.Linear):
            out.append(float(layer.weight.numel()))
        elif isinstance(layer, L.Conv2d):
            out.append(float(n * layer.weight[0].numel()))
        else:
            out.append(60.0 * n if isinstance(layer, jac.ACTIVATIONS + (L.MaxPool2d,)) else 20.0 * n)
    return out


class RecurJac(FastLip):
    """RecurJac as a :class:`~bab.bounding.base.Bounder` (box domains, float64 inside).

    ``budget``: work (multiply-adds, plus elementwise operations at activations; see
    :func:`_costs`) allowed for the recursive passes of one ``bound`` call or one Jacobian, phase
    groups included (nodes past it keep their Fast-Lip interval); ``memory_elements``: largest
    coefficient tensor per pass.
    """

    name = "recurjac"

    def __init__(self, budget: float = 2e9, memory_elements: int = 1 << 23) -> None:
        self.budget, self.memory_elements = float(budget), int(memory_elements)
        self._left: float | None = None

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """As :meth:`FastLip.bound`; one ``budget`` for the whole call (phase groups included)."""
        self._left = self.budget
        try:
            return super().bound(network, domains, state)
        finally:
            self._left = None

    def jacobian(self, prob: jac.JacProblem) -> Interval:
        """RecurJac's Jacobian bounds, intersected with Fast-Lip's."""
        jac.check(prob.network, TANGENT)
        fast = jac.adjoint_bounds(prob)[-1]
        costs = _costs(prob.network)
        after = [sum(costs[k + 1:]) for k in range(-1, len(costs))]  # after[j + 1]: nodes > j
        ctx = Pass(prob, {}, self.budget if self._left is None else self._left)
        try:
            return self._recurse(ctx, fast, after)
        finally:
            if self._left is not None:
                self._left -= ctx.spent

    def _recurse(self, ctx: Pass, fast: Interval, after: list[float]) -> Interval:
        """Refine activation adjoints from the output, then the Jacobian (``±e_i`` rows)."""
        prob = ctx.prob
        last = len(prob.network.nodes) - 1

        def refine(idx: int, adj: Interval, bounds: dict[int, Interval]) -> Interval:
            ctx.bounds = bounds
            if idx == last or not isinstance(prob.network.nodes[idx].layer, jac.ACTIVATIONS):
                return adj
            dl, du = prob.slopes[idx]
            sel = (dl < du).flatten(1).any(0).nonzero().flatten()
            return self.tighten(ctx, idx, adj, sel, after[idx + 1])

        bounds = jac.adjoint_bounds(prob, refine)
        ctx.bounds = bounds
        lo, hi = torch.maximum(bounds[-1][0], fast[0]), torch.minimum(bounds[-1][1], fast[1])
        every = torch.arange(math.prod(prob.shape(-1)), device=lo.device)
        return self.tighten(ctx, -1, (lo, hi), every, after[0])

    def tighten(self, ctx: Pass, start: int, adj: Interval, sel: torch.Tensor, macs: float) -> Interval:
        """Intersect the adjoint of node ``start`` with recursive bounds of entries ``sel``."""
        N, M = ctx.prob.size
        S = sel.numel()
        if S == 0 or not ctx.spend(N * M * 2 * S * max(macs, 1.0)):
            return adj
        shape = ctx.prob.shape(start)
        n = math.prod(shape)
        widest = max([n] + [math.prod(nd.out_shape) for nd in ctx.prob.network.nodes[start + 1:]])
        step = max(1, self.memory_elements // (N * M * 2 * widest))
        lo, hi = adj[0].reshape(N, M, n).clone(), adj[1].reshape(N, M, n).clone()
        for c0 in range(0, S, step):
            part = sel[c0:c0 + step]
            k = part.numel()
            eye = torch.zeros(2 * k, n, dtype=lo.dtype, device=lo.device)
            eye[torch.arange(k, device=lo.device), part] = 1.0
            eye[torch.arange(k, 2 * k, device=lo.device), part] = -1.0
            low = tangent_lower(ctx, start, eye.expand(N, M, 2 * k, n).reshape(N, M, 2 * k, *shape))
            lo[:, :, part] = torch.maximum(lo[:, :, part], low[:, :, :k])
            hi[:, :, part] = torch.minimum(hi[:, :, part], -low[:, :, k:])
        return lo.reshape(adj[0].shape), hi.reshape(adj[1].shape)
