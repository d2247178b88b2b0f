"""Function-preserving simplifications of the layer graph.

The converter emits one layer per ONNX op. These passes fold the affine pieces together so
the engine sees a chain (or a DAG, for residual ``Add``) of affine and activation layers:

* Reshape chains collapse, identity Reshapes disappear;
* consecutive ElementwiseAffine layers merge;
* Linear/Conv2d followed by an ElementwiseAffine (batch norm, scaling) absorb it;
* an ElementwiseAffine followed by Reshapes and a Linear is absorbed by the Linear;
* an ElementwiseAffine followed by a Conv2d is absorbed when that is exact (per-channel
  scale, and a per-channel shift only without conv padding);
* Linear followed by Linear merges when that does not grow the parameter count.

Folded parameters are computed in float64 and cast back to the layer dtype. A fold only
happens through a node that has exactly one consumer and is not the output.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from onnx_models.layers import Conv2d, ElementwiseAffine, Layer, Linear, Node, Reshape


class _Graph:
    """Mutable view of the node list: removed nodes are ``None``; ``output`` is tracked."""

    def __init__(self, nodes: list[Node], output: int, input_shape: tuple[int, ...]) -> None:
        self.nodes: list[Node | None] = [dataclasses.replace(n) for n in nodes]
        self.output = output
        self.input_shape = tuple(input_shape)
        self.uses: dict[int, int] = {}

    def shape(self, i: int) -> tuple[int, ...]:
        """Sample shape of node ``i``'s output (``-1``: the network input)."""
        return self.input_shape if i < 0 else tuple(self.nodes[i].out_shape)

    def layer(self, i: int) -> Layer | None:
        """The layer of node ``i`` (None for the input or a removed node)."""
        return None if i < 0 or self.nodes[i] is None else self.nodes[i].layer

    def prune(self) -> None:
        """Drop nodes the output does not depend on and recount uses."""
        live: set[int] = set()
        stack = [self.output]
        while stack:
            i = stack.pop()
            if i >= 0 and i not in live:
                live.add(i)
                stack.extend(self.nodes[i].inputs)
        self.uses = {}
        for i, n in enumerate(self.nodes):
            if i not in live:
                self.nodes[i] = None
            else:
                for j in n.inputs:
                    self.uses[j] = self.uses.get(j, 0) + 1
        self.uses[self.output] = self.uses.get(self.output, 0) + 1

    def single_use(self, i: int) -> bool:
        """Node ``i`` feeds exactly one input slot and is not the output."""
        return i >= 0 and i != self.output and self.uses.get(i, 0) == 1

    def live(self) -> list[tuple[int, Node]]:
        """The remaining nodes with their indices."""
        return [(i, n) for i, n in enumerate(self.nodes) if n is not None]

    def replace_uses(self, old: int, new: int) -> None:
        """Point every use of ``old`` (and the output) at ``new``."""
        for n in self.nodes:
            if n is not None and old in n.inputs:
                n.inputs = tuple(new if k == old else k for k in n.inputs)
        if self.output == old:
            self.output = new

    def compact(self) -> list[Node]:
        """Live nodes renumbered in order; the output is last."""
        self.prune()
        index = {i: k for k, (i, _) in enumerate(self.live())}
        out = []
        for _, n in self.live():
            out.append(dataclasses.replace(n, inputs=tuple(index.get(j, -1) if j >= 0 else j
                                                           for j in n.inputs)))
        if not out or index.get(self.output) != len(out) - 1:
            raise AssertionError("folding lost the output node")
        return out


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _expand(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` broadcast to ``shape`` in float64 (materialised)."""
    return torch.broadcast_to(_f64(t), shape).clone()


def _per_channel(t: torch.Tensor) -> torch.Tensor | None:
    """The per-channel vector of a ``[C, H, W]`` tensor, or None if it varies spatially."""
    first = t[:, :1, :1]
    return first.reshape(-1) if torch.equal(t, first.expand_as(t)) else None


def _reshapes(g: _Graph) -> bool:
    """Collapse Reshape chains and drop identity Reshapes."""
    changed = False
    for i, n in g.live():
        if not isinstance(n.layer, Reshape):
            continue
        src = n.inputs[0]
        if isinstance(g.layer(src), Reshape):
            n.inputs = (g.nodes[src].inputs[0],)
            src, changed = n.inputs[0], True
        if g.shape(src) == tuple(n.layer.shape) and (src >= 0 or i != g.output):
            g.replace_uses(i, src)
            g.nodes[i], changed = None, True
    return changed


def _affine_pairs(g: _Graph) -> bool:
    """Merge EA->EA, Linear->EA, Conv2d->EA and Linear->Linear pairs."""
    for j, n in g.live():
        i = n.inputs[0] if len(n.inputs) == 1 else -1
        if not g.single_use(i):
            continue
        first, second = g.layer(i), n.layer
        merged = _merge(first, second, g.shape(j))
        if merged is not None:
            g.nodes[j] = dataclasses.replace(n, layer=merged, inputs=g.nodes[i].inputs,
                                             name=f"{g.nodes[i].name}+{n.name}")
            g.nodes[i] = None
            return True
    return False


def _merge(first: Layer | None, second: Layer, out_shape: tuple[int, ...]) -> Layer | None:
    """The single layer equal to ``second(first(x))``, or None."""
    if isinstance(second, ElementwiseAffine):
        s, t = _expand(second.scale, out_shape), _expand(second.shift, out_shape)
        if isinstance(first, ElementwiseAffine):
            dtype = first.scale.dtype
            scale = _f64(first.scale) * _f64(second.scale)
            shift = _f64(first.shift) * _f64(second.scale) + _f64(second.shift)
            return ElementwiseAffine(scale.to(dtype), shift.to(dtype))
        if isinstance(first, Linear):
            dtype = first.weight.dtype
            w = s[:, None] * _f64(first.weight)
            return Linear(w.to(dtype), (s * _f64(first.bias) + t).to(dtype))
        if isinstance(first, Conv2d):
            sc, tc = _per_channel(s), _per_channel(t)
            if sc is None or tc is None:
                return None
            dtype = first.weight.dtype
            w = _f64(first.weight) * sc[:, None, None, None]
            return dataclasses.replace(first, weight=w.to(dtype),
                                       bias=(sc * _f64(first.bias) + tc).to(dtype))
    if isinstance(first, Linear) and isinstance(second, Linear):
        (m1, k1), (m2, _) = first.weight.shape, second.weight.shape
        if m2 * k1 > m1 * k1 + m2 * m1:
            return None
        dtype = second.weight.dtype
        w2 = _f64(second.weight)
        return Linear((w2 @ _f64(first.weight)).to(dtype),
                      (w2 @ _f64(first.bias) + _f64(second.bias)).to(dtype))
    return None


def _affine_into_linear(g: _Graph) -> bool:
    """EA -> Reshape* -> Linear: absorb the EA into the Linear."""
    for j, n in g.live():
        if not isinstance(n.layer, Linear):
            continue
        head, k = j, n.inputs[0]
        while isinstance(g.layer(k), Reshape) and g.single_use(k):
            head, k = k, g.nodes[k].inputs[0]
        if not isinstance(g.layer(k), ElementwiseAffine) or not g.single_use(k):
            continue
        ea, shape = g.nodes[k].layer, g.shape(k)
        s, t = _expand(ea.scale, shape).reshape(-1), _expand(ea.shift, shape).reshape(-1)
        w = _f64(n.layer.weight)
        dtype = n.layer.weight.dtype
        g.nodes[j] = dataclasses.replace(n, layer=Linear((w * s[None, :]).to(dtype),
                                                         (_f64(n.layer.bias) + w @ t).to(dtype)))
        g.nodes[head].inputs = g.nodes[k].inputs
        g.nodes[k] = None
        return True
    return False


def _affine_into_conv(g: _Graph) -> bool:
    """EA -> Conv2d: absorb when exact (per-channel; shift only without padding)."""
    for j, n in g.live():
        k = n.inputs[0]
        if not isinstance(n.layer, Conv2d) or not isinstance(g.layer(k), ElementwiseAffine) \
                or not g.single_use(k):
            continue
        conv, ea, shape = n.layer, g.nodes[k].layer, g.shape(k)
        sc, tc = _per_channel(_expand(ea.scale, shape)), _per_channel(_expand(ea.shift, shape))
        if sc is None or tc is None or (any(conv.padding) and bool(tc.any())):
            continue
        out_ch, cg = conv.weight.shape[:2]
        group = torch.arange(out_ch) // (out_ch // conv.groups)
        idx = group[:, None] * cg + torch.arange(cg)[None, :]  # input channel of W[o, i]
        w = _f64(conv.weight)
        dtype = conv.weight.dtype
        new_w = w * sc[idx][:, :, None, None]
        new_b = _f64(conv.bias) + (w * tc[idx][:, :, None, None]).sum(dim=(1, 2, 3))
        g.nodes[j] = dataclasses.replace(n, layer=dataclasses.replace(
            conv, weight=new_w.to(dtype), bias=new_b.to(dtype)), inputs=g.nodes[k].inputs)
        g.nodes[k] = None
        return True
    return False


PASSES: tuple[Callable[[_Graph], bool], ...] = (
    _reshapes, _affine_pairs, _affine_into_linear, _affine_into_conv)


def fold(nodes: list[Node], output: int, input_shape: tuple[int, ...]) -> list[Node]:
    """Apply every pass until nothing changes; returns renumbered nodes, output last."""
    g = _Graph(nodes, output, input_shape)
    changed = True
    while changed:
        changed = False
        for fold_pass in PASSES:
            g.prune()
            while fold_pass(g):
                g.prune()
                changed = True
    return g.compact()
