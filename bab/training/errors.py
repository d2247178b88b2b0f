"""The one error type of :mod:`bab.training`: bad user input, already put into words."""

from __future__ import annotations


class TrainingError(ValueError):
    """A bad preset, method, hyper-parameter or data file (the CLI exits 2 with the message)."""
