"""How much memory traffic the normalisation layers' backward passes make (issue 14): counted as
the nodes whose output is as large as the activation, in the forward + backward graph that
dlc's lowering and VJP table emit. Values are checked elsewhere (tests/test_cnn.py and
tests/test_sequence.py against torch, tests/test_vjp_rules.py against finite differences)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import pytest

from dlc.autodiff import gradients
from dlc.graph import Builder
from dlc.model.layers import LAYERS


class Ctx:
    training = True

    def __init__(self):
        self.updates = {}


VIEWS = {"Identity", "Reshape", "Flatten", "Unsqueeze", "Squeeze"}


def full_size_ops(kind: str, shape: tuple) -> Counter:
    b = Builder()
    c = shape[1] if kind == "batchnorm" else shape[-1]
    x = b.input("x", "float32", list(shape))
    p = {f"n.{k}": b.input(f"n.{k}", "float32", [c]) for k in ("gamma", "beta")}
    p.update({f"n.{k}": b.const(np.full(c, v, np.float32))
              for k, v in (("running_mean", 0.0), ("running_var", 1.0))})
    y = LAYERS[kind]("n", {"type": kind}).lower(b, x, p, Ctx(), shape[1:])
    loss = b.ReduceSum(b.Mul(y, y), keepdims=0)
    for name, g in gradients(b, loss, [x, *p.values()][:3]).items():
        b.output(g, f"d.{name}", "float32")
    model = onnx.shape_inference.infer_shapes(b.model("norm"), strict_mode=True, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in model.graph.value_info}
    size = math.prod(shape)
    return Counter(n.op_type for n in model.graph.node  # views (onnxruntime aliases): no pass
                   if n.op_type not in VIEWS and math.prod(shapes.get(n.output[0], [0])) == size)


@pytest.mark.parametrize("kind,shape,most", [("batchnorm", (8, 4, 6, 6), 11),
                                             ("layernorm", (4, 5, 16), 11)])
def test_norm_backward_divides_only_small_statistics(kind, shape, most):
    """No Div, Sub or Neg over activation-sized tensors: each was an extra pass over memory.
    Counts include the test loss's own four (y * y; Expand, Add and Mul in its gradient),
    and the Expands that shape inference sees only with data propagation (uncounted before:
    the figures then were one to three lower). Layernorm: 19 when it lowered to primitive ops
    whose backward divided only the statistics, 11 with one LayerNormalization and the
    closed-form backward of its rule (autodiff/norm.py). Batchnorm: 11 with the closed form of
    its BatchNormalization rule, 14 when the table chained through its statistics' ops."""
    ops = full_size_ops(kind, shape)
    assert not {"Div", "Sub", "Neg"} & set(ops), ops
    assert sum(ops.values()) <= most, ops


def test_relu_backward_reads_its_output_not_its_input():
    """The gradient of y = Relu(h) reads y, which a following layer keeps for its own backward:
    h (a batchnorm's or a residual sum's output, as large) is freed after the forward."""
    b = Builder()
    x = b.input("x", "float32", [4, 3])
    h = b.Add(x, b.const(np.ones(3, np.float32)))
    y = b.Relu(h)
    loss = b.ReduceSum(b.Mul(y, y), keepdims=0)
    b.output(gradients(b, loss, [x])[x], "dx", "float32")
    relu_grad = [n for n in b.nodes if n.name.startswith("Relu.grad")]
    assert relu_grad and all(h not in n.input for n in relu_grad), relu_grad
    assert any(y in n.input for n in relu_grad)
