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
on a local Ray instance or, with `--address`, on a Ray cluster. Both backends share
dlc.commands.tune_search (the search space, the trial's training, the results); the table and the
best spec are written here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dlc.commands import tune_ray
from dlc.commands.tune_search import (DISTRIBUTIONS, Setup, choose_metric, done_note, results,
                                      search_space, show_value, spec_values, train_trial)
from dlc.errors import DlcError, UsageError, optional_module
from dlc.files.atomic import write_text
from dlc.model.spec import load_spec
from dlc.model.spec.yamlload import parse_yaml

INSTALL = "dlc tune needs Optuna: pip install 'dlc[tune]'"


def require_optuna():
    return optional_module("optuna", INSTALL, "dlc tune")


def require_backend(backend: str, storage: str | None, address: str | None) -> None:
    """Check the backend's options and that its library is installed, before any work."""
    if backend not in ("optuna", "ray"):
        raise UsageError(f"--backend {backend}: expected optuna or ray")
    if backend == "optuna" and address:
        raise UsageError("--address is a Ray cluster's; add --backend ray")
    if backend == "ray" and storage:
        raise UsageError("--storage is Optuna's study storage; --backend ray takes --address")
    if backend == "ray":
        tune_ray.require_ray()
    else:
        require_optuna()


# ---- the search space ---------------------------------------------------------------------


def suggest(trial, key: str, kind: str, args: list):
    """One value sampled by an Optuna trial."""
    return DISTRIBUTIONS[kind][0](trial, key, args)


# ---- one trial ----------------------------------------------------------------------------


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
        setup.note(done_note(trial.number, setup.metric, value, trial.params))
        return value
    return run


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
        return tune_ray.tune_ray(setup, trials, address, study_name, seed)
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our note
    study = open_study(optuna, setup, storage, study_name, seed)
    study.optimize(objective(setup), n_trials=trials, catch=(DlcError,))
    return results(study.study_name, name, study.direction.name.lower(),
                   [_row(t) for t in study.trials])


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
                      *(show_value(r["params"][k]) if k in r["params"] else "" for k in keys))
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


def command(spec: str, trials: int, storage, study, output, metric, seed, overrides: list,
            device: str, backend: str, address) -> None:
    """`dlc tune`: the results table, the best trial, and the best spec written to `output`."""
    require_backend(backend, storage, address)  # bad options, missing library: before any work
    loaded = load_spec(spec, overrides)
    result = tune(loaded, trials, storage, study, overrides, metric, seed, device,
                  backend=backend, address=address)
    print_table(result)
    best = result["best"]
    print(f"best: trial {best['trial']}  {result['metric']} {best['value']:.6g}  {best['params']}")
    if output:
        write_text(output, best_spec_text(loaded, overrides, result))
        print(f"wrote {output}")
