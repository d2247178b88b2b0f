"""Sound linear relaxations of the general-graph elementwise nonlinearities (Exp, Log, Sqrt,
Reciprocal, Pow, Sin, Cos, Sign, Floor), registered into ``relax.UNARY``.

Every relaxation is a pair of lines ``lw*x + lb <= f(x) <= uw*x + ub`` valid on the whole
interval ``[l, u]``, computed in float64:

- convex pieces (Exp, Reciprocal on ``l > 0``, even and negative powers, ``x**e`` with
  ``e > 1``): the chord above, the tangent at ``t = l + alpha (u - l)`` below (``alpha``
  defaults to 0.5, the midpoint; any ``alpha`` in ``[0, 1]`` is sound, so it can be
  optimised later). Concave pieces (Log, Sqrt, ``x**e`` with ``0 < e < 1``, Reciprocal on
  ``u < 0``): the mirror image. Odd powers ``x**3, x**5, ...`` (concave for ``x < 0``, convex
  for ``x > 0``) use the s-shaped rule of Sigmoid/Tanh on ``-f``: the chord where it is valid,
  else a tangent through the far end found by bisection (every candidate is checked);
- Sin/Cos: lines with the chord's slope ``k`` (or a given slope), each shifted by the exact
  extreme of ``f(x) - k x`` over ``[l, u]``, found at the ends and at every critical point
  ``f'(x) = k`` inside (:func:`~bab.bounding.interval.elementwise.trig_extremes`). Where
  ``f`` is concave on ``[l, u]`` this is the chord below and the parallel tangent above;
  across inflection points it stays sound. Intervals of width ``>= 2π``: ``-1 <= f <= 1``;
- Sign/Floor (step functions): the constant lines of the range, or sloped lines when tighter:
  Sign on ``[0, u]`` is ``>= x/u``; across 0 the line through ``(0, -1)`` (or ``(0, 1)``)
  is used on the longer side (area rule). Floor uses slope ``s`` (default: the slope
  ``(floor(u) - floor(l)) / (u - l)``) with intercepts from the exact infimum/supremum of
  ``floor(x) - s x`` over the integer pieces of ``[l, u]``.

Degenerate intervals (``u - l`` tiny, ``l == u`` included) get the constant lines of the range.
Intercepts are widened by ``8 ulp * (1 + |b| + |w| max(|l|, |u|))`` of the bounds' dtype, which
covers the float64 errors and the rounding of the lines to the dtype. Intervals outside an op's
domain are refused (:class:`~bab.bounding.base.BounderRefusal`), as in IBP.
"""

from __future__ import annotations

from typing import Callable

import torch

from bab.bounding.base import BounderRefusal
from bab.bounding.interval.elementwise import (TWO_PI, check_domain, pow64, pow_kind,
                                               trig_extremes, unary_range)
from bab.bounding.polyhedra.backward import activation_rule, register_rule
from bab.bounding.polyhedra.relax import Relax, register_unary
from onnx_models import layers as L

Fn = Callable[[torch.Tensor], torch.Tensor]
Lines = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # lw, lb, uw, ub
KINDS = (L.Exp, L.Log, L.Sqrt, L.Reciprocal, L.Pow, L.Sin, L.Cos, L.Sign, L.Floor)


def _neg(f: Fn) -> Fn:
    return lambda x: -f(x)


def _flip(lines: Lines) -> Lines:
    """Lines of ``f`` from the lines of ``-f``."""
    lw, lb, uw, ub = lines
    return -uw, -ub, -lw, -lb


def chord(f: Fn, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope and intercept of the chord of ``f`` over ``[l, u]`` (slope 0 where ``l == u``)."""
    width = u - l
    k = (f(u) - f(l)) / torch.where(width > 0, width, torch.ones_like(width))
    k = torch.where(width > 0, k, torch.zeros_like(k))
    return k, f(l) - k * l


def tangent(f: Fn, df: Fn, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope and intercept of the tangent of ``f`` at ``t``."""
    w = df(t)
    return w, f(t) - w * t


def tangent_point(l: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """``l + alpha (u - l)`` with ``alpha`` clipped to ``[0, 1]`` (default 0.5)."""
    a = 0.5 if alpha is None else alpha.to(l.dtype).clamp(0.0, 1.0)
    return l + a * (u - l)


def convex_lines(f: Fn, df: Fn, l: torch.Tensor, u: torch.Tensor,
                 alpha: torch.Tensor | None = None) -> Lines:
    """Convex ``f`` on ``[l, u]``: tangent at the ``alpha`` point below, chord above.

    A tangent point with an infinite slope (``sqrt``-like ends) moves to the midpoint.
    """
    t = tangent_point(l, u, alpha)
    t = torch.where(torch.isfinite(df(t)), t, (l + u) / 2)
    lw, lb = tangent(f, df, t)
    uw, ub = chord(f, l, u)
    return lw, lb, uw, ub


def concave_lines(f: Fn, df: Fn, l: torch.Tensor, u: torch.Tensor,
                  alpha: torch.Tensor | None = None) -> Lines:
    """Concave ``f``: chord below, tangent at the ``alpha`` point above."""
    return _flip(convex_lines(_neg(f), _neg(df), l, u, alpha))


def _search(f: Fn, df: Fn, good: torch.Tensor, bad: torch.Tensor, target: torch.Tensor,
            upper: bool, steps: int = 40) -> torch.Tensor:
    """Bisect for a tangent point whose tangent passes above (``upper``) or below
    ``(target, f(target))``; ``good`` always holds a checked point."""
    ft = f(target)
    for _ in range(steps):
        mid = (good + bad) / 2
        t = f(mid) + df(mid) * (target - mid)
        ok = t >= ft if upper else t <= ft
        good, bad = torch.where(ok, mid, good), torch.where(ok, bad, mid)
    return good


def s_lines(f: Fn, df: Fn, l: torch.Tensor, u: torch.Tensor, c: float,
            alpha: torch.Tensor | None = None) -> Lines:
    """``f`` convex on ``x <= c`` and concave on ``x >= c`` (the Sigmoid shape).

    Across ``c``: the chord above when ``f'(u) >= k`` (else the tangent at a point of
    ``[c, u]`` passing above ``(l, f(l))``), the chord below when ``f'(l) >= k`` (else the
    tangent at a point of ``[l, c]`` passing below ``(u, f(u))``).
    """
    k, b = chord(f, l, u)
    cc = torch.full_like(l, c)
    du = _search(f, df, u, cc, l, True)
    dl = _search(f, df, l, cc, u, False)
    up_ok, lo_ok = df(u) >= k, df(l) >= k
    tu, tl = tangent(f, df, du), tangent(f, df, dl)
    mixed = (torch.where(lo_ok, k, tl[0]), torch.where(lo_ok, b, tl[1]),
             torch.where(up_ok, k, tu[0]), torch.where(up_ok, b, tu[1]))
    vex, cav = convex_lines(f, df, l, u, alpha), concave_lines(f, df, l, u, alpha)
    left, right = u <= c, l >= c
    return tuple(torch.where(left, x, torch.where(right, y, z))  # type: ignore[return-value]
                 for x, y, z in zip(vex, cav, mixed))


def by_sign(l: torch.Tensor, pos: Lines, neg: Lines) -> Lines:
    """Per element: ``pos`` where ``l > 0``, else ``neg`` (one-sign intervals)."""
    return tuple(torch.where(l > 0, p, n) for p, n in zip(pos, neg))  # type: ignore[return-value]


def trig_lines(kind: type, l: torch.Tensor, u: torch.Tensor, slope_lo: torch.Tensor | None = None,
               slope_hi: torch.Tensor | None = None) -> Lines:
    """Sin/Cos: lines of slope ``slope_lo``/``slope_hi`` (default: the chord's) shifted by the
    exact min/max of ``f(x) - slope (x - l)`` over ``[l, u]``; constants for width ``>= 2π``."""
    f = torch.sin if kind is L.Sin else torch.cos
    k, _ = chord(f, l, u)
    kl = k if slope_lo is None else slope_lo.to(l.dtype).expand_as(l)
    ku = k if slope_hi is None else slope_hi.to(l.dtype).expand_as(l)
    h_min, _ = trig_extremes(kind, l, u, kl)
    _, h_max = trig_extremes(kind, l, u, ku)
    wide = (u - l) >= TWO_PI
    zero, one = torch.zeros_like(l), torch.ones_like(l)
    return (torch.where(wide, zero, kl), torch.where(wide, -one, h_min - kl * l),
            torch.where(wide, zero, ku), torch.where(wide, one, h_max - ku * l))


def sign_lines(l: torch.Tensor, u: torch.Tensor) -> Lines:
    """Sign: constants ``sign(l)``, ``sign(u)``, or sloped lines where tighter.

    ``[0, u]``: ``x/u <= sign``; ``[l, 0]``: ``sign <= -x/l``; ``l < 0 < u``: below,
    ``-1 + 2x/u`` when ``u >= -l``; above, ``1 - 2x/l`` when ``-l >= u`` (each is valid on the
    whole interval, ``sign(0) = 0`` included).
    """
    zero = torch.zeros_like(l)
    su = torch.where(u > 0, u, torch.ones_like(u))
    sl = torch.where(l < 0, l, -torch.ones_like(l))
    lw, lb = zero, torch.sign(l)
    uw, ub = zero, torch.sign(u)
    at0_lo, at0_hi = (l == 0) & (u > 0), (u == 0) & (l < 0)
    cross = (l < 0) & (u > 0)
    lo_slope, hi_slope = cross & (u >= -l), cross & (-l >= u)
    lw = torch.where(at0_lo, 1 / su, torch.where(lo_slope, 2 / su, lw))
    lb = torch.where(lo_slope, -torch.ones_like(lb), torch.where(at0_lo, zero, lb))
    uw = torch.where(at0_hi, -1 / sl, torch.where(hi_slope, -2 / sl, uw))
    ub = torch.where(hi_slope, torch.ones_like(ub), torch.where(at0_hi, zero, ub))
    return lw, lb, uw, ub


def floor_lines(l: torch.Tensor, u: torch.Tensor, slope: torch.Tensor | None = None) -> Lines:
    """Floor with slope ``s >= 0`` (default ``(floor(u) - floor(l)) / (u - l)``).

    With ``a = floor(l)``, ``c = floor(u)``: ``inf (floor(x) - s x) = min(a - s(a+1),
    (c-1) - s c, c - s u)`` (the pieces' infima ``n - s(n+1)`` are monotone in ``n``) and
    ``sup = max(a - s l, (a+1)(1-s), c(1-s))``; one piece (``a == c``): the constant ``a``.
    """
    a, c = torch.floor(l), torch.floor(u)
    width = u - l
    k = (c - a) / torch.where(width > 0, width, torch.ones_like(width))
    s = k if slope is None else slope.to(l.dtype).expand_as(l).clamp(min=0.0)
    lo = torch.minimum(torch.minimum(a - s * (a + 1), (c - 1) - s * c), c - s * u)
    hi = torch.maximum(torch.maximum(a - s * l, (a + 1) * (1 - s)), c * (1 - s))
    one = a == c
    zero = torch.zeros_like(l)
    s = torch.where(one, zero, s)
    return s, torch.where(one, a, lo), s, torch.where(one, a, hi)


def _pow_lines(layer: L.Pow, l: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor | None) -> Lines:
    e = layer.exponent
    kind = pow_kind(e)
    f = lambda x: pow64(x, e)
    df = lambda x: e * pow64(x, e - 1)
    zero, one = torch.zeros_like(l), torch.ones_like(l)
    if kind == "zero":
        return zero, one, zero, one
    if kind == "one":
        return one, zero, one, zero
    if kind in ("even", "neg_even", "neg_frac") or (kind == "frac" and e > 1):
        return convex_lines(f, df, l, u, alpha)
    if kind == "frac":
        return concave_lines(f, df, l, u, alpha)
    if kind == "odd":  # -x**e has the Sigmoid shape
        return _flip(s_lines(_neg(f), _neg(df), l, u, 0.0, alpha))
    return by_sign(l, convex_lines(f, df, l, u, alpha), concave_lines(f, df, l, u, alpha))


def _reciprocal_lines(layer: L.Layer, l: torch.Tensor, u: torch.Tensor,
                      alpha: torch.Tensor | None) -> Lines:
    f, df = (lambda x: 1 / x), (lambda x: -1 / (x * x))
    return by_sign(l, convex_lines(f, df, l, u, alpha), concave_lines(f, df, l, u, alpha))


LineFn = Callable[[L.Layer, torch.Tensor, torch.Tensor, "torch.Tensor | None"], Lines]
LINES: dict[type, LineFn] = {
    L.Exp: lambda layer, l, u, a: convex_lines(torch.exp, torch.exp, l, u, a),
    L.Log: lambda layer, l, u, a: concave_lines(torch.log, lambda x: 1 / x, l, u, a),
    L.Sqrt: lambda layer, l, u, a: concave_lines(torch.sqrt, lambda x: 0.5 / torch.sqrt(x), l, u, a),
    L.Reciprocal: _reciprocal_lines,
    L.Pow: _pow_lines,
    L.Sin: lambda layer, l, u, a: trig_lines(L.Sin, l, u, a, a),
    L.Cos: lambda layer, l, u, a: trig_lines(L.Cos, l, u, a, a),
    L.Sign: lambda layer, l, u, a: sign_lines(l, u),
    L.Floor: lambda layer, l, u, a: floor_lines(l, u, a),
}


def _widen_cast(lines: Lines, reach: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """Intercepts widened by ``8 ulp * (1 + |b| + |w| reach)``, everything cast to ``dtype``."""
    lw, lb, uw, ub = lines
    ulp = 8 * torch.finfo(dtype).eps
    lb = lb - ulp * (1 + lb.abs() + lw.abs() * reach)
    ub = ub + ulp * (1 + ub.abs() + uw.abs() * reach)
    return [t.to(dtype) for t in (lw, lb, uw, ub)]


def finish(lines: Lines, l: torch.Tensor, u: torch.Tensor, rng: tuple[torch.Tensor, torch.Tensor],
           dtype: torch.dtype, kind: str = "op") -> Relax:
    """Widened lines cast to ``dtype``; the constant lines of the range ``rng`` on degenerate
    intervals and where a line overflows ``dtype`` (e.g. the tangent of exp near 88 in
    float32, whose intercept is ``-x e^x``); refused if even the range overflows."""
    reach = torch.maximum(l.abs(), u.abs())
    zero = torch.zeros_like(l)
    const = (zero, rng[0], zero, rng[1])
    flat = (u - l) <= 1e-9 * (1 + reach)
    out = _widen_cast(tuple(torch.where(flat, c, t) for t, c in zip(lines, const)), reach, dtype)
    bad = ~(torch.isfinite(out[0]) & torch.isfinite(out[1]))
    bad_up = ~(torch.isfinite(out[2]) & torch.isfinite(out[3]))
    if bool(bad.any() | bad_up.any()):
        safe = _widen_cast(const, reach, dtype)
        out[0], out[1] = torch.where(bad, safe[0], out[0]), torch.where(bad, safe[1], out[1])
        out[2], out[3] = torch.where(bad_up, safe[2], out[2]), torch.where(bad_up, safe[3], out[3])
    if not all(bool(torch.isfinite(t).all()) for t in out):
        raise BounderRefusal(f"{kind}: its range overflows {dtype} on the input interval; "
                             "no finite sound bound")
    return Relax(*(t.unsqueeze(1) for t in out))


def unary_relax(layer: L.Layer, l: torch.Tensor, u: torch.Tensor,
                alpha: torch.Tensor | None = None) -> Relax:
    """Sound relaxation of one of :data:`KINDS` on ``[l, u]`` ``[N, *shape]``.

    ``alpha``: the free parameter of the op's lines (tangent point in ``[0, 1]`` for convex and
    concave ops, slope for Sin/Cos/Floor); ``None`` takes the defaults described above.
    """
    check_domain(layer, l, u)
    l64, u64 = l.detach().double(), u.detach().double()
    a = None if alpha is None else alpha.detach().double()
    lines = LINES[type(layer)](layer, l64, u64, a)
    return finish(lines, l64, u64, unary_range(layer, l64, u64), l.dtype, layer.kind)


@register_unary(*KINDS)
def _relax(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> Relax:
    return unary_relax(layer, l, u)


for _kind in KINDS:
    register_rule(_kind)(activation_rule)
