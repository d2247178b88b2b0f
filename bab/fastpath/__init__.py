"""A NumPy fast path for small fully connected ReLU networks (no torch import).

``bab verify`` tries it first (``verify.fast_path``): the ONNX weights are read with the
``onnx`` package, then falsification, batched CROWN bounds and input-split branch and bound
run in float64 NumPy within ``verify.fast_path_budget`` seconds. An instance it does not
decide, or cannot read, goes to the torch pipeline with the time left (docs/fastpath.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def try_fast_path(model: str | Path, prop: str | Path, cfg: Any, timeout: float, start: float) -> Any:
    """A :class:`bab.result.Result` when the fast path decides the instance, else ``None``.

    ``timeout`` counts from ``start`` (``time.monotonic()``); the fast path stops at the
    earlier of that deadline and ``verify.fast_path_budget`` seconds from now."""
    from bab.fastpath.run import run_fast_path
    from bab.result import Result, Stats, Status

    deadline = min(start + timeout, time.monotonic() + cfg.verify.fast_path_budget)
    if time.monotonic() >= start + timeout:  # no time left: the full pipeline reports the timeout
        return None
    try:
        out = run_fast_path(model, prop, cfg, deadline)
    except Exception as exc:  # noqa: BLE001 - never a verdict from a failed run: hand over
        log.warning("fast path failed (%s: %s); handing over", type(exc).__name__, exc)
        return None
    if out.status == "undecided":
        log.info("fast path undecided after %.2f s (%s); handing over", out.seconds, out.reason)
        return None
    stats = Stats(method=cfg.verify.method, proved_by=out.proved_by,
                  attack_candidates=out.candidates, replay_rejections=out.rejected,
                  phases={"fastpath": out.seconds}, extra={"fastpath_boxes": out.boxes})
    status = Status.SAT if out.status == "sat" else Status.UNSAT
    return Result(status=status, counterexample=out.counterexample,
                  time_s=time.monotonic() - start, stats=stats)
