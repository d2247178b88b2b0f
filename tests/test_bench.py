"""Tests for ``bab bench`` (lists, expected answers, scoring, processes) and bab.witness."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bab import bench
from bab.bench import BenchOptions, BenchRow, BenchSummary, Instance
from bab.witness import check_result_text, check_witness, format_witness, parse_witness
from vnnlib.spec import Clause, Region, Spec

# ------------------------------------------------------------------------------ helpers


def make_files(folder: Path, names: list[str]) -> None:
    """Create empty files (and their folders)."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")


def tiny_onnx(path: Path, dtype: str = "float32") -> Path:
    """y = W x + b with x: [1, 2], y: [1, 2]; W = [[1, 2], [3, -1]], b = [0.5, -0.5]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    np_dtype = np.float32 if dtype == "float32" else np.float64
    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.DOUBLE
    w = numpy_helper.from_array(np.array([[1, 2], [3, -1]], dtype=np_dtype), "W")
    b = numpy_helper.from_array(np.array([0.5, -0.5], dtype=np_dtype), "B")
    node = helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)
    graph = helper.make_graph(
        [node], "tiny", [helper.make_tensor_value_info("x", elem, [1, 2])],
        [helper.make_tensor_value_info("y", elem, [1, 2])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny_eval(x: np.ndarray) -> np.ndarray:
    """The tiny model in float64."""
    return np.array([[1, 2], [3, -1]], dtype=np.float64) @ x + np.array([0.5, -0.5])


TINY_VNNLIB = """; x in [0,1]^2; unsafe when Y_0 >= 3
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (<= X_0 1.0))
(assert (>= X_0 0.0))
(assert (<= X_1 1.0))
(assert (>= X_1 0.0))
(assert (>= Y_0 3.0))"""


def tiny_spec() -> Spec:
    """The TINY_VNNLIB property built directly: x in [0,1]^2, unsafe when -y0 <= -3."""
    clause = Clause(np.array([[-1.0, 0.0]]), np.array([-3.0]))
    return Spec((Region(np.zeros(2), np.ones(2), (clause,)),), 2, 2)


def row(result: str, expected: str = "", witness_ok: bool | None = None,
        onnx: str = "a.onnx", time_s: float = 1.0) -> BenchRow:
    """A BenchRow with defaults."""
    if result == "sat" and witness_ok is None:
        witness_ok = True
    return BenchRow("b", onnx, "p.vnnlib", result, time_s, expected=expected,
                    witness_ok=witness_ok)


# --------------------------------------------------------------------------- list reading


def test_read_instances_variants(tmp_path: Path) -> None:
    folder = tmp_path / "mybench"
    make_files(folder, ["nets/a.onnx", "b.onnx", "specs/p.vnnlib", "q.vnnlib"])
    text = ("./nets/a.onnx,./specs/p.vnnlib,300.0\r\n\r\n"
            "b.onnx, q.vnnlib ,116\r\n   \n\nnets/a.onnx,q.vnnlib,60")  # no final newline
    (folder / "mybench_instances.csv").write_bytes(text.encode())
    insts = bench.read_instances(folder / "mybench_instances.csv")
    assert [(i.onnx, i.vnnlib, i.timeout) for i in insts] == [
        ("./nets/a.onnx", "./specs/p.vnnlib", 300.0), ("b.onnx", "q.vnnlib", 116.0),
        ("nets/a.onnx", "q.vnnlib", 60.0)]
    assert all(i.benchmark == "mybench" for i in insts)
    assert insts[0].onnx_path.resolve() == (folder / "nets/a.onnx").resolve()
    assert insts[0].key == ("mybench", "nets/a.onnx", "specs/p.vnnlib")


def test_read_instances_root_and_errors(tmp_path: Path) -> None:
    lists, data = tmp_path / "lists" / "bx", tmp_path / "data"
    lists.mkdir(parents=True)
    make_files(data, ["n.onnx", "p.vnnlib"])
    (lists / "l.csv").write_text("n.onnx,p.vnnlib,10\n")
    insts = bench.read_instances(lists / "l.csv", root=data)
    assert insts[0].vnnlib_path == data.resolve() / "p.vnnlib" and insts[0].benchmark == "bx"
    with pytest.raises(bench.BenchInputError, match="missing instance files"):
        bench.read_instances(lists / "l.csv")
    with pytest.raises(bench.BenchInputError, match="not found"):
        bench.read_instances(tmp_path / "nope.csv")
    (lists / "bad.csv").write_text("n.onnx,p.vnnlib\n")
    with pytest.raises(bench.BenchInputError, match="bad.csv:1"):
        bench.read_instances(lists / "bad.csv", root=data)
    (lists / "bad2.csv").write_text("n.onnx,p.vnnlib,soon\n")
    with pytest.raises(bench.BenchInputError, match="bad timeout"):
        bench.read_instances(lists / "bad2.csv", root=data)


def test_expected_matching_ignores_dot_slash() -> None:
    text = ("benchmark,onnx,vnnlib,timeout,expected,note\r\n"
            "mybench,nets/a.onnx,./specs/p.vnnlib,300,sat,cex_confirmed\r\n"
            "mybench,./b.onnx,q.vnnlib,116,unknown,\n"
            "other,nets/a.onnx,specs/p.vnnlib,300,unsat,")
    table = bench.parse_expected(text)
    assert table[bench.expected_key("mybench", "./nets/a.onnx", "specs/p.vnnlib")] == "sat"
    assert table[bench.expected_key("mybench", "b.onnx", "./q.vnnlib")] == "unknown"
    assert table[("other", "nets/a.onnx", "specs/p.vnnlib")] == "unsat"
    assert bench.expected_key("mybench", "x.onnx", "q.vnnlib") not in table
    with pytest.raises(bench.BenchInputError, match="bad expected"):
        bench.parse_expected("benchmark,onnx,vnnlib,timeout,expected\nb,a,p,1,holds\n")


def test_real_expected_file_matches_real_lists() -> None:
    expected_csv = Path("/work/shared/benchmarks/vnncomp2021_expected.csv")
    test_list = Path("/work/shared/benchmarks/vnncomp2021/test/test_instances.csv")
    if not expected_csv.is_file() or not test_list.is_file():
        pytest.skip("shared benchmarks not available")
    table = bench.read_expected(expected_csv)
    insts = bench.read_instances(test_list)
    assert all(i.key in table for i in insts)


# ----------------------------------------------------------------------- judging, scoring


def test_normalise_result() -> None:
    assert bench.normalise_result(" UNSAT \n") == "unsat"
    assert bench.normalise_result("sat") == "sat"
    assert bench.normalise_result("holds") == "unsat"
    assert bench.normalise_result("violated") == "sat"
    assert bench.normalise_result("timeout") == "timeout"
    assert bench.normalise_result("no_result_in_file") == "error"


@pytest.mark.parametrize(("result", "expected", "witness_ok", "correct", "points"), [
    ("unsat", "unsat", None, "yes", 10),
    ("sat", "sat", True, "yes", 10),
    ("unsat", "sat", None, "no", -100),
    ("sat", "unsat", True, "no", -100),
    ("sat", "sat", False, "no", -100),       # invalid witness is wrong even if sat expected
    ("sat", "unknown", True, "yes", 10),     # a valid witness proves sat
    ("sat", "unknown", False, "no", -100),
    ("unsat", "unknown", None, "", 0),       # solved, but nothing confirms it
    ("unsat", "", None, "", 0),
    ("sat", "", True, "yes", 10),
    ("unknown", "sat", None, "", 0),
    ("timeout", "unsat", None, "", 0),
    ("error", "unsat", None, "", 0),
])
def test_judge_and_points(result: str, expected: str, witness_ok: bool | None,
                          correct: str, points: int) -> None:
    r = BenchRow("b", "n.onnx", "p.vnnlib", result, 1.0, expected=expected,
                 witness_ok=witness_ok)
    assert r.correct == correct and r.points == points
    assert r.sat_invalid == (result == "sat" and witness_ok is False)


def test_summary_counts_and_line() -> None:
    rows = [row("unsat", "unsat"), row("sat", "sat"), row("sat", "unsat"),
            row("sat", "sat", witness_ok=False), row("unsat", "unknown"), row("unknown", "sat"),
            row("timeout", "unsat"), row("error"), row("unsat", "sat")]
    s = bench.summarise(rows)
    assert s == BenchSummary(solved=6, sat=3, unsat=3, unknown=1, timeout=1, error=1,
                             wrong=3, total=9, score=20 - 300)
    assert s.line() == ("solved=6 sat=3 unsat=3 unknown=1 timeout=1 error=1 wrong=3 "
                        "total=9 score=-280")
    assert bench.summarise([]).line() == ("solved=0 sat=0 unsat=0 unknown=0 timeout=0 "
                                          "error=0 wrong=0 total=0 score=0")


def test_network_stats_and_csv(tmp_path: Path) -> None:
    rows = [row("unsat", "unsat", onnx="./a.onnx", time_s=1.0),
            row("timeout", onnx="a.onnx", time_s=9.0),
            row("sat", "sat", onnx="a.onnx", time_s=3.0),
            row("unknown", onnx="b.onnx", time_s=2.0)]
    stats = bench.network_stats(rows)
    assert [(s.onnx, s.total, s.solved, s.sat, s.unsat) for s in stats] == [
        ("a.onnx", 3, 2, 1, 1), ("b.onnx", 1, 0, 0, 0)]
    assert stats[0].median_time_s == 3.0 and stats[0].median_solved_time_s == 2.0
    assert stats[1].median_solved_time_s is None
    out = tmp_path / "r.csv"
    bench.write_results_csv(rows, out)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("benchmark,onnx,vnnlib,result,time_s,expected,correct")
    assert lines[1].startswith("b,./a.onnx,p.vnnlib,unsat,1.000,unsat,yes")
    assert lines[2].startswith("b,a.onnx,p.vnnlib,timeout,9.000,,")


# ------------------------------------------------------------------------------- witness


def test_witness_format_parse_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=7) * 10.0 ** rng.integers(-8, 8, size=7)
    y = np.array([0.1, -1e-30, 0.0, 123456789.123])
    for dtype in (np.float32, np.float64):
        text = format_witness(x, y, dtype)
        assert text.startswith("((X_0 ") and text.endswith(")")
        assert "\n (X_1 " in text and "\n (Y_0 " in text and "(Y_3 " in text
        px, py = parse_witness("sat\n" + text + "\n")
        assert np.array_equal(px.astype(dtype), x.astype(dtype))
        assert np.array_equal(py.astype(dtype), y.astype(dtype))
    # inputs exact: the float32 nearest 0.1 is written in full, so it reads back unchanged
    assert "(X_0 0.10000000149011612)" in format_witness([0.1], [1.0], "float32")
    assert "(X_0 0.1)" in format_witness([0.1], [1.0], np.float64)
    # outputs shortest round-trip: at most 9 significant digits for float32
    digits32 = format_witness([0.0], [1 / 3], np.float32).split()[-1].rstrip(")")
    assert len(digits32.replace("0.", "", 1)) <= 9


def test_parse_witness_errors() -> None:
    assert parse_witness("sat ((X_0 1)(Y_0 -2e-3))")[1][0] == -2e-3
    for bad in ["((X_1 0.0) (Y_0 1.0))", "((X_0 0.0) (Y_1 1.0))", "((X_0 0.0))",
                "((Y_0 1.0) (X_0 0.0))", "((X_0 abc) (Y_0 1.0))", ""]:
        with pytest.raises(ValueError):
            parse_witness(bad)


def test_check_witness(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx")
    spec = tiny_spec()
    x = np.array([1.0, 1.0])  # y = [3.5, 1.5]: Y_0 >= 3 holds
    ok, msg = check_witness(model, spec, x, tiny_eval(x))
    assert ok, msg
    ok, msg = check_witness(model, spec, x, tiny_eval(x) + np.array([0.5, 0.0]))
    assert not ok and "mismatch" in msg
    x_out = np.array([1.2, 1.0])
    ok, msg = check_witness(model, spec, x_out, tiny_eval(x_out))
    assert not ok and "outside" in msg
    x_safe = np.array([0.0, 0.0])  # y = [0.5, -0.5]: not a counterexample
    ok, msg = check_witness(model, spec, x_safe, tiny_eval(x_safe))
    assert not ok and "clause" in msg
    ok, msg = check_witness(model, spec, np.zeros(3), np.zeros(2))
    assert not ok


def test_check_witness_float64_and_parsed_property(tmp_path: Path) -> None:
    parser = pytest.importorskip("vnnlib.parser")
    model = tiny_onnx(tmp_path / "tiny64.onnx", dtype="float64")
    prop = tmp_path / "tiny.vnnlib"
    prop.write_text(TINY_VNNLIB)
    spec = parser.parse(prop)
    x = np.array([0.9, 0.85])
    text = "sat\n" + format_witness(x, tiny_eval(x), np.float64) + "\n"
    ok, msg = check_witness(model, spec, *parse_witness(text))
    assert ok, msg
    assert check_result_text(text, model, prop)[0]
    assert not check_result_text("sat\n", model, prop)[0]


# ------------------------------------------------------------------------ processes (fake)

FAKE = """
import os, subprocess, sys, time
out, mode, payload = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(payload, "w").write(str(child.pid))
    time.sleep(120)
if mode == "crash":
    sys.exit(3)
if mode == "write":
    open(out, "w").write(payload)
"""


def fake_factory(modes: dict[str, tuple[str, str]]):
    """A command factory running FAKE with a per-vnnlib (mode, payload)."""

    def factory(onnx: Path, vnnlib: Path, timeout: float, results: Path) -> list[str]:
        mode, payload = modes[vnnlib.name]
        return [sys.executable, "-c", FAKE, str(results), mode, payload]

    return factory


def _alive(pid: int, wait_s: float = 3.0) -> bool:
    """True if ``pid`` still runs after ``wait_s`` (zombies count as dead)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().split(")")[-1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def fake_bench(tmp_path: Path) -> tuple[list[Instance], dict[str, tuple[str, str]], Path]:
    """A generated benchmark folder 'fakebench' with six instances and fake behaviours."""
    folder = tmp_path / "fakebench"
    folder.mkdir()
    tiny_onnx(folder / "tiny.onnx")
    names = ["unsat", "sat_ok", "sat_bad", "crash", "empty", "sleep"]
    for name in names:
        (folder / f"{name}.vnnlib").write_text(TINY_VNNLIB)
    lines = [f"./tiny.onnx,{n}.vnnlib,{0.5 if n == 'sleep' else 30}" for n in names]
    (folder / "instances.csv").write_text("\r\n".join(lines))
    x = np.array([1.0, 1.0], dtype=np.float32)
    good = "sat\n" + format_witness(x, tiny_eval(x.astype(np.float64)), np.float32)
    bad = "sat\n" + format_witness(x, np.array([2.0, 1.5]), np.float32)
    pid_file = tmp_path / "grandchild.pid"
    modes = {"unsat.vnnlib": ("write", "unsat\n"), "sat_ok.vnnlib": ("write", good),
             "sat_bad.vnnlib": ("write", bad), "crash.vnnlib": ("crash", "-"),
             "empty.vnnlib": ("write", ""), "sleep.vnnlib": ("sleep", str(pid_file))}
    return bench.read_instances(folder / "instances.csv"), modes, pid_file


@pytest.mark.parametrize("jobs", [1, 3])
def test_run_bench_with_fake_verifier(tmp_path: Path, jobs: int) -> None:
    pytest.importorskip("vnnlib.parser")
    insts, modes, pid_file = fake_bench(tmp_path)
    expected = bench.parse_expected(
        "benchmark,onnx,vnnlib,timeout,expected\n"
        "fakebench,tiny.onnx,unsat.vnnlib,30,unsat\nfakebench,tiny.onnx,sat_ok.vnnlib,30,sat\n")
    seen: list[int] = []
    opts = BenchOptions(command_factory=fake_factory(modes), expected=expected, jobs=jobs,
                        grace_s=0.5)
    start = time.monotonic()
    rows = bench.run_bench(insts, opts, on_done=lambda i, r: seen.append(i))
    assert time.monotonic() - start < 20
    assert sorted(seen) == list(range(6))
    assert [r.vnnlib for r in rows] == [i.vnnlib for i in insts]
    got = {r.vnnlib: r for r in rows}
    assert got["unsat.vnnlib"].result == "unsat" and got["unsat.vnnlib"].correct == "yes"
    assert got["sat_ok.vnnlib"].witness_ok is True and got["sat_ok.vnnlib"].correct == "yes"
    assert got["sat_bad.vnnlib"].sat_invalid and got["sat_bad.vnnlib"].correct == "no"
    assert got["crash.vnnlib"].result == "error" and "exit code 3" in got["crash.vnnlib"].detail
    assert got["empty.vnnlib"].result == "error"
    sleeper = got["sleep.vnnlib"]
    assert sleeper.result == "timeout" and 0.9 < sleeper.time_s < 10
    assert not _alive(int(pid_file.read_text()))  # the whole process group was killed
    assert bench.summarise(rows).line() == (
        "solved=3 sat=2 unsat=1 unknown=0 timeout=1 error=2 wrong=1 total=6 score=-80")


def test_timeout_cap_and_default_command(tmp_path: Path) -> None:
    captured: list[float] = []

    def factory(onnx: Path, vnnlib: Path, timeout: float, results: Path) -> list[str]:
        captured.append(timeout)
        return [sys.executable, "-c", f"open({str(results)!r}, 'w').write('unknown')"]

    inst = Instance("b", "n.onnx", "p.vnnlib", 300.0, tmp_path / "n.onnx", tmp_path / "p.vnnlib")
    r = bench.run_instance(inst, factory, timeout_cap=5.0)
    assert captured == [5.0] and r.result == "unknown" and r.timeout_s == 5.0
    cmd = bench.verify_command("milp", ["--seed", "3"])(Path("n.onnx"), Path("p.vnnlib"),
                                                        116.0, Path("r.txt"))
    assert cmd[:4] == [sys.executable, "-m", "bab", "verify"]
    assert cmd[4:] == ["n.onnx", "p.vnnlib", "--timeout", "116", "--results-file", "r.txt",
                       "--method", "milp", "--seed", "3"]


# ------------------------------------------------------------------------------- command


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` with only the bench sub-command registered and run it."""
    from bab.commands import bench as cmd

    parser = argparse.ArgumentParser(prog="bab")
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def test_command_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vnnlib.parser")
    insts, modes, _ = fake_bench(tmp_path)
    modes["sleep.vnnlib"] = ("write", "timeout\n")
    monkeypatch.setattr(bench, "verify_command", lambda method, extra: fake_factory(modes))
    out = tmp_path / "out" / "results.csv"
    code = run_command([str(tmp_path / "fakebench" / "instances.csv"), "--output", str(out),
                        "--jobs", "2"])
    stdout = capsys.readouterr().out.strip().splitlines()
    assert code == 1  # sat_bad has an invalid witness
    # no --expected: the unsat is unjudged (0), the valid sat scores 10, the invalid one -100
    assert stdout == ["solved=3 sat=2 unsat=1 unknown=0 timeout=1 error=2 wrong=1 total=6 "
                      "score=-90"]
    lines = out.read_text().splitlines()
    assert len(lines) == 7 and lines[1].startswith("fakebench,./tiny.onnx,unsat.vnnlib,unsat,")


def test_command_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command([str(tmp_path / "missing.csv")]) == 2
    make_files(tmp_path / "bx", ["n.onnx", "p.vnnlib"])
    (tmp_path / "bx" / "l.csv").write_text("n.onnx,p.vnnlib,10\n")
    assert run_command([str(tmp_path / "bx" / "l.csv"), "--jobs", "0"]) == 2
    assert run_command([str(tmp_path / "bx" / "l.csv"), "--expected", "nope.csv"]) == 2
    assert "error" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "bx" / "l.csv")


def test_command_exit_zero_without_wrong_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vnnlib.parser")
    insts, modes, _ = fake_bench(tmp_path)
    modes.update({"sat_bad.vnnlib": ("write", "unknown\n"), "sleep.vnnlib": ("crash", "-")})
    monkeypatch.setattr(bench, "verify_command", lambda method, extra: fake_factory(modes))
    expected = tmp_path / "expected.csv"
    expected.write_text("benchmark,onnx,vnnlib,timeout,expected,note\n"
                        "fakebench,tiny.onnx,./unsat.vnnlib,30,unsat,\n"
                        "fakebench,./tiny.onnx,sat_ok.vnnlib,30,sat,\n")
    code = run_command([str(tmp_path / "fakebench" / "instances.csv"), "--expected",
                        str(expected), "--timeout-cap", "5"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == ("solved=2 sat=1 unsat=1 unknown=1 timeout=0 error=3 wrong=0 "
                            "total=6 score=20\n")
    assert "tiny.onnx" in captured.err  # the per-network table


def test_parallel_jobs_share_the_cores(monkeypatch) -> None:
    import os

    from bab.commands.bench import share_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert share_cores([], 1) == []
    assert share_cores(["--seed", "1"], 2) == ["--seed", "1", "--set", "verify.threads=2"]
    assert share_cores([], 8) == ["--set", "verify.threads=1"]
    assert share_cores(["--set", "verify.threads=3"], 2) == ["--set", "verify.threads=3"]
