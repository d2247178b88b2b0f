"""pytest-benchmark: parse a generated 100,000-line property (3072-input box + a big ``or``).

Run::

    python -m pytest benchmarks/bench_vnnlib.py --benchmark-enable -p no:cacheprovider -o addopts=""
"""

from __future__ import annotations

import pytest

from vnnlib.parser import parse_text

N_LINES = 100_000
N_IN, N_OUT, TARGET = 3072, 10, 3


def make_property(n_lines: int = N_LINES) -> str:
    """A cifar-like property: declarations, a commented box, then an ``or`` filling the rest."""
    lines = [f"(declare-const X_{i} Real)" for i in range(N_IN)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(N_OUT)]
    lines.append("; input constraints")
    for i in range(N_IN):
        v = (i % 255) / 255.0
        lines.append(f"(assert (<= X_{i} {v + 0.00392156862745098!r}))")
        lines.append(f"(assert (>= X_{i} {v - 0.00392156862745098!r}))")
    lines.append("(assert (or")
    others = [j for j in range(N_OUT) if j != TARGET]
    k = 0
    while len(lines) < n_lines - 1:
        lines.append(f"\t(and (>= Y_{others[k % len(others)]} Y_{TARGET}))")
        k += 1
    lines.append("))")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def big_property() -> str:
    """The generated property text (built once)."""
    text = make_property()
    assert text.count("\n") == N_LINES
    return text


def test_parse_100k_lines(benchmark, big_property: str) -> None:
    """Median parse time of the 100k-line property (target: well under 2 s)."""
    spec = benchmark(parse_text, big_property)
    assert spec.n_inputs == N_IN and spec.n_outputs == N_OUT
    assert len(spec.regions) == 1
    assert len(spec.regions[0].clauses) == N_LINES - (2 * N_IN + N_OUT + N_IN + 3)
