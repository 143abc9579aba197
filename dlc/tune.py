"""`dlc tune`: hyperparameter search over a spec's `search:` section, run by Optuna or Ray Tune.

    search:
      train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
      layers.0.units: {int: [16, 128]}
      train.optimizer.type: {choice: [adam, rmsprop]}

Each key is a dotted spec path as `--set` takes it; each trial trains the spec with the sampled
values set (typed and validated like --set values) and reports the validation metric after every
epoch (trial.report) so that Optuna's MedianPruner can stop poor trials early. The sampler is TPE,
seeded. When the spec's own values all lie in the search space, they are the study's first trial,
so the best spec found is never worse (on validation) than the spec as written. `--storage`
(an Optuna RDB URL such as sqlite:///study.db) lets several processes or machines share one study;
give each its own --seed.

`--backend ray` runs the trials with Ray Tune instead: seeded random search (the spec's own values
first, though ASHA may stop that trial too) and ASHA early stopping on the same per-epoch metric,
on a local Ray instance or, with `--address`, on a Ray cluster. Both backends share the search
space (DISTRIBUTIONS), the trial's training, the results table and the best spec.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dlc.errors import Diagnostic, DlcError, SpecError, UsageError

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
INSTALL = "dlc tune needs Optuna: pip install 'dlc[tune]'"


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise DlcError(INSTALL) from None
    return optuna


def require_backend(backend: str, storage: str | None, address: str | None) -> None:
    """Check the backend's options and that its library is installed, before any work."""
    if backend not in ("optuna", "ray"):
        raise UsageError(f"--backend {backend}: expected optuna or ray")
    if backend == "optuna" and address:
        raise UsageError("--address is a Ray cluster's; add --backend ray")
    if backend == "ray" and storage:
        raise UsageError("--storage is Optuna's study storage; --backend ray takes --address")
    if backend == "ray":
        from dlc.tune_ray import require_ray

        require_ray()
    else:
        require_optuna()


# ---- the search space ---------------------------------------------------------------------
def _key_diag(spec, key: str, message: str) -> Diagnostic:
    """A diagnostic at the search key itself (its line in the file)."""
    from dlc.spec import render_path

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
    from dlc.network import build_network
    from dlc.spec import load_spec_text

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
                build_network(probe)
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


def suggest(trial, key: str, kind: str, args: list):
    """One value sampled by an Optuna trial."""
    return DISTRIBUTIONS[kind][0](trial, key, args)


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


# ---- one trial ----------------------------------------------------------------------------
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
    from dlc.runtime.trainer import LOWER_IS_BETTER

    from dlc.network import spec_heads

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
    from dlc.runtime.report import Plain
    from dlc.runtime.run import _prepare
    from dlc.runtime.session import choose_device
    from dlc.runtime.trainer import Trainer
    from dlc.spec import load_spec_text

    spec = load_spec_text(setup.spec.text, setup.spec.file,
                          [*setup.overrides, *(as_override(k, v) for k, v in values.items())])
    net, dataset, _ = _prepare(spec, setup.data_dir)
    if setup.metric.startswith("val_") and dataset.val is None:
        raise DlcError(f"--metric {setup.metric} needs a validation split; set data.split.val > 0")
    kind, index, _ = choose_device(setup.device)
    trainer = Trainer(net, dataset, (kind, index), seed=spec.data["train"].get("seed", 0))
    trainer.fit(Plain(quiet=True), on_epoch_end=on_epoch_end)
    value = final_value(trainer, setup.metric)
    if not math.isfinite(value):
        raise DlcError(f"{setup.metric} is {value}")
    return value


def run_trial(setup: Setup, trial) -> float:
    """One Optuna trial: report the metric per epoch; prune when the pruner says so."""
    import optuna

    def report(t) -> None:
        trial.report(float(t.state.history[-1][setup.metric]), t.state.epoch)
        trial.set_user_attr("epochs", t.state.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {t.state.epoch}")

    values = {k: suggest(trial, k, kind, args) for k, (kind, args) in setup.space.items()}
    return train_trial(setup, values, report)


def objective(setup: Setup):
    """The Optuna objective: a DlcError (a diverged or invalid trial) fails that trial only."""
    import optuna

    def run(trial) -> float:
        try:
            value = run_trial(setup, trial)
        except DlcError as e:
            trial.set_user_attr("error", str(e).splitlines()[0])
            setup.note(f"trial {trial.number}: failed: {str(e).splitlines()[0]}")
            raise
        except optuna.TrialPruned as e:
            setup.note(f"trial {trial.number}: {e}")
            raise
        setup.note(_done_note(trial.number, setup.metric, value, trial.params))
        return value
    return run


def _done_note(number: int, metric: str, value: float, params: dict) -> str:
    return f"trial {number}: {metric} {value:.6g}  " + "  ".join(
        f"{k}={_show(v)}" for k, v in params.items())


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- the study ----------------------------------------------------------------------------
def open_study(optuna, setup: Setup, storage: str | None, name: str | None, seed: int):
    """Create or load the study (TPE seeded, median pruning); first trial: the spec's values."""
    direction = "minimize" if setup.lower_is_better else "maximize"
    try:
        study = optuna.create_study(
            study_name=name or setup.spec.data["name"], storage=storage, load_if_exists=True,
            direction=direction, sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner())
    except Exception as e:  # noqa: BLE001 - bad URLs, drivers, locked files: all one message
        raise DlcError(f"cannot open the Optuna study in {storage}: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if study.direction.name.lower() != direction:
        raise DlcError(f"study {study.study_name} in {storage} was made to "
                       f"{study.direction.name.lower()}; {setup.metric} needs {direction}")
    own = spec_values(setup.spec, setup.space)
    if own is not None and not study.trials:
        study.enqueue_trial(own)
    return study


def tune(spec, trials: int, storage: str | None = None, study_name: str | None = None,
         overrides=(), metric: str | None = None, seed: int | None = None,
         device: str = "cpu", note=print, backend: str = "optuna",
         address: str | None = None) -> dict:
    """Run `trials` more trials (Optuna: of the study); the results and the best values."""
    name, lower = choose_metric(spec, metric)
    setup = Setup(spec, list(overrides), search_space(spec, overrides), name, lower, device,
                  note, Path(spec.file).resolve().parent)
    seed = spec.data["train"].get("seed", 0) if seed is None else seed
    study_name = study_name or spec.data["name"]
    if backend == "ray":
        from dlc.tune_ray import tune_ray

        return tune_ray(setup, trials, address, study_name, seed)
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our note
    study = open_study(optuna, setup, storage, study_name, seed)
    study.optimize(objective(setup), n_trials=trials, catch=(DlcError,))
    return results(study.study_name, name, study.direction.name.lower(),
                   [_row(t) for t in study.trials])


def results(study: str, metric: str, direction: str, rows: list[dict]) -> dict:
    """The study's rows and its best complete trial (the first of equals)."""
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        raise DlcError(f"no trial of study {study} completed")
    sign = 1 if direction == "minimize" else -1
    best = min(done, key=lambda r: (sign * r["value"], r["trial"]))
    return {"study": study, "metric": metric, "direction": direction,
            "best": {k: best[k] for k in ("trial", "value", "params")}, "trials": rows}


def _row(t) -> dict:
    return {"trial": t.number, "state": t.state.name.lower(), "value": t.value,
            "epochs": t.user_attrs.get("epochs"), "params": dict(t.params),
            "error": t.user_attrs.get("error")}


# ---- output -------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    """The trials as a rich table, best first; pruned and failed trials last."""
    from rich.console import Console
    from rich.table import Table

    keys = list(dict.fromkeys(k for r in result["trials"] for k in r["params"]))
    sign = 1 if result["direction"] == "minimize" else -1
    rows = sorted(result["trials"], key=lambda r: (r["value"] is None or r["state"] != "complete",
                                                   sign * (r["value"] or 0.0), r["trial"]))
    table = Table(title=f"study {result['study']}: {result['metric']} ({result['direction']})")
    for col in ("trial", "state", result["metric"], "epochs", *keys):
        table.add_column(col, overflow="fold")
    for r in rows:
        mark = " *" if r["trial"] == result["best"]["trial"] else ""
        value = "" if r["value"] is None else f"{r['value']:.6g}"
        table.add_row(f"{r['trial']}{mark}", r["state"], value, str(r["epochs"] or ""),
                      *(_show(r["params"][k]) if k in r["params"] else "" for k in keys))
    Console().print(table)


def set_path(data, path: str, value) -> None:
    """Set a dotted path in plain data (list indices as numbers), making missing mappings."""
    parts = path.split(".")
    for part in parts[:-1]:
        key = int(part) if isinstance(data, list) else part
        if isinstance(data, dict) and key not in data:
            data[key] = {}
        data = data[key]
    data[int(parts[-1]) if isinstance(data, list) else parts[-1]] = value


def best_spec_text(spec, overrides, result: dict) -> str:
    """The spec file as written, with the --set overrides and the best values set and without
    its search: section (its comments are not kept)."""
    import yaml

    from dlc.spec.yamlload import parse_yaml

    data = parse_yaml(spec.text, spec.file).data
    for raw in overrides:
        key, _, text = raw.partition("=")
        set_path(data, key.strip(), parse_yaml(text, spec.file).data if text.strip() else None)
    for key, value in result["best"]["params"].items():
        set_path(data, key, value)
    data.pop("search", None)
    best = result["best"]
    head = (f"# dlc tune: {spec.file}, study {result['study']}, best trial {best['trial']}: "
            f"{result['metric']} {best['value']:.6g}\n")
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True,
                                                   default_flow_style=None)
