"""Lowering a checked VNN-LIB 2.0 query to :class:`~vnnlib.spec.Spec` (+ :class:`Layout`).

As in VNN-LIB 1.0 (:mod:`vnnlib.parser`), assertions are conjoined and expanded into
disjunctive normal form; in each conjunct the atoms over one input element form the input
box and every other atom is a row ``C y <= d`` over the combined output. Conjuncts with
equal boxes share a region; top-level rows come first in every clause. Top-level
``(== A[i] C[j])`` between inputs merge the two elements (networks on the same input). A
conjunct with a false constant or an empty box is dropped (it has no model).

Anything the product cannot decide returns :class:`Undecidable` with the reason: nonlinear
terms, ``!=``, unbounded inputs, networks with several inputs/outputs, integer element
types, ``initialized`` inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from vnnlib.spec import Clause, Region, Spec
from vnnlib.v2 import ast
from vnnlib.v2.layout import Layout, NetworkUse, Part
from vnnlib.v2.linear import Atom, Conjunct, Linearizer, NotLinear, product
from vnnlib.v2.typecheck import FLOAT_TYPES, CheckedQuery

_INF = float("inf")


@dataclass(frozen=True)
class Undecidable:
    """The query is well-formed but outside what the product decides: answer ``unknown``."""

    reason: str


@dataclass(frozen=True)
class Lowered:
    """The Spec over the layout's combined input/output vectors."""

    spec: Spec
    layout: Layout


def lower(checked: CheckedQuery) -> Lowered | Undecidable:
    """Lower ``checked`` to a Spec, or say why it cannot be decided here."""
    try:
        return _Lowering(checked).run()
    except NotLinear as exc:
        return Undecidable(exc.reason)


def round_up(q: Fraction) -> float:
    """Smallest float64 >= ``q``."""
    f = float(q)
    return float(np.nextafter(f, _INF)) if Fraction(f) < q else f


def round_down(q: Fraction) -> float:
    """Largest float64 <= ``q``."""
    f = float(q)
    return float(np.nextafter(f, -_INF)) if Fraction(f) > q else f


def _used_names(e: ast.BoolExpr | ast.ArithExpr, out: set[str]) -> set[str]:
    if isinstance(e, ast.Var):
        out.add(e.name)
    elif isinstance(e, ast.Compare):
        _used_names(e.left, out)
        _used_names(e.right, out)
    elif isinstance(e, (ast.Connective, ast.Arith)):
        for a in e.args:
            _used_names(a, out)
    return out


class _Lowering:
    """One lowering: input classes, parts, then regions."""

    def __init__(self, checked: CheckedQuery) -> None:
        self.c = checked
        self.sym = checked.symbols
        self.used: set[str] = set()
        for a in checked.query.assertions:
            _used_names(a.expr, self.used)
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}

    def run(self) -> Lowered | Undecidable:
        nets = [n for n in self.c.query.networks if any(t.name in self.used for t in n.tensors)]
        why = self.unsupported(nets)
        if why:
            return Undecidable(why)
        lin = Linearizer(self.sym)
        common: Conjunct = []
        disjunctions: list[tuple[list[Conjunct], ast.Pos]] = []
        for a in self.c.query.assertions:
            self.merge_inputs(a.expr)
            dnf = lin.dnf(a.expr)
            if len(dnf) == 1:
                common += dnf[0]
            else:
                disjunctions.append((dnf, a.pos))
        self.index_inputs(nets)
        atoms = common + [x for dnf, _ in disjunctions for conj in dnf for x in conj]
        layout = self.layout(nets, atoms)
        return self.regions(layout, common, disjunctions)

    # ----------------------------------------------------------------- checks
    def unsupported(self, nets: list[ast.NetworkDecl]) -> str:
        for n in nets:
            if len(n.inputs) != 1 or len(n.outputs) != 1:
                return (f"network '{n.name}' declares {len(n.inputs)} inputs and "
                        f"{len(n.outputs)} outputs; the verifier handles networks with one "
                        "input and one output")
            if n.inputs[0].options:
                return f"input '{n.inputs[0].name}' is 'initialized' (model initializers are not read)"
        for name in sorted(self.used):
            t = self.sym[name].decl.elem_type
            if t not in FLOAT_TYPES:
                return (f"'{name}' has element type {t}: integer and Boolean tensors are not "
                        "supported (the verifier reasons over real-valued tensors)")
        return ""

    # ------------------------------------------------------------ input merge
    def find(self, k: tuple[str, int]) -> tuple[str, int]:
        while k in self.parent:
            k = self.parent[k]
        return k

    def merge_inputs(self, e: ast.BoolExpr) -> None:
        """Merge the input elements of top-level ``(== A[i] C[j])`` (through ``and``)."""
        if isinstance(e, ast.Connective):
            if e.op == "and":
                for a in e.args:
                    self.merge_inputs(a)
            return
        if e.op != "==" or not (isinstance(e.left, ast.Var) and isinstance(e.right, ast.Var)):
            return
        keys = [self.key(v) for v in (e.left, e.right)]
        if all(self.sym[k[0]].decl.kind == "input" for k in keys):
            a, b = self.find(keys[0]), self.find(keys[1])
            if a != b:
                self.parent[b] = a

    def key(self, v: ast.Var) -> tuple[str, int]:
        sym = self.sym[v.name]
        idx = () if v.indices is None else tuple(int(i.text) for i in v.indices)
        return v.name, sym.flat_index(idx)

    def index_inputs(self, nets: list[ast.NetworkDecl]) -> None:
        """Combined-input position of every input element (merged classes share one)."""
        self.xpos: dict[tuple[str, int], int] = {}
        self.xname: list[str] = []
        root_pos: dict[tuple[str, int], int] = {}
        for n in nets:
            d = n.inputs[0]
            for i in range(self.sym[d.name].size):
                root = self.find((d.name, i))
                if root not in root_pos:
                    root_pos[root] = len(root_pos)
                    where = np.unravel_index(i, self.sym[d.name].shape) if self.sym[d.name].shape else ()
                    self.xname.append(f"{d.name}[{','.join(str(int(w)) for w in where)}]")
                self.xpos[(d.name, i)] = root_pos[root]
        self.n_in = len(root_pos)

    # ----------------------------------------------------------------- layout
    def terms(self, atom: Atom) -> dict[tuple[str, int], Fraction]:
        """The atom's coefficients with input elements as ``('', combined position)``."""
        out: dict[tuple[str, int], Fraction] = {}
        for k, c in atom.coef:
            if self.sym[k[0]].decl.kind == "input":
                k = ("", self.xpos[k])
            v = out.get(k, 0) + c
            if v:
                out[k] = v
            else:
                out.pop(k, None)
        return out

    def layout(self, nets: list[ast.NetworkDecl], atoms: list[Atom]) -> Layout:
        copied: set[int] = set()
        for atom in atoms:
            t = self.terms(atom)
            if len(t) > 1:
                copied.update(k[1] for k in t if not k[0])
        uses, parts, offset = [], [], 0
        for n in nets:
            x, y = self.sym[n.inputs[0].name], self.sym[n.outputs[0].name]
            idx = tuple(self.xpos[(x.decl.name, i)] for i in range(x.size))
            uses.append(NetworkUse(n.name, x.decl.name, x.shape, idx, y.decl.name, y.shape))
            for d in (n.outputs[0],) + tuple(h for h in n.hiddens if h.name in self.used):
                s = self.sym[d.name]
                parts.append(Part(d.kind, n.name, d.name, s.shape, offset, d.onnx_name))
                offset += s.size
        if copied:
            index = tuple(sorted(copied))
            parts.append(Part("input", "", "", (len(index),), offset, "", index))
        self.ypos: dict[tuple[str, int], int] = {}
        for p in parts:
            if p.kind == "input":
                self.ypos.update({("", c): p.offset + j for j, c in enumerate(p.index)})
        self.parts = {p.variable: p for p in parts if p.kind != "input"}
        return Layout(self.n_in, tuple(uses), tuple(parts))

    def column(self, k: tuple[str, int]) -> int:
        return self.ypos[k] if not k[0] else self.parts[k[0]].offset + k[1]

    # ---------------------------------------------------------------- regions
    def regions(self, layout: Layout, common: Conjunct,
                disjunctions: list[tuple[list[Conjunct], ast.Pos]]) -> Lowered | Undecidable:
        n_out = layout.n_outputs
        lo, hi = np.full(self.n_in, -_INF), np.full(self.n_in, _INF)
        rows: list[tuple[np.ndarray, float]] = []
        spec = Spec((), self.n_in, n_out)
        if not self.conjunct(common, lo, hi, rows, n_out):
            return Lowered(spec, layout)
        conjuncts: list[Conjunct] = [[]]
        for dnf, at in disjunctions:
            conjuncts = product(conjuncts, dnf, at)
        groups: dict[bytes, tuple[np.ndarray, np.ndarray, list]] = {}
        for conj in conjuncts:
            blo, bhi, local = lo.copy(), hi.copy(), list(rows)
            if not self.conjunct(conj, blo, bhi, local, n_out):
                continue
            free = np.flatnonzero(~(np.isfinite(blo) & np.isfinite(bhi)))
            if free.size:
                i = int(free[0])
                side = "lower" if not np.isfinite(blo[i]) else "upper"
                return Undecidable(f"input {self.xname[i]} has no {side} bound (the verifier "
                                   "needs a bounded input box)")
            key = blo.tobytes() + bhi.tobytes()
            groups.setdefault(key, (blo, bhi, []))[2].append(local)
        regions = tuple(Region(blo, bhi, tuple(_clause(c, n_out) for c in clauses))
                        for blo, bhi, clauses in groups.values())
        return Lowered(Spec(regions, self.n_in, n_out), layout)

    def conjunct(self, atoms: Conjunct, lo: np.ndarray, hi: np.ndarray,
                 rows: list, n_out: int) -> bool:
        """Add ``atoms`` to the box and rows; False when the conjunct has no model."""
        for atom in atoms:
            t = self.terms(atom)
            if not t:
                if atom.const > 0:
                    return False
                continue
            if len(t) == 1 and not next(iter(t))[0]:
                (k, c), = t.items()
                b = -atom.const / c
                if c > 0:
                    hi[k[1]] = min(hi[k[1]], round_up(b))
                else:
                    lo[k[1]] = max(lo[k[1]], round_down(b))
                continue
            rows.append(self.row(t, atom, n_out))
        return bool(np.all(lo <= hi))

    def row(self, t: dict, atom: Atom, n_out: int) -> tuple[np.ndarray, float]:
        """``(C row, d)`` of one atom; exact coefficients, ``d`` rounded up."""
        c = np.zeros(n_out)
        exact = all(Fraction(float(v)) == v for v in t.values())
        if exact:
            for k, v in t.items():
                c[self.column(k)] = float(v)
            return c, round_up(-atom.const)
        if len(t) == 1:  # k*v + const <= 0  ->  sign(k) * v <= -const/|k|
            (k, v), = t.items()
            c[self.column(k)] = 1.0 if v > 0 else -1.0
            return c, round_up(-atom.const / abs(v))
        raise NotLinear(f"{atom.pos}: a coefficient is not exactly representable as a float64 "
                        "(the constraint would be rounded)")


def _clause(rows: list[tuple[np.ndarray, float]], n_out: int) -> Clause:
    if not rows:
        return Clause(np.zeros((0, n_out)), np.zeros(0))
    return Clause(np.stack([r for r, _ in rows]), np.array([d for _, d in rows], dtype=np.float64))
