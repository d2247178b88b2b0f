"""``bab compare --sok``: the quick run's files, consistency and findings; the findings and
checks on hand-made rows; the full default run (slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bab.compare import findings as F
from bab.compare.points import PointRow
from bab.compare.report import SummaryRow
from bab.compare.runner import read_points
from bab.compare.smoothing import SmoothingRow
from bab.compare.sok import DEFAULT_SKIPS, settings_for, skipped, zoo_models

QUICK_MODELS = ("fcnn-a-pgd", "fcnn-a-crown-ibp")
FILES = ("table.md", "summary.csv", "points.csv", "heatmap.png", "smoothing_table.md",
         "smoothing_summary.csv", "smoothing_points.csv", "smoothing_curves.png", "README.md",
         "settings.json")
VERSION_KEYS = ("python", "torch", "numpy", "onnx", "onnxruntime", "ortools", "gurobipy",
                "z3-solver", "cvxpy", "scs", "clarabel", "git_commit", "cpu_count")


def _cli(*args: str) -> int:
    from bab.cli import main

    return main(["compare", *args])


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``--sok --quick`` run (2 deterministic models, 3 points, 3 noise models)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sok") / "report"
    assert _cli("--sok", "--quick", "--output", str(out)) == 0
    return out


def _summary(path: Path) -> list[SummaryRow]:
    with path.open(newline="") as fh:
        return [SummaryRow(r["model"], r["method"], r["category"],
                           int(r["certified"]) if r["certified"] else None, int(r["total"]), None)
                for r in csv.DictReader(fh)]


def test_quick_writes_every_file(quick: Path) -> None:
    for name in FILES:
        assert (quick / name).is_file() and (quick / name).stat().st_size > 0, name
    for m in zoo_models(settings_for(quick, quick=True)):
        assert (quick / "models" / m.name / "model.onnx").is_file()
    table = (quick / "table.md").read_text()
    assert all(m in table for m in QUICK_MODELS) and "| pgd |" in table and "| clean |" in table
    assert "skipped: " in table  # sdp is skipped on fcnn-a, with the reason
    smooth = (quick / "smoothing_table.md").read_text()
    assert all(f"fcnn-a-{n}" in smooth for n in ("gaussian", "laplace", "uniform"))


def test_quick_counts_are_consistent(quick: Path) -> None:
    """Oracle from points.csv: per model every method <= PGD <= clean, and no certified
    point was attacked by PGD; summary.csv agrees with points.csv."""
    points = read_points(quick / "points.csv")
    rows = _summary(quick / "summary.csv")
    assert {r.model for r in rows} == set(QUICK_MODELS)
    for model in QUICK_MODELS:
        count = {r.method: r.certified for r in rows if r.model == model}
        assert count["sdp"] is None  # skipped
        assert count["pgd"] <= count["clean"] <= 3
        for method, c in count.items():
            if c is not None and method not in ("pgd", "clean"):
                assert c <= count["pgd"], (model, method)
                assert c == sum(p.certified for k, p in points.items() if k[:2] == (model, method))
        attacked = {k[2] for k, p in points.items() if k[:2] == (model, "pgd") and p.status == "attacked"}
        assert not [k for k, p in points.items() if k[0] == model and k[2] in attacked
                    and p.certified and p.method not in ("pgd", "clean")]


def test_quick_checks_hold_and_findings_are_computed(quick: Path) -> None:
    rows, pts = _summary(quick / "summary.csv"), list(read_points(quick / "points.csv").values())
    checks = (F.bounded_by_pgd(rows), F.complete_dominates(rows, pts), F.refinements_dominate(pts),
              F.no_certified_counterexample(pts))
    for c in checks:
        assert c.holds, c
    assert checks[0].compared > 0 and checks[3].compared > 0
    readme = (quick / "README.md").read_text()
    assert readme.count(": passes (") == 4 and "FAILS" not in readme
    for statement in ("(1) on the smallest FC model", "(3) IBP and CROWN-IBP", "Neyman-Pearson >=",
                      "l1: uniform noise >= Laplace"):
        line = next(x for x in readme.splitlines() if statement in x)
        assert any(v in line for v in ("**holds**", "**does not hold**", "**not measurable**"))
    assert "Shrinks of the SoK's protocol" in readme and "Skipped sdp, lmi on fcnn-a" in readme


def test_quick_settings_has_versions(quick: Path) -> None:
    data = json.loads((quick / "settings.json").read_text())
    v = data["versions"]
    assert all(k in v for k in VERSION_KEYS)
    assert v["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert v["cpu_count"] >= 1
    s = data["settings"]
    assert s["quick"] and s["eps"] == 0.05 and s["limit"] == 3 and "sdp" in s["methods"]
    assert set(data["times_s"]) == {"train_s", "deterministic_s", "smoothing_s", "total_s"}
    assert len(data["zoo"]) == 5


def test_quick_rerun_reuses_everything(quick: Path, capsys: pytest.CaptureFixture) -> None:
    before = (quick / "points.csv").read_text()
    capsys.readouterr()
    assert _cli("--sok", "--quick", "--output", str(quick)) == 0
    err = capsys.readouterr().err
    assert err.count("reusing ") == 5 and "] fcnn-a" not in err  # no model trained, no point run
    assert (quick / "points.csv").read_text() == before
    runs = json.loads((quick / "settings.json").read_text())["runs"]
    assert len(runs) == 2 and runs[1]["times_s"]["train_s"] < runs[0]["times_s"]["train_s"]
    assert "Later invocations into this folder resumed it" in (quick / "README.md").read_text()


@pytest.mark.parametrize("args", [("model.onnx",), ("--data", "x.npz"), ("--eps", "0.1"),
                                  ("--methods", "ibp"), ("--smoothing",), ("--norm", "2")])
def test_sok_rejects_options_it_fixes(tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple) -> None:
    assert _cli("--sok", "--output", str(tmp_path), *args) == 2
    assert "--sok" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_quick_without_sok_and_sok_bad_limit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _cli("--quick") == 2
    assert _cli("--sok", "--limit", "0", "--output", str(tmp_path)) == 2
    assert "--limit" in capsys.readouterr().err


def test_default_settings_and_skips() -> None:
    s = settings_for("r")
    zoo = zoo_models(s)
    assert [m.name for m in zoo if m.noise is None] == [f"{a}-{t}" for t in ("pgd", "crown-ibp")
                                                         for a in ("fcnn-a", "fcnn-b", "fcnn-c", "cnn-a", "cnn-b")]
    noise = {m.noise: m.sigma for m in zoo if m.noise}
    # the same standard deviation 0.25: Laplace sqrt(2) lambda, uniform lambda / sqrt(3)
    assert noise["gaussian"] == 0.25
    assert abs(noise["laplace"] * 2 ** 0.5 - 0.25) < 1e-12 and abs(noise["uniform"] / 3 ** 0.5 - 0.25) < 1e-12
    assert s.smoothing_limit == 5 * s.limit and s.jobs == 2
    by = {m.name: m for m in zoo}
    assert set(skipped(s, by["fcnn-a-pgd"])) == {"sdp", "lmi"}
    assert set(skipped(s, by["cnn-b-crown-ibp"])) == {"smt"} and not skipped(s, by["fcnn-b-pgd"])
    assert all(k.reason for k in DEFAULT_SKIPS)
    assert settings_for("r", limit=4, timeout=2.0, jobs=1).smoothing_limit == 20


# ---------------------------------------------------------------- findings on hand-made rows


def _rows(model: str, counts: dict[str, int | None], total: int = 10) -> list[SummaryRow]:
    return [SummaryRow(model, m, "", c, total, None) for m, c in counts.items()]


def test_complete_certify_most_exact() -> None:
    rows = _rows("a", {"milp": 6, "bab": 7, "crown": 7, "ibp": 2, "pgd": 8, "clean": 9})
    f = F.complete_certify_most(rows, ["a"])
    assert f.holds is True and f.numbers["a"]["best_complete"] == ["bab", 7]
    rows = _rows("b", {"milp": 5, "crown": 6, "lp": 6})
    f = F.complete_certify_most(rows, ["b"])
    assert f.holds is False and f.numbers["b"]["incomplete_above_best_complete"] == ["crown", "lp"]
    assert F.complete_certify_most(_rows("c", {"milp": None, "crown": 3}), ["c"]).holds is None


def test_certified_training_helps_exact() -> None:
    rows = _rows("p", {"ibp": 1, "crown-ibp": 0}) + _rows("c", {"ibp": 2, "crown-ibp": 5})
    f = F.certified_training_helps(rows, {"x": ("p", "c")})
    assert f.holds is True and f.numbers["x/ibp"] == {"pgd_model": 1, "crown_ibp_model": 2, "holds": True}
    rows = _rows("p", {"ibp": 2, "crown-ibp": 0}) + _rows("c", {"ibp": 3, "crown-ibp": 0})
    f = F.certified_training_helps(rows, {"x": ("p", "c")})
    assert f.holds is False  # 3 < 2 * 2, and 0 certified is no evidence
    assert not f.numbers["x/crown-ibp"]["holds"]


def _srows(model: str, approach: str, accs: dict[float, float | None], norm: str = "2") -> list[SmoothingRow]:
    return [SmoothingRow(model, "gaussian", approach, norm, r, a, 10) for r, a in accs.items()]


def test_neyman_pearson_best_exact() -> None:
    rows = (_srows("g", "np", {0.0: 0.9, 0.5: 0.6}) + _srows("g", "dp", {0.0: 0.9, 0.5: 0.2})
            + _srows("g", "renyi", {0.0: 0.9, 0.5: 0.7}) + _srows("g", "fdiv", {0.0: None, 0.5: None}))
    f = F.neyman_pearson_best(rows)
    assert f.holds is False
    assert f.numbers["g: np vs renyi"]["radii_where_np_is_lower"] == {0.5: [0.6, 0.7]}
    assert "g: np vs fdiv" not in f.numbers  # n/a cells are not compared
    assert F.neyman_pearson_best(_srows("g", "np", {0.0: 1.0})).holds is None


def test_uniform_beats_laplace_upper_half() -> None:
    radii = (0.0, 0.1, 0.2, 0.3)
    uni = _srows("u", "np", dict(zip(radii, (0.9, 0.5, 0.4, 0.3))), "1")
    lap = _srows("l", "np", dict(zip(radii, (0.95, 0.8, 0.4, 0.1))), "1") + _srows("l", "dp", {0.3: 0.35}, "1")
    f = F.uniform_beats_laplace(uni + lap, "u", "l")
    assert f.numbers["radii"] == [0.2, 0.3] and f.numbers["laplace"] == [0.4, 0.35]  # best approach
    assert f.holds is False  # 0.3 < 0.35 at r = 0.3
    f = F.uniform_beats_laplace(uni + lap[:4], "u", "l")
    assert f.holds is True
    assert F.uniform_beats_laplace(uni, "u", "missing").holds is None


def _p(model: str, method: str, i: int, status: str, reason: str = "") -> PointRow:
    certified = status in ("unsat", "robust", "correct")
    return PointRow(model, method, i, 0, status, certified, 0.0, reason)


def test_checks_find_planted_violations() -> None:
    pts = [_p("m", "clean", 0, "correct"), _p("m", "clean", 1, "correct"),
           _p("m", "pgd", 0, "attacked"), _p("m", "pgd", 1, "robust"),
           _p("m", "crown", 0, "unsat"),  # certified an attacked point
           _p("m", "crown", 1, "unsat"), _p("m", "alpha-crown", 1, "unknown"),  # alpha < crown
           _p("m", "lp", 1, "unsat"), _p("m", "lp-full", 1, "timeout"),  # timeout: not compared
           _p("m", "milp", 0, "sat"), _p("m", "milp", 1, "unsat")]
    rows = _rows("m", {"clean": 2, "pgd": 1, "crown": 2, "alpha-crown": 0, "lp": 1, "lp-full": 0, "milp": 1})
    assert not F.bounded_by_pgd(rows).holds  # crown 2 > pgd 1
    dom = F.complete_dominates(rows, pts)
    assert not dom.holds and any("crown 2 > milp 1" in v for v in dom.violations)
    ref = F.refinements_dominate(pts)
    assert not ref.holds and ref.compared == 1 and "alpha-crown unknown" in ref.violations[0]
    cex = F.no_certified_counterexample(pts)
    assert not cex.holds and cex.violations == ("m/crown point 0: certified but milp sat",)
    clean = [p for p in pts if not (p.method == "crown" and p.point == 0)]
    assert F.no_certified_counterexample(clean).holds


@pytest.mark.slow
def test_full_default_sok_run_is_consistent(tmp_path: Path) -> None:
    """The full default --sok (about 30 minutes on 2 cores): the consistency checks hold."""
    from bab.compare.sok import run_sok

    result = run_sok(settings_for(tmp_path / "report"))
    ev = F.evaluate(result)
    for c in ev.checks:
        assert c.holds, c
    assert len(ev.findings) == 4
    for name in FILES:
        assert (tmp_path / "report" / name).is_file()
