"""Scoping and typing of a VNN-LIB 2.0 query (the standard's scoping and typing sections).

Checks: supported version, unique names, element types, shapes, ``equal-to`` /
``isomorphic-to`` declarations, declared variables, index counts and bounds, one element
type per comparison, constants that belong to that type, and the network mapping given on
the command line. Every failure is a :class:`~vnnlib.parser.VnnlibError` at ``line:col``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NoReturn

from vnnlib.parser import VnnlibError
from vnnlib.v2 import ast

SUPPORTED_MAJOR = 2
REAL_TYPES = frozenset({"real", "Real"})
FLOAT_TYPES = frozenset({"float16", "bfloat16", "float32", "float64", "float8e4m3fn",
                         "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"}) | REAL_TYPES
INT_TYPES = frozenset({"int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                       "int64", "uint64", "bool"})
ELEMENT_TYPES = FLOAT_TYPES | INT_TYPES


@dataclass(frozen=True)
class Symbol:
    """A declared tensor variable: its network, declaration and concrete shape."""

    network: str
    decl: ast.TensorDecl
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of scalar elements."""
        return math.prod(self.shape)

    def flat_index(self, index: tuple[int, ...]) -> int:
        """C-order flat position of ``index``."""
        flat = 0
        for i, d in zip(index, self.shape):
            flat = flat * d + i
        return flat


@dataclass(frozen=True)
class CheckedQuery:
    """A well-typed query with its symbol table (name -> :class:`Symbol`)."""

    query: ast.Query
    symbols: Mapping[str, Symbol]
    networks: Mapping[str, ast.NetworkDecl]


def _fail(msg: str, pos: ast.Pos, path: str | None) -> NoReturn:
    raise VnnlibError(msg, path, pos.line, pos.col)


def check(query: ast.Query, path: str | None = None) -> CheckedQuery:
    """Type-check ``query``; returns the symbol table or raises :class:`VnnlibError`."""
    v = query.version
    if v.major != SUPPORTED_MAJOR:
        _fail(f"unsupported VNN-LIB version {v.major}.{v.minor} (this parser reads 2.x)", v.pos, path)
    networks: dict[str, ast.NetworkDecl] = {}
    symbols: dict[str, Symbol] = {}
    for net in query.networks:
        _declare(net.name, net.name_pos, networks, symbols, path)
        for decl in net.tensors:
            _declare(decl.name, decl.name_pos, networks, symbols, path)
            symbols[decl.name] = Symbol(net.name, decl, _tensor(decl, path))
        _equivalence(net, networks, symbols, path)
        networks[net.name] = net
    checker = _ExprChecker(symbols, path)
    for a in query.assertions:
        checker.bool_expr(a.expr)
    return CheckedQuery(query, symbols, networks)


def _declare(name: str, pos: ast.Pos, networks: Mapping, symbols: Mapping, path: str | None) -> None:
    if name in networks or name in symbols:
        _fail(f"'{name}' is declared twice (network and variable names must be unique)", pos, path)


def _tensor(decl: ast.TensorDecl, path: str | None) -> tuple[int, ...]:
    """The declaration's shape after checking its element type, dimensions and options."""
    if decl.elem_type not in ELEMENT_TYPES:
        _fail(f"unknown element type '{decl.elem_type}' (an ONNX tensor element type such as "
              "float32, or real)", decl.type_pos, path)
    dims = []
    for d in decl.shape:
        if not d.is_integer or d.text.startswith("-"):
            _fail(f"a dimension must be a non-negative integer, not {d.text}", d.pos, path)
        dims.append(int(d.text))
    if len(decl.options) > 1:
        _fail(f"input '{decl.name}' has more than one 'initialized' option", decl.options[1], path)
    return tuple(dims)


def _equivalence(net: ast.NetworkDecl, networks: Mapping[str, ast.NetworkDecl],
                 symbols: Mapping[str, Symbol], path: str | None) -> None:
    """The rules NetworkEq and NetworkIso."""
    if not net.equivalences:
        return
    if len(net.equivalences) > 1:
        _fail(f"network '{net.name}' has more than one equal-to/isomorphic-to declaration",
              net.equivalences[1].pos, path)
    eq = net.equivalences[0]
    other = networks.get(eq.target)
    if other is None:
        what = "itself" if eq.target == net.name else f"'{eq.target}', which is not a network declared before it"
        _fail(f"{eq.kind} refers to {what}", eq.target_pos, path)
    if other.equivalences:
        _fail(f"{eq.kind} refers to '{eq.target}', which has an equivalence declaration itself",
              eq.target_pos, path)
    same_type = eq.kind == "equal-to"
    for kind, mine, theirs in (("input", net.inputs, other.inputs), ("output", net.outputs, other.outputs)):
        if len(mine) != len(theirs):
            _fail(f"{eq.kind} '{eq.target}': {len(mine)} {kind} declarations here but "
                  f"{len(theirs)} there", eq.pos, path)
        for a, b in zip(mine, theirs):
            _same(a, b, symbols, same_type, eq, path)
    if same_type:
        by_node = {h.onnx_name: h for h in other.hiddens}
        for h in net.hiddens:
            if h.onnx_name in by_node:
                _same(h, by_node[h.onnx_name], symbols, True, eq, path)


def _same(a: ast.TensorDecl, b: ast.TensorDecl, symbols: Mapping[str, Symbol], same_type: bool,
          eq: ast.Equivalence, path: str | None) -> None:
    sa, sb = symbols[a.name].shape, symbols[b.name].shape
    if sa != sb:
        _fail(f"{eq.kind} '{eq.target}': '{a.name}' has shape {list(sa)} but '{b.name}' has "
              f"{list(sb)}", a.pos, path)
    if same_type and a.elem_type != b.elem_type:
        _fail(f"equal-to '{eq.target}': '{a.name}' has element type {a.elem_type} but "
              f"'{b.name}' has {b.elem_type}", a.type_pos, path)


class _ExprChecker:
    """Typing of assertions: returns an expression's element type (None: constants only)."""

    def __init__(self, symbols: Mapping[str, Symbol], path: str | None) -> None:
        self.symbols = symbols
        self.path = path

    def bool_expr(self, e: ast.BoolExpr) -> None:
        if isinstance(e, ast.Connective):
            for a in e.args:
                self.bool_expr(a)
            return
        tl, tr = self.arith(e.left), self.arith(e.right)
        if tl is None and tr is None:
            return  # constants only: untypable in the standard's rules, but its own example
            # queries (syntax/test/test_linearise.vnnlib) use them; lowering evaluates them
        if tl is not None and tr is not None and tl != tr:
            _fail(f"comparison '{e.op}' mixes element types {tl} and {tr}", e.pos, self.path)
        typ = tl or tr
        self.constants(e.left, typ)
        self.constants(e.right, typ)

    def arith(self, e: ast.ArithExpr) -> str | None:
        if isinstance(e, ast.Const):
            return None
        if isinstance(e, ast.Var):
            return self.var(e)
        found: str | None = None
        for a in e.args:
            t = self.arith(a)
            if t is not None and found is not None and t != found:
                _fail(f"'{e.op if e.op != 'neg' else '-'}' mixes element types {found} and {t}",
                      a.pos, self.path)
            found = found or t
        return found

    def var(self, e: ast.Var) -> str:
        sym = self.symbols.get(e.name)
        if sym is None:
            _fail(f"undeclared variable '{e.name}'", e.pos, self.path)
        rank = len(sym.shape)
        if e.indices is None:
            if rank:
                _fail(f"'{e.name}' has shape {list(sym.shape)}: give {rank} ind"
                      f"{'ex' if rank == 1 else 'ices'}", e.pos, self.path)
            return sym.decl.elem_type
        if len(e.indices) != rank:
            _fail(f"'{e.name}' has {rank} dimension{'s' * (rank != 1)} but {len(e.indices)} "
                  f"ind{'ex is' if len(e.indices) == 1 else 'ices are'} given", e.pos, self.path)
        for k, (idx, dim) in enumerate(zip(e.indices, sym.shape)):
            if not idx.is_integer or idx.text.startswith("-") or int(idx.text) >= dim:
                _fail(f"index {idx.text} is out of bounds for dimension {k} of '{e.name}' "
                      f"(size {dim})", idx.pos, self.path)
        return sym.decl.elem_type

    def constants(self, e: ast.ArithExpr, typ: str) -> None:
        """Every constant of ``e`` must be an element of ``typ``."""
        if isinstance(e, ast.Const):
            if typ in INT_TYPES and not e.value.is_integer:
                _fail(f"{e.value.text} is not a value of element type {typ}", e.pos, self.path)
        elif isinstance(e, ast.Arith):
            for a in e.args:
                self.constants(a, typ)


def check_mapping(checked: CheckedQuery, models: Mapping[str, str], path: str | None = None) -> dict[str, str]:
    """The model file for every declared network (``equal-to`` networks share their target's).

    ``models`` maps network names to files. A network without ``equal-to`` needs one, names
    that are not declared are refused, and an ``equal-to`` network given a different file is
    refused (equality means the same model file).
    """
    for name in models:
        if name not in checked.networks:
            raise VnnlibError(f"--network {name}: the query declares no network '{name}' "
                              f"(declared: {', '.join(checked.networks)})", path)
    out: dict[str, str] = {}
    for name, net in checked.networks.items():
        eq = net.equivalences[0] if net.equivalences else None
        if eq is not None and eq.kind == "equal-to":
            target = out[eq.target]
            if name in models and str(models[name]) != str(target):
                _fail(f"network '{name}' is equal-to '{eq.target}' but was given a different "
                      f"model file ({models[name]} vs {target})", net.pos, path)
            out[name] = target
        elif name not in models:
            _fail(f"no model file for network '{name}' (give --network {name}=FILE.onnx)", net.pos, path)
        else:
            out[name] = str(models[name])
    return out
