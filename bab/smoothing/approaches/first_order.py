"""First-order certificates (Mohapatra, Ko, Weng, Chen, Liu & Daniel, "Higher-order
certification for randomized smoothing", NeurIPS 2020; Levine, Kumar, Goldstein & Feizi 2020):
Gaussian noise, l2.

Besides ``pA = E[h(z)]`` (``h`` the indicator of the top class at ``x + z``), the smoothed
function's gradient ``grad pA = E[h(z) w] / sigma`` (``w = z / sigma``) is known up to a bound
``|v| <= G`` on ``v = E[h(z) w]``. Along the attack direction ``u`` only ``t = u.w ~ N(0, 1)``
matters; the classifier that minimises ``pA(x + delta)`` subject to ``E[H] = p`` and
``E[H t] >= -G`` is (generalised Neyman-Pearson lemma) an interval ``H = 1[a <= t <= b]`` with
``Phi(b) - Phi(a) = p`` and ``phi(b) - phi(a) = G`` (when ``G < phi(Phi^-1(p))``; otherwise the
constraint is inactive and the answer is the half-line, Cohen's ``sigma Phi^-1(p)``). Then
``pA(x + delta) >= Phi(b - r) - Phi(a - r)`` with ``r = |delta| / sigma``, and the radius is
where that reaches 1/2.

Confidence (union bound over the same samples): ``alpha/2`` for the Clopper-Pearson lower bound
on ``pA``, ``alpha/2`` for ``G``. ``G`` comes from the empirical mean ``v_hat`` of ``h_i w_i``
truncated at ``|w_i| <= B`` (``B`` fixed in advance from ``n``, ``d`` and ``alpha``), Pinelis's
Bennett inequality for bounded vectors in Hilbert space (1994, Thm 3.4: ``P(|sum Y_i| >= r) <=
2 exp(-(b^2/a^2) h(r a / b^2))``, ``h(u) = (1+u) log(1+u) - u``, ``|Y_i| <= a``,
``sum E|Y_i|^2 <= b^2``), and the truncated tail ``E[|w| 1[|w| > B]]``. When some ``|w_i|``
exceeds ``B`` no gradient bound is used (``G = inf``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from scipy.special import gammaln
from scipy.stats import chi

from bab.smoothing.approaches.base import (Approach, ApproachResult, Bounds, Evidence,
                                           bisect_last_true, shave)
from bab.smoothing.errors import SmoothingError, check_alpha
from bab.smoothing.noise import Noise
from bab.smoothing.stats import lower_confidence_bound


def bennett_deviation(m: int, d: int, bound: float, alpha: float) -> float:
    """``r / m``: with probability ``>= 1 - alpha`` the mean of ``m`` independent centred
    vectors with ``|Y| <= bound`` and ``E|Y|^2 <= d`` is within ``r / m`` of 0."""
    b2, a = float(m) * d, float(bound)
    target = math.log(2.0 / alpha) * a * a / b2  # need h(u) >= target

    def h(u: float) -> float:
        return (1.0 + u) * math.log1p(u) - u

    lo, hi = 0.0, 1.0
    while h(hi) < target:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if h(mid) < target else (lo, mid)
    return hi * b2 / a / m  # the upper end: never too small


def chi_tail_mean(d: int, bound: float) -> float:
    """``E[|w| 1[|w| > B]]`` for ``w ~ N(0, I_d)``: ``E|w| * P(chi_(d+1) > B)``."""
    mean = math.sqrt(2.0) * math.exp(gammaln((d + 1) / 2.0) - gammaln(d / 2.0))
    return mean * float(chi.sf(bound, d + 1))


@lru_cache(maxsize=256)
def truncation(m: int, d: int, alpha: float) -> tuple[float, float]:
    """The truncation radius ``B`` (chosen before seeing data: at least the norm that all
    ``m`` samples stay below with probability 0.99, else the gradient would rarely be usable)
    and the slack ``r/m + tail`` it gives; ``|mu_B| <= E|u.w| = sqrt(2/pi)`` bounds the
    centring, so ``|Y_i| <= B + sqrt(2/pi)``."""
    start = float(chi.isf(0.01 / m, d))
    best = (math.inf, math.inf)
    for k in range(41):
        bound = start + 0.25 * k
        slack = (bennett_deviation(m, d, bound + math.sqrt(2.0 / math.pi), alpha)
                 + chi_tail_mean(d, bound))
        best = min(best, (slack, bound))
    return best[1], best[0]


def gradient_bound(evidence: Evidence, alpha: float) -> float:
    """``G >= |E[h w]|`` with probability ``>= 1 - alpha`` (inf when unusable)."""
    if evidence.grad_sum is None:
        return math.inf
    m, d = evidence.n, int(np.size(evidence.grad_sum))
    bound, slack = truncation(m, d, alpha)
    if not evidence.max_norm <= bound:
        return math.inf
    return float(np.linalg.norm(evidence.grad_sum)) / m + slack


STD = NormalDist()  # scalar cdf / inv_cdf / pdf, fast and accurate (Wichura's AS241)


def _sf(x: float) -> float:
    """``1 - Phi(x)`` without cancellation for large ``x``."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


def worst_interval(p: float, g: float) -> tuple[float, float]:
    """The interval ``[a, b]`` with mass ``p`` and ``phi(b) - phi(a) = G`` (``a`` rounded to the
    infeasible side, which only lowers the worst-case probability)."""
    def upper(a: float) -> float:
        return STD.inv_cdf(min(STD.cdf(a) + p, 1.0 - 1e-16))

    lo, hi = -37.0, STD.inv_cdf((1.0 - p) / 2.0)  # k(lo) > G >= k(hi) = 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if STD.pdf(upper(mid)) - STD.pdf(mid) > g:
            lo = mid
        else:
            hi = mid
    return lo, upper(lo)


def radius_with_gradient(sigma: float, p: float, g: float) -> float:
    """The first-order radius for ``pA >= p`` and ``|E[h w]| <= G`` (0 when ``p <= 1/2``)."""
    if p <= 0.5:
        return 0.0
    if p >= 1.0:
        return math.inf
    if not g < STD.pdf(STD.inv_cdf(p)):
        return shave(sigma * STD.inv_cdf(p))  # the gradient bound is uninformative
    a, b = worst_interval(p, g)
    r = bisect_last_true(lambda s: _sf(a - s) - _sf(b - s) > 0.5, 0.0, 1.0)
    return shave(sigma * max(r, STD.inv_cdf(p)))


class FirstOrder(Approach):
    """Value and gradient constraints (Gaussian, l2)."""

    name = "first-order"
    title = "First-order (Mohapatra 2020; Levine 2020)"
    supports = frozenset({("gaussian", 2)})
    binary = True

    def radius(self, noise: Noise, bounds: Bounds) -> float:
        """Without gradient evidence: Cohen's one-sided radius."""
        return radius_with_gradient(noise.scale, bounds.pA_lower, math.inf)

    def certify(self, noise: Noise, evidence: Evidence, alpha: float) -> ApproachResult:
        """``alpha/2`` for ``pA_lower``, ``alpha/2`` for the gradient bound."""
        reason = self.unsupported(noise.name, noise.norm)
        if reason:
            raise SmoothingError(reason)
        alpha = check_alpha(alpha)
        p_a = float(lower_confidence_bound(evidence.count_a, evidence.n, alpha / 2.0))
        if p_a <= 0.5:
            return ApproachResult(None, 0.0, p_a, 1.0 - p_a, "abstained")
        g = gradient_bound(evidence, alpha / 2.0)
        r = radius_with_gradient(noise.scale, p_a, g)
        used = g < STD.pdf(STD.inv_cdf(p_a))
        return ApproachResult(evidence.guess, r, p_a, 1.0 - p_a,
                              f"gradient bound {g:.4g} ({'used' if used else 'uninformative'})")
