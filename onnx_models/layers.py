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
        """The layer's floating-point parameter tensors by attribute name (dtype/device moves)."""
        return {k: v for k, v in self.all_tensors().items() if v.is_floating_point()}

    def all_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor attribute, integer index tensors included (device moves)."""
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


# --- General computational graphs (VNN-COMP 2022-2024) -------------------------------------
# LeakyRelu, Abs, Clip and Max/Min of two tensors are not layers: the front end writes them
# exactly with ReLU (``leaky(x) = a x + (1 - a) relu(x)``, ``|x| = relu(x) + relu(-x)``,
# ``max(a, b) = a + relu(b - a)``), whose CROWN relaxations coincide with the direct ones and
# which ReLU-split BaB already branches on. Division by a tensor is ``Mul(x, Reciprocal(y))``.


@dataclass(eq=False)
class Unary(Layer):
    """Base of the parameter-free elementwise nonlinearities below (one input, same shape)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@dataclass(eq=False)
class Exp(Unary):
    """``exp(x)``."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


@dataclass(eq=False)
class Log(Unary):
    """Natural logarithm (``-inf`` at 0, NaN below, as ONNX)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


@dataclass(eq=False)
class Sqrt(Unary):
    """Square root (NaN below 0, as ONNX)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


@dataclass(eq=False)
class Reciprocal(Unary):
    """``1 / x``."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.reciprocal(x)


@dataclass(eq=False)
class Sin(Unary):
    """``sin(x)``."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


@dataclass(eq=False)
class Cos(Unary):
    """``cos(x)``."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x)


@dataclass(eq=False)
class Sign(Unary):
    """``sign(x)`` in {-1, 0, 1} (a step function)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)


@dataclass(eq=False)
class Floor(Unary):
    """``floor(x)`` (a step function)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)


@dataclass(eq=False)
class Pow(Unary):
    """``x ** exponent`` for a constant exponent (integer or fractional; ONNX Pow semantics:
    a fractional power of a negative number is NaN)."""

    exponent: float = 2.0

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        e = self.exponent
        return torch.pow(x, int(e)) if float(e).is_integer() else torch.pow(x, e)


@dataclass(eq=False)
class Softmax(Layer):
    """Softmax along sample axis ``axis`` (0-based, batch excluded)."""

    axis: int = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self._dim(x))

    def _dim(self, x: torch.Tensor) -> int:
        return self.axis + 1 if self.axis >= 0 else self.axis + x.dim()


@dataclass(eq=False)
class Mul(Layer):
    """Elementwise product of two input-dependent tensors of the same sample shape."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


@dataclass(eq=False)
class MatMul(Layer):
    """Product of two input-dependent tensors: ``a [.., m, k] @ b [.., k, n]`` on the samples
    (leading sample axes must agree; no broadcasting)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


@dataclass(eq=False)
class ReduceSum(Layer):
    """Sum over sample axes ``axes`` (0-based, batch excluded); ``keepdims`` as ONNX.
    ReduceMean is a ReduceSum followed by an ElementwiseAffine."""

    axes: tuple[int, ...]
    keepdims: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=tuple(a + 1 for a in self.axes), keepdim=self.keepdims)


@dataclass(eq=False)
class Gather(Layer):
    """Pick flat sample positions: ``y.flatten(1) = x.flatten(1)[:, index]``, reshaped to
    ``shape``. Slice, Gather with constant indices, Split, Expand, Tile and nearest Resize
    on input-dependent tensors are all this layer (``index``: int64, one entry per output)."""

    index: torch.Tensor
    shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, self.index].reshape(x.shape[0], *self.shape)


@dataclass(eq=False)
class Concat(Layer):
    """Concatenate the inputs along sample axis ``axis`` (0-based, batch excluded)."""

    axis: int

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis + 1)


@dataclass(eq=False)
class ConvTranspose2d(Layer):
    """Transposed 2-D convolution on ``[C, H, W]`` samples (``weight``: [C_in, C_out/groups, kh, kw])."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


@dataclass(eq=False)
class Node:
    """A layer applied to earlier nodes' outputs; input index ``-1`` is the network input."""

    layer: Layer
    inputs: tuple[int, ...]
    out_shape: tuple[int, ...] = field(default=())
    name: str = ""
