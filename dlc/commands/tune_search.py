"""What both `dlc tune` backends share: the search space (DISTRIBUTIONS, checked against the
spec), the metric, one trial's training and the results. Optuna drives it in dlc.commands.tune,
Ray Tune in dlc.commands.tune_ray."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dlc.errors import Diagnostic, DlcError, SpecError
from dlc.model.names import spec_heads
from dlc.model.spec import load_spec_text, render_path
from dlc.runtime.session import choose_device
from dlc.train.features.checks import checked_network
from dlc.train.report import Plain
from dlc.train.run import prepare
from dlc.train.trainer import LOWER_IS_BETTER, Trainer

# Each kind of the search: section as Optuna samples it (from a trial) and as Ray Tune does (a
# domain of ray.tune). int bounds are inclusive in the spec and in Optuna; Ray's randint
# excludes its upper bound.


DISTRIBUTIONS = {
    "loguniform": (lambda trial, key, a: trial.suggest_float(key, float(a[0]), float(a[1]),
                                                             log=True),
                   lambda tune, a: tune.loguniform(float(a[0]), float(a[1]))),
    "uniform": (lambda trial, key, a: trial.suggest_float(key, float(a[0]), float(a[1])),
                lambda tune, a: tune.uniform(float(a[0]), float(a[1]))),
    "int": (lambda trial, key, a: trial.suggest_int(key, int(a[0]), int(a[1])),
            lambda tune, a: tune.randint(int(a[0]), int(a[1]) + 1)),
    "choice": (lambda trial, key, a: trial.suggest_categorical(key, list(a)),
               lambda tune, a: tune.choice(list(a))),
}
KINDS = tuple(DISTRIBUTIONS)


def _key_diag(spec, key: str, message: str) -> Diagnostic:
    """A diagnostic at the search key itself (its line in the file)."""
    line, col = spec.key_positions.get(("search", key)) or spec.where(("search", key))
    return Diagnostic(spec.file, line, col, render_path(("search", key)), message)


def _range_problem(kind: str, args: list) -> str | None:
    if kind == "choice":
        return None
    low, high = args
    if kind == "int" and low > high:
        return f"int: low {low} is above high {high}"
    if kind != "int" and not low < high:
        return f"{kind}: low {low} must be below high {high}"
    return None


def candidates(kind: str, args: list) -> list:
    """Values that probe a distribution's spec path: its bounds, or every choice."""
    return list(args) if kind == "choice" else [args[0], args[1]]


def as_override(path: str, value) -> str:
    """`path=value` for --set; JSON is YAML flow syntax, so the value keeps its type."""
    return f"{path}={json.dumps(value)}"


def search_space(spec, overrides=()) -> dict[str, tuple[str, list]]:
    """path -> (kind, args) of the spec's `search:` section; SpecError at the search key when a
    range is empty or a path is not a field of this spec (or a value does not fit it)."""
    search = spec.data.get("search")
    if not search:
        raise SpecError([Diagnostic(spec.file, 1, 1, "", "the spec has no search: section; "
                                    "add one, e.g. search: {train.optimizer.lr: "
                                    "{loguniform: [1.0e-4, 1.0e-2]}}")])
    space, problems = {}, []
    for key, dist in search.items():
        (kind, args), = dist.items()
        problem = "search paths cannot point into search:" if key.split(".")[0] == "search" \
            else _range_problem(kind, args)
        for value in [] if problem else candidates(kind, args):
            try:
                probe = load_spec_text(spec.text, spec.file, [*overrides, as_override(key, value)])
                checked_network(probe)
            except SpecError as e:
                message = e.diagnostics[0].message.split(" (from --set ")[0]
                problem = f"{key} = {json.dumps(value)}: {message}"
                break
        if problem:
            problems.append(_key_diag(spec, key, problem))
        space[key] = (kind, list(args))
    if problems:
        raise SpecError(problems)
    return space


def lookup(data, path: str):
    """The value at a dotted path of plain data; KeyError when absent."""
    for part in path.split("."):
        if isinstance(data, list):
            data = data[int(part)] if part.lstrip("-").isdigit() else data[part]
        else:
            data = data[part]
    return data


def spec_values(spec, space: dict) -> dict | None:
    """The spec's own values of every searched path, when all lie in the space (else None)."""
    out = {}
    for key, (kind, args) in space.items():
        try:
            value = lookup(spec.data, key)
        except (KeyError, IndexError, ValueError, TypeError):
            return None
        if kind == "choice":
            ok = value in args
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) \
                and args[0] <= value <= args[1]
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and args[0] <= value <= args[1]
        if not ok:
            return None
        out[key] = value
    return out


@dataclass
class Setup:
    spec: object  # the loaded spec (with --set overrides applied)
    overrides: list[str]
    space: dict
    metric: str
    lower_is_better: bool
    device: str = "cpu"
    note: object = print
    data_dir: Path = field(default_factory=Path.cwd)


def choose_metric(spec, metric: str | None) -> tuple[str, bool]:
    """The validation column to optimise (default: the early-stopping monitor, else val_loss)."""
    es = spec.data["train"].get("early_stopping") or {}
    name = metric or es.get("monitor", "val_loss")
    allowed = ["loss"] + [f"{h}.{m}" if h else m for h, task in spec_heads(spec.data).items()
                          for m in [*(["loss"] if h else []), *task["metrics"]]]
    prefix, _, base = name.partition("_")
    if prefix not in ("val", "train") or base not in allowed:
        raise DlcError(f"--metric {name}: expected val_<m> or train_<m> with m one of "
                       f"{', '.join(allowed)} (the spec's metrics)")
    if prefix == "val" and not (spec.data.get("data") or {}).get("split", {}).get("val", 0.1):
        raise DlcError(f"--metric {name} needs a validation split; set data.split.val > 0")
    return name, base.rsplit(".", 1)[-1] in LOWER_IS_BETTER


def final_value(trainer, metric: str) -> float:
    """The metric of the weights training ends with (the best epoch's under restore_best)."""
    es = trainer.cfg.get("early_stopping")
    rows = trainer.state.history
    if es and es.get("restore_best", True) and trainer.state.best:
        return float(rows[trainer.state.best["epoch"] - 1][metric])
    return float(rows[-1][metric])


def train_trial(setup: Setup, values: dict, on_epoch_end) -> float:
    """Train the spec with `values` set, calling on_epoch_end(trainer) after every epoch; the
    metric of the weights it ends with. Both backends' trials run this."""
    spec = load_spec_text(setup.spec.text, setup.spec.file,
                          [*setup.overrides, *(as_override(k, v) for k, v in values.items())])
    net, dataset, _ = prepare(spec, setup.data_dir)
    if setup.metric.startswith("val_") and dataset.val is None:
        raise DlcError(f"--metric {setup.metric} needs a validation split; set data.split.val > 0")
    kind, index, _ = choose_device(setup.device)
    trainer = Trainer(net, dataset, (kind, index), seed=spec.data["train"].get("seed", 0))
    trainer.fit(Plain(quiet=True), on_epoch_end=on_epoch_end)
    value = final_value(trainer, setup.metric)
    if not math.isfinite(value):
        raise DlcError(f"{setup.metric} is {value}")
    return value


def done_note(number: int, metric: str, value: float, params: dict) -> str:
    return f"trial {number}: {metric} {value:.6g}  " + "  ".join(
        f"{k}={show_value(v)}" for k, v in params.items())


def show_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def results(study: str, metric: str, direction: str, rows: list[dict]) -> dict:
    """The study's rows and its best complete trial (the first of equals)."""
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        raise DlcError(f"no trial of study {study} completed")
    sign = 1 if direction == "minimize" else -1
    best = min(done, key=lambda r: (sign * r["value"], r["trial"]))
    return {"study": study, "metric": metric, "direction": direction,
            "best": {k: best[k] for k in ("trial", "value", "params")}, "trials": rows}
