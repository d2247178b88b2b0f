"""Handlers turning onnx2torch modules (on input-dependent tensors) into our layers.

Each handler gets the :class:`~onnx_models.translate.Builder` and a
:class:`~onnx_models.translate.Call` and returns the output
:class:`~onnx_models.translate.Value`. Affine ops in an unusual layout fall back to
:func:`~onnx_models.translate.dense_affine`, which is exact.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from onnx_models import layers as L
from onnx_models import ops_graph as G
from onnx_models import ops_unary as U
from onnx_models.translate import Builder, Call, Value, dense_affine

Handler = Callable[[Builder, Call], Value]


def _pair(v: Any) -> tuple[int, int]:
    """An int or a 2-sequence as a pair of ints."""
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _single_input(b: Builder, c: Call) -> Value:
    pos = c.var_positions()
    if pos != [0]:
        raise b.error(f"{c.name}: {type(c.module).__name__} must take the input-dependent tensor "
                      "as its first and only tensor argument")
    return c.args[0]


def _same_layout(b: Builder, c: Call, layer: L.Layer, v: Value) -> Value:
    """Emit a shape-preserving layer (activations, elementwise)."""
    return b.emit(layer, [v], tuple(c.out.shape), v.batched, c.name)


def activation(layer_cls: type[L.Layer]) -> Handler:
    """Handler for a parameter-free elementwise activation."""
    def handle(b: Builder, c: Call) -> Value:
        return _same_layout(b, c, layer_cls(), _single_input(b, c))
    return handle


def identity(b: Builder, c: Call) -> Value:
    """Identity/Dropout (eval): the input itself."""
    return _single_input(b, c)


def cast(b: Builder, c: Call) -> Value:
    """Cast to the tensor's own floating type (a no-op); other casts are not supported."""
    v = _single_input(b, c)
    if c.out.dtype != torch.as_tensor(c.concrete[0]).dtype:
        raise b.error(f"{c.name}: Cast of an input-dependent tensor to {c.out.dtype} is not supported")
    return v


def reshape(b: Builder, c: Call) -> Value:
    """Flatten/Reshape/Squeeze/Unsqueeze: a Reshape to the concrete output shape."""
    v = _single_input(b, c)
    full = tuple(c.out.shape)
    return b.reshape(v, full, b.default_batched(full), c.name)


def transpose(b: Builder, c: Call) -> Value:
    """Transpose; a permutation moving the batch axis is done on the sample plus a Reshape."""
    v = _single_input(b, c)
    perm = list(c.module.perm if c.module.perm is not None else range(len(v.full))[::-1])
    full = tuple(c.out.shape)
    if not v.batched:
        if perm == sorted(perm):
            return Value(v.index, full, False)
        return b.emit(L.Transpose(tuple(perm)), [v], full, False, c.name)
    sample_perm = tuple(p - 1 for p in perm if p != 0)
    permuted = tuple(v.full[p] for p in perm if p != 0)
    if list(sample_perm) != sorted(sample_perm):
        v = b.emit(L.Transpose(sample_perm), [v], (1, *permuted), True, c.name)
    else:
        v = Value(v.index, (1, *permuted), True)
    return b.reshape(v, full, v.batched if perm[0] == 0 else b.default_batched(full), c.name + "/reshape")


def _linear_out(b: Builder, c: Call, v: Value, weight: torch.Tensor, bias: torch.Tensor | None) -> Value:
    w = b.tensor(weight)
    bias_t = b.tensor(bias) if bias is not None else torch.zeros(w.shape[0], dtype=b.dtype)
    return b.emit(L.Linear(w, bias_t), [v], tuple(c.out.shape), v.batched, c.name)


def _vector_sample(v: Value) -> bool:
    return len(v.sample) == 1


def linear(b: Builder, c: Call) -> Value:
    """``nn.Linear`` (a Gemm with constant weights)."""
    v = _single_input(b, c)
    if not _vector_sample(v):
        return dense_affine(b, c)
    return _linear_out(b, c, v, c.module.weight, c.module.bias)


def gemm(b: Builder, c: Call) -> Value:
    """``OnnxGemm`` (weights computed in the graph): Linear when A is the input."""
    m = c.module
    if c.var_positions() != [0] or m.trans_a or not _vector_sample(c.args[0]):
        return dense_affine(b, c)
    v, w = c.args[0], torch.as_tensor(c.concrete[1])
    w = (w.T if m.trans_b else w) * m.alpha  # [k, n]
    bias = None
    if len(c.concrete) > 2 and c.concrete[2] is not None:
        bias = torch.broadcast_to(torch.as_tensor(c.concrete[2]) * m.beta, tuple(c.out.shape))
        bias = bias.reshape(-1)
    return _linear_out(b, c, v, w.T, bias)


def matmul(b: Builder, c: Call) -> Value:
    """``OnnxMatMul``: ``x @ W`` or ``W @ x`` on a vector (Linear), two input-dependent
    operands (MatMul layer), else an exact dense affine map."""
    pos = c.var_positions()
    if len(pos) == 2:
        return G.matmul_two(b, c)
    if pos == [0] and torch.as_tensor(c.concrete[1]).dim() == 2 and _vector_sample(c.args[0]):
        return _linear_out(b, c, c.args[0], torch.as_tensor(c.concrete[1]).T, None)
    if (pos == [1] and torch.as_tensor(c.concrete[0]).dim() == 2 and len(c.args[1].full) == 1):
        return _linear_out(b, c, c.args[1], torch.as_tensor(c.concrete[0]), None)
    return dense_affine(b, c)


def _sample_const(b: Builder, const: Any, v: Value) -> torch.Tensor:
    """A constant broadcast against ``v.full``, expressed against the sample shape."""
    t = b.tensor(const)
    t = t.reshape((1,) * (len(v.full) - t.dim()) + tuple(t.shape))
    return t[0] if v.batched else t


def binary(b: Builder, c: Call) -> Value:
    """``OnnxBinaryMathOperation``: Add/Sub/Mul/Div by a constant, or Add/Sub of two tensors."""
    fn = c.module.math_op_function
    op = {torch.add: "Add", torch.sub: "Sub", torch.mul: "Mul"}.get(fn, "Div")
    pos = c.var_positions()
    if len(pos) == 2:
        return _binary_two(b, c, op)
    (p,) = pos
    const = c.concrete[1 - p]
    if c.module.broadcast == 1 and c.module.axis is not None and p == 0:
        from onnx2torch.utils.common import old_style_broadcast
        const = old_style_broadcast(c.concrete[0], torch.as_tensor(const), c.module.axis)
    v: Value = b.expand(c.args[p], tuple(c.out.shape), c.name + "/expand")
    if op == "Div" and p == 1:  # k / x = k * (1 / x)
        v, op, p = b.unary(L.Reciprocal(), v, c.name + "/reciprocal"), "Mul", 0
    k = _sample_const(b, const, v)
    one, zero = torch.ones((), dtype=b.dtype), torch.zeros((), dtype=b.dtype)
    if op == "Add":
        scale, shift = one, k
    elif op == "Sub":
        scale, shift = (one, -k) if p == 0 else (-one, k)
    elif op == "Mul":
        scale, shift = k, zero
    else:
        scale, shift = 1.0 / k, zero
    return _same_layout(b, c, L.ElementwiseAffine(scale, shift), v)


def _binary_two(b: Builder, c: Call, op: str) -> Value:
    """Two input-dependent operands (see :func:`onnx_models.ops_graph.binary_two`)."""
    return G.binary_two(b, c, op)


def conv(b: Builder, c: Call) -> Value:
    """``nn.Conv2d`` with zero padding."""
    m = c.module
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise b.error(f"{c.name}: Conv padding {m.padding!r}/{m.padding_mode} is not supported")
    v = b.to_batched(_single_input(b, c), c.name + "/batch")
    bias = m.bias if m.bias is not None else torch.zeros(m.out_channels)
    layer = L.Conv2d(b.tensor(m.weight), b.tensor(bias), _pair(m.stride), _pair(m.padding),
                     _pair(m.dilation), int(m.groups))
    return b.emit(layer, [v], tuple(c.out.shape), True, c.name)


def _first(v: Any) -> int:
    """An int or the first entry of a sequence."""
    return int(v) if isinstance(v, int) else int(tuple(v)[0])


def _as_2d(b: Builder, c: Call, layer: L.Layer) -> Value:
    """Run a 2-D layer on a ``[C, L]`` sample viewed as ``[C, 1, L]`` (1-D conv/pool)."""
    v = b.to_batched(_single_input(b, c), c.name + "/batch")
    if len(v.sample) != 2:
        raise b.error(f"{c.name}: 1-D {type(c.module).__name__} needs a [N, C, L] input")
    v2 = b.reshape(v, (1, v.sample[0], 1, v.sample[1]), True, c.name + "/to2d")
    out = tuple(c.out.shape)
    y = b.emit(layer, [v2], (out[0], out[1], 1, out[2]), True, c.name)
    return b.reshape(y, out, True, c.name + "/to1d")


def conv1d(b: Builder, c: Call) -> Value:
    """``nn.Conv1d`` as a Conv2d with a height-1 kernel."""
    m = c.module
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise b.error(f"{c.name}: Conv padding {m.padding!r}/{m.padding_mode} is not supported")
    bias = m.bias if m.bias is not None else torch.zeros(m.out_channels)
    layer = L.Conv2d(b.tensor(m.weight).unsqueeze(2).contiguous(), b.tensor(bias),
                     (1, _first(m.stride)), (0, _first(m.padding)), (1, _first(m.dilation)),
                     int(m.groups))
    return _as_2d(b, c, layer)


def pool1d(b: Builder, c: Call) -> Value:
    """``nn.MaxPool1d`` / ``nn.AvgPool1d`` as their 2-D versions on ``[C, 1, L]``."""
    m = c.module
    k = _first(m.kernel_size)
    s = _first(m.stride if m.stride is not None else m.kernel_size)
    p = _first(m.padding)
    if type(m).__name__ == "MaxPool1d":
        if m.return_indices:
            raise b.error(f"{c.name}: MaxPool with indices is not supported")
        layer: L.Layer = L.MaxPool2d((1, k), (1, s), (0, p), (1, _first(m.dilation)),
                                     bool(m.ceil_mode))
    else:
        layer = L.AvgPool2d((1, k), (1, s), (0, p), bool(m.count_include_pad), bool(m.ceil_mode))
    return _as_2d(b, c, layer)


def _pads(b: Builder, c: Call) -> tuple[list[int], float, str]:
    """Torch-order pads, fill value and mode of a static or dynamic Pad."""
    m = c.module
    if type(m).__name__ == "OnnxPadStatic":
        return [int(p) for p in m.pads], float(m.constant_value), m.mode
    from onnx2torch.node_converters.pad import _onnx_padding_to_torch
    pads = _onnx_padding_to_torch(torch.as_tensor(c.concrete[1]).tolist())
    value = c.kwargs.get("constant_value")
    if value is None and len(c.concrete) > 2:
        value = c.concrete[2]
    if value is None or torch.as_tensor(value).numel() == 0:
        value = 0.0
    return [int(p) for p in pads], float(torch.as_tensor(value).reshape(-1)[0]), m.mode


def pad(b: Builder, c: Call) -> Value:
    """Constant Pad (never on the batch axis)."""
    pads, value, mode = _pads(b, c)
    if mode != "constant":  # reflect/edge/wrap: each output entry is an input entry
        return G.select(b, c)
    v = _single_input(b, c)
    if v.batched and len(pads) // 2 >= len(v.full):
        if any(pads[2 * (len(v.full) - 1):]):
            raise b.error(f"{c.name}: padding the batch axis is not supported")
        pads = pads[: 2 * (len(v.full) - 1)]
    keep = min(4, len(pads))
    while len(pads) > keep and pads[-2:] == [0, 0]:
        pads = pads[:-2]
    return b.emit(L.Pad(tuple(pads), value), [v], tuple(c.out.shape), v.batched, c.name)


def avg_pool(b: Builder, c: Call) -> Value:
    """``nn.AvgPool2d``."""
    m = c.module
    if getattr(m, "divisor_override", None):
        raise b.error(f"{c.name}: AvgPool divisor_override is not supported")
    v = b.to_batched(_single_input(b, c), c.name + "/batch")
    stride = m.stride if m.stride is not None else m.kernel_size
    layer = L.AvgPool2d(_pair(m.kernel_size), _pair(stride), _pair(m.padding),
                        bool(m.count_include_pad), bool(m.ceil_mode))
    return b.emit(layer, [v], tuple(c.out.shape), True, c.name)


def max_pool(b: Builder, c: Call) -> Value:
    """``nn.MaxPool2d``."""
    m = c.module
    if m.return_indices:
        raise b.error(f"{c.name}: MaxPool with indices is not supported")
    v = b.to_batched(_single_input(b, c), c.name + "/batch")
    stride = m.stride if m.stride is not None else m.kernel_size
    layer = L.MaxPool2d(_pair(m.kernel_size), _pair(stride), _pair(m.padding),
                        _pair(m.dilation), bool(m.ceil_mode))
    return b.emit(layer, [v], tuple(c.out.shape), True, c.name)


def batch_norm(b: Builder, c: Call) -> Value:
    """``nn.BatchNorm{1,2,3}d`` in eval mode: a per-channel ElementwiseAffine (folded later)."""
    m = c.module
    if m.running_mean is None:
        raise b.error(f"{c.name}: BatchNormalization without running statistics is not supported")
    v = _single_input(b, c)
    layer = G.bn_layer(b, v, m.weight, m.bias, m.running_mean, m.running_var, float(m.eps))
    return b.emit(layer, [v], tuple(c.out.shape), v.batched, c.name)


def onnx_batch_norm(b: Builder, c: Call) -> Value:
    """``OnnxBatchNorm`` (statistics computed in the graph or any layout), constant statistics."""
    v = _single_input(b, c)
    w, bias, mean, var = c.concrete[1:5]
    layer = G.bn_layer(b, v, w, bias, mean, var, float(c.module.epsilon))
    return b.emit(layer, [v], tuple(c.out.shape), v.batched, c.name)


def sequential(b: Builder, c: Call) -> Value:
    """``nn.Sequential`` (e.g. asymmetric Pad + Conv): translate child by child."""
    v, x = _single_input(b, c), c.concrete[0]
    for i, child in enumerate(c.module):
        with torch.no_grad():
            y = child(x)
        handler = handler_for(child)
        if handler is None:
            raise b.error(f"{c.name}: {type(child).__name__} is not supported")
        v = handler(b, Call(child, [v], {}, [x], y, f"{c.name}.{i}"))
        x = y
    return v


HANDLERS: dict[str, Handler] = {
    "ReLU": activation(L.ReLU), "Sigmoid": activation(L.Sigmoid), "Tanh": activation(L.Tanh),
    "OnnxFunction": U.function, "OnnxRound": U.function, "OnnxSqrt": U.function,
    "OnnxReciprocal": U.function, "OnnxNeg": U.neg, "OnnxPow": U.power,
    "LeakyReLU": U.leaky_relu, "OnnxClip": U.clip_module, "ReLU6": U.clip_module,
    "Hardtanh": U.clip_module, "OnnxHardSigmoid": U.hard_sigmoid, "OnnxMinMax": U.min_max,
    "OnnxCopyIdentity": identity, "Identity": identity, "Dropout": identity,
    "OnnxDropoutDynamic": identity, "OnnxCast": cast,
    "Flatten": reshape, "OnnxFlatten": reshape, "OnnxReshape": reshape,
    "OnnxSqueezeStaticAxes": reshape, "OnnxSqueezeDynamicAxes": reshape,
    "OnnxUnsqueezeStaticAxes": reshape, "OnnxUnsqueezeDynamicAxes": reshape,
    "OnnxTranspose": transpose,
    "Linear": linear, "OnnxGemm": gemm, "OnnxMatMul": matmul, "OnnxBinaryMathOperation": binary,
    "Conv2d": conv, "Conv1d": conv1d, "MaxPool1d": pool1d, "AvgPool1d": pool1d,
    "ConvTranspose2d": G.conv_transpose, "ConvTranspose1d": G.conv_transpose,
    "OnnxPadStatic": pad, "OnnxPadDynamic": pad,
    "AvgPool2d": avg_pool, "MaxPool2d": max_pool,
    "BatchNorm1d": batch_norm, "BatchNorm2d": batch_norm, "BatchNorm3d": batch_norm,
    "OnnxBatchNorm": onnx_batch_norm, "Sequential": sequential,
    "OnnxSlice": G.select, "OnnxSliceV9": G.select, "OnnxGather": G.select,
    "OnnxGatherElements": G.select, "OnnxGatherND": G.select, "OnnxSplit": G.select,
    "OnnxSplit13": G.select, "OnnxExpand": G.select, "OnnxTile": G.select,
    "OnnxResize": G.select, "OnnxResizeV10": G.select, "OnnxWhere": G.select,
    "OnnxDepthToSpace": G.select, "OnnxConcat": G.concat,
    "OnnxReduceSumStaticAxes": G.reduce, "OnnxReduceSumDynamicAxes": G.reduce,
    "OnnxReduceStaticAxes": G.reduce,
    "Softmax": G.softmax, "OnnxSoftmaxV1V11": G.softmax,
    "LayerNorm": G.layer_norm, "OnnxLayerNorm": G.layer_norm,
}


def handler_for(module: Any) -> Handler | None:
    """The handler for an onnx2torch module, or None when the op is not supported."""
    return HANDLERS.get(type(module).__name__)


G.install_converters()
