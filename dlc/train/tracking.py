"""Optional experiment tracking of a training run: `train.tracking: {backend: mlflow}` (here) or
`{backend: tensorboard}` (dlc.train.tracking_tb; `start` returns its tracker).

One MLflow run per `dlc train` (or `--resume`), named after the run folder, in the experiment
`train.tracking.experiment` (default: the spec's name), at `train.tracking.uri` (default
$MLFLOW_TRACKING_URI, else the file store `./mlruns` of the working folder, as an absolute
`file:` URI). It holds the resolved spec as dotted params (`train.optimizer.lr`,
`layers.0.units`), every epoch's metrics row with step = epoch, the test (`test_<m>`) and final
validation (`final_val_<m>`) metrics, model.onnx, metrics.csv, spec.yaml and summary.json as
artifacts, and the tags dlc.version and dlc.spec_sha256. It ends FINISHED, FAILED when training
raised (KILLED on Ctrl-C), and the error still propagates.

MLflow is imported only here and only when a spec asks for it (`dlc validate` never imports it).
MLflow 3 defaults to `sqlite:///mlflow.db`, which needs SQLAlchemy (not in mlflow-skinny), and
refuses the file store unless MLFLOW_ALLOW_FILE_STORE is true (it is in maintenance mode, not
removed); for a local file store dlc sets MLFLOW_ALLOW_FILE_STORE=true unless the environment
already says otherwise.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from dlc import __version__
from dlc.errors import DlcError, optional_module
from dlc.train import tracking_tb
from dlc.train.tracking_tb import writer_class

MISSING = "train.tracking: mlflow needs MLflow: pip install 'dlc[mlflow]'"
ARTIFACTS = ("model.onnx", "metrics.csv", "spec.yaml", "summary.json")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def settings(spec) -> dict | None:
    """train.tracking when it names a backend, else None."""
    cfg = (spec.data.get("train") or {}).get("tracking") or {}
    return cfg if cfg.get("backend", "none") != "none" else None


def _mlflow():
    """Import MLflow (lazily); the one-line install hint when it is missing."""
    return optional_module("mlflow", MISSING, "train.tracking")


def check(spec) -> None:
    """Fail now, before any work, when the spec asks for a tracker that is not installed."""
    cfg = settings(spec)
    if cfg is None:
        return
    if cfg["backend"] == "tensorboard":
        writer_class()
    else:
        _mlflow()


def resolve_uri(uri: str | None) -> str:
    """The tracking URI: as given (a plain path made an absolute file: URI), else
    $MLFLOW_TRACKING_URI, else file:<cwd>/mlruns."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if not _SCHEME.match(uri):
        uri = Path(uri).resolve().as_uri()
    return uri


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.optimizer.lr": 0.01, "layers.0.units": 32, "input.shape": [4], ...}: mappings and
    lists of mappings become dotted keys; other lists stay one value."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, sub in items:
        out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return out


def params_of(data: dict, max_len: int = 6000, max_key: int = 250) -> dict[str, str]:
    """The resolved spec as MLflow params: dotted keys, JSON values (strings as they are),
    cut to MLflow's length limits."""
    out = {}
    for key, value in flatten(data).items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if len(text) > max_len:
            text = text[: max_len - 3] + "..."
        out[_BAD_KEY.sub("_", key)[:max_key]] = text
    return out


def _one_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


class Tracker:
    """A no-op unless started by `start`; a context manager that ends the run."""

    def __init__(self, client=None, run_id: str | None = None, path: Path | None = None,
                 uri: str = ""):
        self.client, self.run_id, self.path, self.uri = client, run_id, path, uri

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DlcError:
            raise
        except Exception as e:  # noqa: BLE001 - MLflow and its stores raise many kinds
            raise DlcError(f"train.tracking: MLflow at {self.uri}: {_one_line(e)}") from None

    def log_rows(self, rows) -> None:
        """Metric rows (the trainer's history), each at step = its epoch."""
        if not self.run_id:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, int(row["epoch"])) for row in rows
                   for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):
            self._call(self.client.log_batch, self.run_id, metrics=metrics[i:i + 1000])

    def log_epoch(self, trainer) -> None:
        """on_epoch_end: the epoch just finished."""
        self.log_rows(trainer.state.history[-1:])

    def log_summary(self, summary: dict) -> None:
        """End of training: test and final validation metrics, and the run folder's files."""
        if not self.run_id:
            return
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(summary.get("epochs_run", 0))
        values = {f"test_{k}": v for k, v in (summary.get("test") or {}).items()}
        values.update({f"final_val_{k}": v for k, v in (summary.get("val") or {}).items()})
        values.update({k: summary[k] for k in ("epochs_run", "best_epoch", "skipped_steps")
                       if k in summary})
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items()]
        self._call(self.client.log_batch, self.run_id, metrics=metrics)
        self._log_artifacts()

    def _log_artifacts(self) -> None:
        for name in ARTIFACTS:
            if (self.path / name).is_file():
                self._call(self.client.log_artifact, self.run_id, str(self.path / name))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.run_id:
            return False
        if exc_type is None:
            self._call(self.client.set_terminated, self.run_id, "FINISHED")
            return False
        status = ("KILLED" if issubclass(exc_type, KeyboardInterrupt)
                  or getattr(exc, "exit_code", None) == 130 else "FAILED")
        try:  # never hide the training error behind a tracking one
            self.client.set_tag(self.run_id, "dlc.error", _one_line(exc)[:5000])
            self._log_artifacts()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception:  # noqa: BLE001
            pass
        return False


def _store(cfg: dict) -> str:
    """The tracking URI, with what its kind of store needs: file stores allowed, SQL stores
    only with SQLAlchemy (full MLflow)."""
    uri = resolve_uri(cfg.get("uri"))
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "file":
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    elif scheme in _SQL_SCHEMES:
        try:
            import sqlalchemy  # noqa: F401
        except ImportError:
            raise DlcError(f"train.tracking.uri: {uri} needs the full MLflow with SQLAlchemy "
                           "(pip install mlflow); mlflow-skinny supports file: and http(s): "
                           "stores") from None
    return uri


def _tags(spec, path: Path, history) -> dict[str, str]:
    """The run's tags: dlc version, spec hash, run folder, source file, user, resume point."""
    tags = {"dlc.version": __version__,
            "dlc.spec_sha256": hashlib.sha256(spec.text.encode()).hexdigest(),
            "dlc.run_dir": str(path.resolve()),
            "mlflow.source.name": str(Path(spec.file).resolve()),
            "mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        pass
    if history:
        tags["dlc.resumed_after_epoch"] = str(history[-1]["epoch"])
    return tags


def start(spec, path: Path, history=()) -> Tracker:
    """Open the tracking run for the run folder `path` (a no-op Tracker when tracking is off);
    `history` (a resumed run's earlier epochs) is logged first."""
    cfg = settings(spec)
    if cfg is None:
        return Tracker()
    if cfg["backend"] == "tensorboard":
        return tracking_tb.start(path, history)
    _mlflow()
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = _store(cfg)
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as max_len
    except ImportError:
        max_len = 500
    tracker = Tracker(uri=uri, path=path)
    client = tracker._call(MlflowClient, uri)
    name = cfg.get("experiment") or spec.data["name"]
    experiment = tracker._call(client.get_experiment_by_name, name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise DlcError(f"train.tracking: MLflow experiment '{name}' at {uri} is deleted; "
                       "restore it or set train.tracking.experiment")
    exp_id = (experiment.experiment_id if experiment is not None
              else tracker._call(client.create_experiment, name))
    run = tracker._call(client.create_run, exp_id, run_name=path.name,
                        tags=_tags(spec, path, history))
    tracker.client, tracker.run_id = client, run.info.run_id
    try:
        params = [Param(k, v) for k, v in params_of(spec.data, max_len).items()]
        for i in range(0, len(params), 100):
            tracker._call(client.log_batch, tracker.run_id, params=params[i:i + 100])
        tracker.log_rows(history)
    except BaseException as e:  # a run that cannot take its params ends FAILED
        tracker.__exit__(type(e), e, e.__traceback__)
        raise
    return tracker
