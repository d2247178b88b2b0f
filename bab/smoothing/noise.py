"""Noise distributions for randomized smoothing and their certified radii.

Each noise knows how to sample itself (torch, seeded through a ``torch.Generator``) and how
to turn a lower bound ``pA`` on the top class's probability (and optionally an upper bound
``pB`` on the runner-up's) into a certified radius in its norm. The formulas follow the SoK
of Li, Xie and Li ("SoK: Certified Robustness for Deep Neural Networks", IEEE S&P 2023,
section IV-E) and the papers cited in each docstring. Every radius is positive exactly when
``pA > pB`` (``pA > 1/2`` in the one-sided form), which is the abstention condition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bab.smoothing.errors import SmoothingError

NOISES = ("gaussian", "laplace", "uniform")
ArrayLike = Any  # float or numpy array


def _check_probability(pA: ArrayLike, pB: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """``pA`` and ``pB`` (default ``1 - pA``) as float64 arrays."""
    pa = np.asarray(pA, dtype=np.float64)
    pb = 1.0 - pa if pB is None else np.asarray(pB, dtype=np.float64)
    return pa, pb


def _finish(radius: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> ArrayLike:
    """Radius 0 where ``pA <= pB`` (nothing certified); a float for scalar input."""
    with np.errstate(invalid="ignore"):
        out = np.where(pa > pb, radius, 0.0)
    out = np.maximum(np.nan_to_num(out, nan=0.0, posinf=np.inf), 0.0)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class Noise:
    """Base class: ``scale`` is sigma (Gaussian) or lambda (Laplace, uniform)."""

    scale: float
    name = "noise"
    norm = 2

    def __post_init__(self) -> None:
        try:
            value = float(self.scale)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise SmoothingError(f"{self.name} noise: {self.param_name} must be a finite number "
                                 f"> 0, got {self.scale!r}")
        object.__setattr__(self, "scale", value)

    def sample(self, shape: tuple[int, ...], generator: Any, dtype: Any = None) -> Any:
        """A torch tensor of i.i.d. noise of the given shape."""
        raise NotImplementedError

    def radius(self, pA: ArrayLike, pB: ArrayLike | None = None) -> ArrayLike:
        """Certified radius (in ``norm``) from ``pA`` (and ``pB``, default ``1 - pA``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """E.g. ``gaussian(sigma=0.25)``."""
        return f"{self.name}({self.param_name}={self.scale:g})"

    @property
    def param_name(self) -> str:
        """How the papers call the scale."""
        return "lambda"


@dataclass(frozen=True)
class Gaussian(Noise):
    """Isotropic Gaussian ``N(0, sigma^2 I)``; certifies the l2 norm.

    Cohen, Rosenfeld & Kolter (ICML 2019), Theorem 1:
    ``R = sigma/2 * (Phi^-1(pA) - Phi^-1(pB))``; with ``pB = 1 - pA`` this is
    ``R = sigma * Phi^-1(pA)`` (used by CERTIFY). Tight for linear classifiers.
    """

    name = "gaussian"
    norm = 2

    @property
    def param_name(self) -> str:
        """Sigma, the standard deviation."""
        return "sigma"

    def sample(self, shape: tuple[int, ...], generator: Any, dtype: Any = None) -> Any:
        """``sigma * N(0, 1)``."""
        import torch

        return torch.randn(shape, generator=generator, dtype=dtype or torch.float32) * self.scale

    def radius(self, pA: ArrayLike, pB: ArrayLike | None = None) -> ArrayLike:
        """``sigma * Phi^-1(pA)`` or ``sigma/2 * (Phi^-1(pA) - Phi^-1(pB))``."""
        from scipy.stats import norm as normal

        pa, pb = _check_probability(pA, pB)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = 0.5 * self.scale * (normal.ppf(pa) - normal.ppf(pb))
        return _finish(r, pa, pb)


@dataclass(frozen=True)
class Laplace(Noise):
    """I.i.d. Laplace noise with density ``exp(-|z|_1 / lambda) / (2 lambda)^d``; l1 norm.

    Teng, Lee & Yuan, "l1 adversarial robustness certificates: a randomized smoothing
    approach" (2020), Theorem 1: ``R = max(lambda/2 * log(pA/pB), -lambda * log(1 - pA + pB))``.
    With ``pB = 1 - pA`` the second term wins: ``R = -lambda * log(2 (1 - pA))`` (the SoK's
    form; Yang et al. 2020 give the same), exact for a 1-d threshold classifier.
    """

    name = "laplace"
    norm = 1

    def sample(self, shape: tuple[int, ...], generator: Any, dtype: Any = None) -> Any:
        """``lambda * (E1 - E2)`` with ``E = -log(1 - U) ~ Exp(1)``: Laplace(0, lambda)."""
        import torch

        u = torch.rand((2, *shape), generator=generator, dtype=dtype or torch.float32)
        e = torch.log1p(-u)  # -E, finite since U < 1
        return (e[1] - e[0]) * self.scale

    def radius(self, pA: ArrayLike, pB: ArrayLike | None = None) -> ArrayLike:
        """``-lambda log(2(1-pA))``, or Teng et al.'s maximum of two terms with ``pB``."""
        pa, pb = _check_probability(pA, pB)
        with np.errstate(divide="ignore", invalid="ignore"):
            halfspace = -self.scale * np.log(1.0 - pa + pb)
            if pB is None:
                r = halfspace
            else:
                r = np.maximum(halfspace, 0.5 * self.scale * np.log(pa / pb))
        return _finish(r, pa, pb)


@dataclass(frozen=True)
class Uniform(Noise):
    """I.i.d. uniform noise on ``[-lambda, lambda]^d``; certifies the l1 norm.

    Yang et al., "Randomized smoothing of all shapes and sizes" (ICML 2020), Table 1 (and Lee
    et al. 2019): ``R = 2 lambda (pA - 1/2)``. It follows from the total-variation bound
    ``TV(U, U + delta) <= |delta|_1 / (2 lambda)``; the same bound with ``pB`` gives
    ``R = lambda (pA - pB)``.
    """

    name = "uniform"
    norm = 1

    def sample(self, shape: tuple[int, ...], generator: Any, dtype: Any = None) -> Any:
        """``lambda * U(-1, 1)``."""
        import torch

        u = torch.rand(shape, generator=generator, dtype=dtype or torch.float32)
        return (2.0 * u - 1.0) * self.scale

    def radius(self, pA: ArrayLike, pB: ArrayLike | None = None) -> ArrayLike:
        """``2 lambda (pA - 1/2)``, or ``lambda (pA - pB)`` with ``pB``."""
        pa, pb = _check_probability(pA, pB)
        return _finish(self.scale * (pa - pb), pa, pb)


def gaussian(sigma: float) -> Gaussian:
    """Gaussian noise with standard deviation ``sigma`` (l2 certificates)."""
    return Gaussian(sigma)


def laplace(scale: float) -> Laplace:
    """Laplace noise with scale ``lambda`` (l1 certificates)."""
    return Laplace(scale)


def uniform(scale: float) -> Uniform:
    """Uniform noise on ``[-lambda, lambda]^d`` (l1 certificates)."""
    return Uniform(scale)


def make_noise(name: str, scale: float) -> Noise:
    """The noise called ``name`` (one of :data:`NOISES`) with the given scale."""
    kinds = {"gaussian": Gaussian, "laplace": Laplace, "uniform": Uniform}
    if name not in kinds:
        raise SmoothingError(f"unknown noise {name!r}; choose one of {', '.join(NOISES)}")
    return kinds[name](scale)
