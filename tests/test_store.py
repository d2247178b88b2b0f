"""Domain store: batching, best-first and depth-first order."""

from __future__ import annotations

import torch

from bab.store import DomainStore, TensorBatch


def _batch(prios: list[float]) -> TensorBatch:
    return TensorBatch({"priority": torch.tensor(prios), "id": torch.arange(len(prios))})


def test_best_first_pops_smallest_priority() -> None:
    store = DomainStore("best-first")
    store.push(_batch([3.0, -1.0, 2.0, -5.0]))
    out = store.pop(2)
    assert sorted(out["priority"].tolist()) == [-5.0, -1.0]
    assert len(store) == 2 and store.min_priority() == 2.0 and store.max_size == 4


def test_depth_first_pops_newest() -> None:
    store = DomainStore("depth-first")
    store.push(_batch([1.0, 2.0]))
    store.push(_batch([9.0]))
    assert store.pop(1)["priority"].tolist() == [9.0]
    assert store.pop(5)["priority"].tolist() == [1.0, 2.0] and len(store) == 0


def test_cat_and_select_skip_empty() -> None:
    b = TensorBatch.cat([TensorBatch(), _batch([1.0, 2.0]), TensorBatch()])
    assert len(b) == 2 and len(b.select(b["priority"] > 1.5)) == 1
    assert len(TensorBatch.cat([])) == 0


def test_best_first_takes_a_share_by_hint() -> None:
    """With a ``hint`` field, a quarter of each pop goes to the smallest hints."""
    store = DomainStore("best-first", hint_share=0.25)
    prio = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    hint = torch.tensor([9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, -1.0])
    store.push(TensorBatch({"priority": prio, "hint": hint, "id": torch.arange(8)}))
    out = store.pop(4)
    assert sorted(out["id"].tolist()) == [0, 1, 2, 7]  # three by priority, one by hint
    plain = DomainStore("best-first")
    plain.push(TensorBatch({"priority": prio, "id": torch.arange(8)}))
    assert sorted(plain.pop(4)["id"].tolist()) == [0, 1, 2, 3]
