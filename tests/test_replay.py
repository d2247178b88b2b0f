"""Replay: inward rounding to the model dtype and strict re-checking with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from bab.replay import Replayer, round_into_box
from tests.builders import mlp_onnx
from vnnlib.spec import Clause, Region


def test_round_into_box_stays_inside() -> None:
    rng = np.random.default_rng(0)
    lo = rng.random(1000) * 0.5
    hi = lo + rng.random(1000) * 1e-6
    for x in (lo, hi, (lo + hi) / 2):
        xc = round_into_box(x, lo, hi, np.float32)
        assert xc.dtype == np.float32
        ok = (xc.astype(float) >= lo) & (xc.astype(float) <= hi)
        # only boxes holding no float32 at all may end up outside
        empty = np.nextafter(lo.astype(np.float32), np.float32(np.inf)).astype(float) > hi
        assert np.all(ok | empty)


def test_round_into_box_zero_width_decimal() -> None:
    lo = hi = np.array([0.1])
    xc = round_into_box(lo, lo, hi, np.float32)
    assert abs(float(xc[0]) - 0.1) < 1e-8


class FakeReference:
    """Returns fixed outputs, counting calls."""

    def __init__(self, y: list[float]) -> None:
        self.y = np.array([y])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.y


def _region() -> Region:
    return Region(np.zeros(2), np.ones(2), (Clause(np.array([[1.0, -1.0]]), np.array([0.0])),))


def test_replay_accepts_and_rejects() -> None:
    good = Replayer(FakeReference([0.0, 1.0]), (_region(),), "float32")
    cex = good.check(np.array([0.5, 0.5]), 0)
    assert cex is not None and cex.dtype == "float32" and cex.clause == 0
    bad = Replayer(FakeReference([1.0, 0.0]), (_region(),), "float32")
    assert bad.check(np.array([0.5, 0.5]), 0) is None and bad.rejected == 1
    nan = Replayer(FakeReference([np.nan, 0.0]), (_region(),), "float32")
    assert nan.check(np.array([0.5, 0.5]), 0) is None


def test_replay_runs_onnxruntime(tmp_path) -> None:
    onnx_models = pytest.importorskip("onnx_models")
    path = mlp_onnx(tmp_path / "m.onnx", [np.eye(2)], [np.zeros(2)])
    ref = onnx_models.OnnxReference(str(path))
    rep = Replayer(ref, (_region(),), "float32")
    cex = rep.check(np.array([0.25, 0.75]), 0)  # y = x, and x0 - x1 <= 0 holds
    assert cex is not None and np.allclose(cex.y, [0.25, 0.75])
    assert rep.check(np.array([0.75, 0.25]), 0) is None
