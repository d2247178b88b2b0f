"""Benchmarks run with ``python -m pytest benchmarks --benchmark-enable -o addopts=''``."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"


@pytest.fixture
def bench_dir() -> Path:
    """The shared VNN-COMP 2021 benchmarks, or a clean skip when absent."""
    if not BENCH.is_dir():
        pytest.skip("../shared/benchmarks/vnncomp2021 not present")
    return BENCH
