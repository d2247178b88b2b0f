"""Handlers for general computational graphs (VNN-COMP 2022-2024 ops) on input-dependent tensors.

* **Selections** (Slice, Gather, Split, Expand, Tile, nearest Resize, Where with a constant
  condition, Concat with constant pieces, non-constant Pad modes): one :class:`~L.Gather`
  whose index is found by running the op on ``arange`` (exact by construction, and checked
  on a random input), plus an ElementwiseAffine writing the constant entries.
* **Two input-dependent operands**: Add/Sub/Mul/Div (broadcast by a Gather), MatMul.
* **Reductions and normalisation**: ReduceSum/ReduceMean, Softmax, LayerNormalization
  (decomposed), BatchNormalization in any layout, ConvTranspose.

Elementwise nonlinearities are in :mod:`onnx_models.ops_unary`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from onnx_models import layers as L
from onnx_models.translate import Builder, Call, Value, numel


# --------------------------------------------------------------------------- selections
def _run_with(c: Call, values: list[torch.Tensor]) -> Any:
    """The op on its concrete arguments with the input-dependent ones replaced by ``values``."""
    args = list(c.concrete)
    for p, value in zip(c.var_positions(), values):
        args[p] = value
    with torch.no_grad():
        return c.module(*args, **c.kwargs)


def _float_vars(b: Builder, c: Call) -> list[Value]:
    """The input-dependent arguments; they must be floating-point data (not indices/conditions)."""
    pos = c.var_positions()
    for p in pos:
        t = c.concrete[p]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise b.error(f"{c.name}: {_kind(c)} with an input-dependent index, condition or "
                          "shape argument is not supported")
    return [c.args[p] for p in pos]


def _kind(c: Call) -> str:
    module = getattr(c.module, "module", c.module)
    return type(module).__name__


def selection_index(b: Builder, c: Call) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index, mask, const)``: output entry ``j`` is input entry ``index[j]`` (over the
    input-dependent arguments flattened and concatenated) where ``mask[j]``, else ``const[j]``.

    Raises OnnxModelError when the op is not such a selection (checked on a random input).
    """
    vs = _float_vars(b, c)
    sizes = [numel(v.full) for v in vs]
    starts = [sum(sizes[:k]) for k in range(len(vs))]
    total = sum(sizes)
    ids = _run_with(c, [torch.arange(s, s + n, dtype=torch.float64).reshape(v.full)
                        for s, n, v in zip(starts, sizes, vs)])
    nans = _run_with(c, [torch.full(v.full, math.nan, dtype=torch.float64) for v in vs])
    ids, nans = ids.reshape(-1).double(), nans.reshape(-1).double()
    mask = torch.isnan(nans)
    index = torch.where(mask, ids, torch.zeros_like(ids))
    ok = bool(torch.all(index == torch.round(index))) and bool(torch.all((index >= 0) & (index < total)))
    gen = torch.Generator().manual_seed(7)
    probe = torch.randn(total, generator=gen, dtype=torch.float64)
    if ok:
        index = index.long()
        got = _run_with(c, [probe[s:s + n].reshape(v.full) for s, n, v in zip(starts, sizes, vs)])
        want = torch.where(mask, probe[index], nans)
        got = got.reshape(-1).double()
        ok = got.shape == want.shape and bool(torch.equal(got, want))
    if not ok:
        raise b.error(f"{c.name}: {_kind(c)} on an input-dependent tensor is not a selection of its "
                      "entries (e.g. a non-nearest Resize), which is not supported")
    return index, mask, torch.where(mask, torch.zeros_like(nans), nans)


def _flat_sources(b: Builder, vs: list[Value], name: str) -> Value:
    """The input-dependent operands flattened and concatenated (one Value)."""
    if len(vs) == 1:
        return vs[0]
    flat = [b.reshape(v, (numel(v.full),), False, f"{name}/flat{k}") for k, v in enumerate(vs)]
    total = sum(numel(v.full) for v in vs)
    return b.emit(L.Concat(0), flat, (total,), False, name + "/cat")


def select(b: Builder, c: Call) -> Value:
    """Any op whose output entries are input entries or constants: Gather (+ constants)."""
    index, mask, const = selection_index(b, c)
    vs = _float_vars(b, c)
    src = _flat_sources(b, vs, c.name)
    full = tuple(c.out.shape)
    batched = b.default_batched(full)
    if bool(mask.all()) and index.numel() == numel(src.full) and \
            torch.equal(index, torch.arange(index.numel())):
        return b.reshape(src, full, batched, c.name)  # a pure view (Squeeze, full Slice, ...)
    out = Value(len(b.nodes), full, batched)
    v = b.emit(L.Gather(index, out.sample), [src], full, batched, c.name)
    if bool(mask.all()):
        return v
    shape = v.sample
    scale = mask.to(torch.float64).reshape(shape)
    return b.affine(v, scale, const.reshape(shape), c.name + "/const")


def concat(b: Builder, c: Call) -> Value:
    """Concat: a Concat layer of the input-dependent pieces, else (constants) a selection."""
    if len(c.var_positions()) != len(c.args):
        return select(b, c)
    vs = _float_vars(b, c)
    rank = len(vs[0].full)
    axis = int(c.module.axis) % rank
    batched = axis != 0 and all(v.batched for v in vs)
    views = [b.reshape(v, v.full, batched, f"{c.name}/view{k}") for k, v in enumerate(vs)]
    full = tuple(c.out.shape)
    out = b.emit(L.Concat(axis - 1 if batched else axis), views, full, batched, c.name)
    return b.reshape(out, full, b.default_batched(full), c.name + "/view")


# --------------------------------------------------------------------- two operands
def _aligned(b: Builder, c: Call) -> tuple[Value, Value]:
    """Both input-dependent operands broadcast to the output shape, with one batch flag."""
    full = tuple(c.out.shape)
    x = b.expand(c.args[0], full, c.name + "/expand_a")
    y = b.expand(c.args[1], full, c.name + "/expand_b")
    x, y = b.same_view([x, y], c.name)
    return x, y


def binary_two(b: Builder, c: Call, op: str) -> Value:
    """Add/Sub/Mul/Div of two input-dependent tensors (numpy broadcasting)."""
    if getattr(c.module, "broadcast", None) == 1 and getattr(c.module, "axis", None) is not None:
        raise b.error(f"{c.name}: legacy axis broadcasting of two input-dependent tensors is not supported")
    x, y = _aligned(b, c)
    if op == "Mul" and x == y:
        out = b.unary(L.Pow(2.0), x, c.name)
    elif op in ("Add", "Sub"):
        if op == "Sub":
            y = b.affine(y, -1.0, 0.0, c.name + "/neg")
        out = b.emit(L.Add(), [x, y], x.full, x.batched, c.name)
    else:
        if op == "Div":
            y = b.unary(L.Reciprocal(), y, c.name + "/reciprocal")
        out = b.emit(L.Mul(), [x, y], x.full, x.batched, c.name)
    return b.reshape(out, out.full, b.default_batched(out.full), c.name + "/view")


def _matmul_operand(b: Builder, v: Value, lead: tuple[int, ...], rows: int, cols: int,
                    name: str) -> Value:
    """``v`` as an unbatched ``lead + (rows, cols)`` tensor (promoting 1-D, broadcasting)."""
    v = b.reshape(v, (rows, cols) if len(v.full) == 1 else v.full, False, name + "/2d")
    v = b.expand(v, lead + (rows, cols), name + "/expand")
    return b.reshape(v, v.full, False, name + "/view")


def matmul_two(b: Builder, c: Call) -> Value:
    """MatMul of two input-dependent tensors (numpy matmul semantics, batched over leading axes)."""
    a, w = c.args[0], c.args[1]
    a_t, w_t = torch.as_tensor(c.concrete[0]), torch.as_tensor(c.concrete[1])
    m, k = (1, a_t.shape[0]) if a_t.dim() == 1 else tuple(a_t.shape[-2:])
    n = 1 if w_t.dim() == 1 else w_t.shape[-1]
    lead = tuple(torch.broadcast_shapes(a_t.shape[:-2], w_t.shape[:-2]))
    x = _matmul_operand(b, a, lead, m, k, c.name + "/a")
    y = _matmul_operand(b, w, lead, k, n, c.name + "/b")
    out = b.emit(L.MatMul(), [x, y], lead + (m, n), False, c.name)
    full = tuple(c.out.shape)
    return b.reshape(out, full, b.default_batched(full), c.name + "/view")


# ------------------------------------------------------------ reductions, normalisation
def reduce_sum(b: Builder, v: Value, axes: list[int], keepdims: bool, name: str,
               mean: bool = False) -> Value:
    """Sum (or mean) of ``v`` over ONNX axes ``axes`` (all axes when empty)."""
    rank = len(v.full)
    axes = sorted({a % rank for a in axes}) if axes else list(range(rank))
    count = math.prod(v.full[a] for a in axes)
    full = tuple(1 if a in axes else d for a, d in enumerate(v.full)) if keepdims else \
        tuple(d for a, d in enumerate(v.full) if a not in axes)
    s_axes = [a - 1 for a in axes if a != 0] if v.batched else axes
    if s_axes:
        kept_batch = v.batched and (keepdims or 0 not in axes)
        sample = [d for a, d in enumerate(v.sample) if a not in s_axes] if not keepdims else \
            [1 if a in s_axes else d for a, d in enumerate(v.sample)]
        inner = ((1,) if kept_batch else ()) + tuple(sample)
        v = b.emit(L.ReduceSum(tuple(s_axes), keepdims), [v], inner, kept_batch, name)
    v = b.reshape(v, full, b.default_batched(full), name + "/view")
    return b.affine(v, 1.0 / count, 0.0, name + "/mean") if mean and count != 1 else v


def _static_axes(c: Call) -> tuple[list[int], bool, bool]:
    """``(axes, keepdims, noop_with_empty_axes)`` of an onnx2torch reduce module."""
    m = c.module
    if hasattr(m, "_axes"):  # OnnxReduceSumStaticAxes
        return list(m._axes or []), bool(m._keepdims), bool(m._noop_with_empty_axes)
    if hasattr(m, "_keepdims"):  # OnnxReduceSumDynamicAxes: axes is the second argument
        axes = c.concrete[1] if len(c.concrete) > 1 and c.concrete[1] is not None else []
        return [int(a) for a in torch.as_tensor(axes).reshape(-1)], bool(m._keepdims), \
            bool(m._noop_with_empty_axes)
    return list(m.axes or []), bool(m.keepdims), False


def reduce(b: Builder, c: Call) -> Value:
    """ReduceSum / ReduceMean (static or dynamic axes)."""
    if c.var_positions() != [0]:
        raise b.error(f"{c.name}: reduction axes must be constant")
    op = getattr(c.module, "operation_type", "ReduceSum")
    if op not in ("ReduceSum", "ReduceMean"):
        raise b.error(f"{c.name}: {op} on an input-dependent tensor is not supported")
    axes, keepdims, noop = _static_axes(c)
    v = c.args[0]
    if not axes and noop:
        return v
    return reduce_sum(b, v, axes, keepdims, c.name, mean=op == "ReduceMean")


def softmax(b: Builder, c: Call) -> Value:
    """``nn.Softmax(dim)`` (opset 13) or the opset-1/11 form (softmax of the flattened tail)."""
    if c.var_positions() != [0]:
        raise b.error(f"{c.name}: Softmax must take one input-dependent tensor")
    v, m = c.args[0], c.module
    legacy = hasattr(m, "is_log")
    if legacy and m.is_log:
        raise b.error(f"{c.name}: LogSoftmax is not supported")
    axis = int(m.axis if legacy else m.dim) % len(v.full)
    if legacy:  # softmax over the axes from ``axis`` on, flattened
        full = v.full[:axis] + (math.prod(v.full[axis:]),)
        v = b.reshape(v, full, b.default_batched(full), c.name + "/flat")
        s_axis = len(v.sample) - 1
    elif v.batched and axis == 0:
        raise b.error(f"{c.name}: Softmax over the batch axis is not supported")
    else:
        s_axis = axis - 1 if v.batched else axis
    y = b.unary(L.Softmax(s_axis), v, c.name)
    out = tuple(c.out.shape)
    return b.reshape(y, out, b.default_batched(out), c.name + "/view")


def _sub_mean(b: Builder, v: Value, axes: list[int], name: str) -> Value:
    """``v - mean(v over axes)`` (broadcast back by a Gather)."""
    mean = reduce_sum(b, v, axes, True, name + "/mean", mean=True)
    mean = b.expand(mean, v.full, name + "/mean_expand")
    v2, neg = b.same_view([v, b.affine(mean, -1.0, 0.0, name + "/neg")], name)
    return b.emit(L.Add(), [v2, neg], v2.full, v2.batched, name + "/center")


def layer_norm_parts(b: Builder, v: Value, axis: int, eps: float, weight: Any, bias: Any,
                     name: str) -> Value:
    """LayerNormalization decomposed: center, Pow 2, mean, + eps, Sqrt, Reciprocal, Mul, affine."""
    rank = len(v.full)
    axes = list(range(axis % rank, rank))
    d = _sub_mean(b, v, axes, name)
    var = reduce_sum(b, b.unary(L.Pow(2.0), d, name + "/square"), axes, True, name + "/var", mean=True)
    std = b.unary(L.Sqrt(), b.affine(var, 1.0, float(eps), name + "/eps"), name + "/sqrt")
    inv = b.expand(b.unary(L.Reciprocal(), std, name + "/inv"), d.full, name + "/inv_expand")
    d, inv = b.same_view([d, inv], name + "/norm")
    y = b.emit(L.Mul(), [d, inv], d.full, d.batched, name + "/normalize")
    norm_shape = v.full[axis % rank:]
    scale = torch.ones(norm_shape) if weight is None else torch.as_tensor(weight).reshape(norm_shape)
    shift = torch.zeros(norm_shape) if bias is None else torch.as_tensor(bias).reshape(norm_shape)
    return b.affine(y, scale.detach(), shift.detach(), name + "/affine")


def layer_norm(b: Builder, c: Call) -> Value:
    """``nn.LayerNorm`` / ``OnnxLayerNorm`` with constant scale and bias."""
    if c.var_positions() != [0]:
        raise b.error(f"{c.name}: LayerNormalization scale and bias must be constant")
    v, m = c.args[0], c.module
    if hasattr(m, "normalized_shape"):  # nn.LayerNorm
        axis = len(v.full) - len(m.normalized_shape)
        return layer_norm_parts(b, v, axis, m.eps, m.weight, m.bias, c.name)
    bias = c.concrete[2] if len(c.concrete) > 2 else None
    return layer_norm_parts(b, v, int(m.axis), m.epsilon, c.concrete[1], bias, c.name)


def bn_layer(b: Builder, v: Value, weight: Any, bias: Any, mean: Any, var: Any,
             eps: float) -> L.ElementwiseAffine:
    """Inference batch norm (channel: ONNX axis 1) as a per-channel affine map on the sample."""
    mean64 = torch.as_tensor(mean).double()
    var64 = torch.as_tensor(var).double()
    w64 = torch.ones_like(mean64) if weight is None else torch.as_tensor(weight).double()
    b64 = torch.zeros_like(mean64) if bias is None else torch.as_tensor(bias).double()
    scale = w64 / torch.sqrt(var64 + eps)
    shift = b64 - mean64 * scale
    shape = [1] * len(v.sample)
    shape[0 if v.batched else 1] = -1
    return L.ElementwiseAffine(b.tensor(scale.reshape(shape)), b.tensor(shift.reshape(shape)))


def conv_transpose(b: Builder, c: Call) -> Value:
    """``nn.ConvTranspose2d`` / ``nn.ConvTranspose1d`` (as 2-D with a height-1 kernel)."""
    m = c.module
    if m.padding_mode != "zeros" or c.var_positions() != [0]:
        raise b.error(f"{c.name}: ConvTranspose with padding mode {m.padding_mode!r} is not supported")
    one_d = type(m).__name__ == "ConvTranspose1d"
    v = b.to_batched(c.args[0], c.name + "/batch")
    weight = b.tensor(m.weight)
    bias = b.tensor(m.bias) if m.bias is not None else torch.zeros(weight.shape[1] * m.groups,
                                                                    dtype=b.dtype)

    def pair(t: Any) -> tuple[int, int]:
        t = tuple(int(x) for x in t)
        return (1 if one_d else t[0], t[-1])

    pad = tuple(int(x) for x in m.padding)
    layer = L.ConvTranspose2d(weight.unsqueeze(2).contiguous() if one_d else weight, bias,
                              pair(m.stride), (0, pad[0]) if one_d else (pad[0], pad[1]),
                              (0, int(m.output_padding[0])) if one_d else pair(m.output_padding),
                              pair(m.dilation), int(m.groups))
    out = tuple(c.out.shape)
    if not one_d:
        return b.emit(layer, [v], out, True, c.name)
    v2 = b.reshape(v, (1, v.sample[0], 1, v.sample[1]), True, c.name + "/to2d")
    y = b.emit(layer, [v2], (out[0], out[1], 1, out[2]), True, c.name)
    return b.reshape(y, out, True, c.name + "/to1d")


# --------------------------------------------------------------- onnx2torch converters
def _any_rank_batch_norm(original: Any) -> Any:
    """Wrap onnx2torch's BatchNormalization converter: when it gives up on the input's rank
    (unknown or > 5 after shape inference), use the functional module with constant inputs."""
    def convert(node: Any, graph: Any) -> Any:
        try:
            return original(node, graph)
        except NotImplementedError as exc:
            if "spatial rank" not in str(exc) or len(node.output_values) != 1:
                raise
        from onnx2torch.node_converters.batch_norm import OnnxBatchNorm
        from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

        attrs = node.attributes
        module = OnnxBatchNorm(momentum=1 - attrs.get("momentum", 0.9), epsilon=attrs.get("epsilon", 1e-5))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    convert.bab_wrapped = True  # type: ignore[attr-defined]
    return convert


def _clip_missing_bounds(original: Any) -> Any:
    """Wrap onnx2torch's Clip-11/12/13 converter: an omitted bound (empty input name) is absent,
    not a tensor to look up."""
    def convert(node: Any, graph: Any) -> Any:
        names = list(node.input_values)
        if "" not in names[1:]:
            return original(node, graph)
        from onnx2torch.node_converters.clip import _create_torch_module
        from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

        bounds = [float(get_const_value(n, graph)) if n else None for n in (names[1:] + ["", ""])[:2]]
        return OperationConverterResult(torch_module=_create_torch_module(*bounds),
                                        onnx_mapping=OnnxMapping(inputs=(names[0],),
                                                                 outputs=node.output_values))

    convert.bab_wrapped = True  # type: ignore[attr-defined]
    return convert


_OVERRIDES = {"BatchNormalization": _any_rank_batch_norm, "Clip": _clip_missing_bounds}


def install_converters() -> None:
    """Register the converter overrides above in onnx2torch's registry (idempotent)."""
    from onnx_models._onnx2torch_compat import import_onnx2torch

    import_onnx2torch()
    from onnx2torch.node_converters import registry

    table = registry._CONVERTER_REGISTRY
    for key in [k for k in table if k.operation_type in _OVERRIDES and k.version > 6]:
        if not getattr(table[key], "bab_wrapped", False):
            table[key] = _OVERRIDES[key.operation_type](table[key])
