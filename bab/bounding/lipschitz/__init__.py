"""The Lipschitz family (SoK category "Lipschitz"): op-norm, Fast-Lip and RecurJac.

Bounders (:class:`~bab.bounding.lipschitz.opnorm.OpNorm`,
:class:`~bab.bounding.lipschitz.fastlip.FastLip`,
:class:`~bab.bounding.lipschitz.recurjac.RecurJac`) plus the Lipschitz API:
:func:`lipschitz_constant` (a margin's Lipschitz constant in the dual norm of ``p``) and
:func:`certified_radius` (the largest ``ℓp`` radius whose Lipschitz margin bound stays
positive). Local constants (Fast-Lip, RecurJac) hold on the ``ℓp`` ball: their activation
bounds are CROWN's on the ball ∩ its box hull ``[x0 - ε, x0 + ε]`` (for ``ℓ∞`` the box itself).
"""

from __future__ import annotations

import copy
import enum
import math
import weakref
from dataclasses import dataclass

import torch

from bab.bounding.lipschitz import jacobian as jac
from onnx_models.network import Network

METHODS = ("lipschitz-opnorm", "fastlip", "recurjac")
_F64: "weakref.WeakKeyDictionary[Network, Network]" = weakref.WeakKeyDictionary()


class Norm(enum.Enum):
    """Threat-model norm ``p`` and its dual ``q`` (``1/p + 1/q = 1``)."""

    LINF = math.inf
    L2 = 2.0
    L1 = 1.0

    @property
    def p(self) -> float:
        return float(self.value)

    @property
    def q(self) -> float:
        return {Norm.LINF: 1.0, Norm.L2: 2.0, Norm.L1: math.inf}[self]

    @classmethod
    def parse(cls, norm: "Norm | str | float") -> "Norm":
        """``inf``/``linf``/``math.inf``, ``2``/``l2``, ``1``/``l1``."""
        if isinstance(norm, Norm):
            return norm
        key = str(norm).lower().lstrip("l")
        table = {"inf": cls.LINF, "2": cls.L2, "2.0": cls.L2, "1": cls.L1, "1.0": cls.L1}
        if key not in table:
            raise ValueError(f"unsupported norm {norm!r}; use inf, 2 or 1")
        return table[key]


def _method(name: str) -> str:
    name = {"opnorm": "lipschitz-opnorm"}.get(name, name)
    if name not in METHODS:
        raise ValueError(f"unknown Lipschitz method {name!r}; available: {', '.join(METHODS)}")
    return name


def _f64(network: Network) -> Network:
    """A cached float64 copy of the network."""
    if network.dtype == torch.float64:
        return network
    if network not in _F64:
        _F64[network] = copy.deepcopy(network).to(dtype=torch.float64)
    return _F64[network]


def margin_constants(network: Network, C: torch.Tensor, center: torch.Tensor, eps: float,
                     norm: "Norm | str | float" = "inf", method: str = "lipschitz-opnorm") -> torch.Tensor:
    """Lipschitz constants ``[M]`` of the margins ``C f`` (``C``: ``[M, n_out]``) in the dual
    norm ``q``: global for op-norm; on the ``ℓp`` ball of radius ``eps`` around ``center`` for
    Fast-Lip and RecurJac (CROWN's activation bounds on the ball intersected with its box hull
    ``[x0 - eps, x0 + eps]``, which contains it for every ``p``)."""
    from bab.bounding.lipschitz.fastlip import FastLip
    from bab.bounding.lipschitz.opnorm import margin_constants as opnorm_constants
    from bab.bounding.lipschitz.recurjac import RecurJac

    nrm, name, net = Norm.parse(norm), _method(method), _f64(network)
    C = torch.as_tensor(C, dtype=torch.float64).reshape(1, -1, net.n_outputs)
    with torch.no_grad():
        if name == "lipschitz-opnorm":
            start = (torch.ones(1, *net.input_shape, dtype=torch.float64) if nrm is Norm.LINF
                     else torch.ones(1, dtype=torch.float64))
            return opnorm_constants(net, C, nrm.p, start)[0]
        x0 = torch.as_tensor(center, dtype=torch.float64).reshape(1, -1)
        ball = None if nrm is Norm.LINF else {
            "center": x0, "eps": torch.tensor([float(eps)], dtype=torch.float64), "p": str(int(nrm.p))}
        bounder = FastLip() if name == "fastlip" else RecurJac()
        J = bounder.jacobian(bounder.problem(net, x0 - eps, x0 + eps, C, ball))
        return jac.dual_norm(torch.maximum(J[0].abs(), J[1].abs()).flatten(2), nrm.q)[0]


def lipschitz_constant(network: Network, c, center, eps: float, norm: "Norm | str | float" = "inf",
                       method: str = "lipschitz-opnorm") -> float:
    """Lipschitz constant of ``g(x) = c · f(x)`` in the dual norm of ``norm`` (see
    :func:`margin_constants`); ``c``: ``[n_out]``."""
    return float(margin_constants(network, torch.as_tensor(c).reshape(1, -1), center, eps, norm, method)[0])


@dataclass(frozen=True)
class BisectStep:
    """One radius tried by the bisection: ``eps``, whether it verified, and the smallest
    margin lower bound ``min_j m_j - L_j(eps) eps`` there."""

    eps: float
    verified: bool
    worst_margin: float


def _margins(net: Network, x0: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``e_label - e_j`` (``j != label``) and the margins at ``x0`` minus a float slack."""
    with torch.no_grad():
        y = net.forward(x0.reshape(1, -1))[0]
    n = y.numel()
    C = torch.zeros(n - 1, n, dtype=torch.float64)
    others = [j for j in range(n) if j != label]
    C[:, label] = 1.0
    C[torch.arange(n - 1), others] = -1.0
    m = C @ y
    return C, m - jac.SLACK * (1 + y.abs().max())


def certified_radius(network: Network, x0, label: int, norm: "Norm | str | float" = "inf",
                     method: str = "lipschitz-opnorm", steps: int = 20,
                     return_steps: bool = False):
    """The largest ``ε`` with ``m_j(x0) - L_j(ε) ε > 0`` for every other class ``j``.

    Op-norm: closed form ``min_j m_j / L_j`` (shrunk by ``1e-9``). Fast-Lip/RecurJac: ``L``
    grows with ``ε``, so bisect (``steps`` halvings) between 0 and ``min_j m_j / ‖∇g_j(x0)‖_q``
    (no larger radius can verify) and return the largest verified ``ε``. Returns 0 when ``x0``
    is not classified as ``label``. ``return_steps``: also return the :class:`BisectStep` list.
    """
    nrm, name, net = Norm.parse(norm), _method(method), _f64(network)
    x = torch.as_tensor(x0, dtype=torch.float64).reshape(-1)
    C, m = _margins(net, x, label)
    trace: list[BisectStep] = []
    if bool((m <= 0).any()):
        eps = 0.0
    elif name == "lipschitz-opnorm":
        L_ = margin_constants(net, C, x, 0.0, nrm, name)
        eps = float((m / L_).min()) * (1 - 1e-9) if bool((L_ > 0).all()) else math.inf
    else:
        eps = _bisect(net, C, m, x, nrm, name, steps, trace)
    return (eps, trace) if return_steps else eps


def _verified(net: Network, C: torch.Tensor, m: torch.Tensor, x: torch.Tensor, eps: float,
              nrm: Norm, name: str, trace: list[BisectStep]) -> bool:
    worst = float((m - margin_constants(net, C, x, eps, nrm, name) * eps).min())
    trace.append(BisectStep(eps, worst > 0, worst))
    return worst > 0


def _bisect(net: Network, C: torch.Tensor, m: torch.Tensor, x: torch.Tensor, nrm: Norm, name: str,
            steps: int, trace: list[BisectStep]) -> float:
    """Bisection of the local-constant margin test; ``0`` is always verified."""
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        grads = torch.stack([torch.autograd.grad(c @ net.forward(xg[None])[0], xg)[0] for c in C])
    gnorm = jac.dual_norm(grads, nrm.q) / (1 + jac.SLACK)
    hi = float((m / gnorm).min()) * (1 + 1e-6) if bool((gnorm > 0).all()) else math.inf
    if math.isinf(hi):  # a flat margin: grow until the test fails
        hi = 1.0
        while _verified(net, C, m, x, hi, nrm, name, trace) and hi < 1e12:
            hi *= 2
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if _verified(net, C, m, x, mid, nrm, name, trace):
            lo = mid
        else:
            hi = mid
    return lo


__all__ = ["Norm", "BisectStep", "lipschitz_constant", "margin_constants", "certified_radius", "METHODS"]
