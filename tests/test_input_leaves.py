"""Which input-split boxes try the exact solver (``bab.input_leaves``), on hand-made batches."""

from __future__ import annotations

import time

import torch

from bab.input_leaves import NEVER, ExactLeaves, unstable_counts
from bab.store import TensorBatch


def test_unstable_counts_are_the_straddling_relu_inputs() -> None:
    inter = {1: (torch.tensor([[-1.0, 0.5, -2.0], [0.0, -1.0, 1.0]]), torch.tensor([[1.0, 2.0, -1.0], [2.0, 3.0, 2.0]])),
             2: (torch.tensor([[-1.0], [-1.0]]), torch.tensor([[0.0], [4.0]])),
             7: (torch.tensor([[-9.0], [-9.0]]), torch.tensor([[9.0], [9.0]]))}  # not a ReLU input
    # box 0: neuron 0 of node 1 straddles 0 (0.5 and -2 do not, and hi = 0 is not above 0); box 1: one + one
    assert unstable_counts(inter, [1, 2], 2, torch.device("cpu")).tolist() == [1, 2]
    assert unstable_counts(inter, [1, 3], 2, torch.device("cpu")).tolist() == [NEVER, NEVER]  # a bound missing
    assert unstable_counts(None, [1], 2, torch.device("cpu")).tolist() == [NEVER, NEVER]
    assert unstable_counts(inter, [], 2, torch.device("cpu")).tolist() == [NEVER, NEVER]  # not a ReLU-only net


class _Boxes(ExactLeaves):
    def __init__(self, bounded: int) -> None:
        self.leaf_solver, self.exact_unstable, self.exact_share = object(), 40, 0.5
        self.bounded, self.late_after = bounded, 100
        self._exact_time, self._t0 = 0.0, 0.0


def _batch(unstable: list[int], tried: list[int]) -> TensorBatch:
    n = len(unstable)
    return TensorBatch({"lower": torch.zeros(n, 2), "upper": torch.ones(n, 2),
                        "depth": torch.zeros(n, dtype=torch.long),
                        "unstable": torch.tensor(unstable), "tried": torch.tensor(tried)})


def test_only_hard_instances_send_boxes_with_few_unstable_relus() -> None:
    batch = _batch([10, 40, 41, 30, 31, 0], [NEVER, NEVER, NEVER, 40, 40, 1])
    split, exact = _Boxes(bounded=100).leaves(batch)
    # at most 40 unstable, and (after a try at 40) at most three quarters of 40: 30 yes, 31 no;
    # a linear box (0 unstable) always qualifies again
    assert exact["unstable"].tolist() == [10, 40, 30, 0]
    assert split["unstable"].tolist() == [41, 31]
    split, exact = _Boxes(bounded=99).leaves(batch)  # not yet a hard instance
    assert len(exact) == 0 and len(split) == 6
    early = _Boxes(bounded=100)
    early._t0, early.exact_after = time.monotonic(), 3600.0  # open for less than exact_after
    split, exact = early.leaves(batch)
    assert len(exact) == 0 and len(split) == 6


def test_no_tries_once_the_time_share_is_spent() -> None:
    boxes = _Boxes(bounded=100)
    boxes._exact_time, boxes._t0 = 1e9, 0.0
    split, exact = boxes.leaves(_batch([5], [NEVER]))
    assert len(exact) == 0 and len(split) == 1
