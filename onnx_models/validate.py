"""Checks on the ONNX graph before conversion: supported ops and a single input/output."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnx_models.errors import OnnxModelError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: Ops that become network layers (on tensors that depend on the input).
LAYER_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Relu", "Sigmoid", "Tanh", "Conv", "Pad",
    "AveragePool", "MaxPool", "BatchNormalization", "Flatten", "Reshape", "Transpose",
    "Squeeze", "Unsqueeze", "Identity", "Dropout",
})
#: Ops accepted only when they fold to constants (shape arithmetic, constant tensors).
CONSTANT_OPS = frozenset({
    "Constant", "Shape", "Gather", "Concat", "Cast", "Slice", "ConstantOfShape", "Neg",
    "Sqrt", "Reciprocal",
})
SUPPORTED_OPS = LAYER_OPS | CONSTANT_OPS
_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = {1: "float32", 11: "float64"}  # onnx.TensorProto.FLOAT / DOUBLE


@dataclass(frozen=True)
class GraphIO:
    """The single graph input and output as declared in the file."""

    input_name: str
    input_dims: tuple[int | str | None, ...]  # ints, or a name/None for symbolic dims
    input_dtype: str
    output_name: str


def _op_label(node: "onnx.NodeProto") -> str:
    """``Op`` for the default domain, ``domain.Op`` otherwise."""
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def _all_nodes(graph: "onnx.GraphProto") -> list["onnx.NodeProto"]:
    """Every node, including those inside subgraphs (If/Loop bodies)."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subgraphs:
                out.extend(_all_nodes(sub))
    return out


def check_ops(model: "onnx.ModelProto", name: str) -> None:
    """Raise OnnxModelError listing every unsupported op (with counts) at once."""
    counts = Counter(_op_label(n) for n in _all_nodes(model.graph))
    bad = {op: c for op, c in counts.items() if op not in SUPPORTED_OPS}
    if bad:
        listed = ", ".join(f"{op} ({bad[op]})" for op in sorted(bad))
        raise OnnxModelError(f"unsupported ONNX ops in {name}: {listed}; "
                             f"supported: {', '.join(sorted(SUPPORTED_OPS))}")


def graph_io(model: "onnx.ModelProto", name: str) -> GraphIO:
    """The single non-initializer input and single output, with the input's shape/dtype."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise OnnxModelError(f"{name} must have exactly one graph input, found {len(inputs)} ({names})")
    if len(graph.output) != 1:
        names = ", ".join(o.name for o in graph.output) or "none"
        raise OnnxModelError(f"{name} must have exactly one graph output, found "
                             f"{len(graph.output)} ({names})")
    tt = inputs[0].type.tensor_type
    if not tt.HasField("shape"):
        raise OnnxModelError(f"{name}: input {inputs[0].name!r} has no declared shape")
    if tt.elem_type not in _FLOAT_TYPES:
        raise OnnxModelError(f"{name}: input {inputs[0].name!r} has element type {tt.elem_type}; "
                             "only float32 and float64 inputs are supported")
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return GraphIO(inputs[0].name, tuple(dims), _FLOAT_TYPES[tt.elem_type], graph.output[0].name)


def concrete_shape(dims: tuple[int | str | None, ...]) -> tuple[int, ...]:
    """Symbolic or unknown dims set to 1."""
    return tuple(d if isinstance(d, int) else 1 for d in dims)


def has_batch_dim(dims: tuple[int | str | None, ...]) -> bool:
    """True when the input has rank >= 2 and a first dim that is 1 or symbolic."""
    return len(dims) >= 2 and (not isinstance(dims[0], int) or dims[0] == 1)
