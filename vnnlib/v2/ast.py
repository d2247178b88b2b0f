"""The typed syntax tree of a VNN-LIB 2.0 query (frozen dataclasses, one per grammar rule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Pos:
    """1-based line and column of a construct's first token."""

    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


@dataclass(frozen=True)
class NumberLit:
    """A ``Number`` token, kept as written (``-1``, ``0.5``)."""

    text: str
    pos: Pos

    @property
    def is_integer(self) -> bool:
        """True when written without a fractional part."""
        return "." not in self.text


@dataclass(frozen=True)
class Version:
    """``(vnnlib-version <major.minor>)``."""

    major: int
    minor: int
    pos: Pos


@dataclass(frozen=True)
class TensorDecl:
    """``declare-input`` / ``declare-hidden`` / ``declare-output``.

    ``onnx_name``: the node output a hidden declaration refers to (unquoted, escapes resolved);
    ``options``: the input options as written (``initialized``).
    """

    kind: str  # "input" | "hidden" | "output"
    name: str
    elem_type: str
    shape: tuple[NumberLit, ...]
    pos: Pos
    name_pos: Pos
    type_pos: Pos
    onnx_name: str = ""
    options: tuple[Pos, ...] = ()


@dataclass(frozen=True)
class Equivalence:
    """``(equal-to N)`` or ``(isomorphic-to N)``."""

    kind: str  # "equal-to" | "isomorphic-to"
    target: str
    pos: Pos
    target_pos: Pos


@dataclass(frozen=True)
class NetworkDecl:
    """``(declare-network NAME equivalences inputs hiddens outputs)``."""

    name: str
    equivalences: tuple[Equivalence, ...]
    inputs: tuple[TensorDecl, ...]
    hiddens: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    pos: Pos
    name_pos: Pos

    @property
    def tensors(self) -> tuple[TensorDecl, ...]:
        """Inputs, hiddens and outputs in declaration order."""
        return self.inputs + self.hiddens + self.outputs


@dataclass(frozen=True)
class Var:
    """A tensor element ``X[0,3]`` (``indices`` is None for a scalar reference ``Y``)."""

    name: str
    indices: tuple[NumberLit, ...] | None
    pos: Pos


@dataclass(frozen=True)
class Const:
    """A numeric constant."""

    value: NumberLit

    @property
    def pos(self) -> Pos:
        return self.value.pos


@dataclass(frozen=True)
class Arith:
    """An n-ary arithmetic operation: ``op`` is ``'neg'``, ``'+'``, ``'-'`` or ``'*'``."""

    op: str
    args: tuple["ArithExpr", ...]
    pos: Pos


ArithExpr = Union[Var, Const, Arith]


@dataclass(frozen=True)
class Compare:
    """``(op left right)`` with ``op`` in ``> < >= <= != ==``."""

    op: str
    left: ArithExpr
    right: ArithExpr
    pos: Pos


@dataclass(frozen=True)
class Connective:
    """``(and ...)`` or ``(or ...)``."""

    op: str  # "and" | "or"
    args: tuple["BoolExpr", ...]
    pos: Pos


BoolExpr = Union[Compare, Connective]


@dataclass(frozen=True)
class Assertion:
    """``(assert expr)``."""

    expr: BoolExpr
    pos: Pos


@dataclass(frozen=True)
class Query:
    """A whole query: version, network declarations, assertions."""

    version: Version
    networks: tuple[NetworkDecl, ...]
    assertions: tuple[Assertion, ...]
