"""A small typed builder over onnx.helper: the one place ONNX nodes are made."""

from dlc.graph.builder import IR_VERSION, OPSET, Builder, attr, schema

__all__ = ["IR_VERSION", "OPSET", "Builder", "attr", "schema"]
