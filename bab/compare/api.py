"""The PyTorch-native API: ``bab.certify`` (one point) and ``bab.compare`` (the SoK table).

``compare`` certifies the first ``limit`` points of a data set with every method on every
model (falsification off: each method's own certification), adds the ``pgd`` and ``clean``
rows, and, given an output folder, writes ``points.csv``, ``summary.csv``, ``table.md``,
``heatmap.png`` and ``run.json`` (the settings; a resumed run must use the same ones).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bab.compare import data as D
from bab.compare.points import MISCLASSIFIED, PointRow, PointTask, clean_rows, pgd_rows, probe
from bab.compare.report import SummaryRow, heatmap, markdown, summary_rows, write_summary
from bab.compare.runner import RETRIED, PointsFile, read_points, rewrite_points, run_tasks


@dataclass(frozen=True)
class Certificate:
    """The answer of :func:`certify` for one point."""

    certified: bool
    status: Any  # bab.result.Status
    method: str
    time_s: float
    reason: str = ""
    counterexample: Any = None  # bab.result.Counterexample when status is SAT


def certify(model: Any, x: Any, label: int, *, eps: float, norm: str = "inf",
            method: str = "default", timeout: float = 60.0, input_shape: Any = None,
            clip: tuple[float, float] | None = None, falsify: bool = True,
            config: Any = None) -> Certificate:
    """Is every point of the l_p ball (``norm``: inf, 2 or 1) of radius ``eps`` around ``x`` (intersected with
    ``clip``) classified as ``label``? ``model``: an ONNX path, a Network, or a
    ``torch.nn.Module`` with ``input_shape``; a counterexample is replayed on the model itself."""
    from bab.api import verify
    from bab.compare.points import method_config, robustness_spec
    from bab.config import Config
    from bab.taxonomy import info

    norm = D.check_norm(norm)
    eps = D.check_eps(eps)
    info(method)
    m = D.resolve(model, input_shape)
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1)
    if x.size != m.network.n_inputs:
        raise D.CompareInputError(f"x has {x.size} values but the model takes {m.network.n_inputs} inputs")
    if not 0 <= int(label) < m.network.n_outputs:
        raise D.CompareInputError(f"label {label} is not one of the model's {m.network.n_outputs} classes")
    lo, hi = D.ball(x, eps, clip)
    spec = robustness_spec(lo, hi, int(label), m.network.n_outputs, D.lp_ball(x, eps, norm))
    cfg = method_config(config or Config(), method, timeout, falsify)
    res = verify(m.network, spec, cfg, timeout, reference=D.reference_of(m))
    return Certificate(res.status.value == "unsat", res.status, method, res.time_s, res.reason,
                       res.counterexample)


@dataclass
class CompareResult:
    """A finished comparison: one summary row per (model, method) and the point rows."""

    rows: list[SummaryRow]
    points: list[PointRow]
    settings: dict = field(default_factory=dict)
    verified: int = 0  # verify calls made by this run (0 when everything was resumed)

    def markdown(self) -> str:
        """The Markdown table (methods grouped by SoK category x models)."""
        return markdown(self.rows, header_line(self.settings))

    def to_dataframe(self) -> Any:
        """The summary as a pandas DataFrame (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("CompareResult.to_dataframe needs pandas (pip install pandas)") from exc
        return pd.DataFrame([{"model": r.model, "method": r.method, "category": r.category,
                              "certified": r.certified, "total": r.total,
                              "median_time_s": r.median_time_s, "percent": r.percent,
                              "reason": r.reason} for r in self.rows])

    def cell(self, model: str, method: str) -> SummaryRow:
        """The summary row of (model, method)."""
        return next(r for r in self.rows if r.model == model and r.method == method)


def header_line(settings: dict) -> str:
    """One line describing the run (shown above the table)."""
    if not settings:
        return ""
    clip = settings.get("clip")
    return (f"l-{settings['norm']} ball, eps = {settings['eps']:g}, clipped to "
            f"[{clip[0]:g}, {clip[1]:g}]; first {settings['points']} points of {settings['data']}; "
            f"timeout {settings['timeout']:g} s per point; falsification off. "
            f"Cells: certified % (median time per point).")


def method_list(methods: str | Sequence[str]) -> list[str]:
    """``"all"``, a comma-separated string or a list -> known method names (table order)."""
    from bab.taxonomy import BY_NAME, ordered

    if isinstance(methods, str):
        if methods.strip() == "all":
            return [m.name for m in ordered()]
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in BY_NAME]
    if unknown or not methods:
        raise D.CompareInputError(f"unknown method {', '.join(unknown) or '(none given)'}; "
                                  f"available: all, {', '.join(BY_NAME)}")
    return [m.name for m in ordered(list(dict.fromkeys(methods)))]


def _models(models: Any, input_shape: Any) -> list[D.Model]:
    items = list(models.items()) if isinstance(models, dict) else [(None, m) for m in models]
    if not items:
        raise D.CompareInputError("no models given")
    out = [D.resolve(m, input_shape, name) for name, m in items]
    names = [m.name for m in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise D.CompareInputError(f"two models are named {dupes[0]} (names come from file stems)")
    return out


def _data(data: Any) -> tuple[np.ndarray, np.ndarray, str]:
    if isinstance(data, (str, Path)):
        x, y = D.load_points(data)
        return x, y, Path(data).name
    x, y = data
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else x
    y = y.detach().cpu().numpy() if hasattr(y, "detach") else y
    return (*D.check_points(x, y), "arrays")


def _check_resume(output: Path, settings: dict) -> None:
    path = output / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        keys = ("eps", "norm", "clip", "timeout")
        diff = [k for k in keys if k in old and old[k] != settings[k]]
        if diff:
            raise D.CompareInputError(f"{output} holds a run with other settings ({diff[0]}: {old[diff[0]]} "
                                      f"vs {settings[diff[0]]}); use another --output")
    path.write_text(json.dumps(settings, indent=1) + "\n")


def compare(models: Any, data: Any, *, eps: float, norm: str = "inf", methods: Any = "all",
            limit: int = 100, timeout: float = 60.0, jobs: int = 1, output: str | Path | None = None,
            input_shape: Any = None, config: Any = None, seed: int = 0, processes: bool | None = None,
            on_row: Callable[[PointRow], None] | None = None, executor: Any = None) -> CompareResult:
    """Certified accuracy of every method on every model (see the module docstring).

    ``models``: a list (or name -> model dict) of ONNX paths, Networks or torch modules
    (``input_shape`` for those); ``data``: an ``.npz`` path or ``(x, y)`` arrays.
    ``processes``: certify in worker processes that are killed when a point overruns its
    timeout (default: when ``jobs > 1``; else in this process, where only verify's own
    deadline applies). ``executor``: a :mod:`bab.executors` executor that runs the points
    instead (``RayExecutor``: one Ray task per point, each with a worker process killed on
    overrun; docs/cluster.md); the rows are the same.
    """
    from bab.config import Config

    norm = D.check_norm(norm)
    eps = D.check_eps(eps)
    names = method_list(methods)
    if int(limit) < 1 or not float(timeout) > 0 or int(jobs) < 1:
        raise D.CompareInputError("limit and jobs must be >= 1 and timeout > 0")
    x, y, data_name = _data(data)
    clip = D.clip_range(x)
    x, y = x[: int(limit)], y[: int(limit)]
    loaded = _models(models, input_shape)
    for m in loaded:
        D.check_model_fits(m, x.shape[1], y)
    settings = {"eps": eps, "norm": norm, "clip": list(clip), "timeout": float(timeout),
                "points": len(y), "data": data_name, "seed": seed}
    out = Path(output) if output is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _check_resume(out, settings)
    run = _Run(loaded, x, y, eps, clip, float(timeout), seed, out, on_row)
    run.norm = norm
    run.executor = executor
    run.execute(names, config or Config(), int(jobs), int(jobs) > 1 if processes is None else processes)
    return run.result(names, settings)


class _Run:
    """The state of one comparison run (rows so far, the points file)."""

    def __init__(self, models: list[D.Model], x: np.ndarray, y: np.ndarray, eps: float,
                 clip: tuple[float, float], timeout: float, seed: int, out: Path | None,
                 on_row: Callable[[PointRow], None] | None) -> None:
        self.models, self.x, self.y, self.eps, self.clip = models, x, y, eps, clip
        self.norm = "inf"
        self.timeout, self.seed, self.out, self.on_row = timeout, seed, out, on_row
        self.rows = read_points(out / "points.csv") if out is not None else {}
        self.file = PointsFile(out / "points.csv" if out is not None else None)
        self.verified = 0
        self.executor: Any = None  # a bab.executors executor for the points (None: see run_tasks)

    def missing(self, model: str, method: str) -> list[int]:
        """Points of (model, method) without a final row yet."""
        return [i for i in range(len(self.y))
                if (row := self.rows.get((model, method, i))) is None or row.status in RETRIED]

    def add(self, row: PointRow) -> None:
        """Record one finished row (file, memory, callback)."""
        self.rows[row.key] = row
        self.file.write([row])
        if self.on_row is not None:
            self.on_row(row)

    def execute(self, methods: list[str], cfg: Any, jobs: int, processes: bool) -> None:
        """Clean and PGD rows, n/a rows, then every missing certification."""
        tasks: list[PointTask] = []
        try:
            for m in self.models:
                ref = D.reference_of(m)
                for row in clean_rows(m.name, ref, self.x, self.y, self.missing(m.name, "clean")):
                    self.add(row)
                correct = {i: self.rows[(m.name, "clean", i)].certified for i in range(len(self.y))}
                for row in pgd_rows(m.name, m.network, ref, self.x, self.y, self.missing(m.name, "pgd"),
                                    correct, self.eps, self.clip, self.seed, self.norm):
                    self.add(row)
                for method in methods:
                    tasks += self._tasks(m, method, correct)
            self.verified = len(tasks)
            run_tasks(tasks, {m.name: m for m in self.models}, cfg, jobs, self.add, processes,
                      self.executor)
        finally:
            self.file.close()

    def _tasks(self, m: D.Model, method: str, correct: dict[int, bool]) -> list[PointTask]:
        todo = self.missing(m.name, method)
        for i in [i for i in todo if not correct[i]]:
            self.add(PointRow(m.name, method, i, int(self.y[i]), MISCLASSIFIED, False, 0.0))
        todo = [i for i in todo if correct[i]]
        if not todo:
            return []
        reason = probe(m.network, method)
        if reason is not None:
            for i in todo:
                self.add(PointRow(m.name, method, i, int(self.y[i]), "n/a", False, 0.0, reason))
            return []
        tasks = []
        for i in todo:
            lo, hi = D.ball(self.x[i], self.eps, self.clip)
            tasks.append(PointTask(m.name, method, i, int(self.y[i]), lo, hi, self.timeout,
                                   D.lp_ball(self.x[i], self.eps, self.norm)))
        return tasks

    def result(self, methods: list[str], settings: dict) -> CompareResult:
        """Summary rows over the current models, methods and points; files when asked."""
        names = [m.name for m in self.models]
        points = list(range(len(self.y)))
        rows = summary_rows(names, methods, points, self.rows)
        keep = [r for r in self.rows.values() if r.model in names and r.point < len(self.y)]
        res = CompareResult(rows, keep, settings, self.verified)
        if self.out is not None:
            rewrite_points(self.out / "points.csv", sorted(self.rows.values(), key=_order))
            write_summary(rows, self.out / "summary.csv")
            (self.out / "table.md").write_text(res.markdown(), encoding="utf-8")
            heatmap(rows, self.out / "heatmap.png",
                    f"l-{settings['norm']} eps = {settings['eps']:g}, {settings['points']} points")
        return res


def _order(row: PointRow) -> tuple[str, str, int]:
    return row.model, row.method, row.point
