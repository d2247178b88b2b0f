"""The fast path's driver: read, falsify, bound and split; or hand over.

Decides by the network and the property only: a fully connected ReLU chain of at most
``verify.fast_path_max_neurons`` hidden neurons and a property of plain boxes. Networks with
at most ``bab.input_split_threshold`` inputs get the input-split search; larger ones only the
attack and one root CROWN pass. Every ``sat`` is a point that onnxruntime confirmed on the
ONNX file (:class:`bab.replay.Replayer`); every ``unsat`` is a CROWN bound above the clause by
``bounding.safety_margin`` plus the float64 error allowance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bab.fastpath.attack import falsify_box
from bab.fastpath.model import FcNet, OutOfScope, read_fc_net
from bab.fastpath.search import ClauseRows, RegionSearch, Verdict

BATCH = 256  # boxes bounded per pass (keeps the coefficient tensors near the CPU cache)


@dataclass
class FastOutcome:
    """``status``: 'sat', 'unsat' or 'undecided' (then ``reason`` says why)."""

    status: str
    counterexample: Any = None
    proved_by: str = ""
    reason: str = ""
    boxes: int = 0
    seconds: float = 0.0
    candidates: int = 0
    rejected: int = 0
    notes: list[str] = field(default_factory=list)


def load_problem(model: str | Path, prop: str | Path, max_neurons: int) -> tuple[FcNet, Any]:
    """The network and the property, or :class:`OutOfScope`."""
    import vnnlib
    from onnx_models.source import parse_model, read_model_bytes

    try:
        net = read_fc_net(parse_model(read_model_bytes(model), Path(model).name), max_neurons)
        spec = vnnlib.load_property(prop, n_inputs=net.n_inputs, n_outputs=net.n_outputs)
    except OutOfScope:
        raise
    except Exception as exc:  # noqa: BLE001 - the torch pipeline reports input errors properly
        raise OutOfScope(f"cannot read the instance here ({type(exc).__name__})") from exc
    if spec.n_inputs != net.n_inputs or spec.n_outputs != net.n_outputs:
        raise OutOfScope("the property does not fit the network")
    if any(getattr(r, "ball", None) is not None for r in spec.regions):
        raise OutOfScope("an input set that is not a box")
    return net, spec


class FastPath:
    """One instance on the fast path (``deadline``: a ``time.monotonic()`` value)."""

    def __init__(self, model: str | Path, net: FcNet, spec: Any, cfg: Any, deadline: float) -> None:
        self.model, self.net, self.spec, self.cfg = model, net, spec, cfg
        self.deadline = deadline
        self.rng = np.random.default_rng(cfg.verify.seed)
        self._replayer = None
        self.out = FastOutcome("undecided")

    def _confirm(self, x: np.ndarray, region: int) -> Any:
        """The replayed counterexample, or None (onnxruntime starts at the first candidate)."""
        if self._replayer is None:
            from bab.replay import Replayer
            from onnx_models.reference import OnnxReference

            self._replayer = Replayer(OnnxReference(self.model), self.spec.regions, self.net.input_dtype)
        self.out.candidates += 1
        cex = self._replayer.check(x, region)
        self.out.rejected += cex is None
        return cex

    def _clauses(self, region: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.asarray(c.C, np.float64), np.asarray(c.d, np.float64)) for c in region.clauses]

    def attack(self) -> Any:
        """Random points, corners and PGD on every region; the first confirmed point."""
        f = self.cfg.falsify
        for r, region in enumerate(self.spec.regions):
            cands = falsify_box(self.net, region.lower, region.upper, self._clauses(region),
                                min(f.random_samples, 4096), f.pgd_restarts, min(f.pgd_steps, 30),
                                f.pgd_step_size, self.rng)
            for x, _, margin in cands[:4]:
                if margin <= 0:
                    cex = self._confirm(x, r)
                    if cex is not None:
                        return cex
        return None

    def search(self) -> FastOutcome:
        """Bound (and, for few inputs, split) every region."""
        split = self.net.n_inputs <= self.cfg.bab.input_split_threshold
        for r, region in enumerate(self.spec.regions):
            found: list[Any] = []

            def try_point(x: np.ndarray, clause: int, r: int = r) -> bool:
                cex = self._confirm(x, r)
                found.append(cex)
                return cex is not None

            rows = ClauseRows.of(self._clauses(region), self.net.n_outputs)
            s = RegionSearch(self.net, rows, self.cfg.bounding.safety_margin, try_point, BATCH, split)
            res = s.run(region.lower, region.upper, self.deadline)
            self.out.boxes += res.boxes
            if res.verdict is Verdict.SAT:
                return self._done("sat", "fastpath-bab", found[-1])
            if res.verdict is Verdict.UNDECIDED:
                self.out.reason = f"region {r}: {res.reason}"
                return self.out
        return self._done("unsat", "fastpath-crown" if self.out.boxes == len(self.spec.regions)
                          else "fastpath-bab")

    def _done(self, status: str, by: str, cex: Any = None) -> FastOutcome:
        self.out.status, self.out.proved_by, self.out.counterexample = status, by, cex
        return self.out

    def run(self) -> FastOutcome:
        """Attack (when enabled), then search."""
        if self.cfg.falsify.enabled:
            cex = self.attack()
            if cex is not None:
                return self._done("sat", "fastpath-attack", cex)
        return self.search()


def run_fast_path(model: str | Path, prop: str | Path, cfg: Any, deadline: float) -> FastOutcome:
    """Decide the instance within ``deadline`` (monotonic seconds) or say why not."""
    t0 = time.monotonic()
    try:
        net, spec = load_problem(model, prop, cfg.verify.fast_path_max_neurons)
    except OutOfScope as exc:
        return FastOutcome("undecided", reason=f"out of scope: {exc}", seconds=time.monotonic() - t0)
    threads = cfg.verify.threads or 1
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - BLAS keeps its own thread count
        out = FastPath(model, net, spec, cfg, deadline).run()
    else:
        with threadpool_limits(limits=threads):
            out = FastPath(model, net, spec, cfg, deadline).run()
    out.seconds = time.monotonic() - t0
    return out
