"""``bab bench --executor ray``: the same rows, witnesses and summary as the process executor,
on a local 2-CPU Ray cluster; ``--resume`` keeps finished rows (both executors)."""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import pytest

from bab import bench
from bab.bench import BenchOptions
from bab.executors import RayExecutor, ThreadExecutor
from tests.test_bench import fake_bench, fake_factory


def run_command(argv: list[str]) -> int:
    """``bab bench ARGV`` in this process."""
    from bab.commands import bench as cmd

    parser = argparse.ArgumentParser(prog="bab")
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The results CSV without the (run-dependent) wall times."""
    with path.open(newline="") as fh:
        return [{k: v for k, v in rec.items() if k != "time_s"} for rec in csv.DictReader(fh)]


# ------------------------------------------------------------------ without Ray / no cluster


def test_ray_flag_without_ray_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vnnlib.parser")
    fake_bench(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = run_command([str(tmp_path / "fakebench" / "instances.csv"), "--executor", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ['bab bench: error: --executor ray: the Ray executor needs Ray: '
                   'pip install "bab-verifier[ray]" (or "ray>=2.9")']


def test_bad_combinations_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vnnlib.parser")
    fake_bench(tmp_path)
    lst = str(tmp_path / "fakebench" / "instances.csv")
    assert run_command([lst, "--resume"]) == 2
    assert run_command([lst, "--address", "auto"]) == 2
    assert "--resume needs --output" in capsys.readouterr().err


def test_ray_task_resources() -> None:
    from bab.commands.bench import ray_executor, task_threads

    pytest.importorskip("ray")
    args = argparse.Namespace(address=None, jobs=2, device=None)
    extra, ex = ray_executor([], args)
    assert extra == ["--set", "verify.threads=1"]
    assert (ex.num_cpus, ex.num_gpus, ex.local_cpus, ex.max_in_flight) == (1, 0, 2, None)
    args = argparse.Namespace(address="auto", jobs=3, device="cuda")
    extra, ex = ray_executor(["--set", "verify.threads=4"], args)
    assert task_threads(extra) == 4 and extra == ["--set", "verify.threads=4"]
    assert (ex.num_cpus, ex.num_gpus, ex.local_cpus, ex.max_in_flight) == (4, 1, None, 3)


def test_unreachable_cluster_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("vnnlib.parser")
    fake_bench(tmp_path)
    code = run_command([str(tmp_path / "fakebench" / "instances.csv"), "--executor", "ray",
                        "--address", "127.0.0.1:1"])
    assert code == 2
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in capsys.readouterr().err


def test_results_csv_round_trip_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An interrupted run's CSV (last rows missing): ``--resume`` runs only those instances,
    and the CSV and summary end up as an uninterrupted run's."""
    pytest.importorskip("vnnlib.parser")
    insts, modes, _ = fake_bench(tmp_path)
    modes["sleep.vnnlib"] = ("write", "timeout\n")
    calls: list[str] = []
    base = fake_factory(modes)

    def factory(onnx, vnnlib, timeout, results):
        calls.append(vnnlib.name)
        return base(onnx, vnnlib, timeout, results)

    monkeypatch.setattr(bench, "verify_command", lambda method, extra: factory)
    lst, out = str(tmp_path / "fakebench" / "instances.csv"), tmp_path / "results.csv"
    assert run_command([lst, "--output", str(out)]) == 1
    full, full_stdout = out.read_text(), capsys.readouterr().out
    rows = bench.read_results_csv(out)
    bench.write_results_csv(rows, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == full  # the CSV round-trips exactly
    lines = full.splitlines()
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])  # 3 rows and a torn line
    calls.clear()
    assert run_command([lst, "--output", str(out), "--resume"]) == 1
    assert calls == ["crash.vnnlib", "empty.vnnlib", "sleep.vnnlib"]
    assert csv_rows(out) == csv_rows(tmp_path / "again.csv")
    assert capsys.readouterr().out == full_stdout
    calls.clear()
    assert run_command([lst, "--output", str(out), "--resume"]) == 1  # all done: nothing runs
    assert calls == [] and csv_rows(out) == csv_rows(tmp_path / "again.csv")


# ------------------------------------------------------------------------ on a Ray cluster


def test_ray_executor_matches_threads_with_fake_verifier(tmp_path: Path, ray_cluster) -> None:
    pytest.importorskip("vnnlib.parser")
    insts, modes, _ = fake_bench(tmp_path)
    modes["sleep.vnnlib"] = ("write", "timeout\n")
    factory = fake_factory(modes)
    seen: list[int] = []
    by_ray = bench.run_bench(insts, BenchOptions(command_factory=factory, grace_s=0.5,
                                                 executor=RayExecutor(num_cpus=1)),
                             on_done=lambda i, r: seen.append(i))
    by_threads = bench.run_bench(insts, BenchOptions(command_factory=factory, grace_s=0.5,
                                                     executor=ThreadExecutor(2)))
    assert sorted(seen) == list(range(len(insts)))
    strip = [(r.benchmark, r.onnx, r.vnnlib, r.result, r.witness_ok, r.detail, r.output)
             for r in by_ray]
    assert strip == [(r.benchmark, r.onnx, r.vnnlib, r.result, r.witness_ok, r.detail, r.output)
                     for r in by_threads]
    assert bench.summarise(by_ray) == bench.summarise(by_threads)


@pytest.mark.slow  # 13 verifier runs and a Ray start: about 30 s on 2 idle cores
def test_ray_bench_on_shared_test_list(tmp_path: Path, bench_dir: Path, ray_cluster,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The acceptance run: verdicts, witnesses, CSV rows and summary equal the process
    executor's; a resumed Ray run reruns only the rows it lacks."""
    pytest.importorskip("vnnlib.parser")
    lst = str(bench_dir / "test" / "test_instances.csv")
    runs = {}
    for name, flags in (("process", ["--jobs", "2"]), ("ray", ["--executor", "ray"])):
        out, res = tmp_path / f"{name}.csv", tmp_path / f"{name}_results"
        code = run_command([lst, "--output", str(out), "--results-dir", str(res), *flags])
        runs[name] = (code, capsys.readouterr().out, csv_rows(out),
                      {p.name: p.read_text() for p in sorted(res.iterdir())})
    assert runs["ray"] == runs["process"]
    code, stdout, rows, witnesses = runs["ray"]
    assert code == 0 and stdout.startswith("solved=5 sat=1 unsat=4 ")
    assert [r["result"] for r in rows] == ["unsat", "unsat", "unsat", "sat", "unsat"]
    sat = [text for text in witnesses.values() if text.startswith("sat")]
    assert len(sat) == 1 and "((X_0 " in sat[0]
    out = tmp_path / "ray.csv"
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")  # two rows kept
    shutil.rmtree(tmp_path / "ray_results")
    assert run_command([lst, "--output", str(out), "--results-dir", str(tmp_path / "ray_results"),
                        "--executor", "ray", "--resume"]) == 0
    assert capsys.readouterr().out == stdout and csv_rows(out) == rows
    assert sorted(p.name for p in (tmp_path / "ray_results").iterdir()) == sorted(witnesses)[2:]
