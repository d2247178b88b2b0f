"""Replay of the ORIGINAL ONNX file with onnxruntime (ground truth for checks)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from onnx_models.source import PathLike, read_model_bytes

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
               "tensor(float16)": np.float16}


class OnnxReference:
    """An onnxruntime session on the original model, fed with flat VNN-LIB ordered inputs."""

    def __init__(self, path: PathLike, threads: int = 1) -> None:
        import onnxruntime as ort  # lazy: keep it off start-up

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, min(int(threads), 2))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(read_model_bytes(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        inp = inputs[0]
        self.input_name: str = inp.name
        self.output_name: str = outputs[0].name
        self.dtype = np.dtype(_ORT_DTYPES.get(inp.type, np.float32))
        dims: list[Any] = list(inp.shape)
        self.input_shape: tuple[int, ...] = tuple(d if isinstance(d, int) and d > 0 else 1
                                                  for d in dims)
        self.has_batch_dim = len(dims) >= 2 and (not isinstance(dims[0], int) or dims[0] == 1)
        self._try_batch = self.has_batch_dim and not isinstance(dims[0], int)
        self.n_inputs = math.prod(self.input_shape)

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        feed = {self.input_name: x.reshape(self.input_shape).astype(self.dtype, copy=False)}
        return np.asarray(self.session.run([self.output_name], feed)[0])

    def run(self, x: np.ndarray) -> np.ndarray:
        """Flat ``[B, n_in]`` (or ``[n_in]``) inputs -> flat float64 ``[B, n_out]`` outputs."""
        xs = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if xs.shape[1] != self.n_inputs:
            raise ValueError(f"expected {self.n_inputs} inputs per sample, got {xs.shape[1]}")
        xs = xs.astype(self.dtype)
        if self._try_batch and xs.shape[0] > 1:
            try:
                feed = {self.input_name: xs.reshape((xs.shape[0], *self.input_shape[1:]))}
                y = np.asarray(self.session.run([self.output_name], feed)[0])
                if y.shape[0] == xs.shape[0]:
                    return y.reshape(xs.shape[0], -1).astype(np.float64)
            except Exception:  # a graph with a hard-coded batch size: go sample by sample
                pass
            self._try_batch = False
        return np.stack([self._run_one(row).reshape(-1) for row in xs]).astype(np.float64)


def compare(network: Any, reference: OnnxReference, x: np.ndarray) -> tuple[float, float]:
    """Max abs and max relative (``|a-b| / (1+|ref|)``) difference on inputs ``x``."""
    got = network.evaluate(np.atleast_2d(x))
    want = reference.run(x)
    diff = np.abs(got - want)
    return float(diff.max(initial=0.0)), float((diff / (1.0 + np.abs(want))).max(initial=0.0))
