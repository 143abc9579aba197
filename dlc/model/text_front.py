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

The tokens travel flat ([K], with each one's row) between the cuts: Compress drops the empty
pieces in order, where a [N, W] matrix would need a sort per cut (5x slower on 5,000 glosses).
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
# a word that neither a space nor a mark cuts (RE2 syntax, every character escaped)
PLAIN = "[^" + "".join(f"\\x{{{ord(c):02x}}}" for c in SPACES + PUNCTUATION) + "]*"


def text_tokens(b: Builder, raw: str, lowercase: bool) -> tuple[str, str]:
    """Raw strings [N] -> (tokens [K], rows [K]): every token of every text, in order, with the
    row it came from. Flat, so that each cut drops its empty pieces without sorting anything.
    Only the words with a space or mark in them go through the cuts (one RegexFullMatch finds
    them; most words have none), and _merge puts their pieces back in place."""
    with b.scope("tokens"):
        if lowercase:
            raw = b.StringNormalizer(raw, case_change_action="LOWER", locale=LOCALE)
        words = b.op("StringSplit", raw, outputs=2)[0]  # [N, W], "" after each row's words
        n = b.Squeeze(b.Shape(raw), b.const([0]))
        rows = b.Expand(b.Unsqueeze(b.Range(b.const(0), n, b.const(1)), b.const([1])),
                        b.Shape(words))
        words, rows = _non_empty(b, words, rows)
        plain = b.RegexFullMatch(words, pattern=PLAIN)
        cut = b.Not(plain)
        tokens, owner = b.Compress(words, cut, axis=0), b.Compress(_positions(b, words), cut,
                                                                  axis=0)
        for space in SPACES:
            tokens, owner = _non_empty(b, *_cut(b, tokens, owner, space, keep=False))
        for mark in PUNCTUATION:
            tokens, owner = _non_empty(b, *_cut(b, tokens, owner, mark, keep=True))
        return _merge(b, words, rows, plain, tokens, owner)


def _positions(b: Builder, t: str) -> str:
    """0, 1, ..., len(t) - 1 for a 1-D t."""
    return b.Range(b.const(0), b.Squeeze(b.Shape(t), b.const([0])), b.const(1))


def _merge(b: Builder, words: str, rows: str, plain: str, pieces: str, owner: str):
    """The plain words [K] and the pieces of the others (owner: the index of each piece's word,
    ascending) in word order, with their rows. A plain word lands after the plain words and
    pieces of every earlier word, a piece after the plain words before its owner and the
    pieces before it: positions whose inverse gathers the strings (no sort)."""
    zeros = b.Expand(b.const([0]), b.Shape(words))
    before = b.CumSum(b.Cast(plain, to=onnx.TensorProto.INT64), b.const(0), exclusive=1)
    cut_before = b.CumSum(b.ScatterElements(zeros, owner, b.Expand(b.const([1]), b.Shape(owner)),
                                            reduction="add"), b.const(0), exclusive=1)
    plain_at = b.Compress(b.Add(before, cut_before), plain, axis=0)
    piece_at = b.Add(_positions(b, pieces), b.Gather(before, owner))
    source = b.Concat(b.Compress(_positions(b, words), plain, axis=0), owner, axis=0)
    at = b.Concat(plain_at, piece_at, axis=0)
    order = b.ScatterElements(b.Expand(b.const([0]), b.Shape(at)), at, _positions(b, at))
    tokens = b.Gather(b.Concat(b.Compress(words, plain, axis=0), pieces, axis=0), order)
    return tokens, b.Gather(rows, b.Gather(source, order))


def text_front(b: Builder, raw: str, vocab: list[str], max_length: int, lowercase: bool) -> str:
    """Raw strings [N] -> int64 ids [N, max_length] through `vocab` (id -> token; ids 0 and 1
    are SPECIALS). The reusable front for any string column of raw text."""
    tokens, rows = text_tokens(b, raw, lowercase)
    with b.scope("vocab"):
        # LabelEncoder needs a key: "<none>" is never a token ("<" and ">" are cut out of words)
        keys = np.array(vocab[len(SPECIALS):] or ["<none>"], object)
        values = np.arange(len(SPECIALS), len(SPECIALS) + len(keys), dtype=np.int64)
        ids = b.op("LabelEncoder", tokens, domain=ML_DOMAIN, default_int64=OOV,
                   keys_tensor=onnx.numpy_helper.from_array(keys, "keys"),
                   values_tensor=onnx.numpy_helper.from_array(values, "values"))
        ids = b.Concat(ids, b.const([PAD]), axis=0)  # [K + 1]: the last one pads
        # row n's tokens are ids[start[n]:start[n] + count[n]] (rows ascend): gather the first
        # max_length of them, and the padding id past each row's end
        count = b.ScatterElements(b.Expand(b.const([0]), b.Shape(raw)), rows,
                                  b.Expand(b.const([1]), b.Shape(rows)), reduction="add")
        start = b.Unsqueeze(b.CumSum(count, b.const(0), exclusive=1), b.const([1]))  # [N, 1]
        at = b.const(np.arange(max_length, dtype=np.int64)[None, :])  # [1, T]
        last = b.Sub(b.Shape(ids), b.const([1]))
        where = b.Where(b.Less(at, b.Unsqueeze(count, b.const([1]))), b.Add(start, at), last)
        return b.Reshape(b.Gather(ids, where), b.const([-1, max_length]))  # states the width


def _cut(b: Builder, tokens: str, rows: str, mark: str, keep: bool) -> tuple[str, str]:
    """Tokens [K] -> their pieces around `mark`, flat, with the mark between two pieces where
    it stood (`keep`) and "" elsewhere; rows [K] (a tag per token) -> the tag of each piece."""
    pieces, counts = b.op("StringSplit", tokens, delimiter=mark, outputs=2)  # [K, P], [K]
    if keep:
        at = b.Range(b.const(0), b.Squeeze(b.Slice(b.Shape(pieces), b.const([1]), b.const([2])),
                                           b.const([0])), b.const(1))
        inside = b.Less(at, b.Unsqueeze(b.Sub(counts, b.const(1)), b.const([-1])))  # [K, P]
        marks = b.Where(inside, b.const(mark), b.const(""))
        pieces = b.Concat(b.Unsqueeze(pieces, b.const([-1])), b.Unsqueeze(marks, b.const([-1])),
                          axis=-1)  # [K, P, 2]: piece, mark, piece, mark, ...
    rows = b.Expand(b.Reshape(rows, b.const([-1, 1, 1][:2 + keep])), b.Shape(pieces))
    return pieces, rows


def _non_empty(b: Builder, tokens: str, rows: str) -> tuple[str, str]:
    """Tokens and their rows (same shape) -> both flat, without the empty tokens."""
    flat = b.Reshape(tokens, b.const([-1]))
    kept = b.Not(b.Equal(flat, b.const("")))
    return b.Compress(flat, kept, axis=0), b.Compress(b.Reshape(rows, b.const([-1])), kept,
                                                      axis=0)
