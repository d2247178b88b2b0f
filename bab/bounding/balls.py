"""l_p input balls in torch: dual-norm concretisation, projection, sampling, box distance.

An input set ``B = {x : ||x - x0||_p <= eps} ∩ [l, u]`` (``x0`` inside ``[l, u]``). For a
linear function, ``min_{x in B} a·x + b >= max(min_{box} a·x + b, a·x0 - eps ||a||_q + b)``
with ``q`` the dual norm (``1/p + 1/q = 1``): each term is the exact minimum over a superset
of ``B``, so the maximum is a sound lower bound (Hölder's inequality gives the second).
Boxes and ℓ∞ balls need no ball term: ``B`` is then a box already.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

DUAL = {"inf": 1.0, "2": 2.0, "1": float("inf")}


def dual_norm(a: torch.Tensor, p: str) -> torch.Tensor:
    """``||a||_q`` over the last dimension, ``q`` the dual of ``p``."""
    q = DUAL[p]
    if q == 1.0:
        return a.abs().sum(-1)
    if q == 2.0:
        return torch.linalg.vector_norm(a, 2, dim=-1)
    return a.abs().amax(-1)


def ball_lower(a_in: torch.Tensor, bias: torch.Tensor, center: torch.Tensor, eps: torch.Tensor,
               p: str) -> torch.Tensor:
    """``a·x0 - eps ||a||_q + bias`` ``[N, M]`` (``a_in``: ``[N, M, n_in]``, ``center``:
    ``[N, n_in]``, ``eps``: ``[N]``): the minimum of ``a·x + bias`` over the ball."""
    centre = torch.bmm(a_in, center.to(a_in).unsqueeze(-1)).squeeze(-1)
    return centre - eps.to(a_in).unsqueeze(-1) * dual_norm(a_in, p) + bias


def uses_ball(domains: Any) -> bool:
    """Whether the domains carry a ball that can beat their box (ℓ2 or ℓ1)."""
    return getattr(domains, "center", None) is not None and getattr(domains, "p", "inf") != "inf"


def distance_to_box(center: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                    p: str) -> torch.Tensor:
    """``[N]``: the p-norm distance from ``center`` to each box ``[lower, upper]`` (``[N, n_in]``)."""
    gap = torch.clamp(lower - center, min=0) + torch.clamp(center - upper, min=0)
    order = float("inf") if p == "inf" else float(p)
    return torch.linalg.vector_norm(gap, order, dim=-1)


def misses_ball(center: torch.Tensor, eps: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                p: str, rel: float = 1e-6) -> torch.Tensor:
    """``[N]`` boxes that certainly miss the ball (distance above ``eps`` by a float slack)."""
    dist = distance_to_box(center.to(lower), lower, upper, p)
    eps = eps.to(lower)
    return dist > eps + rel * (1.0 + eps + center.abs().amax(-1).to(lower))


def _project_l1(v: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of rows ``v`` ``[B, n]`` onto the ℓ1 balls of radii ``eps`` ``[B]``
    (Duchi et al. 2008: soft-threshold at the level that makes the ℓ1 norm ``eps``)."""
    a = v.abs()
    inside = a.sum(-1) <= eps
    s, _ = torch.sort(a, dim=-1, descending=True)
    cums = s.cumsum(-1) - eps.unsqueeze(-1)
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = s - cums / k > 0
    rho = cond.to(torch.long).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = (cums.gather(-1, rho) / (rho + 1).to(v.dtype)).clamp(min=0)
    out = torch.sign(v) * torch.clamp(a - theta, min=0)
    return torch.where(inside.unsqueeze(-1), v, out)


def project(x: torch.Tensor, center: torch.Tensor, eps: torch.Tensor, p: str,
            lower: torch.Tensor | None = None, upper: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of ``x`` projected onto the ball, then clipped to ``[lower, upper]``.

    With the centre inside the box the clip keeps the point in the ball: clipping moves every
    coordinate towards the centre's, so no p-norm of ``x - x0`` grows.
    """
    center = center.to(x).expand_as(x)
    eps = eps.to(x).reshape(-1).expand(x.shape[0])
    v = x - center
    if p == "inf":
        v = torch.maximum(torch.minimum(v, eps.unsqueeze(-1)), -eps.unsqueeze(-1))
    elif p == "2":
        norm = torch.linalg.vector_norm(v, 2, dim=-1, keepdim=True)
        v = v * torch.clamp(eps.unsqueeze(-1) / norm.clamp(min=1e-30), max=1.0)
    else:
        v = _project_l1(v, eps)
    out = center + v
    if lower is not None:
        out = torch.minimum(torch.maximum(out, lower.to(x)), upper.to(x))
    return out


def sample(center: torch.Tensor, eps: float, p: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points drawn uniformly from the ball (``center``: ``[n_in]``)."""
    d = center.numel()
    kw: dict[str, Any] = dict(generator=gen, dtype=center.dtype)
    if p == "inf":
        v = (2 * torch.rand(n, d, **kw) - 1) * eps
    elif p == "2":
        g = torch.randn(n, d, **kw)
        g = g / torch.linalg.vector_norm(g, 2, dim=-1, keepdim=True).clamp(min=1e-30)
        v = g * eps * torch.rand(n, 1, **kw) ** (1.0 / d)
    else:  # uniform in the ℓ1 ball: exponential spacings with random signs
        e = -torch.log(torch.rand(n, d + 1, **kw).clamp(min=1e-30))
        signs = torch.where(torch.rand(n, d, **kw) < 0.5, -1.0, 1.0).to(center.dtype)
        v = signs * e[:, :d] / e.sum(-1, keepdim=True) * eps
    return center.cpu().reshape(1, -1) + v


def ball_kwargs(ball: dict[str, Any], n: int, dtype: torch.dtype) -> dict[str, Any]:
    """``Domains`` keyword arguments repeating one ball (``center``/``eps``/``p``, as from
    :func:`region_ball`) for ``n`` domains in ``dtype`` (empty without a ball)."""
    if not ball:
        return {}
    return {"center": ball["center"].to(dtype).expand(n, -1), "eps": ball["eps"].to(dtype).expand(n),
            "p": ball["p"]}


def region_ball(region: Any, n: int = 1, **kw: Any) -> dict[str, Any]:
    """``Domains`` keyword arguments for the ball of a :class:`vnnlib.spec.Region` (``n``
    copies; ``kw``: ``dtype``/``device``); empty for a box or an ℓ∞ ball (the box is exact)."""
    ball = getattr(region, "ball", None)
    if ball is None or ball.p == "inf":
        return {}
    center = torch.as_tensor(np.asarray(ball.center, np.float64), **kw).reshape(1, -1)
    return {"center": center.expand(n, -1), "eps": torch.full((n,), float(ball.eps), **kw), "p": ball.p}
