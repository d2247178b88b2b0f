"""beta-CROWN: alpha-CROWN plus Lagrange multipliers for the split constraints of ReLU BaB.

A domain of ReLU-split BaB fixes some neurons' phases: ``s_j z_j(x) >= 0`` with ``s_j = +1``
(active) or ``-1`` (inactive) for the pre-activation ``z_j``. For any ``beta >= 0``,
``g(x) >= g(x) - sum_j beta_j s_j z_j(x)`` on the domain, so the CROWN lower bound of the
right-hand side (with the fixed neurons replaced by the identity / zero map) is a sound lower
bound of ``g``; the multipliers enter the backward pass as ``-beta s`` added to the coefficient
of ``z_j`` (one multiplier per split neuron, domain and spec row). ``beta`` and the ReLU lower
slopes ``alpha`` are optimised jointly by projected Adam (``beta >= 0``, ``alpha in [0, 1]``),
warm-started from the parent's values; the best iterate per row is kept. Sigmoid/Tanh tangent
points (:mod:`bab.bounding.polyhedra.sshape`) are optimised with the slopes (same projection
onto ``[0, 1]``, keyed by the node like the ReLU slopes).

Intermediate bounds: the domain brings its parent's boxes (``BetaState.boxes``, intersected
with every recomputed interval, so children never lose tightness); the nodes listed in
``BetaState.refine`` are re-tightened by CROWN passes that honour the fixed phases (the
layers above the newest split), the others are only intersected with interval bounds.
Domains whose boxes become empty (a phase contradicting sound bounds) are reported
``infeasible`` and get a ``+inf`` lower bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bab.bounding.polyhedra.backward import _activation, backward, concretize
from bab.bounding.base import Bounds, Domains
from bab.bounding.polyhedra.crown import Crown, Interval, Sweep, exact_matmul, plan_for, prepare
from bab.bounding.interval.ibp import RULES as IBP_RULES
from bab.bounding.interval.ibp import apply_phase
from bab.bounding.polyhedra.relax import UNARY
from bab.bounding.polyhedra.sshape import SSHAPED, default_t
from onnx_models import layers as L
from onnx_models.network import Network

STOP_MARGIN = 2e-3  # a row this far (relative) above its threshold needs no more optimisation

@dataclass
class BetaState:
    """Warm start and inputs of one beta-CROWN pass over ``N`` domains.

    ``alphas``/``betas``: ``{relu node: [N, M, *shape]}`` (missing: CROWN slopes / zeros).
    ``boxes``: ``{node: (lo, hi)}`` known sound output intervals (the parent's) to intersect
    with. ``refine``: nodes to re-tighten with CROWN (``None``: all that need it).
    ``stop``: optional ``[N, M]`` thresholds with ``-inf`` for rows to ignore: optimisation
    stops once every domain has a row whose bound exceeds its threshold.
    """

    alphas: dict[int, torch.Tensor] = field(default_factory=dict)
    betas: dict[int, torch.Tensor] = field(default_factory=dict)
    boxes: dict[int, Interval] | None = None
    refine: set[int] | None = None
    stop: torch.Tensor | None = None


@dataclass
class BetaResult:
    """Output of :meth:`BetaCrown.run` (``N`` domains, ``M`` rows)."""

    lower: torch.Tensor  # [N, M]; +inf for infeasible domains
    alphas: dict[int, torch.Tensor]  # best slopes per row
    betas: dict[int, torch.Tensor]  # best multipliers per row
    boxes: dict[int, Interval]  # every node's output interval
    infeasible: torch.Tensor  # [N] bool
    primal: torch.Tensor | None = None  # [N, M, n_in]: minimiser of each row's linear bound
    iterations: int = 0


def _split_terms(ctx: Any, idx: int, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """In the final pass of a :class:`BetaSweep`: record ``A`` when the sweep captures (the
    brancher's ``lA``) and return the node's multipliers (rows selected) and phases, if any."""
    sw = ctx.sweep
    if ctx.key != "final" or not isinstance(sw, BetaSweep):
        return None
    if sw.capture:
        sw.captured.setdefault(idx, []).append(A.detach())
    beta, phase = sw.betas.get(idx), sw.domains.phases.get(idx)
    if beta is None or phase is None:
        return None
    return (beta if ctx.rows is None else beta[:, ctx.rows]), phase


def _relu_beta(ctx: Any, idx: int, layer: L.Layer, A: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
    """The ReLU backward rule plus the split multipliers ``-beta * s`` on the pre-activation."""
    outs, bias = _activation(ctx, idx, layer, A)
    terms = _split_terms(ctx, idx, A)
    if terms is not None:
        beta, phase = terms
        outs = [outs[0] - beta * phase.unsqueeze(1).to(beta.dtype)]
    return outs, bias


def _capturing(rule: Callable[..., Any]) -> Callable[..., Any]:
    """``rule`` of a non-ReLU elementwise nonlinearity plus split multipliers on its clipped
    pre-activation: a domain whose phase mask has bit 1 (2) constrains ``z >= lo`` (``z <= hi``)
    with ``[lo, hi]`` its input box, so for ``beta >= 0`` the bound of
    ``g - beta_lo (z - lo) - beta_hi (hi - z)`` is a lower bound of ``g`` on the domain. The
    final pass also records the coefficient on the node's output when the sweep captures (the
    brancher's ``lA``)."""
    def wrapped(ctx: Any, idx: int, layer: L.Layer, A: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
        outs, bias = rule(ctx, idx, layer, A)
        terms = _split_terms(ctx, idx, A)
        if terms is None:
            return outs, bias
        beta, mask = terms
        lo, hi = ctx.box(idx)
        b_lo = beta[:, :, 0] * ((mask & 1) != 0).unsqueeze(1).to(beta.dtype)
        b_hi = beta[:, :, 1] * ((mask & 2) != 0).unsqueeze(1).to(beta.dtype)
        const = (b_lo * lo.unsqueeze(1) - b_hi * hi.unsqueeze(1)).flatten(2).sum(-1)
        return [outs[0] - b_lo + b_hi], const if bias is None else bias + const
    return wrapped


@dataclass
class BetaSweep(Sweep):
    """A :class:`Sweep` with multipliers, a dict of floor boxes and selective refinement."""

    betas: dict[int, torch.Tensor] = field(default_factory=dict)
    floor_map: dict[int, Interval] | None = None
    refine: set[int] | None = None
    trust_floor: bool = False
    check: Callable[[], None] | None = None
    capture: bool = False
    captured: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    primal: list[torch.Tensor] = field(default_factory=list)

    def run(self) -> BetaSweep:
        """Every node's interval: IBP, intersected with the floor, CROWN where refined."""
        for idx, node in enumerate(self.network.nodes):
            if self.check is not None and idx in self.plan.crown_nodes:
                self.check()
            fl = None if self.floor_map is None else self.floor_map.get(idx)
            if fl is not None and self.trust_floor:
                self.boxes.append(fl)
                continue
            args = [self.input_box(idx, k) for k in range(len(node.inputs))]
            box = IBP_RULES.rule(node.layer)(node.layer, *args)
            if fl is not None:
                box = (torch.maximum(box[0], fl[0]), torch.minimum(box[1], fl[1]))
            if (self.tightens(idx) and self.opts.intermediate == "crown"
                    and (self.refine is None or idx in self.refine)):
                box = self._tighten(idx, box)
            self.boxes.append(box)
        return self

    def lower(self, start: int, A0: torch.Tensor, key: Any = None, rows: torch.Tensor | None = None,
              bias0: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`Sweep.lower`; with ``capture`` also records the minimising input corner."""
        a_in, bias = backward(self.network, self.rules, _ctx(self, key, rows), start, A0, bias0)
        if self.capture and key == "final":
            lo, hi = self.domains.lower.unsqueeze(1), self.domains.upper.unsqueeze(1)
            self.primal.append(torch.where(a_in >= 0, lo, hi).detach())
        return concretize(a_in, bias, self.domains.lower, self.domains.upper, self.domains)


def _ctx(sweep: Sweep, key: Any, rows: torch.Tensor | None) -> Any:
    from bab.bounding.polyhedra.crown import _Ctx

    return _Ctx(sweep, key, rows)


def infeasible_mask(network: Network, boxes: list[Interval], phases: dict[int, torch.Tensor],
                    rel: float) -> torch.Tensor:
    """Domains with an empty interval (beyond a float slack), phases applied to ReLU inputs."""
    n = boxes[0][0].shape[0]
    bad = torch.zeros(n, dtype=torch.bool, device=boxes[0][0].device)
    for idx, node in enumerate(network.nodes):
        lo, hi = boxes[idx]
        if isinstance(node.layer, L.ReLU) and idx in phases and node.inputs[0] >= 0:
            lo, hi = apply_phase(boxes[node.inputs[0]], phases[idx])
        gap = (lo - hi).flatten(1)
        slack = 1e-6 + rel * (lo.abs() + hi.abs()).flatten(1)
        bad |= (gap > slack).any(1)
    return bad


class BetaCrown(Crown):
    """beta-CROWN bounder (see the module docstring).

    Options: ``iterations`` (Adam steps), ``lr_alpha``, ``lr_beta``, ``lr_decay`` (per step),
    ``patience`` (stop after this many steps without improving the summed bound by ``tol``
    relative), ``time_limit`` (seconds per call), plus :class:`Crown`'s. ``deadline`` (an
    attribute, default none) is called before every Adam step and CROWN-refined node; it may
    raise to abandon the pass.
    """

    deadline: Callable[[], None] | None = None

    def __init__(self, iterations: int = 20, lr_alpha: float = 0.1, lr_beta: float = 0.05,
                 lr_decay: float = 0.98, patience: int = 6, tol: float = 1e-4,
                 time_limit: float | None = None, **kw: Any) -> None:
        kw.setdefault("name", "beta-crown")
        kw.setdefault("upper", False)
        super().__init__(policy="crown", **kw)
        self.iterations, self.lr_alpha, self.lr_beta, self.lr_decay = iterations, lr_alpha, lr_beta, lr_decay
        self.patience, self.tol, self.time_limit = patience, tol, time_limit
        self.rules.register(L.ReLU)(_relu_beta)
        for kind in list(UNARY):  # the brancher reads their output coefficients too
            rule = self.rules._rules.get(kind)
            if rule is not None:
                self.rules.register(kind)(_capturing(rule))

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """The Bounder protocol: optimised lower bounds; ``state`` a :class:`BetaState`."""
        res = self.run(network, domains, state if isinstance(state, BetaState) else BetaState())
        return Bounds(lower=res.lower, intermediate=res.boxes,
                      state=BetaState(res.alphas, res.betas, res.boxes))

    def _sweep(self, net: Network, dom: Domains, floor: dict[int, Interval] | None,
               refine: set[int] | None) -> BetaSweep:
        return BetaSweep(net, plan_for(net), dom, self.rules, self.policy, self.opts,
                         floor_map=floor, refine=refine, check=self.deadline).run()

    def run(self, network: Network, domains: Domains, state: BetaState,
            primal: bool = False) -> BetaResult:
        """Optimise alpha and beta on the feasible domains; report infeasible ones."""
        self.check(network)
        net, dom = prepare(network, domains, self.dtype, self.device)
        rel = 1e-5 if dom.lower.dtype == torch.float32 else 1e-12
        with exact_matmul(dom.lower.device):
            with torch.no_grad():
                sw = self._sweep(net, dom, _cast(state.boxes, dom.lower), state.refine)
                bad = infeasible_mask(net, sw.boxes, dom.phases, rel)
                boxes = list(sw.boxes)
                keep = (~bad).nonzero().flatten()
                if not keep.numel():
                    return _all_infeasible(dom, boxes, bad)
                if bool(bad.any()):
                    sw = self._subset(sw, keep)
            sub_state = _select_state(state, keep, dom.lower)
            lower, alphas, betas, its = self._optimise(sw, sub_state)
            x = self._primal(sw, alphas, betas) if primal else None
        N, M = dom.C.shape[:2]
        full = torch.full((N, M), float("inf"), dtype=lower.dtype, device=lower.device)
        full[keep] = lower
        return BetaResult(full, _scatter(alphas, keep, N), _scatter(betas, keep, N),
                          dict(enumerate(boxes)), bad, None if x is None else _scatter({0: x}, keep, N)[0], its)

    def evaluate(self, network: Network, domains: Domains, state: BetaState,
                 capture: bool = False) -> tuple[torch.Tensor, BetaSweep]:
        """One pass (no optimisation, no CROWN refinement) with the state's alpha and beta."""
        net, dom = prepare(network, domains, self.dtype, self.device)
        with torch.no_grad(), exact_matmul(dom.lower.device):
            sw = BetaSweep(net, plan_for(net), dom, self.rules, self.policy, self.opts,
                           floor_map=_cast(state.boxes, dom.lower), refine=set(), trust_floor=True,
                           capture=capture).run()
            alphas, betas = self._init(sw, state, requires_grad=False)
            sw.alphas = {("final", r): a for r, a in alphas.items()}
            sw.betas = betas
            lower = sw.final(dom.C, "final")
            if self.opts.final_ibp:
                lower = torch.maximum(lower, sw.ibp_final(dom.C)[0])
        return lower, sw

    def _init(self, sw: BetaSweep, state: BetaState,
              requires_grad: bool = True) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Slopes (warm start or CROWN's) for ReLUs with unstable neurons; betas for split ones."""
        N, M = sw.domains.C.shape[:2]
        alphas, betas = {}, {}
        for r, node in enumerate(sw.network.nodes):
            if isinstance(node.layer, SSHAPED) and r in sw.plan.shaped_before.get(len(sw.network.nodes) - 1, ()):
                t = _shaped_t(sw, r, state.alphas.get(r), M, requires_grad)
                if t is not None:
                    alphas[r] = t
            if not isinstance(node.layer, L.ReLU):
                if type(node.layer) in UNARY:
                    b = _clip_beta(sw, r, state.betas.get(r), M, requires_grad)
                    if b is not None:
                        betas[r] = b
                continue
            data = sw.relu(r)
            shape = (N, M, *data.lw.shape[1:])
            old = state.alphas.get(r)
            if bool(data.unstable.any()):
                a = old.to(data.lw) if old is not None and tuple(old.shape) == shape else data.lw.unsqueeze(1).expand(shape)
                alphas[r] = a.detach().clone().clamp(0.0, 1.0).requires_grad_(requires_grad)
            phase = sw.domains.phases.get(r)
            if phase is not None and bool((phase != 0).any()):
                old = state.betas.get(r)
                b = old.to(data.lw) if old is not None and tuple(old.shape) == shape else torch.zeros(shape, dtype=data.lw.dtype, device=data.lw.device)
                b = b * (phase != 0).unsqueeze(1)
                betas[r] = b.detach().clone().clamp(min=0.0).requires_grad_(requires_grad)
        return alphas, betas

    def _optimise(self, sw: BetaSweep, state: BetaState) -> tuple[torch.Tensor, dict, dict, int]:
        """Projected Adam on alpha and beta; the best bound per row and its parameters.

        Domains whose bound clears ``state.stop`` leave the optimisation (the batch shrinks
        once at least a third of the active domains are done).
        """
        N, M = sw.domains.C.shape[:2]
        alphas, betas = self._init(sw, state)
        params = {("a", r): a for r, a in alphas.items()} | {("b", r): b for r, b in betas.items()}
        saved = {k: p.detach().clone() for k, p in params.items()}
        lr = {k: self.lr_alpha if k[0] == "a" else self.lr_beta for k in params}
        m = {k: torch.zeros_like(p) for k, p in params.items()}
        v = {k: torch.zeros_like(p) for k, p in params.items()}
        like = sw.domains.C
        with torch.no_grad():
            ilo = sw.ibp_final(like)[0] if self.opts.final_ibp else torch.full((N, M), -float("inf")).to(like)
        best = torch.full((N, M), -float("inf"), dtype=like.dtype, device=like.device)
        stop = None if state.stop is None else state.stop.to(like)
        act = torch.arange(N, device=like.device)
        t0, stale, total, it = time.monotonic(), 0, -float("inf"), 0
        with torch.enable_grad():
            for it in range(self.iterations + 1):
                self._bind(sw, params)
                value = sw.final(sw.domains.C, "final")
                cur = torch.maximum(value.detach(), ilo[act])
                improved = cur > best[act]
                best[act] = torch.where(improved, cur, best[act])
                for k, p in params.items():
                    mask = improved.reshape(*improved.shape, *([1] * (p.dim() - 2)))
                    saved[k][act] = torch.where(mask, p.detach(), saved[k][act])
                done = _verified(best[act], None if stop is None else stop[act])
                new_total = float(best.clamp(-1e30, 1e30).sum())
                stale = 0 if new_total > total + self.tol * (1 + abs(new_total)) else stale + 1
                total = new_total
                if (not params or it == self.iterations or bool(done.all()) or stale >= self.patience
                        or (self.time_limit is not None and time.monotonic() - t0 > self.time_limit)):
                    break
                if self.deadline is not None:
                    self.deadline()
                keys = list(params)
                grads = torch.autograd.grad(value.sum(), [params[k] for k in keys], allow_unused=True)
                self._adam(params, dict(zip(keys, grads)), m, v, lr, it + 1)
                if 3 * int(done.sum()) >= done.numel():
                    keep = ~done
                    act = act[keep]
                    params = {k: p.detach()[keep].requires_grad_(True) for k, p in params.items()}
                    m = {k: t[keep] for k, t in m.items()}
                    v = {k: t[keep] for k, t in v.items()}
                    sw = self._subset(sw, keep.nonzero().flatten())
        sw.alphas, sw.betas = {}, {}
        alphas = {r: saved[("a", r)] for r in alphas}
        betas = {r: saved[("b", r)] for r in betas}
        return best, alphas, betas, it

    def _bind(self, sw: BetaSweep, params: dict[tuple[str, int], torch.Tensor]) -> None:
        sw.alphas = {("final", k[1]): p for k, p in params.items() if k[0] == "a"}
        sw.betas = {k[1]: p for k, p in params.items() if k[0] == "b"}

    def _adam(self, params: dict, grads: dict, m: dict, v: dict, lr: dict, t: int,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        """One projected Adam ascent step (alpha into [0, 1], beta into [0, inf))."""
        decay = self.lr_decay ** (t - 1)
        with torch.no_grad():
            for k, p in params.items():
                g = grads.get(k)
                if g is None:
                    continue
                m[k].mul_(b1).add_(g, alpha=1 - b1)
                v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v[k] / (1 - b2 ** t)).sqrt_().add_(eps)
                p.addcdiv_(m[k], denom, value=lr[k] * decay / (1 - b1 ** t))
                if k[0] == "a":
                    p.clamp_(0.0, 1.0)
                else:
                    p.clamp_(min=0.0)

    def _subset(self, sw: BetaSweep, keep: torch.Tensor) -> BetaSweep:
        """The sweep of domains ``keep`` (boxes reused as they are)."""
        dom = _select_domains(sw.domains, keep)
        floor = {i: (lo[keep], hi[keep]) for i, (lo, hi) in enumerate(sw.boxes)}
        return BetaSweep(sw.network, sw.plan, dom, self.rules, self.policy, self.opts,
                         floor_map=floor, refine=set(), trust_floor=True).run()

    def _primal(self, sw: BetaSweep, alphas: dict, betas: dict) -> torch.Tensor:
        """The input corner minimising each row's final linear bound under the best parameters."""
        with torch.no_grad():
            sw.alphas = {("final", r): a for r, a in alphas.items()}
            sw.betas, sw.capture, sw.primal = betas, True, []
            sw.final(sw.domains.C, "final")
            sw.alphas, sw.betas, sw.capture = {}, {}, False
            return torch.cat(sw.primal, 1)


def _shaped_t(sw: BetaSweep, r: int, old: torch.Tensor | None, M: int,
              requires_grad: bool) -> torch.Tensor | None:
    """Tangent points ``[N, M, 2, *shape]`` of the Sigmoid/Tanh node ``r`` (warm start when its
    shape matches, else the default lines' points); ``None`` when no line is a tangent."""
    data = sw.shaped(r)
    if not data.optimisable:
        return None
    t0 = default_t(data)
    shape = (t0.shape[0], M, *t0.shape[1:])
    t = old.to(t0) if old is not None and tuple(old.shape) == shape else t0.unsqueeze(1).expand(shape)
    return t.detach().clone().clamp(0.0, 1.0).requires_grad_(requires_grad)


def _clip_beta(sw: BetaSweep, r: int, old: torch.Tensor | None, M: int,
               requires_grad: bool) -> torch.Tensor | None:
    """Multipliers ``[N, M, 2, *shape]`` of the clipped pre-activation of non-ReLU node ``r``
    (warm start when its shape matches, else zeros); ``None`` when nothing is clipped."""
    mask = sw.domains.phases.get(r)
    if mask is None or not bool((mask != 0).any()):
        return None
    N = mask.shape[0]
    like = sw.domains.lower
    shape = (N, M, 2, *mask.shape[1:])
    b = old.to(like) if old is not None and tuple(old.shape) == shape else torch.zeros(shape, dtype=like.dtype, device=like.device)
    on = torch.stack([(mask & 1) != 0, (mask & 2) != 0], 1).unsqueeze(1)
    return (b * on).detach().clone().clamp(min=0.0).requires_grad_(requires_grad)


def _all_infeasible(dom: Domains, boxes: list[Interval], bad: torch.Tensor) -> BetaResult:
    lower = torch.full(dom.C.shape[:2], float("inf"), dtype=dom.lower.dtype, device=dom.lower.device)
    return BetaResult(lower, {}, {}, dict(enumerate(boxes)), bad)


def _verified(best: torch.Tensor, stop: torch.Tensor | None) -> torch.Tensor:
    """``[N]``: some row's bound clears its threshold by a clear margin (no more work needed)."""
    if stop is None:
        return torch.zeros(best.shape[0], dtype=torch.bool, device=best.device)
    return ((best - stop) > STOP_MARGIN * (1.0 + stop.abs())).any(1)


def _cast(boxes: dict[int, Interval] | None, like: torch.Tensor) -> dict[int, Interval] | None:
    if boxes is None:
        return None
    return {k: (lo.to(like), hi.to(like)) for k, (lo, hi) in boxes.items()}


def _select_domains(dom: Domains, keep: torch.Tensor) -> Domains:
    return Domains(dom.lower[keep], dom.upper[keep], dom.C[keep], {k: v[keep] for k, v in dom.phases.items()},
                   **dom.ball_of(keep))


def _select_state(state: BetaState, keep: torch.Tensor, like: torch.Tensor) -> BetaState:
    """The warm start of the kept domains (the boxes are already inside the sweep)."""
    sel = lambda d: {k: v[keep.to(v.device)] for k, v in d.items()}
    stop = None if state.stop is None else state.stop[keep.to(state.stop.device)]
    return BetaState(sel(state.alphas), sel(state.betas), None, None, stop)


def _scatter(params: dict[int, torch.Tensor], keep: torch.Tensor, N: int) -> dict[int, torch.Tensor]:
    """Spread per-kept-domain tensors back to ``N`` rows (zeros elsewhere)."""
    out = {}
    for k, v in params.items():
        full = torch.zeros((N, *v.shape[1:]), dtype=v.dtype, device=v.device)
        full[keep] = v
        out[k] = full
    return out
