"""Arithmetic and Boolean structure of assertions -> linear atoms in disjunctive normal form.

Numeric literals denote their nearest float64 value (as in VNN-LIB 1.0); arithmetic on them
is exact (``fractions.Fraction``), so rounding happens once, when the lowering writes bounds
and rows as floats (outwards). A term of degree 2 or more, ``!=``, or a normal form above
:data:`MAX_CONJUNCTS` raises :class:`NotLinear` with the reason and position.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

from vnnlib.v2 import ast
from vnnlib.v2.typecheck import Symbol

MAX_CONJUNCTS = 100_000
"""Largest number of conjuncts of the normal form."""
MAX_TERMS = 100_000
"""Largest number of monomials while expanding a product."""

Key = tuple[str, int]  # (variable name, C-order flat index)
Monomial = tuple[Key, ...]  # sorted; () is the constant term


class NotLinear(Exception):
    """The query leaves the linear fragment the lowering handles (``reason`` says where)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Atom:
    """``sum(coef[k] * k) + const <= 0`` over scalar variables (exact rationals)."""

    coef: tuple[tuple[Key, Fraction], ...]
    const: Fraction
    pos: ast.Pos

    def truth(self) -> bool | None:
        """The atom's value when it has no variable left, else None."""
        return self.const <= 0 if not self.coef else None


Conjunct = list  # list[Atom]


def _add(p: dict, q: Mapping, sign: int = 1) -> dict:
    for m, c in q.items():
        v = p.get(m, 0) + sign * c
        if v:
            p[m] = v
        else:
            p.pop(m, None)
    return p


def _mul(p: Mapping, q: Mapping, at: ast.Pos) -> dict:
    if len(p) * len(q) > MAX_TERMS:
        raise NotLinear(f"{at}: a product expands to more than {MAX_TERMS} terms")
    out: dict = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            _add(out, {tuple(sorted(m1 + m2)): c1 * c2})
    return out


class Linearizer:
    """Polynomials of arithmetic expressions and atoms/DNF of Boolean ones."""

    def __init__(self, symbols: Mapping[str, Symbol]) -> None:
        self.symbols = symbols

    def poly(self, e: ast.ArithExpr) -> dict:
        """``{monomial: coefficient}`` of ``e`` (zero coefficients dropped)."""
        if isinstance(e, ast.Const):
            v = Fraction(float(e.value.text))
            return {(): v} if v else {}
        if isinstance(e, ast.Var):
            sym = self.symbols[e.name]
            idx = () if e.indices is None else tuple(int(i.text) for i in e.indices)
            return {((e.name, sym.flat_index(idx)),): Fraction(1)}
        parts = [self.poly(a) for a in e.args]
        if e.op == "neg":
            return {m: -c for m, c in parts[0].items()}
        if e.op == "+":
            out: dict = {}
            for p in parts:
                _add(out, p)
            return out
        if e.op == "-":
            out = dict(parts[0])
            for p in parts[1:]:
                _add(out, p, -1)
            return out
        out = parts[0]
        for p in parts[1:]:
            out = _mul(out, p, e.pos)
        return out

    def atoms(self, e: ast.Compare) -> Conjunct:
        """The atoms of a comparison (``==`` gives two; strict ones are read as non-strict)."""
        if e.op == "!=":
            raise NotLinear(f"{e.pos}: '!=' is a strict disequality (a disjunction of open "
                            "half-spaces), which the product cannot represent")
        left, right = self.poly(e.left), self.poly(e.right)
        diff = _add(dict(left), right, -1)  # left - right
        for m in diff:
            if len(m) > 1:
                names = " * ".join(f"{k[0]}[{k[1]}]" for k in m)
                raise NotLinear(f"{e.pos}: nonlinear term {names} (polynomial constraints are "
                                "not supported)")
        if e.op in ("<=", "<"):
            return [self.atom(diff, e.pos)]
        if e.op in (">=", ">"):
            return [self.atom({m: -c for m, c in diff.items()}, e.pos)]
        return [self.atom(diff, e.pos), self.atom({m: -c for m, c in diff.items()}, e.pos)]

    @staticmethod
    def atom(p: Mapping, pos: ast.Pos) -> Atom:
        coef = tuple((m[0], c) for m, c in p.items() if m)
        return Atom(coef, p.get((), Fraction(0)), pos)

    def dnf(self, e: ast.BoolExpr) -> list[Conjunct]:
        """Disjunctive normal form: a list of conjuncts (lists of atoms)."""
        if isinstance(e, ast.Compare):
            return [self.atoms(e)]
        if e.op == "or":
            out: list[Conjunct] = []
            for a in e.args:
                out += self.dnf(a)
                if len(out) > MAX_CONJUNCTS:
                    raise NotLinear(f"{e.pos}: 'or' has more than {MAX_CONJUNCTS} disjuncts in "
                                    "normal form")
            return out
        result: list[Conjunct] = [[]]
        for a in e.args:
            result = product(result, self.dnf(a), e.pos)
        return result


def product(left: list[Conjunct], right: list[Conjunct], at: ast.Pos) -> list[Conjunct]:
    """Conjunction of two normal forms."""
    if len(left) * len(right) > MAX_CONJUNCTS:
        raise NotLinear(f"{at}: the disjunctive normal form has {len(left) * len(right)} "
                        f"conjuncts (limit {MAX_CONJUNCTS})")
    return [a + b for a in left for b in right]
