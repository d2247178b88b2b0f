"""Handlers for elementwise nonlinearities on input-dependent tensors.

Exp, Log, Sqrt, Reciprocal, Pow (constant exponent), Sin, Cos, Sign, Floor and Tanh become
their IR layers. The piecewise-linear ones are written exactly with ReLU (see the note in
:mod:`onnx_models.layers`): ``LeakyRelu(x) = a x + (1 - a) relu(x)``,
``Abs(x) = relu(x) + relu(-x)``, ``Clip(x, lo, hi) = hi - relu(hi - lo - relu(x - lo))``,
``Max(a, b) = a + relu(b - a)``, ``Min(a, b) = a - relu(a - b)``; ``Ceil(x) = -Floor(-x)``.
"""

from __future__ import annotations

from typing import Any

import torch

from onnx_models import layers as L
from onnx_models.translate import Builder, Call, Value

_FUNCTIONS: dict[Any, type[L.Layer]] = {
    torch.exp: L.Exp, torch.log: L.Log, torch.sin: L.Sin, torch.cos: L.Cos,
    torch.sign: L.Sign, torch.tanh: L.Tanh, torch.sqrt: L.Sqrt, torch.reciprocal: L.Reciprocal,
    torch.floor: L.Floor,
}


def _one(b: Builder, c: Call) -> Value:
    """The single input-dependent argument (first position)."""
    if c.var_positions() != [0]:
        raise b.error(f"{c.name}: {type(c.module).__name__} must take the input-dependent tensor "
                      "as its first and only tensor argument")
    return c.args[0]


def relu_add(b: Builder, x: Value, y: Value, name: str) -> Value:
    """``x + y`` for two Values of one ONNX shape."""
    x, y = b.same_view([x, y], name)
    return b.emit(L.Add(), [x, y], x.full, x.batched, name)


def abs_value(b: Builder, v: Value, name: str) -> Value:
    """``|v| = relu(v) + relu(-v)``."""
    pos = b.unary(L.ReLU(), v, name + "/pos")
    neg = b.unary(L.ReLU(), b.affine(v, -1.0, 0.0, name + "/neg"), name + "/negrelu")
    return relu_add(b, pos, neg, name)


def leaky(b: Builder, v: Value, slope: float, name: str) -> Value:
    """``slope * v + (1 - slope) * relu(v)``."""
    lin = b.affine(v, float(slope), 0.0, name + "/lin")
    r = b.affine(b.unary(L.ReLU(), v, name + "/relu"), 1.0 - float(slope), 0.0, name + "/scale")
    return relu_add(b, lin, r, name)


def clip(b: Builder, v: Value, lo: float | None, hi: float | None, name: str) -> Value:
    """``min(max(v, lo), hi)`` with ReLUs (either bound may be absent)."""
    if lo is not None:
        v = b.affine(b.unary(L.ReLU(), b.affine(v, 1.0, -lo, name + "/lo"), name + "/relu_lo"),
                     1.0, lo, name + "/lo_back")
    if hi is not None:
        r = b.unary(L.ReLU(), b.affine(v, -1.0, hi, name + "/hi"), name + "/relu_hi")
        v = b.affine(r, -1.0, hi, name + "/hi_back")
    return v


def function(b: Builder, c: Call) -> Value:
    """``OnnxFunction`` / ``OnnxRound`` / ``OnnxSqrt`` / ``OnnxReciprocal``: a unary layer."""
    v = _one(b, c)
    fn = getattr(c.module, "function", None) or getattr(c.module, "round_function", None)
    kind = type(c.module).__name__
    fn = {"OnnxSqrt": torch.sqrt, "OnnxReciprocal": torch.reciprocal}.get(kind, fn)
    if fn is torch.abs:
        return abs_value(b, v, c.name)
    if fn is torch.ceil:
        neg = b.unary(L.Floor(), b.affine(v, -1.0, 0.0, c.name + "/neg"), c.name + "/floor")
        return b.affine(neg, -1.0, 0.0, c.name)
    if fn not in _FUNCTIONS:
        raise b.error(f"{c.name}: elementwise function {getattr(fn, '__name__', fn)} on an "
                      "input-dependent tensor is not supported")
    return b.unary(_FUNCTIONS[fn](), v, c.name)


def neg(b: Builder, c: Call) -> Value:
    """``OnnxNeg``: ``-x``."""
    return b.affine(_one(b, c), -1.0, 0.0, c.name)


def power(b: Builder, c: Call) -> Value:
    """``OnnxPow`` with an input-dependent base and a constant (uniform) exponent."""
    v = _one(b, c)
    e = torch.as_tensor(c.concrete[1]).reshape(-1)
    if e.numel() == 0 or not bool(torch.all(e == e[0])):
        raise b.error(f"{c.name}: Pow needs one constant exponent for all entries")
    exponent = float(e[0])
    v = b.expand(v, tuple(c.out.shape), c.name + "/expand")
    if exponent == 1.0:
        return v
    return b.unary(L.Pow(exponent), v, c.name)


def leaky_relu(b: Builder, c: Call) -> Value:
    """``nn.LeakyReLU``."""
    return leaky(b, _one(b, c), float(c.module.negative_slope), c.name)


def clip_module(b: Builder, c: Call) -> Value:
    """``OnnxClip`` / ``nn.ReLU6`` / ``nn.Hardtanh``."""
    v, m = _one(b, c), c.module
    lo, hi = m.min_val, m.max_val  # ReLU6 is a Hardtanh(0, 6)
    return clip(b, v, None if lo is None else float(lo), None if hi is None else float(hi), c.name)


def hard_sigmoid(b: Builder, c: Call) -> Value:
    """``OnnxHardSigmoid``: ``clip(alpha x + beta, 0, 1)``."""
    v, m = _one(b, c), c.module
    return clip(b, b.affine(v, float(m.alpha), float(m.beta), c.name + "/affine"), 0.0, 1.0, c.name)


def min_max(b: Builder, c: Call) -> Value:
    """``OnnxMinMax`` of tensors and constants, folded pairwise with ReLU."""
    is_max = c.module._op_type == "Max"
    full = tuple(c.out.shape)
    vars_ = [b.expand(a, full, f"{c.name}/expand{k}") for k, a in enumerate(c.args) if isinstance(a, Value)]
    consts = [t for t, a in zip([torch.as_tensor(x) for x in c.concrete], c.args) if not isinstance(a, Value)]
    acc = vars_[0]
    for k, y in enumerate(vars_[1:]):  # max(a, b) = a + relu(b - a); min(a, b) = a - relu(a - b)
        acc, y = b.same_view([acc, y], f"{c.name}/v{k}")
        sign = 1.0 if is_max else -1.0
        diff = relu_add(b, b.affine(acc, -sign, 0.0, f"{c.name}/n{k}"),
                        b.affine(y, sign, 0.0, f"{c.name}/p{k}"), f"{c.name}/d{k}")
        r = b.affine(b.unary(L.ReLU(), diff, f"{c.name}/r{k}"), sign, 0.0, f"{c.name}/s{k}")
        acc = relu_add(b, acc, r, f"{c.name}/m{k}")
    if consts:
        bound = consts[0]
        for t in consts[1:]:
            bound = torch.maximum(bound, t) if is_max else torch.minimum(bound, t)
        k = torch.broadcast_to(bound.double(), full)
        k = k[0] if acc.batched else k
        # max(a, k) = k + relu(a - k); min(a, k) = k - relu(k - a)
        sign = 1.0 if is_max else -1.0
        r = b.unary(L.ReLU(), b.affine(acc, sign, -sign * k, c.name + "/const"), c.name + "/relu")
        acc = b.affine(r, sign, k, c.name + "/const_back")
    return acc
