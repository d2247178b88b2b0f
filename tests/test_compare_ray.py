"""``bab compare --executor ray``: the same points, summary and table as the process executor
on a local 2-CPU Ray cluster; an overrunning point is killed and recorded as ``timeout``;
the models travel once per worker; ``--resume`` skips finished points for both executors."""

from __future__ import annotations

import csv
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bab.compare import api
from bab.compare.points import PointTask
from bab.compare.runner import run_tasks
from bab.compare.workers import WORKERS, PointRunner, models_payload
from bab.config import Config
from bab.executors import RayExecutor
from tests.builders import random_mlp

METHODS = "crown,milp"
EPS = 0.05  # on these models: milp and crown certify some points and not others
N_POINTS = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two random ReLU MLPs and points labelled by the first (the second misclassifies some)."""
    import onnx_models

    folder = tmp_path_factory.mktemp("tiny_zoo")
    wide = random_mlp(folder / "wide.onnx", [8, 16, 16, 3], seed=0)
    narrow = random_mlp(folder / "narrow.onnx", [8, 12, 3], seed=1)
    x = np.random.default_rng(0).uniform(0, 1, (N_POINTS, 8)).astype(np.float32)
    y = onnx_models.load(wide).evaluate(x).argmax(axis=1)
    data = folder / "test.npz"
    np.savez(data, x=x, y=y)
    return {"models": [str(wide), str(narrow)], "data": str(data), "dir": folder}


def points_rows(folder: Path) -> list[dict[str, str]]:
    """``points.csv`` without the (run-dependent) times."""
    with (folder / "points.csv").open(newline="") as fh:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(fh)]


def summary_rows(folder: Path) -> list[dict[str, str]]:
    """``summary.csv`` without the median times."""
    with (folder / "summary.csv").open(newline="") as fh:
        return [{k: v for k, v in r.items() if "time" not in k} for r in csv.DictReader(fh)]


def table_without_times(folder: Path) -> str:
    """``table.md`` with every ``(0.12 s)`` removed."""
    return re.sub(r" \([0-9.]+ s\)", "", (folder / "table.md").read_text())


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``bab compare ARGS`` in this process: (exit code, stdout, stderr)."""
    from bab.cli import main

    code = main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ without Ray / bad flags


def test_ray_flag_without_ray_exits_2(tiny: dict, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, out, err = cli(capsys, *tiny["models"], "--data", tiny["data"], "--eps", "0.05",
                         "--executor", "ray")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ['bab compare: error: --executor ray: the Ray executor needs Ray: '
                                        'pip install "bab-verifier[ray]" (or "ray>=2.9")']


def test_address_without_ray_executor_exits_2(tiny: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, *tiny["models"], "--data", tiny["data"], "--eps", "0.05",
                       "--address", "auto")
    assert code == 2 and err.strip() == "bab compare: error: --address needs --executor ray"


def test_executor_flags_are_bench_s() -> None:
    """Same spelling, choices and help as ``bab bench`` (one argparse helper)."""
    import argparse

    from bab.commands import bench, compare

    def options(register: object) -> dict[str, tuple]:
        parser = argparse.ArgumentParser(prog="bab")
        register(parser.add_subparsers(dest="command"))  # type: ignore[operator]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        (p,) = sub.choices.values()
        return {a.dest: (a.option_strings, a.choices, a.default, a.help)
                for a in p._actions if a.dest in ("executor", "address")}

    assert options(bench.register) == options(compare.register)
    assert set(options(compare.register)) == {"executor", "address"}


def test_ray_executor_of_the_command() -> None:
    """One CPU per task (one torch thread per point); --jobs sizes a local cluster or caps the
    tasks in flight on --address."""
    import argparse

    from bab.commands.compare import point_executor

    pytest.importorskip("ray")
    ex = point_executor(argparse.Namespace(executor="ray", address=None, jobs=3))
    assert (ex.num_cpus, ex.num_gpus, ex.local_cpus, ex.max_in_flight) == (1, 0, 3, None)
    ex = point_executor(argparse.Namespace(executor="ray", address="auto", jobs=4))
    assert (ex.address, ex.local_cpus, ex.max_in_flight) == ("auto", None, 4)
    assert point_executor(argparse.Namespace(executor="process", address=None, jobs=2)) is None


# ------------------------------------------------------------------ models shipped once


def test_a_worker_process_serves_many_points_with_one_copy_of_the_models(
        tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Here: two calls of one runner use the same worker process, and the payload is read once."""
    import onnx_models
    from bab.compare.data import Model

    net = onnx_models.load(tiny["models"][0])
    payload = models_payload({"wide": Model("wide", net)}, Config())
    runner = PointRunner(payload)
    reads = []
    real = PointRunner._payload
    monkeypatch.setattr(PointRunner, "_payload", lambda self: reads.append(1) or real(self))
    task = PointTask("wide", "ibp", 0, 0, np.zeros(8), np.full(8, 0.01), 10.0)
    WORKERS.own(runner.key)
    try:
        first = runner(task)
        (worker,) = WORKERS.idle[runner.key]
        second = runner(task)
        assert WORKERS.idle[runner.key] == [worker] and worker.proc.poll() is None
    finally:
        WORKERS.close(runner.key)
    assert reads == [1]
    assert first.status == second.status and first.status in ("unsat", "sat", "unknown")
    assert worker.proc.poll() is not None  # stopped with the run


def test_a_ray_worker_fetches_the_models_once(tiny: dict, ray_cluster) -> None:
    """One Ray task running three points: one worker process, one ``ray.get`` of the models."""
    import onnx_models
    from bab.compare.data import Model

    ray = ray_cluster
    net = onnx_models.load(tiny["models"][0])
    payload = models_payload({"wide": Model("wide", net)}, Config())
    runner = PointRunner(ray.put(payload))
    assert len(pickle.dumps(runner)) < 1000 < len(payload)  # a task carries the reference only
    tasks = [PointTask("wide", "crown", i, 0, np.zeros(8), np.full(8, 0.01 * i), 10.0) for i in range(3)]
    pids, statuses = ray.get(ray.remote(_three_points).options(num_cpus=1).remote(runner, tasks))
    assert len(set(pids)) == 1 and len(statuses) == 3
    assert all(s in ("unsat", "sat", "unknown") for s in statuses)


def _three_points(runner: PointRunner, tasks: list[PointTask]) -> tuple[list[int], list[str]]:
    """The body of a Ray task: run the points and note which worker process served each."""
    pids, statuses = [], []
    for task in tasks:
        statuses.append(runner(task).status)
        (worker,) = WORKERS.idle[runner.key]
        pids.append(worker.proc.pid)
    return pids, statuses


# ------------------------------------------------------------------ same rows as the process executor


def test_ray_gives_the_process_executor_s_points_summary_and_table(tiny: dict, ray_cluster,
                                                                   tmp_path: Path) -> None:
    """Same rows (all but the times) and table; a rerun on the Ray run's folder resumes it."""
    common = dict(eps=EPS, methods=METHODS, limit=N_POINTS, timeout=20)
    local = api.compare(tiny["models"], tiny["data"], jobs=2, processes=True,
                        output=tmp_path / "process", **common)
    remote = api.compare(tiny["models"], tiny["data"], executor=RayExecutor(num_cpus=1),
                         output=tmp_path / "ray", **common)
    assert local.verified == remote.verified > 0
    rows = points_rows(tmp_path / "process")
    assert rows == points_rows(tmp_path / "ray")
    assert len(rows) == 2 * (2 + 2) * N_POINTS
    statuses = {r["status"] for r in rows if r["method"] in METHODS.split(",")}
    assert {"unsat", "sat", "misclassified"} <= statuses  # the table is not degenerate
    assert summary_rows(tmp_path / "process") == summary_rows(tmp_path / "ray")
    assert table_without_times(tmp_path / "process") == table_without_times(tmp_path / "ray")
    again = api.compare(tiny["models"], tiny["data"], executor=RayExecutor(num_cpus=1),
                        output=tmp_path / "ray", **common)
    assert again.verified == 0 and points_rows(tmp_path / "ray") == rows


@pytest.mark.slow
def test_resume_skips_finished_points_for_both_executors(tiny: dict, ray_cluster, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A run cut short (half of points.csv kept) is finished by --executor ray, then by the
    process executor after another cut: each rerun certifies only the missing points."""
    out = tmp_path / "out"
    args = [*tiny["models"], "--data", tiny["data"], "--eps", str(EPS), "--methods", "crown,milp",
            "--limit", "4", "--output", str(out)]
    code, table, err = cli(capsys, *args, "--executor", "ray")
    assert code == 0 and table == (out / "table.md").read_text()
    full = points_rows(out)
    ran = len(err.strip().splitlines())
    assert ran > 0
    for executor in ("ray", "process"):
        lines = (out / "points.csv").read_text().splitlines()
        keep = len(lines) // 2
        (out / "points.csv").write_text("\n".join(lines[:keep]) + "\n")
        dropped = [r for r in full[keep - 1:] if r["method"] in ("crown", "milp")
                   and r["status"] != "misclassified"]
        code, _, err = cli(capsys, *args, "--executor", executor)
        assert code == 0
        assert len(err.strip().splitlines()) == len(dropped), executor  # one progress line each
        assert points_rows(out) == full


# ------------------------------------------------------------------ timeouts


def _stalling_models(tiny: dict) -> dict:
    import onnx_models
    from bab.compare.data import Model
    from tests.test_compare import _stalling

    net = onnx_models.load(tiny["models"][1])
    return {"hang": Model("hang", _stalling(net)), "ok": Model("ok", net)}


@pytest.mark.parametrize("executor", ["ray", pytest.param("process", marks=pytest.mark.slow)])
def test_an_overrunning_point_is_killed_and_recorded_as_timeout(tiny: dict, executor: str,
                                                                request: pytest.FixtureRequest) -> None:
    """A point that never stops (its network's ``to`` sleeps 120 s) is killed at timeout +
    grace and recorded as ``timeout``, on Ray as with the process executor; the other point
    (sent after it to the same single slot) gets its answer from a fresh worker process."""
    lo, hi = np.full(8, 0.4), np.full(8, 0.6)
    tasks = [PointTask("hang", "ibp", 0, 0, lo, hi, 1.0), PointTask("ok", "crown", 0, 0, lo, hi, 20.0)]
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
        kw = dict(executor=RayExecutor(num_cpus=1, max_in_flight=1))
    else:
        kw = dict(processes=True)
    rows = []
    run_tasks(tasks, _stalling_models(tiny), Config(), 1, rows.append, grace_s=0.5, **kw)
    hang, ok = rows
    assert hang.status == "timeout" and hang.reason == "killed after 1.5 s" and not hang.certified
    assert 1.5 <= hang.time_s < 30
    assert ok.model == "ok" and ok.status in ("unsat", "sat", "unknown")
