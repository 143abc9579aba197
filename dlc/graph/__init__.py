"""A small typed builder over onnx.helper: the one place ONNX nodes are made."""

from dlc.graph.builder import (IR_VERSION, ML_DOMAIN, OPSET, OPSET_IMPORTS, Builder, attr,
                               make_model, schema)

__all__ = ["IR_VERSION", "ML_DOMAIN", "OPSET", "OPSET_IMPORTS", "Builder", "attr", "make_model",
           "schema"]
