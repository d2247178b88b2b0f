"""Replay a candidate counterexample on the original ONNX file with onnxruntime.

A candidate becomes a ``sat`` answer only here: its input is rounded to the model's dtype
*towards the inside* of the box, the original model is executed with onnxruntime, and the
output must satisfy the clause strictly (no tolerance), which is stricter than the
competition checker (``A y <= b + 1e-4``). A region with an l_p ball checks the ball too: the
candidate is first pulled onto the ball (a no-op for points inside it) and after rounding must
lie within ``||x - center||_p <= eps + 1e-6``, the box's tolerance.
"""

from __future__ import annotations

import numpy as np

from bab.result import Counterexample
from vnnlib.spec import Region


def round_into_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast ``x`` to ``dtype``, stepping any coordinate that left ``[lower, upper]`` back inside.

    A coordinate whose interval holds no representable value (a zero-width decimal bound)
    becomes the nearest representable value to the bound.
    """
    dtype = np.dtype(dtype)
    lo_c, hi_c = lower.astype(dtype), upper.astype(dtype)
    # smallest representable value >= lower, largest <= upper
    lo_in = np.where(lo_c.astype(np.float64) >= lower, lo_c, np.nextafter(lo_c, dtype.type(np.inf)))
    hi_in = np.where(hi_c.astype(np.float64) <= upper, hi_c, np.nextafter(hi_c, dtype.type(-np.inf)))
    xc = np.asarray(x, dtype=np.float64).astype(dtype)
    xc = np.minimum(np.maximum(xc, lo_in), hi_in)
    empty = lo_in.astype(np.float64) > hi_in.astype(np.float64)
    return np.where(empty, lo_c, xc).astype(dtype)


def _onto_ball(x: np.ndarray, region: Region) -> np.ndarray:
    """``x`` projected onto the region's ball (unchanged without one, or inside it)."""
    ball = getattr(region, "ball", None)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if ball is None or ball.contains(x):
        return x
    import torch

    from bab.bounding.balls import project

    t = torch.as_tensor(x)[None]
    out = project(t, torch.as_tensor(ball.center)[None], torch.tensor([float(ball.eps)]), ball.p)
    return out[0].numpy()


def _toward(xc: np.ndarray, x: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Rounded coordinates that moved away from ``center`` stepped one value back towards it,
    so rounding does not push a point on the ball's surface out of the ball."""
    away = np.abs(xc.astype(np.float64) - center) > np.abs(x - center)
    target = np.where(center > xc.astype(np.float64), np.inf, -np.inf).astype(xc.dtype)
    return np.where(away, np.nextafter(xc, target), xc).astype(xc.dtype)


class Replayer:
    """Checks candidates against onnxruntime; counts rejections."""

    def __init__(self, reference, regions: tuple[Region, ...], dtype: str) -> None:
        self.reference = reference
        self.regions = regions
        self.dtype = np.dtype(dtype)
        self.rejected = 0

    def check(self, x: np.ndarray, region: int) -> Counterexample | None:
        """A confirmed counterexample for ``x`` in ``regions[region]``, or ``None``."""
        reg = self.regions[region]
        x = _onto_ball(x, reg)
        xc = round_into_box(x, reg.lower, reg.upper, self.dtype)
        if getattr(reg, "ball", None) is not None:
            xc = round_into_box(_toward(xc, x, reg.ball.center), reg.lower, reg.upper, self.dtype)
        y = self.reference.run(xc.astype(np.float64)[None])[0]
        if np.all(np.isfinite(y)) and reg.contains(xc, tol=1e-6):
            for k, clause in enumerate(reg.clauses):
                if clause.holds(y):
                    return Counterexample(x=xc.astype(np.float64), y=y, region=region, clause=k,
                                          dtype=self.dtype.name)
        self.rejected += 1
        return None
