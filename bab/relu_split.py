"""ReLU-split branch and bound: domains fix the phases of unstable ReLU neurons.

Each clause of the region is its own BaB root; all roots share one alpha-CROWN pass over the
region box (every clause row at once, optionally with optimised intermediate slopes), whose
intermediate boxes and per-row slopes seed the roots. Several regions (``bab.batch_regions``)
are one problem: a root per (region, clause), one root pass over all region boxes. A domain
(one row of a TensorBatch) records its root (clause), fixed phases (``ph<relu>``, int8 -1/0/+1), the output boxes of the
nodes whose intervals matter (``lo<node>``/``hi<node>``), the warm start inherited from its
parent (``al<relu>`` slopes and ``be<relu>`` multipliers, ``[M, *shape]``), its depth, the
ReLU it was split on last (``split``), its number of free unstable neurons and, once bounded,
its ``priority`` = the clause's best row margin ``max_r (lb_r - d_r)`` (the clause is refuted
when that exceeds the float slack; lower = more urgent).

Bounding is beta-CROWN (:mod:`bab.bounding.polyhedra.beta`) over the whole batch of children in one
pass; infeasible children (contradictory phases) and refuted ones are dropped. Rows refuted
by a hair are re-checked in float64 with slightly widened boxes. The minimising input corner
of every bound is tried as a counterexample (and a few PGD steps start from the most
promising ones); a candidate only counts once it replays with onnxruntime. With an ℓ2/ℓ1
ball (``Region.ball``) beta-CROWN concretises over ``ball ∩ box`` (the dual-norm bound), attack
points are projected onto the ball and leaves go to the exact solver with the ball.

Other nonlinearities (Sigmoid, Tanh, every kind in ``relax.UNARY``) are split too: a domain is
then an interval of each split neuron's pre-activation. Splitting neuron ``i`` of node ``r``
clips the stored box of its pre-activation ``lo<j>``/``hi<j>`` at :func:`split_point`, marks the
clipped end in ``ph<r>`` (bit 1: lower, 2: upper) and beta-CROWN adds multipliers ``be<r>``
``[K, M, 2, *shape]`` for those constraints; ``al<r>`` holds Sigmoid/Tanh tangent points
``[K, M, 2, *shape]``. ReLU-only networks take exactly the former path (docs/relu_split.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bab.bounding.balls import project
from bab.bounding.base import Domains
from bab.bounding.polyhedra.beta import BetaCrown, BetaState
from bab.bounding.polyhedra.crown import plan_for
from bab.bounding.polyhedra.relax import UNARY
from bab.bounding.polyhedra.sshape import SSHAPED, default_t, remap_t, sshape_data
from bab.region_batch import ball_rows, stack_regions
from bab.relu_leaves import LeafDecisions
from bab.result import Counterexample
from bab.store import TensorBatch
from onnx_models import layers as L
from onnx_models.network import Network
from vnnlib.spec import Region

HAIR = 1e-3  # refutations with less relative slack than this are re-checked in float64
MIN_WIDTH = 1e-4  # non-ReLU neurons with a narrower pre-activation interval are not split


@dataclass
class ReluSplitOptions:
    """Settings of :class:`ReluSplitProblem` (filled from ``bab`` and ``beta`` config sections)."""

    margin: float = 1e-6
    root_iterations: int = 20
    root_optimize_intermediate: bool = True
    root_alpha_elements: int = 20_000_000
    root_intermediate_share: float = 1.0  # ... only when its steps fit in this share of root_time_limit
    root_time_limit: float | None = None  # seconds for the root's slope optimisation
    refine: str = "after-split"  # which intermediate bounds children recompute: after-split|all|none
    refine_depth: int = 8  # ... only for children at most this deep (deeper ones reuse the parent's)
    refine_share: float = 0.3  # ... and only while refined batches took at most this share of the run
    attack: bool = True
    attack_top: int = 8
    attack_steps: int = 10
    leaf_time_limit: float = 10.0
    milp_unstable: int = 3  # domains with at most this many free unstable ReLUs try MILP once
    milp_time_limit: float = 2.0  # ... for at most this long each
    milp_share: float = 0.2  # ... while such tries took at most this share of the run
    lp_share: float = 0.5  # non-ReLU nets: each domain tries the LP once while such tries took this share
    eval_chunk: int = 4096


class ReluSplitProblem(LeafDecisions):
    """The SplitProblem for one region, or several searched as one batch (see :mod:`bab.engine`):
    ``region``/``region_index`` may be sequences; a root per (region, clause), ``root_region``
    maps roots to regions (their boxes and balls), replays name the property's region index."""

    def __init__(self, network: Network, region: Region | Sequence[Region], region_index: int | Sequence[int],
                 bounder: BetaCrown,
                 replay: Callable[[np.ndarray, int], Counterexample | None],
                 options: ReluSplitOptions | None = None, check_time: Callable[[], None] = lambda: None,
                 leaf_solver: Any = None) -> None:
        self.regions = [region] if isinstance(region, Region) else list(region)
        self.indices = [region_index] if isinstance(region_index, int) else list(region_index)
        self.net, self.region, self.index = network, self.regions[0], self.indices[0]
        self.bounder, self.replay = bounder, replay
        self.opts = options or ReluSplitOptions()
        self.check_time = check_time
        self.leaf_solver = leaf_solver
        self.remaining: Callable[[], float] = lambda: float("inf")  # seconds left (leaf solver limits)
        p = next(t for n in network.nodes for t in n.layer.tensors().values())
        self.dtype, self.device = p.dtype, p.device
        kw = dict(dtype=self.dtype, device=self.device)
        stack = stack_regions(self.regions, network.n_outputs, **kw)
        self.lower, self.upper = stack.lower, stack.upper  # [Rg, n_in]
        self.ball = stack.ball  # {} for boxes (and ℓ∞ balls: boxes too), else one per region
        self._clause_tensors(kw)
        self.plan = plan_for(network)
        nodes = network.nodes
        self.relus = [i for i, n in enumerate(nodes) if isinstance(n.layer, L.ReLU) and n.inputs[0] >= 0]
        self.nonrelu = [i for i, n in enumerate(nodes) if type(n.layer) in UNARY and n.inputs[0] >= 0]
        self.tangents = [i for i in self.nonrelu if isinstance(nodes[i].layer, SSHAPED)]
        self.pre = {r: nodes[r].inputs[0] for r in self.relus + self.nonrelu}
        self.stats: dict[str, Any] = {"infeasible": 0, "hair_rechecks": 0, "attack_candidates": 0,
                                      "bound_calls": 0, "adam_steps": 0,
                                      "lp_leaves": 0, "milp_leaves": 0, "lp_pruned": 0}
        self.global_lb = -float("inf")
        self._cex: Counterexample | None = None
        self._exact: BetaCrown | None = None
        self._roots: TensorBatch | None = None
        self._times = {"refined": 0.0, "plain": 0.0, "milp": 0.0, "lp": 0.0}
        self._t0 = time.monotonic()
        self.branchable: list[int] = []  # ReLUs with an unstable neuron at the root (phases)
        self.shaped: list[int] = []  # other elementwise nonlinearities to split (interval clips)
        self.stored: list[int] = []
        self.floor: dict[int, Any] | None = None  # sound root intervals to intersect with (MILP-refined)
        self.root_intermediate: dict[int, Any] = {}  # the root pass's boxes, [Rg, *shape]

    def _clause_tensors(self, kw: dict) -> None:
        """Per clause of every region: rows ``C`` ``[K, M, n_out]`` and ``d`` ``[K, M]`` padded
        with ``d = +inf``; ``root_region`` ``[K]``."""
        clauses = [c for region in self.regions for c in region.clauses]
        owner = [g for g, region in enumerate(self.regions) for _ in region.clauses]
        self.root_region = torch.as_tensor(owner, dtype=torch.long, device=kw["device"])
        M = max([1] + [c.n_rows for c in clauses])
        n_out = self.net.n_outputs
        C = np.zeros((len(clauses), M, n_out))
        d = np.full((len(clauses), M), np.inf)
        for k, c in enumerate(clauses):
            C[k, :c.n_rows], d[k, :c.n_rows] = c.C, c.d
        self.C, self.d = torch.as_tensor(C, **kw), torch.as_tensor(d, **kw)
        self.valid = torch.isfinite(self.d)

    # --- roots -------------------------------------------------------------------------------

    def roots(self) -> TensorBatch:
        """One domain per clause, seeded by a shared alpha-CROWN pass over every row (cached)."""
        if self._roots is None:
            self._roots = self._make_roots()
        return self._roots

    def _make_roots(self) -> TensorBatch:
        from bab.bounding.polyhedra.alpha import AlphaCrown, AlphaState

        K, M = self.d.shape
        owner = self.valid.nonzero()  # (clause, row) of every stacked row, in order
        reg, pos = self._row_places(owner)
        C_all = torch.zeros(len(self.regions), int(pos.max()) + 1, self.C.shape[2],
                            dtype=self.dtype, device=self.device)  # each region's rows, zero-padded
        C_all[reg, pos] = self.C[self.valid]
        dom = Domains(self.lower, self.upper, C_all, **self._ball_kw(torch.arange(len(self.regions)), self.dtype))
        opt_int = self.opts.root_optimize_intermediate and self._alpha_elements() <= self.opts.root_alpha_elements
        self.check_time()
        alpha = AlphaCrown(iterations=self.opts.root_iterations, optimize_intermediate=opt_int, upper=False,
                           time_limit=self.opts.root_time_limit,
                           intermediate_share=self.opts.root_intermediate_share)
        res = alpha.bound(self.net, dom, AlphaState(floor=self.floor) if self.floor else None)
        self.stats["root_optimized_intermediate"] = alpha.last_optimized_intermediate
        self.check_time()
        boxes = res.intermediate or {}
        self.root_intermediate = boxes
        self.branchable = [r for r in self.relus if bool(_unstable(*boxes[self.pre[r]]).any())]
        self.shaped = [r for r in self.nonrelu if bool(_wide(*boxes[self.pre[r]]).any())]
        self.stored = sorted({self.pre[r] for r in self.branchable + self.shaped} | set(self.plan.crown_nodes))
        batch = TensorBatch({"root": torch.arange(K, device=self.device),
                             "depth": torch.zeros(K, dtype=torch.long, device=self.device),
                             "split": torch.full((K,), -1, dtype=torch.long, device=self.device),
                             "milp": torch.zeros(K, dtype=torch.int8, device=self.device)})
        for j in self.stored:
            lo, hi = boxes[j]
            batch[f"lo{j}"], batch[f"hi{j}"] = lo[self.root_region].clone(), hi[self.root_region].clone()
        for r in self.branchable:
            shape = tuple(self.net.nodes[r].out_shape)
            batch[f"ph{r}"] = torch.zeros(K, *shape, dtype=torch.int8, device=self.device)
            alpha = torch.zeros(K, M, *shape, dtype=self.dtype, device=self.device)
            got = res.state.alphas.get(("final", r)) if res.state is not None else None
            if got is not None:
                alpha[owner[:, 0], owner[:, 1]] = got[reg, pos].to(alpha)
            else:
                lo, hi = boxes[self.pre[r]]
                alpha[:] = (hi >= -lo).to(alpha)[self.root_region].unsqueeze(1)
            batch[f"al{r}"] = alpha
            batch[f"be{r}"] = torch.zeros(K, M, *shape, dtype=self.dtype, device=self.device)
        for r in self.shaped:
            shape = tuple(self.net.nodes[r].out_shape)
            batch[f"ph{r}"] = torch.zeros(K, *shape, dtype=torch.int8, device=self.device)
            batch[f"be{r}"] = torch.zeros(K, M, 2, *shape, dtype=self.dtype, device=self.device)
        for r in self.tangents:
            got = res.state.alphas.get(("final", r)) if res.state is not None else None
            batch[f"al{r}"] = self._root_tangents(r, boxes[self.pre[r]], got, owner, (reg, pos), M)
        batch["unstable"] = self._count_unstable(batch)
        return batch

    def _root_tangents(self, r: int, box: tuple[torch.Tensor, torch.Tensor], got: torch.Tensor | None,
                       owner: torch.Tensor, places: tuple[torch.Tensor, torch.Tensor], M: int) -> torch.Tensor:
        """Tangent points ``[K, M, 2, *shape]`` of the Sigmoid/Tanh node ``r`` per clause row:
        the root's optimised ones (row ``places`` = (region, row) in the root pass), else those
        of the default lines."""
        t = default_t(sshape_data(type(self.net.nodes[r].layer), *box)).to(self.dtype)[self.root_region]
        out = t.unsqueeze(1).expand(len(t), M, *t.shape[1:]).clone()
        if got is not None:
            out[owner[:, 0], owner[:, 1]] = got[places].to(out)
        return out

    def _row_places(self, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For every valid (clause, row) pair ``owner``: its region and its position among the
        region's stacked rows in the root pass."""
        reg = self.root_region[owner[:, 0]]
        first = torch.searchsorted(reg, torch.arange(len(self.regions), device=reg.device))
        return reg, torch.arange(len(reg), device=reg.device) - first[reg]

    def _alpha_elements(self) -> int:
        """Upper estimate of the intermediate slopes optimised at the root."""
        numel, plan = self.plan.numel, self.plan
        return sum(2 * numel[s] * (sum(numel[r] for r in plan.relus_before[s])
                                   + sum(2 * numel[r] for r in plan.shaped_before.get(s, ())))
                   for s in plan.crown_nodes)

    def bytes_per_domain(self, batch: TensorBatch) -> int:
        """Memory one stored domain takes."""
        return sum(v[:1].numel() * v.element_size() for v in batch.fields.values())

    # --- bounding ----------------------------------------------------------------------------

    def domains_of(self, batch: TensorBatch, dtype: torch.dtype | None = None) -> Domains:
        """The bounder's view of a batch: region box, clause rows and fixed phases."""
        dt = dtype or self.dtype
        root = batch["root"]
        reg = self.root_region[root]
        return Domains(self.lower[reg].to(dt), self.upper[reg].to(dt), self.C[root].to(dt),
                       {r: batch[f"ph{r}"] for r in self.split_nodes}, **self._ball_kw(reg, dt))

    def _ball_kw(self, region: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
        """``Domains`` keyword arguments of the balls of domains in ``region`` (``[N]``)."""
        return ball_rows(self.ball, region, dtype)

    def _into_ball(self, x: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
        """Points (of roots ``root``) projected onto their region's ball, then clipped to its box
        (still in the ball)."""
        if not self.ball:
            return x
        reg = self.root_region[root]
        return project(x, self.ball["center"][reg], self.ball["eps"][reg], self.ball["p"], self.lower[reg],
                       self.upper[reg])

    def state_of(self, batch: TensorBatch, refine: set[int] | None = None, widen: float = 0.0) -> BetaState:
        """Warm start (slopes, multipliers) and floor boxes of a batch."""
        boxes = {}
        for j in self.stored:
            lo, hi = batch[f"lo{j}"], batch[f"hi{j}"]
            if widen:
                pad = widen * (1.0 + lo.abs() + hi.abs())
                lo, hi = lo.double() - pad, hi.double() + pad
            boxes[j] = (lo, hi)
        return BetaState({r: batch[f"al{r}"] for r in self.branchable + self.tangents},
                         {r: batch[f"be{r}"] for r in self.split_nodes}, boxes, refine, self.d[batch["root"]])

    def _refine(self, batch: TensorBatch) -> set[int] | None:
        """CROWN-refined nodes: those above the earliest split of the batch (per the option)."""
        mode = self.opts.refine
        if mode == "all":
            return None
        if mode == "none" or not len(batch) or int(batch["split"].max()) < 0:
            return set()
        first = int(batch["split"][batch["split"] >= 0].min())
        return {i for i in self.plan.crown_nodes if i > first}

    def bound(self, batch: TensorBatch) -> TensorBatch:
        """beta-CROWN on the batch (shallow children with refined intermediate bounds, the
        rest reusing their parents'); drop infeasible and refuted domains, set priorities."""
        if not len(batch):
            return batch
        shallow = batch["depth"] <= self.opts.refine_depth
        if self._times["refined"] > self.opts.refine_share * (time.monotonic() - self._t0):
            shallow = torch.zeros_like(shallow)
        if self.opts.refine == "none" or bool(shallow.all()) or not bool(shallow.any()):
            return self._bound(batch, bool(shallow.all()))
        return TensorBatch.cat([self._bound(batch.select(shallow), True), self._bound(batch.select(~shallow), False)])

    def _bound(self, batch: TensorBatch, refine: bool) -> TensorBatch:
        t0 = time.monotonic()
        try:
            return self._bound_now(batch, refine)
        finally:
            self._times["refined" if refine else "plain"] += time.monotonic() - t0

    def _bound_now(self, batch: TensorBatch, refine: bool) -> TensorBatch:
        self.check_time()
        nodes = self._refine(batch) if refine else set()
        res = self.bounder.run(self.net, self.domains_of(batch), self.state_of(batch, nodes), primal=self.opts.attack)
        for j in self.stored:
            batch[f"lo{j}"], batch[f"hi{j}"] = res.boxes[j][0].to(self.dtype), res.boxes[j][1].to(self.dtype)
        for r in self.branchable + self.tangents:
            if r in res.alphas:
                batch[f"al{r}"] = res.alphas[r].detach().to(self.dtype)
            if r in res.betas:
                batch[f"be{r}"] = res.betas[r].detach().to(self.dtype)
        for r in self.shaped:
            if r in res.betas:
                batch[f"be{r}"] = res.betas[r].detach().to(self.dtype)
        self.stats["bound_calls"] += 1
        self.stats["adam_steps"] += res.iterations
        d = self.d[batch["root"]]
        gap = res.lower.to(self.dtype) - d
        self.stats["infeasible"] += int(res.infeasible.sum())
        refuted = self._refuted(gap, d, batch, res.infeasible)
        gap = torch.where(self.valid[batch["root"]], gap, torch.full_like(gap, -float("inf")))
        batch["priority"] = gap.amax(1)
        batch["unstable"] = self._count_unstable(batch)
        open_ = ~(refuted | res.infeasible)
        if self.opts.attack and res.primal is not None and self._cex is None:
            self._try_primal(res.primal[open_], batch.select(open_))
        return batch.select(open_)

    def _refuted(self, gap: torch.Tensor, d: torch.Tensor, batch: TensorBatch,
                 infeasible: torch.Tensor) -> torch.Tensor:
        """Per domain: some row's bound clears the float slack (near-ties re-checked in float64)."""
        fin = torch.isfinite(gap) & torch.isfinite(d)
        g = torch.where(fin, gap, torch.full_like(gap, -float("inf")))
        scale = g.abs().nan_to_num(posinf=0.0, neginf=0.0) + d.abs().nan_to_num(posinf=0.0) + 1.0
        rel = 1e-5 if self.dtype == torch.float32 else 1e-12
        rows = g > self.opts.margin + rel * scale
        hair = rows & (g <= HAIR * scale) & ~infeasible[:, None]
        if self.dtype != torch.float64 and bool(hair.any()):
            idx = hair.any(1).nonzero().flatten()
            self.stats["hair_rechecks"] += int(idx.numel())
            exact = self._exact_gap(batch.select(idx))
            ok = exact > self.opts.margin + 1e-12 * (exact.abs() + d[idx].double().abs() + 1.0)
            rows[idx] = torch.where(hair[idx], ok.to(rows.device), rows[idx])
        return rows.any(1) & ~infeasible

    def _exact_gap(self, batch: TensorBatch) -> torch.Tensor:
        """Row margins re-evaluated in float64 with the saved parameters and widened boxes."""
        if self._exact is None:
            self._exact = BetaCrown(iterations=0, dtype=torch.float64, device=self.device)
        state = self.state_of(batch, widen=1e-5)
        lower, _ = self._exact.evaluate(self.net, self.domains_of(batch, torch.float64), state)
        return lower - self.d[batch["root"]].double()

    def _count_unstable(self, batch: TensorBatch) -> torch.Tensor:
        """Free neurons whose pre-activation interval straddles zero, per domain."""
        total = torch.zeros(len(batch), dtype=torch.long, device=self.device)
        for r in self.branchable:
            j = self.pre[r]
            u = _unstable(batch[f"lo{j}"], batch[f"hi{j}"]) & (batch[f"ph{r}"] == 0)
            total += u.flatten(1).sum(1)
        for r in self.shaped:
            j = self.pre[r]
            total += _wide(batch[f"lo{j}"], batch[f"hi{j}"]).flatten(1).sum(1)
        return total

    # --- attacks -----------------------------------------------------------------------------

    def clause_value(self, x: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
        """``max_r (C_r f(x) - d_r)`` over the valid rows of each candidate's clause (<= 0: violated)."""
        y = self.net.forward(x)
        val = torch.einsum("nmo,no->nm", self.C[root], y) - self.d[root]
        return torch.where(self.valid[root], val, torch.full_like(val, -float("inf"))).amax(1)

    def _try_primal(self, primal: torch.Tensor, batch: TensorBatch) -> None:
        """Check the bounds' minimising corners, then PGD from the most promising few."""
        if not len(batch):
            return
        n, M, n_in = primal.shape
        root = batch["root"].repeat_interleave(M)
        x = self._into_ball(primal.reshape(n * M, n_in).to(self.dtype), root)
        with torch.no_grad():
            val = self.clause_value(x, root)
        order = torch.argsort(val)[: self.opts.attack_top]
        x, root, val = x[order], root[order], val[order]
        if self.opts.attack_steps > 0 and bool((val > 0).all()):
            x = self._pgd(x, root)
            with torch.no_grad():
                val = self.clause_value(x, root)
        for i in torch.argsort(val)[:4].tolist():
            if val[i] > 0:
                break
            self.stats["attack_candidates"] += 1
            cex = self.replay(x[i].double().cpu().numpy(), self.indices[int(self.root_region[root[i]])])
            if cex is not None:
                self._cex = cex
                return

    def _pgd(self, x: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
        """A few signed-gradient steps minimising the clause value inside the region box."""
        lo, hi = self.lower[self.root_region[root]], self.upper[self.root_region[root]]
        step = 0.1 * (hi - lo)
        x = x.detach().clone()
        with torch.enable_grad():
            for t in range(self.opts.attack_steps):
                x.requires_grad_(True)
                val = self.clause_value(x, root)
                g, = torch.autograd.grad(val.sum(), x)
                x = torch.minimum(torch.maximum(x.detach() - step * (0.7 ** t) * g.sign(), lo), hi)
                x = self._into_ball(x, root)
        return x.detach()

    def attack(self, batch: TensorBatch) -> Counterexample | None:
        """The counterexample found while bounding, if any (also records the global bound)."""
        if len(batch) and "priority" in batch.fields:
            self.global_lb = float(batch["priority"].min())
        return self._cex

    # --- splitting ---------------------------------------------------------------------------

    @property
    def split_nodes(self) -> list[int]:
        """Every node the brancher may split: the branchable ReLUs, then the other nonlinearities."""
        return self.branchable + self.shaped

    def locate(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global neuron indices -> (position in ``split_nodes``, neuron index inside that node)."""
        sizes = torch.tensor([math.prod(self.net.nodes[r].out_shape) for r in self.split_nodes], device=flat.device)
        ends = sizes.cumsum(0)
        which = torch.searchsorted(ends, flat, right=True)
        return which, flat - (ends - sizes)[which]

    def with_splits(self, batch: TensorBatch, flat: torch.Tensor, sign: int) -> TensorBatch:
        """Copies of ``batch`` with neuron ``flat[i]`` of domain ``i`` fixed to ``sign``."""
        out = TensorBatch(dict(batch.fields))
        which, local = self.locate(flat)
        rows = torch.arange(len(batch), device=self.device)
        split = batch["split"].clone()
        for w, r in enumerate(self.branchable):
            sel = which == w
            if not bool(sel.any()):
                continue
            ph = batch[f"ph{r}"].clone()
            ph.view(len(batch), -1)[rows[sel], local[sel]] = sign
            out[f"ph{r}"] = ph
            split[sel] = r
        for w, r in enumerate(self.shaped, len(self.branchable)):
            sel = which == w
            if bool(sel.any()):
                self._clip(out, r, rows[sel], local[sel], sign)
                split[sel] = r
        out["split"] = split
        return out

    def _clip(self, out: TensorBatch, r: int, rows: torch.Tensor, local: torch.Tensor, sign: int) -> None:
        """Clip neuron ``local`` of node ``r``'s pre-activation box in domains ``rows`` to the part
        above (``sign`` +1) or below (-1) its split point. The box is a sound interval of the
        parent, so the clip is a constraint of the child: the two children cover the parent, and
        every bound of the child (intermediate and final) is computed from the clipped box."""
        j = self.pre[r]
        n = len(out)
        lo, hi = out[f"lo{j}"].clone(), out[f"hi{j}"].clone()
        l, u = lo.view(n, -1)[rows, local], hi.view(n, -1)[rows, local]
        s = split_point(type(self.net.nodes[r].layer), l, u)
        if sign > 0:
            lo.view(n, -1)[rows, local] = s
        else:
            hi.view(n, -1)[rows, local] = s
        out[f"lo{j}"], out[f"hi{j}"] = lo, hi
        ph = out[f"ph{r}"].clone()  # bit 1: the lower end is a split constraint, bit 2: the upper
        ph.view(n, -1)[rows, local] |= 1 if sign > 0 else 2
        out[f"ph{r}"] = ph
        if r in self.tangents:  # keep the parent's tangent points where the child allows them
            kind, al = type(self.net.nodes[r].layer), out[f"al{r}"].clone()
            flat = al.view(n, al.shape[1], 2, -1)
            old = flat[rows, :, :, local]  # [k, M, 2]
            cl, cu = lo.view(n, -1)[rows, local], hi.view(n, -1)[rows, local]
            flat[rows, :, :, local] = remap_t(kind, l[:, None], u[:, None], cl[:, None], cu[:, None],
                                              old[..., None])[..., 0].to(al)
            out[f"al{r}"] = al

    def split(self, batch: TensorBatch, brancher: Any) -> TensorBatch:
        """Two children per domain (active, inactive) on the neuron the brancher picks."""
        if not len(batch):
            return batch
        flat = brancher.choose(self, batch)
        kids = TensorBatch.cat([self.with_splits(batch, flat, 1), self.with_splits(batch, flat, -1)])
        kids["depth"] = kids["depth"] + 1
        if self.shaped and "milp" in kids.fields:
            kids["milp"] = torch.zeros_like(kids["milp"])  # narrower boxes: worth another LP try
        return kids

    # --- data for branchers ------------------------------------------------------------------

    def branch_data(self, batch: TensorBatch) -> list[dict[str, torch.Tensor]]:
        """Per branchable ReLU: input bounds, free-unstable mask, coefficient ``lA`` and bias."""
        _, sw = self.bounder.evaluate(self.net, self.domains_of(batch), self.state_of(batch), capture=True)
        valid = self.valid[batch["root"]].to(self.dtype)
        out = []
        for r in self.branchable:
            j, n = self.pre[r], len(batch)
            lo, hi = batch[f"lo{j}"].reshape(n, -1), batch[f"hi{j}"].reshape(n, -1)
            parts = sw.captured.get(r)
            if parts:
                A = torch.cat(parts, 1).reshape(n, valid.shape[1], -1)
                lA = (A * valid[:, :, None]).sum(1)
            else:
                lA = torch.zeros_like(lo)
            free = (batch[f"ph{r}"].reshape(n, -1) == 0) & _unstable(lo, hi)
            out.append({"relu": r, "lo": lo, "hi": hi, "unstable": free, "lA": lA, "bias": self._bias(j)})
        for r in self.shaped:
            j, n = self.pre[r], len(batch)
            lo, hi = batch[f"lo{j}"].reshape(n, -1), batch[f"hi{j}"].reshape(n, -1)
            parts = sw.captured.get(r)
            lA = (torch.cat(parts, 1).reshape(n, valid.shape[1], -1) * valid[:, :, None]).sum(1) if parts \
                else torch.zeros_like(lo)
            out.append({"node": r, "layer": self.net.nodes[r].layer, "lo": lo, "hi": hi,
                        "unstable": _wide(lo, hi), "lA": lA, "bias": None})
        return out

    def _bias(self, j: int) -> torch.Tensor | None:
        """The bias of node ``j`` per output neuron (Linear/Conv2d), else ``None``."""
        layer = self.net.nodes[j].layer
        if isinstance(layer, L.Linear) and layer.bias is not None:
            return layer.bias.reshape(-1)
        if isinstance(layer, L.Conv2d) and layer.bias is not None:
            shape = self.net.nodes[j].out_shape
            return layer.bias.reshape(-1, 1, 1).expand(*shape).reshape(-1)
        return None

    def try_splits(self, batch: TensorBatch, cand: torch.Tensor) -> torch.Tensor:
        """Children margins ``[N, K, 2]`` of splitting each domain on each candidate (one pass,
        the parents' parameters and boxes, no optimisation)."""
        n, K = cand.shape
        rep = batch.select(torch.arange(n, device=self.device).repeat(K))
        flat = cand.T.reshape(-1)
        kids = TensorBatch.cat([self.with_splits(rep, flat, 1), self.with_splits(rep, flat, -1)])
        gaps = []
        for s in range(0, len(kids), self.opts.eval_chunk):
            part = kids.select(torch.arange(s, min(len(kids), s + self.opts.eval_chunk), device=self.device))
            lower, _ = self.bounder.evaluate(self.net, self.domains_of(part), self.state_of(part))
            g = lower.to(self.dtype) - self.d[part["root"]]
            g = torch.where(self.valid[part["root"]], g, torch.full_like(g, -float("inf")))
            gaps.append(g.amax(1))
        return torch.cat(gaps).reshape(2, K, n).permute(2, 1, 0)


def _unstable(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return (lo < 0) & (hi > 0)


def _wide(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Neurons of a non-ReLU nonlinearity still worth splitting (interval wider than ``MIN_WIDTH``)."""
    return (hi - lo) > MIN_WIDTH


def split_point(kind: type, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Where a non-ReLU neuron with pre-activation interval ``[l, u]`` is split: the inflection
    point 0 of an s-shaped function when it lies inside, else the midpoint."""
    mid = (l + u) / 2
    if kind in SSHAPED:
        return torch.where((l < 0) & (u > 0), torch.zeros_like(mid), mid)
    return mid
