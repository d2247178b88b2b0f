"""Where each declared tensor lives in the lowered problem (combined input and output vectors).

A lowered query is a :class:`~vnnlib.spec.Spec` over ONE flat input vector and ONE flat
output vector. With several networks, hidden nodes or constraints that mix inputs with
outputs, those vectors belong to a *combined* network (:mod:`onnx_models.combine`): its input
is the union of the networks' inputs (inputs asserted equal are merged), and its output is
the concatenation of :attr:`Layout.parts`, each a network output, a hidden node, or a copy of
input elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NetworkUse:
    """A declared network that the assertions use, and where its input comes from.

    ``input_index[i]`` is the combined-input position of its flat input element ``i``.
    """

    name: str
    input: str
    input_shape: tuple[int, ...]
    input_index: tuple[int, ...]
    output: str
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class Part:
    """A block of the combined output.

    ``kind``: ``'output'`` (the network's output), ``'hidden'`` (the node output named
    ``onnx_name``) or ``'input'`` (combined-input elements ``index``, copied).
    """

    kind: str
    network: str
    variable: str
    shape: tuple[int, ...]
    offset: int
    onnx_name: str = ""
    index: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """The combined problem's input and output vectors."""

    n_inputs: int
    networks: tuple[NetworkUse, ...]
    parts: tuple[Part, ...]

    @property
    def n_outputs(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def simple(self) -> bool:
        """True when the Spec is over one network's own input and output (no combining)."""
        if len(self.networks) != 1 or len(self.parts) != 1:
            return False
        net, part = self.networks[0], self.parts[0]
        return part.kind == "output" and net.input_index == tuple(range(self.n_inputs))

    def input_assignment(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each used network's input tensor (declared shape) from a combined input ``x``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return {n.input: x[list(n.input_index)].reshape(n.input_shape) for n in self.networks}

    def split_output(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Each output/hidden part (declared shape) from a combined output ``y``."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return {p.variable: y[p.offset:p.offset + p.size].reshape(p.shape)
                for p in self.parts if p.kind != "input"}
