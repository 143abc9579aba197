"""`dlc tune --backend ray`: the trials of dlc.commands.tune run by Ray Tune, on a local Ray
instance or, with `--address`, on a Ray cluster. Seeded random search over the same search space
table (dlc.commands.tune_search.DISTRIBUTIONS) with the spec's own values first, ASHA early
stopping on the per-epoch metric, and the same trial training, results and best spec as the
Optuna path.

Connecting to a cluster of Ray 2.60 needs its token authentication (RAY_AUTH_MODE=token in the
environment and the cluster's ~/.ray/auth_token), as Ray itself documents.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from dlc.errors import DlcError, UsageError, optional_module
from dlc.commands.tune_search import (DISTRIBUTIONS, Setup, candidates, done_note, final_value,
                                      results, spec_values, train_trial)

INSTALL_RAY = "--backend ray needs Ray Tune: pip install 'dlc[ray]'"


def require_ray():
    """(ray, ray.tune); a missing Ray (or a ray.tune dependency) is a usage error, one line."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no experiment banner
    return (optional_module("ray", INSTALL_RAY, "--backend ray", UsageError),
            optional_module("ray.tune", INSTALL_RAY, "--backend ray", UsageError))


def ray_space(tune, space: dict) -> dict:
    """The search space as Ray Tune's param_space."""
    return {key: DISTRIBUTIONS[kind][1](tune, args) for key, (kind, args) in space.items()}


def ray_trial(config: dict, setup: Setup) -> None:
    """Ray Tune's function trainable, run in a Ray worker: one trial, reported every epoch."""
    from ray import tune

    def report(t) -> None:
        es = t.cfg.get("early_stopping")
        finished = t.state.epoch >= t.cfg["epochs"] or bool(  # Trainer.end_epoch's stop rule
            es and t.state.bad_epochs >= es.get("patience", 5))
        tune.report({setup.metric: float(t.state.history[-1][setup.metric]),
                     "final": final_value(t, setup.metric), "finished": finished})

    train_trial(setup, config, report)


def start_ray(ray, address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a small, quiet local instance; True when
    this call started Ray (and so must shut it down)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                     object_store_memory=100 * 2**20, **quiet)
    except Exception as e:  # noqa: BLE001 - unreachable clusters, ports, sessions: one message
        raise DlcError(f"cannot start Ray{f' at {address}' if address else ''}: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return True


def tune_ray(setup: Setup, trials: int, address: str | None, study: str, seed: int) -> dict:
    """`trials` trials run by Ray Tune: seeded random search, the spec's own values first,
    ASHA stopping poor trials on the per-epoch metric; Ray's files in runs/<study>/tune-<time>."""
    ray, tune = require_ray()
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    epochs = max(candidates(*setup.space["train.epochs"]) if "train.epochs" in setup.space
                 else [setup.spec.data["train"]["epochs"]])
    own = spec_values(setup.spec, setup.space)
    gpu = setup.device.startswith("cuda")  # Ray picks the GPU and hides the others
    worker = replace(setup, note=None, device="cuda" if gpu else setup.device)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    started = start_ray(ray, address)
    logging.getLogger("ray").setLevel(logging.CRITICAL)  # failed trials: our note, no traceback
    try:
        grid = tune.Tuner(
            tune.with_resources(tune.with_parameters(ray_trial, setup=worker),
                                {"cpu": 1, "gpu": int(gpu)}),
            param_space=ray_space(tune, setup.space),
            tune_config=tune.TuneConfig(
                metric=setup.metric, mode="min" if setup.lower_is_better else "max",
                num_samples=trials, reuse_actors=True, trial_dirname_creator=_trial_dir,
                scheduler=ASHAScheduler(max_t=epochs, grace_period=max(1, epochs // 4)),
                search_alg=BasicVariantGenerator(points_to_evaluate=[own] if own else None,
                                                 random_state=seed)),
            run_config=tune.RunConfig(name=f"tune-{stamp}", verbose=0,
                                      storage_path=str(Path("runs", study).resolve()))).fit()
    finally:
        if started:
            ray.shutdown()
    rows = sorted((_ray_row(r) for r in grid), key=lambda r: r["trial"])
    for r in rows:  # the notes the Optuna path makes as each trial ends
        setup.note(_ray_note(r, setup.metric))
    return results(study, setup.metric, "minimize" if setup.lower_is_better else "maximize", rows)


def _ray_note(row: dict, metric: str) -> str:
    if row["error"]:
        return f"trial {row['trial']}: failed: {row['error']}"
    if row["state"] == "pruned":
        return f"trial {row['trial']}: pruned after epoch {row['epochs']}"
    return done_note(row["trial"], metric, row["value"], row["params"])


def _trial_dir(trial) -> str:
    return f"trial_{int(trial.trial_id.rsplit('_', 1)[1])}"


def _ray_row(r) -> dict:
    """A Ray Tune result as a results row (the trial number from its folder, trial_<n>)."""
    m = r.metrics or {}
    error = getattr(r.error, "cause", None) or r.error
    state = "fail" if error else "complete" if m.get("finished") else "pruned"
    return {"trial": int(Path(r.path).name.split("_")[1]), "state": state,
            "value": m["final"] if state == "complete" else None,
            "epochs": m.get("training_iteration"),
            "params": {k: _plain(v) for k, v in r.config.items()},
            "error": str(error).strip().splitlines()[0] if error else None}


def _plain(value):
    """numpy scalars (Ray's samples) as Python values, for the table and the YAML."""
    return value.item() if hasattr(value, "item") else value
