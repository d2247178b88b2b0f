"""IBP rules for the general-graph layers that are affine in their inputs (Gather, Concat,
ReduceSum, ConvTranspose2d). The nonlinear general-graph layers register from
:mod:`~bab.bounding.interval.elementwise` and :mod:`~bab.bounding.interval.bilinear`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bab.bounding.interval.ibp import RULES, Interval
from onnx_models import layers as L


@RULES.register(L.Gather)
def _gather(layer: L.Gather, box: Interval) -> Interval:
    return layer.forward(box[0]), layer.forward(box[1])


@RULES.register(L.Concat)
def _concat(layer: L.Concat, *boxes: Interval) -> Interval:
    return layer.forward(*(b[0] for b in boxes)), layer.forward(*(b[1] for b in boxes))


@RULES.register(L.ReduceSum)
def _reduce_sum(layer: L.ReduceSum, box: Interval) -> Interval:
    return layer.forward(box[0]), layer.forward(box[1])


@RULES.register(L.ConvTranspose2d)
def _conv_transpose(layer: L.ConvTranspose2d, box: Interval) -> Interval:
    lo, hi = box
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    args = (layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
    centre = F.conv_transpose2d(mid, layer.weight, layer.bias, *args)
    spread = F.conv_transpose2d(rad, layer.weight.abs(), None, *args)
    return centre - spread, centre + spread


from bab.bounding.interval import bilinear, elementwise  # noqa: E402,F401  (register rules)
