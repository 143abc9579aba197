"""Graph builder: `b.Gemm(x, w, bias, transB=1)` appends one node and returns its output name.

Inputs are positional (tensor names or handles with a `name`, None for a skipped optional input)
and attributes are keyword-only, as in onnxscript and spox. Each call is checked against the ONNX
schema of the pinned opset, so a wrong op name or arity fails at the line that built it. IR
version and opset are pinned here and nowhere else: onnx >= 1.23 stamps IR 14 by default, which
onnxruntime < 1.32 rejects.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlc import __version__

IR_VERSION = 9  # the lowest IR that carries opset 20; loads on every onnxruntime since ~1.16
OPSET = 20  # LayerNormalization (17), Reduce* axes as input (18), StringSplit and Gelu (20)
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 4  # LabelEncoder with tensor keys and defaults (ai.onnx.ml 4)
OPSET_IMPORTS = (("", OPSET), (ML_DOMAIN, ML_OPSET))  # every model dlc writes declares both

DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "int64": TensorProto.INT64,
          "bool": TensorProto.BOOL, "string": TensorProto.STRING}


@lru_cache(maxsize=None)
def schema(op_type: str, domain: str = "") -> onnx.defs.OpSchema:
    """The ONNX schema of `op_type` in the pinned opset of `domain` (AttributeError when none)."""
    version = dict(OPSET_IMPORTS)[domain]
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        raise AttributeError(f"{op_type} is not an op of {domain or 'ai.onnx'} opset {version}") \
            from None


def make_model(graph: onnx.GraphProto, **kwargs) -> onnx.ModelProto:
    """`graph` as a model with dlc's pinned IR version and opsets (the one place they are set)."""
    return helper.make_model(graph, ir_version=IR_VERSION, **kwargs, opset_imports=[
        helper.make_opsetid(domain, version) for domain, version in OPSET_IMPORTS])


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute `name` of `node`, or `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class Builder:
    """Collects nodes, initializers, inputs and outputs; names everything after the current scope."""

    def __init__(self, float_type: str = "float32"):
        self.float_type = float_type
        self.np_float = np.dtype(float_type)
        self.float_code = DTYPES[float_type]  # the ONNX element type of float tensors
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.consts: dict[str, np.ndarray] = {}  # name -> value of every constant initializer
        self._const_cache: dict[tuple, str] = {}
        self._used: set[str] = set()
        self._scope: list[str] = []

    # ---- naming -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def fresh(self, base: str) -> str:
        """A tensor/node name unique in this graph, prefixed by the scope (`fc1/Gemm`, `fc1/Gemm_1`)."""
        stem = "/".join([*self._scope, base])
        name, k = stem, 0
        while name in self._used:
            k += 1
            name = f"{stem}_{k}"
        self._used.add(name)
        return name

    def reserve(self, *names: str) -> None:
        """Names taken by a graph copied in (dlc.graph.foreign): fresh() will not reuse them."""
        self._used.update(names)

    # ---- nodes ------------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str | None, outputs: int = 1, domain: str = "", **attrs):
        """Append one node of `domain` (default ai.onnx); return its output name (or a list when
        outputs > 1)."""
        formal = schema(op_type, domain)
        if len(inputs) < formal.min_input or len(inputs) > formal.max_input:
            raise TypeError(f"{op_type} takes {formal.min_input}..{formal.max_input} inputs, "
                            f"got {len(inputs)}")
        name = self.fresh(op_type)
        outs = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self._used.update(outs)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        names = ["" if i is None else i if isinstance(i, str) else i.name  # a handle: its name
                 for i in inputs]  # (dlc.autodiff's Var)
        self.nodes.append(helper.make_node(op_type, names, outs, name=name,
                                           domain=domain or None, **attrs))
        return outs[0] if outputs == 1 else outs

    def __getattr__(self, op_type: str):
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        schema(op_type)
        return lambda *inputs, **attrs: self.op(op_type, *inputs, **attrs)

    # ---- constants and graph interface ------------------------------------------------------
    def const(self, value, dtype=None, name: str | None = None) -> str:
        """A constant initializer. Small constants with equal values share one tensor."""
        arr = np.asarray(value, dtype=dtype if dtype is not None else self._default_dtype(value))
        # strings by value: the bytes of an object array are pointers
        value_key = tuple(arr.ravel().tolist()) if arr.dtype == object else arr.tobytes()
        key = (arr.dtype.str, arr.shape, value_key) if arr.size <= 16 and name is None else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        tname = self.fresh(name or "const")
        self.initializers.append(numpy_helper.from_array(arr, tname))
        self.consts[tname] = arr
        if key is not None:
            self._const_cache[key] = tname
        return tname

    def _default_dtype(self, value):
        kind = np.asarray(value).dtype.kind
        return np.int64 if kind in "iub" else object if kind in "OU" else self.np_float

    def initializer(self, name: str, value: np.ndarray) -> str:
        """A named initializer (a trained parameter in an inference model)."""
        self._used.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def input(self, name: str, dtype: str, shape) -> str:
        self._used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], list(shape)))
        return name

    def output(self, tensor: str, name: str, dtype: str, shape=None) -> str:
        """Expose `tensor` as graph output `name` (through an Identity when the names differ)."""
        if tensor != name:
            self._used.add(name)
            self.nodes.append(helper.make_node("Identity", [tensor], [name], name=name))
        self.outputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], shape))
        return name

    def live(self) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Nodes and initializers that some graph output depends on (rules emit gradients for
        every input; those nobody reads are dropped here, once, since onnxruntime runs them)."""
        needed = {o.name for o in self.outputs}
        nodes = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                nodes.append(node)
                needed.update(i for i in node.input if i)
        inits = [t for t in self.initializers if t.name in needed]
        return nodes[::-1], inits

    def model(self, graph_name: str, metadata: dict[str, str] | None = None,
              doc: str = "") -> onnx.ModelProto:
        nodes, inits = self.live()
        graph = helper.make_graph(nodes, graph_name, self.inputs, self.outputs, inits,
                                  doc_string=doc)
        model = make_model(graph, producer_name="dlc")

        model.producer_version = __version__
        for key, value in (metadata or {}).items():
            model.metadata_props.add(key=key, value=value)
        return model
