"""Exact sparse affine maps of the network's affine and shape layers (float64).

Every affine node ``y = M x + b`` (flat, C order) is turned into a ``scipy.sparse`` CSR matrix
``M`` and an offset ``b``. Linear and ElementwiseAffine layers are read directly; Reshape,
Transpose, Pad and Gather (Slice, Split, Expand, Tile, nearest Resize) become index maps
(pushed through the layer as index tensors, so exact); ReduceSum is a 0/1 matrix built from the
output position of every input; Conv2d, ConvTranspose2d and AvgPool2d are unrolled by pushing
chunks of basis vectors through the bias-free layer in float64 (each output is then a sum of
single weights times 1.0, so exact as well). Maps are cached per layer object.
:func:`maxpool_windows` gives the input indices of each max-pool window; :func:`concat_index`
the source of every output of a Concat (several inputs).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from onnx_models import layers as L

AffineMap = tuple[sp.csr_matrix, np.ndarray]
AFFINE = (L.Linear, L.Conv2d, L.ElementwiseAffine, L.AvgPool2d, L.Pad, L.Reshape, L.Transpose,
          L.Gather, L.ReduceSum, L.ConvTranspose2d)
_CACHE: weakref.WeakKeyDictionary[L.Layer, dict] = weakref.WeakKeyDictionary()
_CHUNK_ELEMENTS = 1 << 22


def affine_map(layer: L.Layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> AffineMap:
    """``(M, b)`` with ``layer(x).flatten() == M @ x.flatten() + b`` (cached per layer)."""
    key = (tuple(in_shape), tuple(out_shape))
    per_layer = _CACHE.setdefault(layer, {})
    if key not in per_layer:
        per_layer[key] = _build(layer, tuple(in_shape), tuple(out_shape))
    return per_layer[key]


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _build(layer: L.Layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> AffineMap:
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    if isinstance(layer, L.Linear):
        w = _f64(layer.weight).numpy()
        b = np.zeros(w.shape[0]) if layer.bias is None else _f64(layer.bias).numpy()
        return sp.csr_matrix(w), b.copy()
    if isinstance(layer, L.ElementwiseAffine):
        scale = torch.broadcast_to(_f64(layer.scale), in_shape).reshape(-1).numpy()
        shift = torch.broadcast_to(_f64(layer.shift), in_shape).reshape(-1).numpy()
        return sp.diags(scale, format="csr"), shift.copy()
    if isinstance(layer, (L.Reshape, L.Transpose, L.Pad, L.Gather)):
        return _index_map(layer, in_shape, n_out)
    if isinstance(layer, L.ReduceSum):
        return _reduce_sum(layer, in_shape, n_out), np.zeros(n_out)
    if isinstance(layer, L.ConvTranspose2d):
        return _conv_transpose(layer, in_shape, out_shape)
    if isinstance(layer, L.Conv2d):
        w = _f64(layer.weight)
        fn = lambda x: F.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        bias = torch.zeros(out_shape[0], dtype=torch.float64) if layer.bias is None else _f64(layer.bias)
        b = torch.broadcast_to(bias.reshape(-1, 1, 1), out_shape).reshape(-1).numpy().copy()
        return _unroll(fn, in_shape, n_in, n_out), b
    if isinstance(layer, L.AvgPool2d):
        return _unroll(layer.forward, in_shape, n_in, n_out), np.zeros(n_out)
    raise TypeError(f"{layer.kind} is not an affine layer")


def _reduce_sum(layer: L.ReduceSum, in_shape: tuple[int, ...], n_out: int) -> sp.csr_matrix:
    """Input ``i`` adds 1.0 to the output at its position with the reduced axes dropped."""
    nd = len(in_shape)
    axes = {a % nd for a in layer.axes} if layer.axes else set(range(nd))
    kept = tuple(1 if a in axes else s for a, s in enumerate(in_shape))
    if math.prod(kept) != n_out:
        raise ValueError(f"ReduceSum: expected {n_out} outputs, got {math.prod(kept)}")
    n_in = math.prod(in_shape)
    dest = np.broadcast_to(np.arange(n_out).reshape(kept), in_shape).reshape(-1)
    return sp.csr_matrix((np.ones(n_in), (dest, np.arange(n_in))), shape=(n_out, n_in))


def _conv_transpose(layer: L.ConvTranspose2d, in_shape: tuple[int, ...],
                    out_shape: tuple[int, ...]) -> AffineMap:
    """The bias-free transposed convolution unrolled in float64, plus the broadcast bias."""
    w = _f64(layer.weight)
    args = (layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
    fn = lambda x: F.conv_transpose2d(x, w, None, *args)
    n_out = math.prod(out_shape)
    bias = torch.zeros(out_shape[0], dtype=torch.float64) if layer.bias is None else _f64(layer.bias)
    b = torch.broadcast_to(bias.reshape(-1, 1, 1), out_shape).reshape(-1).numpy().copy()
    return _unroll(fn, in_shape, math.prod(in_shape), n_out), b


def concat_index(layer: L.Concat, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
    """For every flat output of ``layer``, its row in the operands' flat outputs stacked in
    input order (exact: positions are concatenated as int64 index tensors)."""
    pos, start = [], 0
    for shape in in_shapes:
        n = math.prod(shape)
        pos.append(torch.arange(start, start + n, dtype=torch.int64).reshape(1, *shape))
        start += n
    return layer.forward(*pos).reshape(-1).numpy().copy()


def _index_map(layer: L.Layer, in_shape: tuple[int, ...], n_out: int) -> AffineMap:
    """Reshape/Transpose/Pad/Gather: output ``k`` copies input ``idx[k]`` (or is the pad constant)."""
    n_in = math.prod(in_shape)
    pos = torch.arange(1, n_in + 1, dtype=torch.float64).reshape(1, *in_shape)
    if isinstance(layer, L.Pad):
        out = F.pad(pos, layer.pads, mode="constant", value=0.0)
    else:
        out = layer.forward(pos)
    idx = out.reshape(-1).numpy().astype(np.int64) - 1
    if idx.size != n_out:
        raise ValueError(f"{layer.kind}: expected {n_out} outputs, got {idx.size}")
    keep = idx >= 0
    rows = np.nonzero(keep)[0]
    M = sp.csr_matrix((np.ones(rows.size), (rows, idx[keep])), shape=(n_out, n_in))
    value = float(getattr(layer, "value", 0.0))
    return M, np.where(keep, 0.0, value)


def _unroll(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], n_in: int,
            n_out: int) -> sp.csr_matrix:
    """The matrix of a linear ``fn`` from basis vectors pushed through in chunks."""
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_in + n_out))
    blocks = []
    with torch.no_grad():
        for s in range(0, n_in, chunk):
            k = min(chunk, n_in - s)
            basis = torch.zeros(k, n_in, dtype=torch.float64)
            basis[torch.arange(k), torch.arange(s, s + k)] = 1.0
            cols = fn(basis.reshape(k, *in_shape)).reshape(k, n_out)
            blocks.append(sp.csr_matrix(cols.numpy()))  # rows: inputs s..s+k
    return sp.vstack(blocks).T.tocsr()


def maxpool_windows(layer: L.MaxPool2d, in_shape: tuple[int, ...],
                    out_shape: tuple[int, ...]) -> np.ndarray:
    """``[n_out, k]`` flat input indices of each window (``-1``: padding, never the max)."""
    C, H, W = in_shape
    _, OH, OW = out_shape
    kh, kw = layer.kernel
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    oh = np.arange(OH)[:, None, None, None]
    ow = np.arange(OW)[None, :, None, None]
    ih = oh * sh - ph + np.arange(kh)[None, None, :, None] * dh
    iw = ow * sw - pw + np.arange(kw)[None, None, None, :] * dw
    ih, iw = np.broadcast_arrays(ih, iw)
    valid = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    flat = np.where(valid, ih * W + iw, -1).reshape(OH * OW, kh * kw)
    out = np.empty((C, OH * OW, kh * kw), dtype=np.int64)
    for c in range(C):
        out[c] = np.where(flat >= 0, flat + c * H * W, -1)
    return out.reshape(C * OH * OW, kh * kw)
