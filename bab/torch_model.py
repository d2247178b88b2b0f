"""``torch.nn.Module`` -> the verifier's IR (:class:`onnx_models.network.Network`), plus a
replay reference that runs the module itself.

An ``nn.Sequential`` (nested ones allowed) of Linear, Conv2d, ReLU, Sigmoid, Tanh, Flatten,
AvgPool2d, MaxPool2d, Identity and Dropout (eval mode) is translated layer by layer. Any other
module is exported with torch's TorchScript ONNX exporter (offline) and loaded by the ONNX
front end. Either way the converted network is checked against the module's own forward on
random inputs, and a counterexample found by the verifier is replayed on the module
(:class:`TorchReference`), never only on the translation.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onnx_models import layers as L
from onnx_models.network import Network, OnnxIO

CHECK_SAMPLES = 16
CHECK_TOL = 1e-5
SUPPORTED = ("Linear", "Conv2d", "ReLU", "Sigmoid", "Tanh", "Flatten", "AvgPool2d", "MaxPool2d",
             "Identity", "Dropout (eval mode)")


class TorchModelError(ValueError):
    """A torch module that cannot be converted (unsupported modules, or a forward mismatch)."""


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def leaves(module: nn.Module) -> list[nn.Module]:
    """The modules of a (nested) ``nn.Sequential`` in execution order."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in leaves(child)]
    return [module]


def _conv(m: nn.Conv2d) -> L.Layer | None:
    if m.padding_mode != "zeros" or (isinstance(m.padding, str) and m.padding != "valid"):
        return None
    pad = (0, 0) if isinstance(m.padding, str) else _pair(m.padding)
    bias = m.bias if m.bias is not None else torch.zeros(m.out_channels, dtype=m.weight.dtype)
    return L.Conv2d(m.weight.detach().clone(), bias.detach().clone(), _pair(m.stride), pad,
                    _pair(m.dilation), int(m.groups))


def _avgpool(m: nn.AvgPool2d) -> L.Layer | None:
    if m.divisor_override is not None:
        return None
    stride = m.stride if m.stride is not None else m.kernel_size
    return L.AvgPool2d(_pair(m.kernel_size), _pair(stride), _pair(m.padding),
                       bool(m.count_include_pad), bool(m.ceil_mode))


def _maxpool(m: nn.MaxPool2d) -> L.Layer | None:
    if m.return_indices:
        return None
    stride = m.stride if m.stride is not None else m.kernel_size
    return L.MaxPool2d(_pair(m.kernel_size), _pair(stride), _pair(m.padding), _pair(m.dilation),
                       bool(m.ceil_mode))


def layer_for(m: nn.Module, out_shape: tuple[int, ...]) -> L.Layer | None | str:
    """The IR layer of one module, ``None`` for an identity, ``"unsupported"`` otherwise."""
    if type(m) is nn.Linear:
        bias = m.bias if m.bias is not None else torch.zeros(m.out_features, dtype=m.weight.dtype)
        return L.Linear(m.weight.detach().clone(), bias.detach().clone())
    simple = {nn.ReLU: L.ReLU, nn.Sigmoid: L.Sigmoid, nn.Tanh: L.Tanh}
    if type(m) in simple:
        return simple[type(m)]()
    if type(m) is nn.Flatten:
        return L.Reshape(out_shape)
    if type(m) is nn.Identity or (type(m) is nn.Dropout and not m.training):
        return None
    makers = {nn.Conv2d: _conv, nn.AvgPool2d: _avgpool, nn.MaxPool2d: _maxpool}
    if type(m) in makers:
        layer = makers[type(m)](m)
        return "unsupported" if layer is None else layer
    return "unsupported"


def _dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters()), torch.float32)


def _describe(i: int, m: nn.Module) -> str:
    if type(m) is nn.Dropout:
        return f"#{i} Dropout in training mode (call model.eval())"
    return f"#{i} {type(m).__name__}"


def translate(module: nn.Sequential, input_shape: tuple[int, ...]) -> Network:
    """Layer-by-layer translation of a Sequential (raises listing every unsupported module)."""
    mods = leaves(module)
    bad = [_describe(i, m) for i, m in enumerate(mods) if layer_for(m, ()) == "unsupported"]
    if bad:
        raise TorchModelError(f"unsupported modules: {', '.join(bad)} (supported: {', '.join(SUPPORTED)})")
    dtype = _dtype(module)
    x = torch.zeros(2, *input_shape, dtype=dtype)
    nodes: list[L.Node] = []
    for i, m in enumerate(mods):
        try:
            with torch.no_grad():
                x = m(x)
        except Exception as exc:  # noqa: BLE001 - a shape error becomes the user's message
            raise TorchModelError(f"module #{i} {type(m).__name__} fails on input shape "
                                  f"{tuple(input_shape)}: {exc}") from exc
        layer = layer_for(m, tuple(x.shape[1:]))
        if layer is not None:
            nodes.append(L.Node(layer, (len(nodes) - 1,), tuple(x.shape[1:]), f"{i}"))
    out_shape = tuple(x.shape[1:])
    if not nodes:
        nodes.append(L.Node(L.Reshape(out_shape), (-1,), out_shape, "identity"))
    io = OnnxIO("input", (1, *input_shape), _np_name(dtype), "output", (1, *out_shape), True)
    return Network(nodes, tuple(input_shape), out_shape, io, "", dtype, {"from": "torch"})


def _np_name(dtype: torch.dtype) -> str:
    return {torch.float64: "float64", torch.float16: "float16"}.get(dtype, "float32")


def export_and_load(module: nn.Module, input_shape: tuple[int, ...]) -> Network:
    """A non-Sequential module: TorchScript ONNX export to a temporary file, then the loader."""
    import warnings

    import onnx_models

    x = torch.zeros(1, *input_shape, dtype=_dtype(module))
    with tempfile.TemporaryDirectory(prefix="bab-torch-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["input"],
                                  output_names=["output"])
        except Exception as exc:  # noqa: BLE001 - any exporter failure: say so
            raise TorchModelError(f"{type(module).__name__} is not an nn.Sequential of "
                                  f"{', '.join(SUPPORTED)} and its ONNX export failed: {exc}") from exc
        network = onnx_models.load(path)
    network.source = ""  # the file is gone: replay runs the module (TorchReference)
    return network


def check_against(network: Network, module: nn.Module, input_shape: tuple[int, ...],
                  samples: int = CHECK_SAMPLES, tol: float = CHECK_TOL, seed: int = 0) -> float:
    """Max relative difference ``|a-b| / (1+|ref|)`` on random inputs; raises above ``tol``."""
    gen = torch.Generator().manual_seed(seed)
    dtype = _dtype(module)
    x = torch.cat([torch.rand(samples // 2, *input_shape, generator=gen),
                   torch.randn(samples - samples // 2, *input_shape, generator=gen)]).to(dtype)
    with torch.no_grad():
        want = module(x).reshape(samples, -1).double()
        got = network.forward(x.reshape(samples, -1).to(network.dtype)).double()
    if got.shape != want.shape:
        raise TorchModelError(f"converted network gives {tuple(got.shape[1:])} outputs, the "
                              f"module {tuple(want.shape[1:])}")
    diff = float(((got - want).abs() / (1.0 + want.abs())).max())
    if not diff <= tol:
        raise TorchModelError(f"converted network differs from the module's forward by {diff:.3g} "
                              f"(tolerance {tol:g}) on random inputs")
    return diff


def from_torch(module: nn.Module, input_shape: tuple[int, ...] | list[int] | int) -> Network:
    """Convert ``module`` (inputs of ``input_shape``, no batch dimension) and check it."""
    if not isinstance(module, nn.Module):
        raise TorchModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise TorchModelError(f"input_shape must be positive sizes without the batch dimension, got {input_shape!r}")
    if isinstance(module, nn.Sequential):
        network = translate(module, shape)
    else:
        network = export_and_load(module, shape)
    check_against(network, module, shape)
    return network


class TorchReference:
    """Runs the module itself on flat inputs: the replay ground truth for a torch model.

    Same interface as :class:`onnx_models.OnnxReference` (``run``, ``dtype``, ``n_inputs``).
    """

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module = module
        self.sample_shape = tuple(int(s) for s in input_shape)
        self.input_shape = (1, *self.sample_shape)
        self.has_batch_dim = True
        self.torch_dtype = _dtype(module)
        self.dtype = np.dtype(_np_name(self.torch_dtype))
        self.n_inputs = math.prod(self.sample_shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Flat ``[B, n_in]`` (or ``[n_in]``) inputs -> flat float64 ``[B, n_out]`` outputs."""
        xs = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if xs.shape[1] != self.n_inputs:
            raise ValueError(f"expected {self.n_inputs} inputs per sample, got {xs.shape[1]}")
        t = torch.as_tensor(xs.astype(self.dtype)).reshape(xs.shape[0], *self.sample_shape)
        with torch.no_grad():
            y = self.module(t)
        return y.reshape(xs.shape[0], -1).double().numpy()
