"""Backward rules of the layers with two input-dependent operands (Mul, MatMul) and of
Softmax: relaxations built from the operands' intervals (``Context.box``)."""

from __future__ import annotations
