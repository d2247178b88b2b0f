"""alpha-CROWN: CROWN with the ReLU lower slopes optimised by projected gradient ascent.

Every unstable ReLU neuron gets one slope per spec row and domain, ``[N, M, *shape]``, keyed
``("final", relu_idx)``. Slopes start from CROWN's adaptive choice (or a warm-start state),
Adam maximises the sum of the lower bounds, and each step is projected onto ``[0, 1]``. Any
slope in ``[0, 1]`` gives a sound bound, so the elementwise best lower bound over the iterates
is returned; iteration 0 is plain CROWN, hence ``alpha-crown >= crown``.

With ``optimize_intermediate=True`` the slopes used inside the intermediate-bound passes are
optimised too (keys ``(node_idx, relu_idx)``, one slope per intermediate row), through the
gradient of the final bound; each iterate's intermediate bounds are intersected with CROWN's.
That re-runs every intermediate pass per iteration, so it is off by default (turn it on for
small networks). With a ``time_limit`` it is also skipped when ``iterations`` such steps,
each estimated at ``STEP_COST`` times the measured first (no-gradient) sweep, would not fit in
``intermediate_share`` of the limit (then only the final slopes are optimised, which re-runs
no intermediate pass); ``last_optimized_intermediate`` records the choice. Sigmoid/Tanh tangent points are optimised the same way (one pair of points per
neuron, row and domain, ``[N, rows, 2, *shape]``, see :mod:`bab.bounding.polyhedra.sshape`);
MaxPool relaxations stay fixed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bab.bounding.base import Bounds, Domains
from bab.bounding.polyhedra.crown import Crown, Sweep, exact_matmul, prepare
from bab.bounding.polyhedra.sshape import default_t
from onnx_models.network import Network

STEP_COST = 3.0  # one differentiable step with intermediate slopes / one no-gradient sweep


@dataclass
class AlphaState:
    """Optimised slopes of a batch, reusable as a warm start.

    ``alphas[(start, relu)]``: ``[N, rows, *shape]`` with ``start`` ``"final"`` or a node
    index; ``sels[node]``: the intermediate neurons those rows refer to. ``select(index)``
    picks (and repeats) domains, e.g. ``state.select(torch.tensor([0, 0, 1, 1]))`` for the
    two children of each of two parents. Entries whose shape does not match the new batch
    are ignored (those slopes restart from CROWN's). ``floor``: sound intervals (for example
    MILP-refined ones, :mod:`encoders.refine`) that every pass intersects its boxes with.
    """

    alphas: dict[Any, torch.Tensor] = field(default_factory=dict)
    sels: dict[int, torch.Tensor] = field(default_factory=dict)
    floor: dict[int, Any] | None = None  # {node: (lo, hi)} known sound intervals, [N, *shape]

    def select(self, index: torch.Tensor) -> "AlphaState":
        """The state of domains ``index`` (rows of the batch, repeats allowed)."""
        floor = None if self.floor is None else {
            k: (lo[index.to(lo.device)], hi[index.to(hi.device)]) for k, (lo, hi) in self.floor.items()}
        return AlphaState({k: v[index.to(v.device)] for k, v in self.alphas.items()}, dict(self.sels), floor)


class AlphaCrown(Crown):
    """alpha-CROWN bounder.

    Options (besides :class:`~bab.bounding.polyhedra.crown.Crown`'s): ``iterations`` (Adam steps),
    ``lr``, ``patience`` (stop after this many steps without improving the summed bound by more
    than ``tol``), ``time_limit`` (seconds, ``None``: none), ``optimize_intermediate`` (and
    ``intermediate_share``: only when affordable within that share of ``time_limit``).
    The upper bound returned is CROWN's (only lower bounds are optimised).
    """

    def __init__(self, iterations: int = 30, lr: float = 0.1, patience: int = 8,
                 time_limit: float | None = None, optimize_intermediate: bool = False,
                 tol: float = 1e-6, intermediate_share: float = float("inf"), **kw: Any) -> None:
        kw.setdefault("name", "alpha-crown")
        super().__init__(policy="crown", **kw)
        self.iterations, self.lr, self.patience = iterations, lr, patience
        self.time_limit, self.optimize_intermediate, self.tol = time_limit, optimize_intermediate, tol
        self.intermediate_share = intermediate_share
        self.last_optimized_intermediate = False

    def affordable(self, sweep_seconds: float) -> bool:
        """Whether ``iterations`` steps with intermediate slopes (each ``STEP_COST`` sweeps of
        ``sweep_seconds``) fit in ``intermediate_share`` of the time limit."""
        if not self.optimize_intermediate or self.time_limit is None:
            return self.optimize_intermediate
        return self.iterations * STEP_COST * sweep_seconds <= self.intermediate_share * self.time_limit

    def _init_alphas(self, base: Sweep, M: int, state: AlphaState | None,
                     intermediate: bool) -> dict[Any, torch.Tensor]:
        """Slopes for the final spec (and intermediate passes), from ``state`` or CROWN."""
        plan, N = base.plan, base.domains.size
        keys = [("final", len(base.network.nodes) - 1, M)]
        if intermediate and self.opts.intermediate == "crown":
            keys += [(s, s, 2 * sel.numel()) for s, sel in base.sels.items() if sel.numel()]
        alphas: dict[Any, torch.Tensor] = {}
        for key, start, rows in keys:
            for r in plan.relus_before[start]:
                data = base.relu(r)
                if not bool(data.unstable.any()):
                    continue
                init = data.lw.unsqueeze(1).expand(N, rows, *data.lw.shape[1:])
                old = None if state is None else state.alphas.get((key, r))
                same_sel = key == "final" or (state is not None and _same(state.sels.get(key), base.sels[key]))
                if old is not None and same_sel and old.shape == init.shape:
                    init = old.to(init)
                alphas[(key, r)] = init.detach().clone().clamp(0.0, 1.0).requires_grad_(True)
            for r in plan.shaped_before.get(start, ()):
                alphas.update(_shaped_init(base, key, r, rows, state))
        return alphas

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Optimised lower bounds (and CROWN upper bounds) of ``C f(x)``; state: the slopes."""
        self.check(network)
        net, dom = prepare(network, domains, self.dtype, self.device)
        with exact_matmul(dom.lower.device):
            with torch.no_grad():
                t0 = time.monotonic()
                base = self.sweep(net, dom, state.floor if isinstance(state, AlphaState) else None)
                self.last_optimized_intermediate = self.affordable(time.monotonic() - t0)
                C2 = torch.cat([dom.C, -dom.C], 1) if self.opts.upper else dom.C
                out = base.final(C2)
                M = dom.C.shape[1]
                lower, upper = out[:, :M], (-out[:, M:] if self.opts.upper else None)
                ilo, ihi = base.ibp_final(dom.C)
                if self.opts.final_ibp:
                    lower = torch.maximum(lower, ilo)
                    upper = None if upper is None else torch.minimum(upper, ihi)
            alphas = self._init_alphas(base, M, state if isinstance(state, AlphaState) else None,
                                       self.last_optimized_intermediate)
            best, boxes, saved = self._optimise(base, alphas, lower, ilo)
        return Bounds(lower=best, upper=upper, intermediate=dict(enumerate(boxes)),
                      state=AlphaState(saved, dict(base.sels)))

    def _iterate(self, base: Sweep, alphas: dict[Any, torch.Tensor]) -> tuple[torch.Tensor, Sweep]:
        """One differentiable evaluation of the final lower bound under ``alphas``."""
        if any(k[0] != "final" for k in alphas):
            sw = Sweep(base.network, base.plan, base.domains, base.rules, base.policy, base.opts,
                       alphas=alphas, sels=dict(base.sels), floor=base.boxes).run()
        else:
            base.alphas = alphas
            sw = base
        return sw.final(base.domains.C, "final"), sw

    def _optimise(self, base: Sweep, alphas: dict[Any, torch.Tensor], lower: torch.Tensor,
                  ilo: torch.Tensor) -> tuple[torch.Tensor, list, dict[Any, torch.Tensor]]:
        """Adam on the slopes; returns the best bounds, intermediate boxes and best slopes."""
        best = lower.clone()
        boxes = [(lo.detach(), hi.detach()) for lo, hi in base.boxes]
        saved = {k: v.detach().clone() for k, v in alphas.items()}
        if not alphas or self.iterations <= 0:
            return best, boxes, saved
        opt = AscentAdam(list(alphas.values()), lr=self.lr)
        t0, stale, total = time.monotonic(), 0, float(best.sum())
        with torch.enable_grad():
            for _ in range(self.iterations):
                value, sw = self._iterate(base, alphas)
                cur = value.detach()
                if self.opts.final_ibp:
                    cur = torch.maximum(cur, ilo)
                improved = cur > best
                best = torch.where(improved, cur, best)
                self._save(saved, alphas, improved)
                if sw is not base:
                    boxes = [(torch.maximum(a, lo.detach()), torch.minimum(b, hi.detach()))
                             for (a, b), (lo, hi) in zip(boxes, sw.boxes)]
                opt.step(value.sum())
                with torch.no_grad():
                    for p in alphas.values():
                        p.clamp_(0.0, 1.0)
                new_total = float(best.sum())
                stale = 0 if new_total > total + self.tol * (1 + abs(total)) else stale + 1
                total = new_total
                if stale >= self.patience or (self.time_limit is not None
                                              and time.monotonic() - t0 > self.time_limit):
                    break
        base.alphas = {}
        return best.detach(), boxes, saved

    @staticmethod
    def _save(saved: dict[Any, torch.Tensor], alphas: dict[Any, torch.Tensor],
              improved: torch.Tensor) -> None:
        """Keep each row's (final) or each domain's (intermediate) slopes of its best iterate."""
        for key, p in alphas.items():
            if key[0] == "final":
                mask = improved
            else:
                mask = improved.any(1, keepdim=True).expand(p.shape[0], p.shape[1])
            mask = mask.reshape(*mask.shape, *([1] * (p.dim() - 2)))
            saved[key] = torch.where(mask, p.detach(), saved[key])


class AscentAdam:
    """Adam steps that maximise (the update of ``torch.optim.Adam(maximize=True)``, per-tensor
    step counts), written out: ``torch.optim``'s first use imports ``torch._dynamo``, about two
    CPU seconds per verifier process."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = [0] * len(params)

    def step(self, value: torch.Tensor) -> None:
        """One ascent step on the gradient of the scalar ``value`` (parameters outside its
        graph are left alone)."""
        if not value.requires_grad:
            return
        b1, b2 = self.betas
        grads = torch.autograd.grad(value, self.params, allow_unused=True)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(self.params, grads)):
                if g is None:
                    continue
                self.t[i] += 1
                t, m, v = self.t[i], self.m[i], self.v[i]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(self.eps)
                p.addcdiv_(m, denom, value=self.lr / (1 - b1 ** t))


def _shaped_init(base: Sweep, key: Any, r: int, rows: int, state: AlphaState | None) -> dict[Any, torch.Tensor]:
    """Tangent points ``[N, rows, 2, *shape]`` of the Sigmoid/Tanh node ``r`` for pass ``key``
    (the warm start when its shape matches, else the default lines' points)."""
    data = base.shaped(r)
    if not data.optimisable:
        return {}
    t0 = default_t(data)
    init = t0.unsqueeze(1).expand(t0.shape[0], rows, *t0.shape[1:])
    old = None if state is None else state.alphas.get((key, r))
    same_sel = key == "final" or (state is not None and _same(state.sels.get(key), base.sels[key]))
    if old is not None and same_sel and old.shape == init.shape:
        init = old.to(init)
    return {(key, r): init.detach().clone().clamp(0.0, 1.0).requires_grad_(True)}


def _same(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and a.shape == b.shape and bool((a.to(b.device) == b).all())
