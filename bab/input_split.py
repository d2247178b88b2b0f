"""Input-split branch and bound: domains are sub-boxes of the property's input regions.

The problem holds one region or several (a disjunction of input regions, bounded as one batch:
:mod:`bab.region_batch`); every domain carries its ``region`` index, which selects the clause
rows ``C``/``d`` it is bounded against, and a mask of that region's clauses it has not yet
refuted. A batch of sub-boxes (of any regions) is bounded in one CROWN pass; a clause is
refuted on a box when one of its rows has a lower bound above its ``d`` (with a float slack,
and a float64 re-check of rows refuted by a hair). A box with no open clause is dropped. A
region is proven once none of its boxes is left, the property once no box is left.

With ℓ2/ℓ1 balls (``Region.ball``) a region's root is its ball's box hull; every sub-box is
bounded over ``ball ∩ sub-box`` (the bounders get the ball in ``Domains``), sub-boxes that miss
the ball are dropped as empty, attack points are projected onto the ball, and leaves go to the
exact solver with the ball.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bab.bounding import Bounder, Domains, check_input_set
from bab.bounding.balls import misses_ball, project
from bab.bounding.polyhedra.relax import UNARY
from bab.input_leaves import MIN_WIDTH, NEVER, ExactLeaves, unstable_counts
from bab.region_batch import ball_rows, stack_regions
from bab.result import Counterexample
from bab.store import TensorBatch
from onnx_models import layers as L
from onnx_models.network import Network
from vnnlib.spec import Region

HAIR = 1e-3  # rows refuted with less relative slack than this are re-bounded in float64


class InputSplitProblem(ExactLeaves):
    """The SplitProblem for one region or a batch of regions (see :mod:`bab.engine`).

    ``region``/``region_index``: one :class:`Region` and its index in the property, or
    sequences of them (replayed counterexamples name the property's region index).
    """

    def __init__(self, network: Network, region: Region | Sequence[Region], region_index: int | Sequence[int],
                 bounder: list[Bounder], exact_bounder: Bounder, replay: Any, margin: float = 1e-6,
                 check_time: Any = lambda: None, chunk: int = 4096) -> None:
        self.net = network
        self.regions = [region] if isinstance(region, Region) else list(region)
        self.indices = [region_index] if isinstance(region_index, int) else list(region_index)
        self.index = self.indices[0]
        self.bounders = bounder  # a cascade: each later bounder sees only the survivors
        self.exact = exact_bounder
        self.replay = replay
        self.margin = margin
        self.check_time = check_time
        self.chunk = chunk
        self.dtype, self.device = network.dtype, _device(network)
        stack = stack_regions(self.regions, network.n_outputs, dtype=self.dtype, device=self.device)
        self.C, self.d, self.R = stack.C, stack.d, stack.R  # [Rg, M, n_out], [Rg, M], [Rg, M, K]
        self.valid, self.clause_ok, self.rowless_region = stack.valid, stack.clause_ok, stack.rowless
        self.region_lower, self.region_upper = stack.lower, stack.upper
        self.root_width = (stack.upper - stack.lower).clamp(min=MIN_WIDTH)  # [Rg, n_in]
        self.ball = stack.ball  # {} for boxes (and ℓ∞ balls: boxes too)
        self.rowless = bool(stack.rowless.all())
        self.late_bounders: list[Bounder] = []  # join the cascade once late_after boxes were bounded
        self.late_after = 0
        self.bounded = 0
        nodes = network.nodes  # ReLU inputs, counted per box for the exact solver (ReLU-only nets)
        plain = not any(type(n.layer) in UNARY for n in nodes)
        self.relu_inputs = [n.inputs[0] for n in nodes if plain and isinstance(n.layer, L.ReLU) and n.inputs[0] >= 0]
        self._exact_time, self._t0 = 0.0, time.monotonic()
        self.remaining: Any = lambda: float("inf")
        self.stats: dict[str, int] = {"bound_calls": 0, "regions": len(self.regions)}
        self.pgd_boxes = 32  # best points per batch given a short PGD attack (0: none)
        self.samples = 4  # points tried per box and batch: the centre plus random ones
        self._gen = torch.Generator().manual_seed(self.index)

    def check_sets(self) -> None:
        """:class:`BounderRefusal` when a bounder of the cascade cannot handle the regions' set."""
        for bounder in self.bounders + self.late_bounders + [self.exact]:
            check_input_set(bounder, self.ball.get("p", "box"))

    def _ball_kw(self, region: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
        """``Domains`` keyword arguments of the balls of domains in ``region`` (``[N]``)."""
        return ball_rows(self.ball, region, dtype)

    def _into_ball(self, x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Points projected onto their region's ball and clipped to its box (so still in the
        ball: the centre lies in the box); unchanged without a ball."""
        if not self.ball:
            return x
        lo, hi = self.region_lower[region].to(x), self.region_upper[region].to(x)
        return project(x, self.ball["center"][region], self.ball["eps"][region], self.ball["p"], lo, hi)

    @property
    def n_clauses(self) -> int:
        """Number of clauses of the largest region."""
        return int(self.R.shape[2])

    def roots(self) -> TensorBatch:
        """One box per region, every clause of the region open."""
        n = len(self.regions)
        return TensorBatch({
            "lower": self.region_lower.clone(), "upper": self.region_upper.clone(),
            "open": self.clause_ok.clone(),
            "depth": torch.zeros(n, dtype=torch.long, device=self.device),
            "region": torch.arange(n, dtype=torch.long, device=self.device),
            "tried": torch.full((n,), NEVER, dtype=torch.long, device=self.device),
        })

    def rows_of(self, batch: TensorBatch) -> torch.Tensor:
        """``[N, M, n_out]``: the clause rows of every domain's region."""
        return self.C[batch["region"]]

    def root_width_of(self, batch: TensorBatch) -> torch.Tensor:
        """``[N, n_in]``: the widths of every domain's region box."""
        return self.root_width[batch["region"]]

    def _row_bounds(self, bounder: Bounder, lower: torch.Tensor, upper: torch.Tensor,
                    region: torch.Tensor, unstable: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Lower bounds of ``C y - d`` per row of each box's region, ``[N, M]`` (-inf on padded
        rows; in chunks, checking the deadline). ``unstable``, when given, collects each box's
        count of unstable ReLUs (:func:`~bab.input_leaves.unstable_counts`), chunk by chunk."""
        net, parts = self._net_for(lower.dtype), []
        for s in range(0, lower.shape[0], self.chunk):
            self.check_time()
            lo, hi, reg = lower[s:s + self.chunk], upper[s:s + self.chunk], region[s:s + self.chunk]
            dom = Domains(lo, hi, self.C[reg].to(lower.dtype), **self._ball_kw(reg, lo.dtype))
            out = bounder.bound(net, dom)
            parts.append(out.lower.detach())
            if unstable is not None:
                unstable.append(unstable_counts(out.intermediate, self.relu_inputs, lo.shape[0], self.device))
            self.stats["bound_calls"] += 1
        lb = torch.cat(parts) if parts else lower.new_zeros(0, self.C.shape[1])
        gap = lb - torch.where(self.valid, self.d, torch.zeros_like(self.d))[region].to(lb.dtype)
        return torch.where(self.valid[region], gap, torch.full_like(gap, -float("inf")))

    def _net_for(self, dtype: torch.dtype) -> Network:
        if dtype == self.dtype:
            return self.net
        if not hasattr(self, "_net64"):
            import copy

            self._net64 = copy.deepcopy(self.net).to(dtype)
        return self._net64

    def _refuted(self, gap: torch.Tensor, batch: TensorBatch) -> torch.Tensor:
        """Rows refuted with the float slack; near-ties re-checked in float64."""
        region = batch["region"]
        d = torch.where(self.valid, self.d, torch.zeros_like(self.d))[region].abs()
        scale = gap.abs().nan_to_num(posinf=0.0) + d + 1.0
        slack = self.margin + (1e-5 if self.dtype == torch.float32 else 1e-12) * scale
        refuted = gap > slack
        hair = refuted & (gap <= HAIR * scale)
        if self.dtype != torch.float64 and bool(hair.any()):
            idx = hair.any(1).nonzero().flatten()
            gap64 = self._row_bounds(self.exact, batch["lower"][idx].double(), batch["upper"][idx].double(),
                                     region[idx])
            exact = gap64 > self.margin + 1e-12 * (gap64.abs().nan_to_num(posinf=0.0) + d[idx].double() + 1.0)
            refuted[idx] = exact.to(refuted.device)
        return refuted

    def bound(self, batch: TensorBatch) -> TensorBatch:
        """Refute clauses per box; keep boxes with an open clause, prioritised by their gap
        (``priority``) and hinted by their centre's clause margin (``hint``)."""
        if not len(batch):
            return batch
        if self.ball:  # sub-boxes that miss the ball hold no point of the input set
            reg = batch["region"]
            miss = misses_ball(self.ball["center"][reg], self.ball["eps"][reg], batch["lower"], batch["upper"],
                               self.ball["p"])
            self.stats["ball_dropped"] = self.stats.get("ball_dropped", 0) + int(miss.sum())
            batch = batch.select(~miss)
        rowless = self.rowless_region[batch["region"]]
        if bool(rowless.any()):  # a clause without rows holds everywhere: the attack decides
            kept = batch.select(rowless)
            kept["priority"] = torch.full((len(kept),), -float("inf"), device=self.device)
            kept["hint"] = kept["priority"].clone()
            kept["unstable"] = torch.full((len(kept),), NEVER, dtype=torch.long, device=self.device)
            return TensorBatch.cat([kept, self._bound_rows(batch.select(~rowless))])
        return self._bound_rows(batch)

    def _bound_rows(self, batch: TensorBatch) -> TensorBatch:
        """:meth:`bound` for boxes of regions whose clauses all have rows."""
        if not len(batch):
            return batch
        late = self.late_bounders if self.bounded >= self.late_after else []
        self.bounded += len(batch)
        cascade = self.bounders + late
        counted = self.leaf_solver is not None and self.exact_unstable > 0 and bool(self.relu_inputs)
        for k, bounder in enumerate(cascade):
            if k:
                batch = batch.select(batch["open"].any(1))
            # every survivor is bounded by the last bounder: only its unstable counts are kept
            counts: list[torch.Tensor] | None = [] if counted and k == len(cascade) - 1 else None
            gap = self._row_bounds(bounder, batch["lower"], batch["upper"], batch["region"], counts)
            refuted = self._refuted(gap, batch)
            clause_refuted = torch.einsum("nm,nmk->nk", refuted.float(), self.R[batch["region"]].float()) > 0
            batch["open"] = batch["open"] & ~clause_refuted
        batch["unstable"] = torch.cat(counts) if counts else torch.full((len(batch),), NEVER, dtype=torch.long,
                                                                         device=self.device)
        batch["priority"] = self._open_clause_min(self._clause_gaps(gap, batch["region"]), batch["open"])
        batch = batch.select(batch["open"].any(1))
        with torch.no_grad():  # the store pops a share of boxes by how close their centre comes
            batch["hint"] = self._clause_margin((batch["lower"] + batch["upper"]) / 2, batch["open"],
                                                batch["region"]) if len(batch) else batch["priority"]
        return batch

    def attack(self, batch: TensorBatch) -> Counterexample | None:
        """Check the centre and ``samples - 1`` random points of every box against its open
        clauses, then run a short PGD from the ``pgd_boxes`` best points (each kept in its box);
        replay the best few points."""
        if not len(batch):
            return None
        lo, hi, open_, reg = batch["lower"], batch["upper"], batch["open"], batch["region"]
        if self.samples > 1:
            k = self.samples
            lo, hi, open_, reg = lo.repeat(k, 1), hi.repeat(k, 1), open_.repeat(k, 1), reg.repeat(k)
            u = torch.rand(lo.shape, generator=self._gen, dtype=lo.dtype).to(lo.device)
            u[:len(batch)] = 0.5  # the centres
            x = lo + u * (hi - lo)
        else:
            x = (lo + hi) / 2
        x = self._into_ball(x, reg)
        with torch.no_grad():
            best = self._clause_margin(x, open_, reg)
        found = self._replay_best(x, best, reg)
        if found is not None or self.pgd_boxes <= 0 or self.rowless:
            return found
        top = torch.argsort(best)[:self.pgd_boxes]
        x = self._pgd(x[top], lo[top], hi[top], open_[top], reg[top])
        with torch.no_grad():
            return self._replay_best(x, self._clause_margin(x, open_[top], reg[top]), reg[top])

    def _clause_margin(self, x: torch.Tensor, open_: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """``[N]``: the smallest margin ``max_row(C y - d)`` over each point's open clauses (a
        clause without rows: -inf, it always holds)."""
        y = self.net.forward(x)
        d = torch.where(self.valid, self.d, torch.zeros_like(self.d))[region]
        gap = torch.einsum("nmo,no->nm", self.C[region], y) - d
        gap = torch.where(self.valid[region], gap, torch.full_like(gap, -float("inf")))
        return self._open_clause_min(self._clause_gaps(gap, region), open_)

    def _clause_gaps(self, gap: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Row values ``[N, M]`` -> per-clause ``[N, K]`` (the max over the clause's rows)."""
        R = self.R[region]
        masked = torch.where(R, gap[:, :, None], torch.full_like(gap[:, :, None], -float("inf")))
        return masked.amax(1)

    @staticmethod
    def _open_clause_min(clause_gap: torch.Tensor, open_: torch.Tensor) -> torch.Tensor:
        """``[N]``: the smallest value over each box's open clauses (+inf when none is open)."""
        return torch.where(open_, clause_gap, torch.full_like(clause_gap, float("inf"))).amin(1)

    def _pgd(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor,
             region: torch.Tensor, steps: int = 12) -> torch.Tensor:
        """Sign-gradient descent on the clause margin, each point kept in its own box."""
        step = 0.25 * (hi - lo)
        for it in range(steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                grad, = torch.autograd.grad(self._clause_margin(x, open_, region).sum(), x)
            with torch.no_grad():
                x = self._into_ball(torch.minimum(torch.maximum(x - step * grad.nan_to_num().sign(), lo), hi), region)
            if it % 4 == 3:
                step = step / 2
        return x.detach()

    def _replay_best(self, x: torch.Tensor, best: torch.Tensor, region: torch.Tensor) -> Counterexample | None:
        """Replay (onnxruntime) the up to four points with the smallest non-positive margins."""
        best = best.detach()
        for i in torch.argsort(best)[:4].tolist():
            if best[i] > 0:
                break
            cex = self.replay(x[i].detach().double().cpu().numpy(), self.indices[int(region[i])])
            if cex is not None:
                return cex
        return None

    def split(self, batch: TensorBatch, brancher: Any) -> TensorBatch:
        """Halve every box along the dimension the brancher picks."""
        dim = brancher.choose(self, batch)
        n = len(batch)
        rows = torch.arange(n, device=self.device)
        lo, hi = batch["lower"], batch["upper"]
        mid = (lo[rows, dim] + hi[rows, dim]) / 2
        left_hi, right_lo = hi.clone(), lo.clone()
        left_hi[rows, dim] = mid
        right_lo[rows, dim] = mid
        return TensorBatch({
            "lower": torch.cat([lo, right_lo]), "upper": torch.cat([left_hi, hi]),
            "open": batch["open"].repeat(2, 1), "depth": (batch["depth"] + 1).repeat(2),
            "region": batch["region"].repeat(2), "tried": batch["tried"].repeat(2),
        })

    def open_rows(self, batch: TensorBatch) -> torch.Tensor:
        """``[N, M]`` mask of rows that belong to a still-open clause of the domain's region."""
        return torch.einsum("nk,nmk->nm", batch["open"].float(), self.R[batch["region"]].float()) > 0


def _device(network: Network) -> torch.device:
    for node in network.nodes:
        for t in node.layer.tensors().values():
            return t.device
    return torch.device("cpu")
