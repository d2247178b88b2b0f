"""Run the certifications of a comparison: one by one in this process, or in ``jobs`` worker
processes (``python -m bab.compare.runner``, one torch thread each) that are killed when a
point overruns its timeout (the command line always uses workers).

``points.csv`` is appended to as rows finish, so an interrupted run loses nothing; a rerun
reads it back and skips every (model, method, point) it already holds (``n/a`` and ``error``
rows are retried; the last row of a key wins).
"""

from __future__ import annotations

import csv
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from bab.compare.points import ERROR, NA, PointRow, PointTask, certify_point, method_config

POINT_COLUMNS = ("model", "method", "point", "label", "status", "certified", "time_s", "reason")
RETRIED = (NA, ERROR)
GRACE_S = 5.0  # past the timeout before a worker is killed (verify stops itself on time)


def read_points(path: Path) -> dict[tuple[str, str, int], PointRow]:
    """Rows of an existing ``points.csv`` by key (last wins); ``{}`` when there is none."""
    if not path.is_file():
        return {}
    rows: dict[tuple[str, str, int], PointRow] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            try:
                row = PointRow(rec["model"], rec["method"], int(rec["point"]), int(rec["label"]),
                               rec["status"], rec["certified"] == "1", float(rec["time_s"]),
                               rec.get("reason") or "")
            except (KeyError, ValueError, TypeError):
                continue  # a line cut short by an interrupted run
            rows[row.key] = row
    return rows


def _cells(row: PointRow) -> list[str]:
    return [row.model, row.method, str(row.point), str(row.label), row.status,
            str(int(row.certified)), f"{row.time_s:.4f}", row.reason]


class PointsFile:
    """Append-and-flush writer of ``points.csv`` (``None`` path: keep nothing on disk)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fh = None
        if path is not None:
            new = not path.is_file() or path.stat().st_size == 0
            self.fh = path.open("a", newline="", encoding="utf-8")
            self.writer = csv.writer(self.fh, lineterminator="\n")
            if new:
                self.writer.writerow(POINT_COLUMNS)

    def write(self, rows: Iterable[PointRow]) -> None:
        """Append rows and flush."""
        if self.fh is None:
            return
        for row in rows:
            self.writer.writerow(_cells(row))
        self.fh.flush()

    def close(self) -> None:
        """Close the file."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def rewrite_points(path: Path, rows: Sequence[PointRow]) -> None:
    """Write the compacted ``points.csv`` (one row per key), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(POINT_COLUMNS)
        writer.writerows(_cells(r) for r in rows)
    os.replace(tmp, path)


def run_tasks(tasks: Sequence[PointTask], models: dict[str, Any], cfg: Any, jobs: int,
              on_row: Callable[[PointRow], None], processes: bool = False) -> None:
    """Certify every task; ``models`` maps a name to its :class:`bab.compare.data.Model`.
    ``processes``: in ``jobs`` worker processes (hard timeouts), else here, one by one."""
    if not tasks:
        return
    if not processes:
        import torch

        from bab.compare.data import reference_of

        threads = torch.get_num_threads()
        try:
            for task in tasks:
                model = models[task.model]
                on_row(certify_point(model.network, reference_of(model),
                                     task, method_config(cfg, task.method, task.timeout)))
        finally:
            torch.set_num_threads(threads)
        return
    Pool(jobs, models, cfg).run(tasks, on_row)


def _send(conn: Any, obj: Any) -> None:
    """Plain pickle over the pipe (torch's pickler would pass tensors by shared memory)."""
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Any) -> Any:
    return pickle.loads(conn.recv_bytes())


def worker_main(read_fd: int, write_fd: int) -> None:
    """Worker process (``python -m bab.compare.runner R W``): the first message is
    ``(models, cfg)``, then tasks until ``None``; one row is sent back per task."""
    from multiprocessing.connection import Connection

    import torch

    from bab.compare.data import reference_of

    torch.set_num_threads(1)
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    models, cfg = _recv(inbox)
    _send(outbox, "ready")  # the parent starts a task's clock only from here
    while (task := _recv(inbox)) is not None:
        model = models[task.model]
        _send(outbox, certify_point(model.network, reference_of(model), task,
                                  method_config(cfg, task.method, task.timeout)))


class Worker:
    """One worker process and its two pipe ends (in its own session, so a kill takes any
    solver processes it started with it)."""

    def __init__(self, models: dict[str, Any], cfg: Any) -> None:
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        from bab.bench import _project_env

        to_child, child_in = os.pipe()[::-1]  # (write end, read end)
        child_out, from_child = os.pipe()[::-1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bab.compare.runner", str(child_in), str(child_out)],
            pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True, env={**_project_env(), "OMP_NUM_THREADS": "1"})
        os.close(child_in)
        os.close(child_out)
        self.inbox = Connection(from_child, writable=False)
        self.outbox = Connection(to_child, readable=False)
        _send(self.outbox, (models, cfg))
        self.task: PointTask | None = None
        self.started = 0.0
        self.ready = False

    def send(self, task: PointTask) -> None:
        """Start ``task``."""
        self.task, self.started = task, time.monotonic()
        _send(self.outbox, task)

    def stop(self) -> None:
        """Ask the process to end, then kill its group and reap it."""
        from bab.bench import kill_group

        try:
            if self.task is None and self.proc.poll() is None:
                _send(self.outbox, None)
                self.proc.wait(1.0)
        except (OSError, ValueError, Exception):  # noqa: BLE001 - it is going away anyway
            pass
        kill_group(self.proc)
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()


class Pool:
    """``jobs`` worker processes, one task each at a time; an overrunning worker is killed
    (its point is recorded as ``timeout``) and replaced."""

    def __init__(self, jobs: int, models: dict[str, Any], cfg: Any, grace_s: float = GRACE_S) -> None:
        self.jobs = jobs
        self.models = {name: _portable(m) for name, m in models.items()}
        self.cfg = cfg
        self.grace_s = grace_s

    def run(self, tasks: Sequence[PointTask], on_row: Callable[[PointRow], None]) -> None:
        """Run every task; rows reach ``on_row`` as they finish (in this process)."""
        pending = deque(tasks)
        workers = [Worker(self.models, self.cfg) for _ in range(min(self.jobs, len(tasks)))]
        try:
            while pending or any(w.task is not None for w in workers):
                for w in workers:
                    if w.ready and w.task is None and pending:
                        w.send(pending.popleft())
                busy = {w.inbox: w for w in workers if w.task is not None or not w.ready}
                for conn in wait(list(busy), timeout=0.2):
                    self._receive(busy[conn], workers, on_row)
                self._kill_overdue(workers, on_row)
        finally:
            for w in workers:
                w.stop()

    def _receive(self, w: Worker, workers: list[Worker], on_row: Callable[[PointRow], None]) -> None:
        task, elapsed = w.task, time.monotonic() - w.started
        try:
            row = _recv(w.inbox)
        except (EOFError, OSError, pickle.UnpicklingError):
            code = w.proc.poll()
            if task is None:  # it died before its first task: nothing will work
                raise RuntimeError(f"a compare worker process failed to start (exit code {code})") from None
            self._replace(w, workers)
            on_row(_failed(task, ERROR, elapsed, f"worker process died (exit code {code})"))
            return
        if row == "ready":
            w.ready = True
            return
        w.task = None
        on_row(row)

    def _kill_overdue(self, workers: list[Worker], on_row: Callable[[PointRow], None]) -> None:
        now = time.monotonic()
        for w in list(workers):
            task = w.task
            if task is not None and now - w.started > task.timeout + self.grace_s:
                self._replace(w, workers)
                on_row(_failed(task, "timeout", now - w.started,
                               f"killed after {task.timeout + self.grace_s:g} s"))

    def _replace(self, w: Worker, workers: list[Worker]) -> None:
        w.stop()
        workers[workers.index(w)] = Worker(self.models, self.cfg)


def _failed(task: PointTask, status: str, elapsed: float, reason: str) -> PointRow:
    return PointRow(task.model, task.method, task.point, task.label, status, False, elapsed, reason)


def _portable(model: Any) -> Any:
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

if __name__ == "__main__":  # a worker process of Pool
    import sys

    worker_main(int(sys.argv[1]), int(sys.argv[2]))
