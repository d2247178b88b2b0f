"""Run the certifications of a comparison: one by one in this process, or through an executor
of :mod:`bab.executors` (``jobs`` threads here, or Ray tasks) whose calls hand each point to a
worker process (:mod:`bab.compare.workers`, one torch thread) that is killed when the point
overruns its timeout (the command line always uses workers).

``points.csv`` is appended to as rows finish, so an interrupted run loses nothing; a rerun
reads it back and skips every (model, method, point) it already holds (``n/a`` and ``error``
rows are retried; the last row of a key wins).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bab.compare.points import ERROR, NA, PointRow, PointTask, certify_point, method_config
from bab.compare.workers import GRACE_S, WORKERS, PointRunner, models_payload

POINT_COLUMNS = ("model", "method", "point", "label", "status", "certified", "time_s", "reason")
RETRIED = (NA, ERROR)


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
              on_row: Callable[[PointRow], None], processes: bool = False, executor: Any = None,
              grace_s: float = GRACE_S) -> None:
    """Certify every task; ``models`` maps a name to its :class:`bab.compare.data.Model`.

    ``executor``: a :mod:`bab.executors` executor; a :class:`~bab.executors.RayExecutor` runs
    every point as a Ray task (the models go to the cluster once, by ``ray.put``). Else
    ``processes``: in ``jobs`` worker processes here; neither: here, one by one (only verify's
    own deadline applies). With worker processes a point that overruns ``timeout + grace_s``
    is killed and recorded as ``timeout``. Rows reach ``on_row`` in this process as they finish.
    """
    if not tasks:
        return
    if executor is None and not processes:
        _run_here(tasks, models, cfg, on_row)
        return
    from bab.executors import RayExecutor

    payload = models_payload(models, cfg)
    if isinstance(executor, RayExecutor):
        with executor.session() as ray:
            runner = PointRunner(ray.put(payload), grace_s)
            executor.run(runner, tasks, on_done=lambda _i, row: on_row(row))
        return
    _run_local(PointRunner(payload, grace_s), tasks, jobs, on_row, executor)


def _run_here(tasks: Sequence[PointTask], models: dict[str, Any], cfg: Any,
              on_row: Callable[[PointRow], None]) -> None:
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


def _run_local(runner: PointRunner, tasks: Sequence[PointTask], jobs: int,
               on_row: Callable[[PointRow], None], executor: Any) -> None:
    """Worker processes of this process, driven by ``executor`` (default: ``jobs`` threads,
    each with its worker); every worker is stopped at the end."""
    from bab.executors import ThreadExecutor

    WORKERS.own(runner.key)
    ex = executor or ThreadExecutor(jobs, cancel=lambda: WORKERS.kill_all(runner.key))
    try:
        ex.run(runner, tasks, on_done=lambda _i, row: on_row(row))
    finally:
        WORKERS.close(runner.key)


class Pool:
    """``jobs`` worker processes, one task each at a time; an overrunning worker is killed
    (its point is recorded as ``timeout``) and replaced."""

    def __init__(self, jobs: int, models: dict[str, Any], cfg: Any, grace_s: float = GRACE_S) -> None:
        self.jobs, self.models, self.cfg, self.grace_s = jobs, models, cfg, grace_s

    def run(self, tasks: Sequence[PointTask], on_row: Callable[[PointRow], None]) -> None:
        """Run every task; rows reach ``on_row`` as they finish (in this process)."""
        run_tasks(tasks, self.models, self.cfg, self.jobs, on_row, processes=True,
                  grace_s=self.grace_s)
