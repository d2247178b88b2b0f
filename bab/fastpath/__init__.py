"""A NumPy fast path for small fully connected ReLU networks (no torch import).

``bab verify`` tries it first (``verify.fast_path``): the ONNX weights are read with the
``onnx`` package, then falsification, batched CROWN bounds and input-split branch and bound
run in float64 NumPy within ``verify.fast_path_budget`` seconds. An instance it does not
decide, or cannot read, goes to the torch pipeline with the time left (docs/fastpath.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def try_fast_path(model: str | Path, prop: str | Path, cfg: Any, timeout: float, start: float) -> Any:
    """A :class:`bab.result.Result` when the fast path decides the instance, else ``None``.

    ``timeout`` counts from ``start`` (``time.monotonic()``); the fast path stops at the
    earlier of that deadline and ``verify.fast_path_budget`` seconds from now."""
    from bab.fastpath.run import run_fast_path
    from bab.result import Result, Stats, Status

    deadline = min(start + timeout, time.monotonic() + cfg.verify.fast_path_budget)
    out = run_fast_path(model, prop, cfg, deadline)
    if out.status == "undecided":
        return None
    stats = Stats(method=cfg.verify.method, proved_by=out.proved_by,
                  attack_candidates=out.candidates, replay_rejections=out.rejected,
                  phases={"fastpath": out.seconds}, extra={"fastpath_boxes": out.boxes})
    status = Status.SAT if out.status == "sat" else Status.UNSAT
    return Result(status=status, counterexample=out.counterexample,
                  time_s=time.monotonic() - start, stats=stats)
