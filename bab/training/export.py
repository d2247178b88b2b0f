"""ONNX export of a :class:`~bab.training.arch.Classifier`: Conv/Relu/Flatten/Gemm, opset 13.

Built with ``onnx.helper`` (as :func:`bab.demo.export_onnx` does), so it needs no exporter
and works offline. The input is ``[1, *sample_shape]`` float32, the output ``[1, n_classes]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from bab.training.arch import Classifier


def _array(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def onnx_model(model: Classifier):
    """The ``onnx.ModelProto`` of ``model`` (checked)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, h = [], [], "input"
    mods = list(model.body)
    for i, m in enumerate(mods):
        out = "output" if i == len(mods) - 1 else f"h{i}"
        if isinstance(m, nn.Conv2d):
            inits += [numpy_helper.from_array(_array(m.weight), f"W{i}"),
                      numpy_helper.from_array(_array(m.bias), f"B{i}")]
            p = list(m.padding)
            nodes.append(helper.make_node(
                "Conv", [h, f"W{i}", f"B{i}"], [out], kernel_shape=list(m.kernel_size),
                strides=list(m.stride), pads=p + p, dilations=list(m.dilation), group=m.groups))
        elif isinstance(m, nn.Linear):
            inits += [numpy_helper.from_array(_array(m.weight), f"W{i}"),
                      numpy_helper.from_array(_array(m.bias), f"B{i}")]
            nodes.append(helper.make_node("Gemm", [h, f"W{i}", f"B{i}"], [out], transB=1))
        elif isinstance(m, nn.ReLU):
            nodes.append(helper.make_node("Relu", [h], [out]))
        elif isinstance(m, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [h], [out], axis=1))
        else:  # pragma: no cover - presets only use the four above
            raise TypeError(f"cannot export {type(m).__name__}")
        h = out
    n_out = mods[-1].out_features
    graph = helper.make_graph(
        nodes, f"bab_{model.arch.replace('-', '_')}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *model.input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_out])],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="bab-train")
    proto.ir_version = 8  # readable by older onnxruntime releases too
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model: Classifier, path: str | Path) -> Path:
    """Write ``model`` to ``path`` as ONNX; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model(model), str(path))
    return path
