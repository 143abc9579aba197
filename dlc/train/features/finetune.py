"""Transfer learning: frozen layers, starting from a trained model, per-layer learning rates.

- `trainable: false` on a layer (also inside a block: every copy is frozen) keeps its parameters
  out of the flat trainable vector. The train graph takes them as plain inputs (one per
  parameter, named like it, with no `.new` output): they are never differentiated and never
  written, so their bytes stay exactly as initialised or loaded. A batchnorm layer's running
  statistics are buffers, not parameters: they keep tracking the data (as torch's
  `requires_grad_(False)`; Keras would also switch the layer to inference mode).
- `train.init_from: path/to/model.onnx` copies parameters by name from a trained dlc model's
  initializers into the freshly initialised ones before training (through `Trainer.params`):
  equal shapes are loaded, parameters the file lacks keep their fresh initialisation, and
  shape mismatches are skipped; the report is printed and saved in summary.json.
- `train.optimizer.lr_scale: {key: factor}` multiplies the learning rate of the parameters a key
  matches by `factor`: the exact parameter name, a layer name or dotted prefix (`res1` for
  `res1.a.weight`), or a shell-style pattern (`res*`, `*.bias`); the longest matching key wins.
  In the graph it is one constant vector (one factor per flat element) and one Mul on the lr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlc.errors import DlcError, SpecError
from dlc.files.untrusted import read_model
from dlc.model.layers.base import numel
from dlc.model.names import matches
from dlc.train.features.protocol import Feature

SHOWN = 8  # names listed per group in the printed note (summary.json has them all)


# ---- frozen parameters ----------------------------------------------------------------------
def frozen_inputs(b, net) -> dict[str, str]:
    """The train graph's inputs for the frozen parameters, in parameter order."""
    return {p.name: b.input(p.name, "float32", list(p.shape))
            for p in net.params if p.name in net.frozen}


# ---- lr_scale -------------------------------------------------------------------------------
def lr_scale_config(spec_data: dict) -> dict:
    return ((spec_data.get("train") or {}).get("optimizer") or {}).get("lr_scale") or {}


def lr_scales(net, layout, total: int) -> np.ndarray | None:
    """The per-element lr multipliers of the flat parameter vector (None: no lr_scale)."""
    scales = lr_scale_config(net.spec)
    if not scales:
        return None
    vec = np.ones(total, np.float32)
    for name, offset, shape in layout:
        keys = [k for k in scales if matches(k, name)]
        if keys:
            vec[offset:offset + numel(shape)] = scales[max(keys, key=len)]
    return vec


# ---- checks before training -----------------------------------------------------------------
def check(spec, net, base_dir: Path) -> None:
    """Train-time checks: something left to train, lr_scale keys that select trainable
    parameters, and the init_from path made absolute (relative: to the spec's folder) so the
    run's spec.yaml and a resume find it."""
    problems = []
    trainable = [p.name for p in net.params if p.trainable]
    if net.frozen and not trainable:
        problems.append(spec.diag(("layers",), "every layer with parameters has trainable: "
                                               "false; nothing would train"))
    for key in lr_scale_config(spec.data):
        if not any(matches(key, n) for n in trainable):
            frozen = any(matches(key, n) for n in net.frozen)
            problems.append(spec.diag(("train", "optimizer", "lr_scale", key),
                                      f"'{key}' selects no trainable parameter" + (
                                          " (only frozen ones: trainable: false)" if frozen else
                                          "; use a parameter name, a layer name or prefix, or "
                                          "a pattern like 'res*'")))
    if problems:
        raise SpecError(problems)
    train = spec.data.get("train") or {}
    if train.get("init_from"):
        path = Path(train["init_from"]).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        if not path.is_file():
            raise DlcError(f"train.init_from: {path}: no such file")
        load_parameters(path)  # a corrupt file fails here, before the run folder is made
        train["init_from"] = str(path.resolve())


# ---- init_from ------------------------------------------------------------------------------
def load_parameters(path: str | Path) -> dict[str, np.ndarray]:
    """The initializers of a trained dlc model.onnx, by name; one-line DlcError if unreadable."""
    from onnx import numpy_helper

    try:
        model = read_model(path)
        meta = {p.key for p in model.metadata_props}
        values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    except DlcError as e:
        raise DlcError(f"train.init_from: {e}") from None
    except (ValueError, RuntimeError, TypeError) as e:
        raise DlcError(f"train.init_from: {path} is not a valid ONNX model "
                       f"({type(e).__name__})") from None
    if "dlc.spec_resolved" not in meta:
        raise DlcError(f"train.init_from: {path} is not a dlc model (no dlc metadata); give the "
                       "model.onnx of a dlc train run")
    return values


def match(current: dict[str, np.ndarray], source: dict[str, np.ndarray],
          path: str) -> tuple[dict[str, np.ndarray], dict]:
    """(the values to load, the report). Report: matched (loaded), new (not in the file: fresh
    init kept), shape_mismatch (skipped: name, shape here, shape in the file), unused (file
    parameters this model does not have)."""
    loaded, new, mismatch = {}, [], []
    for name, value in current.items():
        src = source.get(name)
        if src is None:
            new.append(name)
        elif src.shape != value.shape or not np.issubdtype(src.dtype, np.floating):
            mismatch.append({"name": name, "model": list(value.shape), "file": list(src.shape),
                             **({} if np.issubdtype(src.dtype, np.floating)
                                else {"file_dtype": str(src.dtype)})})
        else:
            loaded[name] = np.ascontiguousarray(src, np.float32)
    # parameters are named <layer>.<name>; the graph's own constants have '/' or no '.'
    unused = [n for n in source if n not in current and "." in n and "/" not in n]
    report = {"path": str(path), "matched": list(loaded), "new": new,
              "shape_mismatch": mismatch, "unused": unused}
    return loaded, report


def _names(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f", ... ({more} more)" if more > 0 else "")


def render(report: dict) -> str:
    total = len(report["matched"]) + len(report["new"]) + len(report["shape_mismatch"])
    lines = [f"init_from {report['path']}: loaded {len(report['matched'])} of {total} "
             f"parameters" + (f": {_names(report['matched'])}" if report["matched"] else "")]
    if report["new"]:
        lines.append(f"  new (fresh initialisation kept): {_names(report['new'])}")
    for m in report["shape_mismatch"]:
        dtype = f" ({m['file_dtype']})" if "file_dtype" in m else ""
        lines.append(f"  shape differs, skipped: {m['name']} {m['model']} here, "
                     f"{m['file']}{dtype} in the file")
    if report["unused"]:
        lines.append(f"  in the file only (unused): {_names(report['unused'])}")
    return "\n".join(lines)


def init_from(trainer, note, apply: bool = True) -> dict | None:
    """train.init_from: load matching parameters into `trainer` (apply=False: a resumed run,
    whose parameters come from its checkpoint; only the report is rebuilt, quietly, and an
    unreadable file then just leaves it out). Returns the report (None without init_from)."""
    path = trainer.net.spec["train"].get("init_from")
    if not path:
        return None
    try:
        source = load_parameters(path)
    except DlcError:
        if apply:
            raise
        return None
    params = trainer.params
    current = {p.name: params[p.name] for p in trainer.net.params}  # in model order
    loaded, report = match(current, source, path)
    if apply:
        if not loaded:
            raise DlcError(f"train.init_from: no parameter of this model matches {path} by name "
                           "and shape; is it the model of a related spec?")
        trainer.params = {**current, **loaded}
        note(render(report))
    return report


class Transfer(Feature):
    """Frozen parameters as plain train-step inputs, lr_scale as a per-element lr vector, and
    init_from's parameters loaded before the first epoch (its report in summary.json)."""

    name = "transfer"

    def check(self, spec, net, base_dir) -> None:
        check(spec, net, base_dir)

    def frozen_inputs(self, b, net) -> dict[str, str]:
        return frozen_inputs(b, net)

    def lr_scale(self, net, layout, total: int) -> np.ndarray | None:
        return lr_scales(net, layout, total)

    def begin(self, trainer, note, fresh: bool) -> dict | None:
        return init_from(trainer, note, apply=fresh)

    def summary(self, trainer, params: dict) -> dict:
        """summary.json's init_from entry (when the run started from a model)."""
        report = trainer.feature_state.get(self.name)
        return {"init_from": report} if report else {}


FEATURE = Transfer()
