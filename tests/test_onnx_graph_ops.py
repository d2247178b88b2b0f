"""General-graph ONNX ops (issue 15): each op on input-dependent tensors, in a tiny model built
with ``onnx.helper``, converts to the IR and matches onnxruntime on random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_models import Network, OnnxModelError, OnnxReference, compare, load
from onnx_models import validate

ROOT = Path(__file__).resolve().parents[1]
BENCH24 = ROOT.parent / "shared" / "benchmarks" / "vnncomp2024"
DOC = ROOT / "docs" / "onnx_ops.md"
RNG = np.random.default_rng(2024)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _c(name: str, array: object, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def _i(name: str, values: list[int]) -> onnx.TensorProto:
    return _c(name, values, np.int64)


def _run(tmp_path: Path, nodes: list, in_shape: list, inits: list | None = None, opset: int = 13,
         low: float = -2.0, high: float = 2.0, n: int = 32, tol: float = 1e-5) -> Network:
    """Build, convert (no cache) and compare with onnxruntime; returns the network."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    net = load(path, use_cache=False)
    x = RNG.uniform(low, high, (n, net.n_inputs))
    _, max_rel = compare(net, OnnxReference(path), x)
    assert max_rel < tol, net.summary()
    return net


def _kinds(net: Network) -> set[str]:
    return {node.layer.kind for node in net.nodes}


def _node(op: str, inputs: list[str], out: str = "y", **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out], **attrs)


# ---------------------------------------------------------------------- elementwise
@pytest.mark.parametrize("op,low,high,layer", [
    ("Exp", -2, 2, "Exp"), ("Log", 0.1, 3, "Log"), ("Sqrt", 0.1, 3, "Sqrt"),
    ("Reciprocal", 0.2, 3, "Reciprocal"), ("Sin", -4, 4, "Sin"), ("Cos", -4, 4, "Cos"),
    ("Sign", -2, 2, "Sign"), ("Floor", -3, 3, "Floor"), ("Ceil", -3, 3, "Floor"),
    ("Tanh", -3, 3, "Tanh"), ("Sigmoid", -3, 3, "Sigmoid"),
])
def test_unary(tmp_path: Path, op: str, low: float, high: float, layer: str) -> None:
    nodes = [_node("Gemm", ["x", "W", "B"], "h", transB=1), _node(op, ["h"])]
    inits = [_c("W", np.eye(4)[::-1]), _c("B", np.zeros(4))]  # a permutation keeps the range
    net = _run(tmp_path, nodes, [1, 4], inits, low=low, high=high)
    assert layer in _kinds(net)


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, -1.0, 1.0])
def test_pow_constant_exponent(tmp_path: Path, exponent: float) -> None:
    net = _run(tmp_path, [_node("Pow", ["x", "e"])], [1, 5], [_c("e", exponent)], low=0.2, high=2.0)
    pows = [n.layer for n in net.nodes if n.layer.kind == "Pow"]
    assert (not pows) if exponent == 1.0 else pows[0].exponent == exponent


@pytest.mark.parametrize("op,attrs", [("LeakyRelu", {"alpha": 0.1}), ("Abs", {}),
                                      ("HardSigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_relu_decompositions(tmp_path: Path, op: str, attrs: dict) -> None:
    net = _run(tmp_path, [_node(op, ["x"], **attrs)], [1, 6], low=-4, high=4)
    assert "ReLU" in _kinds(net)


def test_neg(tmp_path: Path) -> None:
    net = _run(tmp_path, [_node("Neg", ["x"])], [1, 3])
    assert _kinds(net) == {"ElementwiseAffine"}


@pytest.mark.parametrize("lo,hi", [(-0.5, 1.0), (-0.5, None), (None, 0.7)])
def test_clip(tmp_path: Path, lo: float | None, hi: float | None) -> None:
    names = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    inits = [_c(k, v) for k, v in (("lo", lo), ("hi", hi)) if v is not None]
    _run(tmp_path, [_node("Clip", names)], [1, 8], inits)


def test_max_min_of_tensors_and_constants(tmp_path: Path) -> None:
    nodes = [_node("Gemm", ["x", "W"], "h", transB=1), _node("Max", ["x", "h"], "m"),
             _node("Min", ["m", "k"], "y")]
    _run(tmp_path, nodes, [1, 4], [_c("W", RNG.normal(size=(4, 4))), _c("k", [0.5, -0.2, 1.0, 0.0])])


# ------------------------------------------------------------------ two operands
def test_mul_div_sub_add_broadcast_two_tensors(tmp_path: Path) -> None:
    nodes = [_node("Slice", ["x", "s", "e", "a"], "row"),  # [1, 1, 3]
             _node("Mul", ["x", "row"], "m"), _node("Exp", ["x"], "ex"), _node("Div", ["m", "ex"], "d"),
             _node("Sub", ["d", "row"], "s2"), _node("Add", ["s2", "x"], "y")]
    net = _run(tmp_path, nodes, [1, 2, 3], [_i("s", [0]), _i("e", [1]), _i("a", [1])])
    assert {"Mul", "Reciprocal", "Gather", "Add"} <= _kinds(net)


def test_square_is_pow(tmp_path: Path) -> None:
    net = _run(tmp_path, [_node("Mul", ["x", "x"])], [1, 3])
    assert _kinds(net) == {"Pow"}


def test_constant_over_tensor(tmp_path: Path) -> None:
    net = _run(tmp_path, [_node("Div", ["k", "x"])], [1, 3], [_c("k", [1.0, 2.0, -3.0])], low=0.5, high=2)
    assert "Reciprocal" in _kinds(net)


def test_matmul_of_two_tensors(tmp_path: Path) -> None:
    nodes = [_node("Transpose", ["x"], "t", perm=[0, 1, 3, 2]), _node("MatMul", ["x", "t"], "g"),
             _node("MatMul", ["g", "x"], "y")]
    net = _run(tmp_path, nodes, [1, 2, 3, 4])
    assert "MatMul" in _kinds(net)


def test_matmul_broadcast_leading_axis(tmp_path: Path) -> None:
    nodes = [_node("Slice", ["x", "s", "e", "a"], "first"),  # [1, 1, 3, 3]
             _node("Reshape", ["first", "shape"], "m"),  # [3, 3]
             _node("MatMul", ["m", "x"], "y")]  # [3, 3] @ [1, 2, 3, 3]
    _run(tmp_path, nodes, [1, 2, 3, 3], [_i("s", [0]), _i("e", [1]), _i("a", [1]), _i("shape", [3, 3])])


# -------------------------------------------------------- reductions, normalisation
@pytest.mark.parametrize("axes,keepdims", [([2], 1), ([1, 2], 0), ([-1], 0), ([0], 0), ([], 1)])
def test_reduce_sum(tmp_path: Path, axes: list[int], keepdims: int) -> None:
    inputs, inits = (["x", "axes"], [_i("axes", axes)]) if axes else (["x"], [])
    net = _run(tmp_path, [_node("ReduceSum", inputs, keepdims=keepdims)], [1, 3, 4], inits)
    assert "ReduceSum" in _kinds(net) or axes == [0]


@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([2, 1], 0)])
def test_reduce_mean(tmp_path: Path, axes: list[int], keepdims: int) -> None:
    _run(tmp_path, [_node("ReduceMean", ["x"], axes=axes, keepdims=keepdims)], [1, 3, 4])


@pytest.mark.parametrize("axis,opset", [(-1, 13), (1, 13), (1, 11), (2, 11)])
def test_softmax(tmp_path: Path, axis: int, opset: int) -> None:
    net = _run(tmp_path, [_node("Softmax", ["x"], axis=axis)], [1, 3, 4], opset=opset, low=-3, high=3)
    assert "Softmax" in _kinds(net)


def test_layer_normalization(tmp_path: Path) -> None:
    nodes = [_node("LayerNormalization", ["x", "g", "b"], axis=-1, epsilon=1e-5)]
    net = _run(tmp_path, nodes, [1, 3, 6], [_c("g", RNG.normal(size=6)), _c("b", RNG.normal(size=6))],
               opset=17, tol=1e-4)
    assert {"ReduceSum", "Pow", "Sqrt", "Reciprocal", "Mul"} <= _kinds(net)


@pytest.mark.parametrize("shape", [[1, 4, 3], [2, 4], [1, 4, 2, 3]])
def test_batch_normalization_any_layout(tmp_path: Path, shape: list[int]) -> None:
    c = shape[1]
    inits = [_c("s", RNG.uniform(0.5, 2, c)), _c("b", RNG.normal(size=c)), _c("m", RNG.normal(size=c)),
             _c("v", RNG.uniform(0.5, 2, c))]
    net = _run(tmp_path, [_node("BatchNormalization", ["x", "s", "b", "m", "v"])], shape, inits)
    assert _kinds(net) == {"ElementwiseAffine"}


def test_conv_transpose(tmp_path: Path) -> None:
    w = RNG.normal(size=(2, 3, 3, 3))
    nodes = [_node("ConvTranspose", ["x", "W", "B"], strides=[2, 2], pads=[1, 1, 1, 1],
                   output_padding=[1, 1])]
    net = _run(tmp_path, nodes, [1, 2, 4, 4], [_c("W", w), _c("B", RNG.normal(size=3))])
    assert _kinds(net) == {"ConvTranspose2d"}


# ------------------------------------------------------------- structure on variables
def test_slice_with_steps_and_negative_axes(tmp_path: Path) -> None:
    nodes = [_node("Slice", ["x", "s", "e", "a", "st"])]
    inits = [_i("s", [3, 0]), _i("e", [-100, 5]), _i("a", [-1, 1]), _i("st", [-2, 2])]
    net = _run(tmp_path, nodes, [1, 5, 6], inits)
    assert _kinds(net) == {"Gather"}


def test_gather_constant_indices(tmp_path: Path) -> None:
    _run(tmp_path, [_node("Gather", ["x", "idx"], axis=2)], [1, 2, 5], [_i("idx", [[4, 0], [1, 1]])])


def test_split_into_several_outputs(tmp_path: Path) -> None:
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1),
             _node("Mul", ["a", "c"], "ac"), _node("Concat", ["b", "ac", "a"], "y", axis=1)]
    _run(tmp_path, nodes, [1, 6, 2], [_i("sizes", [2, 2, 2])])


@pytest.mark.parametrize("op,inits", [("Expand", [_i("shape", [3, 1, 4])]),
                                      ("Tile", [_i("shape", [1, 2, 3])])])
def test_expand_tile(tmp_path: Path, op: str, inits: list) -> None:
    net = _run(tmp_path, [_node(op, ["x", "shape"])], [1, 2, 1] if op == "Expand" else [1, 2, 2], inits)
    assert "Gather" in _kinds(net)


def test_gather_elements_and_depth_to_space(tmp_path: Path) -> None:
    idx = RNG.integers(0, 4, size=(1, 4, 2, 2))
    nodes = [_node("GatherElements", ["x", "idx"], "g", axis=1), _node("DepthToSpace", ["g"], "y", blocksize=2, mode="CRD")]
    net = _run(tmp_path, nodes, [1, 4, 2, 2], [_i("idx", idx.tolist())])
    assert _kinds(net) == {"Gather"}


def test_conv_transpose_1d(tmp_path: Path) -> None:
    nodes = [_node("ConvTranspose", ["x", "W"], strides=[2], pads=[1, 1])]
    net = _run(tmp_path, nodes, [1, 2, 5], [_c("W", RNG.normal(size=(2, 3, 3)))])
    assert "ConvTranspose2d" in _kinds(net)


def test_min_of_three_tensors(tmp_path: Path) -> None:
    nodes = [_node("Sin", ["x"], "s"), _node("Cos", ["x"], "c"), _node("Min", ["x", "s", "c"])]
    _run(tmp_path, nodes, [1, 5], low=-3, high=3)


def test_squeeze_unsqueeze(tmp_path: Path) -> None:
    nodes = [_node("Unsqueeze", ["x", "ax"], "u"), _node("Squeeze", ["u", "ax"], "s"),
             _node("Sin", ["s"], "y")]
    _run(tmp_path, nodes, [1, 3], [_i("ax", [2])])


def test_resize_nearest_and_linear_refused(tmp_path: Path) -> None:
    inits = [_c("roi", []), _c("sc", [1, 1, 2, 3])]
    net = _run(tmp_path, [_node("Resize", ["x", "roi", "sc"], mode="nearest")], [1, 2, 2, 3], inits)
    assert _kinds(net) == {"Gather"}
    with pytest.raises(OnnxModelError, match="not a selection"):
        _run(tmp_path, [_node("Resize", ["x", "roi", "sc"], mode="linear")], [1, 2, 2, 3], inits)


def test_upsample_nearest_old_opset(tmp_path: Path) -> None:
    nodes = [_node("Upsample", ["x", "sc"], mode="nearest")]
    net = _run(tmp_path, nodes, [1, 1, 2, 2], [_c("sc", [1, 1, 2, 2])], opset=9)
    assert _kinds(net) == {"Gather"}


def test_where_with_constant_condition_and_concat_with_constant(tmp_path: Path) -> None:
    cond = np.array([[True, False, True, False]])
    nodes = [_node("Where", ["cond", "x", "k"], "w"), _node("Concat", ["w", "k", "x"], "y", axis=1)]
    inits = [numpy_helper.from_array(cond, "cond"), _c("k", [[5.0, -1.0, 2.0, 0.5]])]
    net = _run(tmp_path, nodes, [1, 4], inits)
    assert "Gather" in _kinds(net)


def test_concat_of_tensors_is_a_concat_layer(tmp_path: Path) -> None:
    nodes = [_node("Exp", ["x"], "e"), _node("Concat", ["x", "e"], "y", axis=2)]
    net = _run(tmp_path, nodes, [1, 2, 3])
    assert "Concat" in _kinds(net)


def test_pad_reflect(tmp_path: Path) -> None:
    nodes = [_node("Pad", ["x", "p"], mode="reflect")]
    net = _run(tmp_path, nodes, [1, 2, 4], [_i("p", [0, 0, 1, 0, 0, 2])])
    assert _kinds(net) == {"Gather"}


def test_shape_arithmetic_equal_where_expand(tmp_path: Path) -> None:
    """The ml4acopf pattern: Shape -> ConstantOfShape -> Equal -> Where -> Expand, all folded."""
    nodes = [_node("Shape", ["x"], "sh"), _node("ConstantOfShape", ["len"], "ones",
                                                value=numpy_helper.from_array(np.array([1], np.int64))),
             _node("Equal", ["tgt", "neg"], "eq"), _node("Where", ["eq", "ones", "tgt"], "shape"),
             _node("Expand", ["x", "shape"], "y")]
    inits = [_i("len", [2]), _i("tgt", [3, -1]), _i("neg", [-1, -1])]
    net = _run(tmp_path, nodes, [1, 4], inits)
    assert net.n_outputs == 12


def test_cast_to_same_type(tmp_path: Path) -> None:
    _run(tmp_path, [_node("Cast", ["x"], to=TensorProto.FLOAT)], [1, 3])


# -------------------------------------------------------------- the op table and docs
def test_doc_is_generated_from_the_table() -> None:
    assert DOC.read_text(encoding="utf-8") == validate.render_markdown(), \
        "docs/onnx_ops.md is stale: run python -m onnx_models.validate > docs/onnx_ops.md"


def test_error_lists_every_unsupported_op_and_the_table(tmp_path: Path) -> None:
    nodes = [_node("Erf", ["x"], "e"), _node("Acos", ["e"], "y")]
    with pytest.raises(OnnxModelError) as info:
        _run(tmp_path, nodes, [1, 3])
    msg = str(info.value)
    assert "Erf (1)" in msg and "Acos (1)" in msg
    assert all(o.op in msg for o in validate.OPS)


def test_check_ops_flag_prints_the_table(capsys: pytest.CaptureFixture) -> None:
    import argparse

    from bab.commands import check

    assert check.run(argparse.Namespace(ops=True)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == [o.op for o in validate.OPS]


# ------------------------------------------------------------- the 2024 families
def _models(family: str) -> list[Path]:
    folder = BENCH24 / family / "onnx"
    if not folder.is_dir():
        pytest.skip(f"benchmarks not found under {folder}")
    return sorted(folder.glob("*.onnx"))


@pytest.mark.parametrize("family,pattern", [("lsnc", "*"), ("ml4acopf_2024", "14_*"), ("vit_2023", "*")])
def test_2024_family_converts_and_matches_onnxruntime(family: str, pattern: str) -> None:
    """Every model of lsnc and vit_2023 and the 14-bus ml4acopf ones (the rest: -m slow)."""
    from bab.commands.check import check_model

    paths = [p for p in _models(family) if p.match(pattern)]
    assert paths
    for path in paths:
        report = check_model(str(path), [], samples=20, seed=0)
        assert report.ok, (path.name, report)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lsnc", "ml4acopf_2024", "vit_2023"])
def test_2024_family_check_instances(family: str, capsys: pytest.CaptureFixture) -> None:
    """The acceptance command: ``bab check --instances`` on the whole family passes."""
    import argparse

    from bab.commands import check

    _models(family)
    args = argparse.Namespace(ops=False, instances=str(BENCH24 / family / "instances.csv"), paths=[],
                              samples=check.SAMPLES, seed=0)
    assert check.run(args) == 0, capsys.readouterr().out
