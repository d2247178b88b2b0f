"""Errors raised by the ONNX front end."""

from __future__ import annotations


class OnnxModelError(ValueError):
    """An ONNX file that cannot be turned into a verifiable network (one-line message)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
