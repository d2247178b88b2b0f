"""The command line, run as a user would: verdicts, results files, bad input, timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.builders import mlp_onnx, robustness_output, write_property
from tests.builders import run_bab as bab


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 2-3-2 ReLU network and properties around it."""
    d = tmp_path_factory.mktemp("cli")
    w1 = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.2]])
    w2 = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.2]])
    model = mlp_onnx(d / "net.onnx", [w1, w2], [np.zeros(3), np.zeros(2)])
    x = [0.5, 0.5]
    return {
        "dir": d,
        "model": model,
        # y0 - y1 at x=(.5,.5): h = relu([.75, .25, .05]) -> y = [.525, -.49]; class 0 wins
        "unsat": write_property(d / "unsat.vnnlib", [v - 0.01 for v in x], [v + 0.01 for v in x], 2,
                                robustness_output(0, 2)),
        "sat": write_property(d / "sat.vnnlib", [-1, -1], [1, 1], 2, robustness_output(0, 2)),
        "erf": mlp_onnx(d / "erf.onnx", [w1, w2], [np.zeros(3), np.zeros(2)], extra_op="Erf"),
    }


def test_help_lists_commands() -> None:
    out = bab("--help").stdout
    for cmd in ("verify", "check", "bench", "demo", "config"):
        assert cmd in out


def test_verify_unsat_writes_results(tiny) -> None:
    res = tiny["dir"] / "r_unsat.txt"
    p = bab("verify", str(tiny["model"]), str(tiny["unsat"]), "--results-file", str(res), "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert res.read_text() == "unsat\n"
    assert p.stdout.startswith("unsat") and "net.onnx" in p.stdout


def test_verify_sat_writes_replayable_witness(tiny) -> None:
    from bab.witness import check_witness, parse_witness
    from vnnlib import parse

    res = tiny["dir"] / "r_sat.txt"
    p = bab("verify", str(tiny["model"]), str(tiny["sat"]), "--results-file", str(res), "--timeout", "60")
    assert p.returncode == 0, p.stderr
    text = res.read_text()
    assert text.startswith("sat\n(")
    x, y = parse_witness(text.split("\n", 1)[1])
    ok, why = check_witness(str(tiny["model"]), parse(tiny["sat"]), x, y)
    assert ok, why


def test_hard_timeout_writes_timeout(tiny) -> None:
    res = tiny["dir"] / "r_timeout.txt"
    t0 = time.monotonic()
    p = bab("verify", str(tiny["model"]), str(tiny["sat"]), "--results-file", str(res), "--timeout", "0")
    assert p.returncode == 0, p.stderr
    assert res.read_text() == "timeout\n"
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("case", ["missing", "not_onnx", "erf", "syntax", "wrong_inputs", "empty_box"])
def test_bad_input_exit_2(tiny, case) -> None:
    d = tiny["dir"]
    model, prop = str(tiny["model"]), str(tiny["unsat"])
    expect = {"missing": "not found", "not_onnx": "not a valid ONNX", "erf": "Erf",
              "syntax": ":3:", "wrong_inputs": "input", "empty_box": "X_0"}[case]
    if case == "missing":
        model = str(d / "nope.onnx")
    elif case == "not_onnx":
        (d / "junk.onnx").write_bytes(b"this is not protobuf \x00\xff" * 10)
        model = str(d / "junk.onnx")
    elif case == "erf":
        model = str(tiny["erf"])
    elif case == "syntax":
        prop = str(d / "syntax.vnnlib")
        Path(prop).write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(assert (<= X_0 ))\n")
    elif case == "wrong_inputs":
        prop = str(write_property(d / "three.vnnlib", [0, 0, 0], [1, 1, 1], 2, robustness_output(0, 2)))
    elif case == "empty_box":
        prop = str(write_property(d / "empty.vnnlib", [0.5, 0], [0.4, 1], 2, robustness_output(0, 2)))
    p = bab("verify", model, prop, "--timeout", "30")
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert expect in lines[0], lines[0]


def test_bad_config_exit_2(tiny) -> None:
    p = bab("verify", str(tiny["model"]), str(tiny["unsat"]), "--set", "falsify.pgd_step=3")
    assert p.returncode == 2 and "did you mean 'pgd_steps'" in p.stderr


def test_config_dump() -> None:
    p = bab("config", "--dump")
    assert p.returncode == 0 and "[falsify]" in p.stdout and "pgd_steps = " in p.stdout


def test_check_model_and_property(tiny) -> None:
    p = bab("check", str(tiny["model"]), str(tiny["unsat"]), str(tiny["sat"]))
    assert p.returncode == 0, p.stderr
    assert "ok" in p.stdout and "max_abs=" in p.stdout
    three = write_property(tiny["dir"] / "three_c.vnnlib", [0, 0, 0], [1, 1, 1], 2, robustness_output(0, 2))
    p = bab("check", str(tiny["model"]), str(three))
    assert p.returncode == 2
