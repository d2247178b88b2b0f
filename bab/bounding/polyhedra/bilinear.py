"""Backward rules of the layers with two input-dependent operands (Mul, MatMul) and of
Softmax: relaxations built from the operands' intervals (``Context.box``).

Mul and MatMul, per product term ``z = x y`` on the box ``[xl, xu] x [yl, yu]``: any plane
pair from the McCormick envelope is valid; the rule picks, per term, the pair exact along
``x = xl`` when ``x >= 0`` (attention probabilities: ``yl x + xl y - xl yl <= z <=
yu x + xl y - xl yu``, i.e. ``x [yl, yu]`` when ``xl = 0``), else (Mul only) the pair exact
along ``y = yl`` when ``y >= 0``, else the average of the two McCormick planes on each side,
``ym x + xm y - xm ym ∓ xr yr`` (half the worst-case gap of either plane). Every choice is a
product of an ``a``-factor and a ``b``-factor, so a MatMul is contracted with matrix products
only, never a ``[.., m, k, n]`` intermediate. Intercepts are exact for the slopes as rounded
to the working dtype (box corners, in float64), then widened by the rounding error of the
product itself (relative to ``sum |a| |b|`` for a MatMul). ``x * x`` (one node feeding both
operands) uses the square's own relaxation: tangent at the midpoint below, chord above.

Softmax along an axis of size ``n``: ``s_i = 1 / S_i`` with ``S_i = 1 + sum_{j != i}
exp(x_j - x_i)``, relaxed by composing sound lines (all in float64): ``1/S`` on
``[S_l, S_u]`` (tangent at ``sqrt(S_l S_u)`` below, chord above), ``exp`` on each difference
interval (tangent parallel to the chord below, chord above), and the differences are exact.
The difference intervals are the interval ones ``[l_j - u_i, u_j - l_i]`` intersected with
CROWN bounds of ``x_j - x_i`` (one extra backward pass per softmax node and sweep, cached;
correlated logits make them much tighter). The sum-to-one identity ``A·s = (A - c)·s + c``
holds for any ``c``; ``c`` is the weighted median of each row's coefficients (weights: the
width of each entry's interval), which minimises ``sum |a_i - c| (u_i - l_i)``. A final
slack covers the rounding of the network's softmax and of the coefficients cast to the
working dtype.
"""

from __future__ import annotations

import math

import torch

from bab.bounding.interval.bilinear import ULPS
from bab.bounding.polyhedra.backward import Context, Step, _reduce_to, _sample_sum, register_rule
from bab.bounding.polyhedra.relax import NEEDS_INPUT_BOUNDS
from onnx_models import layers as L

NEEDS_INPUT_BOUNDS.update({L.Mul, L.MatMul, L.Softmax})

SOFTMAX_SHIFT = True  # use the sum-to-one identity (a sound rewrite for any shift)
SOFTMAX_DIFFS = True  # CROWN bounds on the logit differences (one extra backward pass)
DIFF_MAX_ROWS = 4096  # ... when a softmax needs at most this many difference rows
_BIG = 600.0  # exp differences above this are treated as unbounded (float64 safety)


def _mid_rad(box: tuple[torch.Tensor, torch.Tensor], ndim: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 midpoint and radius of a box (padded after the batch axis to ``ndim``)."""
    lo, hi = box[0].detach().double(), box[1].detach().double()
    while ndim is not None and lo.dim() < ndim:
        lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    return (lo + hi) / 2, (hi - lo) / 2


def _eps(dtype: torch.dtype) -> float:
    return ULPS * torch.finfo(dtype).eps


def _corner_range(xl, xu, yl, yu, wx, wy) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the box corners of ``x y - wx x - wy y`` (exact for a bilinear map)."""
    vals = torch.stack([x * y - wx * x - wy * y for x in (xl, xu) for y in (yl, yu)])
    return vals.amin(0), vals.amax(0)


def _same_operand(ctx: Context, idx: int) -> bool:
    sweep = getattr(ctx, "sweep", None)
    if sweep is None:
        return False
    ins = sweep.network.nodes[idx].inputs
    return len(ins) == 2 and ins[0] == ins[1]


def _split(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = A.clamp(min=0)
    return pos, A - pos


def _square_lines(l: torch.Tensor, u: torch.Tensor, dtype: torch.dtype):
    """``x^2`` on ``[l, u]`` (float64): tangent at the midpoint below, chord above; slopes
    rounded to ``dtype``, intercepts exact for the rounded slopes, then widened."""
    lw = (l + u).to(dtype).double()  # derivative at the midpoint, rounded
    uw = lw  # the chord slope is l + u too
    xs = torch.minimum(torch.maximum(lw / 2, l), u)  # minimiser of x^2 - w x on [l, u]
    lb = xs * xs - lw * xs
    ub = torch.maximum(l * l - uw * l, u * u - uw * u)
    reach = torch.maximum(l.abs(), u.abs())
    slack = _eps(dtype) * (reach * reach + lw.abs() * reach + 1e-30)
    return lw, lb - slack, uw, ub + slack


@register_rule(L.Mul)
def _mul(ctx: Context, idx: int, layer: L.Mul, A: torch.Tensor) -> Step:
    """McCormick planes for ``a * b`` (see the module docstring); coefficients for both operands."""
    dtype = A.dtype
    nd = A.dim() - 1
    (am, ar), (bm, br) = _mid_rad(ctx.box(idx, 0), nd), _mid_rad(ctx.box(idx, 1), nd)
    am, ar, bm, br = torch.broadcast_tensors(am, ar, bm, br)
    pos, neg = _split(A)
    if _same_operand(ctx, idx):
        lw, lb, uw, ub = (t.unsqueeze(1) for t in _square_lines(am - ar, am + ar, dtype))
        coef = pos * lw.to(dtype) + neg * uw.to(dtype)
        bias = _sample_sum(pos * lb.to(dtype)) + _sample_sum(neg * ub.to(dtype))
        return [_reduce_to(coef, ctx.in_shape(idx, 0)), torch.zeros_like(coef)], bias
    xl, xu, yl, yu = am - ar, am + ar, bm - br, bm + br
    wla, wua, wlb, wub = (t.to(dtype).double() for t in _mul_slopes(xl, xu, yl, yu))
    lo, _ = _corner_range(xl, xu, yl, yu, wla, wlb)
    _, hi = _corner_range(xl, xu, yl, yu, wua, wub)
    reach_a, reach_b = am.abs() + ar, bm.abs() + br
    slope = torch.maximum(wla.abs(), wua.abs()) * reach_a + torch.maximum(wlb.abs(), wub.abs()) * reach_b
    reach_slack = _eps(dtype) * (reach_a * reach_b + slope + 1e-30)
    lo, hi = (lo - reach_slack).unsqueeze(1), (hi + reach_slack).unsqueeze(1)
    bias = _sample_sum(pos * lo.to(dtype)) + _sample_sum(neg * hi.to(dtype))
    w = lambda t: t.unsqueeze(1).to(dtype)
    ca = pos * w(wla) + neg * w(wua)
    cb = pos * w(wlb) + neg * w(wub)
    return [_reduce_to(ca, ctx.in_shape(idx, 0)), _reduce_to(cb, ctx.in_shape(idx, 1))], bias


def _mul_slopes(xl, xu, yl, yu):
    """Slopes ``(lower on x, upper on x, lower on y, upper on y)`` of the planes for ``x y``:
    exact along ``x = xl`` where ``x >= 0``, else along ``y = yl`` where ``y >= 0``, else the
    averaged McCormick planes."""
    xm, ym = (xl + xu) / 2, (yl + yu) / 2
    px, py = xl >= 0, (yl >= 0) & (xl < 0)
    wla = torch.where(px | py, yl, ym)
    wua = torch.where(px, yu, torch.where(py, yl, ym))
    wlb = torch.where(px | py, xl, xm)
    wub = torch.where(px, xl, torch.where(py, xu, xm))
    return wla, wua, wlb, wub


@register_rule(L.MatMul)
def _matmul(ctx: Context, idx: int, layer: L.MatMul, A: torch.Tensor) -> Step:
    """``a [.., m, k] @ b [.., k, n]``, contracted with ``A [N, M, .., m, n]`` by matrix
    products only (no ``[.., m, k, n]`` intermediate): terms whose ``a`` entry is
    non-negative (attention probabilities) take the McCormick pair exact along ``a = a_l``
    (``b_l a + a_l b - a_l b_l`` below, ``b_u a + a_l b - a_l b_u`` above); the others the
    averaged planes."""
    dtype = A.dtype
    (am, ar), (bm, br) = _mid_rad(ctx.box(idx, 0)), _mid_rad(ctx.box(idx, 1))
    al, bl, bu = am - ar, bm - br, bm + br
    nn = (al >= 0).to(am.dtype)  # [N, .., m, k]: the pair exact along a = a_l
    mid = 1 - nn
    am_t, bm_t = am.to(dtype), bm.to(dtype)  # the averaged planes' slopes as used
    da, db = (am - am_t.double()).abs(), (bm - bm_t.double()).abs()
    # averaged terms: x y - bm~ x - am~ y in am bm - am bm~ - am~ bm ± (|da| rb + ra |db| + ra rb)
    amc, amtc = mid * am, mid * am_t.double()
    centre = amc @ bm - amc @ bm_t.double() - amtc @ bm
    rad = (mid * da) @ br + (mid * ar) @ db + (mid * ar) @ br
    lower = centre - rad - (nn * al) @ bl  # exact-pair terms: intercepts -a_l b_l and -a_l b_u
    upper = centre + rad - (nn * al) @ bu
    mag = (am.abs() + ar) @ (bm.abs() + br)  # float matmul error is relative to sum |a||b|
    slack = _eps(dtype) * (am.shape[-1] + 2) * (mag + am_t.double().abs() @ (bm.abs() + br)
                                               + (am.abs() + ar) @ (bm.abs() + br).to(dtype).double())
    lower, upper = (lower - slack).unsqueeze(1), (upper + slack).unsqueeze(1)
    pos, neg = _split(A.double())
    bias = _sample_sum(pos * lower + neg * upper).to(dtype)
    bias = bias - _eps(dtype) * bias.detach().abs()  # rounding of the cast
    T = lambda t: t.to(dtype).unsqueeze(1).transpose(-1, -2)
    pos, neg = _split(A)
    nn_t = nn.to(dtype).unsqueeze(1)
    ca = nn_t * (pos @ T(bl) + neg @ T(bu)) + (1 - nn_t) * (A @ T(bm))
    cb = T(nn * al + mid * am_t.double()) @ A
    return [ca, cb], bias


def _recip_lines(sl: torch.Tensor, su: torch.Tensor):
    """``1/S`` on ``[sl, su]`` (``sl >= 1``; ``su`` may be inf): tangent at ``sqrt(sl su)``
    below, chord above (float64, intercepts widened)."""
    finite = torch.isfinite(su)
    su_f = torch.where(finite, su, sl)
    t = torch.sqrt(sl * su_f)
    lw = torch.where(finite, -1.0 / (t * t), torch.zeros_like(t))
    lb = torch.where(finite, 2.0 / t, torch.zeros_like(t))
    uw = torch.where(finite, -1.0 / (sl * su_f), torch.zeros_like(t))
    ub = torch.where(finite, 1.0 / sl + 1.0 / su_f, 1.0 / sl)
    e = 16 * torch.finfo(torch.float64).eps
    return lw, lb - e * (lb.abs() + lw.abs() * su_f), uw, ub + e * (ub.abs() + uw.abs() * su_f)


def _exp_lines(dl: torch.Tensor, du: torch.Tensor):
    """``exp`` on ``[dl, du]`` (float64): tangent parallel to the chord below, chord above.
    ``du`` is clamped at ``_BIG`` (the caller gives such rows a zero coefficient); an
    infinite ``dl`` gets the constant upper line ``exp(du)``."""
    du = du.clamp(max=_BIG)
    finite = torch.isfinite(dl)
    dl_f = torch.where(finite, dl, du - 1.0)
    el, eu = torch.exp(dl_f), torch.exp(du)
    width = du - dl_f
    flat = (width <= 1e-9) | ~finite
    uw = torch.where(flat, torch.zeros_like(du), (eu - el) / torch.where(flat, torch.ones_like(du), width))
    ub = torch.where(flat, eu, el - uw * dl_f)
    t = torch.where(flat | (uw <= 0), dl_f, torch.log(uw.clamp(min=1e-300)))
    t = torch.minimum(torch.maximum(t, dl_f), du)
    lw = torch.exp(t)
    lb = lw * (1 - t)
    e = 16 * torch.finfo(torch.float64).eps
    reach = torch.maximum(dl_f.abs(), du.abs())
    return lw, lb - e * (lb.abs() + lw * reach + 1e-300), uw, ub + e * (ub.abs() + uw * reach + 1e-300)


def _weighted_median(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted median of ``a`` along the last axis (``w`` broadcasts), keepdim."""
    order = a.argsort(-1)
    a_s = a.gather(-1, order)
    cum = w.expand_as(a).gather(-1, order).cumsum(-1)
    k = (cum < cum[..., -1:] / 2).sum(-1, keepdim=True).clamp(max=a.shape[-1] - 1)
    return a_s.gather(-1, k)


def _diff_rows(R: int, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[R n n, R, n]`` rows picking ``x[r, j] - x[r, i]`` (row ``(r, i, j)``)."""
    eye = torch.eye(n, dtype=dtype, device=device)
    D = eye.unsqueeze(0) - eye.unsqueeze(1)  # D[i, j, k] = [k == j] - [k == i]
    rows = torch.einsum("rs,ijk->rijsk", torch.eye(R, dtype=dtype, device=device), D)
    return rows.reshape(R * n * n, R, n)


def _diff_bounds(ctx: Context, idx: int, dim: int, n: int):
    """CROWN bounds ``[N, R, n, n]`` of ``x_j - x_i`` (index ``[.., i, j]``) on the softmax
    input, cached per sweep; ``None`` when unavailable (no sweep, IBP intermediates, too many
    rows). Correlated logits make these much tighter than interval differences."""
    sweep = getattr(ctx, "sweep", None)
    if sweep is None or not SOFTMAX_DIFFS or sweep.opts.intermediate != "crown":
        return None
    j = sweep.network.nodes[idx].inputs[0]
    shape = list(ctx.in_shape(idx))
    R = max(1, math.prod(shape) // n)
    if j < 0 or R * n * n > DIFF_MAX_ROWS:
        return None
    key = ("softmax-diffs", idx)
    if key not in sweep._cache:
        N, dt, dev = sweep.domains.size, sweep.domains.lower.dtype, sweep.domains.lower.device
        moved = shape[:dim - 1] + shape[dim:] + [n]
        rows = _diff_rows(R, n, dt, dev).reshape(-1, *moved).movedim(-1, dim)  # [rows, *shape]
        step = max(1, sweep.chunk(j))
        parts = [sweep.lower(j, rows[r0:r0 + step].expand(N, *rows[r0:r0 + step].shape)).detach()
                 for r0 in range(0, rows.shape[0], step)]
        low = torch.cat(parts, 1).double().reshape(N, R, n, n)
        sweep._cache[key] = (low, -low.transpose(-1, -2))
    return sweep._cache[key]


def _softmax_parts(dl: torch.Tensor, du: torch.Tensor):
    """From bounds ``[.., i, j]`` of ``x_j - x_i`` (float64): the bounds ``S_l``, ``S_u`` of
    every ``S_i``, the lines of ``1/S_i`` (``[.., n]``) and of every ``exp(x_j - x_i)``
    (``[.., n, n]``, diagonal zeroed)."""
    n = dl.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=dl.device)
    sl = torch.exp(dl.clamp(max=_BIG)).masked_fill(eye, 1.0).sum(-1)
    su = torch.exp(du.clamp(max=_BIG)).masked_fill(eye, 1.0).sum(-1)
    su = torch.where((du.masked_fill(eye, 0.0) > _BIG).any(-1), torch.full_like(su, float("inf")), su)
    recip = _recip_lines(sl, su)
    exp = tuple(t.masked_fill(eye, 0.0) for t in _exp_lines(dl, du))
    return (sl, su), recip, exp


@register_rule(L.Softmax)
def _softmax(ctx: Context, idx: int, layer: L.Softmax, A: torch.Tensor) -> Step:
    """``s_i = 1 / (1 + sum_{j != i} exp(x_j - x_i))`` relaxed by composition (float64)."""
    dtype = A.dtype
    lo, hi = (t.detach() for t in ctx.box(idx))
    dim = layer._dim(lo)  # axis in the [N, *shape] box
    N, M, n = A.shape[0], A.shape[1], lo.shape[dim]
    l = lo.double().movedim(dim, -1).reshape(N, -1, n)  # [N, R, n]
    u = hi.double().movedim(dim, -1).reshape(N, -1, n)
    R = l.shape[1]
    a = A.double().movedim(dim + 1, -1).reshape(N, M, R, n)
    bias = torch.zeros(N, M, dtype=torch.float64, device=A.device)
    dl = l.unsqueeze(-2) - u.unsqueeze(-1)  # [N, R, i, j]: x_j - x_i >= l_j - u_i
    du = u.unsqueeze(-2) - l.unsqueeze(-1)
    crown = _diff_bounds(ctx, idx, dim, n)
    if crown is not None:
        dl, du = torch.maximum(dl, crown[0]), torch.minimum(du, crown[1])
        du = torch.maximum(du, dl)  # an empty pair (float noise): keep it a point
    (sl, su), (rlw, rlb, ruw, rub), (tw, tb, cw, cb) = _softmax_parts(dl, du)
    if SOFTMAX_SHIFT:
        c = _weighted_median(a, (1.0 / sl - 1.0 / su).unsqueeze(1) + 1e-12)
        a = a - c
        bias = bias + c.squeeze(-1).sum(-1)
    pos, neg = _split(a)
    g = pos * rlw.unsqueeze(1) + neg * ruw.unsqueeze(1)  # coefficient on S_i, [N, M, R, n]
    bias = bias + (pos * rlb.unsqueeze(1) + neg * rub.unsqueeze(1)).sum((-2, -1))
    bias = bias + g.sum((-2, -1))  # the j = i term of S_i is exactly 1
    gp, gn = _split(g)  # exp lower (tangent) where g > 0, upper (chord) where g < 0
    bias = bias + (gp * tb.sum(-1).unsqueeze(1) + gn * cb.sum(-1).unsqueeze(1)).sum((-2, -1))
    # h[i, j] = gp_i tw_ij + gn_i cw_ij multiplies x_j - x_i: x_j gets sum_i, x_i loses sum_j
    col = torch.einsum("nmri,nrij->nmrj", gp, tw) + torch.einsum("nmri,nrij->nmrj", gn, cw)
    row = gp * tw.sum(-1).unsqueeze(1) + gn * cw.sum(-1).unsqueeze(1)
    coef = col - row
    # rounding: the network's softmax (each entry within (n + 4) eps of the real one), the
    # coefficients cast to dtype (times the reach of x) and the bias cast
    reach = torch.maximum(l.abs(), u.abs()).unsqueeze(1)
    eps = _eps(dtype)
    slack = eps * ((n + 4) * A.double().abs().flatten(2).sum(-1) + (coef.abs() * reach).sum((-2, -1))
                   + bias.abs() + 1e-30)
    bias = bias - slack
    shape = list(lo.movedim(dim, -1).shape[1:])
    coef = coef.reshape(N, M, *shape).movedim(-1, dim + 1).to(dtype)
    return [coef.contiguous()], bias.to(dtype) - eps * bias.detach().abs().to(dtype)
