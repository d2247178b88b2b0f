"""The smoothing package's error type and its cheap parameter checks (numpy-free imports)."""

from __future__ import annotations

import math
from typing import Any


class SmoothingError(ValueError):
    """Invalid smoothing parameters or data (the CLI turns it into exit code 2)."""


def check_alpha(alpha: Any) -> float:
    """``alpha`` as a float in the open interval (0, 1), else :class:`SmoothingError`."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise SmoothingError(f"alpha must be in (0, 1), got {alpha!r}")
    return value


def check_count(name: str, value: Any) -> int:
    """A sample count or batch size: an integer >= 1."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:
        raise SmoothingError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
