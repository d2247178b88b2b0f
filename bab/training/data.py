"""Training data: scikit-learn's digits (the demo's fixed split) or a user ``.npz``.

A ``.npz`` holds ``x_train``, ``y_train``, ``x_test``, ``y_test``. Images are ``[N, C, H, W]``
or ``[N, H, W]`` (one channel); flat data is ``[N, d]``. Pixels must lie in [0, 1] (the
perturbation balls and the verifier's boxes are clipped to that range); labels are
non-negative integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bab.training.errors import TrainingError

KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    """A train/test split; ``x_*`` are float32 ``[N, *sample_shape]``, ``y_*`` int64 ``[N]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str = "digits"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` for images, ``(d,)`` for flat data."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        """Whether the samples are images (conv presets need them)."""
        return len(self.sample_shape) == 3

    @property
    def n_inputs(self) -> int:
        """Scalars per sample (the verifier's flat input size)."""
        return int(np.prod(self.sample_shape))


def digits() -> Dataset:
    """scikit-learn's 8x8 digits as ``[N, 1, 8, 8]`` images (the demo's fixed split)."""
    from bab.demo import load_digits_split

    d = load_digits_split(seed=0)
    img = lambda x: x.reshape(-1, 1, 8, 8)
    return Dataset(img(d.x_train), d.y_train, img(d.x_test), d.y_test, 10, "digits")


def _images(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as float32 ``[N, C, H, W]`` or ``[N, d]``; clear errors for anything else."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4) or x.shape[0] == 0 or 0 in x.shape:
        raise TrainingError(f"{name} must be [N, C, H, W], [N, H, W] or [N, d] with N > 0, "
                            f"got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TrainingError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise TrainingError(f"{name} must lie in [0, 1] (finite); got values in "
                            f"[{np.nanmin(x):g}, {np.nanmax(x):g}]")
    return x


def _labels(name: str, y: np.ndarray, n: int) -> np.ndarray:
    """``y`` as int64 ``[n]`` of non-negative integers."""
    if y.ndim != 1 or y.shape[0] != n:
        raise TrainingError(f"{name} must be a vector of {n} labels, got shape {list(y.shape)}")
    if np.issubdtype(y.dtype, np.integer):
        out = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        out = y.astype(np.int64)
    else:
        raise TrainingError(f"{name} must hold integer class labels, got dtype {y.dtype}"
                            + ("" if not np.issubdtype(y.dtype, np.floating) else
                               " with non-integer values"))
    if out.min() < 0:
        raise TrainingError(f"{name} must hold labels >= 0, got {int(out.min())}")
    return out


def load_npz(path: str | Path) -> Dataset:
    """A :class:`Dataset` from ``path`` (keys :data:`KEYS`); :class:`TrainingError` names
    the missing key or the wrong shape. A missing file raises ``FileNotFoundError``."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise TrainingError(f"cannot read {path} as .npz: {exc}") from exc
    if not hasattr(npz, "files"):  # a plain .npy array
        raise TrainingError(f"{path} is not an .npz archive (needs arrays {', '.join(KEYS)})")
    with npz:
        missing = [k for k in KEYS if k not in npz.files]
        if missing:
            raise TrainingError(f"{path} lacks array(s) {', '.join(missing)} (needs "
                                f"{', '.join(KEYS)})")
        arrays = {k: npz[k] for k in KEYS}
    x_tr, x_te = _images("x_train", arrays["x_train"]), _images("x_test", arrays["x_test"])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise TrainingError(f"x_train samples {list(x_tr.shape[1:])} and x_test samples "
                            f"{list(x_te.shape[1:])} differ in shape")
    y_tr = _labels("y_train", arrays["y_train"], len(x_tr))
    y_te = _labels("y_test", arrays["y_test"], len(x_te))
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    if n_classes < 2:
        raise TrainingError("the labels name fewer than 2 classes")
    return Dataset(x_tr, y_tr, x_te, y_te, n_classes, str(path))


def load_data(path: str | Path | None = None) -> Dataset:
    """The digits split (``path=None``) or the ``.npz`` at ``path``."""
    return digits() if path is None else load_npz(path)
