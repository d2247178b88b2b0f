"""Training losses: natural, PGD adversarial, IBP, CROWN-IBP and noise augmentation.

* ``pgd`` (Madry et al. 2018): cross-entropy at a PGD point of the l-inf ball of radius eps
  (random start, signed-gradient steps, projected onto the ball and clipped to [0, 1]).
* ``ibp`` (Gowal et al. 2018): ``kappa * CE(f(x), y) + (1 - kappa) * CE(-m, y)`` where ``m``
  are interval lower bounds of the margins ``f_y - f_j`` over the ball (the last layer folded
  into the margin spec, as the paper does); eps ramps up from 0 and kappa down from 1.
* ``crown-ibp`` (Zhang et al. 2020): the same loss with ``m = beta * m_CROWN-IBP +
  (1 - beta) * m_IBP``; ``m_CROWN-IBP`` is the project's CROWN bounder with interval
  intermediate bounds and one CROWN backward pass from the margins, run with gradients (they
  flow through the ReLU relaxations' slopes and intercepts). beta falls from 1 to 0 with
  the eps ramp.
* ``noise-gaussian|laplace|uniform``: cross-entropy on ``x + noise`` with the randomized
  smoothing noises of :mod:`bab.smoothing.noise` (scale sigma / lambda), for ``bab smooth``.

``CE(-m, y)`` (logit 0 for the true class, ``-m_j`` for class ``j``) is the cross-entropy of the
worst-case logits; since every ``m_j`` is at most the true margin at ``x``, it is at least
the natural loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bab.bounding.base import Domains
from bab.bounding.interval.ibp import propagate
from onnx_models import layers as L
from onnx_models.network import Network

METHODS = ("none", "pgd", "ibp", "crown-ibp", "noise-gaussian", "noise-laplace", "noise-uniform")
EPS_METHODS = ("pgd", "ibp", "crown-ibp")
NOISE_METHODS = ("noise-gaussian", "noise-laplace", "noise-uniform")
BOUND_METHODS = ("ibp", "crown-ibp")


@dataclass(frozen=True)
class Phase:
    """Schedule values at one training step: radius, natural-loss weight, CROWN share."""

    eps: float
    kappa: float = 1.0
    beta: float = 0.0


@dataclass(frozen=True)
class Schedule:
    """Warm-up (natural loss only) for the first ``warmup`` fraction of the steps, then a
    linear ramp over the next ``ramp`` fraction: eps ``0 -> eps``, kappa ``1 -> kappa_end``,
    beta ``beta_start -> 0``; constant afterwards. ``ramp = 0``: eps from the start."""

    eps: float
    warmup: float = 0.0
    ramp: float = 0.0
    kappa_end: float = 1.0
    beta_start: float = 0.0

    def at(self, progress: float) -> Phase:
        """The phase at ``progress`` in [0, 1] (fraction of the training steps done)."""
        if progress < self.warmup:
            return Phase(0.0, 1.0, self.beta_start)
        r = 1.0 if self.ramp <= 0 else min(1.0, (progress - self.warmup) / self.ramp)
        return Phase(r * self.eps, 1.0 + r * (self.kappa_end - 1.0), (1.0 - r) * self.beta_start)


def schedule_for(method: str, eps: float | None) -> Schedule:
    """The papers' schedule shapes: IBP kappa 1 -> 1/2 (Gowal et al.), CROWN-IBP kappa
    1 -> 0 and beta 1 -> 0 (Zhang et al.), both after a 10% warm-up with a 40% ramp;
    PGD at full eps throughout (Madry et al.); no eps otherwise."""
    if method == "ibp":
        return Schedule(float(eps), warmup=0.1, ramp=0.4, kappa_end=0.5)
    if method == "crown-ibp":
        return Schedule(float(eps), warmup=0.1, ramp=0.4, kappa_end=0.0, beta_start=1.0)
    if method == "pgd":
        return Schedule(float(eps))
    return Schedule(0.0)


def margin_spec(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``C [N, K-1, K]`` with rows ``e_y - e_j`` for every class ``j != y``, in class order."""
    eye = torch.eye(n_classes, dtype=torch.float32, device=y.device)
    others = torch.arange(n_classes, device=y.device).expand(len(y), n_classes)
    others = others[others != y.unsqueeze(1)].reshape(len(y), n_classes - 1)
    return eye[y].unsqueeze(1) - eye[others]


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The l-inf ball of radius ``eps`` around flat ``x``, clipped to [0, 1]."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def ibp_margins(net: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Interval lower bounds ``[N, M]`` of ``C f(x)`` over the boxes (differentiable); a last
    Linear layer is folded into ``C`` first (the IBP paper's elision: tighter, still sound)."""
    boxes = propagate(net, Domains(lo, hi, C))
    last = net.nodes[-1]
    if isinstance(last.layer, L.Linear) and len(net.nodes) > 1 and last.inputs[0] >= 0:
        a, b = boxes[last.inputs[0]]
        n = lo.shape[0]
        W = C @ last.layer.weight  # [N, M, hidden]
        mid, rad = ((a + b) / 2).reshape(n, -1, 1), ((b - a) / 2).reshape(n, -1, 1)
        centre = (W @ mid).squeeze(-1) + C @ last.layer.bias
        return centre - (W.abs() @ rad).squeeze(-1)
    a, b = boxes[-1]
    mid, rad = ((a + b) / 2).reshape(lo.shape[0], -1, 1), ((b - a) / 2).reshape(lo.shape[0], -1, 1)
    return (C @ mid).squeeze(-1) - (C.abs() @ rad).squeeze(-1)


def crown_ibp_margins(net: Network, lo: torch.Tensor, hi: torch.Tensor,
                      C: torch.Tensor) -> torch.Tensor:
    """CROWN-IBP lower bounds ``[N, M]`` of ``C f(x)``: interval intermediate bounds, one
    CROWN backward pass from ``C`` (differentiable; the plain back-substitution bound)."""
    from bab.bounding.polyhedra.crown import Crown

    bounder = Crown("crown", intermediate="ibp", upper=False, final_ibp=False,
                    name="crown-ibp")
    return bounder.sweep(net, Domains(lo, hi, C)).final(C)


def worst_case_ce(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the worst-case logits (Gowal et al.'s robust loss): logit 0 for the
    true class and ``-m_j`` for the others (``margins``: ``[N, K-1]`` from :func:`margin_spec`)."""
    logits = torch.cat([margins.new_zeros(len(margins), 1), -margins], 1)
    return F.cross_entropy(logits, torch.zeros_like(y))


def pgd_attack(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
               gen: torch.Generator) -> torch.Tensor:
    """A PGD point of the clipped l-inf ball (random start, step ``2.5 eps / steps``)."""
    if eps <= 0:
        return x
    lo, hi = input_box(x, eps)
    step = 2.5 * eps / steps
    adv = lo + (hi - lo) * torch.rand(x.shape, generator=gen)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = torch.minimum(torch.maximum(adv + step * grad.sign(), lo), hi)
    return adv.detach()


@dataclass
class LossContext:
    """What a step's loss needs besides the batch: the model, its IR twin, the noise."""

    model: Any
    net: Network
    n_classes: int
    gen: torch.Generator
    noise: Any = None
    pgd_steps: int = 10


def bound_loss(method: str, ctx: LossContext, x: torch.Tensor, y: torch.Tensor,
               phase: Phase) -> torch.Tensor:
    """``CE(-m, y)`` for the IBP / CROWN-IBP (beta-mixed) margin bounds ``m``."""
    lo, hi = input_box(x, phase.eps)
    C = margin_spec(y, ctx.n_classes)
    if method == "ibp" or phase.beta <= 0:
        m = ibp_margins(ctx.net, lo, hi, C)
    elif phase.beta >= 1:
        m = crown_ibp_margins(ctx.net, lo, hi, C)
    else:
        m = (phase.beta * crown_ibp_margins(ctx.net, lo, hi, C)
             + (1 - phase.beta) * ibp_margins(ctx.net, lo, hi, C))
    return worst_case_ce(m, y)


def step_loss(method: str, ctx: LossContext, x: torch.Tensor, y: torch.Tensor,
              phase: Phase) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, logits)`` of one batch; the logits are those of the inputs trained on
    (clean, adversarial or noisy)."""
    if method == "pgd":
        ctx.model.eval()
        adv = pgd_attack(ctx.model, x, y, phase.eps, ctx.pgd_steps, ctx.gen)
        ctx.model.train()
        logits = ctx.model(adv)
        return F.cross_entropy(logits, y), logits
    if method in NOISE_METHODS:
        logits = ctx.model(x + ctx.noise.sample(tuple(x.shape), ctx.gen))
        return F.cross_entropy(logits, y), logits
    logits = ctx.model(x)
    loss = F.cross_entropy(logits, y)
    if method in BOUND_METHODS and phase.kappa < 1:
        loss = phase.kappa * loss + (1 - phase.kappa) * bound_loss(method, ctx, x, y, phase)
    return loss, logits


@torch.no_grad()
def ibp_certified(net: Network, x: torch.Tensor, y: torch.Tensor, eps: float,
                  n_classes: int) -> torch.Tensor:
    """Boolean ``[N]``: IBP proves every margin ``f_y - f_j`` positive over the eps-ball."""
    lo, hi = input_box(x, eps)
    return (ibp_margins(net, lo, hi, margin_spec(y, n_classes)) > 0).all(1)
