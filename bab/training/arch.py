"""Architecture presets: scaled-down versions of the SoK's FCNN-A/B/C and CNN-A/B/C/D.

Every preset is a list of layer specs; :func:`build` instantiates it for the data's sample
shape and class count, seeded. The torch module takes *flat* inputs ``[B, n_in]`` (the
verifier's convention) and reshapes them to the sample shape itself. :func:`to_network`
gives the same function as an :class:`onnx_models.Network` whose layers share the module's
parameter tensors, so the project's bounders (IBP, CROWN) run on it with gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bab.training.errors import TrainingError
from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO


@dataclass(frozen=True)
class Conv:
    """A ``k x k`` convolution with ``channels`` outputs, ``stride`` and zero ``padding``."""

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class Dense:
    """A fully connected layer of ``width`` units."""

    width: int


Spec = tuple[Conv | Dense, ...]
PRESETS: dict[str, Spec] = {
    "fcnn-a": (Dense(20), Dense(20)),
    "fcnn-b": (Dense(100),) * 3,
    "fcnn-c": (Dense(256),) * 7,
    "cnn-a": (Conv(16, 4, 2, 1), Conv(32, 4, 2, 1), Dense(100)),
    "cnn-b": (Conv(16, 3, 1, 1), Conv(32, 4, 2, 1), Dense(128)),
    "cnn-c": (Conv(16, 3, 1, 1), Conv(16, 4, 2, 1), Conv(32, 3, 1, 1), Conv(32, 4, 2, 1),
              Dense(256), Dense(256)),
    "cnn-d": (Conv(16, 3, 1, 1), Conv(16, 3, 1, 1), Conv(32, 3, 2, 1), Conv(32, 3, 1, 1),
              Conv(32, 3, 1, 1), Dense(256)),
}
"""Hidden layers of each preset (a ReLU after each; a final Dense(n_classes) is added)."""
ARCHS = tuple(PRESETS)


class Classifier(nn.Module):
    """A ReLU classifier on flat inputs: ``forward([B, n_in]) -> [B, n_classes]``."""

    def __init__(self, arch: str, input_shape: tuple[int, ...], body: nn.Sequential) -> None:
        super().__init__()
        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.body = body

    @property
    def n_inputs(self) -> int:
        """Flat input size."""
        return math.prod(self.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], *self.input_shape))


def _conv_out(size: int, c: Conv) -> int:
    return (size + 2 * c.padding - c.kernel) // c.stride + 1


def check_arch(arch: str, sample_shape: tuple[int, ...]) -> Spec:
    """The preset's spec, or :class:`TrainingError` (unknown name, conv on flat data, an
    image too small for the preset's convolutions)."""
    if arch not in PRESETS:
        raise TrainingError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    spec = PRESETS[arch]
    convs = [c for c in spec if isinstance(c, Conv)]
    if convs and len(sample_shape) != 3:
        raise TrainingError(f"{arch} is a conv net: it needs image data ([N, C, H, W] or "
                            f"[N, H, W]), got flat samples of shape {list(sample_shape)}; use "
                            "an fcnn-* preset")
    h = min(sample_shape[1:]) if convs else 1
    for c in convs:
        h = _conv_out(h, c)
        if h < 1:
            raise TrainingError(f"{arch}: images of shape {list(sample_shape)} are too small "
                                "for its convolutions")
    return spec


def _init(layer: nn.Conv2d | nn.Linear, gen: torch.Generator) -> None:
    """Uniform ``±1/sqrt(fan_in)`` weights and biases from ``gen`` (not the global RNG)."""
    fan_in = layer.weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)


def build(arch: str, sample_shape: tuple[int, ...], n_classes: int, seed: int = 0) -> Classifier:
    """The preset ``arch`` for samples of ``sample_shape`` and ``n_classes`` outputs."""
    spec = check_arch(arch, tuple(sample_shape))
    gen = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    shape = tuple(sample_shape)
    for item in spec:
        if isinstance(item, Conv):
            mods.append(nn.Conv2d(shape[0], item.channels, item.kernel, item.stride, item.padding))
            shape = (item.channels, _conv_out(shape[1], item), _conv_out(shape[2], item))
        else:
            if len(shape) > 1:
                mods.append(nn.Flatten())
                shape = (math.prod(shape),)
            mods.append(nn.Linear(shape[0], item.width))
            shape = (item.width,)
        mods.append(nn.ReLU())
    if len(shape) > 1:
        mods.append(nn.Flatten())
        shape = (math.prod(shape),)
    mods.append(nn.Linear(shape[0], n_classes))
    for m in mods:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _init(m, gen)
    return Classifier(arch, tuple(sample_shape), nn.Sequential(*mods))


def _ir_layer(m: nn.Module, shape: tuple[int, ...]) -> L.Layer:
    """The IR layer for one module, sharing its parameter tensors (no copy, no detach)."""
    if isinstance(m, nn.Conv2d):
        return L.Conv2d(m.weight, m.bias, tuple(m.stride), tuple(m.padding), tuple(m.dilation),
                        m.groups)
    if isinstance(m, nn.Linear):
        return L.Linear(m.weight, m.bias)
    if isinstance(m, nn.ReLU):
        return L.ReLU()
    if isinstance(m, nn.Flatten):
        return L.Reshape((math.prod(shape),))
    raise TypeError(f"no IR layer for {type(m).__name__}")  # pragma: no cover - presets only


def to_network(model: Classifier) -> Network:
    """``model`` as a verifier :class:`Network` (same function; shared, trainable weights)."""
    nodes: list[L.Node] = []
    shape = model.input_shape
    with torch.no_grad():
        h = torch.zeros(1, *shape)
        for i, m in enumerate(model.body):
            layer = _ir_layer(m, tuple(h.shape[1:]))
            h = m(h)
            nodes.append(L.Node(layer, (i - 1,), tuple(h.shape[1:]), f"{type(m).__name__}_{i}"))
    out = tuple(h.shape[1:])
    io = OnnxIO("input", (1, *shape), "float32", "output", (1, *out), True)
    return Network(nodes, tuple(shape), out, io, source=f"bab.training:{model.arch}")


def describe(model: Classifier) -> list[str]:
    """One line per layer, e.g. ``Conv2d(1->16, k4, s2, p1) -> [16, 4, 4]``."""
    lines, h = [f"input {list(model.input_shape)}"], torch.zeros(1, *model.input_shape)
    with torch.no_grad():
        for m in model.body:
            h = m(h)
            if isinstance(m, nn.Conv2d):
                name = (f"Conv2d({m.in_channels}->{m.out_channels}, k{m.kernel_size[0]}, "
                        f"s{m.stride[0]}, p{m.padding[0]})")
            elif isinstance(m, nn.Linear):
                name = f"Linear({m.in_features}->{m.out_features})"
            else:
                name = type(m).__name__
            lines.append(f"{name} -> {list(h.shape[1:])}")
    return lines
