"""Inputs of a comparison: the labelled points (``.npz``), the models, and the ball's clip range."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KEY_PAIRS = (("x", "y"), ("x_test", "y_test"))


class CompareInputError(ValueError):
    """Bad input to a comparison (the message is one line naming the problem)."""


class NormNotAvailable(CompareInputError):
    """An l2/l1 ball was asked for; only l-inf balls are implemented."""


def load_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` [N, ...] float and ``y`` [N] int64 from an ``.npz`` with x, y (or x_test, y_test)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    if not zipfile.is_zipfile(path):
        raise CompareInputError(f"{path.name}: not an .npz archive (expected arrays x and y)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = next((k for k in KEY_PAIRS if all(n in npz.files for n in k)), None)
            if keys is None:
                raise CompareInputError(f"{path.name}: needs arrays x and y (or x_test and y_test); "
                                        f"found: {', '.join(npz.files) or 'nothing'}")
            x, y = np.asarray(npz[keys[0]]), np.asarray(npz[keys[1]])
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, CompareInputError):
            raise
        raise CompareInputError(f"{path.name}: not a readable .npz file ({exc})") from exc
    return check_points(x, y, path.name)


def check_points(x: Any, y: Any, name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Shape and type checks: at least one sample, finite reals, one integer label each."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or x.shape[0] == 0:
        raise CompareInputError(f"{name}: x must hold N >= 1 samples, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise CompareInputError(f"{name}: x must hold real numbers, got dtype {x.dtype}")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != x.shape[0]:
        raise CompareInputError(f"{name}: y must hold one label per sample ({x.shape[0]}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.round(y) == y)):
            raise CompareInputError(f"{name}: y must hold integer class labels, got {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise CompareInputError(f"{name}: x contains NaN or infinite values")
    if np.any(y < 0):
        raise CompareInputError(f"{name}: labels must be >= 0")
    return x.reshape(x.shape[0], -1).astype(np.float64), y.astype(np.int64)


def clip_range(x: np.ndarray) -> tuple[float, float]:
    """``(0, 1)`` when the data lies in [0, 1], else the data's own ``(min, max)``."""
    lo, hi = float(np.min(x)), float(np.max(x))
    return (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)


def ball(x: np.ndarray, eps: float, clip: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """The l-inf ball of radius ``eps`` around ``x`` (float64), intersected with ``clip``."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = np.maximum(lo, clip[0]), np.minimum(hi, clip[1])
    if np.any(lo > hi):
        raise CompareInputError(f"the point lies more than eps outside the clip range {clip}")
    return lo, hi


def check_norm(norm: str | float) -> str:
    """``'inf'``, ``'2'`` or ``'1'`` (l_p balls: ``vnnlib.spec.Ball``); anything else is bad input."""
    text = str(norm).strip().lower().lstrip("l")
    if text in ("inf", "infinity", "oo"):
        return "inf"
    if text in ("2", "2.0", "1", "1.0"):
        return text[0]
    raise CompareInputError(f"unknown norm {norm!r} (inf, 2 or 1)")


def lp_ball(x: np.ndarray, eps: float, norm: str) -> Any:
    """The ``vnnlib.spec.Ball`` of an l2/l1 comparison (``None`` for l-inf: the box is exact)."""
    from vnnlib.spec import Ball

    return None if norm == "inf" else Ball(np.asarray(x, np.float64).reshape(-1), float(eps), norm)


def check_eps(eps: float) -> float:
    """A finite radius >= 0."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise CompareInputError(f"eps must be a number, got {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise CompareInputError(f"eps must be finite and >= 0, got {eps!r}")
    return value


@dataclass
class Model:
    """A model under comparison: its name, the IR network, the replay reference (``None``:
    the ONNX source file), and how a worker process rebuilds it (``source``)."""

    name: str
    network: Any
    reference: Any = None
    source: Any = None
    input_shape: tuple[int, ...] | None = None
    meta: dict = field(default_factory=dict)


def resolve(model: Any, input_shape: Any = None, name: str | None = None) -> Model:
    """A path, a loaded Network, or a ``torch.nn.Module`` (with ``input_shape``) -> Model."""
    from onnx_models.network import Network

    if isinstance(model, (str, Path)):
        import onnx_models

        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(2, "No such file", str(path))
        return Model(name or path.stem, onnx_models.load(path), None, str(path))
    if isinstance(model, Network):
        stem = Path(model.source).stem if model.source else "network"
        return Model(name or stem, model, None, model)
    import torch

    if isinstance(model, torch.nn.Module):
        from bab.torch_model import TorchReference, from_torch

        if input_shape is None:
            raise CompareInputError("a torch.nn.Module needs input_shape= (one sample's shape, no batch dimension)")
        network = from_torch(model, input_shape)
        return Model(name or type(model).__name__, network, TorchReference(model, network.input_shape),
                     model, tuple(network.input_shape))
    raise CompareInputError(f"a model must be an ONNX path, a Network or a torch.nn.Module, got {type(model).__name__}")


def reference_of(model: Model) -> Any:
    """The replay ground truth: the given reference, the ONNX file via onnxruntime, or the
    network itself when it has no source file."""
    if model.reference is not None:
        return model.reference
    net = model.network
    if net.source and Path(net.source).exists():
        from onnx_models import OnnxReference

        model.reference = OnnxReference(net.source)
    else:
        model.reference = NetworkReference(net)
    return model.reference


class NetworkReference:
    """Fallback reference for a Network with no source file: its own forward (float64 out)."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self.n_inputs = network.n_inputs
        self.dtype = np.dtype(network.io.input_dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Flat ``[B, n_in]`` -> ``[B, n_out]`` float64."""
        return self.network.evaluate(np.atleast_2d(x))


def check_model_fits(model: Model, n_features: int, y: np.ndarray) -> None:
    """The model takes ``n_features`` inputs and has an output for every label."""
    net = model.network
    if net.n_inputs != n_features:
        raise CompareInputError(f"model {model.name} takes {net.n_inputs} inputs but the data has "
                                f"{n_features} features per sample")
    if int(y.max()) >= net.n_outputs:
        raise CompareInputError(f"model {model.name} has {net.n_outputs} outputs but the data has "
                                f"label {int(y.max())}")
