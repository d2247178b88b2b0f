"""The comparison's outputs from its point rows: summary rows, ``summary.csv``, the Markdown
table (``table.md``) and the heat map (``heatmap.png``)."""

from __future__ import annotations

import csv
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bab.compare.points import MISCLASSIFIED, NA, PointRow

SUMMARY_COLUMNS = ("model", "method", "category", "certified", "total", "median_time_s")
EXTRA_ROWS = {"pgd": "upper bound: PGD attack", "clean": "clean accuracy"}
REASON_CHARS = 70


@dataclass(frozen=True)
class SummaryRow:
    """One cell of the table: ``certified`` of ``total`` points (``None`` when n/a)."""

    model: str
    method: str
    category: str
    certified: int | None
    total: int
    median_time_s: float | None
    reason: str = ""

    @property
    def available(self) -> bool:
        """False for an n/a cell."""
        return self.certified is not None

    @property
    def percent(self) -> float | None:
        """Certified share in percent (``None`` when n/a)."""
        if self.certified is None:
            return None
        return 100.0 * self.certified / self.total if self.total else 0.0

    def cell(self) -> str:
        """``"certified % (median time s)"`` or ``"n/a (reason)"``."""
        if self.certified is None:
            reason = self.reason if len(self.reason) <= REASON_CHARS else self.reason[:REASON_CHARS - 1] + "…"
            return f"n/a ({reason})".replace("|", "\\|")
        time = "-" if self.median_time_s is None else f"{self.median_time_s:.2f} s"
        return f"{self.percent:.1f} % ({time})"

    def csv_cells(self) -> list[str]:
        """The cells in :data:`SUMMARY_COLUMNS` order (empty certified/time when n/a)."""
        certified = "" if self.certified is None else str(self.certified)
        median = "" if self.median_time_s is None else f"{self.median_time_s:.4f}"
        return [self.model, self.method, self.category, certified, str(self.total), median]


def category_of(method: str) -> str:
    """The SoK category of a method (or of the ``pgd`` / ``clean`` rows)."""
    if method in EXTRA_ROWS:
        return EXTRA_ROWS[method]
    from bab.taxonomy import info

    return info(method).category.value


def summarise(model: str, method: str, rows: Sequence[PointRow], total: int) -> SummaryRow:
    """One cell from the rows of (model, method). n/a when every point that ran was n/a."""
    ran = [r for r in rows if r.status != MISCLASSIFIED]
    category = category_of(method)
    if ran and all(r.status == NA for r in ran):
        return SummaryRow(model, method, category, None, total, None, ran[0].reason)
    timed = [r.time_s for r in ran if r.status != NA]
    median = statistics.median(timed) if timed else None
    return SummaryRow(model, method, category, sum(r.certified for r in rows), total, median)


def summary_rows(models: Sequence[str], methods: Sequence[str], points: Sequence[int],
                 rows: dict[tuple[str, str, int], PointRow]) -> list[SummaryRow]:
    """Cells for every model x (methods in table order, then pgd, then clean)."""
    from bab.taxonomy import ordered

    names = [m.name for m in ordered(list(methods))] + ["pgd", "clean"]
    out = []
    for model in models:
        for method in names:
            got = [rows[(model, method, p)] for p in points if (model, method, p) in rows]
            out.append(summarise(model, method, got, len(points)))
    return out


def write_summary(rows: Sequence[SummaryRow], path: Path) -> None:
    """``summary.csv`` with exactly :data:`SUMMARY_COLUMNS`, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SUMMARY_COLUMNS)
        writer.writerows(r.csv_cells() for r in rows)
    os.replace(tmp, path)


def _grid(rows: Sequence[SummaryRow]) -> tuple[list[str], list[str], dict[tuple[str, str], SummaryRow]]:
    models = list(dict.fromkeys(r.model for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    return models, methods, {(r.model, r.method): r for r in rows}


def markdown(rows: Sequence[SummaryRow], header: str = "") -> str:
    """Rows = methods grouped by SoK category, columns = models, plus PGD and clean rows."""
    models, methods, cells = _grid(rows)
    lines = [header, ""] if header else []
    lines.append("| category | method | " + " | ".join(models) + " |")
    lines.append("|---|---|" + "---|" * len(models))
    last = None
    for method in methods:
        cat = cells[(models[0], method)].category if models else category_of(method)
        shown = cat if cat != last else ""
        last = cat
        lines.append(f"| {shown} | {method} | " + " | ".join(cells[(m, method)].cell() for m in models) + " |")
    return "\n".join(lines) + "\n"


def heatmap(rows: Sequence[SummaryRow], path: Path, title: str = "") -> Path:
    """Certified % per (method, model) as a heat map (grey: n/a), matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, methods, cells = _grid(rows)
    values = np.array([[np.nan if cells[(mo, me)].percent is None else cells[(mo, me)].percent
                        for mo in models] for me in methods], dtype=float)
    fig, ax = plt.subplots(figsize=(3.5 + 1.3 * len(models), 1.2 + 0.4 * len(methods)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for i in range(len(methods)):
        for j in range(len(models)):
            text = "n/a" if np.isnan(values[i, j]) else f"{values[i, j]:.0f}"
            colour = "black" if np.isnan(values[i, j]) or values[i, j] > 60 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, label="certified %")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
