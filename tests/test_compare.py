"""``bab compare``: the deterministic SoK table (consistency of the methods' answers against
each other and against PGD, the files, resume, parallel jobs, n/a cells, bad input)."""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bab.compare import api, points
from bab.compare.report import SUMMARY_COLUMNS
from bab.taxonomy import info
from onnx_models.network import Network
from tests.builders import random_mlp
from tests.compare_zoo import digits, export, train_mlp

METHODS = ("ibp", "crown", "alpha-crown", "lp", "lp-full", "milp", "bab")
EPS = 0.06  # on these models: complete methods certify more than CROWN/LP, IBP nothing
N_POINTS = 10


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny digits MLPs as ONNX files, the test points as .npz, one comparison run."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("zoo")
    models = [export(train_mlp((32, 32), seed=0), folder / "mlp32x2.onnx"),
              export(train_mlp((16,), seed=1), folder / "mlp16.onnx")]
    _, _, x, y = digits()
    data = folder / "test.npz"
    np.savez(data, x=x, y=y)
    out = folder / "out"
    result = api.compare(models, data, eps=EPS, methods=",".join(METHODS), limit=N_POINTS,
                         timeout=30, output=out)
    return {"models": models, "data": data, "out": out, "result": result}


def _count(result: api.CompareResult, model: str, method: str) -> int:
    cell = result.cell(model, method)
    assert cell.certified is not None, f"{model}/{method} is n/a: {cell.reason}"
    return cell.certified


def _finished(result: api.CompareResult, model: str, method: str) -> bool:
    """Every point the method ran on got a definite answer."""
    ran = [r for r in result.points if r.model == model and r.method == method
           and r.status != points.MISCLASSIFIED]
    return all(r.status in ("sat", "unsat") for r in ran)


def test_zoo_orders_the_methods_as_theory_says(zoo: dict) -> None:
    res = zoo["result"]
    for model in ("mlp32x2", "mlp16"):
        pgd, clean = _count(res, model, "pgd"), _count(res, model, "clean")
        assert pgd <= clean <= N_POINTS
        counts = {m: _count(res, model, m) for m in METHODS}
        assert all(c <= pgd for c in counts.values()), (model, counts, pgd)
        complete = [m for m in METHODS if info(m).category.complete and _finished(res, model, m)]
        assert complete, f"no complete method finished on {model}"
        for c in complete:
            for m in METHODS:
                if not info(m).category.complete:
                    assert counts[c] >= counts[m], (model, c, m, counts)
        assert counts["lp-full"] >= counts["lp"]
        assert counts["alpha-crown"] >= counts["crown"]
        assert counts["crown"] >= counts["ibp"]
    # the models are not trivially robust at this radius: the table separates the methods
    assert _count(res, "mlp32x2", "milp") > _count(res, "mlp32x2", "crown") > _count(res, "mlp32x2", "ibp")


def test_no_point_certified_where_pgd_found_an_adversarial_example(zoo: dict) -> None:
    rows = {r.key: r for r in zoo["result"].points}
    attacked = [(r.model, r.point) for r in rows.values() if r.method == "pgd" and r.status == "attacked"]
    assert attacked, "PGD found nothing: the test radius is too small to check this"
    for model, point in attacked:
        for method in METHODS:
            assert not rows[(model, method, point)].certified, (model, method, point)


def test_output_files(zoo: dict) -> None:
    out = zoo["out"]
    with (out / "summary.csv").open() as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == SUMMARY_COLUMNS
        body = list(reader)
    assert len(body) == 2 * (len(METHODS) + 2)
    assert {r[1] for r in body} == {*METHODS, "pgd", "clean"}
    with (out / "points.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (len(METHODS) + 2) * N_POINTS
    assert {r["status"] for r in rows} <= {"unsat", "sat", "unknown", "timeout", "correct",
                                          "misclassified", "robust", "attacked"}
    table = (out / "table.md").read_text()
    assert "| category | method | mlp32x2 | mlp16 |" in table
    # rows grouped by SoK category in the taxonomy's order, PGD and clean last
    order = [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert order == ["milp", "bab", "lp", "lp-full", "ibp", "crown", "alpha-crown", "pgd", "clean"]
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_makes_no_verify_calls(zoo: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = points.verify
    monkeypatch.setattr(points, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = api.compare(zoo["models"], zoo["data"], eps=EPS, methods=",".join(METHODS),
                        limit=N_POINTS, timeout=30, output=zoo["out"])
    assert calls == [] and again.verified == 0
    assert [r.csv_cells()[:5] for r in again.rows] == [r.csv_cells()[:5] for r in zoo["result"].rows]
    # a different radius in the same folder would mix two tables: refused
    with pytest.raises(api.D.CompareInputError, match="other settings"):
        api.compare(zoo["models"], zoo["data"], eps=EPS / 2, methods="ibp", limit=2, output=zoo["out"])


def test_resume_runs_only_missing_points(zoo: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = api.compare(zoo["models"][1:], zoo["data"], eps=EPS, methods="crown", limit=3, output=tmp_path)
    assert first.verified == 3
    calls = []
    real = points.verify
    monkeypatch.setattr(points, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    more = api.compare(zoo["models"][1:], zoo["data"], eps=EPS, methods="crown", limit=5, output=tmp_path)
    assert len(calls) == 2 and more.cell("mlp16", "crown").total == 5


def test_parallel_jobs_give_the_same_counts(zoo: dict) -> None:
    """--jobs 2 (spawned workers) against the --jobs 1 run of the zoo, on its first points."""
    n = 5
    parallel = api.compare(zoo["models"][:1], zoo["data"], eps=EPS, methods="crown,milp", limit=n,
                           timeout=30, jobs=2)
    assert parallel.verified == 2 * n - sum(not r.certified for r in parallel.points
                                              if r.method == "clean")
    serial = {r.key: r for r in zoo["result"].points}
    for method in ("crown", "milp", "pgd", "clean"):
        want = sum(serial[("mlp32x2", method, i)].certified for i in range(n))
        assert parallel.cell("mlp32x2", method).certified == want, method


def test_unsupported_method_is_na_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """smt (z3) rejects sigmoids statically; a bounder raising UnsupportedLayerError inside verify
    gives n/a too; a bounder refusing only some points leaves the cell a percentage."""
    import bab.bounding as bounding
    from bab.bounding import BounderRefusal, UnsupportedLayerError

    model = random_mlp(tmp_path / "sig.onnx", [4, 6, 3], act="Sigmoid")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 4))
    import onnx_models

    y = onnx_models.load(model).evaluate(x).argmax(axis=1)  # every point classified correctly
    real = bounding.get_bounder

    class Refuses:
        name = "crown"

        def bound(self, net, dom, state=None):  # noqa: ANN001, ANN201 - test double
            raise UnsupportedLayerError("bounding method 'crown' has no rule for layer Sigmoid")

    class RefusesFirst:
        name = "ibp"

        def bound(self, net, dom, state=None):  # noqa: ANN001, ANN201 - test double
            if np.allclose(dom.lower[0].numpy(), np.clip(x[0] - 0.01, 0, 1)):
                raise BounderRefusal("ibp: inaccurate solve")
            return real("ibp").bound(net, dom, state)

    fakes = {"crown": Refuses(), "ibp": RefusesFirst()}
    monkeypatch.setattr(bounding, "get_bounder", lambda n: fakes[n] if n in fakes else real(n))
    res = api.compare([model], (x, y), eps=0.01, methods="smt,crown,ibp", limit=6, timeout=10)
    smt, crown, ibp = (res.cell("sig", m) for m in ("smt", "crown", "ibp"))
    assert smt.certified is None and "Sigmoid" in smt.reason
    assert crown.certified is None and "no rule for layer Sigmoid" in crown.reason
    assert ibp.certified is not None
    ibp_rows = sorted((r for r in res.points if r.method == "ibp"), key=lambda r: r.point)
    assert ibp_rows[0].status == "n/a" and "inaccurate solve" in ibp_rows[0].reason
    assert all(r.status != "n/a" for r in ibp_rows[1:])
    assert "n/a (" in smt.cell() and "0.0 %" not in smt.cell()
    assert res.markdown().count("n/a (") == 2
    frame = res.to_dataframe()
    assert frame.loc[frame.method == "smt", "certified"].isna().all()


def test_certifying_verify_is_called_without_falsification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_mlp(tmp_path / "m.onnx", [4, 6, 3])
    x = np.full((1, 4), 0.5)
    import onnx_models

    y = onnx_models.load(model).evaluate(x).argmax(axis=1)
    seen = []
    real = points.verify
    monkeypatch.setattr(points, "verify", lambda net, spec, cfg, t, **k: seen.append((spec, cfg)) or real(net, spec, cfg, t, **k))
    api.compare([model], (x, y), eps=0.05, methods="ibp", limit=1, timeout=7)
    (spec, cfg), = seen
    assert cfg.falsify.enabled is False and cfg.verify.method == "ibp" and cfg.verify.timeout == 7
    region, = spec.regions
    assert np.allclose(region.lower, 0.45) and np.allclose(region.upper, 0.55)
    assert len(region.clauses) == 2  # one per other class: y_label - y_j <= 0
    for clause in region.clauses:
        assert clause.C[0, y[0]] == 1.0 and clause.C.sum() == 0.0 and clause.d[0] == 0.0


def test_clip_range_and_ball() -> None:
    from bab.compare.data import ball, clip_range

    assert clip_range(np.array([[0.0, 0.5, 1.0]])) == (0.0, 1.0)
    assert clip_range(np.array([[-2.0, 3.0]])) == (-2.0, 3.0)
    lo, hi = ball(np.array([0.0, 0.5, 1.0]), 0.1, (0.0, 1.0))
    assert lo.tolist() == [0.0, 0.4, 0.9] and np.allclose(hi, [0.1, 0.6, 1.0])


# ------------------------------------------------------------------------------------- CLI


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from bab.cli import main

    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("cli")
    model = random_mlp(folder / "tiny.onnx", [4, 5, 3])
    x = np.random.default_rng(0).uniform(0, 1, (5, 4)).astype(np.float32)
    np.savez(folder / "ok.npz", x=x, y=np.array([0, 1, 2, 0, 1]))
    np.savez(folder / "test_keys.npz", x_test=x, y_test=np.array([0, 1, 2, 0, 1]))
    np.savez(folder / "nokeys.npz", a=x)
    np.savez(folder / "bigLabel.npz", x=x, y=np.array([0, 1, 7, 0, 1]))
    return {"model": str(model), "dir": folder}


@pytest.mark.parametrize("case,args,needle", [
    ("label", ["--data", "{dir}/bigLabel.npz", "--eps", "0.1"], "label 7"),
    ("keys", ["--data", "{dir}/nokeys.npz", "--eps", "0.1"], "needs arrays x and y"),
    ("method", ["--data", "{dir}/ok.npz", "--eps", "0.1", "--methods", "ibp,nope"], "unknown method nope"),
    ("eps", ["--data", "{dir}/ok.npz", "--eps", "-0.1"], "eps must be"),
    ("data", ["--data", "{dir}/missing.npz", "--eps", "0.1"], "not found"),
])
def test_bad_input_exits_2_with_one_line(small: dict, capsys: pytest.CaptureFixture, case: str,
                                         args: list[str], needle: str) -> None:
    args = [a.format(dir=small["dir"]) for a in args]
    code, out, err = _cli(capsys, small["model"], *args)
    assert code == 2, (case, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert out == ""


def test_missing_model_exits_2(small: dict, capsys: pytest.CaptureFixture) -> None:
    code, _, err = _cli(capsys, str(small["dir"] / "nope.onnx"), "--data", str(small["dir"] / "ok.npz"), "--eps", "0.1")
    assert code == 2 and "nope.onnx" in err and len(err.strip().splitlines()) == 1


def test_cli_prints_the_table_and_accepts_x_test_keys(small: dict, capsys: pytest.CaptureFixture) -> None:
    out_dir = small["dir"] / "out"
    code, out, _ = _cli(capsys, small["model"], "--data", str(small["dir"] / "test_keys.npz"), "--eps",
                        "0.01", "--methods", "ibp,crown", "--limit", "3", "--output", str(out_dir))
    assert code == 0
    assert "| category | method | tiny |" in out and "| interval | ibp |" in out
    assert out == (out_dir / "table.md").read_text()
    summary = list(csv.DictReader((out_dir / "summary.csv").open()))
    assert [r["method"] for r in summary] == ["ibp", "crown", "pgd", "clean"]
    assert all(int(r["total"]) == 3 for r in summary)


def test_smoothing_flag_without_the_module_exits_2(small: dict, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "bab.compare.smoothing", None)  # as if it were not written yet
    code, _, err = _cli(capsys, small["model"], "--data", str(small["dir"] / "ok.npz"), "--smoothing")
    assert code == 2 and "smoothing comparison is not available" in err


@dataclasses.dataclass(eq=False)
class StallingNetwork(Network):
    """A network whose ``to()`` (called as verify starts) hangs: a point that never stops."""

    def to(self, dtype=None, device=None):  # noqa: ANN001, ANN201 - test double
        time.sleep(120)
        return super().to(dtype, device)


def _stalling(net: Network) -> StallingNetwork:
    return StallingNetwork(net.nodes, net.input_shape, net.output_shape, net.io, net.source,
                           net.dtype, net.meta)


@pytest.mark.slow
def test_a_worker_that_overruns_its_timeout_is_killed(tmp_path: Path) -> None:
    """--jobs: a point that does not stop by itself is killed at timeout + grace and recorded
    as a timeout; the replacement worker goes on with the next point."""
    import onnx_models
    from bab.compare.data import Model
    from bab.compare.points import PointTask
    from bab.compare.runner import Pool
    from bab.config import Config

    path = random_mlp(tmp_path / "m.onnx", [4, 5, 3])
    net = onnx_models.load(path)
    models = {"hang": Model("hang", _stalling(net)), "ok": Model("ok", net)}
    lo, hi = np.full(4, 0.4), np.full(4, 0.6)
    label = int(net.evaluate(np.full((1, 4), 0.5)).argmax())
    tasks = [PointTask("hang", "ibp", 0, label, lo, hi, 1.0), PointTask("ok", "ibp", 0, label, lo, hi, 10.0)]
    rows = []
    start = time.monotonic()
    Pool(1, models, Config(), grace_s=1.0).run(tasks, rows.append)
    assert time.monotonic() - start < 100
    hang, ok = rows
    assert hang.status == "timeout" and "killed after 2 s" in hang.reason
    assert ok.status in ("unsat", "unknown") and ok.model == "ok"
