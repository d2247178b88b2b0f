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


def _affine(lo: torch.Tensor, hi: torch.Tensor, linear, linear_abs) -> Interval:
    """Mid/radius propagation through an affine map."""
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    centre, spread = linear(mid), linear_abs(rad)
    return centre - spread, centre + spread


@RULES.register(L.Linear)
def _linear(layer: L.Linear, box: Interval) -> Interval:
    return _affine(*box, lambda x: F.linear(x, layer.weight, layer.bias),
                   lambda r: F.linear(r, layer.weight.abs()))


@RULES.register(L.Conv2d)
def _conv(layer: L.Conv2d, box: Interval) -> Interval:
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    return _affine(*box, lambda x: F.conv2d(x, layer.weight, layer.bias, *args),
                   lambda r: F.conv2d(r, layer.weight.abs(), None, *args))


@RULES.register(L.ElementwiseAffine)
def _scale(layer: L.ElementwiseAffine, box: Interval) -> Interval:
    a, b = box[0] * layer.scale, box[1] * layer.scale
    return torch.minimum(a, b) + layer.shift, torch.maximum(a, b) + layer.shift


@RULES.register(L.Add)
def _add(layer: L.Add, a: Interval, b: Interval) -> Interval:
    return a[0] + b[0], a[1] + b[1]


@RULES.register(L.ReLU, L.Sigmoid, L.Tanh, L.MaxPool2d, L.Reshape, L.Transpose, L.Pad)
def _monotone(layer: L.Layer, box: Interval) -> Interval:
    """Layers that are monotone non-decreasing in each input: apply to both ends."""
    return layer.forward(box[0]), layer.forward(box[1])


@RULES.register(L.AvgPool2d)
def _avgpool(layer: L.AvgPool2d, box: Interval) -> Interval:
    return layer.forward(box[0]), layer.forward(box[1])


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
