"""IBP rules of Mul, MatMul (two input-dependent operands) and Softmax.

All three are computed in float64 and widened outward by a few ulps of the working dtype, so
the interval holds the network's rounded output too:

* Mul: the minimum and maximum of the four corner products (exact for a bilinear function).
* MatMul: per product term the corner interval, summed over the contracted axis (chunked
  over rows), widened by the rounding error of a float dot product (relative to
  ``sum |a| |b|``).
* Softmax: the exact interval of each entry, ``1 / (1 + sum_{j != i} exp(u_j - l_i))`` to
  ``1 / (1 + sum_{j != i} exp(l_j - u_i))``.
"""

from __future__ import annotations

import torch

from bab.bounding.interval.ibp import RULES, Interval
from onnx_models import layers as L

ULPS = 8  # outward widening, in units of the working dtype's machine epsilon


def widen(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype, terms: int = 1) -> Interval:
    """Cast a float64 interval to ``dtype``, widened by ``ULPS * terms`` relative eps plus a
    tiny absolute amount (rounding of ``terms`` accumulated products)."""
    eps = torch.finfo(dtype).eps * ULPS * terms
    tiny = torch.finfo(dtype).tiny
    lo = lo - eps * lo.abs() - tiny
    hi = hi + eps * hi.abs() + tiny
    return lo.to(dtype), hi.to(dtype)


def mul_interval(a: Interval, b: Interval) -> Interval:
    """Exact float64 interval of ``a * b`` (corner products; broadcasts like ``*``)."""
    al, au, bl, bu = (t.double() for t in (*a, *b))
    corners = torch.stack(torch.broadcast_tensors(al * bl, al * bu, au * bl, au * bu))
    corners = torch.nan_to_num(corners, nan=0.0)  # 0 * inf: the product is 0 there
    return corners.amin(0), corners.amax(0)


@RULES.register(L.Mul)
def _mul(layer: L.Mul, a: Interval, b: Interval) -> Interval:
    lo, hi = mul_interval(a, b)
    return widen(lo, hi, a[0].dtype)


def matmul_interval(a: Interval, b: Interval, budget: int = 1 << 22) -> Interval:
    """Exact float64 interval of ``a @ b`` per product term (corner products), summed over
    the contracted axis; rows of ``a`` are chunked so that the ``[.., m, k, n]`` corner
    tensors stay within ``budget`` elements."""
    al, au = a[0].double().unsqueeze(-1), a[1].double().unsqueeze(-1)  # [.., m, k, 1]
    bl, bu = b[0].double().unsqueeze(-3), b[1].double().unsqueeze(-3)  # [.., 1, k, n]
    m, k, n = al.shape[-3], al.shape[-2], bl.shape[-1]
    rest = max(1, al[..., 0, 0, 0].numel())
    step = max(1, budget // max(1, rest * k * n))
    los, his = [], []
    for r0 in range(0, m, step):
        part = (al[..., r0:r0 + step, :, :], au[..., r0:r0 + step, :, :])
        lo, hi = mul_interval(part, (bl, bu))
        los.append(lo.sum(-2))
        his.append(hi.sum(-2))
    return torch.cat(los, -2), torch.cat(his, -2)


@RULES.register(L.MatMul)
def _matmul(layer: L.MatMul, a: Interval, b: Interval) -> Interval:
    lo, hi = matmul_interval(a, b)
    # a float matmul's error is relative to sum |a||b|, not to the result: widen by that
    mag = torch.maximum(a[0].abs(), a[1].abs()).double() @ torch.maximum(b[0].abs(), b[1].abs()).double()
    slack = torch.finfo(a[0].dtype).eps * ULPS * (a[0].shape[-1] + 2) * mag
    return widen(lo - slack, hi + slack, a[0].dtype)


def softmax_interval(x: Interval, dim: int) -> Interval:
    """Exact float64 interval of softmax along ``dim`` (not widened)."""
    l = x[0].double().movedim(dim, -1)
    u = x[1].double().movedim(dim, -1)
    # e[.., i, j] = exp(u_j - l_i) (for the lower end) / exp(l_j - u_i) (upper end); j = i is 1
    eye = torch.eye(l.shape[-1], dtype=torch.bool, device=l.device)
    big = torch.exp(u.unsqueeze(-2) - l.unsqueeze(-1)).masked_fill(eye, 1.0)
    small = torch.exp(l.unsqueeze(-2) - u.unsqueeze(-1)).masked_fill(eye, 1.0)
    lo = torch.nan_to_num(1.0 / big.sum(-1), nan=0.0)
    hi = torch.nan_to_num(1.0 / small.sum(-1), nan=1.0)
    return lo.movedim(-1, dim), hi.movedim(-1, dim)


@RULES.register(L.Softmax)
def _softmax(layer: L.Softmax, x: Interval) -> Interval:
    dim = layer._dim(x[0])
    lo, hi = softmax_interval(x, dim)
    lo, hi = widen(lo, hi, x[0].dtype, terms=x[0].shape[dim] + 4)
    return lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)
