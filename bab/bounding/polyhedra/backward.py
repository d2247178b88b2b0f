"""Backward linear bound propagation (the engine shared by CROWN, DeepPoly, Fast-Lin, alpha-CROWN).

A lower bound of ``A · node(x)`` (``A``: ``[N, M, *shape]``) is pushed backward through the DAG:
each layer's rule maps the coefficients on its output to coefficients on its inputs plus a
constant ``[N, M]``. Affine layers are exact (Conv2d via ``conv_transpose2d``, never a dense
matrix); nonlinear layers use the relaxations of :mod:`bab.bounding.polyhedra.relax`, choosing the lower
line where the coefficient is positive and the upper line where it is negative. Coefficients
reaching a node from several consumers are summed. Upper bounds are lower bounds of ``-A``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from bab.bounding.balls import ball_lower, uses_ball
from bab.bounding.base import Registry
from bab.bounding.polyhedra.relax import MaxPoolRelax, Relax
from onnx_models import layers as L
from onnx_models.network import Network

Step = tuple[list[torch.Tensor], torch.Tensor | None]


class Context(Protocol):
    """What backward rules need besides the layer: shapes and relaxations."""

    def in_shape(self, idx: int, k: int = 0) -> tuple[int, ...]:
        """Sample shape of input ``k`` of node ``idx``."""
        ...

    def in_shapes(self, idx: int) -> list[tuple[int, ...]]:
        """Sample shapes of every input of node ``idx``."""
        ...

    def relax(self, idx: int) -> Relax:
        """Elementwise relaxation of the ReLU/Sigmoid/Tanh node ``idx``."""
        ...

    def maxpool(self, idx: int) -> MaxPoolRelax:
        """Relaxation of the MaxPool node ``idx``."""
        ...

    def box(self, idx: int, k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval ``[N, *shape]`` of input ``k`` of node ``idx`` (for rules such as Mul,
        MatMul and Softmax that relax from their operands' bounds)."""
        ...


Rule = Callable[[Context, int, L.Layer, torch.Tensor], Step]
_RULES: list[tuple[tuple[type, ...], Rule]] = []


def _rule(*kinds: type) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        _RULES.append((kinds, fn))
        return fn

    return deco


#: Public name for modules that add backward rules (one registry: every Crown-family bounder
#: built after the import sees them).
register_rule = _rule


def make_registry(method: str) -> Registry:
    """A fresh registry named after ``method`` holding every backward rule."""
    reg: Registry = Registry(method)
    for kinds, fn in _RULES:
        reg.register(*kinds)(fn)
    return reg


def _sample_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the sample dimensions of ``[N, M, *shape]``."""
    return t.flatten(2).sum(-1)


@_rule(L.Linear)
def _linear(ctx: Context, idx: int, layer: L.Linear, A: torch.Tensor) -> Step:
    bias = None
    if layer.bias is not None:
        rows = A if A.dim() == 3 else A.reshape(A.shape[0], A.shape[1], -1, A.shape[-1]).sum(2)
        bias = rows @ layer.bias
    return [A @ layer.weight], bias


@_rule(L.Conv2d)
def _conv(ctx: Context, idx: int, layer: L.Conv2d, A: torch.Tensor) -> Step:
    N, M, Co, Ho, Wo = A.shape
    _, H, W = ctx.in_shape(idx)
    kh, kw = layer.weight.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    bias = None if layer.bias is None else A.sum((-2, -1)) @ layer.bias
    if _patches(layer):
        return [_patch_transpose(A, layer.weight, H, W)], bias
    oph = H - ((Ho - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
    opw = W - ((Wo - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
    out = F.conv_transpose2d(A.reshape(N * M, Co, Ho, Wo), layer.weight, None, layer.stride,
                             layer.padding, (oph, opw), layer.groups, layer.dilation)
    return [out.reshape(N, M, *out.shape[1:])], bias


def _patches(layer: L.Conv2d) -> bool:
    """Non-overlapping patches (kernel == stride, no padding/dilation/groups), as in the
    patch embedding of a vision transformer: the transpose is a reshape plus one matmul."""
    return (tuple(layer.weight.shape[-2:]) == tuple(layer.stride) and tuple(layer.padding) == (0, 0)
            and tuple(layer.dilation) == (1, 1) and layer.groups == 1)


def _patch_transpose(A: torch.Tensor, weight: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``conv_transpose2d`` of ``A`` ``[N, M, Co, Ho, Wo]`` for a patch convolution: every
    output position maps back to its own ``kh x kw`` patch; rows/columns of the input that
    no patch covers get zero coefficients."""
    N, M, Co, Ho, Wo = A.shape
    Ci, kh, kw = weight.shape[1:]
    rows = A.permute(0, 1, 3, 4, 2).reshape(N * M * Ho * Wo, Co) @ weight.reshape(Co, Ci * kh * kw)
    out = rows.reshape(N, M, Ho, Wo, Ci, kh, kw).permute(0, 1, 4, 2, 5, 3, 6)
    out = out.reshape(N, M, Ci, Ho * kh, Wo * kw)
    if (Ho * kh, Wo * kw) != (H, W):
        out = F.pad(out, (0, W - Wo * kw, 0, H - Ho * kh))
    return out


def _reduce_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum a broadcast-grown ``[N, M, *big]`` back to ``[N, M, *shape]``."""
    if tuple(t.shape[2:]) == tuple(shape):
        return t
    extra = t.dim() - 2 - len(shape)
    t = t.sum(dim=tuple(range(2, 2 + extra))) if extra > 0 else t
    dims = [i + 2 for i, s in enumerate(shape) if s == 1 and t.shape[i + 2] != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


@_rule(L.ElementwiseAffine)
def _scale(ctx: Context, idx: int, layer: L.ElementwiseAffine, A: torch.Tensor) -> Step:
    return [_reduce_to(A * layer.scale, ctx.in_shape(idx))], _sample_sum(A * layer.shift)


@_rule(L.Add)
def _add(ctx: Context, idx: int, layer: L.Add, A: torch.Tensor) -> Step:
    return [_reduce_to(A, ctx.in_shape(idx, 0)), _reduce_to(A, ctx.in_shape(idx, 1))], None


@_rule(L.Pad)
def _pad(ctx: Context, idx: int, layer: L.Pad, A: torch.Tensor) -> Step:
    inner = F.pad(A, [-p for p in layer.pads])
    bias = None if layer.value == 0 else layer.value * (_sample_sum(A) - _sample_sum(inner))
    return [inner], bias


@_rule(L.Reshape)
def _reshape(ctx: Context, idx: int, layer: L.Reshape, A: torch.Tensor) -> Step:
    return [A.reshape(A.shape[0], A.shape[1], *ctx.in_shape(idx))], None


@_rule(L.Transpose)
def _transpose(ctx: Context, idx: int, layer: L.Transpose, A: torch.Tensor) -> Step:
    inv = [0] * len(layer.perm)
    for i, p in enumerate(layer.perm):
        inv[p] = i
    return [A.permute(0, 1, *(i + 2 for i in inv))], None


@_rule(L.AvgPool2d)
def _avgpool(ctx: Context, idx: int, layer: L.AvgPool2d, A: torch.Tensor) -> Step:
    N, M, C, Ho, Wo = A.shape
    _, H, W = ctx.in_shape(idx)
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    oph = H - ((Ho - 1) * sh - 2 * ph + kh)
    opw = W - ((Wo - 1) * sw - 2 * pw + kw)
    flat = A.reshape(N * M, C, Ho, Wo)
    uniform = (layer.count_include_pad or (ph == pw == 0)) and 0 <= oph < max(sh, 1) \
        and 0 <= opw < max(sw, 1)
    if uniform:  # every window divides by kh*kw: a depthwise convolution
        weight = torch.full((C, 1, kh, kw), 1.0 / (kh * kw), dtype=A.dtype, device=A.device)
        out = F.conv_transpose2d(flat, weight, None, layer.stride, layer.padding, (oph, opw), C)
    else:  # border windows with other divisors: the exact vector-Jacobian product
        zeros = torch.zeros(N * M, C, H, W, dtype=A.dtype, device=A.device)
        out = torch.func.vjp(layer.forward, zeros)[1](flat)[0]
    return [out.reshape(N, M, C, H, W)], None


def _dot(coef: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sum(coef * t)`` over the sample dims; ``t`` is ``[N, 1, *shape]`` (a batched mat-vec)."""
    if t.shape[1] != 1:
        return _sample_sum(coef * t)
    return torch.bmm(coef.flatten(2), t.flatten(2).transpose(1, 2)).squeeze(-1)


def activation_rule(ctx: Context, idx: int, layer: L.Layer, A: torch.Tensor) -> Step:
    """Backward rule of any elementwise layer with a :class:`Relax` (ReLU and ``relax.UNARY``)."""
    return _activation(ctx, idx, layer, A)


@_rule(L.ReLU, L.Sigmoid, L.Tanh)
def _activation(ctx: Context, idx: int, layer: L.Layer, A: torch.Tensor) -> Step:
    r = ctx.relax(idx)
    # positive coefficients take the lower line, negative ones the upper line; each entry has
    # one exact zero part, so this equals a select (bit for bit) at a fraction of its cost
    pos = A.clamp(min=0)
    neg = A - pos
    out = torch.addcmul(pos * r.lw, neg, r.uw)
    bias = _dot(neg, r.ub) if r.ub is not None else None
    if r.lb is not None:
        term = _dot(pos, r.lb)
        bias = term if bias is None else bias + term
    return [out], bias


@_rule(L.MaxPool2d)
def _maxpool(ctx: Context, idx: int, layer: L.MaxPool2d, A: torch.Tensor) -> Step:
    r = ctx.maxpool(idx)
    N, M, C = A.shape[:3]
    flat = A.reshape(N, M, C, -1)
    pos, neg = flat.clamp(min=0), flat.clamp(max=0)
    dom = r.dominated.unsqueeze(1)
    coef = pos + torch.where(dom, neg, torch.zeros_like(neg))
    bias = torch.where(dom, torch.zeros_like(neg), neg * r.umax.unsqueeze(1)).sum((2, 3))
    index = r.sel.unsqueeze(1).expand(N, M, C, r.sel.shape[-1])
    out = torch.zeros(N, M, C, r.hw + 1, dtype=A.dtype, device=A.device).scatter_add(3, index, coef)
    return [out[..., :r.hw].reshape(N, M, *ctx.in_shape(idx))], bias


def backward(network: Network, rules: Registry, ctx: Context, start: int, A0: torch.Tensor,
             bias0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Push ``A0`` ``[N, M, *shape(start)]`` back to the input: ``(A_in [N, M, n_in], bias [N, M])``.

    Then ``A0 · node_start(x) + bias0 >= A_in · x + bias`` for every ``x`` the relaxations
    cover (``start = -1``: ``A0`` is already on the input).
    """
    N, M = A0.shape[:2]
    pending: dict[int, torch.Tensor] = {start: A0}
    bias = torch.zeros(N, M, dtype=A0.dtype, device=A0.device) if bias0 is None else bias0
    a_in: torch.Tensor | None = A0 if start < 0 else None
    for idx in range(start, -1, -1):
        A = pending.pop(idx, None)
        if A is None:
            continue
        node = network.nodes[idx]
        outs, b = rules.rule(node.layer)(ctx, idx, node.layer, A)
        if b is not None:
            bias = bias + b
        for j, Aj in zip(node.inputs, outs):
            if j < 0:
                a_in = Aj if a_in is None else a_in + Aj
            else:
                pending[j] = pending[j] + Aj if j in pending else Aj
    if a_in is None:
        a_in = torch.zeros(N, M, network.n_inputs, dtype=A0.dtype, device=A0.device)
    return a_in.reshape(N, M, -1), bias


def concretize(a_in: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor,
               upper: torch.Tensor, domains: Any = None) -> torch.Tensor:
    """Minimum of ``a_in · x + bias`` over the box ``[lower, upper]`` (``[N, n_in]``).

    With ``domains`` carrying an ℓ2/ℓ1 ball the result is a lower bound over ``ball ∩ box``:
    the larger of the box minimum and the dual-norm bound (:mod:`bab.bounding.balls`).
    """
    mid = ((lower + upper) / 2).unsqueeze(-1)
    rad = ((upper - lower) / 2).unsqueeze(-1)
    box = (torch.bmm(a_in, mid) - torch.bmm(a_in.abs(), rad)).squeeze(-1) + bias
    if domains is None or not uses_ball(domains):
        return box
    return torch.maximum(box, ball_lower(a_in, bias, domains.center, domains.eps, domains.p))
