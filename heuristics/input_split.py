"""Input-split Branchers: which input dimension to halve for each box.

Each brancher has ``name`` and ``choose(problem, batch) -> LongTensor [N]``; ``problem`` is an
:class:`~bab.input_split.InputSplitProblem` (network, each box's clause rows ``rows_of(batch)``,
root widths ``root_width_of(batch)``, ``open_rows``, ``_row_bounds``) and ``batch`` the boxes
(``lower``/``upper``/``open``/``region``).
"""

from __future__ import annotations

from typing import Any

import torch


class Widest:
    """The dimension widest relative to the root box."""

    name = "widest"

    def choose(self, problem: Any, batch: Any) -> torch.Tensor:
        return ((batch["upper"] - batch["lower"]) / problem.root_width_of(batch)).argmax(1)


class Smear:
    """Gradient smear: ``sum over open rows |d(C_r f)/dx_j| * width_j`` at the box centre."""

    name = "smear"

    def choose(self, problem: Any, batch: Any) -> torch.Tensor:
        lo, hi = batch["lower"], batch["upper"]
        x = ((lo + hi) / 2).detach().requires_grad_(True)
        with torch.enable_grad():
            y = problem.net.forward(x)
            n_out = y.shape[1]
            jac = []
            for o in range(n_out):  # n_out is small for input-split problems
                g, = torch.autograd.grad(y[:, o].sum(), x, retain_graph=o < n_out - 1)
                jac.append(g)
        J = torch.stack(jac, 1)  # [N, n_out, n_in]
        rows = torch.einsum("nmo,noi->nmi", problem.rows_of(batch), J).abs()
        rows = rows * problem.open_rows(batch)[:, :, None]
        score = rows.sum(1) * (hi - lo)
        widest = Widest().choose(problem, batch)
        flat = score.amax(1) <= 0  # no gradient information: fall back to the widest side
        return torch.where(flat, widest, score.argmax(1))


class BoundImprovement:
    """Try every dimension with a cheap bound pass; keep the one whose worse child gains most."""

    name = "bound-improvement"

    def __init__(self, bounder: Any = None) -> None:
        self.bounder = bounder

    def choose(self, problem: Any, batch: Any) -> torch.Tensor:
        from bab.bounding import get_bounder

        bounder = self.bounder or get_bounder("ibp")
        lo, hi = batch["lower"], batch["upper"]
        n, dims = lo.shape
        mid = (lo + hi) / 2
        eye = torch.eye(dims, dtype=torch.bool, device=lo.device)
        # children for every (domain, dim): left halves then right halves, [2 * dims * n]
        lows = torch.cat([lo.repeat_interleave(dims, 0),
                          torch.where(eye.repeat(n, 1), mid.repeat_interleave(dims, 0), lo.repeat_interleave(dims, 0))])
        highs = torch.cat([torch.where(eye.repeat(n, 1), mid.repeat_interleave(dims, 0), hi.repeat_interleave(dims, 0)),
                           hi.repeat_interleave(dims, 0)])
        region = batch["region"].repeat_interleave(dims, 0).repeat(2)
        gap = problem._row_bounds(bounder, lows, highs, region)  # [2*n*dims, M]
        gap = torch.where(problem.open_rows(batch).repeat_interleave(dims, 0).repeat(2, 1), gap,
                          torch.full_like(gap, -float("inf")))
        best_row = gap.amax(1).reshape(2, n, dims)  # a child's best refutation margin
        return best_row.amin(0).argmax(1)


INPUT_BRANCHERS = {"widest": Widest, "smear": Smear, "bound-improvement": BoundImprovement}


def get_input_brancher(name: str) -> Any:
    """An input-split brancher by name."""
    if name not in INPUT_BRANCHERS:
        raise ValueError(f"unknown input brancher '{name}'; available: {', '.join(INPUT_BRANCHERS)}")
    return INPUT_BRANCHERS[name]()
