"""Shared fixtures: an isolated cache folder and the shared benchmark location."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"
EXPECTED = BENCH.parent / "vnncomp2021_expected.csv"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's caches out of the user's cache folder."""
    monkeypatch.setenv("BAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bab-cache"))


@pytest.fixture
def bench_dir() -> Path:
    """The shared VNN-COMP 2021 benchmarks, or a clean skip when absent."""
    if not BENCH.is_dir():
        pytest.skip("../shared/benchmarks/vnncomp2021 not present")
    return BENCH


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs for the module (skipped without Ray)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    try:
        yield ray
    finally:
        ray.shutdown()
