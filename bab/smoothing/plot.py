"""Certified accuracy against radius, drawn with matplotlib's Agg canvas (no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bab.smoothing.data import SampleRow, certified_accuracy


def accuracy_curve(rows: Sequence[SampleRow], points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Radii from 0 to a bit past the largest certified radius, and certified accuracy there."""
    top = max([r.radius for r in rows if np.isfinite(r.radius)] + [0.0])
    grid = np.linspace(0.0, max(top * 1.1, 0.5), points)
    return grid, np.array(certified_accuracy(rows, grid))


def plot_certified_accuracy(rows: Sequence[SampleRow], path: str | Path, title: str = "",
                            norm: int = 2) -> Path:
    """Write the certified-accuracy curve of ``rows`` to ``path`` (format from the suffix)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid, acc = accuracy_curve(rows)
    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.step(grid, acc, where="post", color="tab:blue")
    ax.set_xlabel(f"radius (l{norm})")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlim(0.0, grid[-1])
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"certified accuracy ({len(rows)} samples)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path
