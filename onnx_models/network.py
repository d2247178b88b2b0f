"""The network the verifier sees: a topologically ordered DAG of typed layers.

Inputs and outputs are *flat*: ``forward`` takes ``[B, n_inputs]`` in VNN-LIB ``X_i`` order
(the ONNX input flattened in C order) and returns ``[B, n_outputs]`` in ``Y_j`` order. The
first step reshapes to ``input_shape`` (the ONNX input shape without its batch dimension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from onnx_models.layers import Layer, Node


@dataclass(frozen=True)
class OnnxIO:
    """How to feed and read the original ONNX file (for onnxruntime replay)."""

    input_name: str
    input_shape: tuple[int, ...]  # full ONNX shape, symbolic/zero dims set to 1
    input_dtype: str  # numpy dtype name, e.g. "float32" or "float64"
    output_name: str
    output_shape: tuple[int, ...]
    has_batch_dim: bool


@dataclass(eq=False)
class Network:
    """A verifiable network; ``nodes[-1]`` is the output."""

    nodes: list[Node]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    io: OnnxIO
    source: str = ""
    dtype: torch.dtype = torch.float32
    meta: dict = field(default_factory=dict)

    @property
    def n_inputs(self) -> int:
        """Number of input scalars (VNN-LIB ``X`` variables)."""
        return math.prod(self.input_shape)

    @property
    def n_outputs(self) -> int:
        """Number of output scalars (VNN-LIB ``Y`` variables)."""
        return math.prod(self.output_shape)

    @property
    def layers(self) -> list[Layer]:
        """The layers in topological order."""
        return [n.layer for n in self.nodes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on a flat batch ``[B, n_inputs]`` and return ``[B, n_outputs]``."""
        values = self.forward_all(x)
        return values[-1].reshape(x.shape[0], -1)

    __call__ = forward

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every node's output for a flat batch (index ``i`` is node ``i``)."""
        h = x.reshape(x.shape[0], *self.input_shape)
        values: list[torch.Tensor] = []
        for node in self.nodes:
            args = [h if i < 0 else values[i] for i in node.inputs]
            values.append(node.layer.forward(*args))
        return values

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """Numpy convenience: ``[B, n_in]`` or ``[n_in]`` in, float64 ``[B, n_out]`` out."""
        xt = torch.as_tensor(np.atleast_2d(x), dtype=self.dtype)
        with torch.no_grad():
            return self.forward(xt).double().numpy()

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> "Network":
        """Move every parameter tensor in place; returns ``self``."""
        for node in self.nodes:
            for name, t in node.layer.all_tensors().items():
                keep = dtype is None or not t.is_floating_point()  # index tensors stay int64
                setattr(node.layer, name, t.to(dtype=t.dtype if keep else dtype, device=device or t.device))
        if dtype is not None:
            self.dtype = dtype
        return self

    def summary(self) -> str:
        """One line per node: index, op, inputs and output shape."""
        rows = [f"input {self.input_shape}"]
        for i, n in enumerate(self.nodes):
            rows.append(f"{i:3d} {n.layer.kind:<18} in={list(n.inputs)} out={n.out_shape}")
        return "\n".join(rows)
