"""What `dlc explain` prints and writes: per-sample lines, a ranked feature table (the columns of
every input, by name), a per-sample .csv/.npz table, or a saliency PNG per image sample."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from dlc.commands.attribution import Explainer, explain, load_explainer
from dlc.commands.plot import pyplot
from dlc.errors import UsageError
from dlc.files.atomic import write_bytes, write_text
from dlc.model.names import spec_inputs
from dlc.runtime.infer import predict_inputs

BASELINE_TEXT = {"mean": "the training mean", "zero": "zero"}


def _names(ex: Explainer, name: str) -> list[str]:
    """One input's feature names: its columns, else x0.. (x[c,h,w] for images); inputs of
    several-input models are prefixed by their name."""
    shape = ex.shapes[name]
    cfg = spec_inputs(ex.model.spec)[name]
    columns = cfg.get("features") if ex.model.spec.get("inputs") else ex.model.features
    if columns and len(columns) == int(np.prod(shape)):
        return list(columns)
    prefix = f"{name}." if len(ex.shapes) > 1 else ""
    if len(shape) == 1:
        return [f"{prefix}x{i}" for i in range(shape[0])]
    return [f"{prefix}x[" + ",".join(map(str, ix)) + "]" for ix in np.ndindex(*shape)]


def feature_names(ex: Explainer) -> list[str]:
    """Every input's feature names; the raw columns of a model with column kinds."""
    if ex.columns:
        return [c["name"] for state in ex.columns.values() for c in state["columns"]]
    return [f for name in ex.shapes for f in _names(ex, name)]


def flat(result: dict) -> np.ndarray:
    """[N, features]: every input's attributions side by side, in input order."""
    parts = list(result["attributions"].values())
    return np.concatenate([a.reshape(len(a), -1) for a in parts], axis=1)


def class_name(ex: Explainer, k: int) -> str:
    if ex.kind == "regression":
        return f"output {k}"
    return ex.labels[k] if ex.labels and k < len(ex.labels) else str(k)


def ranked_table(ex: Explainer, result: dict, top: int = 20) -> list[str]:
    """Features ranked by mean |attribution| over the samples (with the mean signed value)."""
    attr = flat(result)
    names, mean_abs, mean = feature_names(ex), np.abs(attr).mean(axis=0), attr.mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")[:top]
    width = max(len(names[i]) for i in order)
    lines = [f"{'rank':>4}  {'feature':<{width}}  {'mean |attr|':>12}  {'mean attr':>10}"]
    lines += [f"{r + 1:>4}  {names[i]:<{width}}  {mean_abs[i]:12.4g}  {mean[i]:10.4g}"
              for r, i in enumerate(order)]
    return lines


def sample_lines(ex: Explainer, result: dict) -> list[str]:
    """The baseline, then per sample: the target and its logit f(x); for integrated gradients
    also the attribution sum against f(x) - f(baseline) (completeness)."""
    total = flat(result).sum(axis=1)
    lines = [f"{result['method']} against a baseline of {BASELINE_TEXT[result['baseline']]}"]
    for i, (t, f, f0, s) in enumerate(zip(result["target"], result["logit"],
                                          result["baseline_logit"], total)):
        what = "prediction" if ex.kind == "regression" else "logit"
        line = f"sample {i}: target {class_name(ex, int(t))}  {what} {f:.4g}"
        if result["method"] == "integrated_gradients":
            line += f"  sum of attributions {s:.4g}  f(x) - f(baseline) {f - f0:.4g}"
        lines.append(line)
    return lines


def write_table(ex: Explainer, result: dict, path: Path) -> None:
    """Per-sample attributions: .csv (one row per sample) or .npz (arrays)."""
    attr = flat(result)
    if path.suffix.lower() == ".npz":
        buf = io.BytesIO()
        np.savez(buf, attributions=attr, target=result["target"], logit=result["logit"],
                 baseline_logit=result["baseline_logit"])
        write_bytes(path, buf.getvalue())
        return
    if path.suffix.lower() != ".csv":
        raise UsageError(f"-o {path}: use .csv or .npz for a feature table")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sample", "target", "logit", *feature_names(ex)])
    for i, row in enumerate(attr):
        writer.writerow([i, class_name(ex, int(result["target"][i])),
                         f"{result['logit'][i]:.6g}", *(f"{v:.6g}" for v in row)])
    write_text(path, buf.getvalue())


def saliency_pngs(ex: Explainer, x: np.ndarray, result: dict, folder: Path) -> list[Path]:
    """One PNG per [C, H, W] sample: the input (channel mean) beside |attribution| summed over
    channels (needs matplotlib)."""
    plt = pyplot("saliency images need matplotlib: pip install 'dlc[plot]'", "dlc explain")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    attributions = next(iter(result["attributions"].values()))
    for i, (xi, ai) in enumerate(zip(x, attributions)):
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        axes[0].imshow(xi.mean(axis=0), cmap="gray")
        axes[0].set_title(f"input {i}")
        axes[1].imshow(np.abs(ai).sum(axis=0), cmap="hot")
        axes[1].set_title(f"{result['method']}: {class_name(ex, int(result['target'][i]))}")
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        paths.append(folder / f"sample_{i:04d}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def explain_file(model: str, input_path: str, output: str | None, method: str, steps: int,
                 target: str | None, baseline: str = "mean", device: str = "cpu") -> list[str]:
    """`dlc explain`: attributions for the raw inputs in a file (read as `dlc predict` reads
    them); returns the printed lines."""
    ex = load_explainer(model, device)
    x = predict_inputs(ex.model, input_path)
    result = explain(ex, x, method, steps, target, baseline)
    lines = sample_lines(ex, result)
    if len(ex.shapes) == 1 and len(next(iter(ex.shapes.values()))) == 3:  # [C, H, W]
        folder = Path(output or "saliency")
        lines += [f"wrote {p}" for p in saliency_pngs(ex, x, result, folder)]
        return lines
    lines += ranked_table(ex, result)
    if output:
        write_table(ex, result, Path(output))
        lines.append(f"wrote {output}")
    return lines


def command(model: str, input: str, output: str | None, method: str, steps: int,
            target: str | None, baseline: str, device: str) -> None:
    for line in explain_file(model, input, output, method, steps, target, baseline, device):
        print(line)
