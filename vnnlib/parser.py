"""VNN-LIB parser: property text -> :class:`~vnnlib.spec.Spec` (see docs/vnncomp.md §1).

The file describes the *unsafe* set. Top-level asserts are conjoined and the whole formula is
expanded into disjunctive normal form; every conjunct is split into an input box (``X``
bounds, intersected with the top-level bounds) and output rows ``C y <= d`` (one row per
``Y`` atom). Conjuncts with identical boxes become one :class:`Region` whose clauses keep
their order of appearance; within a clause, top-level ``Y`` rows come first.
"""

from __future__ import annotations

import gc
import gzip
import math
import os
import re
import zlib
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Iterator, NoReturn, Union

import numpy as np

from vnnlib import _cache
from vnnlib.lexer import Child, LexError, Node, build_tree, line_col, token_offset, tokenize
from vnnlib.spec import Clause, Region, Spec

__all__ = ["VnnlibError", "parse", "parse_text", "parse_cached", "MAX_CONJUNCTS"]

MAX_CONJUNCTS = 100_000
"""Largest number of DNF conjuncts accepted before the expansion is refused."""
MAX_ATOMS = 5_000_000
"""Largest total number of atoms over all DNF conjuncts."""
MAX_BOX_VALUES = 50_000_000
"""Largest ``regions * n_inputs`` (memory taken by the region boxes)."""

_INF = math.inf
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_VAR_RE = re.compile(r"([XY])_(0|[1-9][0-9]*)\Z")
_CMP_OPS = frozenset({"<=", ">=", "<", ">", "="})
_X, _Y, _C = 0, 1, 2  # term kinds: (kind, index-or-value)

# Atoms: an X bound ``(0, i, lo, hi, open_index)`` or a Y row ``(1, pos, neg, d)`` meaning
# ``y[pos] - y[neg] <= d`` (index -1: term absent).
Atom = tuple
Conjunct = list  # list[Atom]
PathLike = Union[str, os.PathLike]


class VnnlibError(ValueError):
    """A malformed or unsupported property; ``str()`` is ``path:line:col: msg``."""

    def __init__(
        self, msg: str, path: str | None = None, line: int | None = None, col: int | None = None
    ) -> None:
        self.msg = msg
        self.path = path
        self.line = line
        self.col = col
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.path if self.path is not None else "<string>"
        if self.line is not None:
            where += f":{self.line}:{self.col}"
        return f"{where}: {self.msg}"

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self):  # keep pickling (multiprocessing) working with our signature
        return (type(self), (self.msg, self.path, self.line, self.col))


def parse(path: PathLike, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Parse a ``.vnnlib`` (or gzipped ``.vnnlib.gz``) file; FileNotFoundError if missing."""
    data = Path(path).read_bytes()
    return parse_text(_decode(data, str(path)), str(path), n_inputs, n_outputs)


def parse_text(
    text: str, path: str | None = None, n_inputs: int | None = None, n_outputs: int | None = None
) -> Spec:
    """Parse property text; ``path`` is only used in error messages."""
    if text.startswith("\ufeff"):  # byte-order mark: keep offsets, drop the character
        text = " " + text[1:]
    with _gc_paused():
        return _Parser(text, None if path is None else str(path)).run(n_inputs, n_outputs)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: parsing allocates ~10 objects per token and makes no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_cached(path: PathLike, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Like :func:`parse`, memoized in a pickle cache keyed on the file's sha256."""
    data = Path(path).read_bytes()
    entry = _cache.entry_for(data)
    spec = _cache.load(entry)
    if spec is None:
        spec = parse_text(_decode(data, str(path)), str(path))
        _cache.store(entry, spec)
    _check_counts(spec.n_inputs, spec.n_outputs, n_inputs, n_outputs, str(path))
    return spec


def _decode(data: bytes, path: str) -> str:
    """Bytes -> text, gunzipping when the gzip magic is present."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise VnnlibError(f"cannot decompress gzip data: {exc}", path) from None
    return data.decode("utf-8", errors="replace")


def _check_counts(n_in: int, n_out: int, want_in: int | None, want_out: int | None,
                  path: str | None) -> None:
    """Raise when the declared X/Y counts differ from the network's."""
    for n, want, what, letter in ((n_in, want_in, "input", "X"), (n_out, want_out, "output", "Y")):
        if want is not None and n != want:
            names = f"{letter}_0" if n == 1 else f"{letter}_0..{letter}_{n - 1}"
            raise VnnlibError(f"property declares {n} {what}{'s' * (n != 1)} ({names}) "
                              f"but the network has {want}", path)


class _Parser:
    """One parse of one text: statements -> DNF -> regions."""

    def __init__(self, text: str, path: str | None) -> None:
        self.text = text
        self.path = path
        self.tokens = tokenize(text)
        self.decl: dict[str, dict[int, int]] = {"X": {}, "Y": {}}  # index -> token index
        self.terms: dict[str, tuple] = {}

    # ----------------------------------------------------------------- errors
    def fail(self, msg: str, index: int | None = None) -> NoReturn:
        """Raise VnnlibError at token ``index`` (no position when None)."""
        line = col = None
        if index is not None:
            line, col = self.position(index)
        raise VnnlibError(msg, self.path, line, col)

    def position(self, index: int) -> tuple[int, int]:
        """(line, column) of token ``index``."""
        return line_col(self.text, token_offset(self.text, index))

    # -------------------------------------------------------------- statements
    def run(self, n_inputs: int | None, n_outputs: int | None) -> Spec:
        """Parse everything and build the Spec."""
        try:
            statements = build_tree(self.tokens)
        except LexError as exc:
            msg = exc.msg
            if exc.related is not None:
                line, col = self.position(exc.related)
                msg += f" (unclosed '(' at line {line}, column {col})"
            self.fail(msg, exc.index)
        common: Conjunct = []
        disjunctions: list[tuple[list[Conjunct], int]] = []
        for st in statements:
            self.statement(st, common, disjunctions)
        n_in, n_out = self.count("X", "input"), self.count("Y", "output")
        _check_counts(n_in, n_out, n_inputs, n_outputs, self.path)
        regions = self.regions(common, disjunctions, n_in, n_out)
        return Spec(regions=regions, n_inputs=n_in, n_outputs=n_out)

    def statement(self, node: Child, common: Conjunct,
                  disjunctions: list[tuple[list[Conjunct], int]]) -> None:
        """Handle one top-level command."""
        head = self.head(node)
        cmd = self.tokens[head]
        nargs = len(node) - 2
        if cmd == "declare-const":
            self.declare(node)
        elif cmd == "assert":
            if nargs != 1:
                self.fail(f"'assert' expects 1 argument, got {nargs}", head)
            dnf = self.dnf(node[2])
            if len(dnf) == 1:
                common.extend(dnf[0])
            else:
                disjunctions.append((dnf, head))
        elif cmd == "check-sat":
            if nargs:
                self.fail("'check-sat' takes no arguments", head)
        else:
            self.fail(f"unknown command '{cmd}'", head)

    def head(self, node: Child) -> int:
        """Token index of the operator/command of list ``node``."""
        if isinstance(node, int):
            self.fail(f"expected '(' but found '{self.tokens[node]}'", node)
        if len(node) < 2:
            self.fail("expected an operator but found ')'", node[0] + 1)
        head = node[1]
        if not isinstance(head, int):
            self.fail("expected an operator but found '('", head[0])
        return head

    def declare(self, node: Node) -> None:
        """``(declare-const X_i Real)``."""
        if len(node) != 4 or not all(isinstance(c, int) for c in node[2:]):
            self.fail("expected (declare-const NAME Real)", node[1])
        name, typ = self.tokens[node[2]], self.tokens[node[3]]
        m = _VAR_RE.match(name)
        if m is None:
            self.fail(f"unsupported variable name '{name}' (expected X_i or Y_j)", node[2])
        if typ != "Real":
            self.fail(f"unsupported type '{typ}' (expected Real)", node[3])
        table, idx = self.decl[m.group(1)], int(m.group(2))
        if idx in table:
            self.fail(f"variable '{name}' is declared twice", node[2])
        table[idx] = node[2]

    def count(self, letter: str, what: str) -> int:
        """Number of declared ``letter`` variables, checking they are contiguous from 0."""
        table = self.decl[letter]
        n = len(table)
        if n == 0:
            self.fail(f"no {what} variables declared ({letter}_0, ...)")
        top = max(table)
        if top != n - 1:
            missing = min(set(range(n)) - table.keys())
            self.fail(f"{what} variables must be {letter}_0..{letter}_{top} without gaps, "
                      f"but {letter}_{missing} is not declared", table[top])
        return n

    # --------------------------------------------------------------- formulas
    def dnf(self, node: Child) -> list[Conjunct]:
        """Disjunctive normal form of a formula: a list of conjuncts (fresh lists)."""
        if type(node) is list and len(node) > 2 and type(node[1]) is int:
            head = node[1]
        else:
            head = self.head(node)  # raises unless ``node`` is ``(op)``
        op = self.tokens[head]
        if op in _CMP_OPS:
            return [self.comparison(node, op)]
        if op != "and" and op != "or":
            self.fail(f"unknown operator '{op}'", head)
        if len(node) < 3:
            self.fail(f"'{op}' expects at least 1 argument", head)
        if op == "or":
            out: list[Conjunct] = []
            for child in node[2:]:
                out += self.dnf(child)
                if len(out) > MAX_CONJUNCTS:
                    self.fail(f"'or' has more than {MAX_CONJUNCTS} disjuncts in normal form", head)
            return out
        if len(node) == 3:
            return self.dnf(node[2])
        tokens = self.tokens
        result: list[Conjunct] = [[]]
        for child in node[2:]:
            if (type(child) is list and len(child) == 4 and type(child[1]) is int
                    and tokens[child[1]] in _CMP_OPS):  # fast path for an atom
                sub = [self.comparison(child, tokens[child[1]])]
            else:
                sub = self.dnf(child)
            if len(sub) == 1 and len(result) == 1:
                result[0] += sub[0]
            else:
                result = self.product(result, sub, head)
        return result

    def product(self, left: list[Conjunct], right: list[Conjunct], at: int) -> list[Conjunct]:
        """Conjunction of two DNFs (``left``'s lists are owned and may be extended)."""
        n_left, n_right = len(left), len(right)
        if n_left * n_right > MAX_CONJUNCTS:
            self.fail(f"expanding to disjunctive normal form gives {n_left * n_right} "
                      f"conjuncts (limit {MAX_CONJUNCTS})", at)
        if n_left > 1 or n_right > 1:
            atoms = sum(map(len, left)) * n_right + n_left * sum(map(len, right))
            if atoms > MAX_ATOMS:
                self.fail(f"expanding to disjunctive normal form gives {atoms} atoms "
                          f"(limit {MAX_ATOMS})", at)
        if n_right == 1:
            extra = right[0]
            for conj in left:
                conj.extend(extra)
            return left
        return [conj + extra for conj in left for extra in right]

    def comparison(self, node: Node, op: str) -> Conjunct:
        """Atoms of ``(op a b)``; ``>=``/``>`` swap operands, ``=`` gives both directions."""
        if len(node) != 4:
            self.fail(f"'{op}' expects 2 arguments, got {len(node) - 2}", node[1])
        terms, tokens = self.terms, self.tokens
        a, b = node[2], node[3]
        a = (type(a) is int and terms.get(tokens[a])) or self.term(a)
        b = (type(b) is int and terms.get(tokens[b])) or self.term(b)
        if op == "<=" or op == "<":
            return [self.less_eq(a, b, node)]
        if op == ">=" or op == ">":
            return [self.less_eq(b, a, node)]
        return [self.less_eq(a, b, node), self.less_eq(b, a, node)]

    def less_eq(self, a: tuple, b: tuple, node: Node) -> Atom:
        """The atom for ``a <= b``."""
        ka, va = a
        kb, vb = b
        if kb == _C:
            if ka == _X:
                return (0, va, -_INF, vb, node[0])
            if ka == _Y:
                return (1, va, -1, vb)
        elif ka == _C:
            if kb == _X:
                return (0, vb, va, _INF, node[0])
            return (1, -1, vb, -va)
        elif ka == _Y and kb == _Y:
            return (1, va, vb, 0.0)
        self.fail("unsupported comparison: only X_i vs number, Y_j vs number and "
                  "Y_i vs Y_j are allowed", node[1])

    def term(self, child: Child) -> tuple:
        """``(kind, index)`` for a declared variable, ``(_C, value)`` for a number."""
        if not isinstance(child, int):
            self.fail("expected a variable or a number but found '(' "
                      "(arithmetic is not supported)", child[0])
        tok = self.tokens[child]
        if tok[0] in "+-.0123456789":
            if not _NUMBER_RE.match(tok):
                self.fail(f"bad number '{tok}'", child)
            value = float(tok)
            if not math.isfinite(value):
                self.fail(f"number '{tok}' is out of range", child)
            found = (_C, value)
        else:
            m = _VAR_RE.match(tok)
            if m is None:
                self.fail(f"unknown symbol '{tok}' (expected a declared X_i/Y_j or a number)",
                          child)
            if int(m.group(2)) not in self.decl[m.group(1)]:
                self.fail(f"undeclared variable '{tok}'", child)
            found = (_X if m.group(1) == "X" else _Y, int(m.group(2)))
        self.terms[tok] = found
        return found

    # ---------------------------------------------------------------- regions
    def regions(self, common: Conjunct, disjunctions: list[tuple[list[Conjunct], int]],
                n_in: int, n_out: int) -> tuple[Region, ...]:
        """Intersect boxes, merge conjuncts with equal boxes, build the numpy arrays."""
        glo, ghi, rows = self.top_level(common, n_in)
        conjuncts: list[Conjunct] = [[]]
        for dnf, at in disjunctions:
            conjuncts = self.product(conjuncts, dnf, at)
        if len(rows) * len(conjuncts) > MAX_ATOMS:
            self.fail(f"{len(rows)} top-level output atoms repeated in {len(conjuncts)} "
                      f"conjuncts exceed the limit of {MAX_ATOMS} rows")
        free = [i for i in range(n_in) if glo[i] == -_INF or ghi[i] == _INF]
        groups: dict[tuple, list[list[Atom]]] = {}
        for conj in conjuncts:
            key, local = self.split(conj, glo, ghi, free)
            groups.setdefault(key, []).append(local)
        if len(groups) * n_in > MAX_BOX_VALUES:
            self.fail(f"{len(groups)} distinct input boxes of {n_in} inputs are too many")
        return _build(groups, glo, ghi, rows, n_out)

    def top_level(self, common: Conjunct, n_in: int) -> tuple[list[float], list[float], list[Atom]]:
        """(lower, upper, Y rows) from the atoms shared by every conjunct."""
        glo, ghi = [-_INF] * n_in, [_INF] * n_in
        last: dict[int, int] = {}
        rows: list[Atom] = []
        for atom in common:
            if atom[0]:
                rows.append(atom)
                continue
            _, i, lo, hi, k = atom
            last[i] = k
            if lo > glo[i]:
                glo[i] = lo
            if hi < ghi[i]:
                ghi[i] = hi
        for i, k in last.items():
            if glo[i] > ghi[i]:
                self.fail(f"empty input box: X_{i} has lower bound {glo[i]!r} "
                          f"> upper bound {ghi[i]!r}", k)
        return glo, ghi, rows

    def split(self, conj: Conjunct, glo: list[float], ghi: list[float],
              free: list[int]) -> tuple[tuple, list[Atom]]:
        """(canonical box key, Y rows) of one conjunct; checks the box is non-empty and bounded."""
        touched: dict[int, list] = {}
        rows: list[Atom] = []
        for atom in conj:
            if atom[0]:
                rows.append(atom)
                continue
            _, i, lo, hi, k = atom
            b = touched.get(i)
            if b is None:
                b = touched[i] = [glo[i], ghi[i], k]
            if lo > b[0]:
                b[0] = lo
            if hi < b[1]:
                b[1] = hi
            b[2] = k
        if not touched and not free:
            return (), rows
        for i, (lo, hi, k) in touched.items():
            if lo > hi:
                self.fail(f"empty input box: X_{i} has lower bound {lo!r} > upper bound {hi!r}", k)
        for i in free:
            lo, hi, _ = touched.get(i, (glo[i], ghi[i], None))
            if lo == -_INF or hi == _INF:
                side = "lower" if lo == -_INF else "upper"
                self.fail(f"input X_{i} has no {side} bound (every input must be bounded "
                          f"on both sides)")
        key = tuple(sorted((i, b[0], b[1]) for i, b in touched.items()
                           if b[0] != glo[i] or b[1] != ghi[i]))
        return key, rows


def _build(groups: dict[tuple, list[list[Atom]]], glo: list[float], ghi: list[float],
           common_rows: list[Atom], n_out: int) -> tuple[Region, ...]:
    """Regions from ``{box key: [Y rows per clause]}``, with one batched numpy pass."""
    n_reg = len(groups)
    lower = np.tile(np.array(glo, dtype=np.float64), (n_reg, 1))
    upper = np.tile(np.array(ghi, dtype=np.float64), (n_reg, 1))
    where: list[tuple[int, int]] = [(r, i) for r, key in enumerate(groups) for i, _, _ in key]
    if where:
        at = tuple(np.array(where, dtype=np.intp).T)
        lower[at] = [lo for key in groups for _, lo, _ in key]
        upper[at] = [hi for key in groups for _, _, hi in key]
    rows: list[Atom] = []
    counts: list[int] = []
    for clauses in groups.values():
        for local in clauses:
            rows += common_rows
            rows += local
            counts.append(len(common_rows) + len(local))
    C, d = _matrix(rows, n_out)
    if min(counts) == max(counts):  # equal-sized clauses: one reshape instead of many slices
        parts = zip(C.reshape(len(counts), counts[0], n_out), d.reshape(len(counts), counts[0]))
    else:
        parts = ((C[e - n:e], d[e - n:e]) for e, n in zip(accumulate(counts), counts))
    all_clauses = [Clause(c, dd) for c, dd in parts]
    ends = list(accumulate(len(clauses) for clauses in groups.values()))
    return tuple(Region(lower[r], upper[r], tuple(all_clauses[e - len(cl):e]))
                 for r, (e, cl) in enumerate(zip(ends, groups.values())))


def _matrix(rows: list[Atom], n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack Y rows ``(1, pos, neg, d)`` into ``C`` [R, n_out] and ``d`` [R] (float64)."""
    C = np.zeros((len(rows), n_out), dtype=np.float64)
    if not rows:
        return C, np.zeros(0, dtype=np.float64)
    arr = np.array(rows, dtype=np.float64)
    pos, neg, d = arr[:, 1].astype(np.intp), arr[:, 2].astype(np.intp), arr[:, 3].copy()
    r = np.arange(len(rows))
    m = pos >= 0
    C[r[m], pos[m]] = 1.0
    m = neg >= 0
    C[r[m], neg[m]] -= 1.0
    return C, d
