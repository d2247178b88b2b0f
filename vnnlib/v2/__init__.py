"""VNN-LIB 2.0: lexer, parser, type checker, lowering to :class:`~vnnlib.spec.Spec`, writer.

``load_query(path)`` parses and type-checks a file; ``lower(checked)`` gives a
:class:`Lowered` (Spec + :class:`Layout` of the combined input/output vectors) or an
:class:`Undecidable` with the reason. See docs/vnnlib2.md.
"""

from __future__ import annotations

from pathlib import Path

from vnnlib.load import is_v2_text  # noqa: F401  (the version check lives with the dispatch)
from vnnlib.v2.layout import Layout, NetworkUse, Part
from vnnlib.v2.lower import Lowered, Undecidable, lower
from vnnlib.v2.parser import parse_query
from vnnlib.v2.typecheck import CheckedQuery, check, check_mapping

__all__ = ["CheckedQuery", "Layout", "Lowered", "NetworkUse", "Part", "Undecidable", "check",
           "check_mapping", "load_query", "lower", "parse_query", "parse_text", "is_v2_text"]


def parse_text(text: str, path: str | None = None) -> CheckedQuery:
    """Parse and type-check query text."""
    return check(parse_query(text, path), path)


def load_query(path: str | Path) -> CheckedQuery:
    """Parse and type-check a query file (gzipped files are read too)."""
    from vnnlib.parser import _decode

    return parse_text(_decode(Path(path).read_bytes(), str(path)), str(path))


