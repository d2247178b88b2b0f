"""One network from several ONNX models on a shared input (VNN-LIB 2.0 multi-network queries).

The combined network's input is the layout's combined input vector (:mod:`vnnlib.v2.layout`):
each network reads its elements through a 0/1 selection ``Linear`` (skipped when it is the
identity) and a ``Reshape`` to its own input shape, then runs its own re-indexed node list. A
hidden node is a separate copy of the model cut at that node output
(``onnx.utils.Extractor``). The output is the concatenation of the layout's parts, written
with the layers every bounding method supports: ``out = sum_k E_k @ flat(part_k)`` with 0/1
embedding matrices ``E_k`` (``Linear`` then an ``Add`` chain).

:class:`CombinedReference` replays an input on the ORIGINAL ONNX files with onnxruntime
(each file once, hidden node outputs added as extra graph outputs) and assembles the combined
output the same way, so counterexamples are checked against the real models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from onnx_models.errors import OnnxModelError
from onnx_models.layers import Add, Linear, Node, Reshape
from onnx_models.network import Network, OnnxIO
from onnx_models.source import PathLike, parse_model, read_model_bytes
from vnnlib.v2.layout import Layout, NetworkUse, Part


@dataclass(frozen=True)
class Unmappable:
    """A layout element that cannot be mapped onto the models (the answer is ``unknown``)."""

    reason: str


@dataclass
class Combined:
    """The combined network and its onnxruntime reference."""

    network: Network
    reference: "CombinedReference"


def _input_name(model) -> str:
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def hidden_tensor(model, name: str) -> str | None:
    """The node output called ``name`` (or the single output of the node called ``name``)."""
    for node in model.graph.node:
        if name in node.output:
            return name
    for node in model.graph.node:
        if node.name == name and len(node.output) == 1:
            return node.output[0]
    return None


def cut_at(data: bytes, tensor: str, label: str) -> Network:
    """The model ``data`` cut at node output ``tensor`` (converted to our IR)."""
    from onnx.utils import Extractor

    from onnx_models.convert import convert_model

    import onnx

    model = onnx.shape_inference.infer_shapes(parse_model(data, label))
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.output)}
    if tensor not in known:  # no inferred type: the input's element type, unknown shape
        elem = model.graph.input[0].type.tensor_type.elem_type
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(tensor, elem, None))
    try:
        sub = Extractor(model).extract_model([_input_name(model)], [tensor])
    except (ValueError, KeyError) as exc:  # onnx's extractor: a tensor it cannot reach
        from onnx_models.errors import OnnxModelError
        raise OnnxModelError(f"{label}: cannot cut the model at node output {tensor!r}: {exc}") from exc
    return convert_model(sub.SerializeToString(), label)


class _Builder:
    """Appends re-indexed node lists and the output embedding."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.nodes: list[Node] = []

    def add(self, layer, inputs: tuple[int, ...], shape: tuple[int, ...], name: str) -> int:
        self.nodes.append(Node(layer, inputs, shape, name))
        return len(self.nodes) - 1

    def feed(self, use: NetworkUse, net: Network, dtype: torch.dtype) -> int:
        """The node holding ``use``'s input in ``net``'s input shape (-1: the combined input)."""
        n_comb, idx = self.layout.n_inputs, list(use.input_index)
        src = -1
        if idx != list(range(n_comb)):
            w = torch.zeros(len(idx), n_comb, dtype=dtype)
            w[torch.arange(len(idx)), torch.tensor(idx)] = 1.0
            src = self.add(Linear(w, torch.zeros(len(idx), dtype=dtype)), (-1,), (len(idx),),
                           f"{use.name}/select")
        if tuple(net.input_shape) != (len(idx),):
            src = self.add(Reshape(tuple(net.input_shape)), (src,), tuple(net.input_shape),
                           f"{use.name}/reshape")
        return src

    def append(self, net: Network, src: int, prefix: str) -> int:
        """Append ``net``'s nodes reading ``src``; returns its output node."""
        base = len(self.nodes)
        for node in net.nodes:
            ins = tuple(src if i < 0 else i + base for i in node.inputs)
            self.add(node.layer, ins, node.out_shape, f"{prefix}/{node.name}")
        return len(self.nodes) - 1

    def embed(self, sources: list[tuple[Part, int, int]], dtype: torch.dtype) -> None:
        """``out = sum_k E_k flat(source_k)``: sources are (part, node, source size)."""
        n_out, acc = self.layout.n_outputs, None
        for part, node, size in sources:
            w = torch.zeros(n_out, size, dtype=dtype)
            cols = list(part.index) if part.kind == "input" else list(range(size))
            w[torch.arange(part.offset, part.offset + part.size), torch.tensor(cols)] = 1.0
            if node >= 0 and self.nodes[node].out_shape != (size,):
                node = self.add(Reshape((size,)), (node,), (size,), f"{part.variable}/flatten")
            lin = self.add(Linear(w, torch.zeros(n_out, dtype=dtype)), (node,), (n_out,),
                           f"embed/{part.variable or 'inputs'}")
            acc = lin if acc is None else self.add(Add(), (acc, lin), (n_out,), "embed/add")


def _check(use: NetworkUse, net: Network, path: PathLike) -> None:
    want_in, want_out = math.prod(use.input_shape), math.prod(use.output_shape)
    if net.n_inputs != want_in or net.n_outputs != want_out:
        raise OnnxModelError(
            f"network '{use.name}' ({path}): the query declares {use.input} with {want_in} "
            f"elements and {use.output} with {want_out}, the model has {net.n_inputs} inputs "
            f"and {net.n_outputs} outputs")


def build_combined(layout: Layout, models: Mapping[str, PathLike]) -> Combined | Unmappable:
    """The combined network of ``layout`` over the model files ``models`` (network name -> file)."""
    from onnx_models.loader import load

    nets = {u.name: load(models[u.name]) for u in layout.networks}
    for u in layout.networks:
        _check(u, nets[u.name], models[u.name])
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in nets.values()) else torch.float32
    b = _Builder(layout)
    sources: list[tuple[Part, int, int]] = []
    hidden: dict[str, list[str]] = {u.name: [] for u in layout.networks}
    for u in layout.networks:
        net = nets[u.name].to(dtype)
        src = b.feed(u, net, dtype)
        out = b.append(net, src, u.name)
        for part in (p for p in layout.parts if p.network == u.name):
            if part.kind == "output":
                sources.append((part, out, part.size))
                continue
            sub = _hidden(part, models[u.name])
            if isinstance(sub, Unmappable):
                return sub
            hidden[u.name].append(sub[1])
            sources.append((part, b.append(sub[0].to(dtype), src, f"{u.name}/{part.variable}"),
                            part.size))
    sources += [(p, -1, layout.n_inputs) for p in layout.parts if p.kind == "input"]
    b.embed(sources, dtype)
    in_dtype = min((n.io.input_dtype for n in nets.values()), key=lambda d: np.dtype(d).itemsize)
    io = OnnxIO("", (layout.n_inputs,), in_dtype, "", (layout.n_outputs,), False)
    network = Network(b.nodes, (layout.n_inputs,), (layout.n_outputs,), io, "", dtype,
                      {"combined": [str(models[u.name]) for u in layout.networks]})
    return Combined(network, CombinedReference(layout, models, hidden))


def _hidden(part: Part, path: PathLike) -> tuple[Network, str] | Unmappable:
    data = read_model_bytes(path)
    tensor = hidden_tensor(parse_model(data, Path(path).name), part.onnx_name)
    if tensor is None:
        return Unmappable(f"hidden '{part.variable}': {Path(path).name} has no node output or "
                          f"node called \"{part.onnx_name}\"")
    try:
        net = cut_at(data, tensor, f"{Path(path).name}:{part.onnx_name}")
    except OnnxModelError as exc:
        return Unmappable(f"hidden '{part.variable}': cannot cut the model at "
                          f"\"{part.onnx_name}\": {exc}")
    if net.n_outputs != part.size:
        return Unmappable(f"hidden '{part.variable}' is declared with {part.size} elements but "
                          f"\"{part.onnx_name}\" has {net.n_outputs}")
    return net, tensor


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class _Session:
    """onnxruntime on one original model, with extra (hidden) outputs; one sample at a time."""

    def __init__(self, path: PathLike, extra: list[str]) -> None:
        import onnx
        import onnxruntime as ort

        model = parse_model(read_model_bytes(path), Path(path).name)
        self.outputs = [model.graph.output[0].name] + extra
        for name in extra:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name = inp.name
        self.shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in inp.shape)
        self.dtype = _ORT_DTYPES.get(inp.type, np.float32)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        feed = {self.name: x.reshape(self.shape).astype(self.dtype)}
        return [np.asarray(v, np.float64).reshape(-1) for v in self.session.run(self.outputs, feed)]


class CombinedReference:
    """``run(x)``: the combined output computed from the original ONNX files (for replay)."""

    def __init__(self, layout: Layout, models: Mapping[str, PathLike],
                 hidden: Mapping[str, list[str]]) -> None:
        self.layout = layout
        self.hidden = {k: list(v) for k, v in hidden.items()}
        self.models = {u.name: str(models[u.name]) for u in layout.networks}
        self.sessions = {u.name: _Session(models[u.name], self.hidden[u.name]) for u in layout.networks}
        self.n_inputs = layout.n_inputs

    def run(self, x: np.ndarray) -> np.ndarray:
        """Flat ``[B, n_inputs]`` combined inputs -> float64 ``[B, n_outputs]``."""
        xs = np.atleast_2d(np.asarray(x, dtype=np.float64))
        out = np.zeros((xs.shape[0], self.layout.n_outputs))
        for b, row in enumerate(xs):
            for u in self.layout.networks:
                values = self.sessions[u.name].run(row[list(u.input_index)])
                parts = [p for p in self.layout.parts if p.network == u.name]
                hidden = iter(values[1:])
                for p in parts:
                    v = values[0] if p.kind == "output" else next(hidden)
                    out[b, p.offset:p.offset + p.size] = v
            for p in self.layout.parts:
                if p.kind == "input":
                    out[b, p.offset:p.offset + p.size] = row[list(p.index)]
        return out
