"""Counterexample search: random sampling, then PGD on each clause's margin.

The margin of a clause ``C y <= d`` is ``max_i (C y - d)_i``; it is ``<= 0`` exactly on the
clause's unsafe set. Candidates are returned ordered by margin; nothing found here is a
``sat`` until :mod:`bab.replay` confirms it on the original ONNX file. A region with an ℓ2/ℓ1
ball (``Region.ball``) is sampled from the ball (uniformly) and PGD projects onto the ball,
then clips to the region's box.
"""

from __future__ import annotations

import time

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from bab.bounding.balls import project, sample
from bab.config import FalsifyConfig
from onnx_models.network import Network
from vnnlib.spec import Region

PAD = 1e30  # padding rows contribute -PAD: never the max, and a rowless clause always holds


@dataclass(frozen=True)
class Candidate:
    """A point whose network output (torch) satisfies a clause of ``region`` (margin <= 0)."""

    x: np.ndarray
    region: int
    clause: int
    margin: float


def clause_tensors(region: Region, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a region's clauses into ``C`` [K, m, n_out] and ``d`` [K, m], padding short ones."""
    m = max(1, max(c.n_rows for c in region.clauses))
    n_out = region.clauses[0].C.shape[1]
    C = np.zeros((len(region.clauses), m, n_out))
    d = np.full((len(region.clauses), m), PAD)
    for k, clause in enumerate(region.clauses):
        C[k, : clause.n_rows] = clause.C
        d[k, : clause.n_rows] = clause.d
    return (torch.as_tensor(C, dtype=dtype, device=device),
            torch.as_tensor(d, dtype=dtype, device=device))


def _ball(region: Region | None):
    """The region's ℓ2/ℓ1 ball, or ``None`` (a box, or an ℓ∞ ball: a box too)."""
    ball = getattr(region, "ball", None)
    return ball if ball is not None and ball.p != "inf" else None


def margins(y: torch.Tensor, C: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Margins ``[B, K]`` of outputs ``y`` [B, n_out] for every clause."""
    return (torch.einsum("kmo,bo->bkm", C, y) - d).amax(dim=-1)


SAMPLE_BATCH = 65536  # uniform points per extra batch (low-dimensional inputs: small tensors)


class Falsifier:
    """Random sampling followed by sign-gradient PGD; yields candidates lazily."""

    def __init__(self, network: Network, cfg: FalsifyConfig, seed: int = 0,
                 check_time: Callable[[], None] = lambda: None) -> None:
        self.net = network
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed)
        self.check_time = check_time
        self.device = next((t.device for n in network.nodes for t in n.layer.tensors().values()),
                           torch.device("cpu"))

    def _box(self, region: Region) -> tuple[torch.Tensor, torch.Tensor]:
        kw = dict(dtype=self.net.dtype, device=self.device)
        return torch.as_tensor(region.lower, **kw), torch.as_tensor(region.upper, **kw)

    def _sample(self, lo: torch.Tensor, hi: torch.Tensor, n: int, region: Region | None = None) -> torch.Tensor:
        ball = _ball(region)
        if ball is not None:
            x = sample(torch.as_tensor(ball.center, dtype=lo.dtype), ball.eps, ball.p, n, self.gen).to(lo.device)
            return torch.minimum(torch.maximum(x, lo), hi)  # still in the ball: the centre is in the box
        u = torch.rand(n, lo.numel(), generator=self.gen, dtype=lo.dtype).to(lo.device)
        return lo + u * (hi - lo)

    def _project(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, region: Region) -> torch.Tensor:
        """``x`` clipped to the box, or projected onto the ball and then clipped to the box
        (the clip keeps it in the ball: the ball's centre lies in the box)."""
        ball = _ball(region)
        if ball is None:
            return torch.minimum(torch.maximum(x, lo), hi)
        c = torch.as_tensor(ball.center, dtype=x.dtype, device=x.device)[None]
        return project(x, c, torch.tensor([ball.eps], dtype=x.dtype), ball.p, lo, hi)

    def _centre(self, lo: torch.Tensor, hi: torch.Tensor, region: Region) -> torch.Tensor:
        ball = _ball(region)
        if ball is None:
            return (lo + hi) / 2
        return torch.as_tensor(ball.center, dtype=lo.dtype, device=lo.device)

    def _eval(self, x: torch.Tensor, C: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = []
            for chunk in torch.split(x, self.cfg.max_batch):
                out.append(margins(self.net.forward(chunk), C, d))
            return torch.cat(out)

    def _found(self, x: torch.Tensor, marg: torch.Tensor, region: int) -> list[Candidate]:
        """Candidates among ``x`` whose best clause margin is <= 0, best first."""
        best, clause = marg.min(dim=1)
        hits = torch.nonzero(best <= 0).flatten()
        hits = hits[torch.argsort(best[hits])][:16]
        return [Candidate(x[i].detach().double().cpu().numpy(), region, int(clause[i]), float(best[i]))
                for i in hits.tolist()]

    def random_phase(self, idx: int, region: Region) -> tuple[list[Candidate], torch.Tensor]:
        """Centre plus uniform samples; returns hits and the samples ordered by margin."""
        lo, hi = self._box(region)
        C, d = clause_tensors(region, self.net.dtype, self.device)
        x = torch.cat([self._centre(lo, hi, region)[None], self._sample(lo, hi, self.cfg.random_samples, region)])
        marg = self._eval(x, C, d)
        order = torch.argsort(marg.min(dim=1).values)
        return self._found(x, marg, idx), x[order]

    def sample_more(self, regions: tuple[Region, ...], seconds: float) -> list[Candidate]:
        """Batches of ``SAMPLE_BATCH`` uniform inputs, each region in turn, for up to
        ``seconds`` or until one hits (for low-dimensional inputs, where a small violating
        region without a useful gradient can still be hit)."""
        end = time.monotonic() + seconds
        boxes = [(*self._box(r), *clause_tensors(r, self.net.dtype, self.device)) for r in regions]
        while time.monotonic() < end:
            for idx, (region, (lo, hi, C, d)) in enumerate(zip(regions, boxes)):
                self.check_time()
                x = self._sample(lo, hi, SAMPLE_BATCH, region)
                hits = self._found(x, self._eval(x, C, d), idx)
                if hits:
                    return hits
        return []

    def pgd_phase(self, idx: int, region: Region, seeds: torch.Tensor) -> list[Candidate]:
        """PGD on every clause's margin from the given start points plus random ones."""
        lo, hi = self._box(region)
        C, d = clause_tensors(region, self.net.dtype, self.device)
        k, r = C.shape[0], self.cfg.pgd_restarts
        starts = torch.cat([seeds[: max(1, r // 2)], self._sample(lo, hi, r, region)])[:r]
        x = starts.repeat(k, 1)  # row j*r + i: clause j, start i
        which = torch.arange(k, device=self.device).repeat_interleave(starts.shape[0])
        width = (hi - lo).clamp(min=0)
        step = self.cfg.pgd_step_size * width
        for it in range(self.cfg.pgd_steps):
            self.check_time()
            x = x.detach().requires_grad_(True)
            y = self.net.forward(x)
            own = (torch.einsum("bmo,bo->bm", C[which], y) - d[which]).amax(dim=-1)
            grad, = torch.autograd.grad(own.sum(), x)
            with torch.no_grad():
                x = self._project(x - step * grad.sign(), lo, hi, region)
            if (it + 1) % 20 == 0:
                step = step / 2
        x = x.detach()
        return self._found(x, self._eval(x, C, d), idx)

    def pgd_batched(self, items: list[tuple[int, Region, torch.Tensor]]) -> list[Candidate]:
        """:meth:`pgd_phase` for several box regions in one loop: a row per (region, clause,
        start) with its own box, step and clause rows (padded); the same start points and
        iterates as one :meth:`pgd_phase` per region, in one batch."""
        r, rows = self.cfg.pgd_restarts, []
        for idx, region, seeds in items:
            lo, hi = self._box(region)
            C, d = clause_tensors(region, self.net.dtype, self.device)
            starts = torch.cat([seeds[: max(1, r // 2)], self._sample(lo, hi, r, region)])[:r]
            which = torch.arange(C.shape[0], device=self.device).repeat_interleave(starts.shape[0])
            rows.append((starts.repeat(C.shape[0], 1), lo, hi, C, d, which))
        m = max(C.shape[1] for *_, C, _, _ in rows)
        pad = lambda C, d: (torch.nn.functional.pad(C, (0, 0, 0, m - C.shape[1])),
                            torch.nn.functional.pad(d, (0, m - d.shape[1]), value=PAD))
        x = torch.cat([x0 for x0, *_ in rows])
        lo = torch.cat([lo.expand(len(x0), -1) for x0, lo, *_ in rows])
        hi = torch.cat([hi.expand(len(x0), -1) for x0, _, hi, *_ in rows])
        padded = [pad(C[w], d[w]) for *_, C, d, w in rows]
        C_row, d_row = torch.cat([c for c, _ in padded]), torch.cat([d for _, d in padded])
        step = self.cfg.pgd_step_size * (hi - lo).clamp(min=0)
        for it in range(self.cfg.pgd_steps):
            self.check_time()
            x = x.detach().requires_grad_(True)
            own = (torch.einsum("bmo,bo->bm", C_row, self.net.forward(x)) - d_row).amax(dim=-1)
            grad, = torch.autograd.grad(own.sum(), x)
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
            if (it + 1) % 20 == 0:
                step = step / 2
        out, start = [], 0
        for (idx, _, _), (x0, _, _, C, d, _) in zip(items, rows):
            part = x[start:start + len(x0)].detach()
            start += len(x0)
            out += self._found(part, self._eval(part, C, d), idx)
        return out

    def run(self, regions: tuple[Region, ...], batch: bool = False) -> Iterator[Candidate]:
        """Yield candidates: random phase over all regions, then PGD per region (``batch``:
        one PGD loop over all box regions, up to ``max_batch`` rows at a time)."""
        seeds = []
        for idx, region in enumerate(regions):
            self.check_time()
            hits, ordered = self.random_phase(idx, region)
            yield from hits
            seeds.append(ordered)
        if self.cfg.pgd_steps <= 0 or self.cfg.pgd_restarts <= 0:
            return
        group: list[tuple[int, Region, torch.Tensor]] = []
        rows = 0
        for idx, region in enumerate(regions):
            if not batch or _ball(region) is not None:
                yield from self.pgd_phase(idx, region, seeds[idx])
                continue
            n = len(region.clauses) * self.cfg.pgd_restarts
            if group and rows + n > self.cfg.max_batch:
                yield from self.pgd_batched(group)
                group, rows = [], 0
            group.append((idx, region, seeds[idx]))
            rows += n
        if group:
            yield from self.pgd_batched(group)
