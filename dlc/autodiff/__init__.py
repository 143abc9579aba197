"""Reverse-mode autodiff over ONNX graphs: a table of VJP rules (rules.py, rules_linalg.py,
rules_shape.py, conv_transpose.py) and one driver."""

from dlc.autodiff import conv_transpose  # noqa: F401  (registers ConvTranspose)
from dlc.autodiff import rules_linalg  # noqa: F401  (registers Gemm, MatMul)
from dlc.autodiff import rules_shape  # noqa: F401  (registers Gather, Slice, Concat, Split)
from dlc.autodiff.driver import gradients, infer_shapes
from dlc.autodiff.rules import BROADCAST, VJP

__all__ = ["BROADCAST", "VJP", "gradients", "infer_shapes"]
