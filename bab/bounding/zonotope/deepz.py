"""DeepZ (Singh, Gehr, Mirman, Pueschel, Vechev, NeurIPS 2018): forward zonotope propagation.

Every node's output is a batched zonotope (:mod:`bab.bounding.zonotope.zono`): a centre, dense
generators over the pass's noise symbols, at most one not yet materialised block of per-neuron
symbols, and a box term ``err`` that collects floating-point rounding (each affine step adds
``gamma_n`` times the magnitudes it combined, the standard dot-product error bound, so the
bounds hold for the float computation itself). The first ``n_in`` symbols are the input box's;
every relaxed neuron (unstable ReLU, Sigmoid/Tanh, non-dominated max-pool output) gets one fresh
symbol; symbols are numbered by one table per pass, so zonotopes of two branches are added after
zero-padding the shorter generator list (residual ``Add``). Relaxed neurons fold their ``err``
into their fresh symbol.

Transformers (one registry, ``RULES``): affine layers are exact; ReLU is the minimal-area
parallelogram ``y = lambda x + mu + mu eps_new`` (``lambda = u/(u-l)``; stable and phase-fixed
neurons exact: ``+1`` identity, ``-1`` zero); Sigmoid/Tanh use ``lambda = min(f'(l), f'(u))``
and the band of ``f(x) - lambda x`` between ``l`` and ``u`` (float64, widened by a few ulps);
MaxPool copies a dominating input exactly, else a fresh symbol on ``[max l, max u]``.
Intermediate boxes are the concretised zonotopes, not intersected with IBP (DeepZ proper); the
final bound is ``C c - sum |C G| - |C| err``. The batch is chunked so the dense generator
tensors stay within ``memory_elements``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bab.bounding.base import Bounds, Domains, Registry
from bab.bounding.interval.ibp import apply_phase
from bab.bounding.polyhedra.crown import exact_matmul, prepare
from bab.bounding.polyhedra.relax import ACTIVATIONS, maxpool_relax
from bab.bounding.zonotope.zono import (JACOBIAN_ELEMENTS, Diag, Interval, Symbols, Zono, dense, down,
                                        gamma, jacobian, materialise, pad_k, up)
from onnx_models import layers as L
from onnx_models.network import Network

RULES: Registry = Registry("zonotope")
FRESH = (L.ReLU, L.Sigmoid, L.Tanh, L.MaxPool2d)  # layers that may add noise symbols
_MIX = (L.Linear, L.Conv2d, L.AvgPool2d, L.Add) + FRESH  # layers that materialise a block


@dataclass
class Ctx:
    """What a rule needs besides its inputs: shapes, the input box and phase, the symbols."""

    idx: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    box: Interval | None
    phase: torch.Tensor | None
    syms: Symbols
    dtype: torch.dtype
    cache: dict = field(default_factory=dict)  # per bound call: Jacobians of local linear layers

    @property
    def u(self) -> float:
        """Unit roundoff of the working dtype."""
        return torch.finfo(self.dtype).eps / 2

    def columns(self, op: Callable) -> Callable | None:
        """Jacobian columns of the local linear ``op`` of this node (cached), if small enough."""
        if math.prod(self.in_shape) * math.prod(self.out_shape) > JACOBIAN_ELEMENTS:
            return None
        if self.idx not in self.cache:
            like = torch.zeros((), dtype=self.dtype, device=self.syms.device)
            self.cache[self.idx] = jacobian(op, self.in_shape, self.out_shape, like)
        J = self.cache[self.idx]
        return lambda part: J[part]


def _cols(fn: Callable[[torch.Tensor], torch.Tensor], G: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample map to every generator: ``[N, K, *s] -> [N, K, *s']``."""
    N, K = G.shape[:2]
    out = fn(G.reshape(N * K, *G.shape[2:]))
    return out.reshape(N, K, *out.shape[1:])


def _affine(ctx: Ctx, z: Zono, op: Callable, op_abs: Callable, bias: torch.Tensor | None,
            fan_in: int, columns: Callable | None = None) -> Zono:
    """``op(x) + bias`` for a linear ``op`` summing ``fan_in`` products per output.

    Rounding: the centre and the generators each err by at most ``gamma`` times the
    magnitudes combined, ``op_abs(|c| + sum|G|)`` (+ ``|bias|``); the box term maps by
    ``op_abs``. A diagonal block is materialised through ``op`` (or its Jacobian ``columns``).
    """
    g = gamma(fan_in + 1, ctx.u)
    c = op(z.c) if bias is None else op(z.c) + bias
    G = None if z.G is None else _cols(op, z.G)
    if z.D is not None:
        G = materialise(z.D, ctx.syms, ctx.in_shape, ctx.out_shape, op, columns, G)
    err = op_abs(z.err + g * (z.c.abs() + z.rad()))
    if bias is not None:
        err = err + g * bias.abs()
    return Zono(c, G, err * (1 + 2 * g))


@RULES.register(L.Linear)
def _linear(layer: L.Linear, ctx: Ctx, z: Zono) -> Zono:
    w = layer.weight
    return _affine(ctx, z, lambda x: F.linear(x, w), lambda x: F.linear(x, w.abs()), layer.bias,
                   w.shape[1], lambda q: w.t()[q])


@RULES.register(L.Conv2d)
def _conv(layer: L.Conv2d, ctx: Ctx, z: Zono) -> Zono:
    args = (None, layer.stride, layer.padding, layer.dilation, layer.groups)
    w = layer.weight
    bias = None if layer.bias is None else layer.bias[:, None, None]
    op = lambda x: F.conv2d(x, w, *args)
    cols = None if z.D is None else ctx.columns(op)
    return _affine(ctx, z, op, lambda x: F.conv2d(x, w.abs(), *args), bias, w[0].numel(), cols)


@RULES.register(L.AvgPool2d)
def _avgpool(layer: L.AvgPool2d, ctx: Ctx, z: Zono) -> Zono:
    k = layer.kernel[0] * layer.kernel[1]
    cols = None if z.D is None else ctx.columns(layer.forward)
    return _affine(ctx, z, layer.forward, layer.forward, None, k + 1, cols)


@RULES.register(L.ElementwiseAffine)
def _scale(layer: L.ElementwiseAffine, ctx: Ctx, z: Zono) -> Zono:
    s = layer.scale
    if z.D is not None and torch.broadcast_shapes(z.c.shape, s.shape) != z.c.shape:
        z = dense(z, ctx.syms)  # the scale grows the shape: no longer one symbol per neuron
    D = None if z.D is None else Diag(z.D.coef * s, z.D.pos, z.D.block)
    out = _affine(ctx, Zono(z.c, z.G, z.err, None, z.rad64()), lambda x: x * s, lambda x: x * s.abs(),
                  layer.shift, 1)
    return Zono(out.c, out.G, out.err, D)


@RULES.register(L.Pad)
def _pad(layer: L.Pad, ctx: Ctx, z: Zono) -> Zono:
    p = layer.pads
    G = None if z.G is None else F.pad(z.G, p)
    D = None if z.D is None else Diag(F.pad(z.D.coef, p), F.pad(z.D.pos, p, value=-1), z.D.block)
    return Zono(F.pad(z.c, p, value=layer.value), G, F.pad(z.err, p), D, F.pad(z.rad64(), p))


def _shape_op(z: Zono, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> Zono:
    """An exact re-indexing ``fn(tensor, leading batch dims)`` of every part of ``z``."""
    G = None if z.G is None else fn(z.G, 2)
    D = None if z.D is None else Diag(fn(z.D.coef, 1), fn(z.D.pos.unsqueeze(0), 1)[0], z.D.block)
    return Zono(fn(z.c, 1), G, fn(z.err, 1), D, fn(z.rad64(), 1))


@RULES.register(L.Reshape)
def _reshape(layer: L.Reshape, ctx: Ctx, z: Zono) -> Zono:
    return _shape_op(z, lambda t, b: t.reshape(*t.shape[:b], *layer.shape))


@RULES.register(L.Transpose)
def _transpose(layer: L.Transpose, ctx: Ctx, z: Zono) -> Zono:
    return _shape_op(z, lambda t, b: t.permute(*range(b), *(p + b for p in layer.perm)))


@RULES.register(L.Add)
def _add(layer: L.Add, ctx: Ctx, a: Zono, b: Zono) -> Zono:
    a, b = dense(a, ctx.syms), dense(b, ctx.syms)
    k = max(a.k, b.k)
    G = None if k == 0 else pad_k(a.G, k, a.c) + pad_k(b.G, k, b.c)
    u = ctx.u
    err = (a.err + b.err + u * (a.c.abs() + b.c.abs() + a.rad() + b.rad())) * (1 + 2 * u)
    return Zono(a.c + b.c, G, err)


def _with_block(ctx: Ctx, z: Zono, coef: torch.Tensor) -> Zono:
    """``z`` (its old block materialised) plus one fresh symbol per neuron (coefficient ``coef``)."""
    z = dense(z, ctx.syms)
    shape = tuple(z.c.shape[1:])
    n = math.prod(shape)
    ctx.syms.new_block(ctx.idx, n, z.c.device)
    pos = torch.arange(n, device=z.c.device).reshape(shape)
    return Zono(z.c, z.G, z.err, Diag(coef, pos, ctx.idx), z.rad64() + coef.abs().double())


def _relaxed(ctx: Ctx, z: Zono, lam: torch.Tensor, mid: torch.Tensor, half: torch.Tensor,
             keep: torch.Tensor, mask: torch.Tensor) -> Zono:
    """``y = lam x + mid + half eps_new`` on ``mask``; ``keep``: exact neurons keeping ``err``.

    The fresh coefficient also covers ``lam * err`` and the rounding of ``lam c + mid`` and
    ``lam G``, so ``err`` is reset on the relaxed neurons. Other neurons are zero.
    """
    u, zero = ctx.u, torch.zeros_like(lam)
    lam = torch.where(mask | keep, lam, zero)
    mid = torch.where(mask, mid, zero)
    c = lam * z.c + mid
    G = None if z.G is None else z.G * lam.unsqueeze(1)
    D = None if z.D is None else Diag(z.D.coef * lam, z.D.pos, z.D.block)
    coef = (half + lam * z.err + 2 * u * ((lam * z.c).abs() + mid.abs()) + u * lam * z.rad()) * (1 + 4 * u)
    err = torch.where(keep, z.err, zero)
    rad = lam.double() * z.rad64() * (1 + 2 * u)  # sum |fl(lam G)| <= (1 + u) lam sum |G|
    out = Zono(c, G, err, D, rad)
    return _with_block(ctx, out, torch.where(mask, coef, zero)) if bool(mask.any()) else out


@RULES.register(L.ReLU)
def _relu(layer: L.ReLU, ctx: Ctx, z: Zono) -> Zono:
    """Minimal-area parallelogram; stable neurons (and fixed phases) exact."""
    lo, hi = ctx.box
    free = torch.ones_like(lo, dtype=torch.bool) if ctx.phase is None else ctx.phase == 0
    active = (lo >= 0) & free if ctx.phase is None else (ctx.phase > 0) | (free & (lo >= 0))
    unstable = free & ~active & (hi > 0)
    one = torch.ones_like(lo)
    lam = torch.where(unstable, hi / torch.where(unstable, hi - lo, one), one).clamp(0.0, 1.0)
    # relu(x) - lam x lies in [0, max(-lam l, (1 - lam) u)] for any lam in [0, 1]
    band = torch.maximum(-lam * lo, (1 - lam) * hi) * (1 + 4 * ctx.u)
    band = torch.where(unstable, band, torch.zeros_like(band))
    return _relaxed(ctx, z, lam, band / 2, band / 2, active, unstable)


@RULES.register(L.Sigmoid, L.Tanh)
def _s_shaped(layer: L.Layer, ctx: Ctx, z: Zono) -> Zono:
    """``lambda = min(f'(l), f'(u))``: ``f(x) - lambda x`` is non-decreasing on ``[l, u]``."""
    f, df = ACTIVATIONS[type(layer)]
    dtype = ctx.dtype
    l, u = ctx.box[0].double(), ctx.box[1].double()
    lam = down(torch.minimum(df(l), df(u)), dtype).clamp(min=0)
    lam64 = lam.double()
    gl, gu = f(l) - lam64 * l, f(u) - lam64 * u
    slack = 4 * torch.finfo(dtype).eps * (1 + gl.abs() + gu.abs() + lam64 * torch.maximum(l.abs(), u.abs()))
    lo_b, hi_b = torch.minimum(gl, gu) - slack, torch.maximum(gl, gu) + slack
    mid64 = (lo_b + hi_b) / 2
    mid = mid64.to(dtype)
    half = up((hi_b - lo_b) / 2 + (mid.double() - mid64).abs(), dtype)
    none = torch.zeros_like(lam, dtype=torch.bool)
    return _relaxed(ctx, z, lam, mid, half, none, ~none)


@RULES.register(L.MaxPool2d)
def _maxpool(layer: L.MaxPool2d, ctx: Ctx, z: Zono) -> Zono:
    """A dominating input is copied exactly; other windows get a fresh symbol on ``[max l, max u]``."""
    lo, hi = ctx.box
    r = maxpool_relax(layer, ctx.in_shape, ctx.out_shape, lo, hi)
    N, C = lo.shape[:2]
    shape = ctx.out_shape
    pick = lambda t: torch.gather(t.reshape(N, C, r.hw), 2, r.sel).reshape(N, *shape)
    dom = r.dominated.reshape(N, *shape)
    G = None
    if z.G is not None:
        K = z.k
        idx = r.sel.unsqueeze(1).expand(N, K, *r.sel.shape[1:])
        G = torch.gather(z.G.reshape(N, K, C, r.hw), 3, idx).reshape(N, K, *shape) * dom.unsqueeze(1).to(z.G.dtype)
    zero = torch.zeros(N, *shape, dtype=lo.dtype, device=lo.device)
    D = None
    if z.D is not None:  # the block's positions follow the picked inputs (a batch-wide pick)
        pos = torch.gather(z.D.pos.reshape(1, C, r.hw).expand(N, C, r.hw), 2, r.sel).reshape(N, *shape)
        coef = torch.where(dom, pick(z.D.coef), zero)
        D = Diag(coef, pos, z.D.block)
    lmax, umax = pick(lo).double(), r.umax.reshape(N, *shape).double()
    mid64 = (lmax + umax) / 2
    mid = mid64.to(lo.dtype)
    half = up((umax - lmax) / 2 + (mid.double() - mid64).abs(), lo.dtype)
    c = torch.where(dom, pick(z.c), mid)
    out = Zono(c, G, torch.where(dom, pick(z.err), zero))
    if D is not None:  # per-domain picks: materialise the old block domain by domain
        out = _picked_block(ctx, out, D)
    return _with_block(ctx, out, torch.where(dom, zero, half)) if bool((~dom).any()) else out


def _picked_block(ctx: Ctx, z: Zono, D: Diag) -> Zono:
    """Add a block whose positions differ per domain (``D.pos`` ``[N, *shape]``) as dense columns."""
    N = z.c.shape[0]
    shape = tuple(z.c.shape[1:])
    live = (D.coef != 0) & (D.pos >= 0)
    cols = ctx.syms.columns(D.block, D.pos[live])
    G = pad_k(z.G, ctx.syms.total, z.c).reshape(N, ctx.syms.total, -1).clone()
    n_idx, q_idx = live.reshape(N, -1).nonzero(as_tuple=True)
    G[n_idx, cols, q_idx] += D.coef.reshape(N, -1)[n_idx, q_idx]
    return Zono(z.c, G.reshape(N, ctx.syms.total, *shape), z.err)


def input_zono(network: Network, domains: Domains, syms: Symbols) -> Zono:
    """The input box as a zonotope: one block of symbols (the radii), rounding in ``err``."""
    n, shape = domains.size, network.input_shape
    lo, hi = domains.lower.reshape(n, *shape), domains.upper.reshape(n, *shape)
    u = torch.finfo(lo.dtype).eps / 2
    syms.new_block(-1, network.n_inputs, lo.device)
    pos = torch.arange(network.n_inputs, device=lo.device).reshape(shape)
    return Zono((lo + hi) / 2, None, 2 * u * (lo.abs() + hi.abs()), Diag((hi - lo) / 2, pos, -1))


def _ctx(network: Network, domains: Domains, idx: int, boxes: list[Interval], syms: Symbols,
         cache: dict) -> Ctx:
    """The rule context of node ``idx`` (nonlinear nodes get their input's box, phase-clipped)."""
    node = network.nodes[idx]
    j = node.inputs[0]
    in_shape = tuple(network.input_shape) if j < 0 else tuple(network.nodes[j].out_shape)
    box = phase = None
    if isinstance(node.layer, FRESH):
        if j < 0:
            n = domains.size
            box = (domains.lower.reshape(n, *in_shape), domains.upper.reshape(n, *in_shape))
        else:
            box = boxes[j]
        if isinstance(node.layer, L.ReLU):
            phase = domains.phases.get(idx)
            box = apply_phase(box, phase)
    return Ctx(idx, in_shape, tuple(node.out_shape), box, phase, syms, domains.lower.dtype, cache)


def propagate(network: Network, domains: Domains, floor: dict[int, Interval] | None = None,
              cache: dict | None = None) -> tuple[Zono, list[Interval], Symbols]:
    """The output zonotope, every node's box and the symbol table.

    ``floor``: boxes to intersect with given nodes' concretised boxes (RefineZono's refined
    bounds); the intersection is what the following relaxations use. ``cache``: per-network
    data shared by the passes of one bound call.
    """
    cache = {} if cache is None else cache
    last_use = {j: i for i, node in enumerate(network.nodes) for j in node.inputs}
    syms = Symbols(device=domains.lower.device)
    inp = input_zono(network, domains, syms)
    zonos: dict[int, Zono] = {}
    boxes: list[Interval] = []
    for idx, node in enumerate(network.nodes):
        ctx = _ctx(network, domains, idx, boxes, syms, cache)
        z = RULES.rule(node.layer)(node.layer, ctx, *[inp if j < 0 else zonos[j] for j in node.inputs])
        lo, hi = z.box()
        if floor is not None and idx in floor:
            lo, hi = torch.maximum(lo, floor[idx][0]), torch.minimum(hi, floor[idx][1])
        boxes.append((lo, hi))
        zonos[idx] = z
        for j in node.inputs:
            if j >= 0 and last_use[j] == idx:
                zonos.pop(j, None)
    return zonos[len(network.nodes) - 1], boxes, syms


def clause_zono(z: Zono, C: torch.Tensor, syms: Symbols) -> Interval:
    """Lower and upper bounds ``[N, M]`` of ``C y`` over the output zonotope (in float64)."""
    z = dense(z, syms)
    N, dtype = C.shape[0], C.dtype
    C64 = C.double()
    centre = torch.bmm(C64, z.c.reshape(N, -1, 1).double()).squeeze(-1)
    r = torch.bmm(C64.abs(), z.err.reshape(N, -1, 1).double()).squeeze(-1)
    if z.G is not None:
        r = r + torch.bmm(z.G.reshape(N, z.k, -1).double(), C64.transpose(1, 2)).abs().sum(1)
    slack = gamma(z.k + C.shape[2] + 2, 2.0 ** -53) * (centre.abs() + r)
    return down(centre - r - slack, dtype), up(centre + r + slack, dtype)


def domain_elements(network: Network) -> int:
    """Largest dense generator tensor per domain, in elements, if every relaxable neuron got a
    symbol (a layer's block of symbols is dense only after the next mixing layer)."""
    k, pending, worst = 0, network.n_inputs, 1
    for node in network.nodes:
        n = math.prod(node.out_shape)
        if isinstance(node.layer, _MIX):
            k, pending = k + pending, 0
        if isinstance(node.layer, FRESH):
            pending = n
        worst = max(worst, k * n)
    return worst


def slice_domains(domains: Domains, s: int, e: int) -> Domains:
    """Domains ``s:e`` of a batch."""
    return Domains(domains.lower[s:e], domains.upper[s:e], domains.C[s:e],
                   {k: v[s:e] for k, v in domains.phases.items()})


def merge(parts: list[Bounds]) -> Bounds:
    """Concatenate chunked results along the domain axis."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda k, i: torch.cat([p.intermediate[k][i] for p in parts])
    inter = {k: (cat(k, 0), cat(k, 1)) for k in parts[0].intermediate}
    return Bounds(torch.cat([p.lower for p in parts]), torch.cat([p.upper for p in parts]), inter)


def _empty(network: Network, domains: Domains) -> Bounds:
    """The result for an empty batch."""
    kw = dict(dtype=domains.lower.dtype, device=domains.lower.device)
    none = torch.zeros(0, domains.C.shape[1], **kw)
    inter = {i: (torch.zeros(0, *n.out_shape, **kw), torch.zeros(0, *n.out_shape, **kw))
             for i, n in enumerate(network.nodes)}
    return Bounds(none, none.clone(), inter)


class Zonotope:
    """DeepZ as a :class:`~bab.bounding.base.Bounder` (``zonotope``).

    Options: ``dtype``/``device`` (default: the domains'), ``memory_elements`` (largest dense
    generator tensor per chunk of domains, in elements; the chunk size assumes every
    relaxable neuron could get a symbol).
    """

    name = "zonotope"

    def __init__(self, dtype: Any = None, device: Any = None, memory_elements: int = 1 << 25) -> None:
        self.dtype, self.device = dtype, device
        self.memory_elements = memory_elements

    def check(self, network: Network) -> None:
        """Raise :class:`UnsupportedLayerError` for the first layer without a rule."""
        for node in network.nodes:
            RULES.rule(node.layer)

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower and upper bounds of ``C f(x)`` plus every node's (concretised) box."""
        return self.run(network, domains)

    def run(self, network: Network, domains: Domains, floor: dict[int, Interval] | None = None) -> Bounds:
        """:meth:`bound`, with optional boxes ``floor`` intersected into given nodes' boxes."""
        self.check(network)
        net, dom = prepare(network, domains, self.dtype, self.device)
        if floor is not None:
            floor = {k: (lo.to(dom.lower), hi.to(dom.lower)) for k, (lo, hi) in floor.items()}
        if dom.size == 0:
            return _empty(net, dom)
        step = max(1, self.memory_elements // domain_elements(net))
        step = -(-dom.size // -(-dom.size // step))  # equal chunks
        parts, cache = [], {}
        with torch.no_grad(), exact_matmul(dom.lower.device):
            for s in range(0, dom.size, step):
                sub = slice_domains(dom, s, s + step)
                fl = None if floor is None else {k: (lo[s:s + step], hi[s:s + step]) for k, (lo, hi) in floor.items()}
                z, boxes, syms = propagate(net, sub, fl, cache)
                lower, upper = clause_zono(z, sub.C, syms)
                parts.append(Bounds(lower, upper, dict(enumerate(boxes))))
        return merge(parts)
