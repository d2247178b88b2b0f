"""VNN-LIB property parsing into :class:`~vnnlib.spec.Spec` (our package; shadows PyPI's ``vnnlib``)."""

from vnnlib.spec import Clause, Region, Spec

__all__ = ["Clause", "Region", "Spec", "parse", "parse_text", "parse_cached", "VnnlibError"]


def __getattr__(name: str):  # lazy: keep ``import vnnlib.spec`` cheap
    if name in {"parse", "parse_text", "parse_cached", "VnnlibError"}:
        from vnnlib import parser

        return getattr(parser, name)
    raise AttributeError(name)
