"""Batched domain storage for branch and bound.

A :class:`TensorBatch` is a set of named tensors sharing a leading dimension ``N`` (one row
per sub-domain). The :class:`DomainStore` keeps the open domains as one such batch and pops
the most urgent ones: best-first (smallest priority first) or depth-first (newest first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TensorBatch:
    """Named tensors with a common leading dimension."""

    fields: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return 0 if not self.fields else int(next(iter(self.fields.values())).shape[0])

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.fields[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.fields[name] = value

    def select(self, index: torch.Tensor) -> TensorBatch:
        """Rows ``index`` (a boolean mask or integer indices) of every field."""
        return TensorBatch({k: v[index] for k, v in self.fields.items()})

    @staticmethod
    def cat(batches: list[TensorBatch]) -> TensorBatch:
        """Concatenate batches with the same fields (empty batches are skipped)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return TensorBatch()
        keys = batches[0].fields.keys()
        return TensorBatch({k: torch.cat([b.fields[k] for b in batches]) for k in keys})


class DomainStore:
    """Open domains; ``priority`` (a field, lower = more urgent) drives best-first order."""

    def __init__(self, order: str = "best-first", priority: str = "priority", hint: str = "hint",
                 hint_share: float = 0.25) -> None:
        if order not in ("best-first", "depth-first"):
            raise ValueError(f"unknown domain order '{order}'")
        self.order = order
        self.priority = priority
        self.hint, self.hint_share = hint, hint_share
        self.batch = TensorBatch()
        self.max_size = 0

    def __len__(self) -> int:
        return len(self.batch)

    def push(self, batch: TensorBatch) -> None:
        """Add domains (appended: newest last)."""
        self.batch = TensorBatch.cat([self.batch, batch])
        self.max_size = max(self.max_size, len(self.batch))

    def pop(self, k: int) -> TensorBatch:
        """Remove and return up to ``k`` domains in the store's order."""
        n = len(self.batch)
        k = min(k, n)
        if k == n:
            out, self.batch = self.batch, TensorBatch()
            return out
        if self.order == "depth-first":
            take = torch.arange(n - k, n)
        else:
            take = self._best_first(k)
        keep = torch.ones(n, dtype=torch.bool)
        keep[take] = False
        out = self.batch.select(take)
        self.batch = self.batch.select(keep)
        return out

    def _best_first(self, k: int) -> torch.Tensor:
        """Indices of the ``k`` smallest priorities; when the domains carry a ``hint`` field
        (how close an attack came: lower is closer), a ``hint_share`` of them by hint instead."""
        prio = self.batch[self.priority]
        k_hint = int(k * self.hint_share) if self.hint in self.batch.fields else 0
        if k_hint <= 0:
            return torch.topk(prio, k, largest=False).indices
        by_hint = torch.topk(self.batch[self.hint], k_hint, largest=False).indices
        prio = prio.clone()
        prio[by_hint] = -float("inf")  # already taken: first in the priority pick
        return torch.topk(prio, k, largest=False).indices

    def min_priority(self) -> float:
        """The smallest priority among open domains (+inf when empty)."""
        return float(self.batch[self.priority].min()) if len(self.batch) else float("inf")
