"""Several input regions of a property stacked into one batch of tensors.

A property may be a disjunction of input regions (nn4sys, ACAS Xu property 6), each with its
own clauses. Branch and bound bounds domains of every region in one pass: each domain carries
its region index, which selects that region's clause rows. Regions have different numbers of
clauses and rows, so rows are padded with ``C = 0``, ``d = +inf`` (a padded row never refutes
anything) and clauses with ``valid = False`` (never open). ``R[r, m, k]`` says that row ``m`` of
region ``r`` belongs to its clause ``k``.

Regions are batched together only when their input sets are of one kind (boxes and ℓ∞ balls
are boxes; ℓ2 and ℓ1 balls carry a centre and radius per region): :func:`group_regions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bab.bounding.balls import region_ball
from vnnlib.spec import Region


@dataclass
class RegionStack:
    """Stacked tensors of ``Rg`` regions with at most ``K`` clauses and ``M`` rows each."""

    lower: torch.Tensor  # [Rg, n_in] region boxes
    upper: torch.Tensor  # [Rg, n_in]
    C: torch.Tensor  # [Rg, M, n_out] clause rows, zero-padded
    d: torch.Tensor  # [Rg, M], +inf-padded
    R: torch.Tensor  # [Rg, M, K] bool: row m of region r belongs to clause k
    clause_ok: torch.Tensor  # [Rg, K] bool: clause k exists in region r
    rowless: torch.Tensor  # [Rg] bool: the region has a clause without rows (it always holds)
    ball: dict[str, Any]  # {} or center [Rg, n_in], eps [Rg], p (one norm for all)

    @property
    def valid(self) -> torch.Tensor:
        """``[Rg, M]`` rows that exist (not padding)."""
        return torch.isfinite(self.d)


def input_set_kind(region: Region) -> str:
    """``"box"`` (boxes and ℓ∞ balls) or the ball's norm (``"2"``, ``"1"``)."""
    ball = getattr(region, "ball", None)
    return "box" if ball is None or ball.p == "inf" else ball.p


def group_regions(regions: list[Region], batch: bool = True) -> list[list[int]]:
    """Indices of regions bounded together: with ``batch``, one group per input-set kind (in
    order of first appearance), else one group per region."""
    if not batch:
        return [[i] for i in range(len(regions))]
    groups: dict[str, list[int]] = {}
    for i, region in enumerate(regions):
        groups.setdefault(input_set_kind(region), []).append(i)
    return list(groups.values())


def stack_regions(regions: list[Region], n_out: int, **kw: Any) -> RegionStack:
    """The :class:`RegionStack` of ``regions`` (``kw``: ``dtype``/``device``)."""
    n_reg = len(regions)
    K = max(len(r.clauses) for r in regions)
    M = max([1] + [sum(c.n_rows for c in r.clauses) for r in regions])
    C = np.zeros((n_reg, M, n_out))
    d = np.full((n_reg, M), np.inf)
    R = np.zeros((n_reg, M, K), bool)
    ok = np.zeros((n_reg, K), bool)
    for i, region in enumerate(regions):
        m = 0
        for k, clause in enumerate(region.clauses):
            C[i, m:m + clause.n_rows], d[i, m:m + clause.n_rows] = clause.C, clause.d
            R[i, m:m + clause.n_rows, k] = True
            ok[i, k] = True
            m += clause.n_rows
    device = kw.get("device")
    balls = [region_ball(r, 1, **kw) for r in regions]
    if any(b for b in balls) and len({b.get("p") for b in balls}) > 1:
        raise ValueError("regions of one batch must share their input-set kind (group_regions)")
    ball = {}
    if balls[0]:
        ball = {"center": torch.cat([b["center"] for b in balls]), "eps": torch.cat([b["eps"] for b in balls]),
                "p": balls[0]["p"]}
    return RegionStack(
        lower=torch.as_tensor(np.stack([r.lower for r in regions]), **kw),
        upper=torch.as_tensor(np.stack([r.upper for r in regions]), **kw),
        C=torch.as_tensor(C, **kw), d=torch.as_tensor(d, **kw),
        R=torch.as_tensor(R, device=device), clause_ok=torch.as_tensor(ok, device=device),
        rowless=torch.as_tensor([any(c.n_rows == 0 for c in r.clauses) for r in regions], device=device),
        ball=ball)


def ball_rows(ball: dict[str, Any], region: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
    """``Domains`` keyword arguments of each domain's region ball (empty without balls)."""
    if not ball:
        return {}
    return {"center": ball["center"][region].to(dtype), "eps": ball["eps"][region].to(dtype), "p": ball["p"]}
