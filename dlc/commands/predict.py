"""`dlc predict`: predictions with class names and probabilities (or regression values) from raw
inputs, to stdout as CSV or to a .csv/.npz/.json file; images are named by their path. A table
is streamed (dlc.data.stream): its CSV predictions are written as each part is run."""

from __future__ import annotations

import sys

from dlc.data._images import image_paths
from dlc.runtime import infer


def command(model: str, input: str, output: str | None, batch_size: int, device: str) -> None:
    m = infer.load_model(model, device)
    out = infer.predict_parts(m, input, batch_size, output)
    chunks = infer.write_predictions(m, out, output, image_paths(input))
    if chunks is not None:
        for text in chunks:  # streamed: the whole table is never one string
            sys.stdout.write(text)
    else:
        print(f"wrote {output}", file=sys.stderr)
