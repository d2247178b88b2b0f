"""Randomized smoothing: closed-form radii, the statistics of CERTIFY and PREDICT, their
soundness on linear classifiers (where the true robust radius is known), and the data layer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from bab.smoothing import (SmoothingError, certify, certify_batch, certify_counts, gaussian,
                           laplace, lower_confidence_bound, make_noise, predict, predict_batch,
                           predict_counts, sample_counts, uniform)
from bab.smoothing.data import SampleRow, certified_accuracy, load_npz, parse_radii
from bab.smoothing.stats import (check_alpha, feasibility_warnings, max_radius,
                                 min_certifying_n, predict_warnings)

TRIALS = 2000
BATCH = 250_000


def slack(p: float, trials: int = TRIALS) -> float:
    """Three binomial standard deviations of an observed frequency."""
    return 3.0 * math.sqrt(p * (1.0 - p) / trials)


class Linear:
    """Binary linear classifier with logits ``(s, -s)``, ``s = w.x + b``: class 0 iff s > 0."""

    def __init__(self, w: list[float], b: float) -> None:
        self.w = torch.tensor(w, dtype=torch.float32)
        self.b = float(b)
        self.n_inputs, self.n_outputs = len(w), 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = x @ self.w + self.b
        return torch.stack([s, -s], dim=1)

    def point_at(self, distance: float, norm_ord: float) -> np.ndarray:
        """A point on the class-0 side at the given (dual-norm) distance from the hyperplane."""
        w = self.w.double().numpy()
        dual = np.linalg.norm(w, {2: 2, 1: np.inf}[norm_ord])
        target = distance * dual  # w.x + b = distance * ||w||_dual
        return (w * (target - self.b) / float(w @ w)).astype(np.float32)


# --- closed forms ---------------------------------------------------------------------------

def test_gaussian_radius_closed_form() -> None:
    assert gaussian(0.5).radius(0.9) == pytest.approx(0.5 * 1.2815515655446004, rel=1e-12)
    two_sided = 0.5 * 1.0 * (0.8416212335729143 + 1.2815515655446004)  # Phi^-1(.8) - Phi^-1(.1)
    assert gaussian(1.0).radius(0.8, 0.1) == pytest.approx(two_sided, rel=1e-12)
    assert gaussian(0.25).radius(0.9, 0.1) == pytest.approx(gaussian(0.25).radius(0.9))
    assert gaussian(1.0).radius(0.5) == 0.0 and gaussian(1.0).radius(0.3) == 0.0
    assert gaussian(1.0).radius(0.4, 0.4) == 0.0
    arr = gaussian(2.0).radius(np.array([0.3, 0.75, 0.99]))
    assert np.allclose(arr, [0.0, 2 * norm.ppf(0.75), 2 * norm.ppf(0.99)])


def test_laplace_radius_closed_form() -> None:
    # Teng et al.: -lambda log(2 (1 - pA)); 0.5 * -log(0.2) = 0.80472
    assert laplace(0.5).radius(0.9) == pytest.approx(0.5 * math.log(5.0), rel=1e-12)
    assert laplace(1.0).radius(0.75) == pytest.approx(math.log(2.0), rel=1e-12)
    # two-sided: max(lambda/2 log(pA/pB), -lambda log(1 - pA + pB))
    assert laplace(1.0).radius(0.6, 0.1) == pytest.approx(0.5 * math.log(6.0), rel=1e-12)
    assert laplace(1.0).radius(0.9, 0.05) == pytest.approx(-math.log(0.15), rel=1e-12)
    assert laplace(1.0).radius(0.5) == 0.0


def test_uniform_radius_closed_form() -> None:
    # Yang et al.: 2 lambda (pA - 1/2); two-sided lambda (pA - pB)
    assert uniform(0.5).radius(0.9) == pytest.approx(0.4, rel=1e-12)
    assert uniform(1.0).radius(0.7, 0.2) == pytest.approx(0.5, rel=1e-12)
    assert uniform(2.0).radius(0.5) == 0.0 and uniform(2.0).radius(0.2) == 0.0


def test_lower_confidence_bound_is_one_sided_clopper_pearson() -> None:
    for k, n, alpha in ((990, 1000, 0.001), (51, 100, 0.01), (7, 7, 0.05)):
        ci = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
        assert lower_confidence_bound(k, n, alpha) == pytest.approx(ci.low, rel=1e-9)
    assert lower_confidence_bound(10, 10, 0.001) == pytest.approx(0.001 ** 0.1)
    assert lower_confidence_bound(0, 10, 0.001) == 0.0


def test_validation() -> None:
    for bad in (0.0, -1.0, math.nan, math.inf, "x"):
        for kind in ("gaussian", "laplace", "uniform"):
            with pytest.raises(SmoothingError):
                make_noise(kind, bad)
    with pytest.raises(SmoothingError, match="unknown noise"):
        make_noise("cauchy", 1.0)
    for bad in (0.0, 1.0, -0.1, 2.0, math.nan):
        with pytest.raises(SmoothingError, match="alpha"):
            check_alpha(bad)
    with pytest.raises(SmoothingError, match="n0"):
        certify(Linear([1.0], 0.0), [0.0], gaussian(1.0), 0, 10, 0.01)


def test_warnings_for_samples_too_few_to_certify() -> None:
    assert min_certifying_n(0.001) == 10  # 0.001^(1/9) = 0.464, 0.001^(1/10) = 0.501
    notes = feasibility_warnings(gaussian(0.25), 100, 9, 0.001)
    assert notes and "too small to ever certify" in notes[0] and "at least 10" in notes[0]
    assert feasibility_warnings(gaussian(0.25), 100, 10, 0.001) == []
    assert max_radius(gaussian(0.25), 9, 0.001) == 0.0 < max_radius(gaussian(0.25), 10, 0.001)
    assert predict_warnings(5, 0.01) and not predict_warnings(10, 0.01)
    cert = certify(Linear([1.0], 0.0), [5.0], gaussian(1.0), 10, 9, 0.001)
    assert cert.abstained and cert.label is None and cert.radius == 0.0
    assert "<= 1/2" in cert.reason and "abstained" in cert.text()


# --- sampling -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gaussian", "laplace", "uniform"])
def test_noise_samplers_have_the_right_law(kind: str) -> None:
    scale = 0.7
    noise = make_noise(kind, scale)
    z = noise.sample((400_000,), torch.Generator().manual_seed(1)).double().numpy()
    assert abs(z.mean()) < 0.01
    std = {"gaussian": scale, "laplace": math.sqrt(2) * scale, "uniform": scale / math.sqrt(3)}
    assert z.std() == pytest.approx(std[kind], rel=0.01)
    if kind == "laplace":
        assert np.abs(z).mean() == pytest.approx(scale, rel=0.01)
    if kind == "uniform":
        assert -scale <= z.min() and z.max() <= scale
    assert np.all(np.isfinite(z))
    again = noise.sample((400_000,), torch.Generator().manual_seed(1)).double().numpy()
    assert np.array_equal(z, again)


def test_sample_counts_batches_across_points() -> None:
    model = Linear([1.0, 0.0], 0.0)
    xs = torch.tensor([[5.0, 0.0], [-5.0, 1.0], [5.0, 2.0], [-5.0, 0.0], [5.0, 0.0]])
    counts = sample_counts(model, xs, gaussian(0.1), 13, 7, torch.Generator().manual_seed(0))
    assert counts.tolist() == [[13, 0], [0, 13], [13, 0], [0, 13], [13, 0]]


def test_certify_single_matches_batch_and_text() -> None:
    model = Linear([3.0, 4.0], 0.0)
    x = model.point_at(0.5, 2)
    one = certify(model, x, gaussian(0.5), 100, 5000, 0.001, 1000, torch.Generator().manual_seed(3))
    many = certify_batch(model, x[None], gaussian(0.5), 100, 5000, 0.001, 1000,
                         torch.Generator().manual_seed(3))
    assert (one.label, one.radius, one.pA_lower) == (many[0].label, many[0].radius,
                                                      many[0].pA_lower)
    assert one.label == 0 and 0.0 < one.radius < 0.5 and one.norm == 2
    text = one.text()
    assert "certified with confidence 1-alpha = 0.999" in text and "radius" in text
    assert "norm l2" in text and "unsat" not in text.lower()


# --- statistical soundness ------------------------------------------------------------------

SOUNDNESS = [  # noise, model weights, norm of the certificate, scale
    ("gaussian", [0.6, -0.8, 0.0, 2.0, 1.0], 2, 0.5),
    ("laplace", [2.0], 1, 0.5),
    ("uniform", [2.0], 1, 0.5),
]


@pytest.mark.parametrize("kind,w,norm_ord,scale", SOUNDNESS)
def test_certify_is_sound_on_a_linear_classifier(kind: str, w: list[float], norm_ord: int,
                                                 scale: float) -> None:
    """The smoothed linear classifier equals the base one; its exact robust radius is the
    distance to the hyperplane. At most alpha (+ slack) of the certificates may exceed it."""
    alpha, model, noise = 0.01, Linear(w, 0.3), make_noise(kind, scale)
    true = 0.8 * scale if kind == "uniform" else 1.28 * scale * (1.0 if kind == "gaussian" else 1.8)
    x = model.point_at(true, norm_ord)
    s = float(x.astype(np.float64) @ np.array(w) + 0.3)
    dual = np.linalg.norm(w, {2: 2, 1: np.inf}[norm_ord])
    assert s / dual == pytest.approx(true, rel=1e-5)
    xs = np.repeat(x[None], TRIALS, axis=0)
    certs = certify_batch(model, xs, noise, 100, 1000, alpha, BATCH,
                          torch.Generator().manual_seed(7))
    wrong = np.mean([c.label not in (None, 0) or c.radius > s / dual for c in certs])
    assert wrong <= alpha + slack(alpha)
    radii = np.array([c.radius for c in certs])
    assert np.mean(radii > 0) > 0.9 and np.median(radii) > 0.8 * true


@pytest.mark.parametrize("kind,w,norm_ord,scale", SOUNDNESS)
def test_mean_certified_radius_is_tight_for_large_n(kind: str, w: list[float], norm_ord: int,
                                                    scale: float) -> None:
    model, noise = Linear(w, 0.0), make_noise(kind, scale)
    true = 0.6 * scale
    x = model.point_at(true, norm_ord)
    certs = certify_batch(model, np.repeat(x[None], 10, axis=0), noise, 100, 200_000, 0.001,
                          BATCH, torch.Generator().manual_seed(11))
    mean = float(np.mean([c.radius for c in certs]))
    assert 0.95 * true <= mean <= true * 1.0001
    assert all(c.label == 0 for c in certs)


def test_certify_counts_matches_single_calls() -> None:
    counts0 = np.array([[90, 10], [10, 90], [50, 50]])
    counts = np.array([[950, 50], [30, 970], [400, 600]])
    stats = certify_counts(counts0, counts, gaussian(0.25), 0.001)
    assert stats.label.tolist() == [0, 1, -1]  # the third guess (class 0) has 400/1000
    assert stats.pA_lower[0] == pytest.approx(lower_confidence_bound(950, 1000, 0.001))
    assert stats.radius[1] == pytest.approx(0.25 * norm.ppf(stats.pA_lower[1]))
    assert stats.radius[2] == 0.0


def test_predict_abstains_or_is_right_near_a_tie() -> None:
    """PREDICT returns the wrong class with probability at most alpha (Cohen, Theorem 2)."""
    alpha, model = 0.01, Linear([1.0, 1.0], 0.0)
    noise = gaussian(1.0)
    near = model.point_at(float(norm.ppf(0.53)), 2)  # P(class 0) = 0.53
    preds = predict_batch(model, np.repeat(near[None], TRIALS, axis=0), noise, 1000, alpha,
                          BATCH, torch.Generator().manual_seed(5))
    wrong = np.mean([p.label == 1 for p in preds])
    assert wrong <= alpha + slack(alpha)
    assert 0.0 < np.mean([p.label == 0 for p in preds]) < 1.0  # answers and abstentions
    tie = predict_batch(model, np.zeros((TRIALS, 2), np.float32), noise, 1000, alpha, BATCH,
                        torch.Generator().manual_seed(6))
    assert np.mean([not p.abstained for p in tie]) <= alpha + slack(alpha)


def test_predict_statistics() -> None:
    stats = predict_counts(np.array([[600, 400, 0], [3, 520, 477], [500, 500, 0]]), 0.001)
    assert stats.label.tolist() == [0, -1, -1]
    assert stats.pvalue[0] == pytest.approx(binomtest(600, 1000, 0.5).pvalue)
    assert (stats.n_a[1], stats.n_b[1]) == (520, 477)
    far = predict(Linear([1.0], 0.0), [-3.0], gaussian(0.5), 200, 0.001)
    assert far.label == 1 and not far.abstained and "class 1" in far.text()


# --- data -----------------------------------------------------------------------------------

def test_load_npz_shapes_and_errors(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 1, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(6))
    xs, ys = load_npz(tmp_path / "ok.npz", 6)
    assert xs.shape == (6, 6) and ys.dtype == np.int64
    with pytest.raises(SmoothingError, match="x has 6 features per sample but the model takes 7"):
        load_npz(tmp_path / "ok.npz", 7)
    np.savez(tmp_path / "y.npz", x=x, y=np.arange(5))
    with pytest.raises(SmoothingError, match="one label per sample"):
        load_npz(tmp_path / "y.npz", 6)
    np.savez(tmp_path / "f.npz", x=x, y=np.full(6, 0.5))
    with pytest.raises(SmoothingError, match="integer class labels"):
        load_npz(tmp_path / "f.npz", 6)
    np.savez(tmp_path / "k.npz", data=x)
    with pytest.raises(SmoothingError, match="no array named x or y"):
        load_npz(tmp_path / "k.npz", 6)
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(SmoothingError, match="not an .npz"):
        load_npz(tmp_path / "t.npz", 6)
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "missing.npz", 6)


def test_certified_accuracy_and_radii() -> None:
    rows = [SampleRow(0, 1, 1, 0.3, True, 0.0, 0.9), SampleRow(1, 2, 2, 0.8, True, 0.0, 0.9),
            SampleRow(2, 0, 1, 0.9, False, 0.0, 0.9), SampleRow(3, 0, -1, 0.0, False, 0.0, 0.4)]
    assert certified_accuracy(rows, [0.0, 0.3, 0.5, 1.0]) == [0.5, 0.5, 0.25, 0.0]
    assert parse_radii("0, 0.5,1") == (0.0, 0.5, 1.0)
    with pytest.raises(SmoothingError):
        parse_radii("0,-1")


def test_no_unsat_anywhere_in_the_smoothing_path() -> None:
    root = Path(__file__).resolve().parents[1]
    files = list((root / "bab" / "smoothing").glob("*.py"))
    files += [root / "bab" / "commands" / "smooth.py"]
    for path in files:
        text = path.read_text()
        assert "UNSAT" not in text and "Status" not in text, path
