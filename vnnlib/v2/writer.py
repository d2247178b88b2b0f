"""``to_vnnlib2``: a VNN-LIB 1.0 property (or any box :class:`~vnnlib.spec.Spec`) as an
equivalent VNN-LIB 2.0 query.

Numbers are written in positional notation with the shortest digits that read back as the
same float64 (the 2.0 grammar has no exponents), so the query lowers to a Spec with exactly
the same boxes and constraint matrices. One region: its box as top-level assertions and its
clauses as one ``or`` of ``and``s; several regions: one ``or`` whose disjuncts carry their
region's box (the lowering merges disjuncts with equal boxes back into one region).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vnnlib.spec import Clause, Region, Spec


def number(v: float) -> str:
    """A float64 as a 2.0 ``Number`` (no exponent; reads back to the same value)."""
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{v} cannot be written in VNN-LIB 2.0 (finite numbers only)")
    text = np.format_float_positional(v, unique=True, trim="0")
    return text + "0" if text.endswith(".") else text


def _element(name: str, flat: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return name
    idx = np.unravel_index(flat, shape)
    return f"{name}[{','.join(str(int(i)) for i in idx)}]"


class _Writer:
    def __init__(self, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> None:
        self.xs, self.ys = input_shape, output_shape

    def x(self, i: int) -> str:
        return _element("X", i, self.xs)

    def box(self, r: Region) -> list[str]:
        out = []
        for i, (lo, hi) in enumerate(zip(r.lower, r.upper)):
            out += [f"(>= {self.x(i)} {number(lo)})", f"(<= {self.x(i)} {number(hi)})"]
        return out

    def row(self, c: np.ndarray, d: float) -> str:
        terms = []
        for j in np.flatnonzero(c):
            y = _element("Y", int(j), self.ys)
            terms.append(y if c[j] == 1.0 else f"(* {number(c[j])} {y})")
        if not terms:  # a row without variables (0 <= d): keep it typable
            terms = [f"(* 0.0 {_element('Y', 0, self.ys)})"]
        lhs = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
        return f"(<= {lhs} {number(d)})"

    def rows(self, cl: Clause) -> list[str]:
        return [self.row(cl.C[k], cl.d[k]) for k in range(cl.n_rows)]


def _conj(parts: Sequence[str], indent: str) -> str:
    if len(parts) == 1:
        return parts[0]
    return "(and " + f"\n{indent}     ".join(parts) + ")"


def spec_to_text(spec: Spec, network_name: str = "N", input_shape: Sequence[int] | None = None,
                 output_shape: Sequence[int] | None = None, element_type: str = "Real") -> str:
    """The 2.0 query text of ``spec`` (shapes default to flat ``[n]``)."""
    xs = tuple(input_shape) if input_shape is not None else (spec.n_inputs,)
    ys = tuple(output_shape) if output_shape is not None else (spec.n_outputs,)
    if math.prod(xs) != spec.n_inputs or math.prod(ys) != spec.n_outputs:
        raise ValueError(f"shapes {list(xs)} / {list(ys)} do not hold {spec.n_inputs} inputs / "
                         f"{spec.n_outputs} outputs")
    if any(r.ball is not None for r in spec.regions):
        raise ValueError("l_p balls cannot be written in VNN-LIB (boxes only)")
    if not spec.regions:
        raise ValueError("a Spec without regions has no VNN-LIB form")
    w = _Writer(xs, ys)
    out = ["(vnnlib-version <2.0>)", "",
           f"(declare-network {network_name}",
           f"    (declare-input X {element_type} [{','.join(map(str, xs))}])",
           f"    (declare-output Y {element_type} [{','.join(map(str, ys))}])", ")", ""]
    if len(spec.regions) == 1:
        r = spec.regions[0]
        out += [f"(assert {a})" for a in w.box(r)]
        disjuncts = [w.rows(cl) for cl in r.clauses]
        if len(disjuncts) == 1:
            out += [f"(assert {a})" for a in disjuncts[0]]
        elif all(disjuncts):
            out.append("(assert (or " + "\n    ".join(_conj(d, "    ") for d in disjuncts) + "))")
        # a clause with no rows makes the whole box unsafe: the box alone says it
    else:
        disjuncts = [w.box(r) + w.rows(cl) for r in spec.regions for cl in r.clauses]
        out.append("(assert (or " + "\n    ".join(_conj(d, "    ") for d in disjuncts) + "))")
    return "\n".join(out) + "\n"


def to_vnnlib2(spec_or_path: Spec | str | Path, network_name: str = "N",
               input_shape: Sequence[int] | None = None, output_shape: Sequence[int] | None = None,
               element_type: str = "Real") -> str:
    """A VNN-LIB 2.0 query equivalent to a Spec or to a 1.0 property file."""
    if isinstance(spec_or_path, Spec):
        spec = spec_or_path
    else:
        from vnnlib.parser import parse

        spec = parse(spec_or_path)
    return spec_to_text(spec, network_name, input_shape, output_shape, element_type)
