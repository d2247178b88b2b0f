"""Tests of the ONNX front end: converted networks must match onnxruntime."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_models
from onnx_models import OnnxModelError, OnnxReference, compare, load

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2021"
RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the user's cache untouched: every test gets its own cache root."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BAB_CACHE_DIR", str(root))
    return root


# ---------------------------------------------------------------------------- builders
def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _w(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(dtype)


def _model(nodes: list, in_shape: list, out_shape: list, inits: list, opset: int = 13,
           elem: int = TensorProto.FLOAT, ir_version: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, in_shape)],
                              [helper.make_tensor_value_info("y", elem, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _check(path: Path, tol: float = 1e-5, n: int = 16, low: float = -1.0,
           high: float = 1.0, rel_tol: float | None = None) -> onnx_models.Network:
    """Load (no cache), compare with onnxruntime on random inputs, return the network."""
    net = load(path, use_cache=False)
    ref = OnnxReference(path)
    x = RNG.uniform(low, high, (n, net.n_inputs))
    max_abs, max_rel = compare(net, ref, x)
    if rel_tol is None:
        assert max_abs < tol, net.summary()
    else:
        assert max_rel < rel_tol, net.summary()
    return net


def _kinds(net: onnx_models.Network) -> list[str]:
    return [n.layer.kind for n in net.nodes]


def _mlp_nodes(prefix: str, x: str, sizes: list[int], out: str) -> tuple[list, list]:
    """Gemm/Relu chain ``sizes[0] -> ... -> sizes[-1]`` ending in ``out``."""
    nodes, inits = [], []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        last = k == len(sizes) - 2
        h = out if last else f"{prefix}h{k}"
        inits += [_init(f"{prefix}W{k}", _w(b, a)), _init(f"{prefix}b{k}", _w(b))]
        nodes.append(helper.make_node("Gemm", [x, f"{prefix}W{k}", f"{prefix}b{k}"],
                                      [h if last else h + "p"], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [h + "p"], [h]))
        x = h
    return nodes, inits


# ---------------------------------------------------------------------------- conversions
def test_mlp_gemm(tmp_path: Path) -> None:
    nodes, inits = _mlp_nodes("", "x", [6, 8, 7, 3], "y")
    net = _check(_save(tmp_path, _model(nodes, [1, 6], [1, 3], inits)))
    assert _kinds(net) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert net.input_shape == (6,) and net.output_shape == (3,) and net.io.has_batch_dim


def test_gemm_alpha_beta_no_transpose(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], alpha=0.5, beta=2.0)]
    inits = [_init("W", _w(5, 4)), _init("b", _w(1, 4))]
    net = _check(_save(tmp_path, _model(nodes, [1, 5], [1, 4], inits)))
    assert _kinds(net) == ["Linear"]


def test_matmul_add_folds_into_one_linear(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["h2"]),
             helper.make_node("Add", ["h2", "b2"], ["y"])]
    inits = [_init("W", _w(5, 9)), _init("b", _w(9)), _init("W2", _w(9, 2)), _init("b2", _w(2))]
    net = _check(_save(tmp_path, _model(nodes, [1, 5], [1, 2], inits)))
    assert _kinds(net) == ["Linear", "ReLU", "Linear"]


def test_normalisation_flatten_gemm_is_folded(tmp_path: Path) -> None:
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["d"]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    inits = [_init("mean", np.array([0.1307], np.float32)), _init("std", np.array([0.3081], np.float32)),
             _init("W", _w(10, 16)), _init("b", _w(10))]
    net = _check(_save(tmp_path, _model(nodes, [1, 1, 4, 4], [1, 10], inits)))
    assert "ElementwiseAffine" not in _kinds(net)
    assert _kinds(net) == ["Reshape", "Linear"]


def _conv_bn_model(pads: list[int]) -> onnx.ModelProto:
    c = 3
    nodes = [helper.make_node("Conv", ["x", "K", "kb"], ["c"], pads=pads, strides=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    h = 6 + pads[0] + pads[2] - 2
    w = 6 + pads[1] + pads[3] - 2
    inits = [_init("K", _w(c, 2, 3, 3)), _init("kb", _w(c)), _init("g", _w(c)), _init("be", _w(c)),
             _init("mu", _w(c)), _init("var", RNG.uniform(0.5, 2, c).astype(np.float32)),
             _init("W", _w(4, c * h * w)), _init("b", _w(4))]
    return _model(nodes, [1, 2, 6, 6], [1, 4], inits)


def test_conv_batchnorm_relu_flatten_gemm(tmp_path: Path) -> None:
    net = _check(_save(tmp_path, _conv_bn_model([1, 1, 1, 1])))
    assert _kinds(net) == ["Conv2d", "ReLU", "Reshape", "Linear"]  # BN folded into the conv


def test_conv_asymmetric_pads(tmp_path: Path) -> None:
    net = _check(_save(tmp_path, _conv_bn_model([0, 1, 2, 0])))
    assert _kinds(net)[:2] == ["Pad", "Conv2d"]
    assert net.nodes[0].layer.pads == (1, 0, 0, 2)


def test_normalisation_before_conv(tmp_path: Path) -> None:
    """Per-channel Sub/Div before a conv without padding folds into the conv."""
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["d"]),
             helper.make_node("Conv", ["d", "K", "kb"], ["c"], group=2),
             helper.make_node("Relu", ["c"], ["y"])]
    inits = [_init("mean", _w(2, 1, 1)), _init("std", RNG.uniform(0.2, 1, (2, 1, 1)).astype(np.float32)),
             _init("K", _w(4, 1, 3, 3)), _init("kb", _w(4))]
    net = _check(_save(tmp_path, _model(nodes, [1, 2, 5, 5], [1, 4, 3, 3], inits)))
    assert _kinds(net) == ["Conv2d", "ReLU"]


def test_shift_before_padded_conv_is_kept(tmp_path: Path) -> None:
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]),
             helper.make_node("Conv", ["s", "K"], ["y"], pads=[1, 1, 1, 1])]
    inits = [_init("mean", _w(2, 1, 1)), _init("K", _w(3, 2, 3, 3))]
    net = _check(_save(tmp_path, _model(nodes, [1, 2, 4, 4], [1, 3, 4, 4], inits)))
    assert _kinds(net) == ["ElementwiseAffine", "Conv2d"]


def test_pad_average_pool(tmp_path: Path) -> None:
    nodes = [helper.make_node("Pad", ["x", "pads", "cv"], ["p"]),
             helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = [_init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             _init("cv", np.array(0.0, np.float32))]
    net = _check(_save(tmp_path, _model(nodes, [1, 2, 4, 4], [1, 2, 3, 3], inits)))
    assert _kinds(net) == ["Pad", "AvgPool2d"]


def test_average_pool_with_padding(tmp_path: Path) -> None:
    nodes = [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1], count_include_pad=0)]
    _check(_save(tmp_path, _model(nodes, [1, 2, 5, 5], [1, 2, 3, 3], [])))


def test_max_pool(tmp_path: Path) -> None:
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxPool", ["m"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    net = _check(_save(tmp_path, _model(nodes, [1, 3, 6, 6], [1, 3, 3, 3], [])))
    assert _kinds(net) == ["MaxPool2d", "MaxPool2d"]


def test_max_pool_asymmetric_pads(tmp_path: Path) -> None:
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])]
    net = _check(_save(tmp_path, _model(nodes, [1, 2, 5, 5], [1, 2, 5, 5], [])))
    assert _kinds(net) == ["Pad", "MaxPool2d"] and net.nodes[0].layer.value == float("-inf")


def test_shape_arithmetic_is_constant_folded(tmp_path: Path) -> None:
    """The ``x.view(x.size(0), -1)`` pattern exported by PyTorch."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    inits = [_init("zero", np.array(0, np.int64)), _init("axes", np.array([0], np.int64)),
             _init("minus1", np.array([-1], np.int64)), _init("W", _w(2, 12)), _init("b", _w(2))]
    net = _check(_save(tmp_path, _model(nodes, [1, 3, 2, 2], [1, 2], inits)))
    assert _kinds(net) == ["Reshape", "Linear"]


def test_conv1d_and_1d_pools(tmp_path: Path) -> None:
    nodes = [helper.make_node("Conv", ["x", "K", "kb"], ["c"], pads=[1, 1], strides=[2]),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2]),
             helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2], pads=[1, 1])]
    inits = [_init("K", _w(3, 2, 3)), _init("kb", _w(3))]
    net = _check(_save(tmp_path, _model(nodes, [1, 2, 9], [1, 3, 5], inits)))
    assert _kinds(net) == ["Reshape", "Conv2d", "MaxPool2d", "AvgPool2d", "Reshape"]


def test_sigmoid_tanh(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("Mul", ["t", "k"], ["y"])]
    inits = [_init("W", _w(4, 3)), _init("b", _w(4)), _init("k", np.float32(3.0))]
    net = _check(_save(tmp_path, _model(nodes, [1, 3], [1, 4], inits)))
    assert _kinds(net) == ["Linear", "Sigmoid", "Tanh", "ElementwiseAffine"]


def test_transpose_reshape(tmp_path: Path) -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["r"]),
             helper.make_node("Gemm", ["r", "W", "b"], ["y"], transB=1)]
    inits = [_init("shape", np.array([1, -1], np.int64)), _init("W", _w(3, 24)), _init("b", _w(3))]
    net = _check(_save(tmp_path, _model(nodes, [1, 2, 3, 4], [1, 3], inits)))
    assert _kinds(net) == ["Transpose", "Reshape", "Linear"]
    assert net.nodes[0].layer.perm == (1, 2, 0)


def test_transpose_of_batch_axis(tmp_path: Path) -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
             helper.make_node("MatMul", ["W", "t"], ["m"]),
             helper.make_node("Reshape", ["m", "shape"], ["y"])]
    inits = [_init("W", _w(3, 5)), _init("shape", np.array([1, 3], np.int64))]
    _check(_save(tmp_path, _model(nodes, [1, 5], [1, 3], inits)))


def test_residual_add_and_sub(tmp_path: Path) -> None:
    nodes, inits = _mlp_nodes("a", "x", [6, 8, 6], "h")
    nodes.append(helper.make_node("Add", ["h", "x"], ["s"]))
    nodes.append(helper.make_node("Relu", ["s"], ["r"]))
    nodes.append(helper.make_node("Sub", ["r", "x"], ["y"]))
    net = _check(_save(tmp_path, _model(nodes, [1, 6], [1, 6], inits)))
    assert _kinds(net).count("Add") == 2


def test_1d_no_batch_matmul(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["W", "x"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    inits = [_init("W", _w(4, 3)), _init("b", _w(4)), _init("W2", _w(4, 2))]
    net = _check(_save(tmp_path, _model(nodes, [3], [2], inits, opset=14)))
    assert not net.io.has_batch_dim and net.input_shape == (3,) and net.output_shape == (2,)
    assert _kinds(net) == ["Linear", "ReLU", "Linear"]


def test_nano_like_single_input(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    net = _check(_save(tmp_path, _model(nodes, [1], [1], [_init("W", _w(1, 1))], opset=14)))
    assert net.input_shape == (1,) and not net.io.has_batch_dim


def test_opset8_flatten(tmp_path: Path) -> None:
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    inits = [_init("mean", _w(1, 1, 1, 5)), _init("W", _w(5, 3)), _init("b", _w(3))]
    model = _model(nodes, [1, 1, 1, 5], [1, 3], inits, opset=8, ir_version=3)
    net = _check(_save(tmp_path, model))
    assert _kinds(net) == ["Reshape", "Linear"] and net.meta["opset"] == 8


def test_float64_model(tmp_path: Path) -> None:
    d = TensorProto.DOUBLE
    nodes = [helper.make_node("MatMul", ["W", "x"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["V", "r"], ["y"])]
    inits = [_init("W", _w(6, 4, dtype=np.float64) * 1e3), _init("b", _w(6, dtype=np.float64) * 1e6),
             _init("V", _w(1, 6, dtype=np.float64))]
    net = _check(_save(tmp_path, _model(nodes, [4], [1], inits, elem=d)), high=2.6e6, rel_tol=1e-12)
    assert net.dtype == torch.float64 and net.io.input_dtype == "float64"
    assert all(t.dtype == torch.float64 for n in net.nodes for t in n.layer.tensors().values())


def test_identity_dropout_batchnorm_after_gemm(tmp_path: Path) -> None:
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Gemm", ["i", "W", "b"], ["h"], transB=1),
             helper.make_node("BatchNormalization", ["h", "g", "be", "mu", "var"], ["n"]),
             helper.make_node("Dropout", ["n"], ["d"]), helper.make_node("Relu", ["d"], ["y"])]
    inits = [_init("W", _w(5, 4)), _init("b", _w(5)), _init("g", _w(5)), _init("be", _w(5)),
             _init("mu", _w(5)), _init("var", RNG.uniform(0.5, 2, 5).astype(np.float32))]
    net = _check(_save(tmp_path, _model(nodes, [1, 4], [1, 5], inits)))
    assert _kinds(net) == ["Linear", "ReLU"]


def test_linear_linear_merge(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "V", "c"], ["y"], transB=1)]
    inits = [_init("W", _w(8, 6)), _init("b", _w(8)), _init("V", _w(3, 8)), _init("c", _w(3))]
    net = _check(_save(tmp_path, _model(nodes, [1, 6], [1, 3], inits)))
    assert _kinds(net) == ["Linear"]


def test_gzip_path(tmp_path: Path) -> None:
    nodes, inits = _mlp_nodes("", "x", [3, 4, 2], "y")
    raw = _model(nodes, [1, 3], [1, 2], inits).SerializeToString()
    path = tmp_path / "m.onnx.gz"
    path.write_bytes(gzip.compress(raw))
    _check(path)


def test_reference_symbolic_batch(tmp_path: Path) -> None:
    nodes, inits = _mlp_nodes("", "x", [3, 4, 2], "y")
    net = _check(_save(tmp_path, _model(nodes, ["N", 3], ["N", 2], inits)))
    assert net.io.input_shape == (1, 3) and net.io.has_batch_dim
    ref = OnnxReference(tmp_path / "m.onnx")
    assert ref.run(np.zeros(3)).shape == (1, 2) and ref.run(np.zeros((5, 3))).shape == (5, 2)


def test_onnx2torch_import_works_without_torchvision() -> None:
    import sys

    from onnx_models._onnx2torch_compat import import_onnx2torch

    assert callable(import_onnx2torch().convert)
    tv = sys.modules.get("torchvision")
    if tv is not None and getattr(tv, "__version__", "").endswith("+stub"):
        with pytest.raises(NotImplementedError, match="torchvision"):
            tv.ops.nms(None, None, 0.5)


# ---------------------------------------------------------------------------- errors
def test_unsupported_ops_are_all_listed(tmp_path: Path) -> None:
    nodes = [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Erf", ["e"], ["e2"]),
             helper.make_node("Acos", ["e2"], ["y"])]
    path = _save(tmp_path, _model(nodes, [1, 4], [1, 4], []), "bad.onnx")
    with pytest.raises(OnnxModelError) as info:
        load(path)
    msg = str(info.value)
    assert "Erf (2)" in msg and "Acos (1)" in msg and "bad.onnx" in msg and "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a protobuf \xff\xfe\x00 at all")
    with pytest.raises(OnnxModelError, match="junk.onnx is not a valid ONNX model"):
        load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.onnx")


def test_two_inputs_rejected(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "z"], ["y"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("x", "z")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(OnnxModelError, match="exactly one graph input"):
        load(_save(tmp_path, model))


def test_input_dependent_exponent_rejected(tmp_path: Path) -> None:
    nodes = [helper.make_node("Pow", ["x", "x"], ["y"])]
    with pytest.raises(OnnxModelError, match="OnnxPow must take the input-dependent tensor"):
        load(_save(tmp_path, _model(nodes, [1, 3], [1, 3], [])))


def test_onnx2torch_rejection_is_wrapped(tmp_path: Path) -> None:
    nodes = [helper.make_node("Conv", ["x", "K"], ["y"], auto_pad="SAME_UPPER")]
    path = _save(tmp_path, _model(nodes, [1, 1, 4, 4], [1, 1, 4, 4], [_init("K", _w(1, 1, 3, 3))]))
    with pytest.raises(OnnxModelError, match="Conv"):
        load(path)


# ---------------------------------------------------------------------------- cache
def test_cache_hit_and_corrupt_entry(tmp_path: Path, _cache_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, inits = _mlp_nodes("", "x", [3, 4, 2], "y")
    path = _save(tmp_path, _model(nodes, [1, 3], [1, 2], inits))
    first = load(path)
    entries = list((_cache_dir / "onnx").glob("*.pt"))
    assert len(entries) == 1

    import onnx_models.convert as convert_mod

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("converter called despite a cached entry")

    with monkeypatch.context() as m:
        m.setattr(convert_mod, "convert_model", boom)
        second = load(path)
    x = RNG.uniform(-1, 1, (4, 3))
    assert np.array_equal(first.evaluate(x), second.evaluate(x)) and second.meta["cached"]

    entries[0].write_bytes(b"garbage")
    third = load(path)  # corrupt entry ignored, then rewritten
    assert not third.meta["cached"] and np.array_equal(first.evaluate(x), third.evaluate(x))
    assert load(path).meta["cached"]


# ---------------------------------------------------------------------------- benchmarks
def _bench_files() -> list[Path]:
    return sorted(BENCH.rglob("*.onnx")) if BENCH.is_dir() else []


def test_vnncomp2021_networks_match_onnxruntime() -> None:
    files = _bench_files()
    if not files:
        pytest.skip(f"benchmarks not found under {BENCH}")
    rng = np.random.default_rng(0)
    failures = []
    for path in files:
        net = load(path)
        ref = OnnxReference(path)
        x = rng.uniform(0.0, 1.0, (20, net.n_inputs))
        got, want = net.evaluate(x), ref.run(x)
        err = np.max(np.abs(got - want) / (1.0 + np.abs(want)))
        if not err <= 1e-4:
            failures.append(f"{path.name}: {err:.2e}")
        assert net.n_outputs == math.prod(net.io.output_shape)
    assert not failures, failures
