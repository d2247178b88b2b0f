"""Global Lipschitz constants as a product of operator norms (Szegedy et al. 2014).

For each node a *gain* bounds how far its output can move per unit of input movement in the
threat model's norm ``p``; gains compose through the DAG by one per-op rule in :data:`RULES`:
linear ops multiply by their induced norm ``‖A‖_{p->p}`` (``ℓ∞``: max absolute row sum,
``ℓ1``: max absolute column sum, both exact; ``ℓ2``: the float64 SVD of the weight or of the
unrolled op when small, else ``sqrt(‖A‖_1 ‖A‖_∞)``, a sound Riesz-Thorin bound; all times
``1 + 1e-9``), ReLU/Tanh by 1, Sigmoid by 1/4, max-pool by ``K^(1/p)`` (``K``: the most windows
sharing an input; 1 in ``ℓ∞``), Add sums its inputs' gains. The margin ``c · f`` is folded back
through the trailing chain of linear ops, then ``L = ‖c'‖_q · gain`` with ``q`` dual to ``p``.

In ``ℓ∞`` a gain is a vector (``|Δh_i| <= gain_i ‖Δu‖_∞``) so that a Bounder can fold the box
radii ``r`` (``x = x0 + r ⊙ u``) and fixed-inactive ReLUs (gain 0) into the next mixing op
exactly; mixing ops collapse it back to their operator norm (the max), which keeps this the
op-norm method rather than interval arithmetic. Fixed phases give ``g~`` (see
:mod:`~bab.bounding.lipschitz.jacobian`): the Bounder keeps the better of the bounds of ``g``
and ``g~``.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from bab.bounding.balls import uses_ball
from bab.bounding.base import Bounds, Domains, Registry
from bab.bounding.lipschitz import jacobian as jac
from bab.bounding.polyhedra.crown import prepare
from onnx_models import layers as L
from onnx_models.network import Network

RULES: Registry = Registry("lipschitz-opnorm")
MIXING = (L.Linear, L.Conv2d, L.AvgPool2d)
DIAGONAL = (L.ElementwiseAffine, L.Pad, L.Reshape, L.Transpose)
SAFETY = 1 + 1e-9
UNROLL_LIMIT = 1 << 22  # largest unrolled op (entries) whose spectral norm comes from an SVD
_NORMS: "weakref.WeakKeyDictionary[L.Layer, dict]" = weakref.WeakKeyDictionary()


def abs_forward(layer: L.Layer, v: torch.Tensor) -> torch.Tensor:
    """``|A| v`` for a linear op ``A`` (no bias) on a batch ``[B, *in_shape]``."""
    a = jac.abs_layer(layer)
    if isinstance(a, L.Linear):
        return F.linear(v, a.weight)
    if isinstance(a, L.Conv2d):
        return F.conv2d(v, a.weight, None, a.stride, a.padding, a.dilation, a.groups)
    if isinstance(a, L.ElementwiseAffine):
        return v * a.scale
    return a.forward(v)


def linear_map(layer: L.Layer, v: torch.Tensor) -> torch.Tensor:
    """``A v`` (the op without its bias or pad value)."""
    if isinstance(layer, L.Linear):
        return F.linear(v, layer.weight)
    if isinstance(layer, L.Conv2d):
        return F.conv2d(v, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, L.ElementwiseAffine):
        return v * layer.scale
    if isinstance(layer, L.Pad):
        return F.pad(v, layer.pads, value=0.0)
    return layer.forward(v)


def op_norm(layer: L.Layer, in_shape: tuple[int, ...], p: float) -> float:
    """``‖A‖_{p->p}`` of a linear op, rounded up (cached per layer)."""
    cache = _NORMS.setdefault(layer, {})
    key = (tuple(in_shape), p)
    if key not in cache:
        cache[key] = _op_norm(layer, in_shape, p) * SAFETY
    return cache[key]


def _op_norm(layer: L.Layer, in_shape: tuple[int, ...], p: float) -> float:
    params = list(layer.tensors().values())
    kw = dict(dtype=torch.float64, device=params[0].device if params else None)
    if isinstance(layer, L.Linear) and p == 2:
        return float(torch.linalg.matrix_norm(layer.weight.to(torch.float64), 2))
    x = torch.ones(1, *in_shape, **kw)
    norm_inf = float(abs_forward(_f64(layer), x).max())
    if math.isinf(p):
        return norm_inf
    x = torch.zeros(1, *in_shape, **kw, requires_grad=True)
    with torch.enable_grad():
        col = torch.autograd.grad(abs_forward(_f64(layer), x).sum(), x)[0]
    norm_1 = float(col.max())
    if p == 1:
        return norm_1
    n_in = math.prod(in_shape)
    n_out = math.prod(linear_map(_f64(layer), torch.zeros(1, *in_shape, **kw)).shape[1:])
    if n_in * n_out <= UNROLL_LIMIT:
        A = linear_map(_f64(layer), torch.eye(n_in, **kw).reshape(n_in, *in_shape)).reshape(n_in, -1)
        return float(torch.linalg.matrix_norm(A, 2))
    return math.sqrt(norm_1 * norm_inf)


def _f64(layer: L.Layer) -> L.Layer:
    """A float64 copy of a layer's parameters (a new layer object)."""
    kw = {k: v.to(torch.float64) for k, v in layer.tensors().items()}
    return type(layer)(**{**{f: getattr(layer, f) for f in layer.__dataclass_fields__}, **kw})


def pool_overlap(layer: L.MaxPool2d) -> int:
    """Most windows any input position belongs to (an upper bound)."""
    out = 1
    for k, s, d in zip(layer.kernel, layer.stride, layer.dilation):
        out *= min(k, math.ceil(((k - 1) * d + 1) / s))
    return out


# A gain is [N] (a scalar per domain) or, in ℓ∞ only, a vector [N, *shape].


def _scalar(g: torch.Tensor) -> torch.Tensor:
    return g if g.dim() == 1 else g.flatten(1).amax(1)


@RULES.register(*MIXING, *DIAGONAL)
def _linear(net: Network, idx: int, layer: L.Layer, p: float, g: torch.Tensor) -> torch.Tensor:
    if g.dim() > 1:  # ℓ∞ vector gain: exact for diagonal ops, collapsed by mixing ops
        out = abs_forward(layer, g)
        return _scalar(out) if isinstance(layer, MIXING) else out
    in_shape = tuple(net.input_shape) if net.nodes[idx].inputs[0] < 0 else net.nodes[net.nodes[idx].inputs[0]].out_shape
    return g * op_norm(layer, in_shape, p)


@RULES.register(L.ReLU, L.Tanh)
def _one(net: Network, idx: int, layer: L.Layer, p: float, g: torch.Tensor) -> torch.Tensor:
    return g


@RULES.register(L.Sigmoid)
def _quarter(net: Network, idx: int, layer: L.Layer, p: float, g: torch.Tensor) -> torch.Tensor:
    return g * 0.25


@RULES.register(L.MaxPool2d)
def _maxpool(net: Network, idx: int, layer: L.MaxPool2d, p: float, g: torch.Tensor) -> torch.Tensor:
    return _scalar(g) if math.isinf(p) else g * pool_overlap(layer) ** (1 / p) * SAFETY


@RULES.register(L.Add)
def _add(net: Network, idx: int, layer: L.Add, p: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() > 1 and b.dim() > 1 and a.shape == b.shape:
        return a + b
    return _scalar(a) + _scalar(b)


def _tail(net: Network) -> tuple[int, list[int]]:
    """The trailing chain of single-input linear ops with one consumer: ``(start, chain)``;
    the margin is folded back through ``chain`` onto node ``start``'s output."""
    uses: dict[int, int] = {}
    for node in net.nodes:
        for j in node.inputs:
            uses[j] = uses.get(j, 0) + 1
    k, chain = len(net.nodes) - 1, []
    while k >= 0 and isinstance(net.nodes[k].layer, MIXING + DIAGONAL) and len(net.nodes[k].inputs) == 1:
        chain.append(k)
        k = net.nodes[k].inputs[0]
        if k >= 0 and uses.get(k, 0) != 1:
            break
    return k, chain


def gains(net: Network, p: float, start: torch.Tensor,
          masks: dict[int, torch.Tensor] | None = None, upto: int | None = None) -> torch.Tensor:
    """Gain of node ``upto`` (default: the last) from an input gain ``start`` (``[N]`` or, for
    ``ℓ∞``, ``[N, *input_shape]``); ``masks``: per ReLU node ``[N, *shape]`` multipliers (0 for
    fixed-inactive neurons; ``ℓ∞`` only)."""
    upto = len(net.nodes) - 1 if upto is None else upto
    vals: list[torch.Tensor] = []
    for idx, node in enumerate(net.nodes[:upto + 1]):
        args = [start if j < 0 else vals[j] for j in node.inputs]
        g = RULES.rule(node.layer)(net, idx, node.layer, p, *args)
        if masks and idx in masks:
            g = (g.reshape(-1, *[1] * len(node.out_shape)) if g.dim() == 1 else g) * masks[idx]
        vals.append(g)
    return start if upto < 0 else vals[upto]


def margin_constants(net: Network, C: torch.Tensor, p: float, start: torch.Tensor,
                     masks: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Lipschitz bounds ``[N, M]`` of each margin ``C[n, m] · f`` in the dual norm of ``p``."""
    for node in net.nodes:
        RULES.rule(node.layer)
    k, chain = _tail(net)
    N, M = C.shape[:2]
    c = C.to(torch.float64).reshape(N, M, *net.output_shape)
    ctx = jac.JacProblem(net, C, C, C, {})
    for idx in chain:  # exact adjoint of the trailing linear ops
        c = jac.PULLBACK.rule(net.nodes[idx].layer)(ctx, idx, net.nodes[idx].layer, (c, c))[0][0]
    g = gains(net, p, start, masks, upto=k)
    if g.dim() > 1:  # ℓ∞ with a vector gain: weighted ℓ1 norm of the folded margin
        return (c.abs() * g.unsqueeze(1)).flatten(2).sum(-1) * SAFETY
    return jac.dual_norm(c.flatten(2), _dual(p)) * g.unsqueeze(1)


def _dual(p: float) -> float:
    return 1.0 if math.isinf(p) else (math.inf if p == 1 else p / (p - 1))


class OpNorm:
    """The op-norm Lipschitz bound as a :class:`~bab.bounding.base.Bounder`.

    Box (``ℓ∞`` geometry): ``g(x) >= g(x0) - L_d`` with the distances
    ``d = max(|u - x0|, |x0 - l|)`` folded into the gains. An ℓ2/ℓ1 ball (∩ box) is expanded
    at its centre and also gives ``g(x0) - L_p eps``; the better bound is kept.
    """

    name = "lipschitz-opnorm"
    input_sets = {"inf": "exact", "2": "exact", "1": "exact"}

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower and upper bounds of ``C f(x)`` over each input set (no intermediate intervals)."""
        net, dom = prepare(network, domains, torch.float64)
        with torch.no_grad():
            lo, hi = self._sets(net, net, dom, None)
            for rows, phase in jac.phase_groups(dom.phases, dom.size):
                masks = {k: (v >= 0).to(torch.float64).unsqueeze(0) for k, v in phase.items()}
                pnet, _ = jac.phase_network(net, phase, dom.lower[rows], dom.upper[rows])
                sub = Domains(dom.lower[rows], dom.upper[rows], dom.C[rows], **dom.ball_of(rows))
                plo, phi = self._sets(pnet, net, sub, masks)
                lo[rows], hi[rows] = torch.maximum(lo[rows], plo), torch.minimum(hi[rows], phi)
        lower, upper = jac.outward(lo, hi, domains.lower.dtype)
        return Bounds(lower=lower, upper=upper)

    @staticmethod
    def _sets(net: Network, base: Network, dom: Domains, masks: dict | None) -> jac.Interval:
        """``g(x0) ∓ L``: centre value from ``net`` (the phase network ``g~`` or the network
        itself), gains from ``base`` with ``masks`` (fixed-inactive neurons zeroed)."""
        x0 = jac.centres(dom)
        g0 = jac.centre_values(net, x0, dom.C)
        d = torch.maximum((dom.upper.double() - x0).abs(), (x0 - dom.lower.double()).abs())
        spread = margin_constants(base, dom.C, math.inf, d.reshape(dom.size, *net.input_shape), masks)
        if uses_ball(dom):
            p = math.inf if dom.p == "inf" else float(dom.p)
            one = torch.ones(dom.size, dtype=torch.float64, device=dom.lower.device)
            ball = margin_constants(base, dom.C, p, one) * dom.eps.double().unsqueeze(1)
            spread = torch.minimum(spread, ball)
        return jac.spread_bounds(g0, spread)
