"""Worker processes that certify points with a hard per-point timeout, for any executor.

A :class:`PointRunner` is the function an executor of :mod:`bab.executors` maps over the
:class:`~bab.compare.points.PointTask` items. Each call checks out a worker process of the
calling process (``python -m bab.compare.workers``, one torch thread, in its own session),
sends it the task and waits at most ``timeout + grace_s``: an overrunning worker is killed
with its process group (any solver it started) and the point is recorded as ``timeout``.
A worker receives the models once, when it starts, and then serves task after task:

* the process executor (threads here) keeps at most ``jobs`` workers for the run;
* a Ray task runs the same call in a Ray worker process, whose worker process serves every
  later task of the same run there; the runner carries the models as a Ray object reference
  (``ray.put`` of their bytes), fetched only when a worker process starts.

Nothing here prints or writes files.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bab.compare.points import ERROR, PointRow, PointTask, certify_point, method_config

GRACE_S = 5.0  # past the timeout before a worker is killed (verify stops itself on time)
POINT_THREADS = 1  # torch threads per point (method_config sets verify.threads=1): CPUs per task


class RunCancelled(RuntimeError):
    """The run was interrupted: no more points start and a killed worker's row is dropped."""


def models_payload(models: dict[str, Any], cfg: Any) -> bytes:
    """The first message of every worker: the pickled ``(models, cfg)`` (models made
    portable, see :func:`portable`)."""
    return pickle.dumps(({name: portable(m) for name, m in models.items()}, cfg),
                        protocol=pickle.HIGHEST_PROTOCOL)


def portable(model: Any) -> Any:
    """What a worker gets: the model without its onnxruntime session (rebuilt there); a torch
    module whose class lives in ``__main__`` cannot be unpickled there, so such a model's
    replay runs on its (checked) translation, which can only turn a ``sat`` into ``unknown``,
    never change what is certified."""
    import copy

    from bab.compare.data import NetworkReference
    from onnx_models import OnnxReference

    ref = model.reference
    module = getattr(ref, "module", None)
    if isinstance(ref, OnnxReference):
        model = copy.copy(model)
        model.reference = None
    elif module is not None and any(type(m).__module__ == "__main__" for m in module.modules()):
        model = copy.copy(model)
        model.reference = NetworkReference(model.network)
    return model


def _send(conn: Any, obj: Any) -> None:
    """Plain pickle over the pipe (torch's pickler would pass tensors by shared memory)."""
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Any) -> Any:
    return pickle.loads(conn.recv_bytes())


def worker_main(read_fd: int, write_fd: int) -> None:
    """Worker process (``python -m bab.compare.workers R W``): the first message is
    ``(models, cfg)``, then tasks until ``None`` (or the parent's end of the pipe closes);
    one row is sent back per task."""
    from multiprocessing.connection import Connection

    import torch

    from bab.compare.data import reference_of

    torch.set_num_threads(POINT_THREADS)
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    models, cfg = _recv(inbox)
    _send(outbox, "ready")  # the parent starts a task's clock only from here
    try:
        while (task := _recv(inbox)) is not None:
            model = models[task.model]
            _send(outbox, certify_point(model.network, reference_of(model), task,
                                        method_config(cfg, task.method, task.timeout)))
    except (EOFError, BrokenPipeError):  # the parent went away
        pass


class Worker:
    """One worker process and its two pipe ends (in its own session, so a kill takes any
    solver processes it started with it)."""

    def __init__(self, payload: bytes) -> None:
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        from bab.bench_process import project_env as _project_env

        to_child, child_in = os.pipe()[::-1]  # (write end, read end)
        child_out, from_child = os.pipe()[::-1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bab.compare.workers", str(child_in), str(child_out)],
            pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True, env={**_project_env(), "OMP_NUM_THREADS": str(POINT_THREADS)})
        os.close(child_in)
        os.close(child_out)
        self.inbox = Connection(from_child, writable=False)
        self.outbox = Connection(to_child, readable=False)
        self.outbox.send_bytes(payload)
        self.ready = False
        self.busy = False
        self.dead = False  # killed or died: never reused

    def _wait_ready(self) -> None:
        if self.ready:
            return
        try:
            _recv(self.inbox)
        except (EOFError, OSError, pickle.UnpicklingError):  # nothing will work
            raise RuntimeError("a compare worker process failed to start "
                               f"(exit code {self.proc.poll()})") from None
        self.ready = True

    def certify(self, task: PointTask, grace_s: float) -> PointRow:
        """The worker's row for ``task``, or a ``timeout`` row after killing it at
        ``task.timeout + grace_s`` (an ``error`` row when it died)."""
        self._wait_ready()
        self.busy, started = True, time.monotonic()
        limit = task.timeout + grace_s
        try:
            _send(self.outbox, task)
            if self.inbox.poll(limit):
                row = _recv(self.inbox)
                self.busy = False
                return row
        except (EOFError, OSError, pickle.UnpicklingError):
            self.dead = True
            return _failed(task, ERROR, time.monotonic() - started,
                           f"worker process died (exit code {self.proc.poll()})")
        self.dead = True
        self.kill()
        return _failed(task, "timeout", time.monotonic() - started, f"killed after {limit:g} s")

    def kill(self) -> None:
        """SIGKILL the worker's process group (callable from any thread)."""
        from bab.bench_process import kill_group

        kill_group(self.proc)

    def stop(self) -> None:
        """Ask the process to end, then kill its group and reap it."""
        try:
            if not self.busy and self.proc.poll() is None:
                _send(self.outbox, None)
                self.proc.wait(1.0)
        except Exception:  # noqa: BLE001 - it is going away anyway
            pass
        self.kill()
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()


def _failed(task: PointTask, status: str, elapsed: float, reason: str) -> PointRow:
    return PointRow(task.model, task.method, task.point, task.label, status, False, elapsed, reason)


class Workers:
    """The worker processes of this process, by run key: idle ones are reused by the next
    call of the same run. A process serves one run at a time unless the run is *owned* here
    (the process executor's runs): starting a worker for a run stops the idle workers of the
    runs not owned here (a Ray worker process moving on to the next comparison)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: dict[str, list[Worker]] = {}
        self.live: dict[str, set[Worker]] = {}
        self.owned: set[str] = set()
        self.cancelled: set[str] = set()

    def own(self, key: str) -> None:
        """Mark ``key`` a run of this process (its idle workers stay until :meth:`close`)."""
        with self.lock:
            self.owned.add(key)

    def acquire(self, key: str, payload: Callable[[], bytes]) -> Worker:
        """An idle worker of ``key``, or a new one started with ``payload()``."""
        with self.lock:
            self._check(key)
            stale = [k for k in self.idle if k != key and k not in self.owned]
            old = [w for k in stale for w in self.idle.pop(k)]
            for k in stale:
                self.live.pop(k, None)
            free = self.idle.get(key)
            worker = free.pop() if free else None
        for w in old:
            w.stop()
        if worker is not None:
            return worker
        worker = Worker(payload())
        with self.lock:
            self.live.setdefault(key, set()).add(worker)
            if key not in self.cancelled:
                return worker
        worker.stop()
        raise RunCancelled("the comparison was interrupted")

    def release(self, key: str, worker: Worker) -> None:
        """Hand ``worker`` back after a call: idle again, or stopped when it is dead."""
        if worker.dead:
            self.discard(key, worker)
            return
        with self.lock:
            self.idle.setdefault(key, []).append(worker)

    def discard(self, key: str, worker: Worker) -> None:
        """Stop ``worker`` and forget it."""
        with self.lock:
            self.live.get(key, set()).discard(worker)
        worker.stop()

    def kill_all(self, key: str) -> None:
        """Interrupt run ``key``: kill its workers (busy ones too) and start no more."""
        with self.lock:
            self.cancelled.add(key)
            workers = list(self.live.get(key, ()))
        for w in workers:
            w.kill()

    def close(self, key: str) -> None:
        """Stop every worker of run ``key`` (after its calls returned) and forget the run."""
        with self.lock:
            workers = self.live.pop(key, set())
            self.idle.pop(key, None)
            self.owned.discard(key)
            self.cancelled.discard(key)
        for w in workers:
            w.stop()

    def _check(self, key: str) -> None:
        if key in self.cancelled:
            raise RunCancelled("the comparison was interrupted")

    def is_cancelled(self, key: str) -> bool:
        """Whether run ``key`` was interrupted."""
        with self.lock:
            return key in self.cancelled


WORKERS = Workers()


@dataclass
class PointRunner:
    """Certify one point in a worker process of the calling process (see the module doc).
    ``payload``: :func:`models_payload` bytes, or a Ray object reference to them (small to
    pickle, so a Ray task carries the reference, not the models)."""

    payload: Any
    grace_s: float = GRACE_S
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __call__(self, task: PointTask) -> PointRow:
        worker = WORKERS.acquire(self.key, self._payload)
        try:
            row = worker.certify(task, self.grace_s)
        except BaseException:  # an interrupted Ray task, a worker that failed to start
            WORKERS.discard(self.key, worker)
            raise
        WORKERS.release(self.key, worker)
        if worker.dead and WORKERS.is_cancelled(self.key):
            raise RunCancelled("the comparison was interrupted")
        return row

    def _payload(self) -> bytes:
        if isinstance(self.payload, (bytes, bytearray, memoryview)):
            return self.payload
        import ray  # a Ray object reference: fetched once per new worker process

        return ray.get(self.payload)


if __name__ == "__main__":  # a worker process of a PointRunner
    import sys

    worker_main(int(sys.argv[1]), int(sys.argv[2]))
