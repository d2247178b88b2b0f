"""Extra linear rows appended to a lowered model (the hook the multi-neuron bounder uses).

:func:`add_rows` returns a copy of a :class:`~encoders.model.LinearModel` with rows
``lo <= A v <= hi`` appended (``A`` over the model's variables; columns beyond the encoding's
are allowed when the model already has them). The variables, objective and clause column are
unchanged, so the result solves like the original with the extra cuts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from encoders.encoding import resize
from encoders.model import LinearModel


def add_rows(model: LinearModel, A: sp.spmatrix, lo: np.ndarray, hi: np.ndarray) -> LinearModel:
    """``model`` with the rows ``lo <= A v <= hi`` appended."""
    A = sp.csr_matrix(A)
    if A.shape[1] > model.n_vars:
        raise ValueError(f"extra rows have {A.shape[1]} columns, the model {model.n_vars} variables")
    lo, hi = np.asarray(lo, np.float64).reshape(-1), np.asarray(hi, np.float64).reshape(-1)
    if not (lo.size == hi.size == A.shape[0]):
        raise ValueError("extra rows: A, lo and hi disagree on the number of rows")
    if A.shape[0] == 0:
        return model
    return dataclasses.replace(
        model, A=sp.vstack([model.A, resize(A, model.n_vars)]).tocsr(),
        row_lo=np.concatenate([model.row_lo, lo]), row_hi=np.concatenate([model.row_hi, hi]))
