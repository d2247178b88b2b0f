"""The dual network of Wong and Kolter (ICML 2018) as a Bounder (SoK: duality).

Wong and Kolter bound ``min c·z_k`` over the convex outer adversarial polytope of a ReLU
network ``z_{i+1} = W_i ẑ_i + b_i``, ``ẑ_i = ReLU(z_i)`` (each unstable ReLU replaced by its
triangle) through the LP's dual. Theorem 1 says any ``c`` gives a feasible dual point by
running ``c`` backwards through the *dual network*

    ν_k = -c,    ν̂_i = W_i^T ν_{i+1},    ν_i = D_i ν̂_i,
    D_i = 1 (active: l >= 0),  0 (inactive: u <= 0),  u/(u - l) (unstable set I_i),

whose value

    J(ν) = -Σ_i ν_{i+1}·b_i - ν̂_1·x̂ - ε‖ν̂_1‖_1 + Σ_i Σ_{j ∈ I_i} l_ij [ν_ij]_+

is a lower bound of ``c·z_k``. Here, per layer of our IR:

* :data:`RULES` (``Registry("wk")``) holds one *dual rule* per layer kind: it maps the dual
  variable on the layer's output to those on its inputs (the transposed layer: ``W^T ν`` for
  Linear, a transposed convolution for Conv2d, the adjoint for AvgPool2d/Pad/Reshape/
  Transpose/ElementwiseAffine) and returns the layer's term of ``J``: ``-ν·β`` for an affine
  layer with offset ``β = layer(0)`` (the ``-ν_{i+1}·b_i`` terms), ``Σ_{j∈I} l_j [ν_j]_+`` for
  a ReLU (``ν = D ν̂``). Add is the sum of its inputs, so its dual hands the same ``ν`` to
  both branches (residual networks, as in Wong et al. 2018's extension); duals reaching a node
  from several consumers add up.
* :func:`dual_objective` runs the dual network from any node and closes ``J`` with the input
  term: for a box with centre ``x̂`` and radius ``r`` (the ℓ∞ ball is ``r = ε``) the minimum of
  ``-ν̂_1·x`` is ``-ν̂_1·x̂ - ‖ν̂_1 ⊙ r‖_1``.
* Algorithm 1 (layer-wise bounds): :class:`DualSweep` visits the nodes in order; each node
  feeding a ReLU gets ``l = J(ν(e_j))`` and ``u = -J(ν(-e_j))`` for all its neurons at once
  (the rows of ``±I``), from the dual network of the prefix whose ReLUs are already bounded.
  Nodes whose interval is exact (an affine image of the input box through one mixing layer:
  the paper's closed form for the first layer) take that interval instead, and nodes not
  feeding a ReLU get intervals from their inputs' (only for the reported ``intermediate``).
  The final rows are ``ν_k = -C`` (and ``+C`` for upper bounds), never intersected with
  interval bounds: the result is the paper's bound itself.

Fixed ReLU phases (``Domains.phases``) set ``D = 1`` (active) or ``0`` (inactive) whatever the
bounds: that drops the phase constraint ``z >= 0`` (``<= 0``) from the primal, so the bound
stays sound. With the same intermediate bounds this equals Fast-Lin's (the dual's ``D`` is
Fast-Lin's parallel lower slope, ``l[ν]_+`` its upper intercept), which the tests check.
Sigmoid, Tanh and MaxPool are outside the paper's framework: :class:`UnsupportedLayerError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bab.bounding.balls import ball_lower, uses_ball
from bab.bounding.base import Bounds, Domains, Registry
from bab.bounding.interval.ibp import RULES as IBP_RULES, apply_phase
from bab.bounding.polyhedra.crown import exact_matmul, prepare
from onnx_models import layers as L
from onnx_models.network import Network

Interval = tuple[torch.Tensor, torch.Tensor]
DualStep = tuple[list[torch.Tensor], "torch.Tensor | None"]
DualRule = Callable[["DualNet", int, L.Layer, torch.Tensor], DualStep]
RULES: Registry[DualRule] = Registry("wk")
_BOX_OPS = (L.ElementwiseAffine, L.Pad, L.Reshape, L.Transpose)
_MIXING = (L.Linear, L.Conv2d, L.AvgPool2d)


@dataclass
class ReluDual:
    """One ReLU layer of the dual network (``[N, *shape]``): the diagonal ``d`` of ``D``, the
    unstable set ``I`` and the lower bounds ``l`` there (0 elsewhere)."""

    d: torch.Tensor
    unstable: torch.Tensor
    l: torch.Tensor


def relu_dual(l: torch.Tensor, u: torch.Tensor, phase: torch.Tensor | None) -> ReluDual:
    """``D`` and ``I`` of a ReLU with input bounds ``[l, u]``; fixed phases win over bounds."""
    if phase is None:
        active, inactive = l >= 0, u <= 0
        inactive = inactive & ~active
    else:
        free = phase == 0
        active = (phase > 0) | (free & (l >= 0))
        inactive = ~active & ((phase < 0) | (free & (u <= 0)))
    unstable = ~active & ~inactive
    gap = torch.where(unstable, u - l, torch.ones_like(l))
    d = torch.where(unstable, u / gap, active.to(l.dtype))
    return ReluDual(d, unstable, torch.where(unstable, l, torch.zeros_like(l)))


@dataclass
class DualNet:
    """What the dual rules need: input shapes and the ReLU layers' ``D``/``I``/``l``."""

    network: Network
    relus: dict[int, ReluDual] = field(default_factory=dict)

    def in_shape(self, idx: int, k: int = 0) -> tuple[int, ...]:
        """Sample shape of input ``k`` of node ``idx``."""
        j = self.network.nodes[idx].inputs[k]
        return tuple(self.network.input_shape) if j < 0 else tuple(self.network.nodes[j].out_shape)


def _total(t: torch.Tensor) -> torch.Tensor:
    """Sum over the sample dimensions of ``[N, R, *shape]``."""
    return t.flatten(2).sum(-1)


def _reduce_to(nu: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The adjoint of broadcasting ``shape`` up to ``nu``'s sample shape: sum the grown axes."""
    extra = nu.dim() - 2 - len(shape)
    if extra > 0:
        nu = nu.sum(dim=tuple(range(2, 2 + extra)))
    dims = [i + 2 for i, s in enumerate(shape) if s == 1 and nu.shape[i + 2] != 1]
    return nu.sum(dim=dims, keepdim=True) if dims else nu


@RULES.register(L.Linear)
def _linear(net: DualNet, idx: int, layer: L.Linear, nu: torch.Tensor) -> DualStep:
    """``ν̂ = W^T ν``; term ``-ν·b``."""
    term = None
    if layer.bias is not None:
        rows = nu if nu.dim() == 3 else nu.flatten(2, -2).sum(2)
        term = -(rows @ layer.bias)
    return [nu @ layer.weight], term


@RULES.register(L.Conv2d)
def _conv(net: DualNet, idx: int, layer: L.Conv2d, nu: torch.Tensor) -> DualStep:
    """``ν̂ = W^T ν`` as a transposed convolution; term ``-ν·b`` (bias per channel)."""
    N, R, Co, Ho, Wo = nu.shape
    _, H, W = net.in_shape(idx)
    kh, kw = layer.weight.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    extra = (H - ((Ho - 1) * sh - 2 * ph + dh * (kh - 1) + 1),
             W - ((Wo - 1) * sw - 2 * pw + dw * (kw - 1) + 1))
    out = F.conv_transpose2d(nu.reshape(N * R, Co, Ho, Wo), layer.weight, None, layer.stride,
                             layer.padding, extra, layer.groups, layer.dilation)
    term = None if layer.bias is None else -(nu.sum((-2, -1)) @ layer.bias)
    return [out.reshape(N, R, *out.shape[1:])], term


@RULES.register(L.ElementwiseAffine)
def _scale(net: DualNet, idx: int, layer: L.ElementwiseAffine, nu: torch.Tensor) -> DualStep:
    """``ν̂ = scale ⊙ ν`` (summed over broadcast axes); term ``-ν·shift``."""
    return [_reduce_to(nu * layer.scale, net.in_shape(idx))], -_total(nu * layer.shift)


@RULES.register(L.AvgPool2d)
def _avgpool(net: DualNet, idx: int, layer: L.AvgPool2d, nu: torch.Tensor) -> DualStep:
    """The adjoint of the (linear) pooling, exact for any padding/divisor/ceil mode: the
    gradient of ``ν · pool(z)`` at ``z = 0``."""
    N, R = nu.shape[:2]
    shape = net.in_shape(idx)
    with torch.enable_grad():
        z = nu.new_zeros(N * R, *shape, requires_grad=True)
        adj, = torch.autograd.grad(layer.forward(z), z, nu.reshape(N * R, *nu.shape[2:]))
    return [adj.reshape(N, R, *shape)], None


@RULES.register(L.Pad)
def _pad(net: DualNet, idx: int, layer: L.Pad, nu: torch.Tensor) -> DualStep:
    """Crop ``ν`` back (zero-fill cropped borders); term ``-value·Σ ν`` over the padding."""
    inner = F.pad(nu, [-p for p in layer.pads])
    term = None if layer.value == 0 else -layer.value * (_total(nu) - _total(inner))
    return [inner], term


@RULES.register(L.Reshape)
def _reshape(net: DualNet, idx: int, layer: L.Reshape, nu: torch.Tensor) -> DualStep:
    return [nu.reshape(nu.shape[0], nu.shape[1], *net.in_shape(idx))], None


@RULES.register(L.Transpose)
def _transpose(net: DualNet, idx: int, layer: L.Transpose, nu: torch.Tensor) -> DualStep:
    inverse = sorted(range(len(layer.perm)), key=lambda i: layer.perm[i])
    return [nu.permute(0, 1, *(i + 2 for i in inverse))], None


@RULES.register(L.Add)
def _add(net: DualNet, idx: int, layer: L.Add, nu: torch.Tensor) -> DualStep:
    """The dual of a sum: the same ``ν`` to both branches."""
    return [_reduce_to(nu, net.in_shape(idx, 0)), _reduce_to(nu, net.in_shape(idx, 1))], None


@RULES.register(L.ReLU)
def _relu(net: DualNet, idx: int, layer: L.ReLU, nu_hat: torch.Tensor) -> DualStep:
    """``ν = D ν̂``; term ``Σ_{j∈I} l_j [ν_j]_+``."""
    r = net.relus[idx]
    nu = nu_hat * r.d.unsqueeze(1)
    term = torch.bmm(nu.clamp(min=0).flatten(2), r.l.flatten(1).unsqueeze(-1)).squeeze(-1)
    return [nu], term


def dual_objective(net: DualNet, start: int, nu0: torch.Tensor, lower: torch.Tensor,
                   upper: torch.Tensor, domains: Domains | None = None) -> torch.Tensor:
    """``J`` ``[N, R]`` of the dual network started with ``ν = nu0`` ``[N, R, *shape]`` on node
    ``start``: a lower bound of ``-nu0 · node_start(x)`` over the box ``[lower, upper]`` (and
    over ``ball ∩ box`` when ``domains`` carries an ℓ2/ℓ1 ball: the paper's ``-ν̂_1·x̂ -
    ε‖ν̂_1‖_1`` with the dual norm ``‖ν̂_1‖_q`` in place of ``‖·‖_1``, the larger of it and the box
    term)."""
    N, R = nu0.shape[:2]
    pending: dict[int, torch.Tensor] = {start: nu0}
    J = nu0.new_zeros(N, R)
    nu_x = None
    for idx in range(start, -1, -1):
        nu = pending.pop(idx, None)
        if nu is None:
            continue
        layer = net.network.nodes[idx].layer
        nus, term = RULES.rule(layer)(net, idx, layer, nu)
        if term is not None:
            J = J + term
        for j, nu_j in zip(net.network.nodes[idx].inputs, nus):
            if j < 0:
                nu_x = nu_j if nu_x is None else nu_x + nu_j
            else:
                pending[j] = pending[j] + nu_j if j in pending else nu_j
    if nu_x is None:
        return J
    nu_x = nu_x.reshape(N, R, -1)
    centre, radius = ((lower + upper) / 2).unsqueeze(-1), ((upper - lower) / 2).unsqueeze(-1)
    box = J - (torch.bmm(nu_x, centre) + torch.bmm(nu_x.abs(), radius)).squeeze(-1)
    if domains is None or not uses_ball(domains):
        return box
    return torch.maximum(box, ball_lower(-nu_x, J, domains.center, domains.eps, domains.p))


def dual_nodes(network: Network) -> set[int]:
    """Nodes feeding a ReLU whose bounds come from the dual network; the others' intervals
    are exact (shape/scale ops of the input box, then at most one mixing layer)."""
    box, exact = {-1: True}, {-1: True}
    for i, node in enumerate(network.nodes):
        j, layer, single = node.inputs[0], node.layer, len(node.inputs) == 1
        box[i] = single and isinstance(layer, _BOX_OPS) and box[j]
        exact[i] = single and ((isinstance(layer, _MIXING) and box[j])
                               or (isinstance(layer, _BOX_OPS) and exact[j]))
    return {j for n in network.nodes if isinstance(n.layer, L.ReLU)
            for j in n.inputs if j >= 0 and not exact[j]}


@dataclass
class DualSweep:
    """Algorithm 1: every node's interval in topological order, ReLU inputs from the dual
    network of the prefix (unless ``given``), and each ReLU's ``D``/``I``/``l`` once bounded."""

    network: Network
    domains: Domains
    given: dict[int, Interval]
    memory_elements: int
    boxes: list[Interval] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dual = DualNet(self.network)
        self.needs = dual_nodes(self.network)
        if uses_ball(self.domains):  # first-layer intervals of the box hull are not exact then
            self.needs = {j for n in self.network.nodes if isinstance(n.layer, L.ReLU) for j in n.inputs if j >= 0}
        self.widest = [math.prod(self.network.input_shape)]
        for node in self.network.nodes:
            self.widest.append(max(self.widest[-1], math.prod(node.out_shape)))

    def input_box(self, idx: int, k: int = 0) -> Interval:
        """Interval of input ``k`` of node ``idx`` (ReLU inputs clipped by fixed phases)."""
        j = self.network.nodes[idx].inputs[k]
        if j < 0:
            n, shape = self.domains.size, self.network.input_shape
            return self.domains.lower.reshape(n, *shape), self.domains.upper.reshape(n, *shape)
        box = self.boxes[j]
        if isinstance(self.network.nodes[idx].layer, L.ReLU):
            box = apply_phase(box, self.domains.phases.get(idx))
        return box

    def run(self) -> "DualSweep":
        """Compute ``boxes`` for every node."""
        for idx, node in enumerate(self.network.nodes):
            if idx in self.given:
                box = self.given[idx]
            elif idx in self.needs:
                box = self.node_bounds(idx)
            else:
                args = [self.input_box(idx, k) for k in range(len(node.inputs))]
                box = IBP_RULES.rule(node.layer)(node.layer, *args)
            self.boxes.append(box)
            if isinstance(node.layer, L.ReLU):
                self.dual.relus[idx] = relu_dual(*self.input_box(idx), self.domains.phases.get(idx))
        return self

    def rows_per_pass(self, start: int) -> int:
        """Dual rows per pass so each ``ν`` tensor stays within ``memory_elements``."""
        return max(1, self.memory_elements // (self.domains.size * self.widest[start + 1]))

    def objective(self, start: int, nu0: torch.Tensor) -> torch.Tensor:
        """:func:`dual_objective` over the domains' input boxes."""
        return dual_objective(self.dual, start, nu0, self.domains.lower, self.domains.upper, self.domains)

    def node_bounds(self, idx: int) -> Interval:
        """``l = J(ν = -e_j)``, ``u = -J(ν = e_j)`` for every neuron ``j`` of node ``idx``."""
        N, shape = self.domains.size, self.network.nodes[idx].out_shape
        n = math.prod(shape)
        lo, hi = [], []
        step = max(1, self.rows_per_pass(idx) // 2)
        for j0 in range(0, n, step):
            k = min(step, n - j0)
            eye = self.domains.lower.new_zeros(k, n)
            pos = torch.arange(k, device=eye.device)
            eye[pos, pos + j0] = 1.0
            nu0 = torch.cat([-eye, eye]).expand(N, 2 * k, n).reshape(N, 2 * k, *shape)
            J = self.objective(idx, nu0)
            lo.append(J[:, :k])
            hi.append(-J[:, k:])
        return torch.cat(lo, 1).reshape(N, *shape), torch.cat(hi, 1).reshape(N, *shape)

    def final(self, C: torch.Tensor) -> torch.Tensor:
        """Lower bounds ``[N, M]`` of ``C f(x)``: ``J(ν_k = -c)`` per row, rows chunked."""
        last = len(self.network.nodes) - 1
        N, M = C.shape[:2]
        shape, step = self.network.nodes[last].out_shape, self.rows_per_pass(last)
        parts = [self.objective(last, -C[:, r0:r0 + step].reshape(N, -1, *shape))
                 for r0 in range(0, M, step)]
        return torch.cat(parts, 1)


class WongKolter:
    """The Wong-Kolter dual network bound (``wk``).

    Options: ``upper`` (also bound ``-C``), ``dtype``/``device`` (default: the domains'),
    ``memory_elements`` (largest dual tensor per pass, in elements). ``bound(...,
    intermediate={node: (lo, hi)})`` uses the given node intervals ``[N, *shape]`` instead
    of computing them (to compare methods with the same intermediate bounds).
    """

    name = "wk"
    input_sets = {"inf": "exact", "2": "exact", "1": "exact"}

    def __init__(self, upper: bool = True, dtype: Any = None, device: Any = None,
                 memory_elements: int = 1 << 24) -> None:
        self.upper, self.dtype, self.device = upper, dtype, device
        self.memory_elements = memory_elements

    def check(self, network: Network) -> None:
        """Raise :class:`UnsupportedLayerError` for the first layer without a dual rule."""
        for node in network.nodes:
            RULES.rule(node.layer)

    def sweep(self, network: Network, domains: Domains,
              intermediate: dict[int, Interval] | None = None) -> DualSweep:
        """Run Algorithm 1 (intermediate bounds) on prepared inputs."""
        kw = dict(dtype=domains.lower.dtype, device=domains.lower.device)
        given = {i: (lo.to(**kw).reshape(domains.size, *network.nodes[i].out_shape),
                     hi.to(**kw).reshape(domains.size, *network.nodes[i].out_shape))
                 for i, (lo, hi) in (intermediate or {}).items()}
        return DualSweep(network, domains, given, self.memory_elements).run()

    def bound(self, network: Network, domains: Domains, state: Any = None,
              intermediate: dict[int, Interval] | None = None) -> Bounds:
        """Lower (and upper) bounds of ``C f(x)`` per domain, plus every node's interval."""
        self.check(network)
        net, dom = prepare(network, domains, self.dtype, self.device)
        with torch.no_grad(), exact_matmul(dom.lower.device):
            sw = self.sweep(net, dom, intermediate)
            C = torch.cat([dom.C, -dom.C], 1) if self.upper else dom.C
            out = sw.final(C)
        M = dom.C.shape[1]
        upper = -out[:, M:] if self.upper else None
        return Bounds(lower=out[:, :M], upper=upper, intermediate=dict(enumerate(sw.boxes)))
