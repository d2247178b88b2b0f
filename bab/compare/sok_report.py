"""The ``report/`` folder of ``bab compare --sok``: both tables (Markdown + CSV), the heat map,
the certified-accuracy-vs-radius curves, ``settings.json`` (settings, software versions, wall
times) and ``README.md`` (which of the SoK's findings hold on this data, with the numbers)."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bab.compare.report import SummaryRow

DISTRIBUTIONS = ("torch", "numpy", "onnx", "onnxruntime", "ortools", "gurobipy", "z3-solver",
                 "cvxpy", "scs", "clarabel", "scipy", "scikit-learn")


@dataclass(frozen=True)
class SkippedRow(SummaryRow):
    """A cell the ``--sok`` run did not compute on purpose (shown as ``skipped: reason``)."""

    def cell(self) -> str:
        """``"skipped: reason"``."""
        return f"skipped: {self.reason}".replace("|", "\\|")


def versions() -> dict[str, Any]:
    """Python, the packages of :data:`DISTRIBUTIONS` (None: not installed), git commit, CPUs."""
    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["git_commit"], out["git_dirty"] = _git()
    out["cpu_count"] = os.cpu_count()
    out["cpus_usable"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return out


def _git() -> tuple[str | None, bool | None]:
    """The commit of the checkout this code runs from, and whether tracked files differ."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if head.returncode != 0:
        return None, None
    return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Any]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(r.csv_cells() for r in rows)
    return path


def write_report(result: Any) -> list[Path]:
    """Every file of the report under ``result.settings.output``; returns their paths."""
    out = result.settings.output
    files = write_deterministic(result, out) + write_smoothing(result, out)
    path = out / "settings.json"
    settings = {"settings": result.settings.to_json(), "zoo": [vars(m) for m in result.zoo],
                "times_s": result.times, "runs": _runs(path, result.times), "versions": versions(),
                "command": " ".join(["bab", *sys.argv[1:]])}
    path.write_text(json.dumps(settings, indent=1, default=str) + "\n", encoding="utf-8")
    files.append(path)
    from bab.compare.findings import evaluate
    from bab.compare.sok_readme import readme

    found = evaluate(result)
    path = out / "README.md"
    path.write_text(readme(result, found, settings), encoding="utf-8")
    files.append(path)
    return files


def _runs(path: Path, times: dict[str, float]) -> list[dict[str, Any]]:
    """The wall times of every invocation into this folder, this one last."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    runs = old.get("runs") or ([{"times_s": old["times_s"]}] if "times_s" in old else [])
    return [*runs, {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "times_s": times}]


def header(result: Any) -> str:
    """The line above the deterministic table."""
    s = result.settings
    return (f"l-inf ball, eps = {s.eps:g} (the training eps), clipped to [0, 1]; first {s.limit} "
            f"digits test points; timeout {s.timeout:g} s per point; falsification off. "
            f"Cells: certified % (median time per point).")


def write_deterministic(result: Any, out: Path) -> list[Path]:
    """``summary.csv``, ``table.md`` and ``heatmap.png`` over every model (points.csv is
    written by the comparison itself)."""
    from bab.compare.report import heatmap, markdown, write_summary

    write_summary(result.rows, out / "summary.csv")
    (out / "table.md").write_text(markdown(result.rows, header(result)), encoding="utf-8")
    s = result.settings
    heatmap(result.rows, out / "heatmap.png", f"l-inf eps = {s.eps:g}, {s.limit} points")
    return [out / "points.csv", out / "summary.csv", out / "table.md", out / "heatmap.png"]


def write_smoothing(result: Any, out: Path) -> list[Path]:
    """``smoothing_summary.csv``, ``smoothing_points.csv``, ``smoothing_table.md`` (one table
    per noise model) and ``smoothing_curves.png``."""
    from bab.compare.smoothing import POINT_COLUMNS, SUMMARY_COLUMNS, markdown_table

    s = result.settings
    files = [_write_csv(out / "smoothing_summary.csv", SUMMARY_COLUMNS, result.smoothing_rows),
             _write_csv(out / "smoothing_points.csv", POINT_COLUMNS, result.smoothing_points)]
    parts = []
    for m in [m for m in result.zoo if m.noise is not None]:
        rows = [r for r in result.smoothing_rows if r.model == m.name]
        norm = rows[0].norm if rows else "?"
        cfg = {"norm": norm, "sigma": m.sigma, "n0": s.n0, "n": s.n, "alpha": s.alpha}
        parts.append(f"### {m.name} ({m.noise} noise, l{norm}, first {s.smoothing_limit} points)\n\n"
                     + markdown_table(rows, cfg))
    table = out / "smoothing_table.md"
    table.write_text("\n".join(parts), encoding="utf-8")
    files += [table, plot_curves(result, out / "smoothing_curves.png")]
    return files


def plot_curves(result: Any, path: Path) -> Path:
    """Certified accuracy against radius: one panel per noise model, one curve per approach."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bab.smoothing.data import SampleRow
    from bab.smoothing.plot import accuracy_curve

    models = [m for m in result.zoo if m.noise is not None]
    fig = Figure(figsize=(6.0, 3.4 * max(len(models), 1)), dpi=110)
    FigureCanvasAgg(fig)
    for k, m in enumerate(models):
        ax = fig.add_subplot(max(len(models), 1), 1, k + 1)
        pts = [p for p in result.smoothing_points if p.model == m.name]
        for approach in dict.fromkeys(p.approach for p in pts):
            rows = [SampleRow(p.point, p.label, p.prediction, p.radius, p.correct, 0.0, p.pA_lower)
                    for p in pts if p.approach == approach]
            grid, acc = accuracy_curve(rows)
            ax.step(grid, acc, where="post", label=approach)
        norm = "2" if m.noise == "gaussian" else "1"
        ax.set_xlabel(f"radius (l{norm})")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{m.name}: {m.noise} noise, scale {m.sigma:.3g}", fontsize=10)
        if pts:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path))
    return path
