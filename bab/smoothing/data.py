"""Data sets for ``bab smooth`` (``.npz`` with ``x`` and ``y``), per-sample rows, CSV output
and certified accuracy."""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bab.smoothing.errors import SmoothingError

TABLE_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # Cohen et al. 2019, Table 1
CSV_HEADER = ("index", "label", "prediction", "radius", "correct", "time", "pA_lower")


def load_npz(path: str | Path, n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as ``[N, n_inputs]`` float and ``y`` as ``[N]`` int64 from ``path``.

    ``x`` may be ``N x n_inputs`` or ``N x (input shape)``. Raises FileNotFoundError or
    :class:`SmoothingError` with a message naming the file and the problem.
    """
    name = Path(path).name
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise SmoothingError(f"{name}: not an .npz archive (expected arrays x and y)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in ("x", "y") if key not in npz.files]
            if missing:
                raise SmoothingError(f"{name}: no array named {' or '.join(missing)} "
                                     f"(found: {', '.join(npz.files) or 'nothing'})")
            x, y = np.asarray(npz["x"]), np.asarray(npz["y"])
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, (SmoothingError, FileNotFoundError, IsADirectoryError)):
            raise
        raise SmoothingError(f"{name}: not a readable .npz file ({exc})") from exc
    return _check_arrays(name, x, y, n_inputs)


def _check_arrays(name: str, x: np.ndarray, y: np.ndarray,
                  n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape and type checks for :func:`load_npz`."""
    if x.ndim < 2 or x.shape[0] == 0:
        raise SmoothingError(f"{name}: x must be N x (inputs) with N >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise SmoothingError(f"{name}: x must hold real numbers, got dtype {x.dtype}")
    features = math.prod(x.shape[1:])
    if features != n_inputs:
        raise SmoothingError(f"{name}: x has {features} features per sample but the model "
                             f"takes {n_inputs}")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != x.shape[0]:
        raise SmoothingError(f"{name}: y must hold one label per sample ({x.shape[0]}), "
                             f"got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.round(y) == y)):
            raise SmoothingError(f"{name}: y must hold integer class labels, got {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise SmoothingError(f"{name}: x contains NaN or infinite values")
    return x.reshape(x.shape[0], n_inputs), y.astype(np.int64)


@dataclass(frozen=True)
class SampleRow:
    """One certified sample: ``prediction`` is -1 when CERTIFY abstained."""

    index: int
    label: int
    prediction: int
    radius: float
    correct: bool
    time_s: float
    pA_lower: float

    def csv_cells(self) -> list[str]:
        """The cells in :data:`CSV_HEADER` order."""
        return [str(self.index), str(self.label), str(self.prediction), f"{self.radius:.6g}",
                str(int(self.correct)), f"{self.time_s:.4f}", f"{self.pA_lower:.6g}"]


class CsvWriter:
    """Writes the header, then one flushed row per sample (a crash keeps finished rows)."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.fh)
        self.writer.writerow(CSV_HEADER)

    def write(self, row: SampleRow) -> None:
        """Append ``row``."""
        self.writer.writerow(row.csv_cells())
        self.fh.flush()

    def close(self) -> None:
        """Close the file."""
        self.fh.close()


def certified_accuracy(rows: Sequence[SampleRow], radii: Iterable[float]) -> list[float]:
    """For each ``r``: the fraction of samples classified correctly with radius ``>= r``
    (Cohen et al.'s certified accuracy; abstentions count as wrong)."""
    if not rows:
        return [0.0 for _ in radii]
    correct = np.array([r.correct for r in rows], dtype=bool)
    radius = np.array([r.radius for r in rows], dtype=np.float64)
    return [float(np.mean(correct & (radius >= r))) for r in radii]


def parse_radii(text: str) -> tuple[float, ...]:
    """``"0,0.25,0.5"`` -> ``(0.0, 0.25, 0.5)``; each radius finite and >= 0."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise SmoothingError(f"--radii: expected comma-separated numbers, got {text!r}") from exc
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise SmoothingError(f"--radii: expected radii >= 0, got {text!r}")
    return values
