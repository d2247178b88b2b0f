"""Whole-process wall time of ``bab verify`` on the trivial ``test_nano`` instance.

The competition times the whole ``run_instance.sh`` process, start-up included, so this is a
process-level benchmark (five rounds; quote the median). Caches are warm after the first
round, as they are in a competition run after ``prepare_instance.sh``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_verify_test_nano_process(benchmark, bench_dir: Path, tmp_path: Path) -> None:
    nano = bench_dir / "test"
    res = tmp_path / "out.txt"
    cmd = [sys.executable, "-m", "bab", "verify", str(nano / "test_nano.onnx"),
           str(nano / "test_nano.vnnlib"), "--timeout", "60", "--results-file", str(res)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)  # warm the caches

    def once() -> None:
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)

    benchmark.pedantic(once, rounds=5, iterations=1)
    assert res.read_text().split()[0] in {"sat", "unsat", "unknown"}
