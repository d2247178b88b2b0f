"""Networks built directly in our IR (no ONNX), for bounding and attack tests."""

from __future__ import annotations

import math

import torch

from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO


def chain(layers: list[L.Layer], input_shape: tuple[int, ...], dtype=torch.float32) -> Network:
    """A chain network; output shapes are found by running a zero input through it."""
    nodes: list[L.Node] = []
    h = torch.zeros(1, *input_shape, dtype=dtype)
    for i, layer in enumerate(layers):
        h = layer.forward(h)
        nodes.append(L.Node(layer, (i - 1,), tuple(h.shape[1:])))
    io = OnnxIO("x", (1, *input_shape), str(dtype).replace("torch.", ""), "y",
                (1, math.prod(h.shape[1:])), True)
    return Network(nodes, input_shape, tuple(h.shape[1:]), io, dtype=dtype)


def hand_221() -> Network:
    """x in R^2 -> [x1+x2, x1-x2] -> ReLU -> sum: a 2-2-1 network with hand-computable bounds."""
    t = torch.tensor
    return chain([L.Linear(t([[1.0, 1.0], [1.0, -1.0]]), t([0.0, 0.0])), L.ReLU(),
                  L.Linear(t([[1.0, 1.0]]), t([0.0]))], (2,))


def random_mlp(sizes: list[int], seed: int = 0, act: type[L.Layer] = L.ReLU) -> Network:
    """A random fully connected network in the IR."""
    g = torch.Generator().manual_seed(seed)
    layers: list[L.Layer] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(L.Linear(torch.randn(b, a, generator=g) / math.sqrt(a), 0.1 * torch.randn(b, generator=g)))
        if i < len(sizes) - 2:
            layers.append(act())
    return chain(layers, (sizes[0],))


def small_cnn(seed: int = 0) -> Network:
    """Normalise, pad, conv, ReLU, max-pool, avg-pool, flatten, linear on a 1x6x6 input."""
    g = torch.Generator().manual_seed(seed)
    layers = [
        L.ElementwiseAffine(torch.tensor(2.0), torch.tensor(-0.5)),
        L.Pad((1, 1, 1, 1)),
        L.Conv2d(torch.randn(3, 1, 3, 3, generator=g) / 3, 0.1 * torch.randn(3, generator=g)),
        L.ReLU(),
        L.MaxPool2d((2, 2), (2, 2)),
        L.AvgPool2d((2, 2), (1, 1)),
        L.Transpose((0, 2, 1)),
        L.Reshape((12,)),
        L.Sigmoid(),
        L.Linear(torch.randn(4, 12, generator=g) / 3, torch.zeros(4)),
        L.Tanh(),
    ]
    return chain(layers, (1, 6, 6))
