"""Walk an onnx2torch ``fx.GraphModule`` and emit our typed layers.

The module is executed once on a sample input, node by node, so every tensor has a concrete
shape and every node whose inputs are all constants (initializers, ``Constant``, shape
arithmetic) is folded to its value. The remaining nodes depend on the network input; each is
translated by a handler in :mod:`onnx_models.ops` into layers on *sample* tensors (the ONNX
tensor without its batch axis).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx

from onnx_models.errors import OnnxModelError
from onnx_models.layers import ElementwiseAffine, Gather, Layer, Linear, Node, Reshape

#: Largest dense matrix (entries) the generic affine fallback may build.
MAX_DENSE_ENTRIES = 1 << 24


@dataclass(frozen=True)
class Value:
    """A tensor that depends on the network input.

    ``index`` is the IR node producing it (``-1``: the network input), ``full`` the ONNX
    shape, and ``batched`` whether ``full[0]`` is the (size-1) batch axis, which the IR
    keeps outside the sample shape.
    """

    index: int
    full: tuple[int, ...]
    batched: bool

    @property
    def sample(self) -> tuple[int, ...]:
        """The IR sample shape."""
        return self.full[1:] if self.batched else self.full


@dataclass
class Call:
    """One fx node to translate: its module, arguments and concrete values."""

    module: Any
    args: list[Any]  # Value for input-dependent tensors, else the constant itself
    kwargs: dict[str, Any]
    concrete: list[Any]  # the concrete value of every positional argument
    out: torch.Tensor
    name: str

    def var_positions(self) -> list[int]:
        """Positions of input-dependent arguments."""
        return [i for i, a in enumerate(self.args) if isinstance(a, Value)]


@dataclass
class Builder:
    """Accumulates IR nodes while the fx graph is walked."""

    has_batch: bool
    dtype: torch.dtype
    model_name: str
    nodes: list[Node] = field(default_factory=list)

    def default_batched(self, full: tuple[int, ...]) -> bool:
        """Whether a freshly shaped tensor keeps ``full[0]`` as the batch axis."""
        return self.has_batch and len(full) >= 2 and full[0] == 1

    def emit(self, layer: Layer, inputs: list[Value], full: tuple[int, ...], batched: bool,
             name: str) -> Value:
        """Append a node and return its output value."""
        out = Value(len(self.nodes), tuple(full), batched)
        self.nodes.append(Node(layer, tuple(v.index for v in inputs), out.sample, name))
        return out

    def reshape(self, v: Value, full: tuple[int, ...], batched: bool, name: str) -> Value:
        """``v`` viewed with ONNX shape ``full``; emits a Reshape only when the sample changes."""
        target = Value(v.index, tuple(full), batched)
        if target.sample == v.sample:
            return target
        return self.emit(Reshape(target.sample), [v], full, batched, name)

    def to_batched(self, v: Value, name: str) -> Value:
        """``v`` with its leading size-1 axis as the batch axis (for conv/pool/norm layers)."""
        if v.batched:
            return v
        if len(v.full) < 2 or v.full[0] != 1:
            raise self.error(f"{name}: needs a leading batch axis of size 1, got shape {list(v.full)}")
        return self.reshape(v, v.full, True, name)

    def expand(self, v: Value, full: tuple[int, ...], name: str) -> Value:
        """``v`` broadcast (numpy rules) to ONNX shape ``full``: a Gather, or ``v`` itself."""
        full = tuple(full)
        if v.full == full:
            return v
        idx = torch.arange(numel(v.full)).reshape(v.full)
        try:
            idx = torch.broadcast_to(idx, full).reshape(-1).clone()
        except RuntimeError as exc:
            raise self.error(f"{name}: cannot broadcast shape {list(v.full)} to {list(full)}") from exc
        batched = self.default_batched(full)
        if idx.numel() == numel(v.full):  # only size-1 axes added or removed: a view
            return self.reshape(v, full, batched, name)
        target = Value(v.index, full, batched)
        return self.emit(Gather(idx, target.sample), [v], full, batched, name)

    def same_view(self, vs: list[Value], name: str) -> list[Value]:
        """Values of one ONNX shape, all viewed with the same batch flag (multi-input layers)."""
        batched = all(v.batched for v in vs)
        return [self.reshape(v, v.full, batched, f"{name}/view{i}") for i, v in enumerate(vs)]

    def affine(self, v: Value, scale: Any, shift: Any, name: str) -> Value:
        """``v * scale + shift`` (scalars, or tensors broadcasting against ``v.sample``)."""
        layer = ElementwiseAffine(self.tensor(scale), self.tensor(shift))
        return self.emit(layer, [v], v.full, v.batched, name)

    def unary(self, layer: Layer, v: Value, name: str) -> Value:
        """A shape-preserving one-input layer on ``v``."""
        return self.emit(layer, [v], v.full, v.batched, name)

    def tensor(self, t: Any) -> torch.Tensor:
        """A constant as a detached tensor in the network dtype."""
        return torch.as_tensor(t).detach().to(self.dtype).clone()

    def error(self, message: str) -> OnnxModelError:
        """An OnnxModelError naming the model."""
        return OnnxModelError(f"{self.model_name}: {message}")


@dataclass
class Multi:
    """A multi-output op (Split) on input-dependent tensors; each ``getitem`` of it is
    translated by the op's handler on a :class:`Call` whose module picks that output."""

    call: Call
    handler: Callable[[Builder, Call], Value]


@dataclass(frozen=True)
class Item:
    """``module(...)[index]``: one output of a multi-output module, as a callable."""

    module: Any
    index: int

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)[self.index]


def dense_affine(b: Builder, c: Call) -> Value:
    """Translate an affine op of one input tensor as Reshape + dense Linear + Reshape.

    The exact matrix is the Jacobian of the op at the sample point (the op is affine, so
    any point gives the same matrix) and the bias its value at zero.
    """
    pos = c.var_positions()
    if len(pos) != 1:
        raise b.error(f"{c.name}: {type(c.module).__name__} of {len(pos)} input-dependent tensors "
                      "is not supported")
    (p,) = pos
    v: Value = c.args[p]
    x0 = torch.as_tensor(c.concrete[p])
    n_in, n_out = x0.numel(), c.out.numel()
    if n_in * n_out > MAX_DENSE_ENTRIES:
        raise b.error(f"{c.name}: {type(c.module).__name__} with this layout would need a "
                      f"{n_out}x{n_in} dense matrix")

    def f(flat: torch.Tensor) -> torch.Tensor:
        args = list(c.concrete)
        args[p] = flat.reshape(x0.shape)
        return c.module(*args, **c.kwargs).reshape(-1)

    zero = torch.zeros(n_in, dtype=x0.dtype)
    with torch.enable_grad():
        try:
            jac = torch.autograd.functional.jacobian(f, zero, vectorize=True)
        except Exception:  # a module vmap cannot batch: one backward pass per output
            jac = torch.autograd.functional.jacobian(f, zero)
    with torch.no_grad():
        bias = f(zero)
    flat_in = b.reshape(v, (n_in,), False, c.name + "/flatten")
    lin = b.emit(Linear(b.tensor(jac.reshape(n_out, n_in)), b.tensor(bias)), [flat_in],
                 (n_out,), False, c.name)
    full = tuple(c.out.shape)
    return b.reshape(lin, full, b.default_batched(full), c.name + "/reshape")


def _run_node(gm: fx.GraphModule, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Execute one fx node on concrete arguments."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    raise OnnxModelError(f"unexpected fx node kind {node.op!r}")


def _module_of(gm: fx.GraphModule, node: fx.Node) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    return node.target


def walk(gm: fx.GraphModule, sample: torch.Tensor, b: Builder,
         handler_for: Callable[[Any], Callable[[Builder, Call], Value] | None]) -> tuple[Value, torch.Tensor]:
    """Execute and translate every node; returns the output value and its concrete tensor."""
    env: dict[fx.Node, Any] = {}
    sym: dict[fx.Node, Value | Multi] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = sample
            sym[node] = Value(-1, tuple(sample.shape), b.default_batched(tuple(sample.shape)))
            continue
        if node.op == "get_attr":
            env[node] = _get_attr(gm, node.target)
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node) or not isinstance(sym.get(result), Value):
                raise b.error("the graph output does not depend on the input (or is not one tensor)")
            return sym[result], env[result]
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        with torch.no_grad():
            env[node] = _run_node(gm, node, tuple(args), dict(kwargs))
        deps = [n for n in node.all_input_nodes if n in sym]
        module = _module_of(gm, node)
        if not deps or type(module).__name__ == "OnnxShape":
            continue  # constant: folded to its value
        sym[node] = _translate(node, module, env, sym, b, handler_for)
    raise b.error("the graph has no output")


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _translate(node: fx.Node, module: Any, env: dict, sym: dict, b: Builder,
               handler_for: Callable[[Any], Any]) -> Value:
    """Translate one input-dependent fx node."""
    def pick(n: fx.Node) -> Any:
        return sym.get(n, env[n])

    if node.op == "call_function" and module is operator.getitem and isinstance(sym.get(node.args[0]), Multi):
        return _item(node, sym[node.args[0]], env[node], b)
    args = list(fx.node.map_arg(node.args, pick))
    if any(isinstance(a, Multi) for a in args):
        raise b.error(f"{node.name}: a multi-output op feeds a node other than its item selection")
    kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: env[n]))
    kw_nodes: list[fx.Node] = []
    fx.node.map_arg(node.kwargs, lambda n: kw_nodes.append(n) or n)
    if any(n in sym for n in kw_nodes):
        raise b.error(f"{node.name}: input-dependent keyword arguments are not supported")
    out = env[node]
    kind = type(module).__name__ if node.op == "call_module" else getattr(module, "__name__", str(module))
    handler = handler_for(module) if node.op == "call_module" else None
    if handler is None:
        raise b.error(f"operation {kind} ({node.name}) on an input-dependent tensor is not supported")
    concrete = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
    call = Call(module, args, kwargs, concrete, out, node.name)
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return Multi(call, handler)
    if not isinstance(out, torch.Tensor):
        raise b.error(f"{node.name}: {kind} does not produce a single tensor")
    return handler(b, call)


def _item(node: fx.Node, multi: Multi, out: Any, b: Builder) -> Value:
    """Translate ``multi[i]`` with the multi-output op's handler."""
    index = node.args[1]
    if not isinstance(index, int) or not isinstance(out, torch.Tensor):
        raise b.error(f"{node.name}: unsupported selection from a multi-output op")
    c = multi.call
    return multi.handler(b, Call(Item(c.module, index), c.args, c.kwargs, c.concrete, out, node.name))


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a shape."""
    return math.prod(shape)


def agrees_up_to_rounding(network: Any, gm: fx.GraphModule, sample: torch.Tensor,
                          ref: torch.Tensor, rel_tol: float = 1e-4, factor: float = 8.0) -> bool:
    """Whether float32 ``network`` matches the onnx2torch module's output ``ref`` on ``sample``
    within ``rel_tol`` plus ``factor`` times the module's own float32 rounding error (its
    float32 output against its float64 output), for models whose outputs cancel badly.
    A conversion error is O(1), far above that noise."""
    import copy

    try:
        gm64 = copy.deepcopy(gm).double()
        with torch.no_grad():
            exact = gm64(sample.double())
            got = network.forward(sample.reshape(1, -1)).double().reshape(-1)
    except Exception:  # a module that cannot run in float64
        return False
    want = ref.detach().double().reshape(-1)
    if not isinstance(exact, torch.Tensor) or exact.numel() != want.numel() or got.numel() != want.numel():
        return False
    exact = exact.double().reshape(-1)
    noise = float(((want - exact).abs() / (1 + exact.abs())).max())
    return bool(torch.all((got - want).abs() <= (rel_tol + factor * noise) * (1 + want.abs())))
