"""The one table of verification methods: name, SoK category, where it lives, what it follows.

Everything that lists methods reads this table: the ``--method`` registry
(:mod:`bab.methods`), the bounder registry (:mod:`bab.bounding`), the comparison report's row
order, and ``docs/taxonomy.md`` (generated: ``python -m bab.taxonomy > docs/taxonomy.md``; a
test keeps it in sync). Categories follow Figure 2 of Li, Xie and Li, "SoK: Certified
Robustness for Deep Neural Networks" (S&P 2023).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Category(enum.Enum):
    """SoK categories, in the order the comparison report groups its rows."""

    SOLVER = "solver-based (complete)"
    BAB = "branch and bound (complete)"
    LP = "linear programming"
    INTERVAL = "interval"
    POLYHEDRA = "polyhedra"
    ZONOTOPE = "zonotope"
    DUALITY = "duality"
    MULTI_NEURON = "multi-neuron"
    SDP = "semidefinite programming"
    LIPSCHITZ = "Lipschitz"

    @property
    def complete(self) -> bool:
        """Whether methods of this category are complete verifiers."""
        return self in (Category.SOLVER, Category.BAB)


@dataclass(frozen=True)
class Bounder:
    """How to build a Bounder: ``module:Class`` plus keyword arguments."""

    entry: str
    kwargs: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class MethodInfo:
    """One verification method (a ``--method`` name).

    ``entry``: the Method factory (``module:factory``, called with the name). ``bounder``:
    set when the method is one incomplete pass of a Bounder (then the bounder registry holds
    it too and any BaB can use it). ``module``: where the algorithm lives. ``paper``: the
    reference it follows.
    """

    name: str
    category: Category
    entry: str
    module: str
    paper: str
    bounder: Bounder | None = None
    summary: str = ""


_BOUND = "bab.bound_method:BoundMethod"
_BAB = "bab.bab_method:BabMethod"
_CROWN = "bab.bounding.polyhedra.crown:Crown"


def _crown(policy: str, **kw: object) -> Bounder:
    return Bounder(_CROWN, tuple({"policy": policy, **kw}.items()))


METHODS: tuple[MethodInfo, ...] = (
    MethodInfo("milp", Category.SOLVER, "encoders.methods:MilpMethod", "encoders/",
               "Tjeng, Xiao, Tedrake 2019 (MIPVerify)", summary="exact MILP (big-M), Gurobi or OR-Tools"),
    MethodInfo("smt", Category.SOLVER, "encoders.methods:SmtMethod", "encoders/smt.py",
               "Katz et al. 2017 (Reluplex); Ehlers 2017 (Planet)", summary="exact SMT encoding solved by Z3"),
    MethodInfo("default", Category.BAB, _BAB, "bab/bab_method.py",
               "this product: IBP, then input-split or beta-CROWN ReLU-split BaB",
               summary="the default complete verifier"),
    MethodInfo("bab", Category.BAB, _BAB, "bab/bab_method.py",
               "Bunel et al. 2020; Wang et al. 2021 (beta-CROWN)", summary="branch and bound only"),
    MethodInfo("input-split", Category.BAB, _BAB, "bab/input_split.py",
               "Wang et al. 2018 (ReluVal)", summary="BaB forced to split the input box"),
    MethodInfo("ai2", Category.BAB, _BAB, "bab/input_split.py + bab/bounding/zonotope/",
               "Gehr et al. 2018 (AI2)", summary="input-split BaB driven by the zonotope bounder"),
    MethodInfo("lp", Category.LP, "encoders.methods:LpMethod", "encoders/lp.py",
               "Ehlers 2017 (Planet triangle relaxation)", summary="triangle LP on CROWN intermediate bounds"),
    MethodInfo("lp-full", Category.LP, "encoders.methods:LpMethod", "encoders/lp.py",
               "Salman et al. 2019 (LP-FULL)", summary="triangle LP with every intermediate bound tightened by LP"),
    MethodInfo("ibp", Category.INTERVAL, _BOUND, "bab/bounding/interval/ibp.py",
               "Gowal et al. 2018 (IBP)", Bounder("bab.bounding.interval.ibp:IBP"),
               summary="interval bound propagation"),
    MethodInfo("symbolic", Category.POLYHEDRA, _BOUND, "bab/bounding/polyhedra/symbolic.py",
               "Wang et al. 2018 (ReluVal symbolic intervals)",
               Bounder("bab.bounding.polyhedra.symbolic:Symbolic"), summary="forward symbolic intervals"),
    MethodInfo("crown-fwd", Category.POLYHEDRA, _BOUND, "bab/bounding/polyhedra/symbolic.py",
               "Wang et al. 2018 (Neurify) + Zhang et al. 2018 (CROWN)",
               Bounder("bab.bounding.polyhedra.symbolic:CrownForward"),
               summary="forward symbolic intermediate bounds, CROWN last pass"),
    MethodInfo("fastlin", Category.POLYHEDRA, _BOUND, "bab/bounding/polyhedra/crown.py",
               "Weng et al. 2018 (Fast-Lin)", _crown("fastlin"), summary="parallel ReLU lower line"),
    MethodInfo("crown", Category.POLYHEDRA, _BOUND, "bab/bounding/polyhedra/crown.py",
               "Zhang et al. 2018 (CROWN)", _crown("crown"), summary="adaptive ReLU lower line"),
    MethodInfo("deeppoly", Category.POLYHEDRA, _BOUND, "bab/bounding/polyhedra/crown.py",
               "Singh et al. 2019 (DeepPoly)", _crown("deeppoly"), summary="area-minimising ReLU lower line"),
    MethodInfo("crown-ibp", Category.POLYHEDRA, _BOUND, "bab/bounding/polyhedra/crown.py",
               "Zhang et al. 2020 (CROWN-IBP)", _crown("crown", intermediate="ibp", name="crown-ibp"),
               summary="IBP intermediate bounds, one CROWN pass for the output"),
    MethodInfo("alpha-crown", Category.POLYHEDRA, _BOUND, "bab/bounding/polyhedra/alpha.py",
               "Xu et al. 2021 (alpha-CROWN)", Bounder("bab.bounding.polyhedra.alpha:AlphaCrown"),
               summary="optimised ReLU lower slopes"),
    MethodInfo("zonotope", Category.ZONOTOPE, _BOUND, "bab/bounding/zonotope/deepz.py",
               "Singh et al. 2018 (DeepZ)", Bounder("bab.bounding.zonotope.deepz:Zonotope"),
               summary="forward zonotopes, minimal-area ReLU parallelogram"),
    MethodInfo("refinezono", Category.ZONOTOPE, _BOUND, "bab/bounding/zonotope/refinezono.py",
               "Singh et al. 2019 (RefineZono)", Bounder("bab.bounding.zonotope.refinezono:RefineZono"),
               summary="zonotope with early-layer bounds tightened by LP/MILP"),
    MethodInfo("wk", Category.DUALITY, _BOUND, "bab/bounding/duality/wk.py",
               "Wong and Kolter 2018 (dual network)", Bounder("bab.bounding.duality.wk:WongKolter"),
               summary="dual network of the convex outer adversarial polytope"),
    MethodInfo("krelu", Category.MULTI_NEURON, _BOUND, "bab/bounding/multi_neuron/krelu.py + encoders/",
               "Singh et al. 2019 (k-ReLU); Mueller et al. 2022 (PRIMA)",
               Bounder("bab.bounding.multi_neuron.krelu:KRelu"),
               summary="triangle LP plus joint constraints over groups of k unstable ReLUs"),
    MethodInfo("sdp", Category.SDP, _BOUND, "bab/bounding/sdp/sdpverify.py",
               "Raghunathan, Steinhardt, Liang 2018 (SDPVerify)", Bounder("bab.bounding.sdp.sdpverify:SdpVerify"),
               summary="SDP relaxation of the margin (cvxpy), certified from the dual"),
    MethodInfo("lmi", Category.SDP, _BOUND, "bab/bounding/sdp/lmi.py",
               "Fazlyab, Morari, Pappas 2020 (LMIVerify)", Bounder("bab.bounding.sdp.lmi:LmiVerify"),
               summary="quadratic-constraint LMI for ReLU networks (cvxpy)"),
    MethodInfo("lipschitz-opnorm", Category.LIPSCHITZ, _BOUND, "bab/bounding/lipschitz/opnorm.py",
               "Szegedy et al. 2014 (product of operator norms)", Bounder("bab.bounding.lipschitz.opnorm:OpNorm"),
               summary="global Lipschitz constant of each margin"),
    MethodInfo("fastlip", Category.LIPSCHITZ, _BOUND, "bab/bounding/lipschitz/fastlip.py",
               "Weng et al. 2018 (Fast-Lip)", Bounder("bab.bounding.lipschitz.fastlip:FastLip"),
               summary="local Lipschitz constant from activation-pattern bounds"),
    MethodInfo("recurjac", Category.LIPSCHITZ, _BOUND, "bab/bounding/lipschitz/recurjac.py",
               "Zhang et al. 2019 (RecurJac)", Bounder("bab.bounding.lipschitz.recurjac:RecurJac"),
               summary="local Lipschitz constant from recursive Jacobian bounds"),
)

BY_NAME: dict[str, MethodInfo] = {m.name: m for m in METHODS}


def info(name: str) -> MethodInfo:
    """The table row of ``name`` (``ValueError`` lists the known names)."""
    if name not in BY_NAME:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def ordered(names: list[str] | tuple[str, ...] | None = None) -> list[MethodInfo]:
    """Rows (all, or the named ones) grouped and ordered by category, then table order."""
    rows = METHODS if names is None else tuple(info(n) for n in names)
    rank = {c: i for i, c in enumerate(Category)}
    return sorted(rows, key=lambda m: (rank[m.category], METHODS.index(m)))


def render_markdown() -> str:
    """``docs/taxonomy.md``: every method with its category, module and paper."""
    lines = [
        "# Taxonomy of the verification methods",
        "",
        "Generated from `bab/taxonomy.py` (`python -m bab.taxonomy > docs/taxonomy.md`); the",
        "categories are those of Figure 2 of Li, Xie and Li, *SoK: Certified Robustness for Deep",
        "Neural Networks* (S&P 2023). Every method runs as `bab verify --method NAME`; methods",
        "with a bounder can also drive branch and bound (`bab.input_bounder`).",
        "",
        "| method | SoK category | complete | module | follows | what |",
        "|---|---|---|---|---|---|",
    ]
    for m in ordered():
        complete = "yes" if m.category.complete else "no"
        lines.append(f"| `{m.name}` | {m.category.value} | {complete} | `{m.module}` | {m.paper} | {m.summary} |")
    lines += [
        "",
        "Probabilistic certification (randomized smoothing, `bab smooth`) is not a `--method`: its",
        "answer is \"certified with probability 1-alpha\", never `unsat`; see `docs/smoothing.md`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
