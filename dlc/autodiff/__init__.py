"""Reverse-mode autodiff over ONNX graphs: the VJP table (rules.py), filled by one module per op
family, and one driver (driver.py)."""

from dlc.autodiff import (  # noqa: F401  (each registers its family's rules)
    activations, conv, conv_transpose, elementwise, indexing, linalg, norm, reductions, shape)
from dlc.autodiff.driver import gradients, infer_shapes
from dlc.autodiff.rules import BROADCAST, VJP, defdx, defvjp, defzero

__all__ = ["BROADCAST", "VJP", "defdx", "defvjp", "defzero", "gradients", "infer_shapes"]
