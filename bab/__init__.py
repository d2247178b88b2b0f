"""bab: a complete branch-and-bound neural-network verifier with solver plugins.

``bab.verify(model, spec, config=None, timeout=None)`` is the Python API; heavy modules are
imported lazily so that ``import bab`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["verify", "certify", "compare", "radius", "Result", "Status", "Config", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "verify":
        from bab.api import verify

        return verify
    if name in {"Result", "Status"}:
        from bab import result

        return getattr(result, name)
    if name == "certify":
        from bab.compare.api import certify

        return certify
    if name == "radius":
        from bab.radius_api import radius

        return radius
    if name == "compare":  # the package is callable: bab.compare(...) runs the comparison
        import importlib

        return importlib.import_module("bab.compare")
    if name == "Config":
        from bab.config import Config

        return Config
    raise AttributeError(f"module 'bab' has no attribute {name!r}")
