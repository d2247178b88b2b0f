"""Input-split branch and bound on one region, batched in NumPy.

Open boxes wait on a stack; each step pops up to ``batch`` of them, bounds every clause row
of all of them in one CROWN pass (:func:`bab.fastpath.crown.crown_bounds`), drops the boxes
whose every clause has a refuted row (bound above ``d`` by the margin plus the float64 error
allowance), proposes the centre and the bound-minimising corners of the rest as
counterexamples, and splits each open box in half along the input that carries the most
bound (``|coefficient| x width``, summed over the open clauses' best rows).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bab.fastpath.crown import REL_SLACK, crown_bounds
from bab.fastpath.model import FcNet

MIN_WIDTH = 1e-9  # boxes narrower than this in every input are not split (the torch path decides)
MAX_OPEN = 1_000_000  # open-box cap (memory)
MEMORY_FLOATS = 3e7  # float64 entries of one batch's largest coefficient tensor
ASPECT = 64.0  # an input this many times wider (relative to the region) than the scored pick is split first
STALL_AFTER, STALL_WINDOW = 2.0, 1.0  # seconds: after STALL_AFTER, each window must halve the open volume


class Verdict(enum.Enum):
    """How a region search ended."""

    UNSAT = "unsat"
    SAT = "sat"
    UNDECIDED = "undecided"


@dataclass
class SearchResult:
    """The outcome, the confirmed point of a ``sat`` and the work done."""

    verdict: Verdict
    x: np.ndarray | None = None
    clause: int = -1
    boxes: int = 0
    reason: str = ""


@dataclass(frozen=True)
class ClauseRows:
    """All clause rows of a region stacked: ``C`` [R, n_out], ``d`` [R], ``owner`` [R]."""

    C: np.ndarray
    d: np.ndarray
    owner: np.ndarray
    n_clauses: int

    @classmethod
    def of(cls, clauses: list[tuple[np.ndarray, np.ndarray]], n_out: int) -> "ClauseRows":
        """Stack ``(C, d)`` pairs."""
        C = np.concatenate([c for c, _ in clauses]) if clauses else np.zeros((0, n_out))
        d = np.concatenate([dd for _, dd in clauses]) if clauses else np.zeros(0)
        owner = np.concatenate([np.full(c.shape[0], k) for k, (c, _) in enumerate(clauses)]) \
            if clauses else np.zeros(0, int)
        return cls(C, d, owner.astype(int), len(clauses))


class RegionSearch:
    """The input-split search of one box against a disjunction of clauses."""

    def __init__(self, net: FcNet, rows: ClauseRows, margin: float,
                 try_point: Callable[[np.ndarray, int], bool], batch: int, split: bool) -> None:
        self.net, self.rows, self.margin = net, rows, margin
        self.try_point = try_point  # replays a candidate; True when confirmed
        widest = max(w.shape[0] for w in net.weights)
        self.batch = max(1, min(batch, int(MEMORY_FLOATS // (2 * widest * widest))))
        self.split = split
        self.boxes = 0
        self.closed_volume = 0.0  # share of the region's volume proven so far

    def closed(self, lo: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per box and clause: refuted? Plus the bound gaps [N, R] and input coefficients."""
        b = crown_bounds(self.net, self.rows.C, lo, up)
        gap = b.lower - self.rows.d
        slack = self.margin + REL_SLACK * (b.magnitude + np.abs(self.rows.d))
        refuted = np.isfinite(gap) & (gap > slack)
        clause_ok = np.stack([refuted[:, self.rows.owner == k].any(axis=1)
                              for k in range(self.rows.n_clauses)], axis=1)
        return clause_ok, gap, b.coef

    def _stalled(self) -> bool:
        """After ``STALL_AFTER`` seconds: whether the last ``STALL_WINDOW`` failed to halve the
        open share of the region (the torch path, with its stronger bounds, takes over)."""
        now, open_ = time.monotonic(), 1.0 - self.closed_volume
        t_mark, open_mark = self._mark
        if now - t_mark < STALL_WINDOW:
            return False
        self._mark = (now, open_)
        return now - self._t0 >= STALL_AFTER and open_ > open_mark / 2

    def _best_rows(self, gap: np.ndarray, open_clause: np.ndarray) -> np.ndarray:
        """[N, K]: index of the row with the largest gap in each clause."""
        best = np.zeros(open_clause.shape, int)
        for k in range(self.rows.n_clauses):
            idx = np.flatnonzero(self.rows.owner == k)
            best[:, k] = idx[np.argmax(gap[:, idx], axis=1)]
        return best

    def _candidates(self, lo, up, coef, best, open_clause) -> SearchResult | None:
        """Replay the centre and the minimising corner of each open clause's best row when the
        network's own margin there is non-positive."""
        from bab.fastpath.attack import clause_margins

        boxes, clauses = np.nonzero(open_clause)
        rows = best[boxes, clauses]
        corner = np.where(coef[boxes, rows] >= 0, lo[boxes], up[boxes])
        centre = (lo[boxes] + up[boxes]) / 2
        for pts in (corner, centre):
            for k in np.unique(clauses):
                sel = clauses == k
                idx = np.flatnonzero(self.rows.owner == k)
                m = clause_margins(self.net, pts[sel], self.rows.C[idx], self.rows.d[idx])
                for j in np.argsort(m)[:4]:
                    if m[j] <= 0 and self.try_point(pts[sel][j], int(k)):
                        return SearchResult(Verdict.SAT, x=pts[sel][j], clause=int(k))
        return None

    def _split(self, lo, up, coef, best, open_clause) -> tuple[np.ndarray, np.ndarray]:
        """Halve each box along its highest-scoring input."""
        width = up - lo
        score = np.zeros_like(lo)
        for k in range(self.rows.n_clauses):
            rows = best[:, k]
            score += open_clause[:, k, None] * np.abs(coef[np.arange(lo.shape[0]), rows]) * width
        score = np.where(width > MIN_WIDTH, score + 1e-12 * width, -1.0)
        dim = np.argmax(score, axis=1)
        n = np.arange(lo.shape[0])
        rel = width / self.root_width  # a near-zero final coefficient must not starve an input
        wide = np.argmax(rel, axis=1)
        dim = np.where(rel[n, wide] > ASPECT * rel[n, dim], wide, dim)
        mid = (lo[n, dim] + up[n, dim]) / 2
        lo2, up2 = lo.copy(), up.copy()
        up[n, dim] = mid
        lo2[n, dim] = mid
        keep = score[n, dim] >= 0
        return np.concatenate([lo[keep], lo2[keep]]), np.concatenate([up[keep], up2[keep]])

    def run(self, lo: np.ndarray, up: np.ndarray, deadline: float) -> SearchResult:
        """Search from the box ``[lo, up]`` until decided, split out, or ``deadline``."""
        if self.rows.n_clauses == 0:
            return SearchResult(Verdict.UNSAT)
        if any(not np.any(self.rows.owner == k) for k in range(self.rows.n_clauses)):
            return SearchResult(Verdict.UNDECIDED, reason="a clause without rows")
        stack_lo, stack_up = lo[None].copy(), up[None].copy()
        width = np.where(up > lo, up - lo, 1.0)
        self.root_width = width
        self._t0 = time.monotonic()
        self._mark = (self._t0, 1.0)
        while stack_lo.shape[0]:
            if time.monotonic() > deadline:
                return SearchResult(Verdict.UNDECIDED, boxes=self.boxes, reason="budget spent")
            take = min(self.batch, stack_lo.shape[0])
            blo, bup = stack_lo[-take:], stack_up[-take:]
            stack_lo, stack_up = stack_lo[:-take], stack_up[:-take]
            self.boxes += take
            clause_ok, gap, coef = self.closed(blo, bup)
            open_box = ~clause_ok.all(axis=1)
            self.closed_volume += float(np.prod((bup - blo)[~open_box] / width, axis=1).sum())
            if self._stalled():
                return SearchResult(Verdict.UNDECIDED, boxes=self.boxes, reason="stalled (open volume not halving)")
            if not open_box.any():
                continue
            blo, bup, coef, gap = blo[open_box], bup[open_box], coef[open_box], gap[open_box]
            open_clause = ~clause_ok[open_box]
            best = self._best_rows(gap, open_clause)
            found = self._candidates(blo, bup, coef, best, open_clause)
            if found is not None:
                found.boxes = self.boxes
                return found
            if not self.split:
                return SearchResult(Verdict.UNDECIDED, boxes=self.boxes, reason="root bound open")
            clo, cup = self._split(blo, bup, coef, best, open_clause)
            if clo.shape[0] < 2 * blo.shape[0]:
                return SearchResult(Verdict.UNDECIDED, boxes=self.boxes, reason="box too narrow to split")
            stack_lo, stack_up = np.concatenate([stack_lo, clo]), np.concatenate([stack_up, cup])
            if stack_lo.shape[0] > MAX_OPEN:
                return SearchResult(Verdict.UNDECIDED, boxes=self.boxes, reason="open-box cap")
        return SearchResult(Verdict.UNSAT, boxes=self.boxes)
