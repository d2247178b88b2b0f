"""Import ``onnx2torch`` even when ``torchvision`` cannot be loaded.

onnx2torch imports ``torchvision`` at module level, but only uses it in two converters
(``nms.py``: ``torchvision.ops.box_convert`` / ``torchvision.ops.nms``; ``roialign.py``:
``from torchvision.ops import roi_align``). The torchvision wheel from PyPI is built against
the CUDA torch; next to the CPU-only torch its compiled ops do not load and ``import
torchvision`` raises ``RuntimeError: operator torchvision::nms does not exist``. None of the
verified networks use NonMaxSuppression or RoiAlign, so when the real import fails we put a
minimal stub ``torchvision`` / ``torchvision.ops`` in ``sys.modules`` whose functions raise
``NotImplementedError``, and import onnx2torch against it. This is done once, here.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import Any

_STUB_FUNCTIONS = ("nms", "box_convert", "roi_align", "batched_nms")


def _unavailable(name: str) -> Any:
    """A function that explains why the torchvision op is missing."""

    def fn(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(
            f"torchvision.ops.{name} is unavailable: torchvision failed to import against "
            "this torch build, so onnx2torch runs with a stub (NonMaxSuppression/RoiAlign "
            "models are not supported)")

    fn.__name__ = name
    return fn


def _install_torchvision_stub() -> None:
    """Replace any (half-imported) torchvision in ``sys.modules`` by a stub package."""
    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    tv = types.ModuleType("torchvision")
    tv.__doc__ = "Stub installed by onnx_models._onnx2torch_compat (real import failed)."
    tv.__path__ = []  # mark as a package so ``torchvision.ops`` resolves
    tv.__version__ = "0.0.0+stub"
    # a spec, so importlib.util.find_spec works on the stub (torch.onnx's dynamo exporter
    # calls it and logs a traceback per torchvision op when it raises)
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    ops = types.ModuleType("torchvision.ops")
    ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", None)
    for name in _STUB_FUNCTIONS:
        setattr(ops, name, _unavailable(name))
    tv.ops = ops
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = ops


def _drop_onnx2torch() -> None:
    """Forget a partially imported onnx2torch so it can be imported again."""
    for key in [k for k in sys.modules if k == "onnx2torch" or k.startswith("onnx2torch.")]:
        del sys.modules[key]


def import_onnx2torch() -> types.ModuleType:
    """Return the ``onnx2torch`` module (torchvision stubbed if it cannot load), with the
    converters for current opsets of :mod:`onnx_models.opset` registered."""
    if "onnx2torch" in sys.modules and hasattr(sys.modules["onnx2torch"], "convert"):
        module = sys.modules["onnx2torch"]
    else:
        try:
            module = importlib.import_module("onnx2torch")
        except (ImportError, RuntimeError, OSError, AttributeError):
            _drop_onnx2torch()
            _install_torchvision_stub()
            module = importlib.import_module("onnx2torch")
    from onnx_models.opset import register_converters

    register_converters()
    return module
