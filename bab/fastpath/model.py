"""A small fully connected ReLU network read straight from ONNX (no torch, no onnx2torch).

The graph must be one chain from the single graph input to the single output made of affine
ops with constant operands (Gemm, MatMul, Add/Sub/Mul/Div by a constant, Flatten, Reshape,
Squeeze/Unsqueeze, Identity) and Relu. Affine ops between two ReLUs are composed, in float64,
into one ``W x + b``; anything else raises :class:`OutOfScope` and the caller hands the
instance to the torch pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class OutOfScope(Exception):
    """The network is not a small fully connected ReLU chain (the torch pipeline takes it)."""


@dataclass(frozen=True)
class FcNet:
    """``x -> W[-1] relu(... relu(W[0] x + b[0]) ...) + b[-1]`` in float64.

    ``weights[k]``: [n_{k+1}, n_k]; a ReLU follows every layer but the last.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    input_dtype: str = "float32"

    @property
    def n_inputs(self) -> int:
        """Flat input size."""
        return int(self.weights[0].shape[1])

    @property
    def n_outputs(self) -> int:
        """Flat output size."""
        return int(self.weights[-1].shape[0])

    @property
    def n_neurons(self) -> int:
        """Hidden ReLU neurons."""
        return int(sum(w.shape[0] for w in self.weights[:-1]))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Outputs ``[B, n_out]`` and the pre-activations of every hidden layer."""
        pre: list[np.ndarray] = []
        h = np.asarray(x, np.float64)
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            z = h @ w.T + b
            pre.append(z)
            h = np.maximum(z, 0.0)
        return h @ self.weights[-1].T + self.biases[-1], pre

    def input_gradient(self, pre: list[np.ndarray], gy: np.ndarray) -> np.ndarray:
        """``d (gy . y) / dx`` per row (``gy``: [B, n_out]) from :meth:`forward`'s ``pre``."""
        g = gy @ self.weights[-1]
        for k in range(len(pre) - 1, -1, -1):
            g = (g * (pre[k] > 0)) @ self.weights[k]
        return g


_ONNX_FLOAT = {1: "float32", 11: "float64", 10: "float16"}


class _Chain:
    """The pending affine map ``value = A @ h + c`` (flat, row-major) since the last ReLU."""

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.A = np.eye(n)
        self.c = np.zeros(n)
        self.shape = shape

    def elementwise(self, scale: np.ndarray | None, shift: np.ndarray | None) -> None:
        """``value * scale + shift`` with constants that broadcast to the value's shape."""
        for const in (scale, shift):
            if const is not None and np.broadcast_shapes(const.shape, self.shape) != self.shape:
                raise OutOfScope("a constant operand changes the tensor's shape")
        s = np.broadcast_to(1.0 if scale is None else scale, self.shape).reshape(-1)
        t = np.broadcast_to(0.0 if shift is None else shift, self.shape).reshape(-1)
        self.A, self.c = self.A * s[:, None], self.c * s + t

    def right_matmul(self, w: np.ndarray) -> None:
        """``value @ w`` for a value whose leading dimensions are all 1."""
        if w.ndim != 2 or self.shape[-1:] != (w.shape[0],) or np.prod(self.shape[:-1]) != 1:
            raise OutOfScope("MatMul outside the vector-times-matrix form")
        self.A, self.c = w.T @ self.A, self.c @ w
        self.shape = (*self.shape[:-1], w.shape[1])

    def left_matmul(self, w: np.ndarray) -> None:
        """``w @ value`` for a vector (or a one-column matrix) value."""
        if w.ndim != 2 or self.shape[:1] != (w.shape[1],) or np.prod(self.shape[1:]) != 1:
            raise OutOfScope("MatMul outside the matrix-times-vector form")
        self.A, self.c = w @ self.A, w @ self.c
        self.shape = (w.shape[0], *self.shape[1:])

    def reshape(self, shape: tuple[int, ...]) -> None:
        """Row-major reshape: the flat order is unchanged."""
        if int(np.prod(shape)) != self.A.shape[0]:
            raise OutOfScope("Reshape changes the number of elements")
        self.shape = tuple(int(s) for s in shape)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _reshape_target(shape: tuple[int, ...], spec: np.ndarray, allowzero: int) -> tuple[int, ...]:
    dims = [int(d) for d in spec.reshape(-1)]
    out = [shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(dims)]
    if out.count(-1) == 1:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(shape)) // max(known, 1)
    return tuple(out)


def _shape_op(chain: _Chain, op: str, node: Any, consts: list[np.ndarray | None]) -> None:
    """Flatten / Reshape / Squeeze / Unsqueeze / Identity on the chain's value."""
    a, shape = _attrs(node), chain.shape
    if op == "Flatten":
        axis = a.get("axis", 1) % max(len(shape), 1) if shape else 0
        chain.reshape((int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))
    elif op == "Reshape":
        if len(consts) < 2 or consts[1] is None:
            raise OutOfScope("Reshape with a computed shape")
        chain.reshape(_reshape_target(shape, consts[1], a.get("allowzero", 0)))
    elif op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes") if "axes" in a else (consts[1] if len(consts) > 1 else None)
        if axes is None:
            chain.reshape(tuple(s for s in shape if s != 1) if op == "Squeeze" else shape)
            return
        axes = [int(x) for x in np.asarray(axes).reshape(-1)]
        if op == "Squeeze":
            keep = {ax % len(shape) for ax in axes}
            chain.reshape(tuple(s for i, s in enumerate(shape) if i not in keep))
        else:
            new = list(shape)
            for ax in sorted(ax % (len(shape) + len(axes)) for ax in axes):
                new.insert(ax, 1)
            chain.reshape(tuple(new))


def _gemm(chain: _Chain, node: Any, consts: list[np.ndarray | None]) -> None:
    a = _attrs(node)
    if a.get("transA", 0) or consts[1] is None or (len(consts) > 2 and consts[2] is None):
        raise OutOfScope("Gemm with a variable or transposed weight operand")
    w = consts[1].T if a.get("transB", 0) else consts[1]
    chain.right_matmul(w * float(a.get("alpha", 1.0)))
    if len(consts) > 2:
        bias = consts[2] * float(a.get("beta", 1.0))
        chain.elementwise(None, bias)


def _binary(chain: _Chain, op: str, var_pos: int, const: np.ndarray) -> None:
    """Add/Sub/Mul/Div/MatMul with one constant operand (``var_pos``: the variable's slot)."""
    if op == "Add":
        chain.elementwise(None, const)
    elif op == "Sub":
        chain.elementwise(None, -const) if var_pos == 0 else chain.elementwise(-np.ones_like(const), const)
    elif op == "Mul":
        chain.elementwise(const, None)
    elif op == "Div" and var_pos == 0:
        chain.elementwise(1.0 / const, None)
    elif op == "MatMul":
        chain.right_matmul(const) if var_pos == 0 else chain.left_matmul(const)
    else:
        raise OutOfScope(f"{op} with the variable as divisor")


AFFINE_OPS = ("Gemm", "MatMul", "Add", "Sub", "Mul", "Div")
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout")


def read_fc_net(model: Any, max_neurons: int) -> FcNet:
    """The :class:`FcNet` of an ``onnx.ModelProto`` (:class:`OutOfScope` if it is not one)."""
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        raise OutOfScope("not exactly one graph input and one output")
    tt = inputs[0].type.tensor_type
    dims = tuple(d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim)
    n = int(np.prod(dims)) if dims else 1
    chain, layers, current = _Chain(n, dims), [], inputs[0].name
    for node in g.node:
        op = node.op_type
        if op == "Constant":
            continue
        if op not in AFFINE_OPS + SHAPE_OPS + ("Relu",) or current not in node.input[:1] + node.input[1:2]:
            raise OutOfScope(f"op {op} outside the fully connected ReLU chain")
        ins = [consts.get(i) for i in node.input]
        var_pos = list(node.input).index(current)
        if sum(v is None for v in ins) != 1 or (op in SHAPE_OPS + ("Relu", "Gemm") and var_pos != 0):
            raise OutOfScope(f"{op} on two computed tensors")
        if op == "Relu":
            layers.append((chain.A, chain.c))
            chain = _Chain(chain.A.shape[0], chain.shape)
        elif op == "Gemm":
            _gemm(chain, node, ins)
        elif op in AFFINE_OPS:
            _binary(chain, op, var_pos, ins[1 - var_pos])
        else:
            _shape_op(chain, op, node, ins)
        current = node.output[0]
    if current != g.output[0].name:
        raise OutOfScope("the output is not the end of the chain")
    layers.append((chain.A, chain.c))
    net = FcNet(tuple(w for w, _ in layers), tuple(b for _, b in layers),
                _ONNX_FLOAT.get(tt.elem_type, "float32"))
    if net.n_neurons > max_neurons:
        raise OutOfScope(f"{net.n_neurons} neurons > fast_path_max_neurons {max_neurons}")
    return net
