"""Backward (CROWN-family) rules for the general-graph layers that are affine in their inputs:
Gather (Slice, Split, Expand, nearest Resize, ...), Concat, ReduceSum and ConvTranspose2d.

The nonlinear general-graph layers register from their own modules, imported at the end:
:mod:`~bab.bounding.polyhedra.elementwise` (Exp, Log, Sin, ... into ``relax.UNARY``) and
:mod:`~bab.bounding.polyhedra.bilinear` (Mul, MatMul, Softmax).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bab.bounding.polyhedra.backward import Context, Step, register_rule
from onnx_models import layers as L


@register_rule(L.Gather)
def _gather(ctx: Context, idx: int, layer: L.Gather, A: torch.Tensor) -> Step:
    """Scatter-add the coefficients back to the picked positions (repeats add up)."""
    N, M = A.shape[:2]
    shape = ctx.in_shape(idx)
    out = torch.zeros(N, M, math.prod(shape), dtype=A.dtype, device=A.device)
    index = layer.index.to(A.device).expand(N, M, -1)
    out.scatter_add_(2, index, A.reshape(N, M, -1))
    return [out.reshape(N, M, *shape)], None


@register_rule(L.Concat)
def _concat(ctx: Context, idx: int, layer: L.Concat, A: torch.Tensor) -> Step:
    """Split the coefficients along the concatenated axis."""
    sizes = [shape[layer.axis] for shape in ctx.in_shapes(idx)]
    return list(torch.split(A, sizes, dim=layer.axis + 2)), None


@register_rule(L.ReduceSum)
def _reduce_sum(ctx: Context, idx: int, layer: L.ReduceSum, A: torch.Tensor) -> Step:
    """Broadcast the coefficients over the summed axes."""
    shape = ctx.in_shape(idx)
    if not layer.keepdims:
        for a in sorted(layer.axes):
            A = A.unsqueeze(a + 2)
    return [A.expand(*A.shape[:2], *shape).contiguous()], None


@register_rule(L.ConvTranspose2d)
def _conv_transpose(ctx: Context, idx: int, layer: L.ConvTranspose2d, A: torch.Tensor) -> Step:
    """The adjoint of a transposed convolution is the convolution with the same weight."""
    N, M, Co, Ho, Wo = A.shape
    C, H, W = ctx.in_shape(idx)
    out = F.conv2d(A.reshape(N * M, Co, Ho, Wo), layer.weight, None, layer.stride,
                   layer.padding, layer.dilation, layer.groups)
    out = out[..., :H, :W]
    bias = None if layer.bias is None else A.sum((-2, -1)) @ layer.bias
    return [out.reshape(N, M, C, H, W)], bias


from bab.bounding.polyhedra import bilinear, elementwise  # noqa: E402,F401  (register rules)
