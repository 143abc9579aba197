"""Token ids of raw texts as the model's own text front computes them (dlc.model.text_front):
the settings and vocabulary of one text front (TextSpec), its vocabulary built from training
texts, and the ids of any texts, by running those very ONNX nodes in onnxruntime. Used by
`data.text` (dlc.data.text) and by text columns of a table (dlc.data.columns)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from dlc.errors import DlcError
from dlc.graph.builder import Builder
from dlc.model.text_front import SPECIALS, text_front, text_tokens

CHUNK = 4096  # texts per run of the front: its first split is rows x the longest row's words


@dataclass(frozen=True)
class TextSpec:
    column: str | int
    tokenizer: str
    max_length: int
    lowercase: bool
    vocab_size: int = 10000
    min_freq: int = 1
    vocab: tuple[str, ...] = ()  # id -> token; empty until built

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's tokens (all of them; encode() truncates), as the model's front makes
        them."""
        b = Builder()
        tokens, rows = text_tokens(b, b.input("input", "string", ["N"]), self.lowercase)
        b.output(tokens, "tokens", "string")
        b.output(rows, "rows", "int64")
        out: list[list[str]] = [[] for _ in texts]
        for start, (chunk_tokens, chunk_rows) in _run(b, texts):
            for token, row in zip(chunk_tokens.tolist(), chunk_rows.tolist()):
                out[start + row].append(token)
        return out

    def build(self, texts: Iterable[str]) -> TextSpec:
        """This spec with a vocabulary built from `texts` (the training split), counted CHUNK
        texts at a time: one chunk's token lists in memory, never the split's."""
        texts, counts = list(texts), Counter()
        for i in range(0, len(texts), CHUNK):
            counts.update(t for row in self.tokens(texts[i:i + CHUNK]) for t in row)
        kept = sorted((t for t, c in counts.items() if c >= self.min_freq),
                      key=lambda t: (-counts[t], t))
        vocab = tuple(SPECIALS + kept[: self.vocab_size - len(SPECIALS)])
        return TextSpec(self.column, self.tokenizer, self.max_length, self.lowercase,
                        self.vocab_size, self.min_freq, vocab)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [n, max_length] token ids, computed by the model's front itself."""
        if not self.vocab:
            raise DlcError("data.text: no vocabulary; train a model to build one")
        b = Builder()
        ids = text_front(b, b.input("input", "string", ["N"]), list(self.vocab),
                         self.max_length, self.lowercase)
        b.output(ids, "ids", "int64")
        parts = [ids for _, (ids,) in _run(b, texts)]
        return np.concatenate(parts) if parts else np.zeros((0, self.max_length), np.int64)

    def to_meta(self) -> dict:
        """What a model stores (metadata `dlc.text`): the front's settings and vocabulary."""
        return {"column": self.column, "tokenizer": self.tokenizer,
                "max_length": self.max_length, "lowercase": self.lowercase,
                "vocab_size": self.vocab_size, "min_freq": self.min_freq,
                "vocab": list(self.vocab)}


def _run(b: Builder, texts: Sequence[str]):
    """(first row, the outputs of the graph in `b`) per CHUNK texts, one onnxruntime run each."""
    import onnxruntime as ort

    session = ort.InferenceSession(b.model("text_front").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    cells = np.array(list(texts), dtype=object)
    for i in range(0, len(cells), CHUNK):
        yield i, session.run(None, {"input": cells[i:i + CHUNK]})
