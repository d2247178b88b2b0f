"""Reading models of current opsets (14-23) with onnx2torch, without down-converting them.

onnx2torch 1.5 ships converters up to roughly opset 17: it picks the converter registered
for an op's ``since_version`` at the model's opset, so a ``Reshape`` in an opset-19 model
(Reshape-19) or a ``Flatten`` in an opset-21 model has none. Down-converting such models
to opset 13 with ``onnx.version_converter`` fails (no adapters for many of these steps).

Instead, :func:`register_converters` adds converters for the newer versions:

* :data:`SAME_SEMANTICS`: versions whose schema has the same attributes, inputs and
  outputs as an older version that onnx2torch converts; the newer version only admits more
  element types (bfloat16, float8, int4, string). The older converter is reused as is
  (``tests/test_torch_export.py`` checks the schemas agree).
* :data:`CHECKED`: versions that add an attribute, an input or an attribute value. The
  node is converted by the older converter when the addition takes its default (e.g. Pad-18
  without ``axes``, AveragePool-19 without dilation) and refused with the reason otherwise;
  ReduceX-18 (axes as an input) and Split-18 (``num_outputs``) are rewritten into
  onnx2torch's own modules.

:func:`prepare` inlines model-local functions (exporters may emit them) so that every node
is an ONNX operator.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: (op, newer version) -> older version whose onnx2torch converter has the same semantics.
SAME_SEMANTICS: dict[tuple[str, int], int] = {
    **{(op, 22): base for op, base in (
        ("Acos", 7), ("Asin", 7), ("Atan", 7), ("Cos", 7), ("Sin", 7), ("Tan", 7),
        ("Conv", 11), ("ConvTranspose", 11), ("Dropout", 13), ("Elu", 6), ("EyeLike", 9),
        ("GlobalAveragePool", 1), ("HardSigmoid", 6), ("HardSwish", 14),
        ("InstanceNormalization", 6), ("MaxPool", 12), ("Round", 11), ("Selu", 6),
        ("Softplus", 1), ("Softsign", 1))},
    ("Cast", 19): 13, ("Cast", 21): 13,  # + float8/int4 types; 'saturate' acts on float8 only
    ("Constant", 19): 13, ("Constant", 21): 13,
    ("ConstantOfShape", 20): 9, ("ConstantOfShape", 21): 9,
    ("Equal", 19): 13,
    ("Flatten", 21): 13,
    ("GreaterOrEqual", 16): 12, ("LessOrEqual", 16): 12,
    ("Identity", 19): 16, ("Identity", 21): 16,
    ("IsInf", 20): 10, ("IsNaN", 20): 13,
    ("Reshape", 19): 14, ("Reshape", 21): 14,
    ("Shape", 19): 15, ("Shape", 21): 15,
    ("Transpose", 21): 13,
    ("Unsqueeze", 21): 13,
    # opset 23: + float4e2m1 (and int4/uint4) types only, for the shape and constant ops
    **{(op, 23): base for op, base in (
        ("Cast", 13), ("Constant", 13), ("ConstantOfShape", 9), ("Flatten", 13),
        ("Identity", 16), ("Reshape", 14), ("Shape", 15), ("Squeeze", 21), ("Transpose", 13),
        ("Unsqueeze", 13))},
}
#: Attributes of a SAME_SEMANTICS version that its base lacks, and why they do not matter.
EXTRA_ATTRIBUTES: dict[str, dict[str, str]] = {
    "Cast": {"saturate": "only applies to float8 targets, which onnx2torch cannot cast to"},
}
_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
               "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare")


def _refuse(node: Any, version: int, what: str) -> NotImplementedError:
    """The error for a node whose newer-version feature has no onnx2torch equivalent."""
    return NotImplementedError(f"{node.operation_type}-{version} {what} is not supported")


def _base(op: str, version: int) -> Callable:
    """onnx2torch's converter registered for ``op`` at ``version``."""
    from onnx2torch.node_converters.registry import get_converter
    return get_converter(operation_type=op, version=version)


def _delegating(op: str, version: int, base: int, check: Callable | None = None) -> Callable:
    """A converter that runs ``check(node, graph)`` (which may raise), then the base one."""
    def convert(node: Any, graph: Any) -> Any:
        if check is not None:
            check(node, graph)
        return _base(op, base)(node, graph)
    convert.__name__ = f"convert_{op}_{version}"
    return convert


def _check_avg_pool(version: int) -> Callable:
    def check(node: Any, graph: Any) -> None:
        if any(int(d) != 1 for d in node.attributes.get("dilations", [])):
            raise _refuse(node, version, "with dilations != 1")
    return check


def _check_pad(version: int) -> Callable:
    def check(node: Any, graph: Any) -> None:
        if len(node.input_values) > 3 and node.input_values[3]:
            raise _refuse(node, version, "with an 'axes' input")
        if node.attributes.get("mode", "constant") == "wrap":
            raise _refuse(node, version, "with mode 'wrap'")
    return check


def _check_resize(version: int) -> Callable:
    def check(node: Any, graph: Any) -> None:
        a = node.attributes
        for key, default in (("antialias", 0), ("keep_aspect_ratio_policy", "stretch")):
            if a.get(key, default) != default:
                raise _refuse(node, version, f"with {key}={a[key]!r}")
        if "axes" in a:
            raise _refuse(node, version, "with an 'axes' attribute")
        if a.get("coordinate_transformation_mode") == "half_pixel_symmetric":
            raise _refuse(node, version, "with coordinate_transformation_mode "
                                         "'half_pixel_symmetric'")
    return check


def _check_scatter_nd(node: Any, graph: Any) -> None:
    if node.attributes.get("reduction", "none") in ("max", "min"):
        raise _refuse(node, 18, f"with reduction {node.attributes['reduction']!r}")


def _reduce_axes(node: Any, graph: Any, version: int) -> list[int] | None:
    """The constant ``axes`` input of a ReduceX-18 node (None: reduce every axis)."""
    from onnx2torch.utils.common import get_const_value

    if len(node.input_values) < 2 or not node.input_values[1]:
        axes: list[int] = []
    else:
        try:
            axes = [int(a) for a in get_const_value(node.input_values[1], graph).reshape(-1)]
        except KeyError as exc:
            raise _refuse(node, version, "with input-dependent axes") from exc
    if not axes:
        if node.attributes.get("noop_with_empty_axes", 0):
            raise _refuse(node, version, "with noop_with_empty_axes=1 and no axes")
        return None
    # onnx2torch reduces Max/Min/Prod one axis at a time, assuming ascending, non-negative
    # axes: normalise them with the input's rank
    rank = _rank(node, graph)
    if rank is None:
        if any(a < 0 for a in axes):
            raise _refuse(node, version, "with negative axes on an input of unknown rank")
        return sorted(set(axes))
    return sorted({a % rank for a in axes})


def _rank(node: Any, graph: Any) -> int | None:
    """The rank of the node's first input, from shape inference (None if unknown)."""
    info = graph.value_info.get(node.input_values[0])
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def _reduce(version: int) -> Callable:
    """ReduceX-18/20: axes from the constant input into onnx2torch's static-axes module."""
    def convert(node: Any, graph: Any) -> Any:
        from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
        from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

        module = OnnxReduceStaticAxes(operation_type=node.operation_type,
                                      axes=_reduce_axes(node, graph, version),
                                      keepdims=node.attributes.get("keepdims", 1))
        mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)
    convert.__name__ = f"convert_reduce_{version}"
    return convert


def _axis_length(node: Any, graph: Any, axis: int) -> int | None:
    """The static length of the first input along ``axis``, from shape inference."""
    if _rank(node, graph) is None:
        return None
    dims = graph.value_info[node.input_values[0]].type.tensor_type.shape.dim
    if not -len(dims) <= axis < len(dims):
        return None
    d = dims[axis]
    return int(d.dim_value) if d.HasField("dim_value") else None


def _split_18(node: Any, graph: Any) -> Any:
    """Split-18: a ``split`` input as before; ``num_outputs`` chunks of ceil(n / k)."""
    from onnx2torch.node_converters.split import OnnxSplit
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    if len(node.input_values) > 1 and node.input_values[1]:
        return _base("Split", 13)(node, graph)
    axis = int(node.attributes.get("axis", 0))
    k = len(node.output_values)
    n = _axis_length(node, graph, axis)
    if n is None:
        raise _refuse(node, 18, "without a 'split' input on an axis of unknown length")
    chunk = math.ceil(n / k)
    sizes = [min(chunk, n - i * chunk) for i in range(k)]
    if any(s <= 0 for s in sizes):
        raise _refuse(node, 18, f"into {k} outputs of an axis of length {n}")
    module = OnnxSplit(num_splits=k, axis=axis, split=sizes)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _without_attribute(node: Any, name: str) -> Any:
    """A copy of the onnx2torch node without attribute ``name``."""
    from onnx2torch.onnx_node import OnnxNode

    proto = type(node.proto)()
    proto.CopyFrom(node.proto)
    kept = [a for a in proto.attribute if a.name != name]
    del proto.attribute[:]
    proto.attribute.extend(kept)
    return OnnxNode(proto, node.unique_name)


def _reshape(version: int, base: Callable) -> Callable:
    """Reshape-14/19/21/23 with ``allowzero=1`` (the dynamo exporter's default): the same as
    ``allowzero=0`` when the constant target shape has no 0 entry; refused otherwise."""
    def convert(node: Any, graph: Any) -> Any:
        from onnx2torch.utils.common import get_const_value

        if not node.attributes.get("allowzero", 0):
            return base(node, graph)
        try:
            shape = get_const_value(node.input_values[1], graph)
        except KeyError as exc:
            raise _refuse(node, version, "with allowzero=1 and an input-dependent shape") from exc
        if any(int(d) == 0 for d in shape.reshape(-1)):
            raise _refuse(node, version, "with allowzero=1 to a zero-size dimension")
        return base(_without_attribute(node, "allowzero"), graph)
    convert.__name__ = f"convert_reshape_{version}"
    convert.bab_wrapped = True  # type: ignore[attr-defined]
    return convert


def _checked() -> dict[tuple[str, int], Callable]:
    """(op, version) -> converter for the versions that need a check or a rewrite."""
    table: dict[tuple[str, int], Callable] = {
        ("Split", 18): _split_18,
        ("ScatterND", 18): _delegating("ScatterND", 18, 16, _check_scatter_nd),
    }
    for v in (19, 22):
        table["AveragePool", v] = _delegating("AveragePool", v, 11, _check_avg_pool(v))
    for v in (18, 19, 21, 23):
        table["Pad", v] = _delegating("Pad", v, 13, _check_pad(v))
    for v in (18, 19):
        table["Resize", v] = _delegating("Resize", v, 13, _check_resize(v))
    for op in _REDUCE_OPS:
        table[op, 18] = _reduce(18)
    for op in ("ReduceMax", "ReduceMin"):  # 20: + bool/other types
        table[op, 20] = _reduce(20)
    return table


#: (op, version) -> converter with a check or rewrite (filled by :func:`register_converters`).
CHECKED: dict[tuple[str, int], Callable] = {}
_REGISTERED = False


def register_converters() -> None:
    """Add the converters above to onnx2torch's registry (once; existing ones are kept)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    CHECKED.update(_checked())
    table = {key: _delegating(key[0], key[1], base) for key, base in SAME_SEMANTICS.items()}
    table.update(CHECKED)
    for (op, version), fn in table.items():
        desc = OperationDescription(domain="", operation_type=op, version=version)
        _CONVERTER_REGISTRY.setdefault(desc, fn)
    for version in (14, 19, 21, 23):  # replaces onnx2torch's refusal of allowzero=1
        desc = OperationDescription(domain="", operation_type="Reshape", version=version)
        current = _CONVERTER_REGISTRY[desc]
        if not getattr(current, "bab_wrapped", False):
            _CONVERTER_REGISTRY[desc] = _reshape(version, current)
    _REGISTERED = True


def prepare(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Inline model-local functions (e.g. ``pkg.onnxscript.torch_lib``) into the graph."""
    if not model.functions:
        return model
    from onnx import inliner

    from onnx_models.errors import OnnxModelError
    try:
        return inliner.inline_local_functions(model)
    except Exception as exc:  # the C++ inliner raises assorted types
        raise OnnxModelError(f"cannot inline the model's local functions: {exc}") from exc
