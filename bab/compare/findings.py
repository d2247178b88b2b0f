"""The SoK's findings and the tables' consistency checks, as pure functions over the rows.

Findings (Li, Xie and Li, S&P 2023) are claims about data; each returns a :class:`Finding`
whose ``holds`` is True/False, or None when the rows cannot decide it (a cell n/a or
skipped, a model missing). Consistency checks are what theory guarantees; a failing one is
a bug (or a timeout, which the checks leave out where they say so). Inputs:
deterministic summary rows (:class:`bab.compare.report.SummaryRow`), point rows
(:class:`bab.compare.points.PointRow`), smoothing rows
(:class:`bab.compare.smoothing.SmoothingRow`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

FINISHED = ("sat", "unsat")
NOT_COMPARED = ("timeout", "error", "n/a", "misclassified")
REFINEMENTS = (("lp-full", "lp"), ("alpha-crown", "crown"))
NP_RIVALS = ("dp", "renyi", "fdiv", "fdiv-hellinger")
TOL = 1e-12


@dataclass(frozen=True)
class Finding:
    """One claim: ``holds`` True/False, or None when not measurable; ``numbers`` used."""

    key: str
    statement: str
    holds: bool | None
    numbers: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Check:
    """One consistency check: ``holds`` and the violations found (empty when it holds)."""

    key: str
    statement: str
    holds: bool
    violations: tuple[str, ...] = ()
    compared: int = 0  # how many comparisons were made


@dataclass(frozen=True)
class Evaluation:
    """Every finding and check of a run."""

    findings: tuple[Finding, ...]
    checks: tuple[Check, ...]


def _complete(method: str) -> bool:
    from bab.taxonomy import BY_NAME

    return method in BY_NAME and BY_NAME[method].category.complete


def _counts(rows: Iterable[Any], model: str) -> dict[str, int]:
    """method -> certified count of the available cells of ``model`` (pgd/clean included)."""
    return {r.method: r.certified for r in rows if r.model == model and r.certified is not None}


def _all(values: Sequence[bool | None]) -> bool | None:
    """None when nothing was measurable, else whether every measured value holds."""
    measured = [v for v in values if v is not None]
    return None if not measured else all(measured)


# ---------------------------------------------------------------- findings


def complete_certify_most(rows: Sequence[Any], models: Sequence[str]) -> Finding:
    """SoK finding (1): on the smallest FC models a complete method certifies at least as
    many points as every incomplete one."""
    numbers: dict[str, Any] = {}
    verdicts = []
    for model in models:
        counts = {m: n for m, n in _counts(rows, model).items() if m not in ("pgd", "clean")}
        comp = {m: n for m, n in counts.items() if _complete(m)}
        inc = {m: n for m, n in counts.items() if not _complete(m)}
        if not comp or not inc:
            verdicts.append(None)
            continue
        best_c, best_i = max(comp, key=comp.get), max(inc, key=inc.get)
        verdicts.append(comp[best_c] >= inc[best_i])
        numbers[model] = {"best_complete": [best_c, comp[best_c]],
                          "best_incomplete": [best_i, inc[best_i]],
                          "incomplete_above_best_complete": sorted(m for m, n in inc.items() if n > comp[best_c])}
    return Finding("complete-best", "(1) on the smallest FC model (fcnn-a) a complete method "
                   "certifies at least as many points as every incomplete method",
                   _all(verdicts), numbers)


def certified_training_helps(rows: Sequence[Any], pairs: dict[str, tuple[str, str]],
                             methods: Sequence[str] = ("ibp", "crown-ibp"), factor: float = 2.0) -> Finding:
    """SoK finding (3): IBP and CROWN-IBP certify at least ``factor`` times as many points
    (and at least one) on the CROWN-IBP-trained model as on the PGD-trained one, per arch.
    ``pairs``: arch -> (pgd model, crown-ibp model)."""
    numbers: dict[str, Any] = {}
    verdicts = []
    for arch, (pgd_model, cert_model) in pairs.items():
        p, c = _counts(rows, pgd_model), _counts(rows, cert_model)
        for method in methods:
            if method not in p or method not in c:
                verdicts.append(None)
                continue
            ok = c[method] >= factor * p[method] and c[method] > 0
            verdicts.append(ok)
            numbers[f"{arch}/{method}"] = {"pgd_model": p[method], "crown_ibp_model": c[method], "holds": ok}
    return Finding("certified-training", f"(3) IBP and CROWN-IBP certify >= {factor:g}x as many "
                   "points (and >= 1) on the crown-ibp-trained model as on the pgd-trained one of "
                   "the same architecture", _all(verdicts), numbers)


def _smoothing_cells(srows: Iterable[Any]) -> dict[tuple[str, str], dict[float, float]]:
    """(model, approach) -> radius -> certified accuracy (available cells only)."""
    out: dict[tuple[str, str], dict[float, float]] = {}
    for r in srows:
        if r.certified_accuracy is not None:
            out.setdefault((r.model, r.approach), {})[float(r.radius)] = float(r.certified_accuracy)
    return out


def neyman_pearson_best(srows: Sequence[Any]) -> Finding:
    """Neyman-Pearson certifies at least as much as DP, Renyi and f-divergence (KL and
    Hellinger) at every radius, from the same samples."""
    cells = _smoothing_cells(srows)
    numbers: dict[str, Any] = {}
    verdicts = []
    for (model, approach), np_acc in cells.items():
        if approach != "np":
            continue
        for rival in NP_RIVALS:
            other = cells.get((model, rival))
            if other is None:
                continue
            worse = {r: [np_acc[r], other[r]] for r in sorted(np_acc) if r in other and np_acc[r] < other[r] - TOL}
            verdicts.append(not worse)
            numbers[f"{model}: np vs {rival}"] = {"radii_where_np_is_lower": worse,
                                                 "np": [np_acc[r] for r in sorted(np_acc)],
                                                 rival: [other.get(r) for r in sorted(np_acc)]}
    return Finding("np-best", "Neyman-Pearson >= DP-based, >= Renyi and >= f-divergence at every "
                   "radius (same samples)", _all(verdicts), numbers)


def uniform_beats_laplace(srows: Sequence[Any], uniform_model: str, laplace_model: str) -> Finding:
    """For l1: the uniform-noise model's best certified accuracy is >= the Laplace-noise
    model's at the larger radii (the upper half of the radii of the table)."""
    cells = _smoothing_cells(srows)

    def best(model: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for (m, _a), acc in cells.items():
            if m == model:
                for r, v in acc.items():
                    out[r] = max(out.get(r, 0.0), v)
        return out

    uni, lap = best(uniform_model), best(laplace_model)
    radii = sorted(set(uni) & set(lap))
    if not radii:
        return Finding("uniform-l1", "l1: uniform noise >= Laplace noise at the larger radii", None)
    larger = radii[len(radii) // 2:]
    worse = [r for r in larger if uni[r] < lap[r] - TOL]
    numbers = {"radii": larger, "uniform": [uni[r] for r in larger], "laplace": [lap[r] for r in larger],
               "all_radii": radii, "uniform_all": [uni[r] for r in radii], "laplace_all": [lap[r] for r in radii]}
    return Finding("uniform-l1", "l1: uniform noise >= Laplace noise (best approach each) at the "
                   "larger radii (upper half of the table's radii)", not worse, numbers)


# ---------------------------------------------------------------- consistency checks


def bounded_by_pgd(rows: Sequence[Any]) -> Check:
    """Per model: every method's certified count <= PGD accuracy <= clean accuracy."""
    bad, n = [], 0
    for model in dict.fromkeys(r.model for r in rows):
        counts = _counts(rows, model)
        pgd, clean = counts.get("pgd"), counts.get("clean")
        if pgd is None or clean is None:
            continue
        n += 1
        if pgd > clean:
            bad.append(f"{model}: pgd {pgd} > clean {clean}")
        for method, c in counts.items():
            if method not in ("pgd", "clean"):
                n += 1
                if c > pgd:
                    bad.append(f"{model}/{method}: {c} certified > pgd {pgd}")
    return Check("pgd-bound", "every method <= PGD accuracy <= clean accuracy (per model)", not bad, tuple(bad), n)


def _by_cell(points: Iterable[Any]) -> dict[tuple[str, str], dict[int, Any]]:
    out: dict[tuple[str, str], dict[int, Any]] = {}
    for p in points:
        out.setdefault((p.model, p.method), {})[p.point] = p
    return out


def _finished(cell: dict[int, Any]) -> bool:
    ran = [p for p in cell.values() if p.status not in ("misclassified",)]
    return bool(ran) and all(p.status in FINISHED for p in ran)


def complete_dominates(rows: Sequence[Any], points: Sequence[Any]) -> Check:
    """Every complete method that finished every point certifies >= every incomplete one."""
    cells = _by_cell(points)
    bad, n = [], 0
    for model in dict.fromkeys(r.model for r in rows):
        counts = {m: c for m, c in _counts(rows, model).items() if m not in ("pgd", "clean")}
        for comp in [m for m in counts if _complete(m) and _finished(cells.get((model, m), {}))]:
            for inc in [m for m in counts if not _complete(m)]:
                n += 1
                if counts[inc] > counts[comp]:
                    bad.append(f"{model}: {inc} {counts[inc]} > {comp} {counts[comp]} (finished)")
    return Check("complete-dominates", "every complete method that finished >= every incomplete one",
                 not bad, tuple(bad), n)


def refinements_dominate(points: Sequence[Any], pairs: Sequence[tuple[str, str]] = REFINEMENTS) -> Check:
    """lp-full >= lp and alpha-crown >= crown per point (points where either timed out,
    errored or was n/a are left out)."""
    cells = _by_cell(points)
    bad, n = [], 0
    for (model, method), strong in cells.items():
        for s_name, w_name in pairs:
            if method != s_name or (model, w_name) not in cells:
                continue
            weak = cells[(model, w_name)]
            for i, p in strong.items():
                q = weak.get(i)
                if q is None or p.status in NOT_COMPARED or q.status in NOT_COMPARED:
                    continue
                n += 1
                if q.certified and not p.certified:
                    bad.append(f"{model} point {i}: {w_name} certified, {s_name} {p.status}")
    return Check("refinements", "lp-full >= lp and alpha-crown >= crown over the same points",
                 not bad, tuple(bad), n)


def no_certified_counterexample(points: Sequence[Any]) -> Check:
    """No method certifies a point where PGD (replayed) or a complete method found an
    adversarial example."""
    attacked = {(p.model, p.point): f"pgd ({p.reason})" for p in points
                if p.method == "pgd" and p.status == "attacked"}
    attacked.update({(p.model, p.point): f"{p.method} sat" for p in points
                     if p.status == "sat" and _complete(p.method)})
    bad, n = [], 0
    for p in points:
        if p.method in ("pgd", "clean") or p.status in ("misclassified", "n/a"):
            continue
        n += 1
        why = attacked.get((p.model, p.point))
        if p.certified and why is not None:
            bad.append(f"{p.model}/{p.method} point {p.point}: certified but {why}")
    return Check("no-false-certificate", "no cell certifies a point with a known adversarial example",
                 not bad, tuple(bad), n)


# ---------------------------------------------------------------- one run


def evaluate(result: Any) -> Evaluation:
    """Every finding and check of a :class:`bab.compare.sok.SokResult`."""
    zoo = result.zoo
    det = [m for m in zoo if m.noise is None]
    smallest = [m.name for m in det if m.arch == "fcnn-a"]
    pairs: dict[str, tuple[str, str]] = {}
    for m in det:
        if m.robust == "pgd":
            twin = next((t.name for t in det if t.arch == m.arch and t.robust == "crown-ibp"), None)
            if twin is not None:
                pairs[m.arch] = (m.name, twin)
    noise = {m.noise: m.name for m in zoo if m.noise is not None}
    findings = (complete_certify_most(result.rows, smallest),
                certified_training_helps(result.rows, pairs),
                neyman_pearson_best(result.smoothing_rows),
                uniform_beats_laplace(result.smoothing_rows, noise.get("uniform", ""), noise.get("laplace", "")))
    checks = (bounded_by_pgd(result.rows), complete_dominates(result.rows, result.points),
              refinements_dominate(result.points), no_certified_counterexample(result.points))
    return Evaluation(findings, checks)
