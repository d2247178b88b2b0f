"""The Python API: verdicts on tiny networks, loaded objects, several regions, statistics."""

from __future__ import annotations

import numpy as np
import pytest

import bab
from bab.config import Config, FalsifyConfig
from bab.result import Status
from tests.builders import mlp_onnx, write_property
from vnnlib.spec import Clause, Region, Spec


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    w1 = np.array([[1.0, 1.0], [1.0, -1.0]])  # y = relu(x0+x1) + relu(x0-x1) >= 0
    return mlp_onnx(d / "m.onnx", [w1, np.array([[1.0, 1.0]])], [np.zeros(2), np.zeros(1)])


def _spec(regions) -> Spec:
    return Spec(tuple(regions), 2, 1)


def _region(lo, hi, d) -> Region:
    """Unsafe: y <= d."""
    return Region(np.array(lo, float), np.array(hi, float), (Clause(np.array([[1.0]]), np.array([d])),))


def test_unsat_by_ibp(model) -> None:
    res = bab.verify(model, _spec([_region([1, -0.5], [2, 0.5], 0.5)]))
    assert res.status is Status.UNSAT and res.stats.proved_by == "ibp"
    assert res.counterexample is None and "decide" in res.stats.phases


def test_attack_stops_at_its_time_share_and_bab_decides(model) -> None:
    """``falsify.time_share`` ~0: the attack phase stops at its first check (a note says so),
    and the search still finds the counterexample of region 1 (replayed)."""
    import dataclasses

    spec = _spec([_region([1, -0.5], [2, 0.5], 0.5), _region([-0.3, -0.3], [0.3, 0.3], 0.05)])
    cfg = Config()
    cfg = dataclasses.replace(cfg, falsify=dataclasses.replace(cfg.falsify, time_share=1e-12))
    res = bab.verify(model, spec, cfg, timeout=60)
    assert any("falsify.time_share" in n for n in res.stats.notes)
    assert res.status is Status.SAT and res.stats.proved_by != "attack"
    assert spec.regions[1].contains(res.counterexample.x) and res.counterexample.y[0] <= 0.05


def test_sat_in_second_region_only(model) -> None:
    # region 0 is safe (y >= 2 there), region 1 contains y = 0 at the origin
    spec = _spec([_region([1, -0.5], [2, 0.5], 0.5), _region([-0.3, -0.3], [0.3, 0.3], 0.05)])
    res = bab.verify(model, spec)
    assert res.status is Status.SAT
    cex = res.counterexample
    assert cex.region == 1 and spec.regions[1].contains(cex.x) and cex.y[0] <= 0.05
    assert res.stats.proved_by == "attack"


def test_unknown_when_bounds_too_loose(model) -> None:
    # y >= 0 everywhere, so y <= -1e-3 is unsat, but IBP on [-1,1]^2 gives lower bound 0 only
    res = bab.verify(model, _spec([_region([-1, -1], [1, 1], -1e-3)]))
    assert res.status in (Status.UNKNOWN, Status.UNSAT)
    assert res.status is not Status.SAT


def test_rowless_clause_is_sat(model) -> None:
    reg = Region(np.zeros(2), np.ones(2), (Clause(np.zeros((0, 1)), np.zeros(0)),))
    assert bab.verify(model, _spec([reg])).status is Status.SAT


def test_loaded_objects_and_paths_agree(model, tmp_path) -> None:
    import onnx_models
    import vnnlib

    prop = write_property(tmp_path / "p.vnnlib", [1, -0.5], [2, 0.5], 1, "(assert (<= Y_0 0.5))")
    by_path = bab.verify(str(model), str(prop), timeout=30)
    by_obj = bab.verify(onnx_models.load(model), vnnlib.parse(prop), timeout=30)
    assert by_path.status is by_obj.status is Status.UNSAT


def test_timeout_status(model) -> None:
    cfg = Config(falsify=FalsifyConfig(pgd_steps=10_000))
    res = bab.verify(model, _spec([_region([-1, -1], [1, 1], -1e-3)]), cfg, timeout=0.0)
    assert res.status is Status.TIMEOUT


def test_mismatched_sizes_rejected(model) -> None:
    from bab.api import InputMismatchError

    with pytest.raises(InputMismatchError, match="3 inputs"):
        bab.verify(model, Spec((), 3, 1))


def test_dnf_every_clause_must_fall(model) -> None:
    # two clauses: y <= 0.5 (infeasible on this box) or y >= 1 (feasible) -> not unsat
    reg = Region(np.array([1.0, -0.5]), np.array([2.0, 0.5]),
                 (Clause(np.array([[1.0]]), np.array([0.5])), Clause(np.array([[-1.0]]), np.array([-1.0]))))
    res = bab.verify(model, _spec([reg]))
    assert res.status is Status.SAT
