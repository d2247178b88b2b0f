"""Checks on the ONNX graph before conversion: supported ops and a single input/output."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnx_models.errors import OnnxModelError

if TYPE_CHECKING:  # pragma: no cover
    import onnx



@dataclass(frozen=True)
class OpSupport:
    """One supported ONNX op: the IR layers it becomes on input-dependent tensors."""

    op: str
    layers: str  # "" when the op is accepted only on constants (folded to its value)
    note: str = ""


_SEL = "Gather (index computed by running the op on arange: exact)"
#: The supported ONNX ops: the one table behind the unsupported-op error, ``bab check --ops``
#: and docs/onnx_ops.md (``python -m onnx_models.validate > docs/onnx_ops.md``).
OPS: tuple[OpSupport, ...] = (
    OpSupport("Abs", "ReLU(x) + ReLU(-x)"),
    OpSupport("Add", "ElementwiseAffine; Add of two tensors", "broadcasting by a Gather"),
    OpSupport("AveragePool", "AvgPool2d", "1-D pools as 2-D"),
    OpSupport("BatchNormalization", "ElementwiseAffine per channel",
              "constant statistics, any layout; folded into a neighbouring Linear/Conv2d"),
    OpSupport("Cast", "identity", "to the tensor's own float type"),
    OpSupport("Ceil", "-Floor(-x)"),
    OpSupport("Clip", "two ReLUs", "constant bounds"),
    OpSupport("Concat", "Concat; Gather + ElementwiseAffine with constant pieces"),
    OpSupport("Constant", "", "folded"),
    OpSupport("ConstantOfShape", "", "folded"),
    OpSupport("Conv", "Conv2d", "1-D as 2-D; asymmetric pads via Pad"),
    OpSupport("ConvTranspose", "ConvTranspose2d", "1-D as 2-D; symmetric pads"),
    OpSupport("Cos", "Cos"),
    OpSupport("DepthToSpace", _SEL, "CRD mode (onnx2torch)"),
    OpSupport("Div", "ElementwiseAffine; k / x = k * Reciprocal(x); x / y = Mul(x, Reciprocal(y))"),
    OpSupport("Dropout", "identity", "inference mode"),
    OpSupport("Equal", "", "on constants (folded)"),
    OpSupport("Exp", "Exp"),
    OpSupport("Expand", _SEL),
    OpSupport("Flatten", "Reshape"),
    OpSupport("Floor", "Floor"),
    OpSupport("Gather", _SEL, "constant indices"),
    OpSupport("GatherElements", _SEL, "constant indices"),
    OpSupport("GatherND", _SEL, "constant indices"),
    OpSupport("Gemm", "Linear", "constant weights; else an exact dense Linear"),
    OpSupport("Greater", "", "on constants (folded)"),
    OpSupport("HardSigmoid", "ElementwiseAffine + two ReLUs"),
    OpSupport("Identity", "identity"),
    OpSupport("LayerNormalization", "decomposed: ReduceSum, Add, Pow 2, Sqrt, Reciprocal, Mul, "
              "ElementwiseAffine", "constant scale and bias"),
    OpSupport("LeakyRelu", "a x + (1 - a) ReLU(x)"),
    OpSupport("Less", "", "on constants (folded)"),
    OpSupport("Log", "Log"),
    OpSupport("MatMul", "Linear (a constant operand); MatMul of two tensors",
              "batched over leading axes, broadcasting by a Gather"),
    OpSupport("Max", "a + ReLU(b - a)", "tensors and constants"),
    OpSupport("MaxPool", "MaxPool2d", "1-D pools as 2-D"),
    OpSupport("Min", "a - ReLU(a - b)", "tensors and constants"),
    OpSupport("Mul", "ElementwiseAffine; Mul of two tensors", "x * x is Pow 2"),
    OpSupport("Neg", "ElementwiseAffine"),
    OpSupport("Pad", "Pad (constant mode); " + _SEL + " (reflect, edge)"),
    OpSupport("Pow", "Pow", "constant exponent; exponent 1 is the identity"),
    OpSupport("Range", "", "on constants (folded)"),
    OpSupport("Reciprocal", "Reciprocal"),
    OpSupport("ReduceMean", "ReduceSum + ElementwiseAffine", "constant axes"),
    OpSupport("ReduceSum", "ReduceSum", "constant axes"),
    OpSupport("Relu", "ReLU"),
    OpSupport("Reshape", "Reshape"),
    OpSupport("Resize", _SEL, "nearest mode only (checked)"),
    OpSupport("Shape", "", "folded"),
    OpSupport("Sigmoid", "Sigmoid"),
    OpSupport("Sign", "Sign"),
    OpSupport("Sin", "Sin"),
    OpSupport("Slice", _SEL),
    OpSupport("Softmax", "Softmax", "opset < 13: over the flattened trailing axes"),
    OpSupport("Split", _SEL),
    OpSupport("Sqrt", "Sqrt"),
    OpSupport("Squeeze", "Reshape"),
    OpSupport("Sub", "ElementwiseAffine; Add of x and -y"),
    OpSupport("Tanh", "Tanh"),
    OpSupport("Tile", _SEL),
    OpSupport("Transpose", "Transpose"),
    OpSupport("Unsqueeze", "Reshape"),
    OpSupport("Upsample", _SEL, "nearest mode; upgraded to Resize"),
    OpSupport("Where", _SEL + " + ElementwiseAffine", "constant condition"),
)
BY_OP = {o.op: o for o in OPS}
#: Ops that become network layers (on tensors that depend on the input).
LAYER_OPS = frozenset(o.op for o in OPS if o.layers)
#: Ops accepted only when they fold to constants (shape arithmetic, constant tensors).
CONSTANT_OPS = frozenset(o.op for o in OPS if not o.layers)
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
    counts = op_counts(model)
    bad = {op: c for op, c in counts.items() if op not in SUPPORTED_OPS}
    if bad:
        listed = ", ".join(f"{op} ({bad[op]})" for op in sorted(bad))
        raise OnnxModelError(f"unsupported ONNX ops in {name}: {listed}; "
                             f"supported: {', '.join(o.op for o in OPS)}")


def op_counts(model: "onnx.ModelProto") -> Counter:
    """How many nodes of each op the model has (subgraphs included)."""
    return Counter(_op_label(n) for n in _all_nodes(model.graph))


def render_markdown() -> str:
    """docs/onnx_ops.md, generated from :data:`OPS`."""
    rows = [f"| {o.op} | {o.layers or '(constants only)'} | {o.note} |" for o in OPS]
    return "\n".join([
        "# Supported ONNX operators",
        "",
        "Generated from `onnx_models/validate.py` (`OPS`) by "
        "`python -m onnx_models.validate > docs/onnx_ops.md`; `bab check --ops` prints the "
        "same table. An op on tensors that depend on the network input becomes the IR layers "
        "named here (`onnx_models/layers.py`); on constants every op below is folded to its "
        "value. Any other op is refused, all at once, with the list of these.",
        "",
        "| ONNX op | IR layers on input-dependent tensors | notes |",
        "|---|---|---|",
        *rows,
        "",
    ])


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


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
