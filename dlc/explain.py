"""`dlc explain`: input attributions through dlc's own gradient pass.

The inference graph is rebuilt from the model's stored resolved spec (`dlc.spec_resolved`), its
trained weights (the model's initializers) and its input normalisation (`dlc.normalize`), with
the raw input as a graph input. The explained quantity is the target logit of each sample, taken
as f = sum_i <logits_i, w_i> over the batch (w_i one-hot on the target class; +1/-1 on the single
logit of a binary model, i.e. the log-odds of the target class; one-hot on an output for
regression). `dlc.autodiff.gradients` emits df/dx as standard ONNX, so one onnxruntime run gives
the logits and the gradient of each sample's target logit w.r.t. its own raw input (samples are
independent in inference mode).

Methods: grad_x_input (x * df/dx) and integrated_gradients ((x - x0) * mean_k df/dx at
x0 + a_k (x - x0), a_k = (k + 1/2) / steps, the midpoint Riemann sum; baseline x0 = 0 in raw input
units), whose attributions add up to f(x) - f(x0) up to the quadrature error (completeness).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlc.errors import DlcError, UsageError

METHODS = ("grad_x_input", "integrated_gradients")
MAX_ROWS = 4096  # rows per onnxruntime run (samples x interpolation steps)
MAX_STEPS = 1024  # integrated-gradients steps; the midpoint rule's error is ~1/steps^2 already


@dataclass
class Explainer:
    """The gradient graph of one model: `run(x, w)` -> (logits, d<logits, w>/dx)."""

    session: object
    model: object  # dlc.runtime.infer.Model: the stored spec, class and feature names
    input_shape: tuple
    outputs: int  # units of the model's output (last dim)

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def labels(self) -> list[str] | None:
        return self.model.labels

    @property
    def features(self) -> list[str] | None:
        return self.model.features

    def run(self, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, grads = [], []
        for i in range(0, len(x), MAX_ROWS):
            lo, gr = self.session.run(["logits", "grad"], {"input": x[i:i + MAX_ROWS],
                                                          "weight": w[i:i + MAX_ROWS]})
            logits.append(lo)
            grads.append(gr)
        return np.concatenate(logits), np.concatenate(grads)


def _stored(path: Path):
    """(resolved spec, normalisation, {initializer: array}) of a dlc model file."""
    from onnx import numpy_helper

    from dlc.runtime.infer import load_model
    from dlc.userfiles import load_json, read_model

    model = load_model(path)  # checks that it is a dlc model with sane metadata
    proto = read_model(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    norm = load_json(meta.get("dlc.normalize", "null"), f"{path}: dlc.normalize")
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    scaling = load_json(meta.get("dlc.target_norm", "null"), f"{path}: dlc.target_norm")
    stats = scaling.get("") if isinstance(scaling, dict) else scaling  # target_scaling: standard
    for key, value in (("normalize", norm), ("target_norm", stats)):
        if not _is_stats(value):
            raise DlcError(f"{path}: corrupt dlc metadata (dlc.{key})")
    return model, norm, weights, stats


def _is_stats(value) -> bool:
    """None, or {offset: [numbers], scale: [numbers]} as dlc writes it."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return value is None or isinstance(value, dict) and all(
        isinstance(value.get(k), list) and all(map(number, value[k])) for k in ("offset", "scale"))


def gradient_model(spec_data: dict, norm: dict | None, weights: dict, file: str = "model",
                   target_norm: dict | None = None):
    """The ONNX model: inputs `input` [N, *shape] (raw) and `weight` [N, *out]; outputs
    `logits` and `grad` = d sum(logits * weight) / d input. `target_norm`: a regression
    model's target scaling, so that outputs are in the target's units as the model's are."""
    from dataclasses import replace

    from dlc import losses
    from dlc.autodiff import gradients
    from dlc.compile import lower_body, normalize_input
    from dlc.graph import Builder
    from dlc.layers import Ctx
    from dlc.network import build_network
    from dlc.spec import Spec

    net = build_network(Spec(data=spec_data, text="", file=file))
    if spec_data.get("inputs") or net.input_dtype != "float32":
        raise DlcError("dlc explain needs one float input (not inputs:, not token ids)")
    missing = [p.name for p in net.params if p.name not in weights]
    if missing:
        raise DlcError(f"{file}: no weights for {missing[0]} in the model; corrupt or not "
                       "made by dlc")
    b, shape = Builder(), list(net.input_shape)
    x = b.input("input", "float32", ["N", *shape])
    params = {p.name: b.initializer(p.name, weights[p.name]) for p in net.params}
    logits = lower_body(b, net, {"input": normalize_input(b, x, norm, shape)}, params,
                        Ctx(training=False))[net.head.name]
    stats = losses.target_stats(b, replace(net.head, target_norm=target_norm))
    logits = losses.unscaled(b, stats, logits)
    _pool_indices(b)
    out_shape = list(net.output_shape)
    w = b.input("weight", "float32", ["N", *out_shape])
    target = b.ReduceSum(b.Mul(logits, w), keepdims=0)
    grad = gradients(b, target, [x])[x]
    if grad is None:
        raise DlcError("the model's output does not depend on its input; nothing to explain")
    b.output(logits, "logits", "float32", ["N", *out_shape])
    b.output(grad, "grad", "float32", ["N", *shape])
    return b.model("explain"), net


def _pool_indices(b) -> None:
    """Give inference-mode MaxPool nodes their Indices output: the MaxPool VJP scatters the
    gradient through it (training lowers MaxPool with it; inference without)."""
    for node in b.nodes:
        if node.op_type == "MaxPool" and len(node.output) == 1:
            node.output.append(b.fresh(f"{node.name}/indices"))


def load_explainer(path: str | Path) -> Explainer:
    from dlc.runtime.session import make_session

    model, norm, weights, target_norm = _stored(Path(path))
    proto, net = gradient_model(model.spec, norm, weights, str(path), target_norm)
    session = make_session(proto.SerializeToString())
    return Explainer(session, model, tuple(net.input_shape), int(net.output_shape[-1]))


def parse_target(ex: Explainer, target: str | None) -> int | None:
    """--target as a class name or index (classification/binary), an output index
    (regression); None: the predicted class (regression: output 0)."""
    if target is None:
        return None if ex.kind != "regression" else 0
    names = ex.labels or []
    count = 2 if ex.kind == "binary" else ex.outputs
    if target in names:
        return names.index(target)
    if target.lstrip("-").isdigit() and 0 <= int(target) < count:
        return int(target)
    known = f"a class name ({', '.join(names)}) or " if names else ""
    raise UsageError(f"--target {target}: expected {known}an index 0..{count - 1}")


def target_weights(ex: Explainer, logits: np.ndarray, target: int | None) -> np.ndarray:
    """w [N, outputs]: selects each sample's target logit (the predicted class by default)."""
    n = len(logits)
    if ex.kind == "binary":
        cls = (logits[:, 0] > 0).astype(np.int64) if target is None else np.full(n, target)
        return np.where(cls == 1, 1.0, -1.0).astype(np.float32)[:, None]
    cls = logits.argmax(axis=1) if target is None else np.full(n, target)
    return np.eye(ex.outputs, dtype=np.float32)[cls]


def target_classes(ex: Explainer, w: np.ndarray) -> np.ndarray:
    return (w[:, 0] > 0).astype(np.int64) if ex.kind == "binary" else w.argmax(axis=1)


def integrated_gradients(ex: Explainer, x: np.ndarray, w: np.ndarray, baseline: np.ndarray,
                         steps: int) -> np.ndarray:
    """(x - x0) * the midpoint Riemann mean of the gradients along the straight path."""
    alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
    per = max(1, MAX_ROWS // steps)
    out = np.empty_like(x)
    for i in range(0, len(x), per):
        xb, wb = x[i:i + per], w[i:i + per]
        delta = xb - baseline
        path = baseline + alphas.reshape(1, steps, *[1] * (x.ndim - 1)) * delta[:, None]
        _, g = ex.run(path.reshape(-1, *x.shape[1:]).astype(np.float32),
                      np.repeat(wb, steps, axis=0))
        out[i:i + per] = delta * g.reshape(len(xb), steps, *x.shape[1:]).mean(axis=1)
    return out


def explain(ex: Explainer, x: np.ndarray, method: str = "grad_x_input", steps: int = 32,
            target: str | None = None) -> dict:
    """Attributions of each sample's target logit: {attributions, target, logit, baseline_logit,
    method}."""
    if method not in METHODS:
        raise UsageError(f"unknown --method '{method}'; use {' or '.join(METHODS)}")
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS} (MAX_STEPS), not {steps}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    probe = np.zeros((len(x), ex.outputs), np.float32)
    logits, _ = ex.run(x, probe)
    w = target_weights(ex, logits, parse_target(ex, target))
    baseline = np.zeros_like(x[:1])
    _, grad = ex.run(x, w)
    base_logits, _ = ex.run(np.repeat(baseline, len(x), axis=0), w)
    attr = (x * grad if method == "grad_x_input"
            else integrated_gradients(ex, x, w, baseline[0], steps))
    return {"method": method, "attributions": attr, "target": target_classes(ex, w),
            "logit": (logits * w).sum(axis=1), "baseline_logit": (base_logits * w).sum(axis=1)}


def feature_names(ex: Explainer) -> list[str]:
    size = int(np.prod(ex.input_shape))
    if ex.features and len(ex.features) == size:
        return list(ex.features)
    if len(ex.input_shape) == 1:
        return [f"x{i}" for i in range(size)]
    return ["x[" + ",".join(map(str, ix)) + "]" for ix in np.ndindex(*ex.input_shape)]


def class_name(ex: Explainer, k: int) -> str:
    if ex.kind == "regression":
        return f"output {k}"
    return ex.labels[k] if ex.labels and k < len(ex.labels) else str(k)


def ranked_table(ex: Explainer, result: dict, top: int = 20) -> list[str]:
    """Features ranked by mean |attribution| over the samples (with the mean signed value)."""
    attr = result["attributions"].reshape(len(result["attributions"]), -1)
    names, mean_abs, mean = feature_names(ex), np.abs(attr).mean(axis=0), attr.mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")[:top]
    width = max(len(names[i]) for i in order)
    lines = [f"{'rank':>4}  {'feature':<{width}}  {'mean |attr|':>12}  {'mean attr':>10}"]
    lines += [f"{r + 1:>4}  {names[i]:<{width}}  {mean_abs[i]:12.4g}  {mean[i]:10.4g}"
              for r, i in enumerate(order)]
    return lines


def sample_lines(ex: Explainer, result: dict) -> list[str]:
    """Per sample: the target and its logit f(x); for integrated gradients also the
    attribution sum against f(x) - f(baseline) (completeness)."""
    total = result["attributions"].reshape(len(result["attributions"]), -1).sum(axis=1)
    lines = []
    for i, (t, f, f0, s) in enumerate(zip(result["target"], result["logit"],
                                          result["baseline_logit"], total)):
        what = "prediction" if ex.kind == "regression" else "logit"
        line = f"sample {i}: target {class_name(ex, int(t))}  {what} {f:.4g}"
        if result["method"] == "integrated_gradients":
            line += f"  sum of attributions {s:.4g}  f(x) - f(0) {f - f0:.4g}"
        lines.append(line)
    return lines


def write_table(ex: Explainer, result: dict, path: Path) -> None:
    """Per-sample attributions: .csv (one row per sample) or .npz (arrays)."""
    import csv
    import io

    from dlc.fileio import write_bytes, write_text

    attr = result["attributions"]
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
    for i, row in enumerate(attr.reshape(len(attr), -1)):
        writer.writerow([i, class_name(ex, int(result["target"][i])),
                         f"{result['logit'][i]:.6g}", *(f"{v:.6g}" for v in row)])
    write_text(path, buf.getvalue())


def saliency_pngs(ex: Explainer, x: np.ndarray, result: dict, folder: Path) -> list[Path]:
    """One PNG per [C, H, W] sample: the input (channel mean) beside |attribution| summed over
    channels (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DlcError("saliency images need matplotlib: pip install 'dlc[plot]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (xi, ai) in enumerate(zip(x, result["attributions"])):
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
                 target: str | None) -> list[str]:
    """`dlc explain`: attributions for the raw inputs in a file; returns the printed lines."""
    from dlc.data import model_inputs

    ex = load_explainer(model)
    m = ex.model
    x = model_inputs(Path(input_path), m.spec, m.features, m.text)
    result = explain(ex, x, method, steps, target)
    lines = sample_lines(ex, result)
    if len(ex.input_shape) == 3:  # [C, H, W]: a saliency image per sample
        folder = Path(output or "saliency")
        lines += [f"wrote {p}" for p in saliency_pngs(ex, x, result, folder)]
        return lines
    lines += ranked_table(ex, result)
    if output:
        write_table(ex, result, Path(output))
        lines.append(f"wrote {output}")
    return lines
