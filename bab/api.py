"""The Python API: ``verify(model, spec, config=None, timeout=None) -> Result``.

The pipeline is: falsification (random samples, then PGD per clause; every candidate replayed
with onnxruntime), then incomplete bounding of every clause. ``unsat`` needs every clause of
every region proven infeasible with a safety margin; anything else is ``unknown``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bab.config import Config
from bab.result import Counterexample, Result, Stats, Status
from onnx_models.network import Network
from vnnlib.spec import Region, Spec


class VerifyTimeout(Exception):
    """Raised inside the pipeline when the deadline has passed."""


class Deadline:
    """A wall-clock budget measured from ``start`` (``time.monotonic``)."""

    def __init__(self, seconds: float, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.seconds = seconds

    def remaining(self) -> float:
        """Seconds left (negative once expired)."""
        return self.seconds - (time.monotonic() - self.start)

    def check(self) -> None:
        """Raise :class:`VerifyTimeout` once the budget is spent."""
        if self.remaining() <= 0:
            raise VerifyTimeout


class InputMismatchError(ValueError):
    """The property and the network disagree on the number of inputs or outputs."""


def load_inputs(model: str | Path | Network, spec: str | Path | Spec) -> tuple[Network, Spec]:
    """Load paths (or pass through loaded objects) and check that they fit each other."""
    import onnx_models
    import vnnlib

    network = model if isinstance(model, Network) else onnx_models.load(model)
    if isinstance(spec, Spec):
        prop = spec
    else:
        prop = vnnlib.parse_cached(spec, n_inputs=network.n_inputs, n_outputs=network.n_outputs)
    if prop.n_inputs != network.n_inputs or prop.n_outputs != network.n_outputs:
        raise InputMismatchError(
            f"property has {prop.n_inputs} inputs / {prop.n_outputs} outputs but the network "
            f"has {network.n_inputs} / {network.n_outputs}")
    return network, prop


def verify(model: str | Path | Network, spec: str | Path | Spec, config: Config | None = None,
           timeout: float | None = None, *, start: float | None = None, reference: Any = None) -> Result:
    """Verify ``spec`` on ``model``; paths or loaded objects are accepted.

    ``timeout`` (seconds, default from the config) counts from ``start`` (a
    ``time.monotonic()`` value, default now). ``reference`` is an
    :class:`onnx_models.OnnxReference` to replay counterexamples on; by default one is built
    from the network's source file.
    """
    cfg = config or Config()
    deadline = Deadline(cfg.verify.timeout if timeout is None else timeout, start)
    network, prop = load_inputs(model, spec)
    return Pipeline(network, prop, cfg, deadline, reference).run()


class Pipeline:
    """One verification run: attack, then bound; holds the run's statistics."""

    def __init__(self, network: Network, spec: Spec, cfg: Config, deadline: Deadline,
                 reference: Any = None) -> None:
        self.network = network.to(device=cfg.verify.device)
        self.spec = spec
        self.cfg = cfg
        self.deadline = deadline
        self.reference = reference
        self.stats = Stats(method=cfg.verify.method)

    def run(self) -> Result:
        """The verdict; never raises for a timeout."""
        torch.manual_seed(self.cfg.verify.seed)
        if self.cfg.verify.threads > 0:
            torch.set_num_threads(self.cfg.verify.threads)
        try:
            cex = self._attack() if self.cfg.falsify.enabled else None
            if cex is not None:
                return self._result(Status.SAT, cex)
            if self._prove():
                return self._result(Status.UNSAT)
            return self._result(Status.UNKNOWN, reason="bounds could not prove every clause")
        except VerifyTimeout:
            return self._result(Status.TIMEOUT, reason="deadline reached")

    def _result(self, status: Status, cex: Counterexample | None = None, reason: str = "") -> Result:
        elapsed = time.monotonic() - self.deadline.start
        return Result(status=status, counterexample=cex, time_s=elapsed, stats=self.stats, reason=reason)

    def _timed(self, phase: str, t0: float) -> None:
        self.stats.phases[phase] = self.stats.phases.get(phase, 0.0) + time.monotonic() - t0

    def _replayer(self):
        from bab.replay import Replayer
        from onnx_models import OnnxReference

        if self.reference is None:
            if not self.network.source or not Path(self.network.source).exists():
                self.stats.notes.append("no ONNX source file to replay counterexamples on")
                return None
            self.reference = OnnxReference(self.network.source)
        return Replayer(self.reference, self.spec.regions, self.network.io.input_dtype)

    def _attack(self) -> Counterexample | None:
        """Falsification; the first candidate that survives replay wins."""
        from bab.falsify import Falsifier

        t0 = time.monotonic()
        try:
            replayer = self._replayer()
            if replayer is None:
                return None
            falsifier = Falsifier(self.network, self.cfg.falsify, self.cfg.verify.seed,
                                  self.deadline.check)
            for cand in falsifier.run(self.spec.regions):
                self.stats.attack_candidates += 1
                cex = replayer.check(cand.x, cand.region)
                if cex is not None:
                    self.stats.proved_by = "attack"
                    return cex
                self.stats.replay_rejections = replayer.rejected
            return None
        finally:
            self._timed("attack", t0)

    def _prove(self) -> bool:
        """True when every clause of every region is proven infeasible."""
        from bab.bounding import get_bounder

        t0 = time.monotonic()
        try:
            name = "ibp" if self.cfg.verify.method == "default" else self.cfg.verify.method
            bounder = get_bounder(name)
            dtype = getattr(torch, self.cfg.bounding.dtype)
            net = self.network if dtype == self.network.dtype else copy.deepcopy(self.network).to(dtype)
            for region in self.spec.regions:
                self.deadline.check()
                if not self._region_proven(bounder, net, region, dtype):
                    return False
            self.stats.proved_by = name
            return True
        finally:
            self._timed("bound", t0)

    def _region_proven(self, bounder, net: Network, region: Region, dtype: torch.dtype) -> bool:
        """Bound every row of every clause at once; a clause falls when one row is > d."""
        from bab.bounding import Domains

        if any(c.n_rows == 0 for c in region.clauses):
            return False
        rows = np.concatenate([c.C for c in region.clauses])
        d = np.concatenate([c.d for c in region.clauses])
        device = self.cfg.verify.device
        kw = dict(dtype=dtype, device=device)
        dom = Domains(lower=torch.as_tensor(region.lower, **kw)[None],
                      upper=torch.as_tensor(region.upper, **kw)[None],
                      C=torch.as_tensor(rows, **kw)[None])
        with torch.no_grad():
            lb = bounder.bound(net, dom).lower[0].double().cpu().numpy()
        eps = 1e-5 if dtype == torch.float32 else 1e-12
        tol = self.cfg.bounding.safety_margin + eps * (np.abs(lb) + np.abs(d) + 1.0)
        infeasible = np.isfinite(lb) & (lb - d > tol)
        start = 0
        for clause in region.clauses:
            if not infeasible[start:start + clause.n_rows].any():
                return False
            start += clause.n_rows
        return True
