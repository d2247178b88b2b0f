"""Linear relaxations of the nonlinear layers, for CROWN-family back-substitution.

Each relaxation is a pair of lines ``lw*x + lb <= f(x) <= uw*x + ub`` valid for every ``x``
in the pre-activation interval ``[l, u]``; tensors are shaped ``[N, 1 or M, *shape]`` so they
broadcast against a coefficient tensor ``A`` of shape ``[N, M, *shape]``.

ReLU: the upper line passes through ``(l, 0)`` and ``(u, u)``; the lower slope comes from a
*slope policy* (CROWN's adaptive rule, DeepPoly's area rule, Fast-Lin's parallel slope, or an
optimised alpha). Sigmoid/Tanh: chord and tangent lines picked by the signs of ``l`` and ``u``
(the functions are convex on ``x <= 0`` and concave on ``x >= 0``). MaxPool: the input with the
largest lower bound from below (slope 1); from above, that same input when it dominates its
window, else the constant max of the window's upper bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from onnx_models import layers as L

SlopePolicy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Relax:
    """Elementwise linear bounds ``lw*x + lb <= f(x) <= uw*x + ub`` (``None`` intercept: 0)."""

    lw: torch.Tensor
    lb: torch.Tensor | None
    uw: torch.Tensor
    ub: torch.Tensor | None


def crown_slope(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """CROWN's adaptive lower slope: 1 when ``u >= -l`` (ties go to 1), else 0."""
    return (u >= -l).to(l.dtype)


def deeppoly_slope(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """DeepPoly's area rule: slope 1 only when ``u > -l`` strictly (ties go to 0)."""
    return (u > -l).to(l.dtype)


def fastlin_slope(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Fast-Lin's lower line parallel to the upper one: slope ``u / (u - l)``."""
    return u / (u - l)


POLICIES: dict[str, SlopePolicy] = {
    "crown": crown_slope, "deeppoly": deeppoly_slope, "fastlin": fastlin_slope}


@dataclass
class ReluData:
    """Per-neuron ReLU relaxation data ``[N, *shape]`` (masks honour fixed phases)."""

    active: torch.Tensor
    unstable: torch.Tensor
    lw: torch.Tensor
    uw: torch.Tensor
    ub: torch.Tensor


def relu_data(l: torch.Tensor, u: torch.Tensor, phase: torch.Tensor | None,
              policy: SlopePolicy) -> ReluData:
    """Masks, upper line and default lower slope of a ReLU on ``[l, u]``.

    A fixed phase wins over the bounds: ``+1`` is the identity, ``-1`` the zero map.
    """
    free = torch.ones_like(l, dtype=torch.bool) if phase is None else phase == 0
    active = (l >= 0) & free if phase is None else (phase > 0) | (free & (l >= 0))
    inactive = (u <= 0) & ~active if phase is None else (phase < 0) | (free & (u <= 0) & (l < 0))
    unstable = ~active & ~inactive
    denom = torch.where(unstable, u - l, torch.ones_like(l))
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    slope = u / denom
    uw = torch.where(active, one, torch.where(unstable, slope, zero))
    ub = torch.where(unstable, -l * slope, zero)
    safe_l = torch.where(unstable, l, -one)
    safe_u = torch.where(unstable, u, one)
    lw = torch.where(active, one, torch.where(unstable, policy(safe_l, safe_u), zero))
    return ReluData(active, unstable, lw, uw, ub)


def relu_relax(d: ReluData, alpha: torch.Tensor | None = None) -> Relax:
    """The ReLU relaxation, with optional per-row lower slopes ``alpha`` ``[N, R, *shape]``."""
    uw, ub = d.uw.unsqueeze(1), d.ub.unsqueeze(1)
    if alpha is None:
        return Relax(d.lw.unsqueeze(1), None, uw, ub)
    stable = d.active.to(alpha.dtype).unsqueeze(1)
    lw = torch.where(d.unstable.unsqueeze(1), alpha.clamp(0.0, 1.0), stable)
    return Relax(lw, None, uw, ub)


def _sigmoid_d(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _tanh_d(x: torch.Tensor) -> torch.Tensor:
    return 1 - torch.tanh(x) ** 2


ACTIVATIONS: dict[type, tuple[Callable, Callable]] = {
    L.Sigmoid: (torch.sigmoid, _sigmoid_d), L.Tanh: (torch.tanh, _tanh_d)}


def _tangent_search(f: Callable, df: Callable, good: torch.Tensor, bad: torch.Tensor,
                    target: torch.Tensor, fx: torch.Tensor, upper: bool, steps: int = 30) -> torch.Tensor:
    """Bisect for a tangent point; ``good`` always holds a point whose tangent line is valid.

    Valid means the tangent at ``d`` passes above (``upper``) or below the point
    ``(target, fx)``; every returned point has been checked, so soundness needs no convergence.
    """
    for _ in range(steps):
        mid = (good + bad) / 2
        t = f(mid) + df(mid) * (target - mid)
        ok = t >= fx if upper else t <= fx
        good = torch.where(ok, mid, good)
        bad = torch.where(ok, bad, mid)
    return good


def s_shaped_relax(kind: type, l: torch.Tensor, u: torch.Tensor) -> Relax:
    """Sound chord/tangent lines for Sigmoid or Tanh on ``[l, u]`` (computed in float64).

    ``u <= 0`` (convex part): chord above, tangent at the midpoint below. ``l >= 0``
    (concave): tangent above, chord below. Mixed: the chord where it is valid (checked by the
    endpoint slope), else a tangent through the far endpoint found by bisection. Degenerate
    intervals (``u - l`` tiny, including ``l == u``) get the constant lines ``f(l)``, ``f(u)``.
    """
    f, df = ACTIVATIONS[kind]
    dtype = l.dtype
    l, u = l.detach().double(), u.detach().double()
    fl, fu = f(l), f(u)
    flat = (u - l) <= 1e-9
    k = (fu - fl) / torch.where(flat, torch.ones_like(l), u - l)
    m = (l + u) / 2
    tm_w, tm_b = df(m), f(m) - df(m) * m
    ch_w, ch_b = k, fl - k * l
    zero = torch.zeros_like(l)
    # Upper line (mixed case: chord valid iff f'(u) >= k, else a tangent at d in [0, u]).
    du = _tangent_search(f, df, u, zero, l, fl, True)
    up_w = torch.where(u <= 0, ch_w, torch.where(l >= 0, tm_w, torch.where(df(u) >= k, ch_w, df(du))))
    up_b = torch.where(u <= 0, ch_b, torch.where(l >= 0, tm_b,
                       torch.where(df(u) >= k, ch_b, f(du) - df(du) * du)))
    # Lower line (mixed case: chord valid iff f'(l) >= k, else a tangent at d in [l, 0]).
    dl = _tangent_search(f, df, l, zero, u, fu, False)
    lo_w = torch.where(u <= 0, tm_w, torch.where(l >= 0, ch_w, torch.where(df(l) >= k, ch_w, df(dl))))
    lo_b = torch.where(u <= 0, tm_b, torch.where(l >= 0, ch_b,
                       torch.where(df(l) >= k, ch_b, f(dl) - df(dl) * dl)))
    lo_w, lo_b = torch.where(flat, zero, lo_w), torch.where(flat, fl, lo_b)
    up_w, up_b = torch.where(flat, zero, up_w), torch.where(flat, fu, up_b)
    # Slack for rounding the lines to ``dtype``: scale of the terms times a few ulps.
    reach = torch.maximum(l.abs(), u.abs())
    ulp = 4 * torch.finfo(dtype).eps
    lo_b = lo_b - ulp * (1 + lo_b.abs() + lo_w.abs() * reach)
    up_b = up_b + ulp * (1 + up_b.abs() + up_w.abs() * reach)
    cast = lambda t: t.to(dtype).unsqueeze(1)
    return Relax(cast(lo_w), cast(lo_b), cast(up_w), cast(up_b))


UnaryRelax = Callable[[L.Layer, torch.Tensor, torch.Tensor], Relax]

#: Elementwise nonlinearities other than ReLU: layer class -> sound relaxation on ``[l, u]``
#: (``[N, *shape]`` each; the result broadcasts as ``[N, 1, *shape]``). This table is the one
#: place that says which elementwise layers the CROWN family relaxes; modules add entries with
#: :func:`register_unary`.
UNARY: dict[type, UnaryRelax] = {}

#: Layers of several input-dependent operands (or with a relaxation that reads their input
#: intervals directly: Mul, MatMul, Softmax): the sweep bounds all their inputs.
NEEDS_INPUT_BOUNDS: set[type] = set()


def register_unary(*kinds: type) -> Callable[[UnaryRelax], UnaryRelax]:
    """Decorator: ``fn(layer, l, u) -> Relax`` is the relaxation of the given layer classes."""
    def deco(fn: UnaryRelax) -> UnaryRelax:
        for kind in kinds:
            UNARY[kind] = fn
        return fn
    return deco


@register_unary(L.Sigmoid, L.Tanh)
def _s_shaped(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> Relax:
    return s_shaped_relax(type(layer), l, u)


def is_nonlinear(layer: L.Layer) -> bool:
    """Whether the sweep needs (tightened) bounds on this layer's inputs."""
    kind = type(layer)
    return kind in (L.ReLU, L.MaxPool2d) or kind in UNARY or kind in NEEDS_INPUT_BOUNDS


@dataclass
class MaxPoolRelax:
    """MaxPool relaxation: per output the flat input index ``sel`` ``[N, C, L]`` bounding it
    from below (slope 1), whether that input ``dominated`` the window (then it is exact), and
    the constant upper bound ``umax`` used otherwise. ``hw``: flat spatial input size."""

    sel: torch.Tensor
    dominated: torch.Tensor
    umax: torch.Tensor
    hw: int


def window_index(layer: L.MaxPool2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 device: torch.device) -> torch.Tensor:
    """``[K, L]`` flat input positions of every window entry (``H*W`` marks padding)."""
    _, H, W = in_shape
    Ho, Wo = out_shape[-2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel, layer.stride, layer.padding, layer.dilation
    extra_h = max(0, (Ho - 1) * sh + dh * (kh - 1) + 1 - (H + 2 * ph))
    extra_w = max(0, (Wo - 1) * sw + dw * (kw - 1) + 1 - (W + 2 * pw))
    grid = torch.arange(H * W, dtype=torch.float64, device=device).reshape(1, 1, H, W)
    grid = F.pad(grid, (pw, pw + extra_w, ph, ph + extra_h), value=float(H * W))
    cols = F.unfold(grid, (kh, kw), dilation=(dh, dw), stride=(sh, sw))[0]
    Hp, Wp = grid.shape[-2:]
    nh, nw = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    cols = cols.reshape(-1, nh, nw)[:, :Ho, :Wo]
    return cols.reshape(cols.shape[0], Ho * Wo).long()


def maxpool_relax(layer: L.MaxPool2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                  l: torch.Tensor, u: torch.Tensor) -> MaxPoolRelax:
    """Relaxation of a max-pool from its input bounds ``l``, ``u`` ``[N, C, H, W]``."""
    l, u = l.detach(), u.detach()
    N, C = l.shape[:2]
    hw = l.shape[-2] * l.shape[-1]
    index = window_index(layer, in_shape, out_shape, l.device)
    K, Lw = index.shape
    pad = torch.full((N, C, 1), float("-inf"), dtype=l.dtype, device=l.device)
    lw_ = torch.cat([l.reshape(N, C, hw), pad], -1)[:, :, index]  # [N, C, K, L]
    uw_ = torch.cat([u.reshape(N, C, hw), pad], -1)[:, :, index]
    lmax, jstar = lw_.max(dim=2)
    others = uw_.scatter(2, jstar.unsqueeze(2), float("-inf")).amax(dim=2)
    sel = torch.gather(index.expand(N, C, K, Lw), 2, jstar.unsqueeze(2)).squeeze(2)
    return MaxPoolRelax(sel, lmax >= others, uw_.amax(dim=2), hw)
