"""Randomized smoothing: probabilistic robustness certificates (Cohen et al. 2019).

``predict`` / ``certify`` work on any classifier on flat batches (e.g. a network from
``onnx_models.load``) with ``gaussian(sigma)`` (l2), ``laplace(lambda)`` or
``uniform(lambda)`` (l1) noise. A certificate holds with probability at least ``1 - alpha``;
it is not a proof::

    import onnx_models
    from bab.smoothing import certify, gaussian

    net = onnx_models.load("model.onnx")
    cert = certify(net, x, gaussian(0.25), n0=100, n=100_000, alpha=0.001)
    print(cert.text())  # class 3 certified with confidence 1-alpha = 0.999, radius ...

Names are imported on first use, so ``bab.smoothing.errors`` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "certify": ("SmoothedPrediction", "SmoothingCertificate", "certify", "certify_batch",
                "predict", "predict_batch", "sample_counts"),
    "errors": ("SmoothingError",),
    "noise": ("NOISES", "Gaussian", "Laplace", "Noise", "Uniform", "gaussian", "laplace",
              "make_noise", "uniform"),
    "stats": ("certify_counts", "feasibility_warnings", "lower_confidence_bound",
              "predict_counts"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'bab.smoothing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bab.smoothing.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names."""
    return __all__
