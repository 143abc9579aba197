"""Layer types by spec `type`: one table, one class per type."""

from __future__ import annotations

from dlc.model.layers.activations import LAYER_CLASSES as ACTIVATION_LAYERS
from dlc.model.layers.attention import MultiHeadAttention, TransformerEncoder
from dlc.model.layers.base import Ctx, Layer, Param, Shape, ShapeError
from dlc.model.layers.conv import (AvgPool, AvgPool1D, Conv, Conv1D, ConvTranspose, GlobalPool, MaxPool,
                             MaxPool1D, ZeroPadding)
from dlc.model.layers.core import Dense, Dropout, Flatten, Reshape
from dlc.model.layers.merge import Concat, Merge
from dlc.model.layers.norm import BatchNorm, LayerNorm
from dlc.model.layers.sequence import Embedding, PositionalEncoding, Recurrent, SequencePool

# The one list of layer types: the schema's type enum, its per-type entries and the layer
# reference are generated from it (python -m dlc.model.spec.generate). A new layer: its class + a line.
LAYERS: dict[str, type[Layer]] = {
    "dense": Dense,
    "dropout": Dropout,
    "flatten": Flatten,
    "reshape": Reshape,
    **ACTIVATION_LAYERS,
    "conv1d": Conv1D,
    "conv2d": Conv,
    "conv_transpose2d": ConvTranspose,
    "maxpool1d": MaxPool1D,
    "maxpool2d": MaxPool,
    "avgpool1d": AvgPool1D,
    "avgpool2d": AvgPool,
    "global_avg_pool": GlobalPool,
    "global_max_pool": GlobalPool,
    "zero_padding": ZeroPadding,
    "batchnorm": BatchNorm,
    "layernorm": LayerNorm,
    "add": Merge,
    "multiply": Merge,
    "average": Merge,
    "concat": Concat,
    "embedding": Embedding,
    "simple_rnn": Recurrent,
    "lstm": Recurrent,
    "gru": Recurrent,
    "multi_head_attention": MultiHeadAttention,
    "transformer_encoder": TransformerEncoder,
    "positional_encoding": PositionalEncoding,
    "sequence_pool": SequencePool,
}


def build_layer(cfg: dict) -> Layer:
    return LAYERS[cfg["type"]].from_spec(cfg)


__all__ = ["LAYERS", "Ctx", "Layer", "Param", "Shape", "ShapeError", "build_layer"]
