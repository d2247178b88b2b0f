"""Tests for the VNN-LIB parser (vnnlib/parser.py, vnnlib/lexer.py)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnnlib.lexer import _TOKEN_RE, tokenize
from vnnlib.parser import MAX_CONJUNCTS, VnnlibError, parse, parse_cached, parse_text
from vnnlib.spec import Spec

BENCH_ROOT = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"
BENCH_FILES = sorted(BENCH_ROOT.rglob("*.vnnlib")) if BENCH_ROOT.is_dir() else []


def decl(n_in: int, n_out: int) -> str:
    """Declarations of X_0..X_{n_in-1} and Y_0..Y_{n_out-1}."""
    xs = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    return xs + "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))


def box(*bounds: tuple[float, float]) -> str:
    """Top-level asserts bounding X_i to [lo, hi] (upper bound first, as most files do)."""
    return "".join(f"(assert (<= X_{i} {hi}))\n(assert (>= X_{i} {lo}))\n"
                   for i, (lo, hi) in enumerate(bounds))


def single(spec: Spec):
    """The only region of ``spec``."""
    assert len(spec.regions) == 1
    return spec.regions[0]


def assert_clause(clause, C, d) -> None:
    """Exact float64 comparison of a clause with expected ``C`` and ``d``."""
    assert clause.C.dtype == np.float64 and clause.d.dtype == np.float64
    expected = np.array(C, dtype=np.float64).reshape(-1, clause.C.shape[1])
    np.testing.assert_array_equal(clause.C, expected)
    np.testing.assert_array_equal(clause.d, np.array(d, dtype=np.float64))


def error_of(text: str, **kw) -> VnnlibError:
    """The VnnlibError raised by parsing ``text``."""
    with pytest.raises(VnnlibError) as info:
        parse_text(text, **kw)
    return info.value


# --------------------------------------------------------------------------- shapes


def test_shape_a_box_and_top_level_output_atoms() -> None:
    text = decl(2, 3) + box((-1.0, 1.0), (0.25, 0.5)) + (
        "(assert (<= Y_0 Y_1))\n(assert (>= Y_2 Y_0))\n"
        "(assert (>= Y_1 3.5))\n(assert (<= Y_2 -2))\n")
    spec = parse_text(text)
    assert (spec.n_inputs, spec.n_outputs) == (2, 3)
    region = single(spec)
    np.testing.assert_array_equal(region.lower, [-1.0, 0.25])
    np.testing.assert_array_equal(region.upper, [1.0, 0.5])
    assert region.lower.dtype == np.float64 and region.lower.shape == (2,)
    assert len(region.clauses) == 1
    assert_clause(region.clauses[0],
                  [[1, -1, 0], [1, 0, -1], [0, -1, 0], [0, 0, 1]], [0, 0, -3.5, -2])


@pytest.mark.parametrize("atom", ["(>= Y_{j} Y_1)", "(<= Y_1 Y_{j})"])
def test_shape_b_or_of_single_atom_ands(atom: str) -> None:
    disjuncts = "".join(f"\n    (and {atom.format(j=j)})" for j in (0, 2))
    spec = parse_text(decl(1, 3) + box((0, 1)) + f"(assert (or{disjuncts}\n))\n")
    region = single(spec)
    assert len(region.clauses) == 2
    assert_clause(region.clauses[0], [[-1, 1, 0]], [0])
    assert_clause(region.clauses[1], [[0, 1, -1]], [0])


def test_shape_c_or_of_multi_atom_ands() -> None:
    text = decl(1, 3) + box((0, 1)) + (
        "(assert (or\n"
        "    (and (<= Y_0 Y_1) (<= Y_0 Y_2) (>= Y_0 -1.5))\n"
        "    (and (<= Y_1 Y_0) (<= Y_1 4))\n"
        "))\n")
    region = single(parse_text(text))
    assert len(region.clauses) == 2
    assert_clause(region.clauses[0], [[1, -1, 0], [1, 0, -1], [-1, 0, 0]], [0, 0, 1.5])
    assert_clause(region.clauses[1], [[-1, 1, 0], [0, 1, 0]], [0, 4])


def test_shape_d_input_disjunction_gives_two_regions() -> None:
    text = decl(2, 2) + (
        "(assert (or\n"
        "    (and (<= X_0 1) (>= X_0 0) (<= X_1 3) (>= X_1 2))\n"
        "    (and (<= X_0 -1) (>= X_0 -2) (<= X_1 3) (>= X_1 2))\n"
        "))\n"
        "(assert (or (and (<= Y_1 Y_0)) (and (>= Y_1 7))))\n")
    spec = parse_text(text)
    assert len(spec.regions) == 2
    np.testing.assert_array_equal(spec.regions[0].lower, [0, 2])
    np.testing.assert_array_equal(spec.regions[0].upper, [1, 3])
    np.testing.assert_array_equal(spec.regions[1].lower, [-2, 2])
    np.testing.assert_array_equal(spec.regions[1].upper, [-1, 3])
    for region in spec.regions:
        assert len(region.clauses) == 2
        assert_clause(region.clauses[0], [[-1, 1]], [0])
        assert_clause(region.clauses[1], [[0, -1]], [-7])


def test_shape_e_mixed_conjuncts_and_merge_of_equal_boxes() -> None:
    text = decl(1, 1) + (
        "(assert (or\n"
        "    (and (>= X_0 0) (<= X_0 10) (>= Y_0 100))\n"
        "    (and (>= X_0 20) (<= X_0 30) (<= Y_0 -5))\n"
        "    (and (<= X_0 10) (>= X_0 0) (<= Y_0 1))\n"
        "))")
    spec = parse_text(text)
    assert len(spec.regions) == 2
    first, second = spec.regions
    np.testing.assert_array_equal([first.lower[0], first.upper[0]], [0, 10])
    np.testing.assert_array_equal([second.lower[0], second.upper[0]], [20, 30])
    assert len(first.clauses) == 2 and len(second.clauses) == 1
    assert_clause(first.clauses[0], [[-1]], [-100])
    assert_clause(first.clauses[1], [[1]], [1])
    assert_clause(second.clauses[0], [[1]], [-5])


def test_conjunct_bounds_intersect_top_level_box_and_merge_by_effect() -> None:
    text = decl(2, 1) + box((0, 1), (0, 1)) + (
        "(assert (or\n"
        "    (and (>= X_0 0.5) (<= X_1 2) (<= Y_0 0))\n"   # X_1 bound looser: no effect
        "    (and (>= X_0 -3) (>= Y_0 9))\n"                # no effect at all: the base box
        "    (and (<= X_0 5) (>= X_0 0.5) (<= Y_0 1))\n"    # same box as the first disjunct
        "))\n")
    spec = parse_text(text)
    assert len(spec.regions) == 2
    np.testing.assert_array_equal(spec.regions[0].lower, [0.5, 0])
    np.testing.assert_array_equal(spec.regions[0].upper, [1, 1])
    assert [c.d.tolist() for c in spec.regions[0].clauses] == [[0.0], [1.0]]
    np.testing.assert_array_equal(spec.regions[1].lower, [0, 0])
    np.testing.assert_array_equal(spec.regions[1].upper, [1, 1])
    assert [c.d.tolist() for c in spec.regions[1].clauses] == [[-9.0]]


def test_nested_and_or_distributes_in_order() -> None:
    text = decl(1, 2) + box((0, 1)) + (
        "(assert (and (or (<= Y_0 1) (<= Y_0 2)) (or (<= Y_1 3) (and (<= Y_1 4) (>= Y_0 5)))))\n"
        "(assert (<= Y_1 Y_0))\n")
    clauses = single(parse_text(text)).clauses
    assert [c.d.tolist() for c in clauses] == [
        [0, 1, 3], [0, 1, 4, -5], [0, 2, 3], [0, 2, 4, -5]]
    assert_clause(clauses[3], [[-1, 1], [1, 0], [0, 1], [-1, 0]], [0, 2, 4, -5])


def test_conjunct_without_output_atoms_is_an_always_true_clause() -> None:
    spec = parse_text(decl(1, 4) + box((0, 1)))
    clause = single(spec).clauses[0]
    assert clause.C.shape == (0, 4) and clause.d.shape == (0,)
    assert clause.holds(np.zeros(4))


def test_strict_equal_and_constant_on_the_left() -> None:
    text = decl(2, 2) + (
        "(assert (< X_0 1))\n(assert (> X_0 -1))\n(assert (= X_1 0.5))\n"
        "(assert (< 2 Y_0))\n(assert (= Y_1 3))\n(assert (> Y_0 Y_1))\n")
    region = single(parse_text(text))
    np.testing.assert_array_equal(region.lower, [-1, 0.5])
    np.testing.assert_array_equal(region.upper, [1, 0.5])
    assert_clause(region.clauses[0], [[-1, 0], [0, 1], [0, -1], [-1, 1]], [-2, 3, -3, 0])


# --------------------------------------------------------------------------- lexical


def test_comments_blank_lines_tabs_crlf_and_no_final_newline() -> None:
    text = (";;;; header ;;;;\r\n\r\n(declare-const X_0 Real) ; trailing (comment)\r\n"
            "(declare-const\tY_0\tReal)\r\n; (assert (<= X_0 99))\r\n"
            "(assert\t(<= X_0 1));x\r\n(assert (>= X_0 0))\r\n\r\n"
            "(assert (or\r\n\t(and (>= Y_0 2))\r\n))")
    region = single(parse_text(text))
    np.testing.assert_array_equal([region.lower[0], region.upper[0]], [0, 1])
    assert_clause(region.clauses[0], [[-1]], [-2])


@pytest.mark.parametrize("literal, value", [
    ("0", 0.0), ("1", 1.0), ("94669", 94669.0), ("-5", -5.0), ("0.679857769", 0.679857769),
    ("-0.5", -0.5), ("5.8147645177086815e-05", 5.8147645177086815e-05), ("1.19362e6", 1.19362e6),
    ("1E+3", 1000.0), ("1e-05", 1e-05), ("0.1", 0.1), ("0.00000000", 0.0),
])
def test_numeric_literals_are_exact_float64(literal: str, value: float) -> None:
    region = single(parse_text(decl(1, 1) + f"(assert (<= X_0 {literal}))\n"
                               f"(assert (>= X_0 -1e7))\n(assert (<= Y_0 {literal}))"))
    assert region.upper[0] == value and region.clauses[0].d[0] == value


def test_zero_width_interval() -> None:
    region = single(parse_text(decl(2, 1) + box((0.0, 0.0), (-1, 1)) + "(assert (<= Y_0 0))"))
    assert region.lower[0] == region.upper[0] == 0.0


def test_parse_reads_plain_and_gzipped_files(tmp_path: Path) -> None:
    text = decl(1, 1) + box((0, 1)) + "(assert (>= Y_0 3))\n"
    plain = tmp_path / "p.vnnlib"
    plain.write_text(text)
    packed = tmp_path / "p.vnnlib.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for path in (plain, str(packed)):
        assert single(parse(path, n_inputs=1, n_outputs=1)).clauses[0].d.tolist() == [-3.0]
    with pytest.raises(FileNotFoundError):
        parse(tmp_path / "missing.vnnlib")


def test_byte_order_mark_and_corrupt_gzip(tmp_path: Path) -> None:
    assert parse_text("\ufeff" + decl(1, 1) + box((0, 1))).n_inputs == 1
    bad = tmp_path / "p.vnnlib.gz"
    bad.write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:12])
    with pytest.raises(VnnlibError, match="gzip"):
        parse(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_fast_tokenizer_agrees_with_position_scanner(text: str) -> None:
    """Error positions re-scan with _TOKEN_RE; both must see the same token sequence."""
    assert tokenize(text) == [m.group() for m in _TOKEN_RE.finditer(text) if m.group()[0] != ";"]


# --------------------------------------------------------------------------- errors


def test_error_format_and_attributes() -> None:
    err = error_of(decl(1, 1) + "(assert (<= X_0 1)", path="prop.vnnlib")
    assert (err.path, err.line, err.col) == ("prop.vnnlib", 3, 19)
    assert str(err) == ("prop.vnnlib:3:19: expected ')' but found end of file "
                        "(unclosed '(' at line 3, column 1)")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.line, again.col, again.msg) == (str(err), 3, 19, err.msg)


@pytest.mark.parametrize("body, line, col, fragment", [
    ("(assert (<= X_0 1)))\n", 3, 20, "unexpected ')'"),
    ("(assert (foo X_0 1))\n", 3, 10, "unknown operator 'foo'"),
    ("\n(assert (<= X_0 1))\n  (assert (>= X_7 0))\n", 5, 15, "undeclared variable 'X_7'"),
    ("(assert (<= Y_0 1.2.3))\n", 3, 17, "bad number '1.2.3'"),
    ("(assert (<= Y_0 1e))\n", 3, 17, "bad number '1e'"),
    ("(assert (<= Y_0 nan))\n", 3, 17, "unknown symbol 'nan'"),
    ("(assert (<= Y_0 1e999))\n", 3, 17, "out of range"),
    ("(assert (<= X_0 Y_0))\n", 3, 10, "unsupported comparison"),
    ("(assert (<= X_0 1 2))\n", 3, 10, "expects 2 arguments"),
    ("(assert (<= X_0 (+ 1 2)))\n", 3, 17, "arithmetic is not supported"),
    ("(assert (<= X_0 1) (<= X_0 2))\n", 3, 2, "'assert' expects 1 argument"),
    ("(assert ())\n", 3, 10, "expected an operator but found ')'"),
    ("(assert (or))\n", 3, 10, "'or' expects at least 1 argument"),
    ("(set-logic QF_LRA)\n", 3, 2, "unknown command 'set-logic'"),
    ("assert\n", 3, 1, "expected '(' but found 'assert'"),
    ("(declare-const X_0 Real)\n", 3, 16, "declared twice"),
    ("(declare-const Z Real)\n", 3, 16, "unsupported variable name 'Z'"),
    ("(declare-const X_1 Int)\n", 3, 20, "unsupported type 'Int'"),
    ("(declare-const X_2 Real)\n", 3, 16, "X_1 is not declared"),
])
def test_syntax_errors_have_exact_positions(body: str, line: int, col: int, fragment: str) -> None:
    err = error_of(decl(1, 1) + body)
    assert (err.line, err.col) == (line, col), str(err)
    assert fragment in err.msg


def test_error_positions_ignore_comments_and_count_tabs_as_one_column() -> None:
    text = "; (((\n(declare-const X_0 Real) ; ) )\n;\n\t(assert (<= X_0 oops))"
    err = error_of(text)
    assert (err.line, err.col) == (4, 18) and "oops" in err.msg


def test_empty_box_names_the_variable_and_bounds() -> None:
    err = error_of(decl(2, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
                   "(assert (<= X_1 0.25))\n(assert (>= X_1 0.5))\n")
    assert "X_1" in err.msg and "0.5" in err.msg and "0.25" in err.msg
    err = error_of(decl(1, 1) + box((0, 1)) + "(assert (or (and (>= X_0 2)) (and (<= Y_0 1))))")
    assert "X_0" in err.msg and "2.0" in err.msg and err.line == 5


def test_unbounded_input_is_rejected() -> None:
    err = error_of(decl(2, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (>= X_1 0))\n")
    assert "X_1" in err.msg and "upper" in err.msg
    err = error_of(decl(1, 1) + "(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 5))))")
    assert "X_0" in err.msg and "lower" in err.msg


def test_declared_counts_must_match_the_network() -> None:
    text = decl(5, 2) + box(*[(0, 1)] * 5)
    err = error_of(text, path="p.vnnlib", n_inputs=784)
    assert str(err) == "p.vnnlib: property declares 5 inputs (X_0..X_4) but the network has 784"
    err = error_of(text, n_outputs=10)
    assert "2 outputs (Y_0..Y_1)" in err.msg and "10" in err.msg
    assert parse_text(text, n_inputs=5, n_outputs=2).n_inputs == 5


def test_missing_declarations_are_rejected() -> None:
    assert "no output variables" in error_of("(declare-const X_0 Real)").msg
    assert "no input variables" in error_of("").msg


def test_dnf_blowup_is_refused() -> None:
    ors = "".join(f"(assert (or {' '.join(f'(<= Y_0 {k})' for k in range(400))}))\n"
                  for _ in range(2))
    err = error_of(decl(1, 1) + box((0, 1)) + ors)
    assert str(MAX_CONJUNCTS) in err.msg


def test_deep_nesting_is_a_vnnlib_error() -> None:
    deep = "(and " * 5000 + "(<= Y_0 1)" + ")" * 5000
    assert "nested" in error_of(decl(1, 1) + box((0, 1)) + f"(assert {deep})").msg


# --------------------------------------------------------------------------- cache


def test_parse_cached_roundtrip_and_corrupt_entry(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BAB_CACHE_DIR", str(tmp_path / "cache"))
    prop = tmp_path / "p.vnnlib"
    prop.write_text(decl(1, 2) + box((0, 1)) + "(assert (<= Y_0 Y_1))")
    first = parse_cached(prop)
    entries = list((tmp_path / "cache" / "vnnlib").glob("*.pkl"))
    assert len(entries) == 1
    second = parse_cached(prop, n_inputs=1, n_outputs=2)
    assert_clause(second.regions[0].clauses[0], first.regions[0].clauses[0].C, [0])
    entries[0].write_bytes(b"not a pickle")
    third = parse_cached(prop)
    assert_clause(third.regions[0].clauses[0], [[1, -1]], [0])
    assert pickle.loads(entries[0].read_bytes()).n_outputs == 2  # rewritten
    with pytest.raises(VnnlibError, match=r"declares 1 input \(X_0\) but the network has 3"):
        parse_cached(prop, n_inputs=3)


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("path", BENCH_FILES or [None],
                         ids=lambda p: str(p.relative_to(BENCH_ROOT)) if p else "absent")
def test_real_benchmark_file_parses(path: Path | None) -> None:
    if path is None:
        pytest.skip(f"benchmarks not found under {BENCH_ROOT}")
    spec = parse(path)
    assert spec.regions
    for region in spec.regions:
        assert region.lower.shape == region.upper.shape == (spec.n_inputs,)
        assert np.all(np.isfinite(region.lower)) and np.all(np.isfinite(region.upper))
        assert np.all(region.lower <= region.upper)
        assert region.clauses
        for clause in region.clauses:
            assert clause.C.shape == (clause.n_rows, spec.n_outputs)
            assert np.all(np.isin(clause.C, (-1.0, 0.0, 1.0)))
    compiled = path.with_name(path.name + ".compiled")  # reference parse from the 2021 tools
    if compiled.exists():
        check_against_compiled(spec, compiled)


def check_against_compiled(spec: Spec, compiled: Path) -> None:
    """Compare with the competition's pickled parse: [(box, [(mat, rhs), ...]), ...]."""
    try:
        ref = pickle.loads(compiled.read_bytes())[0]
    except Exception as exc:  # written with another numpy version
        pytest.skip(f"cannot read {compiled.name}: {exc}")
    assert len(ref) == len(spec.regions)
    for (ref_box, ref_clauses), region in zip(ref, spec.regions):
        ref_box = np.asarray(ref_box, dtype=np.float64)
        np.testing.assert_allclose(region.lower, ref_box[:, 0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(region.upper, ref_box[:, 1], rtol=1e-12, atol=1e-15)
        assert len(ref_clauses) == len(region.clauses)
        for (mat, rhs), clause in zip(ref_clauses, region.clauses):
            assert_clause(clause, mat, rhs)


def test_known_benchmark_shapes() -> None:
    if not BENCH_ROOT.is_dir():
        pytest.skip(f"benchmarks not found under {BENCH_ROOT}")
    prop6 = parse(BENCH_ROOT / "acasxu" / "prop_6.vnnlib", n_inputs=5, n_outputs=5)
    assert len(prop6.regions) == 2 and [len(r.clauses) for r in prop6.regions] == [4, 4]
    mnist = parse(BENCH_ROOT / "mnistfc" / "prop_0_0.03.vnnlib", n_inputs=784, n_outputs=10)
    region = single(mnist)
    assert len(region.clauses) == 9 and all(c.n_rows == 1 for c in region.clauses)
    prop4 = single(parse(BENCH_ROOT / "acasxu" / "prop_4.vnnlib"))
    assert np.any(prop4.lower == prop4.upper)  # the zero-width interval


# --------------------------------------------------------------------------- fuzz

SEED_TEXTS = [
    decl(2, 3) + box((-1, 1), (0.5, 0.5))
    + "; out\n(assert (or (and (>= Y_0 Y_1)) (and (<= Y_2 1e-3))))\n",
    decl(1, 1) + "(assert (or\n\t(and (>= X_0 -5) (<= X_0 94669) (>= Y_0 1.2e6))\n\t"
                 "(and (>= X_0 0) (<= X_0 1) (< Y_0 0))\n))",
    decl(2, 2) + "(assert (or (and (<= X_0 1) (>= X_0 0) (= X_1 2)) (and (<= X_0 3) (>= X_0 2)"
                 " (<= X_1 2) (>= X_1 1))))\r\n"
                 "(assert (and (<= Y_0 Y_1) (or (> Y_1 2) (<= 3 Y_0))))",
]


@st.composite
def mutated(draw) -> str:
    """A seed property with a few random character/token edits, maybe truncated."""
    text = draw(st.sampled_from(SEED_TEXTS))
    alphabet = st.sampled_from(list("()XY_0123456789.-+eE;<=> \t\n\r") + ["and", "or", "assert"])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "swap", "truncate"]))
        pos = draw(st.integers(0, len(text)))
        if kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 5)):]
        elif kind == "insert":
            text = text[:pos] + draw(alphabet) + text[pos:]
        elif kind == "replace":
            text = text[:pos] + draw(alphabet) + text[pos + 1:]
        elif kind == "truncate":
            text = text[:pos]
        else:
            words = text.split(" ")
            i, j = draw(st.integers(0, len(words) - 1)), draw(st.integers(0, len(words) - 1))
            words[i], words[j] = words[j], words[i]
            text = " ".join(words)
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzzed_text_gives_spec_or_vnnlib_error(text: str) -> None:
    try:
        spec = parse_text(text)
    except VnnlibError as err:
        assert err.msg and str(err).startswith("<string>")
        if err.line is not None:
            assert 1 <= err.line <= text.count("\n") + 1 and err.col >= 1
        return
    assert isinstance(spec, Spec) and spec.regions
    for region in spec.regions:
        assert np.all(region.lower <= region.upper)
