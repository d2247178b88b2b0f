"""VNN-LIB property parsing into :class:`~vnnlib.spec.Spec` (our package; shadows PyPI's ``vnnlib``)."""

from vnnlib.spec import Clause, Region, Spec

__all__ = ["Clause", "Region", "Spec", "parse", "parse_text", "parse_cached", "VnnlibError",
           "load_property"]


def __getattr__(name: str):  # lazy: keep ``import vnnlib.spec`` cheap
    if name in {"parse", "parse_text", "parse_cached", "VnnlibError"}:
        from vnnlib import parser

        return getattr(parser, name)
    if name == "load_property":  # 1.0 or 2.0, told apart by the (vnnlib-version ...) header
        from vnnlib.load import load_property

        return load_property
    raise AttributeError(name)
