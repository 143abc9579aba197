"""The text front of a model: raw strings in, token ids out, in standard ONNX and ai.onnx.ml.

An exported text model takes one string per row; these nodes lowercase it (StringNormalizer,
locale C.UTF-8: "C" leaves non-ASCII letters alone and other locales may not be installed),
split it on whitespace runs (StringSplit), cut every ASCII punctuation mark out as a token of its
own, look each token up in the vocabulary (LabelEncoder: unknown tokens get OOV) and keep the
first max_length ids, padded with PAD. Training runs these very nodes over its texts
(dlc.data.text), so the ids it learns from are the ids the model computes: a plain onnxruntime
session fed the raw CSV cells answers what `dlc predict` prints.

Python's `\\w+|[^\\w\\s]` cannot be written with these ops (no op takes a substring), but its
ASCII part can: splitting on a mark, interleaving the pieces with the mark where it stood and
dropping the empty pieces puts "cat," into "cat" and ",". Marks outside ASCII stay inside their
words. No op splits a string into characters, so there is no char tokenizer.
"""

from __future__ import annotations

import string

import numpy as np
import onnx

from dlc.graph.builder import ML_DOMAIN, Builder

PAD, OOV = 0, 1
SPECIALS = ["<pad>", "<oov>"]
# string.punctuation but "_", which \w counts as a letter
PUNCTUATION = tuple(c for c in string.punctuation if c != "_")
SPACES = ("\t", "\n", "\r", "\x0b", "\x0c")  # StringSplit's default splits on " " runs only
LOCALE = "C.UTF-8"


def text_tokens(b: Builder, raw: str, lowercase: bool) -> str:
    """Raw strings [N] -> tokens [N, W]: row i's tokens first, in order, then "" (W >= 1)."""
    with b.scope("tokens"):
        if lowercase:
            raw = b.StringNormalizer(raw, case_change_action="LOWER", locale=LOCALE)
        words = b.op("StringSplit", raw, outputs=2)[0]
        rows = b.Slice(b.Shape(words), b.const([0]), b.const([1]))
        blank = b.Expand(b.const([[""]]), b.Concat(rows, b.const([1]), axis=0))
        tokens = _compact(b, b.Concat(words, blank, axis=1))  # W >= 1 when every text is blank
        for space in SPACES:
            pieces = b.op("StringSplit", tokens, delimiter=space, outputs=2)[0]
            tokens = _compact(b, b.Reshape(pieces, b.const([0, -1])))
        for mark in PUNCTUATION:
            tokens = _compact(b, _cut(b, tokens, mark))
        return tokens


def text_front(b: Builder, raw: str, vocab: list[str], max_length: int, lowercase: bool) -> str:
    """Raw strings [N] -> int64 ids [N, max_length] through `vocab` (id -> token; ids 0 and 1
    are SPECIALS). The reusable front for any string column of raw text."""
    tokens = text_tokens(b, raw, lowercase)
    with b.scope("vocab"):
        keys = np.array(["", *vocab[len(SPECIALS):]], object)
        values = np.array([PAD, *range(len(SPECIALS), len(vocab))], np.int64)
        ids = b.op("LabelEncoder", tokens, domain=ML_DOMAIN, default_int64=OOV,
                   keys_tensor=onnx.numpy_helper.from_array(keys, "keys"),
                   values_tensor=onnx.numpy_helper.from_array(values, "values"))
        padded = b.Pad(ids, b.const([0, 0, 0, max_length]), b.const(PAD))
        first = b.Slice(padded, b.const([0]), b.const([max_length]), b.const([1]))
        return b.Reshape(first, b.const([-1, max_length]))  # states the width for the layers


def _cut(b: Builder, tokens: str, mark: str) -> str:
    """Tokens [N, W] -> [N, W * 2P]: each token's pieces around `mark`, with the mark between
    them where it stood and "" elsewhere (P: the most pieces of any token)."""
    pieces, counts = b.op("StringSplit", tokens, delimiter=mark, outputs=2)  # [N, W, P], [N, W]
    at = b.Range(b.const(0), b.Slice(b.Shape(pieces), b.const([2]), b.const([3])), b.const(1))
    inside = b.Less(at, b.Unsqueeze(b.Sub(counts, b.const(1)), b.const([-1])))  # [N, W, P]
    marks = b.Where(inside, b.const(mark), b.const(""))
    pairs = b.Concat(b.Unsqueeze(pieces, b.const([-1])), b.Unsqueeze(marks, b.const([-1])),
                     axis=-1)  # [N, W, P, 2]: piece, mark, piece, mark, ...
    return b.Reshape(pairs, b.const([0, -1]))


def _compact(b: Builder, tokens: str) -> str:
    """Tokens [N, W] -> [N, W']: each row's non-empty tokens first, in order, then "", W' the
    most non-empty tokens of a row (at least 1). A stable partition by TopK on -position."""
    width = b.Slice(b.Shape(tokens), b.const([1]), b.const([2]))
    kept = b.Not(b.Equal(tokens, b.const("")))
    at = b.Range(b.const(0), b.Squeeze(width, b.const([0])), b.const(1))
    key = b.Where(kept, b.Neg(at), b.Sub(b.Neg(at), b.Squeeze(width, b.const([0]))))
    order = b.op("TopK", key, width, axis=1, outputs=2)[1]
    count = b.ReduceMax(b.ReduceSum(b.Cast(kept, to=onnx.TensorProto.INT64), b.const([1])),
                        keepdims=1)
    keep = b.Max(b.Reshape(count, b.const([1])), b.const([1]))
    return b.Slice(b.GatherElements(tokens, order, axis=1), b.const([0]), keep, b.const([1]))
