"""Interval bound propagation (IBP): boxes pushed through every layer.

The per-layer rules live in one registry, ``RULES``. Fixed ReLU phases are honoured: a neuron
fixed inactive outputs 0, a neuron fixed active is the identity (its input bounds clipped to
``>= 0``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bab.bounding.base import Bounds, Domains, Registry, clause_bounds
from onnx_models import layers as L
from onnx_models.network import Network

Interval = tuple[torch.Tensor, torch.Tensor]
RULES: Registry = Registry("ibp")


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` (``u``: unit roundoff of ``dtype``)."""
    u = torch.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def widen(lo: torch.Tensor, hi: torch.Tensor, err: torch.Tensor | float) -> Interval:
    """``[lo - err, hi + err]`` plus the smallest normal number (underflow)."""
    tiny = torch.finfo(lo.dtype).tiny
    return lo - err - tiny, hi + err + tiny


def _affine(lo: torch.Tensor, hi: torch.Tensor, linear, linear_abs, fan_in: int) -> Interval:
    """Mid/radius propagation through an affine map, rounded outward.

    ``linear`` includes the bias, ``linear_abs`` applies ``|W|`` without it. The float error
    of each output is at most ``gamma_{n+4} (|W| (|mid| + rad) + |b|)`` for ``n`` products per
    output (the +4 covers the mid/radius and the final additions). Since
    ``|b| <= |W mid + b| + |W| |mid|``, the quantity ``2 |W| |mid| + |W| rad + |W mid + b|``
    bounds it from above using the products already needed.
    """
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    rad = rad + torch.finfo(rad.dtype).eps * (mid.abs() + rad)  # mid/rad rounding
    centre, spread = linear(mid), linear_abs(rad)
    mag = 2 * linear_abs(mid.abs()) + spread + centre.abs()
    return widen(centre - spread, centre + spread, gamma(fan_in + 4, lo.dtype) * mag)


@RULES.register(L.Linear)
def _linear(layer: L.Linear, box: Interval) -> Interval:
    return _affine(*box, lambda x: F.linear(x, layer.weight, layer.bias),
                   lambda r: F.linear(r, layer.weight.abs()), layer.weight.shape[1])


@RULES.register(L.Conv2d)
def _conv(layer: L.Conv2d, box: Interval) -> Interval:
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    fan_in = layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3]
    return _affine(*box, lambda x: F.conv2d(x, layer.weight, layer.bias, *args),
                   lambda r: F.conv2d(r, layer.weight.abs(), None, *args), fan_in)


@RULES.register(L.ElementwiseAffine)
def _scale(layer: L.ElementwiseAffine, box: Interval) -> Interval:
    a, b = box[0] * layer.scale, box[1] * layer.scale
    lo, hi = torch.minimum(a, b) + layer.shift, torch.maximum(a, b) + layer.shift
    err = gamma(2, lo.dtype) * (torch.maximum(a.abs(), b.abs()) + layer.shift.abs())
    return widen(lo, hi, err)


@RULES.register(L.Add)
def _add(layer: L.Add, a: Interval, b: Interval) -> Interval:
    lo, hi = a[0] + b[0], a[1] + b[1]
    return widen(lo, hi, gamma(1, lo.dtype) * torch.maximum(lo.abs(), hi.abs()))


@RULES.register(L.Sigmoid, L.Tanh)
def _s_shaped(layer: L.Layer, box: Interval) -> Interval:
    """Monotone, but torch's sigmoid/tanh are not correctly rounded: a few ulps outward."""
    lo, hi = layer.forward(box[0]), layer.forward(box[1])
    eps = torch.finfo(lo.dtype).eps
    return widen(lo, hi, 4 * eps * torch.maximum(lo.abs(), hi.abs()))


@RULES.register(L.ReLU, L.MaxPool2d, L.Reshape, L.Transpose, L.Pad)
def _monotone(layer: L.Layer, box: Interval) -> Interval:
    """Layers that are monotone non-decreasing in each input: apply to both ends."""
    return layer.forward(box[0]), layer.forward(box[1])


@RULES.register(L.AvgPool2d)
def _avgpool(layer: L.AvgPool2d, box: Interval) -> Interval:
    """Monotone with non-negative weights summing to at most 1: ends, plus rounding."""
    lo, hi = layer.forward(box[0]), layer.forward(box[1])
    k = layer.kernel[0] * layer.kernel[1]
    err = gamma(k + 2, lo.dtype) * layer.forward(torch.maximum(box[0].abs(), box[1].abs()))
    return widen(lo, hi, err)


def apply_phase(box: Interval, phase: torch.Tensor | None) -> Interval:
    """Clip a ReLU's pre-activation bounds by fixed phases (+1 active, -1 inactive)."""
    if phase is None:
        return box
    lo, hi = box
    lo = torch.where(phase > 0, lo.clamp(min=0), lo)
    hi = torch.where(phase < 0, hi.clamp(max=0), hi)
    return lo, hi


def propagate(network: Network, domains: Domains) -> list[Interval]:
    """Interval bounds of every node's output (ReLU inputs clipped by the fixed phases)."""
    n = domains.size
    inp = (domains.lower.reshape(n, *network.input_shape),
           domains.upper.reshape(n, *network.input_shape))
    boxes: list[Interval] = []
    for idx, node in enumerate(network.nodes):
        args = [inp if i < 0 else boxes[i] for i in node.inputs]
        if isinstance(node.layer, L.ReLU):
            args[0] = apply_phase(args[0], domains.phases.get(idx))
        boxes.append(RULES.rule(node.layer)(node.layer, *args))
    return boxes


class IBP:
    """Interval bound propagation as a :class:`~bab.bounding.base.Bounder`.

    An ℓ2/ℓ1 input ball is bounded through its box hull (``Domains.lower/upper``): sound,
    looser than the ball.
    """

    name = "ibp"
    input_sets = {"inf": "exact", "2": "hull", "1": "hull"}

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower and upper bounds of ``C f(x)`` plus every node's interval."""
        boxes = propagate(network, domains)
        n = domains.size
        lo, hi = boxes[-1]
        lower, upper = clause_bounds(domains.C, lo.reshape(n, -1), hi.reshape(n, -1))
        return Bounds(lower=lower, upper=upper, intermediate=dict(enumerate(boxes)))


from bab.bounding.interval import graph_ops  # noqa: E402,F401  (registers the general-graph rules)
