"""Sound linear relaxations of the general-graph elementwise nonlinearities (Exp, Log, Sqrt,
Reciprocal, Pow, Sin, Cos, Sign, Floor), registered into ``relax.UNARY``."""

from __future__ import annotations
