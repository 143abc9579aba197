"""Text classification data (`data.text`): a CSV of raw text and a label.

`data.text: {column: text, tokenizer: word, max_length: T, vocab_size: V, lowercase: true,
min_freq: 1}`. Tokens are what the model's own text front computes (dlc.model.text_front:
lowercased, split on whitespace, each ASCII punctuation mark a token of its own): training runs
those very ONNX nodes over its texts, so train and predict tokenise alike by construction. The
vocabulary is built from the training split only: the tokens seen at least min_freq times, most
frequent first (ties by token), at most V ids in all, where id 0 is padding (`<pad>`) and id 1
stands for every token outside the vocabulary (`<oov>`). The network learns from int64 [T] ids
(`input: {shape: [T], dtype: int64}`): the first T tokens, padded with 0 at the end.

The exported model takes the raw text itself (a string per row) and computes the ids in its
graph; the settings and the vocabulary are also stored in its metadata (`dlc.text`), for display.
"""

from __future__ import annotations

from pathlib import Path


from dlc.data._csv import _column_index
from dlc.data._table import Table, read_table
from dlc.data._targets import encode_cells
from dlc.errors import DlcError
from dlc.files.untrusted import MAX_TABLE_BYTES, read_bytes
from dlc.data.tokens import TextSpec

DEFAULTS = {"column": "text", "tokenizer": "word", "vocab_size": 10000, "lowercase": True,
            "min_freq": 1}
def _integer(cfg: dict, key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DlcError(f"data.text.{key}: expected an integer >= {minimum}, found {value!r}")
    return value


def text_config(spec: dict) -> TextSpec | None:
    """spec["data"]["text"] checked against input (shape [T], dtype int64); None without it."""
    cfg = (spec.get("data") or {}).get("text")
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise DlcError(f"data.text: expected a mapping (column, tokenizer, ...), found {cfg!r}")
    if (spec.get("data") or {}).get("features") is not None:
        raise DlcError("data.features does not apply to text; the text column is data.text.column")
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    if cfg["tokenizer"] != "word":
        raise DlcError(f"data.text.tokenizer: '{cfg['tokenizer']}' cannot be computed inside the "
                       "model (no standard ONNX op splits a string into characters); use word")
    inp = spec.get("input") or {}
    shape = [int(d) for d in inp.get("shape") or []]
    length = cfg.get("max_length", shape[0] if len(shape) == 1 else None)
    if length is None:
        raise DlcError("data.text.max_length is required (tokens per sample)")
    cfg["max_length"] = length
    out = TextSpec(cfg["column"], cfg["tokenizer"], _integer(cfg, "max_length", 1),
                   bool(cfg["lowercase"]), _integer(cfg, "vocab_size", 3),
                   _integer(cfg, "min_freq", 1))
    if shape and shape != [out.max_length]:
        raise DlcError(f"data.text: samples are {out.max_length} token ids; input.shape is "
                       f"{shape}, set it to [{out.max_length}]")
    if inp.get("dtype", "float32") != "int64":
        raise DlcError("data.text makes int64 token ids; set input.dtype: int64")
    return out


def _text_cells(table: Table, ref: str | int, key: str) -> tuple[int, list[str]]:
    col = _column_index(ref, table, key)
    return col, [row[col] for row in table.rows]


def load_text_csv(path: Path, display: str, spec: dict, ts: TextSpec, known: list[str] | None,
                  strict: bool, require_target: bool = True):
    """(texts, y or None, labels) from a CSV with a text column and a label column."""
    data = spec.get("data") or {}
    table = read_table(path, display, bool(data.get("header", True)))
    col, texts = _text_cells(table, ts.column, "data.text.column")
    ref = data.get("target")
    if ref is None:
        ref = len(table.columns) - 1
        if ref == col:
            if require_target:
                raise DlcError(f"{display}: the last column is the text column; name the label "
                               f"column with data.target")
            return texts, None, known
    elif not require_target and isinstance(ref, str) and ref not in table.columns:
        return texts, None, known
    target = _column_index(ref, table, "data.target")
    if target == col:
        raise DlcError(f"data.target: column '{table.columns[col]}' is also the text column")
    kind = (spec.get("task") or {}).get("kind", "classification")
    y, labels = encode_cells([row[target] for row in table.rows], kind, known, strict,
                             lambda i: f"{display}:{table.lines[i]}", table.columns[target])
    return texts, y, labels


def read_texts(path: Path, column: str | int) -> list[str]:
    """Raw texts for `dlc predict`: a .txt file (one text per non-blank line), or a CSV with the
    model's text column (by its header name), or a CSV of a single column (no header)."""
    if path.suffix.lower() == ".txt":
        try:
            lines = read_bytes(path, "input file", MAX_TABLE_BYTES).decode("utf-8-sig") \
                .splitlines()
        except UnicodeDecodeError as e:
            raise DlcError(f"cannot read {path.name}: {e}") from None
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise DlcError(f"{path.name}: no texts (one per line)")
        return texts
    table = read_table(path, path.name, header=False)
    first = [c.strip() for c in table.rows[0]]
    if isinstance(column, str) and column in first:
        i = first.index(column)
        if len(table.rows) == 1:
            raise DlcError(f"{path.name}: no data rows below the header")
        return [row[i] for row in table.rows[1:]]
    if len(first) == 1:
        return [row[0] for row in table.rows]
    raise DlcError(f"{path.name}: no column '{column}' (the model's text column) in its header, "
                   f"and {len(first)} columns; give a header with '{column}' or one text per row")
