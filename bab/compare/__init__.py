"""The SoK comparison: deterministic (Table III) and smoothing (Table IV) tables.

``bab.compare(models, data, eps=...)`` runs the deterministic table; this package is itself
callable (``bab.compare`` is both the package and the API function), so the call works
whichever of the two Python found first. Submodules load lazily.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["compare", "certify", "CompareResult", "Certificate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bab.compare import api

        return getattr(api, name)
    raise AttributeError(f"module 'bab.compare' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    """``bab.compare(...)`` calls :func:`bab.compare.api.compare`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from bab.compare.api import compare

        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
