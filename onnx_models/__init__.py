"""ONNX front end: ONNX file -> :class:`Network` (typed layers), plus onnxruntime replay.

Heavy dependencies (torch, onnx, onnx2torch, onnxruntime) are imported lazily, so importing
this package (or ``onnx_models.source`` / ``onnx_models.reference``) stays cheap and torch-free.
"""

from onnx_models.errors import OnnxModelError

__all__ = ["load", "OnnxModelError", "OnnxReference", "Network", "OnnxIO", "compare"]

_LAZY = {"load": "onnx_models.loader", "Network": "onnx_models.network",
         "OnnxIO": "onnx_models.network", "OnnxReference": "onnx_models.reference",
         "compare": "onnx_models.reference"}


def __getattr__(name: str):  # lazy: the loader and Network import torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onnx_models' has no attribute {name!r}")
