"""IBP rules of the general-graph elementwise nonlinearities (exact ranges on each interval)."""

from __future__ import annotations
