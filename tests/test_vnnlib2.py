"""VNN-LIB 2.0: the standard's example queries, error positions, fuzzing, exact lowering,
the 1.0 -> 2.0 writer round trip, and multi-network / hidden-node queries end to end."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vnnlib
import vnnlib.v2 as v2
from tests.builders import mlp_onnx, random_mlp
from vnnlib.load import NotPlainSpec, is_v2_file
from vnnlib.parser import VnnlibError
from vnnlib.v2.lexer import tokenize
from vnnlib.v2.writer import number, to_vnnlib2

FIXTURES = Path(__file__).parent / "fixtures" / "vnnlib2"
EXAMPLES = sorted(FIXTURES.glob("*.vnnlib"))


def _error_list() -> dict[str, tuple[int, int]]:
    """``error-files.txt``: ``FILE LINE:COL`` per line (empty at the copied commit)."""
    out = {}
    for line in (FIXTURES / "error-files.txt").read_text().splitlines():
        if line.strip():
            name, where = line.split()
            out[name] = tuple(int(p) for p in where.split(":"))
    return out


def _lower(text: str):
    return v2.lower(v2.parse_text(text))


def _error_at(text: str) -> tuple[int, int, str]:
    with pytest.raises(VnnlibError) as info:
        v2.parse_text(text)
    return info.value.line, info.value.col, info.value.msg


HEAD = "(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X float32 [2])\n  (declare-output Y float32 [2]))\n"


# ------------------------------------------------------------------ example queries
def test_example_list_is_complete() -> None:
    assert len(EXAMPLES) == 11 and set(_error_list()) <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_standard_example_parses_or_fails_where_listed(path: Path) -> None:
    expected = _error_list().get(path.name)
    if expected is None:
        checked = v2.load_query(path)
        assert checked.query.networks and checked.query.assertions
        assert is_v2_file(path)
        assert isinstance(v2.lower(checked), (v2.Lowered, v2.Undecidable))
    else:
        with pytest.raises(VnnlibError) as info:
            v2.load_query(path)
        assert (info.value.line, info.value.col) == expected


def test_example_shapes_and_equivalences() -> None:
    q = v2.load_query(FIXTURES / "multiple_networks.vnnlib")
    assert [n.name for n in q.query.networks] == ["AcasXu", "AcasYu", "AcasZu"]
    assert [(e.kind, e.target) for n in q.query.networks for e in n.equivalences] == [
        ("equal-to", "AcasXu"), ("isomorphic-to", "AcasXu")]
    hidden = v2.load_query(FIXTURES / "intermediate_nodes.vnnlib").symbols["N"]
    assert hidden.shape == (1, 2) and hidden.decl.onnx_name == "onnx"
    assert v2.load_query(FIXTURES / "mnist.vnnlib").symbols["X"].flat_index((27, 27)) == 783


def test_lexer_positions_and_compound_keywords() -> None:
    toks = tokenize("(vnnlib-version <2.0>)\n ; c\n  (assert (<= X[0,1] -1.5))")
    assert [(t.text, t.line, t.col) for t in toks[:4]] == [
        ("(vnnlib-version", 1, 1), ("<2.0>", 1, 17), (")", 1, 22), ("(assert", 3, 3)]
    assert [t.kind for t in toks[4:]] == ["sym", "sym", "name", "sym", "number", "sym",
                                         "number", "sym", "number", "sym", "sym", "eof"]


# --------------------------------------------------------------- rejected queries
@pytest.mark.parametrize("text, line, col, words", [
    (HEAD + "(assert (<= X[0] 1.0)", 5, 22, "expected ')'"),           # unclosed at end of file
    (HEAD + "( assert (<= X[0] 1.0))", 5, 1, "'(assert'"),             # '(assert' is one token
    (HEAD, 5, 1, "'(assert'"),                                          # no assertion
    (HEAD + "(assert (<= X[0] 1e3))", 5, 19, "found 'e3'"),             # no exponents
    (HEAD + "(assert (<= X[0] $))", 5, 18, "unexpected character"),
    (HEAD + "(assert (<= Z[0] 1.0))", 5, 13, "undeclared variable 'Z'"),
    (HEAD + "(assert (<= X[2] 1.0))", 5, 15, "index 2 is out of bounds"),
    (HEAD + "(assert (<= X[0,0] 1.0))", 5, 13, "1 dimension but 2 indices"),
    (HEAD + "(assert (<= X 1.0))", 5, 13, "give 1 index"),
    ("(vnnlib-version <3.0>)" + HEAD[22:] + "(assert (<= X[0] 1.0))", 1, 1, "unsupported VNN-LIB version"),
    (HEAD.replace("float32 [2])\n  (declare-output", "int8 [2])\n  (declare-output")
     + "(assert (<= X[0] 0.5))", 5, 18, "not a value of element type int8"),
    (HEAD.replace("Y float32", "Y float64") + "(assert (<= X[0] Y[0]))", 5, 9, "mixes element types"),
    (HEAD.replace("Y float32", "Y floaty") + "(assert (<= X[0] 1.0))", 4, 21, "unknown element type"),
    (HEAD.replace("[2])\n  (declare-output", "[2.5])\n  (declare-output") + "(assert (<= X[0] 1.0))",
     3, 29, "non-negative integer"),
    (HEAD.replace("Y float32", "X float32") + "(assert (<= X[0] 1.0))", 4, 19, "declared twice"),
    (HEAD + "(declare-network M (equal-to N) (declare-input A float32 [3]) (declare-output B float32 [2]))"
     "\n(assert (<= X[0] 1.0))", 5, 33, "has shape [3]"),
    (HEAD + "(declare-network M (equal-to K) (declare-input A float32 [2]) (declare-output B float32 [2]))"
     "\n(assert (<= X[0] 1.0))", 5, 30, "not a network declared before"),
])
def test_rejected_at_line_and_column(text: str, line: int, col: int, words: str) -> None:
    got_line, got_col, msg = _error_at(text)
    assert (got_line, got_col) == (line, col) and words in msg, msg


def test_network_mapping_is_checked() -> None:
    q = v2.load_query(FIXTURES / "multiple_networks.vnnlib")
    files = v2.check_mapping(q, {"AcasXu": "a.onnx", "AcasZu": "z.onnx"})
    assert files == {"AcasXu": "a.onnx", "AcasYu": "a.onnx", "AcasZu": "z.onnx"}
    for bad, words in (({"AcasXu": "a.onnx"}, "no model file for network 'AcasZu'"),
                       ({"AcasXu": "a", "AcasZu": "z", "Foo": "f"}, "declares no network 'Foo'"),
                       ({"AcasXu": "a", "AcasYu": "b", "AcasZu": "z"}, "different model file")):
        with pytest.raises(VnnlibError, match=words):
            v2.check_mapping(q, bad)


# --------------------------------------------------------------------------- fuzz
_PIECES = ["(", ")", "[", "]", ",", "-", "+", "*", "<=", ">=", "==", "!=", "and", "or", "X",
           "Y", "0", "1.5", "-2", "<2.0>", "(assert", "(declare-network", "(declare-input",
           "(declare-hidden", "(declare-output", "(equal-to", "\"n\"", "Real", "float32",
           "initialized", "\n", " ", ";", "\"", "é", "\t"]


@st.composite
def mutated(draw) -> str:
    text = EXAMPLES[draw(st.integers(0, len(EXAMPLES) - 1))].read_text()
    toks = tokenize(text)[:-1]
    words = [t.text for t in toks]
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(0, len(words) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "insert", "replace"]))
        if op == "drop":
            words.pop(k)
        elif op == "dup":
            words.insert(k, words[k])
        elif op == "swap" and k + 1 < len(words):
            words[k], words[k + 1] = words[k + 1], words[k]
        else:
            piece = draw(st.sampled_from(_PIECES))
            words[k:k + (op == "replace")] = [piece]
        if not words:
            words = ["("]
    return " ".join(words)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzzed_queries_give_vnnlib_error_with_position(text: str) -> None:
    try:
        checked = v2.parse_text(text)
    except VnnlibError as exc:
        assert exc.line is not None and exc.col is not None and exc.line >= 1 and exc.col >= 1
        assert f":{exc.line}:{exc.col}:" in str(exc)
        return
    assert isinstance(v2.lower(checked), (v2.Lowered, v2.Undecidable))


# -------------------------------------------------------------------- lowering
def test_hand_computed_lowering() -> None:
    low = _lower(HEAD + """
(assert (>= X[0] -1.0)) (assert (<= X[0] 2.0))
(assert (<= (- 5.0 X[1]) 4.0)) (assert (<= (* 2.0 X[1]) 3.0))
(assert (or (and (<= (- Y[0] Y[1]) 0.5) (>= Y[1] 1.0))
            (<= (+ (* 3.0 Y[0]) 2.0 (- Y[1])) 0.0)))""")
    spec = low.spec
    assert low.layout.simple and (spec.n_inputs, spec.n_outputs) == (2, 2)
    (r,) = spec.regions
    assert r.lower.tolist() == [-1.0, 1.0] and r.upper.tolist() == [2.0, 1.5]
    (a, b) = r.clauses
    assert a.C.tolist() == [[1.0, -1.0], [0.0, -1.0]] and a.d.tolist() == [0.5, -1.0]
    assert b.C.tolist() == [[3.0, -1.0]] and b.d.tolist() == [-2.0]


def test_bounds_round_outwards_and_constants_are_evaluated() -> None:
    low = _lower(HEAD + "(assert (<= (* 3.0 X[0]) 1.0)) (assert (>= (* 3.0 X[0]) -1.0))"
                 "(assert (>= X[1] 0.0)) (assert (<= X[1] 1.0)) (assert (<= (* 2.0 3.0) 7.0))"
                 "(assert (<= Y[0] 0.0))")
    (r,) = low.spec.regions
    assert Fraction(r.upper[0]) >= Fraction(1, 3) and Fraction(r.lower[0]) <= Fraction(-1, 3)
    assert r.upper[0] == np.nextafter(1 / 3, 1) or Fraction(1 / 3) > Fraction(1, 3)
    false = _lower(HEAD + "(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0)) (assert (>= X[1] 0.0))"
                   "(assert (<= X[1] 1.0)) (assert (<= (+ 1.0 2.0) 2.0))")
    assert false.spec.regions == ()  # no model: nothing can be a counterexample


def test_linearise_example_expected_terms() -> None:
    """The standard's test_linearise.vnnlib spells out the expected linear forms."""
    q = v2.load_query(FIXTURES / "test_linearise.vnnlib")
    from vnnlib.v2.linear import Linearizer

    lin = Linearizer(q.symbols)
    forms = [lin.atoms(a.expr)[0] for a in q.query.assertions[:10]]
    got = [(dict(f.coef), f.const) for f in forms]
    x0, x1, x2 = ("X", 0), ("X", 1), ("X", 2)
    assert got[0] == ({x0: 1}, -5) and got[1] == ({x0: -1}, 0) and got[3] == ({x0: -1}, 5)
    assert got[4] == ({x0: Fraction(7, 2)}, -7) and got[6] == ({x0: 2}, -5)
    assert got[7] == ({}, 0) and got[8] == ({x0: 1, x1: -1}, 3)
    assert got[9] == ({x0: 1, x1: -1, x2: -1}, 0)


def test_input_terms_in_output_rows_use_copied_inputs() -> None:
    low = _lower(HEAD + "(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0)) (assert (>= X[1] 0.0))"
                 "(assert (<= X[1] 1.0)) (assert (<= (- Y[0] X[1]) 0.25))")
    assert not low.layout.simple
    assert [(p.kind, p.offset, p.index) for p in low.layout.parts] == [("output", 0, ()), ("input", 2, (1,))]
    (cl,) = low.spec.regions[0].clauses
    assert cl.C.tolist() == [[1.0, 0.0, -1.0]] and cl.d.tolist() == [0.25]
    with pytest.raises(NotPlainSpec, match="combined network"):
        p = Path(FIXTURES / "single_network.vnnlib")
        vnnlib.load_property(p)


@pytest.mark.parametrize("extra, words", [
    ("(assert (<= (* X[0] Y[1]) 1.0))", "nonlinear term X[0] * Y[1]"),
    ("(assert (!= Y[0] 1.0))", "'!='"),
    ("(assert (<= Y[0] 1.0))", "X[1] has no upper bound"),
])
def test_undecidable_queries_carry_the_reason(extra: str, words: str) -> None:
    got = _lower(HEAD + "(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0)) (assert (>= X[1] 0.0))"
                 + extra)
    assert isinstance(got, v2.Undecidable) and words in got.reason
    assert "initialized" in v2.lower(v2.load_query(FIXTURES / "initialized.vnnlib")).reason


def test_dispatch_by_version_header(tmp_path: Path, bench_dir: Path) -> None:
    p = tmp_path / "q.vnnlib"
    p.write_text("; a comment first\n\n" + HEAD + "(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0))"
                 "(assert (>= X[1] 0.0)) (assert (<= X[1] 1.0)) (assert (<= Y[0] Y[1]))")
    spec = vnnlib.load_property(p, n_inputs=2, n_outputs=2)
    assert spec.regions[0].clauses[0].C.tolist() == [[1.0, -1.0]]
    with pytest.raises(VnnlibError, match="network has 3"):
        vnnlib.load_property(p, n_inputs=3)
    one = bench_dir / "test" / "test_tiny.vnnlib"
    assert not is_v2_file(one) and vnnlib.load_property(one).n_inputs == vnnlib.parse(one).n_inputs


# ------------------------------------------------------------------- round trip
def _same_spec(a, b) -> None:
    assert (a.n_inputs, a.n_outputs, len(a.regions)) == (b.n_inputs, b.n_outputs, len(b.regions))
    for ra, rb in zip(a.regions, b.regions):
        assert np.array_equal(ra.lower, rb.lower) and np.array_equal(ra.upper, rb.upper)
        assert len(ra.clauses) == len(rb.clauses)
        for ca, cb in zip(ra.clauses, rb.clauses):
            assert np.array_equal(ca.C, cb.C) and np.array_equal(ca.d, cb.d)


def _instances(bench_dir: Path, name: str, every: int = 1, count: int | None = None) -> list[Path]:
    with open(bench_dir / name / f"{name}_instances.csv") as fh:
        rows = [r for r in csv.reader(fh) if r]
    return [bench_dir / name / r[1] for r in rows[::every][:count]]


def test_writer_round_trip_on_shared_properties(bench_dir: Path) -> None:
    props = _instances(bench_dir, "test") + _instances(bench_dir, "acasxu", every=9, count=20)
    assert len(props) == 25
    for prop in props:
        spec = vnnlib.parse(prop)
        low = _lower(to_vnnlib2(prop))
        assert low.layout.simple
        _same_spec(spec, low.spec)


def test_writer_shapes_multiple_regions_and_numbers() -> None:
    assert [number(v) for v in (1e-5, -0.0, 3.0, 0.1, 123456789.0)] == [
        "0.00001", "-0.0", "3.0", "0.1", "123456789.0"]
    C = np.array([[1.0, -0.5, 0.0, 2.0]])
    regions = tuple(vnnlib.Region(np.array([0.0, -1.0]) + k, np.array([1.0, 1.0]) + k,
                                  (vnnlib.Clause(C, np.array([0.1])), vnnlib.Clause(-C, np.array([1e-7]))))
                    for k in range(2))
    spec = vnnlib.Spec(regions, 2, 4)
    text = to_vnnlib2(spec, "net", input_shape=(1, 2), output_shape=(2, 2))
    assert "(declare-input X Real [1,2])" in text and "Y[1,1]" in text
    _same_spec(spec, _lower(text).spec)


# --------------------------------------------------------------- several networks
def _pair_query(n: int, m: int) -> str:
    lines = ["(vnnlib-version <2.0>)",
             f"(declare-network f (declare-input X float32 [1,{n}]) (declare-output Y float32 [1,{m}]))",
             f"(declare-network g (isomorphic-to f) (declare-input Z float32 [1,{n}])"
             f" (declare-output W float32 [1,{m}]))"]
    for i in range(n):
        lines += [f"(assert (== X[0,{i}] Z[0,{i}]))", f"(assert (>= X[0,{i}] -1.0))",
                  f"(assert (<= X[0,{i}] 1.0))"]
    differ = " ".join(f"(>= (- Y[0,{j}] W[0,{j}]) 0.001) (<= (- Y[0,{j}] W[0,{j}]) -0.001)"
                      for j in range(m))
    return "\n".join(lines + [f"(assert (or {differ}))"])


def test_equivalence_of_permuted_networks(tmp_path: Path) -> None:
    from bab.api import verify
    from bab.config import load, parse_override
    from onnx_models.combine import build_combined

    n, h, m = 2, 3, 2
    rng = np.random.default_rng(0)
    W1, b1, W2, b2 = rng.normal(size=(h, n)), rng.normal(size=h) * 0.1, rng.normal(size=(m, h)), rng.normal(size=m) * 0.1
    p = rng.permutation(h)
    mlp_onnx(tmp_path / "f.onnx", [W1, W2], [b1, b2])
    mlp_onnx(tmp_path / "g.onnx", [W1[p], W2[:, p]], [b1[p], b2])
    W2x = W2.copy()
    W2x[1, 2] += 0.05
    mlp_onnx(tmp_path / "g2.onnx", [W1[p], W2x[:, p]], [b1[p], b2])
    low = _lower(_pair_query(n, m))
    assert low.spec.n_inputs == n and [q.kind for q in low.layout.parts] == ["output", "output"]
    cfg = load(None, [parse_override("bab.input_split_threshold=0")])  # ReLU splits close it fast
    same = build_combined(low.layout, {"f": tmp_path / "f.onnx", "g": tmp_path / "g.onnx"})
    x = rng.uniform(-1, 1, (16, n))
    assert np.abs(same.network.evaluate(x) - same.reference.run(x)).max() < 1e-5
    assert verify(same.network, low.spec, cfg, timeout=60, reference=same.reference).status.value == "unsat"
    other = build_combined(low.layout, {"f": tmp_path / "f.onnx", "g": tmp_path / "g2.onnx"})
    res = verify(other.network, low.spec, cfg, timeout=60, reference=other.reference)
    assert res.status.value == "sat"
    y = other.reference.run(res.counterexample.x)[0]  # replayed on the original files
    assert np.abs(y[:m] - y[m:]).max() >= 1e-3 and low.spec.is_violated_by(res.counterexample.x, y)
    inputs = low.layout.input_assignment(res.counterexample.x)
    assert set(inputs) == {"X", "Z"} and np.array_equal(inputs["X"], inputs["Z"])


def test_monotonicity_query_copies_inputs(tmp_path: Path) -> None:
    """Two copies of one network (equal-to) on different inputs: X[0] <= Z[0], rest equal."""
    from onnx_models.combine import build_combined

    random_mlp(tmp_path / "f.onnx", [2, 5, 1], seed=3)
    text = ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [2]) (declare-output Y float32 [1]))"
            "\n(declare-network g (equal-to f) (declare-input Z float32 [2]) (declare-output W float32 [1]))"
            "\n(assert (== X[1] Z[1])) (assert (<= X[0] Z[0]))"
            + "".join(f"(assert (>= {v}[{i}] 0.0)) (assert (<= {v}[{i}] 1.0))" for v in "XZ" for i in range(2))
            + "(assert (> Y[0] W[0]))")
    q = v2.parse_text(text)
    low = v2.lower(q)
    assert low.spec.n_inputs == 3 and [p.kind for p in low.layout.parts] == ["output", "output", "input"]
    files = v2.check_mapping(q, {"f": str(tmp_path / "f.onnx")})
    comb = build_combined(low.layout, files)
    x = np.random.default_rng(1).uniform(0, 1, (8, 3))
    got, want = comb.network.evaluate(x), comb.reference.run(x)
    assert np.abs(got - want).max() < 1e-5 and np.array_equal(want[:, 2:], x[:, [0, 2]])


def test_hidden_node_constraint(tmp_path: Path) -> None:
    from bab.api import verify
    from onnx_models.combine import Unmappable, build_combined

    W1, b1 = np.array([[1.0, -1.0], [0.5, 0.5]]), np.array([0.0, -0.25])
    W2, b2 = np.array([[1.0, 1.0]]), np.array([0.0])
    mlp_onnx(tmp_path / "m.onnx", [W1, W2], [b1, b2])  # node outputs g0 (pre-ReLU), a0 (ReLU)
    head = ("(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1,2])"
            ' (declare-hidden H float32 [1,2] "{}") (declare-output Y float32 [1,1]))\n'
            "(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0)) (assert (>= X[0,1] 0.0)) (assert (<= X[0,1] 1.0))\n")
    low = _lower(head.format("a0") + "(assert (>= H[0,1] 0.8))")  # max relu(0.5a+0.5b-0.25) = 0.75
    assert [p.kind for p in low.layout.parts] == ["output", "hidden"]
    comb = build_combined(low.layout, {"N": tmp_path / "m.onnx"})
    x = np.random.default_rng(0).uniform(0, 1, (8, 2))
    want = np.maximum(x @ W1.T + b1, 0)
    assert np.abs(comb.reference.run(x)[:, 1:] - want).max() < 1e-6
    assert np.abs(comb.network.evaluate(x)[:, 1:] - want).max() < 1e-6
    assert verify(comb.network, low.spec, timeout=30, reference=comb.reference).status.value == "unsat"
    sat = _lower(head.format("a0") + "(assert (>= H[0,1] 0.7))")
    comb = build_combined(sat.layout, {"N": tmp_path / "m.onnx"})
    res = verify(comb.network, sat.spec, timeout=30, reference=comb.reference)
    assert res.status.value == "sat" and res.counterexample.y[2] >= 0.7
    missing = build_combined(_lower(head.format("nope") + "(assert (>= H[0,1] 0.7))").layout,
                             {"N": tmp_path / "m.onnx"})
    assert isinstance(missing, Unmappable) and '"nope"' in missing.reason


def test_verify_api_reads_a_plain_v2_file(tmp_path: Path, bench_dir: Path) -> None:
    from bab.api import verify

    inst = bench_dir / "test"
    p = tmp_path / "q.vnnlib"
    p.write_text(to_vnnlib2(inst / "test_prop.vnnlib"))
    for model, want in (("test_sat.onnx", "sat"), ("test_unsat.onnx", "unsat")):
        assert verify(inst / model, p, timeout=60).status.value == want
