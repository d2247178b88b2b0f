"""Typed layers of the verifiable network.

Every layer acts on a batch: its input tensors are ``[B, *sample_shape]`` where the sample
shape excludes the batch dimension. Parameters are torch tensors in the network's dtype.
Bounding methods dispatch on the layer class (one registry per method), so keep this set
small: affine layers, activations, pooling, and shape ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(eq=False)
class Layer:
    """Base class: ``forward`` maps the input tensors to one output tensor."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """The layer's parameter tensors by attribute name (for dtype/device moves)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    @property
    def kind(self) -> str:
        """Short op name used in messages."""
        return type(self).__name__


@dataclass(eq=False)
class Linear(Layer):
    """``y = x @ weight.T + bias`` on 1-D samples (``weight``: [out, in], ``bias``: [out])."""

    weight: torch.Tensor
    bias: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass(eq=False)
class Conv2d(Layer):
    """2-D convolution on ``[C, H, W]`` samples with symmetric zero padding."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


@dataclass(eq=False)
class ElementwiseAffine(Layer):
    """``y = x * scale + shift``; both broadcast against the sample shape (no batch dim)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@dataclass(eq=False)
class Add(Layer):
    """Sum of two node outputs of the same shape (residual connections)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


@dataclass(eq=False)
class ReLU(Layer):
    """``max(x, 0)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


@dataclass(eq=False)
class Sigmoid(Layer):
    """Logistic sigmoid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@dataclass(eq=False)
class Tanh(Layer):
    """Hyperbolic tangent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@dataclass(eq=False)
class Pad(Layer):
    """Constant padding of a ``[C, H, W]`` sample; ``pads`` in F.pad order (left, right, top, bottom)."""

    pads: tuple[int, ...]
    value: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, mode="constant", value=self.value)


@dataclass(eq=False)
class AvgPool2d(Layer):
    """Average pooling (an affine map)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    count_include_pad: bool = True
    ceil_mode: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)


@dataclass(eq=False)
class MaxPool2d(Layer):
    """Max pooling (padding with -inf, as ONNX does)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation,
                            self.ceil_mode)


@dataclass(eq=False)
class Reshape(Layer):
    """Reshape each sample to ``shape`` (Flatten and Reshape both map here)."""

    shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


@dataclass(eq=False)
class Transpose(Layer):
    """Permute the sample axes by ``perm`` (indices into the sample shape)."""

    perm: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, *(p + 1 for p in self.perm))


@dataclass(eq=False)
class Node:
    """A layer applied to earlier nodes' outputs; input index ``-1`` is the network input."""

    layer: Layer
    inputs: tuple[int, ...]
    out_shape: tuple[int, ...] = field(default=())
    name: str = ""
