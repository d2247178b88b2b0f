"""CROWN, DeepPoly and Fast-Lin: batched backward linear bound propagation as Bounders.

One forward *sweep* visits the nodes in topological order. Every node gets an interval from
the IBP rule applied to its (already tightened) inputs; the inputs of ReLU/Sigmoid/Tanh/MaxPool
nodes are then tightened by a CROWN backward pass from that node with an identity spec
(batched over the N domains, chunked over rows to bound memory) and intersected with the
interval. Skipped, because CROWN cannot beat the interval there: nodes that are an affine image
of the input box through at most one mixing layer (IBP is exact), and monotone elementwise or
shape ops of an already tightened node. For ReLU inputs only the neurons unstable in some
domain of the batch are recomputed. The final bound of ``C f(x)`` is a last backward pass,
intersected (``final_ibp``) with the interval bound of the output.

The three methods share the backward rules and differ only in the ReLU lower slope
(:mod:`bab.bounding.polyhedra.relax`): CROWN's adaptive rule (slope 1 iff ``u >= -l``), DeepPoly's area
rule (slope 1 iff ``u > -l``: identical except at the tie) and Fast-Lin's parallel slope
``u/(u-l)``. Our ``deeppoly`` is DeepPoly's ReLU abstraction run through this same
back-substitution engine (full back-substitution for every tightened node, as in ERAN's
DeepPoly); its Sigmoid/Tanh/MaxPool relaxations are CROWN's, not ERAN's.
"""

from __future__ import annotations

import contextlib
import copy
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from bab.bounding.balls import uses_ball
from bab.bounding.polyhedra.backward import backward, concretize, make_registry
from bab.bounding.base import Bounds, Domains, Registry, clause_bounds
from bab.bounding.interval.ibp import RULES as IBP_RULES, apply_phase
from bab.bounding.polyhedra.relax import (POLICIES, UNARY, MaxPoolRelax, Relax, ReluData,
                                          SlopePolicy, is_nonlinear, maxpool_relax, relu_data,
                                          relu_relax)
from bab.bounding.polyhedra import graph_ops  # noqa: F401  (registers the general-graph rules)
from bab.bounding.polyhedra.sshape import SSHAPED, SShapeData, sshape_data, sshape_relax
from onnx_models import layers as L
from onnx_models.network import Network

Interval = tuple[torch.Tensor, torch.Tensor]
_BOX_OPS = (L.ElementwiseAffine, L.Pad, L.Reshape, L.Transpose)
_COPY_OPS = (L.Gather,)  # exact per element, but may repeat an input (not a box image)
_MIXING = (L.Linear, L.Conv2d, L.AvgPool2d, L.ReduceSum, L.ConvTranspose2d)


@dataclass
class Plan:
    """Static facts about a network used by the sweep."""

    in_shapes: list[list[tuple[int, ...]]]
    crown_nodes: set[int]
    relu_only: set[int]
    relus_before: dict[int, list[int]]
    numel: list[int]
    need: set[int] = field(default_factory=set)  # every node feeding a nonlinear layer
    shaped_before: dict[int, list[int]] = field(default_factory=dict)  # same, s-shaped nodes


def _ancestors(network: Network) -> list[set[int]]:
    anc: list[set[int]] = []
    for node in network.nodes:
        s: set[int] = set()
        for j in node.inputs:
            if j >= 0:
                s |= anc[j] | {j}
        anc.append(s)
    return anc


def make_plan(network: Network) -> Plan:
    """Which nodes CROWN must tighten, their input shapes, and ReLU ancestry (for alphas)."""
    nodes = network.nodes
    shape = lambda j: tuple(network.input_shape) if j < 0 else tuple(nodes[j].out_shape)
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for j in node.inputs:
            consumers.setdefault(j, []).append(i)
    need = {j for j, cs in consumers.items()
            if j >= 0 and any(is_nonlinear(nodes[c].layer) for c in cs)}
    relu_only = {j for j in need if all(isinstance(nodes[c].layer, L.ReLU) for c in consumers[j])}
    box, tight, crown = {-1: True}, {-1: True}, set()
    for i, node in enumerate(nodes):
        j, layer = node.inputs[0], node.layer
        single = len(node.inputs) == 1
        box[i] = single and isinstance(layer, _BOX_OPS) and box[j]
        if single and (isinstance(layer, _BOX_OPS + _COPY_OPS + (L.ReLU, L.MaxPool2d))
                       or type(layer) in UNARY):
            tight[i] = tight[j]
        else:
            tight[i] = single and isinstance(layer, _MIXING) and box[j]
        if i in need and not tight[i]:
            crown.add(i)
            tight[i] = True
    anc = _ancestors(network)
    relus = [i for i, n in enumerate(nodes) if isinstance(n.layer, L.ReLU)]
    before = {s: [r for r in relus if r in anc[s] or r == s] for s in range(len(nodes))}
    shaped = [i for i, n in enumerate(nodes) if isinstance(n.layer, SSHAPED) and n.inputs[0] >= 0]
    shaped_before = {s: [r for r in shaped if r in anc[s] or r == s] for s in range(len(nodes))}
    return Plan([[shape(j) for j in n.inputs] for n in nodes], crown, relu_only, before,
                [math.prod(n.out_shape) for n in nodes], need, shaped_before)


_PLANS: "weakref.WeakKeyDictionary[Network, Plan]" = weakref.WeakKeyDictionary()
_COPIES: "weakref.WeakKeyDictionary[Network, dict]" = weakref.WeakKeyDictionary()


def plan_for(network: Network) -> Plan:
    """The cached :class:`Plan` of ``network``."""
    if network not in _PLANS:
        _PLANS[network] = make_plan(network)
    return _PLANS[network]


def prepare(network: Network, domains: Domains, dtype: Any = None,
            device: Any = None) -> tuple[Network, Domains]:
    """Network and domains in the working dtype/device (default: the domains' own).

    A converted network copy is cached per original network.
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or domains.lower.dtype)
    device = torch.device(device) if device is not None else domains.lower.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    kw = dict(dtype=dtype, device=device)
    doms = Domains(domains.lower.to(**kw), domains.upper.to(**kw), domains.C.to(**kw),
                   {k: v.to(device=device) for k, v in domains.phases.items()}, **domains.ball_of(**kw))
    p = next((t for n in network.nodes for t in n.layer.tensors().values()), None)
    if p is None or (p.dtype == dtype and p.device == device):
        return network, doms
    cache = _COPIES.setdefault(network, {})
    key = (dtype, str(device))
    if key not in cache:
        cache[key] = copy.deepcopy(network).to(dtype=dtype, device=device)
        _PLANS[cache[key]] = plan_for(network)
    return cache[key], doms


@contextlib.contextmanager
def exact_matmul(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA for the bound pass (TF32 rounding would break soundness)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class Options:
    """Knobs shared by the CROWN family (see :class:`Crown`)."""

    intermediate: str = "crown"
    upper: bool = True
    final_ibp: bool = True
    memory_elements: int = 1 << 24


@dataclass
class _Ctx:
    """Backward-rule context for one pass: the sweep, alpha key and row subset."""

    sweep: "Sweep"
    key: Any
    rows: torch.Tensor | None

    def in_shape(self, idx: int, k: int = 0) -> tuple[int, ...]:
        return self.sweep.plan.in_shapes[idx][k]

    def in_shapes(self, idx: int) -> list[tuple[int, ...]]:
        return self.sweep.plan.in_shapes[idx]

    def relax(self, idx: int) -> Relax:
        return self.sweep.relax(idx, self.key, self.rows)

    def maxpool(self, idx: int) -> MaxPoolRelax:
        return self.sweep.maxpool(idx)

    def box(self, idx: int, k: int = 0) -> Interval:
        return self.sweep.input_box(idx, k)


@dataclass
class Sweep:
    """One forward pass computing every node's interval, CROWN-tightened where needed.

    ``alphas``: optional lower ReLU slopes keyed ``(start, relu)`` (``start`` is a node index
    or ``"final"``), each ``[N, rows, *shape]``. ``sels``: fixed neuron selections per tightened
    node (else the batch's unstable union). ``floor``: intervals to intersect with.
    """

    network: Network
    plan: Plan
    domains: Domains
    rules: Registry
    policy: SlopePolicy
    opts: Options
    alphas: dict[Any, torch.Tensor] = field(default_factory=dict)
    sels: dict[int, torch.Tensor] = field(default_factory=dict)
    floor: list[Interval] | None = None
    boxes: list[Interval] = field(default_factory=list)
    _cache: dict[int, Any] = field(default_factory=dict)
    _mask: dict[int, torch.Tensor] = field(default_factory=dict)
    _shape: dict[int, SShapeData] = field(default_factory=dict)

    def input_box(self, idx: int, k: int = 0) -> Interval:
        """Interval of input ``k`` of node ``idx`` (ReLU inputs clipped by phases)."""
        j = self.network.nodes[idx].inputs[k]
        if j < 0:
            n = self.domains.size
            return (self.domains.lower.reshape(n, *self.network.input_shape),
                    self.domains.upper.reshape(n, *self.network.input_shape))
        box = self.boxes[j]
        if isinstance(self.network.nodes[idx].layer, L.ReLU):
            box = apply_phase(box, self.domains.phases.get(idx))
        return box

    def run(self) -> "Sweep":
        """Compute ``boxes`` for every node."""
        for idx, node in enumerate(self.network.nodes):
            args = [self.input_box(idx, k) for k in range(len(node.inputs))]
            box = IBP_RULES.rule(node.layer)(node.layer, *args)
            if self.floor is not None:
                box = (torch.maximum(box[0], self.floor[idx][0]), torch.minimum(box[1], self.floor[idx][1]))
            if self.tightens(idx) and self.opts.intermediate == "crown":
                box = self._tighten(idx, box)
            self.boxes.append(box)
        return self

    def tightens(self, idx: int) -> bool:
        """Whether node ``idx`` gets CROWN bounds: the plan's nodes, and with an ℓ2/ℓ1 ball
        every node feeding a nonlinear layer (intervals of the box hull are not exact there)."""
        return idx in self.plan.crown_nodes or (uses_ball(self.domains) and idx in self.plan.need)

    def relu(self, idx: int) -> ReluData:
        """Cached ReLU relaxation data of node ``idx``."""
        if idx not in self._cache:
            lo, hi = self.input_box(idx)
            self._cache[idx] = relu_data(lo, hi, self.domains.phases.get(idx), self.policy)
        return self._cache[idx]

    def relax(self, idx: int, key: Any = None, rows: torch.Tensor | None = None) -> Relax:
        """Relaxation of an elementwise nonlinear node, with alphas for ``key`` if any."""
        layer = self.network.nodes[idx].layer
        if isinstance(layer, L.ReLU):
            alpha = self.alphas.get((key, idx))
            if alpha is not None and rows is not None:
                alpha = alpha[:, rows]
            return relu_relax(self.relu(idx), alpha)
        alpha = self.alphas.get((key, idx)) if self.alphas else None
        if alpha is not None and isinstance(layer, SSHAPED):
            return sshape_relax(self.shaped(idx), alpha if rows is None else alpha[:, rows])
        if idx not in self._cache:
            self._cache[idx] = UNARY[type(layer)](layer, *self.input_box(idx))
        return self._cache[idx]

    def shaped(self, idx: int) -> SShapeData:
        """Cached tangent-point ranges of the Sigmoid/Tanh node ``idx`` (optimisable lines)."""
        if idx not in self._shape:
            self._shape[idx] = sshape_data(type(self.network.nodes[idx].layer), *self.input_box(idx))
        return self._shape[idx]

    def maxpool(self, idx: int) -> MaxPoolRelax:
        """Cached max-pool relaxation of node ``idx``."""
        if idx not in self._cache:
            node = self.network.nodes[idx]
            self._cache[idx] = maxpool_relax(node.layer, self.plan.in_shapes[idx][0], node.out_shape,
                                             *self.input_box(idx))
        return self._cache[idx]

    def chunk(self, start: int) -> int:
        """Spec rows per backward pass so each coefficient tensor stays within budget."""
        widest = max([self.network.n_inputs] + self.plan.numel[:start + 1])
        return max(1, self.opts.memory_elements // (self.domains.size * widest))

    def lower(self, start: int, A0: torch.Tensor, key: Any = None, rows: torch.Tensor | None = None,
              bias0: torch.Tensor | None = None) -> torch.Tensor:
        """Lower bounds ``[N, M]`` of ``A0 · node_start(x) + bias0`` over the domains."""
        a_in, bias = backward(self.network, self.rules, _Ctx(self, key, rows), start, A0, bias0)
        return concretize(a_in, bias, self.domains.lower, self.domains.upper, self.domains)

    def lower_rows(self, idx: int, part: torch.Tensor, key: Any, rows: torch.Tensor) -> torch.Tensor:
        """Lower bounds of ``[e_part; -e_part] · node_idx(x)`` (``[N, 2k]``).

        For a Linear node the identity rows are folded into its weight rows directly.
        """
        N, k = self.domains.size, part.numel()
        node = self.network.nodes[idx]
        dtype, device = self.domains.lower.dtype, self.domains.lower.device
        if isinstance(node.layer, L.Linear) and len(node.out_shape) == 1:
            w, b = node.layer.weight[part], node.layer.bias
            A1 = torch.cat([w, -w]).expand(N, 2 * k, w.shape[1])
            b1 = None if b is None else torch.cat([b[part], -b[part]]).expand(N, 2 * k)
            return self.lower(node.inputs[0], A1, key, rows, None if b1 is None else b1.clone())
        shape, n = node.out_shape, math.prod(node.out_shape)
        eye = torch.zeros(k, n, dtype=dtype, device=device)
        eye[torch.arange(k, device=device), part] = 1.0
        A0 = torch.cat([eye, -eye]).expand(N, 2 * k, n).reshape(N, 2 * k, *shape)
        return self.lower(idx, A0, key, rows)

    def selection(self, idx: int, box: Interval) -> torch.Tensor:
        """Flat neurons of node ``idx`` to tighten (for ReLU inputs: unstable in some domain).

        For ReLU inputs the domain's own unstable mask is kept too, so that only those
        neurons take CROWN values: a domain's bounds do not depend on the rest of its batch.
        """
        lo, hi = box[0].flatten(1), box[1].flatten(1)
        if idx in self.plan.relu_only:
            mask = (lo < 0) & (hi > 0)
            for c, node in enumerate(self.network.nodes):
                if idx in node.inputs and c in self.domains.phases:
                    mask = mask & (self.domains.phases[c].reshape(mask.shape) == 0)
            self._mask[idx] = mask
            if idx not in self.sels:
                self.sels[idx] = mask.any(0).nonzero().flatten()
        elif idx not in self.sels:
            self.sels[idx] = torch.arange(lo.shape[1], device=lo.device)
        return self.sels[idx]

    def _tighten(self, idx: int, box: Interval) -> Interval:
        """Intersect ``box`` with CROWN bounds of the selected neurons of node ``idx``."""
        sel = self.selection(idx, box)
        if sel.numel() == 0:
            return box
        N, shape, S = self.domains.size, box[0].shape[1:], sel.numel()
        step = max(1, self.chunk(idx) // 2)
        los, his = [], []
        for c0 in range(0, S, step):
            part = sel[c0:c0 + step]
            k = part.numel()
            rows = torch.cat([torch.arange(c0, c0 + k), torch.arange(S + c0, S + c0 + k)]).to(sel.device)
            low = self.lower_rows(idx, part, idx, rows)
            los.append(low[:, :k])
            his.append(-low[:, k:])
        lo, hi = box[0].flatten(1), box[1].flatten(1)
        lo_s, hi_s = lo[:, sel], hi[:, sel]
        use = self._mask[idx][:, sel] if idx in self._mask else torch.ones_like(lo_s, dtype=torch.bool)
        new_lo = lo.index_copy(1, sel, torch.where(use, torch.maximum(lo_s, torch.cat(los, 1)), lo_s))
        new_hi = hi.index_copy(1, sel, torch.where(use, torch.minimum(hi_s, torch.cat(his, 1)), hi_s))
        return new_lo.reshape(N, *shape), new_hi.reshape(N, *shape)

    def final(self, C: torch.Tensor, key: Any = None) -> torch.Tensor:
        """Lower bounds ``[N, M]`` of ``C f(x)`` (rows chunked)."""
        last = len(self.network.nodes) - 1
        N, M = C.shape[:2]
        shape = self.network.nodes[last].out_shape
        step = self.chunk(last)
        parts = []
        for r0 in range(0, M, step):
            rows = torch.arange(r0, min(M, r0 + step), device=C.device)
            parts.append(self.lower(last, C[:, r0:r0 + step].reshape(N, -1, *shape), key, rows))
        return torch.cat(parts, 1)

    def ibp_final(self, C: torch.Tensor) -> Interval:
        """Interval bounds of ``C f(x)`` from the tightened output interval."""
        lo, hi = self.boxes[-1]
        n = self.domains.size
        return clause_bounds(C, lo.reshape(n, -1), hi.reshape(n, -1))


class Crown:
    """CROWN-family bounder (``policy``: ``crown``, ``deeppoly`` or ``fastlin``).

    Options: ``intermediate`` (``"crown"``: back-substituted intermediate bounds; ``"ibp"``:
    interval ones, cheaper), ``upper`` (also bound ``-C`` in the same pass), ``final_ibp``
    (intersect the result with the output interval; off gives the plain back-substitution
    bound), ``dtype``/``device`` (default: the domains'), ``memory_elements`` (largest
    coefficient tensor per backward pass, in elements). ℓ2/ℓ1 input balls enter every
    concretisation (intermediate and final) through the dual norm.
    """

    input_sets = {"inf": "exact", "2": "exact", "1": "exact"}

    def __init__(self, policy: str = "crown", intermediate: str = "crown", upper: bool = True,
                 final_ibp: bool = True, dtype: Any = None, device: Any = None,
                 memory_elements: int = 1 << 24, name: str | None = None) -> None:
        if intermediate not in ("crown", "ibp"):
            raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")
        self.name = name or policy
        self.policy = POLICIES[policy]
        self.opts = Options(intermediate, upper, final_ibp, memory_elements)
        self.dtype, self.device = dtype, device
        self.rules = make_registry(self.name)

    def check(self, network: Network) -> None:
        """Raise :class:`UnsupportedLayerError` for the first layer without a rule."""
        for node in network.nodes:
            self.rules.rule(node.layer)

    def sweep(self, network: Network, domains: Domains, floor: dict[int, Interval] | None = None) -> Sweep:
        """Run the forward sweep (intermediate bounds) on prepared inputs; ``floor``: known
        sound intervals ``{node: (lo, hi)}`` (``[N, *shape]``) every box is intersected with."""
        lst = None
        if floor:
            ref = domains.lower
            inf = torch.tensor(float("inf"), dtype=ref.dtype, device=ref.device)
            lst = [(floor[i][0].to(ref), floor[i][1].to(ref)) if i in floor else (-inf, inf)
                   for i in range(len(network.nodes))]
        return Sweep(network, plan_for(network), domains, self.rules, self.policy, self.opts, floor=lst).run()

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower (and upper) bounds of ``C f(x)`` over each domain, plus every node's interval."""
        self.check(network)
        net, dom = prepare(network, domains, self.dtype, self.device)
        with torch.no_grad(), exact_matmul(dom.lower.device):
            sw = self.sweep(net, dom)
            C = torch.cat([dom.C, -dom.C], 1) if self.opts.upper else dom.C
            out = sw.final(C)
            M = dom.C.shape[1]
            lower, upper = out[:, :M], (-out[:, M:] if self.opts.upper else None)
            if self.opts.final_ibp:
                ilo, ihi = sw.ibp_final(dom.C)
                lower = torch.maximum(lower, ilo)
                upper = None if upper is None else torch.minimum(upper, ihi)
        return Bounds(lower=lower, upper=upper, intermediate=dict(enumerate(sw.boxes)))
