"""The interleaved brancher portfolio: turns, doubling slices, first verdict wins."""

from __future__ import annotations

import numpy as np

import bab
from bab.config import BabConfig, Config, FalsifyConfig, VerifyConfig
from bab.engine import BabOutcome, BabStats
from bab.portfolio import interleave
from bab.result import Status
from tests.builders import random_mlp
from tests.test_input_split import _grid_min
from vnnlib.spec import Clause, Region, Spec


class FakeEngine:
    """Needs ``work`` domain visits to reach ``verdict``; records the slices it was given."""

    def __init__(self, work: int, verdict: str = "unsat") -> None:
        self.work, self.verdict = work, verdict
        self.stats = BabStats()
        self.slices: list[int] = []

    def run_for(self, visits: int) -> BabOutcome | None:
        self.slices.append(visits)
        self.stats.domains_visited = min(self.work, self.stats.domains_visited + visits)
        return BabOutcome(self.verdict) if self.stats.domains_visited >= self.work else None


def test_turns_double_and_the_first_verdict_wins() -> None:
    slow, fast = FakeEngine(10_000), FakeEngine(2_500)
    outcome, winner = interleave({"slow": slow, "fast": fast}, first_slice=1000)
    assert (outcome.verdict, winner) == ("unsat", "fast")
    assert fast.slices == [1000, 2000] and slow.slices == [1000, 2000]
    assert slow.stats.domains_visited == 3000  # resumed, never restarted


def test_an_unknown_search_drops_out_and_the_others_go_on() -> None:
    stuck, good = FakeEngine(10, "unknown"), FakeEngine(5000, "sat")
    outcome, winner = interleave({"stuck": stuck, "good": good}, first_slice=100)
    assert (outcome.verdict, winner) == ("sat", "good")
    assert stuck.slices == [100]


def test_all_unknown_returns_the_first_reason() -> None:
    a, b = FakeEngine(5, "unknown"), FakeEngine(5, "unknown")
    a_out = interleave({"a": a, "b": b}, first_slice=10)
    assert a_out[0].verdict == "unknown" and a_out[1] == "a"


def test_auto_brancher_reports_the_winner_and_agrees_with_the_grid(tmp_path) -> None:
    import onnx_models

    path = random_mlp(tmp_path / "net.onnx", [2, 12, 12, 2], seed=3)
    net = onnx_models.load(path)
    lo, hi, row = [-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]
    m = _grid_min(net, lo, hi, row)
    cfg = Config(verify=VerifyConfig(method="input-split"), falsify=FalsifyConfig(enabled=False),
                 bab=BabConfig(input_branching="auto", portfolio_slice=20))
    for d, expect in ((m - 0.05, Status.UNSAT), (m + 0.05, Status.SAT)):
        spec = Spec((Region(np.array(lo), np.array(hi), (Clause(np.array([row]), np.array([d])),)),), 2, 2)
        res = bab.verify(path, spec, cfg, timeout=60)
        assert res.status is expect, (d, m, res.reason)
        stats = res.stats.extra["bab"]
        assert stats.extra["input_branching"] in ("smear", "bound-improvement")
        assert set(stats.extra["portfolio_domains"]) == {"smear", "bound-improvement"}
        assert stats.domains_visited == sum(stats.extra["portfolio_domains"].values())
