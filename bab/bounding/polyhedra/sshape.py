"""Optimisable tangent points for s-shaped activations (Sigmoid, Tanh): alpha-CROWN beyond ReLU.

An s-shaped ``f`` is convex on ``x <= 0`` and concave on ``x >= 0``. On ``[l, u]`` a tangent line
is a valid bound for a whole *range* of tangent points ``d`` (exact monotonicity arguments below),
so the tangent point is a free parameter: ``d = a + t (b - a)`` with ``t in [0, 1]`` and
``[a, b]`` the valid range, clamped into ``[a, b]`` after rounding. Every ``t`` gives a valid
line, which keeps the alpha-CROWN invariant (any parameter value is sound):

* lower line, ``u <= 0`` (convex): any ``d in [l, u]``;
* lower line, ``l < 0 < u`` where the chord is not below ``f``: ``d in [l, d_l]`` with ``d_l`` the
  checked tangent point through ``(u, f(u))`` (``g(d) = f(d) + f'(d)(u - d)`` increases for
  ``d < 0``, so every ``d <= d_l`` passes below ``f(u)``; on ``[0, u]`` ``f`` minus the line is
  concave and non-negative at both ends);
* upper line, ``l >= 0`` (concave): any ``d in [l, u]``;
* upper line, mixed, chord not above ``f``: ``d in [d_u, u]`` symmetrically.

Elsewhere the lines are the chord lines of :func:`~bab.bounding.polyhedra.relax.s_shaped_relax`
(fixed). Lines are computed in float64 and their intercepts widened by a few ulps of the working
dtype times the scale of the terms, as in ``s_shaped_relax``. ``t`` is stored as
``[N, rows, 2, *shape]`` (index 0: lower line, 1: upper line), clamped to ``[0, 1]`` by the
optimisers exactly like ReLU slopes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bab.bounding.polyhedra.relax import ACTIVATIONS, Relax, _tangent_search, s_shaped_relax
from onnx_models import layers as L

#: Layer kinds whose relaxation has optimisable tangent points.
SSHAPED: tuple[type, ...] = (L.Sigmoid, L.Tanh)


@dataclass
class SShapeData:
    """Static data of an s-shaped node on boxes ``[N, *shape]`` (float64 ranges).

    ``lo_tan``/``up_tan``: where the lower/upper line is a tangent; ``lo_a..lo_b`` and
    ``up_a..up_b``: the valid tangent-point ranges there; ``base``: the default relaxation
    (also the chord lines used where no tangent is); ``lo_mid``/``up_mid``: the convex /
    concave cases (default tangent at the midpoint); ``reach``: ``max(|l|, |u|)``.
    """

    kind: type
    lo_tan: torch.Tensor
    lo_a: torch.Tensor
    lo_b: torch.Tensor
    up_tan: torch.Tensor
    up_a: torch.Tensor
    up_b: torch.Tensor
    lo_mid: torch.Tensor
    up_mid: torch.Tensor
    reach: torch.Tensor
    base: Relax
    dtype: torch.dtype

    @property
    def optimisable(self) -> bool:
        """Whether any neuron has a tangent line (a parameter that matters)."""
        return bool(self.lo_tan.any() or self.up_tan.any())


def sshape_data(kind: type, l: torch.Tensor, u: torch.Tensor) -> SShapeData:
    """Tangent-point ranges of ``kind`` (Sigmoid/Tanh) on ``[l, u]`` (``[N, *shape]``)."""
    f, df = ACTIVATIONS[kind]
    dtype = l.dtype
    base = s_shaped_relax(kind, l, u)
    l, u = l.detach().double(), u.detach().double()
    fl, fu = f(l), f(u)
    flat = (u - l) <= 1e-9
    k = (fu - fl) / torch.where(flat, torch.ones_like(l), u - l)
    zero = torch.zeros_like(l)
    mixed = (l < 0) & (u > 0) & ~flat
    dl = _tangent_search(f, df, l, zero, u, fu, False)
    du = _tangent_search(f, df, u, zero, l, fl, True)
    lo_tan = ((u <= 0) & ~flat) | (mixed & (df(l) < k))
    up_tan = ((l >= 0) & ~flat) | (mixed & (df(u) < k))
    lo_b = torch.where(u <= 0, u, dl)
    up_a = torch.where(l >= 0, l, du)
    return SShapeData(kind, lo_tan, l, lo_b, up_tan, up_a, u, u <= 0, l >= 0,
                       torch.maximum(l.abs(), u.abs()), base, dtype)


def default_t(data: SShapeData) -> torch.Tensor:
    """``[N, 2, *shape]`` parameters reproducing the default lines: midpoint tangents in the
    convex/concave cases, the extreme valid tangents (``d_l``, ``d_u``) in the mixed case."""
    half = torch.full_like(data.lo_a, 0.5)
    t_lo = torch.where(data.lo_mid, half, torch.ones_like(half))
    t_up = torch.where(data.up_mid, half, torch.zeros_like(half))
    return torch.stack([t_lo, t_up], 1).to(data.dtype)


def tangent_points(data: SShapeData, t: torch.Tensor) -> torch.Tensor:
    """Tangent points ``[N, R, 2, *shape]`` (float64) that parameters ``t`` select."""
    t = t.double().clamp(0.0, 1.0)
    out = []
    for j, (a, b) in enumerate(((data.lo_a, data.lo_b), (data.up_a, data.up_b))):
        a, b = a.unsqueeze(1), b.unsqueeze(1)
        out.append(torch.minimum(torch.maximum(a + t[:, :, j] * (b - a), a), b))
    return torch.stack(out, 2)


def remap_t(kind: type, l: torch.Tensor, u: torch.Tensor, l2: torch.Tensor, u2: torch.Tensor,
            t: torch.Tensor) -> torch.Tensor:
    """Parameters on ``[l2, u2]`` selecting the tangent points that ``t`` (``[N, R, 2, *shape]``)
    selects on ``[l, u]``, clamped into the new valid ranges (the default where a line was not
    a tangent before)."""
    old, new = sshape_data(kind, l, u), sshape_data(kind, l2, u2)
    d = tangent_points(old, t)
    ranges = ((new.lo_a, new.lo_b, old.lo_tan), (new.up_a, new.up_b, old.up_tan))
    base = default_t(new).double()
    out = []
    for j, (a, b, was) in enumerate(ranges):
        a, b = a.unsqueeze(1), b.unsqueeze(1)
        frac = ((d[:, :, j] - a) / (b - a).clamp(min=1e-30)).clamp(0.0, 1.0)
        out.append(torch.where(was.unsqueeze(1), frac, base[:, j].unsqueeze(1)))
    return torch.stack(out, 2).to(t.dtype)


def _tangent(f, df, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = df(d)
    return w, f(d) - w * d


def sshape_relax(data: SShapeData, t: torch.Tensor) -> Relax:
    """The relaxation with tangent points ``t`` ``[N, R, 2, *shape]`` (any values: clamped)."""
    f, df = ACTIVATIONS[data.kind]
    points = tangent_points(data, t)
    ulp = 4 * torch.finfo(data.dtype).eps
    reach = data.reach.unsqueeze(1)
    lines = []
    for j in range(2):
        w, c = _tangent(f, df, points[:, :, j])
        pad = ulp * (1 + c.abs() + w.abs() * reach)
        lines.append((w, c - pad if j == 0 else c + pad))
    (lw, lb), (uw, ub) = lines
    lo_tan, up_tan = data.lo_tan.unsqueeze(1), data.up_tan.unsqueeze(1)
    cast = lambda x: x.to(data.dtype)
    return Relax(torch.where(lo_tan, cast(lw), data.base.lw), torch.where(lo_tan, cast(lb), data.base.lb),
                 torch.where(up_tan, cast(uw), data.base.uw), torch.where(up_tan, cast(ub), data.base.ub))
