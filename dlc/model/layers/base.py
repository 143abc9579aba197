"""The layer contract (after Keras' split of config, shape rule, weights and call).

A layer is built from its filled spec mapping (`from_spec`), states a pure shape rule
(`output_shape`), declares its parameters (`params`) and lowers itself to ONNX nodes through the
builder (`lower`). Shapes here are per sample: the batch dimension is implicit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from dlc.model.layers.fields import Field, defaults

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """A layer cannot take the shape it is given; the message names what was expected."""


@dataclass(frozen=True)
class Param:
    name: str  # "<layer>.<weight|bias|...>", unique in the model
    shape: Shape
    init: Callable[[Any, Shape], Any]  # (numpy Generator, shape) -> float32 array
    trainable: bool = True  # False: a buffer (running statistics), updated by the graph itself


@dataclass
class Ctx:
    """What lowering needs to know beyond the input: inference or training, the device the
    train graph runs on (forms measured faster on one device only), and where noise comes from."""

    training: bool = False
    device: str = "cpu"
    noise: Callable[[str, Shape], str] | None = None  # (layer name, per-sample shape) -> U[0,1) input
    updates: dict[str, str] = field(default_factory=dict)  # buffer name -> its new value (training)
    source: str = ""  # the model's raw input tensor (e.g. token ids, for padding masks)


@dataclass
class Layer:
    """Base class; subclasses declare their spec fields and override the methods they need.

    `schema_name` names the layer's schema entry (several types may share one: conv1d and
    conv2d), `spec_doc` and `type_doc` describe it, `fields` lists its keys (see fields.py).
    The field defaults are filled in here, so a layer reads `cfg[k]` and layers built inside
    other layers (a transformer's dense parts) need not repeat them."""

    name: str
    cfg: dict = field(default_factory=dict)
    multi: ClassVar[bool] = False  # True: takes several inputs; shapes and tensors come as lists
    schema_name: ClassVar[str] = ""
    spec_doc: ClassVar[str] = ""
    type_doc: ClassVar[str] = ""
    fields: ClassVar[tuple[Field, ...]] = ()

    def __post_init__(self):
        self.cfg = {**defaults(self.fields), **self.cfg}

    @classmethod
    def from_spec(cls, cfg: dict) -> "Layer":
        return cls(name=cfg["name"], cfg=dict(cfg))

    def to_spec(self) -> dict:
        return dict(self.cfg)

    def output_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def params(self, in_shape: Shape) -> list[Param]:
        return []

    def flops(self, in_shape: Shape) -> int:
        """Floating-point operations per sample of the forward pass (a multiply-add counts 2)."""
        return 0

    def lower(self, b, x: str, p: dict[str, str], ctx: Ctx, in_shape: Shape) -> str:
        raise NotImplementedError


def numel(shape: Shape) -> int:
    return math.prod(shape)
