"""bab.compare.smoothing: the randomized-smoothing comparison (the SoK's Table IV) on a tiny
noise-trained digits model: the files and their columns, what the theory guarantees about the
table, n/a cells, resuming, and the command-line options."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from bab.compare import smoothing as cs
from bab.compare.smoothing import (POINT_COLUMNS, SUMMARY_COLUMNS, add_smoothing_arguments,
                                   compare_smoothing)
from bab.smoothing.errors import SmoothingError

APPROACHES = ("np", "dp", "renyi", "fdiv", "fdiv-hellinger", "first-order")
RADII = (0.0, 0.1, 0.25, 0.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A digits MLP trained for two epochs with Gaussian noise, and its test set."""
    from bab.demo import export_onnx, load_digits_split
    from bab.smoothing.train import train_noisy_mlp

    folder = tmp_path_factory.mktemp("tiny-smoothed")
    data = load_digits_split(seed=0)
    layers = train_noisy_mlp(data, 0.25, epochs=2, seed=0)
    np.savez(folder / "test.npz", x=data.x_test, y=data.y_test)
    return export_onnx(layers, folder / "tiny.onnx"), folder / "test.npz"


def run(tiny: tuple[Path, Path], out: Path | None, norm: str = "2",
        noises: tuple[str, ...] = ("gaussian", "uniform")) -> cs.SmoothingCompareResult:
    model, data = tiny
    return compare_smoothing([model], data, norm=norm, noises=noises, sigma=0.25,
                             approaches=APPROACHES, radii=RADII, n0=20, n=400, alpha=0.01,
                             limit=8, seed=1, output=out, batch=256)


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_l2_table_files_and_guarantees(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    res = run(tiny, tmp_path)
    names = {p.name for p in res.files}
    assert names == {"smoothing_summary.csv", "smoothing_points.csv", "smoothing_table.md",
                     "smoothing_curves.png"}
    header, summary = read(tmp_path / "smoothing_summary.csv")
    assert tuple(header) == SUMMARY_COLUMNS
    assert len(summary) == 2 * len(APPROACHES) * len(RADII)
    header, points = read(tmp_path / "smoothing_points.csv")
    assert tuple(header) == POINT_COLUMNS
    assert len(points) == len(APPROACHES) * 8  # uniform noise is l1: no points
    assert all(r["certified_accuracy"] == "n/a" for r in summary if r["noise"] == "uniform")
    assert (tmp_path / "smoothing_curves.png").stat().st_size > 1000
    assert (tmp_path / "smoothing_samples.jsonl").read_text().count("\n") == 8
    # the table is the points' certified accuracy, non-increasing in the radius
    for a in APPROACHES:
        mine = [p for p in res.points if p.approach == a]
        accs = [res.accuracy("tiny", "gaussian", a, r) for r in RADII]
        assert accs == cs.certified_accuracy(mine, RADII)
        assert all(x >= y for x, y in zip(accs, accs[1:]))
    # per point, with the same bounds, Neyman-Pearson (exact for Gaussian) certifies at least
    # the radius of every other approach that uses them
    by = {(p.approach, p.point): p for p in res.points}
    for i in range(8):
        best = by[("np", i)]
        for a in ("dp", "renyi", "fdiv", "fdiv-hellinger"):
            other = by[(a, i)]
            assert other.radius <= best.radius * (1 + 1e-9) + 1e-12
            assert other.prediction in (-1, best.prediction)
    table = res.markdown()
    assert "| tiny | gaussian | np |" in table and "uniform/dp" in table
    assert "probabilistic" in table and "unsat" not in table.lower()
    assert (tmp_path / "smoothing_table.md").read_text() == table


def test_rerun_skips_sampled_points(tiny: tuple[Path, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(tiny, tmp_path)

    def no_sampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished point was sampled again")

    monkeypatch.setattr("bab.smoothing.approaches.evidence.sample_evidence", no_sampling)
    again = run(tiny, tmp_path)
    assert again.rows == first.rows and again.points == first.points
    # in-memory runs sample afresh, with the same per-point seeds
    monkeypatch.undo()
    assert run(tiny, None).rows == first.rows


def test_l1_table_and_unsupported_norms(tiny: tuple[Path, Path]) -> None:
    res = run(tiny, None, norm="1", noises=("gaussian", "laplace", "uniform"))
    acc = {(r.noise, r.approach, r.radius): r.certified_accuracy for r in res.rows}
    assert acc[("gaussian", "np", 0.0)] is None
    assert acc[("uniform", "dp", 0.0)] is None and acc[("laplace", "first-order", 0.0)] is None
    for noise in ("laplace", "uniform"):
        assert acc[(noise, "np", 0.0)] is not None
    # uniform noise on [-lambda, lambda]: lambda (pA - pB) < lambda
    assert acc[("uniform", "np", 0.25)] == 0.0
    inf = run(tiny, None, norm="inf", noises=("gaussian",))
    assert all(r.certified_accuracy is None and "l2" in r.reason for r in inf.rows)
    assert inf.points == []


def test_bad_settings(tiny: tuple[Path, Path]) -> None:
    model, data = tiny
    kwargs = dict(norm="2", noises=("gaussian",), sigma=0.25, approaches=("np",), radii=(0.0,),
                  n0=10, n=20, alpha=0.01, limit=2, seed=0, output=None)
    for key, bad, match in (("noises", ("cauchy",), "unknown noise"),
                            ("approaches", ("cohen",), "unknown smoothing approach"),
                            ("alpha", 1.5, "alpha"), ("norm", "3", "norm"),
                            ("n", 0, "n must be"), ("sigma", -1.0, "sigma")):
        with pytest.raises(SmoothingError, match=match):
            compare_smoothing([model], data, **{**kwargs, key: bad})


def test_add_smoothing_arguments() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--radii", default="kept")
    add_smoothing_arguments(parser)
    args = parser.parse_args(["--noises", "laplace,uniform", "--approaches", "all",
                              "--sigma", "0.5", "--n", "1000"])
    assert args.noises == ("laplace", "uniform") and args.sigma == 0.5 and args.n == 1000
    assert "first-order" in args.approaches and "fdiv-hellinger" in args.approaches
    assert args.radii == "kept" and args.n0 == 100 and args.alpha == 0.001 and args.seed == 0
    fresh = argparse.ArgumentParser()
    add_smoothing_arguments(fresh)
    defaults = fresh.parse_args([])
    assert defaults.radii[0] == 0.0 and defaults.approaches[0] == "np"
    assert fresh.parse_args(["--radii", "0,0.5"]).radii == (0.0, 0.5)
    with pytest.raises(SystemExit):
        fresh.parse_args(["--radii", "0,-1"])
