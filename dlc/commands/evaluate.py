"""`dlc evaluate`: a trained model's metrics on a data source (with targets), per output; says
which rows it scored."""

from __future__ import annotations

from dlc.errors import UsageError
from dlc.files.atomic import write_json
from dlc.model.metrics import per_class_report, render_per_class
from dlc.runtime import infer


def command(model: str, data: str, output: str | None, batch_size: int, device: str,
            per_class: bool, split: str | None) -> None:
    if split is not None and split not in infer.SPLITS:
        raise UsageError(f"--split {split}: expected one of {', '.join(infer.SPLITS)}")
    loaded = infer.load_model(model, device)
    if per_class and all(t["kind"] == "regression" for t in loaded.heads.values()):
        raise UsageError("--per-class needs a classification or binary model")
    result = infer.evaluate(loaded, data, batch_size, split)
    print(f"scored: {result['scored']}")
    parts = {h: result[h] for h in loaded.heads if h} or {"": result}  # per output
    if per_class:
        for head, part in parts.items():
            if "confusion_matrix" in part:
                part["per_class"] = per_class_report(part["confusion_matrix"],
                                                     loaded.labels_of(head))
    if output:
        write_json(output, result, indent=1)  # null for a NaN metric: standard JSON
    for head, part in parts.items():
        print_metrics({k: v for k, v in part.items() if k != "scored"}, f"{head}." if head else "")
    if "" not in parts:
        print(f"samples: {result['samples']}")


def print_metrics(result: dict, prefix: str) -> None:
    """`name: value` lines, then the confusion matrix and the per-class table if present."""
    result = dict(result)
    cm = result.pop("confusion_matrix", None)
    report = result.pop("per_class", None)
    for key, value in result.items():
        print(f"{prefix}{key}: {value:.4f}" if isinstance(value, float) else
              f"{prefix}{key}: {value}")
    if cm is not None:
        print(f"{prefix}confusion matrix (rows: true, columns: predicted):")
        for row in cm:
            print("  " + " ".join(f"{v:5d}" for v in row))
    if report is not None:
        print("\n".join(render_per_class(report)))
