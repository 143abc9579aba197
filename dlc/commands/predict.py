"""`dlc predict`: predictions with class names and probabilities (or regression values) from raw
inputs, to stdout as CSV or to a .csv/.npz/.json file."""

from __future__ import annotations

import sys

from dlc.runtime import infer


def command(model: str, input: str, output: str | None, batch_size: int, device: str) -> None:
    m = infer.load_model(model, device)
    text = infer.write_predictions(m, infer.predict(m, input, batch_size, output), output)
    if text is not None:
        sys.stdout.write(text)
    else:
        print(f"wrote {output}", file=sys.stderr)
