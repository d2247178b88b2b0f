"""The randomized-smoothing certification approaches (bab.smoothing.approaches): closed forms
and independent computations, the orders theory guarantees, and the false-certification rate
on classifiers whose true robust radius is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.stats import binomtest, norm

from bab.smoothing import SmoothingError, gaussian, laplace, lower_confidence_bound, uniform
from bab.smoothing.approaches import (APPROACHES, Bounds, Evidence, get_approach,
                                      probability_bounds)
from bab.smoothing.approaches.base import upper_confidence_bound
from bab.smoothing.approaches.dp import gaussian_radius, holds
from bab.smoothing.approaches.evidence import (EvidenceStore, from_record, sample_evidence,
                                               to_record)
from bab.smoothing.approaches.fdiv import kl_radius
from bab.smoothing.approaches.first_order import (gradient_bound, radius_with_gradient,
                                                  truncation)
from bab.smoothing.approaches.renyi import divergence_budget, laplace_divergence, radius_at

NOISE = {"gaussian": gaussian(0.5), "laplace": laplace(0.5), "uniform": uniform(0.5)}
SUPPORTED = [(a, k) for a in APPROACHES for k in NOISE
             if APPROACHES[a].unsupported(k, NOISE[k].norm) is None]


def radius(name: str, noise: str, p_a: float, p_b: float) -> float:
    return float(get_approach(name).radius(NOISE[noise], Bounds(p_a, p_b)))


# --- confidence bounds ----------------------------------------------------------------------

def test_probability_bounds_are_bonferroni_clopper_pearson() -> None:
    ev = Evidence(2, np.array([30, 5, 950, 15]), 100)
    b = probability_bounds(ev, 0.01)
    assert b.pA_lower == pytest.approx(lower_confidence_bound(950, 1000, 0.005), rel=1e-12)
    ci = binomtest(30, 1000).proportion_ci(confidence_level=1 - 2 * 0.01 / 6, method="exact")
    assert b.pB_upper == pytest.approx(ci.high, rel=1e-9)  # alpha/2 over the 3 other classes
    assert upper_confidence_bound(1000, 1000, 0.01) == 1.0
    # the runner-up bound never exceeds 1 - pA_lower
    tight = probability_bounds(Evidence(0, np.array([6, 4]), 10), 0.01)
    assert tight.pB_upper == pytest.approx(1.0 - tight.pA_lower)


def test_unsupported_pairs_have_reasons() -> None:
    assert get_approach("dp").unsupported("uniform", 1) is not None
    assert "gaussian/l2" in get_approach("first-order").unsupported("laplace", 1)
    assert get_approach("np").unsupported("uniform", 1) is None
    with pytest.raises(SmoothingError, match="unknown smoothing approach"):
        get_approach("cohen")
    with pytest.raises(SmoothingError, match="certifies only"):
        get_approach("renyi").certify(NOISE["uniform"], Evidence(0, np.array([9, 1]), 5), 0.1)


# --- closed forms and independent computations ------------------------------------------------

def test_neyman_pearson_wraps_the_noise_radii() -> None:
    for noise in NOISE.values():
        assert radius("np", noise.name, 0.9, 0.05) == pytest.approx(noise.radius(0.9, 0.05),
                                                                   rel=1e-8)


def test_dp_laplace_mechanism_closed_form() -> None:
    assert radius("dp", "laplace", 0.9, 0.05) == pytest.approx(0.25 * math.log(18.0), rel=1e-8)
    assert radius("dp", "laplace", 0.4, 0.4) == 0.0


def brute_force_dp(p_a: float, p_b: float, sigma: float) -> float:
    """PixelDP's condition checked directly (no quadratic): a log grid of delta and, for
    each, bisection on L."""
    best = 0.0
    for delta in np.exp(np.linspace(math.log(1e-12), math.log(0.5 * (p_a - p_b)), 3000))[:-1]:
        c = math.sqrt(2.0 * math.log(1.25 / delta))
        def ok(L: float, c: float = c) -> bool:
            eps = L * c / sigma
            return eps <= 1.0 and p_a > math.exp(2 * eps) * p_b + (1 + math.exp(eps)) * delta
        if not ok(0.0):
            continue
        lo, hi = 0.0, sigma / c
        for _ in range(60):
            lo, hi = ((lo + hi) / 2, hi) if ok((lo + hi) / 2) else (lo, (lo + hi) / 2)
        best = max(best, lo)
    return best


@pytest.mark.parametrize("p_a,p_b", [(0.9, 0.1), (0.99, 0.005), (0.7, 0.25), (1.0, 0.0)])
def test_dp_gaussian_matches_a_direct_search(p_a: float, p_b: float) -> None:
    got = gaussian_radius(p_a, p_b, 0.5)
    assert got == pytest.approx(brute_force_dp(p_a, p_b, 0.5), rel=2e-3)
    assert got <= 0.5  # eps <= 1 and 2 ln(1.25/delta) > 1 cap the radius below sigma


def test_dp_gaussian_hand_case() -> None:
    # pA = 1, pB = 0: eps* = ln((1 - delta)/delta) >= 1 while delta <= 1/(1 + e), where
    # L = sigma / sqrt(2 ln(1.25 (1 + e))); beyond it eps* < 1. The optimum is at least that.
    at_cap = 1.0 / math.sqrt(2.0 * math.log(1.25 * (1.0 + math.e)))
    got = gaussian_radius(1.0, 0.0, 1.0)
    assert got >= at_cap * (1 - 1e-6) and got == pytest.approx(brute_force_dp(1.0, 0.0, 1.0),
                                                               rel=2e-3)
    assert holds(1.0, 0.0, 1.0, 1.0 / (1.0 + math.e), at_cap * 0.999)


def test_renyi_gaussian_hand_case() -> None:
    # alpha = 2: the power mean is the harmonic mean 2/(1/0.8 + 1/0.2) = 0.32, so
    # B = -log(0.64) and R = sigma sqrt(2 B / 2)
    assert divergence_budget(0.8, 0.2, np.array([2.0]))[0] == pytest.approx(-math.log(0.64))
    assert radius_at(gaussian(1.0), 0.8, 0.2, np.array([2.0]))[0] == pytest.approx(
        math.sqrt(-math.log(0.64)), rel=1e-9)


@pytest.mark.parametrize("p_a,p_b", [(0.8, 0.2), (0.95, 0.03), (0.6, 0.3)])
def test_renyi_is_the_best_order_of_a_direct_formula(p_a: float, p_b: float) -> None:
    orders = 1.0 + np.logspace(-3, 3, 4001)
    with np.errstate(over="ignore", invalid="ignore"):  # huge orders overflow: nan, skipped
        mean = ((p_a ** (1 - orders) + p_b ** (1 - orders)) / 2) ** (1 / (1 - orders))
        direct = 0.5 * np.sqrt(-2.0 * np.log(1 - p_a - p_b + 2 * mean) / orders)
    assert radius("renyi", "gaussian", p_a, p_b) == pytest.approx(np.nanmax(direct), rel=1e-5)


def test_renyi_laplace_divergence_and_limit() -> None:
    for order, t in ((1.5, 0.3), (4.0, 1.7)):
        def integrand(x: float, order: float = order, t: float = t) -> float:
            return 0.5 * math.exp(-order * abs(x) - (1 - order) * abs(x - t))
        direct = math.log(quad(integrand, -60, 60, points=[0.0, t])[0]) / (order - 1)
        assert laplace_divergence(np.array(t), np.array(order)) == pytest.approx(direct, rel=1e-8)
    # large orders approach the max-divergence t, i.e. the radius -lambda log(1 - pA + pB)
    assert radius("renyi", "laplace", 0.9, 0.1) >= 0.5 * -math.log(0.2) * (1 - 1e-3)
    r = radius("renyi", "laplace", 0.8, 0.1)
    order = 1.0 + np.logspace(-3, 3, 181)
    budget = divergence_budget(0.8, 0.1, order)
    assert np.all(laplace_divergence(np.full_like(order, r / 0.5), order) >= budget * (1 - 1e-6)
                  - 1e-9)  # no order certifies more than the radius found (it is the sup)


def test_fdiv_closed_forms() -> None:
    # pA = 0.9: kl(1/2 || 0.9) = ln(5/3) > kl(0.9 || 1/2); Gaussian KL = r^2 / (2 sigma^2)
    kl = math.log(5 / 3)
    assert radius("fdiv", "gaussian", 0.9, 0.05) == pytest.approx(0.5 * math.sqrt(2 * kl), rel=1e-8)
    t = brentq(lambda s: s + math.exp(-s) - 1 - math.log(5 / 3), 0, 10)
    assert radius("fdiv", "laplace", 0.9, 0.05) == pytest.approx(0.5 * t, rel=1e-8)
    bc = math.sqrt(0.45) + math.sqrt(0.05)
    assert radius("fdiv-hellinger", "gaussian", 0.9, 0.05) == pytest.approx(
        0.5 * math.sqrt(-8 * math.log(bc)), rel=1e-8)
    t = brentq(lambda s: (1 + s / 2) * math.exp(-s / 2) - bc, 0, 50)
    assert radius("fdiv-hellinger", "laplace", 0.9, 0.05) == pytest.approx(0.5 * t, rel=1e-8)
    assert kl_radius(gaussian(1.0), 0.5) == 0.0


def slab_radius(p: float) -> float:
    """The true robust radius (sigma = 1) of the slab |t| <= c with mass p, seen from its centre."""
    c = norm.ppf((1 + p) / 2)
    return brentq(lambda s: norm.cdf(c - s) - norm.cdf(-c - s) - 0.5, 0, 20)


def test_first_order_limits() -> None:
    for p in (0.6, 0.9, 0.99):
        # an uninformative gradient bound gives Cohen's one-sided radius
        assert radius_with_gradient(0.5, p, math.inf) == pytest.approx(0.5 * norm.ppf(p))
        worst = norm.pdf(norm.ppf(p))  # a half-space's gradient: the largest possible
        assert radius_with_gradient(0.5, p, worst) == pytest.approx(0.5 * norm.ppf(p))
        # a zero gradient: the worst case is the symmetric slab, certified exactly
        assert radius_with_gradient(1.0, p, 0.0) == pytest.approx(slab_radius(p), rel=1e-6)
        gs = np.linspace(0.0, norm.pdf(norm.ppf(p)), 7)
        rs = [radius_with_gradient(1.0, p, g) for g in gs]
        assert all(a >= b for a, b in zip(rs, rs[1:]))  # a smaller gradient certifies more
    assert radius_with_gradient(1.0, 0.5, 0.0) == 0.0


# --- orders ------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(p_a=st.floats(0.5001, 0.99999), share=st.floats(0.0, 1.0))
def test_neyman_pearson_dominates_on_gaussian(p_a: float, share: float) -> None:
    """Cohen's two-sided radius is the exact worst case for (pA, pB): no sound bound beats it."""
    p_b = max((1.0 - p_a) * share, 1e-12)
    np_r = radius("np", "gaussian", p_a, p_b)
    for name in ("dp", "renyi", "fdiv", "fdiv-hellinger", "first-order"):
        assert radius(name, "gaussian", p_a, p_b) <= np_r * (1 + 1e-9) + 1e-12, name


@settings(max_examples=60, deadline=None)
@given(p_a=st.floats(0.5001, 0.99999), share=st.floats(0.0, 1.0))
def test_neyman_pearson_dominates_on_laplace(p_a: float, share: float) -> None:
    """Teng's radius is tight in the one-sided case (pB = 1 - pA). Two-sided, DP is one of its
    two terms and the binary f-divergence bounds use pA alone; Rényi is not ordered there
    (it can beat Teng's two-sided formula, which is not tight)."""
    p_b = max((1.0 - p_a) * share, 1e-12)
    np_r, one_sided = radius("np", "laplace", p_a, p_b), radius("np", "laplace", p_a, 1 - p_a)
    for name in ("dp", "fdiv", "fdiv-hellinger"):
        assert radius(name, "laplace", p_a, p_b) <= np_r * (1 + 1e-9) + 1e-12, name
    for name in ("dp", "renyi", "fdiv", "fdiv-hellinger"):
        assert radius(name, "laplace", p_a, 1 - p_a) <= one_sided * (1 + 1e-9) + 1e-12, name


# --- false-certification rate --------------------------------------------------------------

TRIALS, ALPHA = 2000, 0.01


def slack(p: float, trials: int) -> float:
    return 3.0 * math.sqrt(p * (1.0 - p) / trials)


def true_p(noise: str, s: float) -> float:
    """P(class 0) for the 1-d threshold classifier z > -s under the noise (scale 0.5)."""
    lam = 0.5
    if noise == "gaussian":
        return float(norm.cdf(s / lam))
    if noise == "laplace":
        return 1.0 - 0.5 * math.exp(-s / lam)
    return min(1.0, 0.5 + s / (2 * lam))


@pytest.mark.parametrize("approach,noise", SUPPORTED)
def test_false_certification_rate_on_a_threshold_classifier(approach: str, noise: str) -> None:
    """A 1-d threshold at distance s: the smoothed classifier's exact radius is s. The counts
    of n noisy samples are Binomial(n, p) with known p (three classes, the third never hit);
    at most alpha (+ slack) of the certificates may claim more than s or a wrong class."""
    s = {"gaussian": 0.5, "laplace": 0.6, "uniform": 0.3}[noise]
    p, n = true_p(noise, s), 1000
    hits, times = np.unique(np.random.default_rng(3).binomial(n, p, size=TRIALS),
                            return_counts=True)  # certify each distinct count once
    wrong, certified = 0, 0
    for k, weight in zip(hits, times):
        ev = Evidence(0, np.array([k, n - k, 0]), 100)
        res = get_approach(approach).certify(NOISE[noise], ev, ALPHA)
        wrong += weight * (res.label not in (None, 0) or res.radius > s)
        certified += weight * (res.radius > 0)
    assert wrong / TRIALS <= ALPHA + slack(ALPHA, TRIALS)
    assert certified / TRIALS > 0.9  # and it certifies something


def slab_evidence(rng: np.random.Generator, c: float, m: int, d: int) -> Evidence:
    """The slab classifier |w_1| <= c (class 0, else class 1) sampled at its centre."""
    w = rng.standard_normal((m, d))
    inside = np.abs(w[:, 0]) <= c
    return Evidence(0, np.array([inside.sum(), m - inside.sum()]), 100, w[inside].sum(axis=0),
                    float(np.linalg.norm(w, axis=1).max()))


def test_first_order_is_sound_and_uses_the_gradient_on_a_slab() -> None:
    """At the centre of a slab the gradient is 0, so first-order beats Cohen's radius; the
    exact radius is known (worst direction e1). Failures must stay within alpha."""
    c, m, d, trials, sigma = 1.2, 20_000, 2, 300, 1.0
    p = float(norm.cdf(c) - norm.cdf(-c))
    true = slab_radius(p)
    rng = np.random.default_rng(4)
    fo, npr, wrong, used = [], [], 0, 0
    for _ in range(trials):
        ev = slab_evidence(rng, c, m, d)
        res = get_approach("first-order").certify(gaussian(sigma), ev, ALPHA)
        fo.append(res.radius)
        npr.append(get_approach("np").certify(gaussian(sigma), ev, ALPHA).radius)
        wrong += res.label != 0 or res.radius > true
        used += "(used)" in res.note
    assert wrong / trials <= ALPHA + slack(ALPHA, trials)
    assert used >= 0.9 * trials
    assert np.mean(fo) > 1.1 * np.mean(npr) and np.mean(fo) > 0.8 * true


def test_gradient_bound_covers_the_true_gradient() -> None:
    """For a half-space the gradient norm is the largest possible, phi(Phi^-1(p))."""
    rng = np.random.default_rng(5)
    m, d, p = 5000, 6, 0.8
    true = norm.pdf(norm.ppf(p))
    bounds = []
    for _ in range(100):
        w = rng.standard_normal((m, d))
        hit = w[:, 2] <= norm.ppf(p)
        ev = Evidence(0, np.array([hit.sum(), m - hit.sum()]), 10, w[hit].sum(axis=0),
                      float(np.linalg.norm(w, axis=1).max()))
        bounds.append(gradient_bound(ev, 0.01))
    assert min(bounds) >= true
    bound, slack_ = truncation(m, d, 0.01)
    assert bound >= math.sqrt(d) and 0 < slack_ < 1
    # a sample beyond the truncation radius: no gradient information
    far = Evidence(0, np.array([4000, 1000]), 10, np.zeros(d), bound + 1.0)
    assert gradient_bound(far, 0.01) == math.inf


# --- sampling and storage -------------------------------------------------------------------

class Threshold:
    """Logits (s, -s, -10) with s = x_0 + 0.3."""

    n_inputs, n_outputs = 3, 3

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0] + 0.3
        return torch.stack([s, -s, torch.full_like(s, -10.0)], dim=1)


def test_sample_evidence_and_store(tmp_path) -> None:
    x = torch.zeros(3)
    ev = sample_evidence(Threshold(), x, gaussian(0.5), 50, 4000, 999,
                         torch.Generator().manual_seed(0))
    assert ev.guess == 0 and ev.n == 4000 and ev.counts[2] == 0
    assert ev.count_a / 4000 == pytest.approx(norm.cdf(0.6), abs=0.03)
    # E[h w] = phi(0.6) e1 for h = 1[w_0 > -0.6]
    assert ev.grad_sum / 4000 == pytest.approx([norm.pdf(0.6), 0.0, 0.0], abs=0.05)
    assert math.isfinite(ev.max_norm) and ev.max_norm > 0
    lap = sample_evidence(Threshold(), x, laplace(0.5), 10, 100, 64)
    assert lap.grad_sum is None and lap.n == 100
    again = from_record(to_record(ev))
    assert again.guess == ev.guess and np.array_equal(again.counts, ev.counts)
    assert np.allclose(again.grad_sum, ev.grad_sum) and again.max_norm == ev.max_norm
    store = EvidenceStore(tmp_path / "s.jsonl")
    store.put({"point": 1}, ev)
    with (tmp_path / "s.jsonl").open("a") as fh:
        fh.write('{"key": {"point": 2}, "evid')  # an interrupted write
    reread = EvidenceStore(tmp_path / "s.jsonl")
    assert reread.get({"point": 1}) is not None and reread.get({"point": 2}) is None
