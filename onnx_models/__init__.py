"""ONNX front end: ONNX file -> :class:`Network` (typed layers), plus onnxruntime replay.

Heavy dependencies (onnx, onnx2torch, onnxruntime) are imported lazily, so importing this
package stays cheap.
"""

from onnx_models.errors import OnnxModelError
from onnx_models.loader import load
from onnx_models.network import Network, OnnxIO
from onnx_models.reference import OnnxReference, compare

__all__ = ["load", "OnnxModelError", "OnnxReference", "Network", "OnnxIO", "compare"]
