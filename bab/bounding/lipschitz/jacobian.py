"""Interval bounds of the Jacobian of each margin ``g = c · f`` over an input box.

Shared by Fast-Lip and RecurJac. The gradient of ``g`` is the reverse-mode product
``c^T A_L Λ_{L-1} A_{L-1} ... Λ_1 A_1`` where the ``A`` are the linear maps of the network and
each ``Λ`` is the diagonal of activation derivatives. Over a box every derivative lies in an
interval (:func:`activation_slopes`, from the CROWN bounds of the activation inputs): ReLU in
``{0}``, ``{1}`` or ``[0, 1]``, Sigmoid/Tanh in ``[min f'(l), f'(u)], max f'``; a max-pool
routes each output's adjoint to one of its *candidate* inputs. The *adjoint* of a node is
``∂g/∂(node output)``; :func:`adjoint_bounds` pushes interval adjoints from the output
(exactly ``c``) back to the input, one per-op rule in :data:`PULLBACK`. At non-differentiable
points the intervals contain Clarke's generalised gradient (``[0, 1]`` at a ReLU kink), so
Lebourg's mean-value theorem gives ``|g(x) - g(x0)| <= Σ_i max|J_i| |x_i - x0_i|`` for every
``x`` of a convex input set containing ``x0`` on which the Jacobian bounds hold; with an ℓp ball
also ``<= ‖max|J|‖_q ‖x - x0‖_p`` (:func:`set_bounds`).

Fixed ReLU phases: on the sub-domain (box ∩ phases) ``g`` equals ``g~``, the network whose
fixed neurons are replaced by the identity (active) or zero (inactive) on the *whole* box;
:func:`phase_network` builds ``g~`` in the IR, and bounding ``g~`` over the whole box is sound
for the sub-domain (a segment from the box centre may leave the phase region; it never leaves
the box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from bab.bounding.balls import DUAL, uses_ball
from bab.bounding.base import Registry
from bab.bounding.polyhedra.backward import make_registry
from bab.bounding.polyhedra.relax import window_index
from onnx_models import layers as L
from onnx_models.network import Network

Interval = tuple[torch.Tensor, torch.Tensor]
ACTIVATIONS = (L.ReLU, L.Sigmoid, L.Tanh)
LINEAR_OPS = (L.Linear, L.Conv2d, L.ElementwiseAffine, L.Add, L.Pad, L.AvgPool2d, L.Reshape, L.Transpose)
PULLBACK: Registry = Registry("jacobian")
_ADJOINT = make_registry("jacobian")  # exact adjoints of the linear ops (CROWN's backward rules)
SLACK = 1e-9  # relative widening of float64 bounds against rounding


@dataclass
class JacProblem:
    """One Jacobian-bounding problem on a float64 network over ``N`` boxes and ``M`` margins.

    ``values``: every node's output interval over the box (the CROWN intermediate bounds).
    ``slopes``: derivative intervals ``[N, *shape]`` of each activation node. ``consumers``:
    node (``-1``: the input) -> ``[(consumer, slot)]``.
    """

    network: Network
    lower: torch.Tensor
    upper: torch.Tensor
    C: torch.Tensor
    values: dict[int, Interval]
    slopes: dict[int, Interval] = field(default_factory=dict)
    consumers: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(N, M)``: boxes and margins."""
        return int(self.C.shape[0]), int(self.C.shape[1])

    def shape(self, j: int) -> tuple[int, ...]:
        """Sample shape of node ``j`` (``-1``: the input)."""
        return tuple(self.network.input_shape) if j < 0 else tuple(self.network.nodes[j].out_shape)

    def in_shape(self, idx: int, k: int = 0) -> tuple[int, ...]:
        """Sample shape of input ``k`` of node ``idx`` (the backward rules' context API)."""
        return self.shape(self.network.nodes[idx].inputs[k])

    def input_values(self, idx: int, k: int = 0) -> Interval:
        """Value interval of input ``k`` of node ``idx``."""
        j = self.network.nodes[idx].inputs[k]
        if j < 0:
            n = self.lower.shape[0]
            return self.lower.reshape(n, *self.shape(-1)), self.upper.reshape(n, *self.shape(-1))
        return self.values[j]

    def margin(self) -> torch.Tensor:
        """The adjoint of the output node: ``C`` shaped ``[N, M, *out_shape]``."""
        N, M = self.size
        return self.C.reshape(N, M, *self.shape(len(self.network.nodes) - 1))


def build_problem(network: Network, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                  intermediate: dict[int, Interval]) -> JacProblem:
    """A :class:`JacProblem` (everything float64) with slopes and the consumer lists."""
    d = lambda t: t.detach().to(torch.float64)
    prob = JacProblem(network, d(lower), d(upper), d(C), {k: (d(a), d(b)) for k, (a, b) in intermediate.items()})
    for idx, node in enumerate(network.nodes):
        for slot, j in enumerate(node.inputs):
            prob.consumers.setdefault(j, []).append((idx, slot))
        if isinstance(node.layer, ACTIVATIONS):
            prob.slopes[idx] = activation_slopes(node.layer, *prob.input_values(idx))
    return prob


def _widen(lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    s = SLACK * (1 + torch.maximum(lo.abs(), hi.abs()))
    return lo - s, hi + s


def activation_slopes(layer: L.Layer, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    """Interval of the activation's (Clarke) derivative over pre-activations in ``[lo, hi]``."""
    lo, hi = _widen(lo, hi)
    if isinstance(layer, L.ReLU):
        return (lo > 0).to(lo.dtype), (hi >= 0).to(lo.dtype)
    if isinstance(layer, L.Sigmoid):
        df = lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))
    else:
        df = lambda z: 1 - torch.tanh(z) ** 2
    dmin = torch.minimum(df(lo), df(hi))  # f' is unimodal with its peak at 0
    dmax = df(torch.clamp(torch.zeros_like(lo), lo, hi))
    return (dmin * (1 - SLACK)).clamp(min=0), dmax * (1 + SLACK)


# ----------------------------------------------------------------------------- pullback rules


def abs_layer(layer: L.Layer) -> L.Layer:
    """The linear op with every coefficient replaced by its absolute value (no bias)."""
    if isinstance(layer, L.Linear):
        return L.Linear(layer.weight.abs(), None)
    if isinstance(layer, L.Conv2d):
        return L.Conv2d(layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, L.ElementwiseAffine):
        return L.ElementwiseAffine(layer.scale.abs(), torch.zeros_like(layer.shift))
    if isinstance(layer, L.Pad):
        return L.Pad(layer.pads, 0.0)
    return layer


@PULLBACK.register(*LINEAR_OPS)
def _linear_pullback(prob: JacProblem, idx: int, layer: L.Layer, adj: Interval) -> list[Interval]:
    """Exact interval image under the adjoint (transpose) map, in mid/radius form."""
    rule = _ADJOINT.rule(layer)
    mid, rad = (adj[0] + adj[1]) / 2, (adj[1] - adj[0]) / 2
    mids, _ = rule(prob, idx, layer, mid)
    if not bool((rad > 0).any()):
        return [(m, m) for m in mids]
    key = ("abs", idx)
    if key not in prob._cache:
        prob._cache[key] = abs_layer(layer)
    rads, _ = rule(prob, idx, prob._cache[key], rad)
    return [(m - r, m + r) for m, r in zip(mids, rads)]


def scale_interval(adj: Interval, slope: Interval) -> Interval:
    """``{a * s}`` for ``a`` in ``adj`` ``[N, M, *]`` and ``s`` in ``slope`` ``[N, *]`` (``s >= 0``)."""
    dl, du = slope[0].unsqueeze(1), slope[1].unsqueeze(1)
    lo, hi = adj
    return torch.minimum(lo * dl, lo * du), torch.maximum(hi * dl, hi * du)


@PULLBACK.register(*ACTIVATIONS)
def _activation_pullback(prob: JacProblem, idx: int, layer: L.Layer, adj: Interval) -> list[Interval]:
    return [scale_interval(adj, prob.slopes[idx])]


def maxpool_candidates(prob: JacProblem, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index [K, L], cand [N, C, K, L], sole [N, C, 1, L])``: window entries that can be the
    maximum somewhere in the box, and windows with a single such entry (exact routing)."""
    key = ("pool", idx)
    if key not in prob._cache:
        node = prob.network.nodes[idx]
        lo, hi = _widen(*prob.input_values(idx))
        N, C = lo.shape[:2]
        hw = lo.shape[-2] * lo.shape[-1]
        index = window_index(node.layer, prob.in_shape(idx), node.out_shape, lo.device)
        pad = torch.full((N, C, 1), float("-inf"), dtype=lo.dtype, device=lo.device)
        lw = torch.cat([lo.reshape(N, C, hw), pad], -1)[:, :, index]
        uw = torch.cat([hi.reshape(N, C, hw), pad], -1)[:, :, index]
        cand = uw >= lw.amax(2, keepdim=True)
        prob._cache[key] = (index, cand, cand.sum(2, keepdim=True) == 1)
    return prob._cache[key]


@PULLBACK.register(L.MaxPool2d)
def _maxpool_pullback(prob: JacProblem, idx: int, layer: L.MaxPool2d, adj: Interval) -> list[Interval]:
    """Each window's adjoint goes to one candidate: ``[min(0, a), max(0, a)]`` per candidate
    (exactly ``a`` for a sole candidate), summed over the windows covering an input."""
    index, cand, sole = maxpool_candidates(prob, idx)
    N, M = adj[0].shape[:2]
    C, H, W = prob.in_shape(idx)
    out = []
    for a, clip in ((adj[0], torch.clamp_max), (adj[1], torch.clamp_min)):
        a = a.reshape(N, M, C, 1, -1)
        part = torch.where(sole.unsqueeze(1), a, clip(a, 0.0))
        part = torch.where(cand.unsqueeze(1), part, torch.zeros_like(part))  # [N, M, C, K, L]
        flat = torch.zeros(N, M, C, H * W + 1, dtype=a.dtype, device=a.device)
        flat.scatter_add_(3, index.reshape(1, 1, 1, -1).expand(N, M, C, -1), part.flatten(3))
        out.append(flat[..., :H * W].reshape(N, M, C, H, W))
    return [(out[0], out[1])]


Refine = Callable[[int, Interval, dict[int, Interval]], Interval]


def adjoint_bounds(prob: JacProblem, refine: Refine | None = None) -> dict[int, Interval]:
    """Interval adjoints ``[N, M, *shape]`` of every node (key ``-1``: the input, i.e. the
    Jacobian of each margin) by the Fast-Lip recursion, output to input.

    ``refine(idx, adj, bounds)``, if given, may tighten node ``idx``'s adjoint before it is
    pulled back (``bounds`` holds every node closer to the output).
    """
    nodes = prob.network.nodes
    last = len(nodes) - 1
    c = prob.margin()
    acc: dict[int, Interval] = {last: (c, c)}
    bounds: dict[int, Interval] = {}
    for idx in range(last, -1, -1):
        adj = acc.pop(idx, None)
        if adj is None:
            continue  # no path to the output: the adjoint is 0
        if refine is not None:
            adj = refine(idx, adj, bounds)
        bounds[idx] = adj
        layer = nodes[idx].layer
        for j, part in zip(nodes[idx].inputs, PULLBACK.rule(layer)(prob, idx, layer, adj)):
            old = acc.get(j)
            acc[j] = part if old is None else (old[0] + part[0], old[1] + part[1])
    N, M = prob.size
    zero = torch.zeros(N, M, *prob.shape(-1), dtype=c.dtype, device=c.device)
    bounds[-1] = acc.get(-1, (zero, zero))
    return bounds


def check(network: Network, registry: Registry = PULLBACK) -> None:
    """Raise :class:`~bab.bounding.base.UnsupportedLayerError` for a layer without a rule."""
    for node in network.nodes:
        registry.rule(node.layer)


# ----------------------------------------------------------------------------- fixed phases


def phase_network(network: Network, phase: dict[int, torch.Tensor], lower: torch.Tensor,
                  upper: torch.Tensor) -> tuple[Network, dict[int, int]]:
    """``g~``: each ReLU with fixed neurons becomes ``keep * (relu(z + s) - s)``.

    ``phase``: ReLU node -> ``[*shape]`` in ``{-1, 0, +1}``; ``keep`` zeroes fixed-inactive
    neurons and ``s = active * (1 + max(0, -l))`` (``l``: interval lower bound of ``z`` on the
    boxes ``lower``/``upper``) makes the ReLU the identity on fixed-active ones, so the new
    layers are single-input ops and CROWN's plan stays as cheap as on the original network.
    Returns the network and the map from old node indices to new ones (same output at every
    mapped node on the phase region).
    """
    from bab.bounding.interval.ibp import RULES as IBP_RULES

    n = lower.shape[0]
    boxes: dict[int, Interval] = {-1: (lower.reshape(n, *network.input_shape), upper.reshape(n, *network.input_shape))}
    nodes: list[L.Node] = []
    where: dict[int, int] = {-1: -1}

    def add(layer: L.Layer, ins: tuple[int, ...], shape: tuple[int, ...], name: str = "") -> int:
        nodes.append(L.Node(layer, ins, shape, name))
        boxes[len(nodes) - 1] = IBP_RULES.rule(layer)(layer, *[boxes[j] for j in ins])
        return len(nodes) - 1

    for i, node in enumerate(network.nodes):
        ins = tuple(where[j] for j in node.inputs)
        ph = phase.get(i)
        if not isinstance(node.layer, L.ReLU) or ph is None or not bool((ph != 0).any()):
            where[i] = add(node.layer, ins, node.out_shape, node.name)
            continue
        shape, dt = node.out_shape, lower.dtype
        active = (ph > 0).to(dt).reshape(shape)
        keep = (ph >= 0).to(dt).reshape(shape)
        s = active * (1 + torch.relu(-boxes[ins[0]][0]).amax(0))
        k = add(L.ElementwiseAffine(torch.ones((), dtype=dt, device=s.device), s), ins, shape)
        k = add(L.ReLU(), (k,), shape)
        where[i] = add(L.ElementwiseAffine(keep, -s * keep), (k,), shape)
    net = Network(nodes, network.input_shape, network.output_shape, network.io, network.source,
                  network.dtype)
    return net, where


def phase_groups(phases: dict[int, torch.Tensor], n: int) -> list[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
    """Domains with some fixed neuron, grouped by identical phases: ``(rows, phase)`` pairs."""
    if not phases:
        return []
    keys = sorted(phases)
    flat = torch.cat([phases[k].reshape(n, -1).to(torch.int8) for k in keys], 1)
    groups: dict[bytes, list[int]] = {}
    for i in range(n):
        if bool((flat[i] != 0).any()):
            groups.setdefault(flat[i].cpu().numpy().tobytes(), []).append(i)
    out = []
    for rows in groups.values():
        r = torch.tensor(rows, dtype=torch.long)
        out.append((r, {k: phases[k][rows[0]] for k in keys}))
    return out


# ----------------------------------------------------------------------------- box bounds


def centres(domains: Any) -> torch.Tensor:
    """The expansion point of each domain (float64): the ball's centre when the domains carry
    an ℓ2/ℓ1 ball (see :func:`ball_ok`), else the box centre."""
    if uses_ball(domains):
        return domains.center.double()
    return (domains.lower.double() + domains.upper.double()) / 2


def ball_ok(domains: Any) -> bool:
    """Whether the domains carry an ℓ2/ℓ1 ball whose centres lie in their boxes (then the
    input set ``ball ∩ box`` is convex and contains the centre)."""
    if not uses_ball(domains):
        return False
    c = domains.center
    return bool(((c >= domains.lower) & (c <= domains.upper)).all())


def centre_values(network: Network, x0: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``C f(x0)`` ``[N, M]`` in float64."""
    with torch.no_grad():
        y = network.forward(x0.double())
    return torch.bmm(C.double(), y.unsqueeze(-1)).squeeze(-1)


def spread_bounds(g0: torch.Tensor, spread: torch.Tensor) -> Interval:
    """``g0 ∓ spread ∓ slack`` (float64)."""
    slack = SLACK * (1 + g0.abs() + spread)
    return g0 - spread - slack, g0 + spread + slack


def set_bounds(network: Network, domains: Any, jac: Interval) -> Interval:
    """Bounds ``[N, M]`` of ``C f`` over each input set from Jacobian bounds valid on it.

    Box term: ``Σ_i max(|J_lo|, |J_hi|)_i d_i`` with ``d = max(|u - x0|, |x0 - l|)`` (for the
    box centre, the radii); with an ℓp ball also ``‖max(|J_lo|, |J_hi|)‖_q eps``; the smaller
    spread is kept. ``g(x0)`` in float64, minus a relative slack.
    """
    x0 = centres(domains)
    g0 = centre_values(network, x0, domains.C)
    jmax = torch.maximum(jac[0].abs(), jac[1].abs()).flatten(2)
    d = torch.maximum((domains.upper.double() - x0).abs(), (x0 - domains.lower.double()).abs())
    spread = (jmax * d.unsqueeze(1)).sum(-1)
    if uses_ball(domains):
        ball = dual_norm(jmax, DUAL[domains.p]) * domains.eps.double().unsqueeze(1)
        spread = torch.minimum(spread, ball)
    return spread_bounds(g0, spread)


def dual_norm(v: torch.Tensor, q: float) -> torch.Tensor:
    """``‖v‖_q`` over the last dimension, rounded up slightly (float64)."""
    v = v.double().abs()
    out = v.amax(-1) if math.isinf(q) else (v.sum(-1) if q == 1 else torch.linalg.vector_norm(v, q, -1))
    return out * (1 + SLACK)


def outward(lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> Interval:
    """Cast an interval to ``dtype``, rounding the ends outward."""
    a, b = lo.to(dtype), hi.to(dtype)
    inf = torch.tensor(float("inf"), dtype=dtype, device=a.device)
    a = torch.where(a.double() > lo, torch.nextafter(a, -inf), a)
    b = torch.where(b.double() < hi, torch.nextafter(b, inf), b)
    return a, b
