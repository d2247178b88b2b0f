"""IBP rules of the general-graph elementwise nonlinearities (exact ranges on each interval).

Exp, Log, Sqrt, Reciprocal, Pow (integer and fractional exponents), Sin, Cos, Sign, Floor.
The range of ``f`` on ``[l, u]`` is computed in float64 from the bounds (exact in float64 up
to the functions' last-bit errors): monotone ops take their ends, even powers reach 0 when
``l <= 0 <= u``, and Sin/Cos take every extremum inside ``[l, u]``. The float64 range is then
rounded outward to the bounds' dtype and widened by a few ulps (``torch.exp``, ``torch.sin``,
... are not correctly rounded). Sign and Floor are exact (integers) and are not widened.

Intervals that leave an op's domain (Log on ``l <= 0``, Sqrt on ``l < 0``, Reciprocal or a
negative power on an interval holding 0, a fractional power of a negative number) and ranges
that overflow the dtype have no finite sound answer: the rule raises
:class:`~bab.bounding.base.BounderRefusal` naming the op, so no bound is ever NaN or infinite.
:func:`unary_range` and :func:`check_domain` are shared with the CROWN-family relaxations of
:mod:`bab.bounding.polyhedra.elementwise`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bab.bounding.base import BounderRefusal
from bab.bounding.interval.ibp import RULES, Interval
from onnx_models import layers as L

TWO_PI = 2 * math.pi
#: Outward ulps added to every widened range (float64 libm errors, then the cast).
WIDEN_ULPS = 4
#: Layers whose ranges are exact integers (no widening).
EXACT = (L.Sign, L.Floor)
RangeFn = Callable[[L.Layer, torch.Tensor, torch.Tensor], Interval]


def pow_kind(e: float) -> str:
    """Class of an exponent: ``zero``, ``one``, ``even``/``odd`` (positive integers),
    ``neg_even``/``neg_odd`` (negative integers), ``frac`` (positive), ``neg_frac``."""
    if e == 0:
        return "zero"
    if e == 1:
        return "one"
    if float(e).is_integer():
        parity = "even" if int(e) % 2 == 0 else "odd"
        return parity if e > 0 else f"neg_{parity}"
    return "frac" if e > 0 else "neg_frac"


def pow64(x: torch.Tensor, e: float) -> torch.Tensor:
    """``x ** e`` with integer exponents kept integral (defined for negative ``x``)."""
    return torch.pow(x, int(e)) if float(e).is_integer() else torch.pow(x, e)


def _domain_problem(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> str | None:
    """Why ``[l, u]`` leaves the op's domain (``None``: it does not)."""
    holds_zero = (l <= 0) & (u >= 0)
    if isinstance(layer, L.Log) and bool((l <= 0).any()):
        return "the logarithm of an interval reaching 0 or below is unbounded or undefined"
    if isinstance(layer, L.Sqrt) and bool((l < 0).any()):
        return "the square root of an interval reaching below 0 is undefined (NaN)"
    if isinstance(layer, L.Reciprocal) and bool(holds_zero.any()):
        return "the reciprocal of an interval holding 0 is unbounded"
    if isinstance(layer, L.Pow):
        kind = pow_kind(layer.exponent)
        if kind.startswith("neg_") and kind != "neg_frac" and bool(holds_zero.any()):
            return f"x ** {layer.exponent} on an interval holding 0 is unbounded"
        if kind == "frac" and bool((l < 0).any()):
            return f"x ** {layer.exponent} of a negative number is undefined (NaN)"
        if kind == "neg_frac" and bool((l <= 0).any()):
            return f"x ** {layer.exponent} on an interval reaching 0 or below is unbounded or undefined"
    return None


def check_domain(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> None:
    """Refuse (:class:`BounderRefusal`) intervals outside the op's domain or with NaN ends."""
    if bool(torch.isnan(l).any() | torch.isnan(u).any()):
        raise BounderRefusal(f"{layer.kind}: an input bound is NaN")
    why = _domain_problem(layer, l, u)
    if why is not None:
        bad = _first_bad(layer, l, u)
        raise BounderRefusal(f"{layer.kind}: {why} (input interval {bad}); no finite sound bound")


def _first_bad(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> str:
    """``[l, u]`` of the first offending neuron, for the message."""
    for lo, hi in zip(l.flatten().tolist(), u.flatten().tolist()):
        one = torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)
        if _domain_problem(layer, *one) is not None:
            return f"[{lo:.6g}, {hi:.6g}]"
    return "?"


def _ends(f: Callable[[torch.Tensor], torch.Tensor], l: torch.Tensor, u: torch.Tensor) -> Interval:
    fl, fu = f(l), f(u)
    return torch.minimum(fl, fu), torch.maximum(fl, fu)


def trig_extremes(kind: type, l: torch.Tensor, u: torch.Tensor,
                  k: torch.Tensor | None = None) -> Interval:
    """Min and max over ``[l, u]`` of ``h(x) = f(x) - k (x - l)`` for ``f`` = sin or cos
    (float64; ``k`` defaults to 0, giving the range of ``f``).

    The extrema of ``h`` lie at the ends or at critical points ``f'(x) = k``: for sin
    ``x = ±acos(k) + 2πn``, for cos ``x = -asin(k) + 2πn`` or ``π + asin(k) + 2πn``. Every
    such point within one period of ``l`` is evaluated after clamping into ``[l, u]`` (valid
    for ``u - l < 2π``; callers handle wider intervals). A rounded critical point misses the
    true one by ``δ`` and ``h`` by at most ``δ²/2`` there (``|h''| <= 1``).
    """
    f = torch.sin if kind is L.Sin else torch.cos
    k = torch.zeros_like(l) if k is None else k
    kc = k.clamp(-1.0, 1.0)
    if kind is L.Sin:
        roots = [torch.acos(kc), -torch.acos(kc)]
    else:
        roots = [-torch.asin(kc), math.pi + torch.asin(kc)]
    h = lambda x: f(x) - k * (x - l)
    vals = [h(l), h(u)]
    for r in roots:
        n0 = torch.floor((l - r) / TWO_PI)
        for d in (-1.0, 0.0, 1.0, 2.0):
            x = r + TWO_PI * (n0 + d)
            vals.append(h(torch.minimum(torch.maximum(x, l), u)))
    stack = torch.stack(vals)
    return stack.amin(0), stack.amax(0)


def _trig_range(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> Interval:
    lo, hi = trig_extremes(type(layer), l, u)
    wide = (u - l) >= TWO_PI
    return torch.where(wide, -1.0, lo), torch.where(wide, 1.0, hi)


def _pow_range(layer: L.Pow, l: torch.Tensor, u: torch.Tensor) -> Interval:
    e = layer.exponent
    lo, hi = _ends(lambda x: pow64(x, e), l, u)
    if pow_kind(e) == "even":  # convex, minimum 0 at x = 0
        lo = torch.where((l <= 0) & (u >= 0), torch.zeros_like(lo), lo)
    return lo, hi


RANGES: dict[type, RangeFn] = {
    L.Exp: lambda layer, l, u: (torch.exp(l), torch.exp(u)),
    L.Log: lambda layer, l, u: (torch.log(l), torch.log(u)),
    L.Sqrt: lambda layer, l, u: (torch.sqrt(l), torch.sqrt(u)),
    L.Reciprocal: lambda layer, l, u: (1 / u, 1 / l),
    L.Sign: lambda layer, l, u: (torch.sign(l), torch.sign(u)),
    L.Floor: lambda layer, l, u: (torch.floor(l), torch.floor(u)),
    L.Sin: _trig_range,
    L.Cos: _trig_range,
    L.Pow: _pow_range,
}


def unary_range(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> Interval:
    """The float64 range of the op on ``[l, u]`` (domain already checked; not widened)."""
    return RANGES[type(layer)](layer, l.double(), u.double())


def outward(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype, ulps: int) -> Interval:
    """Round a float64 interval outward to ``dtype``, then widen by ``ulps`` more ulps."""
    lo_t, hi_t = lo.to(dtype), hi.to(dtype)
    down = torch.full_like(lo_t, float("-inf"))
    up = torch.full_like(hi_t, float("inf"))
    lo_t = torch.where(lo_t.double() > lo, torch.nextafter(lo_t, down), lo_t)
    hi_t = torch.where(hi_t.double() < hi, torch.nextafter(hi_t, up), hi_t)
    for _ in range(ulps):
        lo_t, hi_t = torch.nextafter(lo_t, down), torch.nextafter(hi_t, up)
    return lo_t, hi_t


def global_range(layer: L.Layer) -> tuple[float, float]:
    """Bounds every output of the op satisfies (``exp >= 0``, ``|sin| <= 1``, ...)."""
    if isinstance(layer, (L.Sin, L.Cos, L.Sign)):
        return -1.0, 1.0
    nonneg = isinstance(layer, (L.Exp, L.Sqrt)) or (
        isinstance(layer, L.Pow) and pow_kind(layer.exponent) in ("even", "frac", "neg_even", "neg_frac"))
    return (0.0 if nonneg else -math.inf), math.inf


def sound_range(layer: L.Layer, l: torch.Tensor, u: torch.Tensor) -> Interval:
    """The op's range on ``[l, u]`` in the bounds' dtype: checked, rounded outward, finite.

    The widening never crosses the op's global bounds: ``x**2`` keeps the lower bound 0
    exactly, so a following Sqrt (``sqrt(sum x**2)``) stays in its domain.
    """
    check_domain(layer, l, u)
    lo, hi = unary_range(layer, l, u)
    lo, hi = outward(lo, hi, l.dtype, 0 if isinstance(layer, EXACT) else WIDEN_ULPS)
    bottom, top = global_range(layer)
    lo, hi = lo.clamp(bottom, top), hi.clamp(bottom, top)
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        top = float(u.max())
        raise BounderRefusal(f"{layer.kind}: its range overflows {l.dtype} on the input interval "
                             f"(largest input bound {top:.6g}); no finite sound bound")
    return lo, hi


@RULES.register(L.Exp, L.Log, L.Sqrt, L.Reciprocal, L.Pow, L.Sin, L.Cos, L.Sign, L.Floor)
def _unary(layer: L.Layer, box: Interval) -> Interval:
    return sound_range(layer, *box)
