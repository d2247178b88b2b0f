"""ONNX bytes -> :class:`~onnx_models.network.Network`.

Pipeline: parse the model and inline its local functions, validate the graph (supported
ops, one input, one output), upgrade opsets older than 13 with ``onnx.version_converter``
(onnx2torch rejects e.g. opset-8 ``Flatten``); newer opsets (up to 23) are read as they are,
with the converters of :mod:`onnx_models.opset` for op versions onnx2torch lacks; convert
with onnx2torch, walk the fx graph into typed layers (:mod:`onnx_models.translate`),
fold affine layers (:mod:`onnx_models.folding`) and check the result against the fx module
on the sample input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from onnx_models import ops
from onnx_models.cache import CONVERTER_VERSION
from onnx_models.errors import OnnxModelError
from onnx_models.folding import fold
from onnx_models.layers import Reshape
from onnx_models.network import Network, OnnxIO
from onnx_models.opset import prepare
from onnx_models.source import parse_model
from onnx_models.translate import Builder, agrees_up_to_rounding, walk
from onnx_models.validate import GraphIO, check_ops, concrete_shape, graph_io, has_batch_dim

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    from torch import fx

#: Opset that older models are upgraded to before onnx2torch (newer ones are kept).
TARGET_OPSET = 13
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def opset_of(model: "onnx.ModelProto") -> int:
    """The default-domain opset version (1 if absent)."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _candidates(model: "onnx.ModelProto", name: str) -> list[Any]:
    """Models to hand to onnx2torch, preferred first: the upgraded model, then the original
    one, when older than 13; else only the model itself (down-converting opsets 18-21 to 13
    fails for lack of adapters, and :mod:`onnx_models.opset` makes it unnecessary)."""
    from onnx import version_converter

    opset = opset_of(model)
    if opset >= TARGET_OPSET:
        return [model]

    def converted() -> "onnx.ModelProto":
        try:
            return version_converter.convert_version(_with_initializer_inputs(model),
                                                     TARGET_OPSET)
        except Exception as exc:  # the C++ converter raises assorted types
            raise OnnxModelError(f"opset conversion of {name} from {opset} to {TARGET_OPSET} "
                                 f"failed: {exc}") from exc

    return [converted, model]


def _with_initializer_inputs(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """IR < 4 requires initializers to be graph inputs (the version converter checks it)."""
    if model.ir_version >= 4:
        return model
    from onnx import helper

    listed = {i.name for i in model.graph.input}
    missing = [t for t in model.graph.initializer if t.name not in listed]
    if not missing:
        return model
    fixed = type(model)()
    fixed.CopyFrom(model)
    for t in missing:
        fixed.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return fixed


def _failing_node(model: "onnx.ModelProto", exc: BaseException) -> str:
    """Name the node onnx2torch fails on (re-running its converters one by one)."""
    try:
        from onnx2torch.node_converters import get_converter
        from onnx2torch.onnx_graph import OnnxGraph
        from onnx2torch.utils.safe_shape_inference import safe_shape_inference

        inferred = safe_shape_inference(model)
        graph = OnnxGraph(inferred.graph)
        opsets = {o.domain: o.version for o in inferred.opset_import}
        for node in graph.nodes.values():
            try:
                get_converter(domain=node.domain, operation_type=node.operation_type,
                              version=opsets.get(node.domain, 1))(node, graph)
            except Exception as node_exc:
                return f"{node.operation_type} node {node.name or node.unique_name!r}: {node_exc}"
    except Exception:
        pass
    return f"{type(exc).__name__}: {exc}"


def to_fx(model: "onnx.ModelProto", name: str) -> "fx.GraphModule":
    """Convert with onnx2torch, trying the upgraded model first; errors -> OnnxModelError."""
    from onnx_models._onnx2torch_compat import import_onnx2torch

    onnx2torch = import_onnx2torch()
    failures: list[tuple[Any, BaseException]] = []
    for candidate in _candidates(model, name):
        try:
            proto = candidate() if callable(candidate) else candidate
            return onnx2torch.convert(proto)
        except OnnxModelError as exc:
            failures.append((None, exc))
        except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ...
            failures.append((proto, exc))
    proto, exc = next(((p, e) for p, e in failures if p is not None), failures[0])
    if proto is None:
        raise exc
    notes = "".join(f"; {e}" for p, e in failures if p is None)
    raise OnnxModelError(f"onnx2torch cannot convert {name}: {_failing_node(proto, exc)}"
                         f"{notes}") from exc


def convert_model(data: bytes, name: str, source: str = "") -> Network:
    """Convert ONNX model bytes into a folded, checked Network."""
    model = prepare(parse_model(data, name))
    check_ops(model, name)
    gio = graph_io(model, name)
    gm = to_fx(model, name)
    network = build_network(gm, gio, name, source)
    network.meta.update(opset=opset_of(model), converter=CONVERTER_VERSION)
    return network


def build_network(gm: "fx.GraphModule", gio: GraphIO, name: str, source: str = "") -> Network:
    """Translate the fx module, fold it and check it on a random sample."""
    dtype = _DTYPES[gio.input_dtype]
    full = concrete_shape(gio.input_dims)
    batch = has_batch_dim(gio.input_dims)
    gm.eval()
    gen = torch.Generator().manual_seed(0)
    sample = torch.rand(full, generator=gen, dtype=torch.float64).to(dtype)
    b = Builder(batch, dtype, name)
    try:
        out, ref = walk(gm, sample, b, ops.handler_for)
    except OnnxModelError:
        raise
    except Exception as exc:
        raise OnnxModelError(f"{name}: cannot evaluate the converted graph: "
                             f"{type(exc).__name__}: {exc}") from exc
    if out.index < 0:  # the output is the input itself
        out = b.emit(Reshape(out.sample), [out], out.full, out.batched, "output")
    input_shape = full[1:] if batch else full
    nodes = fold(b.nodes, out.index, input_shape)
    io = OnnxIO(gio.input_name, full, gio.input_dtype, gio.output_name, tuple(ref.shape), batch)
    network = Network(nodes, input_shape, out.sample, io, source, dtype)
    _self_check(network, sample, ref, name, gm)
    return network


def _self_check(network: Network, sample: torch.Tensor, ref: torch.Tensor, name: str,
                gm: "fx.GraphModule | None" = None) -> None:
    """The network must reproduce the onnx2torch module on the sample input (up to the
    module's own float32 rounding error for badly conditioned outputs:
    :func:`onnx_models.translate.agrees_up_to_rounding`)."""
    with torch.no_grad():
        got = network.forward(sample.reshape(1, -1)).double().reshape(-1)
    want = ref.detach().double().reshape(-1)
    tol = 1e-4 if network.dtype == torch.float32 else 1e-9
    if got.shape != want.shape or not torch.all((got - want).abs() <= tol * (1 + want.abs())):
        if got.shape == want.shape and gm is not None and agrees_up_to_rounding(network, gm, sample, ref):
            return
        raise OnnxModelError(f"{name}: internal conversion error, the converted network disagrees "
                             "with onnx2torch on a sample input")
