"""The VNN-LIB 2.0 standard command line (chapter 5), driven as a subprocess with its spellings.

Section numbers are the standard's (VNNLIB/VNNLIB-Standard, document/): §5.2 --name/--version,
§5.3 verify (result words, assignment format, --serialise-assignments, errors), §5.4 supports.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.builders import ROOT, mlp_onnx, robustness_output, write_property

W1 = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.2]])
W2 = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.2]])
HEADER = "(vnnlib-version <2.0>)\n"
NET_F = "(declare-network f (declare-input X real [1,2]) (declare-output Y real [1,2]))\n"
BOX = "".join(f"(assert (>= X[0,{i}] -1.0)) (assert (<= X[0,{i}] 1.0))\n" for i in range(2))


def bab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m bab ARGS`` with one thread, as a tool chain would call it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "bab", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def main_inproc(capsys, *argv: str) -> subprocess.CompletedProcess:
    """``bab ARGV`` in this process through ``bab.cli.main`` (for runs that end in an error:
    a successful ``verify`` ends its process)."""
    from bab.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), code, out, err)


def verify_inproc(capsys, monkeypatch, *argv: str) -> subprocess.CompletedProcess:
    """A successful ``bab verify ARGV`` in this process (the timeout counts from now)."""
    import time

    import bab.cli as cli

    monkeypatch.setattr(cli, "PROCESS_START", time.monotonic())
    args = cli.build_parser().parse_args(["verify", *argv])
    capsys.readouterr()
    code = args.func(args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), code, out, err)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    """Exit code 2, nothing on stdout, one line on stderr and no traceback."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    return p.stderr


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, Path]:
    """The 2-3-2 ReLU network of test_cli, a perturbed copy, and 2.0 queries over them."""
    d = tmp_path_factory.mktemp("std")
    f = mlp_onnx(d / "f.onnx", [W1, W2], [np.zeros(3), np.zeros(2)])
    g = mlp_onnx(d / "g.onnx", [W1 + 0.05, W2], [np.zeros(3), np.zeros(2)])
    q = {
        # y0 < y1 somewhere in the box: sat (x = (-1, 1) gives y = [-1.6, 1.5])
        "sat": HEADER + NET_F + BOX + "(assert (<= (- Y[0,0] Y[0,1]) 0.0))\n",
        # near x = (.5, .5) class 0 wins by ~1: unsat
        "unsat": HEADER + NET_F + "".join(f"(assert (>= X[0,{i}] 0.49)) (assert (<= X[0,{i}] 0.51))\n"
                                          for i in range(2)) + "(assert (>= Y[0,1] Y[0,0]))\n",
        "poly": HEADER + NET_F + BOX + "(assert (>= (* Y[0,0] Y[0,1]) 1.0))\n",
        "float32": HEADER + NET_F.replace("real", "float32") + BOX + "(assert (>= Y[0,0] 9.0))\n",
        "syntax": HEADER + NET_F + "(assert (<= X[0,0] 1.0)\n",
        "two": HEADER + NET_F + "(declare-network g (declare-input U real [1,2]) "
               "(declare-output Z real [1,2]))\n" + BOX
               + "".join(f"(assert (== X[0,{i}] U[0,{i}]))\n" for i in range(2))
               + "(assert (or (>= (- Y[0,0] Z[0,0]) 0.001) (<= (- Y[0,0] Z[0,0]) -0.001)))\n",
        "equal": HEADER + NET_F + "(declare-network h (equal-to f) (declare-input U real [1,2]) "
                 "(declare-output Z real [1,2]))\n" + BOX + "(assert (>= Y[0,0] 9.0))\n",
    }
    out = {"dir": d, "f": f, "g": g}
    for name, text in q.items():
        out[name] = d / f"{name}.vnnlib"
        out[name].write_text(text)
    return out


def read_assignment_text(text: str) -> list[tuple[str, str, str, list[float]]]:
    """Parse §5.3.1's command-line format: header ``NAME TYPE [dims]`` then values."""
    out: list[tuple[str, str, str, list[float]]] = []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[2].startswith("["):
            out.append((parts[0], parts[1], parts[2], []))
        else:
            out[-1][3].append(float(line))
    return out


# ------------------------------------------------------------------------ §5.2
def test_name_and_version_from_package_metadata() -> None:
    from importlib import metadata

    meta = metadata.metadata("bab-verifier")
    p = bab("--name")
    assert (p.returncode, p.stdout) == (0, meta["Name"] + "\n")
    p = bab("--version")
    assert (p.returncode, p.stdout) == (0, meta["Version"] + "\n")


# ------------------------------------------------------------------------ §5.3
def test_verify_sat_prints_word_then_assignment(nets) -> None:
    from onnx_models import OnnxReference

    p = bab("verify", str(nets["sat"]), "--network", f"f={nets['f']}", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    word, rest = p.stdout.split("\n", 1)
    assert word == "sat"
    got = read_assignment_text(rest)
    assert [(n, t, s) for n, t, s, _ in got] == [("X", "real", "[1,2]"), ("Y", "real", "[1,2]")]
    assert rest == "".join(f"{n} {t} {s}\n" + "".join(f"{v!r}\n" for v in vals) for n, t, s, vals in got)
    x, y = np.array(got[0][3]), np.array(got[1][3])
    assert np.all(np.abs(x) <= 1.0) and y[0] - y[1] <= 0.0
    assert np.array_equal(OnnxReference(nets["f"]).run(x)[0], y)  # exactly the replayed output


def test_verify_serialise_assignments_writes_tensor_protos(nets, tmp_path) -> None:
    from bab.standard import read_assignment
    from onnx_models import OnnxReference

    out = tmp_path / "assign"
    p = bab("verify", str(nets["sat"]), "--network", f"f={nets['f']}", "--serialise-assignments",
            str(out), "--timeout", "60")
    assert (p.returncode, p.stdout) == (0, "sat\n"), p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["X.pb", "Y.pb"]
    x, y = read_assignment(out / "X.pb"), read_assignment(out / "Y.pb")
    assert x.shape == y.shape == (1, 2) and x.dtype == np.float64  # real -> double
    assert np.array_equal(OnnxReference(nets["f"]).run(x.reshape(-1))[0], y.reshape(-1))


def test_verify_unsat_unknown_and_timed_out_words(nets, capsys, monkeypatch) -> None:
    p = bab("verify", str(nets["unsat"]), "--network", f"f={nets['f']}", "--timeout", "60")
    assert (p.returncode, p.stdout) == (0, "unsat\n"), p.stderr
    p = bab("verify", str(nets["sat"]), "--network", f"f={nets['f']}", "--timeout", "0")
    assert (p.returncode, p.stdout) == (0, "timed-out\n")
    p = verify_inproc(capsys, monkeypatch, str(nets["poly"]), "--network", f"f={nets['f']}")
    assert (p.returncode, p.stdout) == (0, "unknown\n")
    assert p.stderr.startswith("bab verify: unknown: ") and "linear" in p.stderr, p.stderr


def test_verify_two_networks_assignment_in_declaration_order(nets, capsys, monkeypatch) -> None:
    from onnx_models import OnnxReference

    p = verify_inproc(capsys, monkeypatch, str(nets["two"]), "--network", f"f={nets['f']}",
                      "--network", f"g={nets['g']}", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    word, rest = p.stdout.split("\n", 1)
    assert word == "sat"
    got = read_assignment_text(rest)
    assert [(n, s) for n, _, s, _ in got] == [("X", "[1,2]"), ("Y", "[1,2]"), ("U", "[1,2]"), ("Z", "[1,2]")]
    (x, y, u, z) = (np.array(v) for *_, v in got)
    assert np.array_equal(x, u) and np.all(np.abs(x) <= 1.0) and abs(y[0] - z[0]) >= 0.001
    assert np.array_equal(OnnxReference(nets["f"]).run(x)[0], y)
    assert np.array_equal(OnnxReference(nets["g"]).run(u)[0], z)


def test_verify_hidden_node_assignment(tmp_path, capsys, monkeypatch) -> None:
    """A declared hidden node is printed between input and output, valued by onnxruntime."""
    import onnx
    import onnxruntime as ort

    from bab.commands.capabilities import PROBES, VERSION_HEADER, _write_network

    net = _write_network("mlp", tmp_path / "mlp.onnx")  # the ReLU output is named "hidden"
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(net))), str(net))  # value infos
    query = tmp_path / "h.vnnlib"
    query.write_text(f"{VERSION_HEADER}\n{PROBES['H'].body}\n")
    p = verify_inproc(capsys, monkeypatch, str(query), "--network", f"f={net}", "--timeout", "60")
    assert p.returncode == 0 and p.stdout.startswith("sat\n"), (p.stdout, p.stderr)
    got = read_assignment_text(p.stdout.split("\n", 1)[1])
    assert [(n, s) for n, _, s, _ in got] == [("X", "[2]"), ("H", "[3]"), ("Y", "[2]")]
    x, h, y = (np.array(v) for *_, v in got)
    model = onnx.load(str(net))
    model.graph.output.append(onnx.ValueInfoProto(name="hidden"))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y_ref, h_ref = sess.run(["y", "hidden"], {"x0": x.astype(np.float32)})
    assert np.array_equal(h, h_ref) and np.array_equal(y, y_ref) and h[0] >= 0.5
    assert np.all(np.abs(x) <= 1.0)


def test_verify_errors_exit_2_with_one_line(nets, tmp_path, capsys) -> None:
    q, f = str(nets["sat"]), f"f={nets['f']}"
    assert "no model file for network 'f'" in one_error_line(bab("verify", q))  # as a subprocess

    def err(*argv: str) -> str:
        return one_error_line(main_inproc(capsys, "verify", *argv))

    assert "declares no network 'g'" in err(q, "--network", f, "--network", f"g={nets['g']}")
    assert "equal-to" in err(str(nets["equal"]), "--network", f, "--network", f"h={nets['f']}")
    assert "NAME=FILE" in err(q, "--network", "f")
    assert "more than once" in err(q, "--network", f, "--network", f)
    assert "file not found" in err(q, "--network", f"f={tmp_path / 'no.onnx'}")
    assert "'real'" in err(str(nets["float32"]), "--network", f)  # §5.3.2 (3)
    assert "syntax.vnnlib:4:1: syntax error" in err(str(nets["syntax"]), "--network", f)
    assert "standard form" in err(str(nets["f"]), q, "--network", f)
    assert "--results-file" in err(q, "--network", f, "--results-file", str(tmp_path / "r.txt"))
    assert "--checkpoint belongs" in err(q, "--network", f, "--checkpoint", str(tmp_path / "c.pt"))


def test_vnncomp_form_unchanged(nets) -> None:
    d = nets["dir"]
    prop = write_property(d / "p1.vnnlib", [0.49, 0.49], [0.51, 0.51], 2, robustness_output(0, 2))
    res = d / "r1.txt"
    p = bab("verify", str(nets["f"]), str(prop), "--results-file", str(res), "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert res.read_text() == "unsat\n"
    assert p.stdout.startswith("unsat  (") and " s)  f.onnx p1.vnnlib" in p.stdout
    assert p.stdout.count("\n") == 1


def test_a_10_query_under_the_standard_form(nets, capsys, monkeypatch) -> None:
    d = nets["dir"]
    prop = write_property(d / "p2.vnnlib", [-1, -1], [1, 1], 2, robustness_output(0, 2))
    p = verify_inproc(capsys, monkeypatch, str(prop), "--network", f"N={nets['f']}", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    got = read_assignment_text(p.stdout.split("\n", 1)[1])
    assert p.stdout.startswith("sat\n")
    assert [(n, t, s) for n, t, s, _ in got] == [("X_0", "Real", "[]"), ("X_1", "Real", "[]"),
                                                  ("Y_0", "Real", "[]"), ("Y_1", "Real", "[]")]


# ------------------------------------------------------------------------ §5.4
def test_supports_answers_from_the_real_tables(capsys, tmp_path) -> None:
    import onnx

    from onnx_models.validate import SUPPORTED_OPS

    p = bab("supports", "--onnx-operators")
    assert (p.returncode, p.stdout) == (0, "".join(f"{op}\n" for op in sorted(SUPPORTED_OPS)))
    p = main_inproc(capsys, "supports", "--onnx-opset-versions")
    low, high = (int(v) for v in p.stdout.split("\n")[:2])
    assert p.stdout == f"{low}\n{high}\n" and low <= 13 <= high <= onnx.defs.onnx_opset_version()
    from bab.commands.capabilities import _opset_probe

    assert _opset_probe(low, tmp_path / "lo.onnx") and _opset_probe(high, tmp_path / "hi.onnx")
    assert low == 1 or not _opset_probe(low - 1, tmp_path / "below.onnx")
    assert main_inproc(capsys, "supports", "--onnx-element-types").stdout == "real\n"
    assert main_inproc(capsys, "supports", "--serialise-assignments").stdout == "true\n"



def test_supports_needs_one_known_capability(capsys) -> None:
    for argv in (["supports"], ["supports", "--no-such-capability"],
                 ["supports", "--onnx-operators", "--onnx-element-types"]):
        with pytest.raises(SystemExit) as info:
            main_inproc(capsys, *argv)
        assert info.value.code == 2


def test_capabilities_lists_every_query_and_theories_follow_the_lowering() -> None:
    from bab.commands.capabilities import CAPABILITIES, THEORY_SETS

    p = bab("capabilities")
    assert p.returncode == 0, p.stderr
    blocks = {b.split("\n")[0]: b.split("\n")[1:] for b in p.stdout.strip("\n").split("\n\n")}
    assert list(blocks) == [f"--{k}" for k in CAPABILITIES]
    assert blocks["--vnnlib-versions"] == ["1.0", "2.0"]
    assert blocks["--optimised-disjunctive-reasoning"] == ["false"]
    for key, theories in THEORY_SETS.items():
        got = blocks[f"--{key}"]
        assert got == [t for t in theories if t in got]  # smallest first, no foreign names
    # facts of the lowering (vnnlib/v2/lower.py): one input/output per network, linear only
    assert "SIO" in blocks["--multiple-input-output-theories"]
    assert "MIO" not in blocks["--multiple-input-output-theories"]
    assert {"BND", "OUTC", "LIN"} <= set(blocks["--arithmetic-complexity-theories"])
    assert "POLY" not in blocks["--arithmetic-complexity-theories"]
    assert {"SNET", "MNET"} <= set(blocks["--multiple-network-theories"])
    alias = bab("supports", "--multiple-inputs-output-theories")  # §5.4.2's example spelling
    assert alias.stdout.split() == blocks["--multiple-input-output-theories"]


# ------------------------------------------------------------------ formatting
def test_format_the_standards_example() -> None:
    """§5.3.1's example (with the declared element types as written)."""
    from bab.standard import Assignment, format_assignments

    a = [Assignment("A", "float32", (2, 2), np.array([0.5, 0.3, 0.4, 0.2])),
         Assignment("B", "int32", (1,), np.array([-1])),
         Assignment("H", "float32", (1, 2), np.array([0.5, 0.3])),
         Assignment("C", "real", (2, 2), np.array([1.0, 0.3, 0.4, 0.2])),
         Assignment("S", "bool", (), np.array([True]))]
    assert format_assignments(a) == ("A float32 [2,2]\n0.5\n0.3\n0.4\n0.2\nB int32 [1]\n-1\n"
                                     "H float32 [1,2]\n0.5\n0.3\nC real [2,2]\n1.0\n0.3\n0.4\n0.2\n"
                                     "S bool []\ntrue\n")


@pytest.mark.parametrize("typ, dtype", [("float32", np.float32), ("float16", np.float16),
                                        ("real", np.float64), ("float64", np.float64)])
def test_values_read_back_exactly(typ: str, dtype: type) -> None:
    from bab.standard import format_value

    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.normal(0, 1, 200), rng.normal(0, 1e-6, 50), [0.0, -0.0, 1e20, 3.0]])
    for v in vals.astype(dtype):
        assert dtype(format_value(v, typ)) == v


def test_network_option_parsing() -> None:
    from bab.standard import StandardInputError, parse_networks

    assert parse_networks(["f=a.onnx", "g=dir/b=c.onnx"]) == {"f": Path("a.onnx"), "g": Path("dir/b=c.onnx")}
    for bad in (["f"], ["=a.onnx"], ["f="], ["1f=a.onnx"], ["f=a", "f=b"]):
        with pytest.raises(StandardInputError):
            parse_networks(bad)


# ----------------------------------------------------------------- equivalence
def instances(bench: Path, name: str, step: int = 1,
              limit: int | None = None) -> list[tuple[Path, Path, str]]:
    """(model, property, timeout) of every ``step``-th line of a benchmark's instances CSV."""
    folder = bench / name
    (listing,) = folder.glob("*instances.csv")
    rows = [r for r in csv.reader(listing.open()) if r]
    return [(folder / m, folder / p, t) for m, p, t in rows[::step][:limit]]


def same_verdict_both_forms(model: Path, prop: Path, timeout: str, tmp: Path,
                            run=None, convert=None) -> tuple[str, str]:
    """(1.0 results word, 2.0 first stdout line) of one instance; the 2.0 query comes from
    ``bab convert-vnnlib``. ``run(*argv)`` runs ``bab verify``, ``convert(*argv)`` runs
    ``bab convert-vnnlib`` (default: subprocesses)."""
    query = tmp / f"{model.stem}-{prop.stem}.vnnlib"
    conv = (convert or (lambda *a: bab("convert-vnnlib", *a)))(str(prop), str(query), "--onnx", str(model))
    assert conv.returncode == 0, conv.stderr
    assert query.read_text().startswith("(vnnlib-version <2.0>)")
    res = tmp / f"{query.stem}.txt"
    run = run or (lambda *a: bab("verify", *a, timeout=float(timeout) + 120))
    one = run(str(model), str(prop), "--timeout", timeout, "--results-file", str(res))
    two = run(str(query), "--network", f"N={model}", "--timeout", timeout)
    assert one.returncode == two.returncode == 0, (one.stderr, two.stderr)
    word_one = res.read_text().split("\n", 1)[0]
    return {"timeout": "timed-out"}.get(word_one, word_one), two.stdout.split("\n", 1)[0]


def test_converted_test_list_gives_the_same_verdicts(bench_dir, tmp_path, capsys, monkeypatch) -> None:
    for model, prop, timeout in instances(bench_dir, "test"):
        one, two = same_verdict_both_forms(model, prop, timeout, tmp_path,
                                           lambda *a: verify_inproc(capsys, monkeypatch, *a),
                                           lambda *a: main_inproc(capsys, "convert-vnnlib", *a))
        assert one == two, (model.name, prop.name, one, two)
        assert one in ("sat", "unsat")


@pytest.mark.slow
def test_converted_acasxu_gives_the_same_verdicts(bench_dir, tmp_path) -> None:
    decided = 0
    for model, prop, timeout in instances(bench_dir, "acasxu", step=9, limit=20):
        one, two = same_verdict_both_forms(model, prop, timeout, tmp_path)
        if "timed-out" in (one, two) or "unknown" in (one, two):
            continue  # a run that did not finish decides nothing
        decided += 1
        assert one == two, (model.name, prop.name, one, two)
    print(f"[acasxu 2.0 vs 1.0] {decided} of 20 decided in both forms, same verdicts")
    assert decided >= 15


def test_errors_after_the_watchdog_starts_disarm_it(nets, tmp_path, capsys) -> None:
    """A bad-input error raised while the hard-timeout watchdog is armed must cancel it: an
    armed watchdog would end the calling process (os._exit) when it fires."""
    import threading

    q, f = str(nets["sat"]), f"f={nets['f']}"
    before = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}
    main_inproc(capsys, "verify", q, "--network", f"f={tmp_path / 'no.onnx'}")  # fails after arming
    main_inproc(capsys, "verify", str(tmp_path / "no.onnx"), q)  # the 1.0 form: missing model
    armed = [t for t in threading.enumerate()
             if isinstance(t, threading.Timer) and t not in before and not t.finished.is_set()]
    assert armed == []
