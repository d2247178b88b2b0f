"""Resumable searches: the branch-and-bound state in a checkpoint file.

``bab verify --checkpoint FILE`` writes the state every ``interval`` seconds, between two
engine steps (then the domain store holds every open domain: a resumed search misses none),
atomically (a temporary file in the same folder, flushed to disk, then ``os.replace``), so a
kill at any moment leaves the previous checkpoint or the new one, never a torn file.
``--resume`` continues from it after checking the fingerprint.

The file is one ``torch.save``\\ d dict (a pickle: load only checkpoints you wrote):

* ``version``; ``fingerprint``: SHA-256 of the model file, the property file and the
  configuration (``verify.timeout`` left out: a resumed run may get more time);
* ``elapsed``: seconds already spent (a resumed run's timeout counts them) and ``clock``;
* ``region`` (the region being searched) and ``totals`` (statistics of the finished ones);
* ``problem``: the search problem's plain-data attributes (tensors, numbers, strings, dtypes,
  generator states and containers of them), so attributes added later travel without a
  change here; ``engines``: :meth:`bab.engine.Engine.state_dict` per engine (every field of
  the domain store, and the statistics); ``rng``: torch, numpy and ``random`` states;
* ``done``: once the run ended with a verdict (not a timeout), that result; resuming such a
  file gives the result again without searching.

Attributes named in ``CLOCK_ATTRIBUTES`` (or a problem's own ``clock_attributes``) hold
``time.monotonic()`` start times; they are shifted so that the elapsed time they measure
carries over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bab.store import TensorBatch

VERSION = 2  # 2: input-split boxes carry 'unstable' and 'tried'
CLOCK_ATTRIBUTES = ("_t0",)
_SCALARS = (bool, int, float, complex, str, bytes, torch.dtype, torch.device, np.generic)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (unreadable, another version, another instance)."""


# ------------------------------------------------------------------------- fingerprints


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_sha256(cfg: Any) -> str:
    """SHA-256 of the configuration without ``verify.timeout``."""
    tree = dataclasses.asdict(cfg)
    tree.get("verify", {}).pop("timeout", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(model: str | Path, prop: str | Path, cfg: Any) -> dict[str, str]:
    """The hashes a resumed run must match."""
    return {"model": file_sha256(model), "property": file_sha256(prop), "config": config_sha256(cfg)}


# ------------------------------------------------------------------- plain-data capture


def pack(value: Any) -> tuple[bool, Any]:
    """``(True, storable form)`` for plain data, ``(False, None)`` for anything else."""
    if value is None or isinstance(value, _SCALARS):
        return True, value
    if isinstance(value, torch.Tensor):
        return True, value.detach()
    if isinstance(value, np.ndarray):
        return True, value
    if isinstance(value, TensorBatch):
        return True, {"__batch__": {k: v.detach() for k, v in value.fields.items()}}
    if isinstance(value, torch.Generator):
        return True, {"__generator__": value.get_state()}
    if isinstance(value, (list, tuple, set, frozenset)):
        parts = [pack(v) for v in value]
        if all(ok for ok, _ in parts):
            return True, {"__seq__": type(value).__name__, "items": [p for _, p in parts]}
        return False, None
    if type(value) is dict:
        parts = {k: pack(v) for k, v in value.items()}
        if all(pack(k)[0] for k in value) and all(ok for ok, _ in parts.values()):
            return True, {"__dict__": {k: p for k, (_, p) in parts.items()}}
    return False, None


def unpack(stored: Any) -> Any:
    """Inverse of :func:`pack` (generator states are restored by :func:`restore_attributes`)."""
    if isinstance(stored, dict):
        if "__batch__" in stored:
            return TensorBatch(dict(stored["__batch__"]))
        if "__seq__" in stored:
            kind = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[stored["__seq__"]]
            return kind(unpack(v) for v in stored["items"])
        if "__dict__" in stored:
            return {k: unpack(v) for k, v in stored["__dict__"].items()}
    return stored


def capture_attributes(obj: Any) -> dict[str, Any]:
    """The plain-data attributes of ``obj`` (callables, solvers, ``None`` and the like are left)."""
    out = {}
    for name, value in vars(obj).items():
        ok, stored = pack(value)
        if ok and value is not None:
            out[name] = stored
    return out


def restore_attributes(obj: Any, stored: dict[str, Any], shift: float = 0.0) -> None:
    """Set captured attributes back; clock attributes move by ``shift`` seconds."""
    clocks = set(CLOCK_ATTRIBUTES) | set(getattr(obj, "clock_attributes", ()))
    for name, value in stored.items():
        if isinstance(value, dict) and "__generator__" in value:
            gen = getattr(obj, name, None)
            if isinstance(gen, torch.Generator):
                gen.set_state(value["__generator__"])
            continue
        value = unpack(value)
        if name in clocks and isinstance(value, float):
            value += shift
        setattr(obj, name, value)


def rng_state() -> dict[str, Any]:
    """The torch, numpy and ``random`` global states."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def stats_fields(stats: Any) -> dict[str, Any] | None:
    """A statistics dataclass as a dict of its fields (``None`` stays ``None``)."""
    if stats is None:
        return None
    return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}


def set_fields(obj: Any, values: dict[str, Any] | None) -> None:
    """Set the known fields of a dataclass from :func:`stats_fields`."""
    for name, value in (values or {}).items():
        if hasattr(obj, name):
            setattr(obj, name, value)


# ----------------------------------------------------------------------------- the file


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flush it to disk, rename it over."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: Path, expected: dict[str, str], device: str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, checked against the ``expected`` fingerprint."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a version {VERSION} bab checkpoint")
    got = state.get("fingerprint", {})
    differ = [k for k in ("model", "property", "config") if got.get(k) != expected[k]]
    if differ:
        raise CheckpointError(f"checkpoint {path} belongs to another run: the {' and the '.join(differ)} "
                              f"hash{'es differ' if len(differ) > 1 else ' differs'} (SHA-256)")
    return state


# ------------------------------------------------------------------------ the checkpointer


class Checkpointer:
    """Writes (and, when resuming, restores) the state of one verification run.

    The BaB code calls :meth:`enter_region` per region, :meth:`attach_problem` once a split
    problem exists (before its roots are computed), and :meth:`attach_engine` per engine; the
    engines call :meth:`step` between steps. ``state`` is a loaded checkpoint to resume from.
    """

    def __init__(self, path: str | Path, hashes: dict[str, str], interval: float = 60.0,
                 state: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.fingerprint = hashes
        self.interval = interval
        self.state = state
        self.saves = 0
        self.pipeline: Any = None
        self._last = time.monotonic()
        self._region, self._totals, self._problem = 0, None, None
        self._engines: dict[str, Any] = {}
        self._pending = state is not None and "done" not in state  # region state still to restore
        self._totals_pending = self._pending

    @property
    def resumed(self) -> bool:
        """Whether this run continues an unfinished search."""
        return self.state is not None and "done" not in self.state

    @property
    def elapsed_before(self) -> float:
        """Seconds the earlier runs spent (0 for a fresh run)."""
        return float(self.state.get("elapsed", 0.0)) if self.resumed else 0.0

    def _restoring(self) -> bool:
        return self._pending and self._region == self.state["region"]

    def enter_region(self, index: int, totals: Any) -> bool:
        """Start region ``index`` (``totals``: the statistics of the finished ones, restored on
        resume); ``False`` when a resumed run finished it already (skip it)."""
        if self._totals_pending:
            set_fields(totals, self.state.get("totals"))
            self._totals_pending = False
        if self._pending and index < self.state["region"]:
            return False
        self._region, self._totals, self._problem, self._engines = index, totals, None, {}
        return True

    def attach_problem(self, problem: Any) -> None:
        """Track ``problem``; on resume, restore its attributes (so its roots are not recomputed)."""
        self._problem = problem
        if self._restoring() and self.state.get("problem") is not None:
            restore_attributes(problem, self.state["problem"], time.monotonic() - self.state["clock"])

    def attach_engine(self, name: str, engine: Any) -> None:
        """Track ``engine`` (it calls :meth:`step`); on resume, restore its store and statistics."""
        self._engines[name] = engine
        engine.on_step = self.step
        if self._restoring() and name in self.state.get("engines", {}):
            engine.load_state_dict(self.state["engines"][name])
            set_rng_state(self.state["rng"])
            if set(self._engines) >= set(self.state["engines"]):
                self._pending = False

    def bind(self, pipeline: Any) -> None:
        """The run whose deadline measures the elapsed time; the interval starts now."""
        self.pipeline = pipeline
        self._last = time.monotonic()

    def step(self) -> None:
        """Between two engine steps: save when ``interval`` seconds passed since the last save."""
        if time.monotonic() - self._last >= self.interval:
            self.save()

    def elapsed(self) -> float:
        """Seconds of the run so far, earlier runs included."""
        if self.pipeline is None:
            return self.elapsed_before
        return time.monotonic() - self.pipeline.deadline.start

    def save(self) -> None:
        """Write the current state (only call between engine steps)."""
        state = {"version": VERSION, "fingerprint": self.fingerprint, "elapsed": self.elapsed(),
                 "clock": time.monotonic(), "region": self._region, "totals": stats_fields(self._totals),
                 "problem": capture_attributes(self._problem) if self._problem is not None else None,
                 "engines": {n: e.state_dict() for n, e in self._engines.items()}, "rng": rng_state()}
        atomic_save(state, self.path)
        self.saves += 1
        self._last = time.monotonic()

    def finish(self, result: Any) -> None:
        """Record a run's final result (a timeout keeps the last state, to resume with more time)."""
        from bab.result import Status

        if result.status is Status.TIMEOUT:
            return
        bab = result.stats.extra.get("bab")
        done = {"status": result.status.value, "reason": result.reason, "time_s": result.time_s,
                "proved_by": result.stats.proved_by, "counterexample": result.counterexample,
                "bab": stats_fields(bab) if dataclasses.is_dataclass(bab) else None}
        atomic_save({"version": VERSION, "fingerprint": self.fingerprint, "elapsed": result.time_s,
                     "done": done}, self.path)

    def finished_result(self) -> Any:
        """The recorded result of a finished run (``None`` when the run is not finished)."""
        from bab.result import Result, Stats, Status

        if self.state is None or "done" not in self.state:
            return None
        done = self.state["done"]
        stats = Stats(proved_by=done["proved_by"], notes=["result of a finished checkpointed run"])
        return Result(Status(done["status"]), done["counterexample"], done["time_s"], stats, done["reason"])


def open_checkpoint(path: str | Path, model: str | Path, prop: str | Path, cfg: Any,
                    interval: float = 60.0, resume: bool = False) -> Checkpointer:
    """A checkpointer for one run; with ``resume`` and an existing file, its checked state.
    Temporary files that a run killed while writing left beside ``path`` are removed."""
    if not interval >= 0:
        raise CheckpointError("the checkpoint interval must be at least 0 seconds")
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path.parent}")
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    hashes = fingerprint(model, prop, cfg)
    state = load_state(path, hashes, cfg.verify.device) if resume and path.exists() else None
    return Checkpointer(path, hashes, interval, state)


def verify_resumable(model: str | Path, prop: str | Path, cfg: Any, checkpoint: Checkpointer,
                     timeout: float, start: float | None = None) -> Any:
    """:func:`bab.api.verify` with checkpoints; ``start`` (``time.monotonic()``) must already
    count the earlier runs' time (default: now minus ``checkpoint.elapsed_before``). A resumed run skips the
    falsification phase: it ran, without a counterexample, before the first checkpoint."""
    from bab.api import Deadline, Pipeline, load_inputs

    done = checkpoint.finished_result()
    if done is not None:
        return done
    deadline = Deadline(timeout, time.monotonic() - checkpoint.elapsed_before if start is None else start)
    network, spec = load_inputs(model, prop)
    if checkpoint.resumed:
        cfg = dataclasses.replace(cfg, falsify=dataclasses.replace(cfg.falsify, enabled=False))
    pipeline = Pipeline(network, spec, cfg, deadline)
    pipeline.checkpoint = checkpoint
    checkpoint.bind(pipeline)
    result = pipeline.run()
    checkpoint.finish(result)
    return result
