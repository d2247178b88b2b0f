"""The training curve as a PNG (matplotlib, Agg backend): loss and accuracies per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bab.training.loop import EpochStats


def plot_curve(curve: Sequence[EpochStats], path: str | Path, title: str = "") -> Path:
    """Loss (left axis) and train/test accuracy plus the IBP-certified fraction (right
    axis, when recorded) against the epoch; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [s.epoch for s in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(epochs, [s.loss for s in curve], color="tab:red", label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        acc = ax.twinx()
        acc.plot(epochs, [s.train_acc for s in curve], "--", label="train accuracy")
        acc.plot(epochs, [s.test_acc for s in curve], label="test accuracy")
        if any(s.ibp_certified is not None for s in curve):
            acc.plot(epochs, [s.ibp_certified for s in curve], ":", label="IBP-certified (test)")
        acc.set_ylim(0, 1)
        acc.set_ylabel("fraction")
        lines = ax.get_legend_handles_labels()
        more = acc.get_legend_handles_labels()
        acc.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
        ax.set_title(title)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
