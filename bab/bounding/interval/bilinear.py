"""IBP rules of Mul, MatMul (two input-dependent operands) and Softmax."""

from __future__ import annotations
