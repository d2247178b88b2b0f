"""A VNN-LIB 2.0 query under the standard ``verify`` (§5.3): checks, lowering, assignments.

The parser, type checker and lowering are :mod:`vnnlib.v2`; several networks and hidden nodes
become one network through :mod:`onnx_models.combine`. This module adds the command line's
error conditions (§5.3.2) and reads a counterexample back as the declared variables, in
declaration order, with every output and hidden value computed by onnxruntime on the original
model files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bab.standard import Assignment, StandardInputError
from bab.standard_query import Prepared, Undecided, check_element_types


def _check_files(checked: Any, networks: Mapping[str, Path]) -> None:
    """§5.3.2 (1): an ``equal-to`` network takes no file; every file must exist."""
    for name, path in networks.items():
        net = checked.networks.get(name)
        eq = net.equivalences[0] if net is not None and net.equivalences else None
        if eq is not None and eq.kind == "equal-to":
            raise StandardInputError(f"--network {name}: network '{name}' is declared equal-to "
                                     f"'{eq.target}', so it takes no model file (§5.3.2 (1))")
        if not Path(path).is_file():
            raise FileNotFoundError(2, "No such file", str(path))


def prepare_v2(text: str, path: str, networks: Mapping[str, Path]) -> Prepared | Undecided:
    """Parse, check the mapping and element types, lower, and build the (combined) network."""
    import onnx_models
    from vnnlib import v2

    checked = v2.parse_text(text, path)
    _check_files(checked, networks)
    models = v2.check_mapping(checked, {k: str(v) for k, v in networks.items()}, path)
    check_element_types({t.name: t.elem_type for n in checked.query.networks for t in n.tensors})
    lowered = v2.lower(checked)
    if isinstance(lowered, v2.Undecidable):
        return Undecided(lowered.reason)
    layout, reference = lowered.layout, None
    if layout.simple:
        network = onnx_models.load(models[layout.networks[0].name])
    else:
        from onnx_models.combine import Unmappable, build_combined

        combined = build_combined(layout, models)
        if isinstance(combined, Unmappable):
            return Undecided(combined.reason)
        network, reference = combined.network, combined.reference
    return Prepared(network, lowered.spec, (), reference,
                    V2Variables(checked, layout, models))


@dataclass(frozen=True)
class V2Variables:
    """Reads the declared variables of a 2.0 query from a combined counterexample input."""

    checked: Any
    layout: Any
    models: Mapping[str, str]

    def assignments(self, x: np.ndarray, y: np.ndarray) -> list[Assignment]:
        """Every declared variable in declaration order (§5.3.1); ``y`` is not needed: the
        values come from onnxruntime on each original model at that network's input."""
        inputs = self.layout.input_assignment(x)
        out: list[Assignment] = []
        for net in self.checked.query.networks:
            sym = self.checked.symbols
            x_decl = net.inputs[0]
            x_val = inputs.get(x_decl.name)
            if x_val is None:  # a network no assertion mentions: any input is a witness
                x_val = np.zeros(sym[x_decl.name].shape)
            values = _run_model(self.models[net.name], x_val, [h.onnx_name for h in net.hiddens])
            for decl in net.tensors:
                key = decl.onnx_name if decl.kind == "hidden" else ""
                v = x_val if decl.kind == "input" else values.get(key)
                if v is not None:  # a hidden name onnxruntime cannot expose is left out
                    out.append(Assignment(decl.name, decl.elem_type, sym[decl.name].shape,
                                          np.asarray(v, np.float64).reshape(-1)))
        return out


def _run_model(path: str, x: np.ndarray, hidden: list[str]) -> dict[str, np.ndarray]:
    """onnxruntime on the original model: ``""`` -> the output, each mappable hidden name -> its value."""
    import onnx
    import onnxruntime as ort

    from onnx_models.combine import hidden_tensor
    from onnx_models.source import parse_model, read_model_bytes

    model = parse_model(read_model_bytes(path), Path(path).name)
    tensors = {h: hidden_tensor(model, h) for h in hidden}
    extra = [t for t in dict.fromkeys(tensors.values()) if t is not None]
    names = [model.graph.output[0].name] + extra
    for t in extra:
        if t not in {o.name for o in model.graph.output}:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in inp.shape)
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    got = dict(zip(names, sess.run(names, {inp.name: np.asarray(x).reshape(shape).astype(dtype)})))
    values = {"": got[names[0]]}
    values.update({h: got[t] for h, t in tensors.items() if t is not None})
    return values
