"""The `dlc` command line: parse, dispatch, map errors to exit codes. No logic lives here: each
command's body is `command(...)` in its module of dlc.commands.

Each command imports its module when it runs, so that `dlc --help` loads none of them and
`dlc validate` only its own (no numpy, no onnxruntime).
Exit codes: 0 ok, 1 a problem with files, data or training, 2 a spec or usage error,
3 an unexpected error (run with --debug for the traceback), 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from dlc.commands.app import BatchOpt, DeviceOpt, SetOpt, app, run
from dlc.errors import DlcError, SpecError

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks of unexpected "
                                                            "errors.")):
    _state["debug"] = debug


@app.command()
def validate(specs: List[str] = typer.Argument(..., help="Spec files to check.")):
    """Check spec files against the schema and the semantic rules; print ok or every error."""
    from dlc.commands import validate as command

    code = command.command(specs)
    if code:
        raise typer.Exit(code)


@app.command()
def inspect(model: str = typer.Argument(..., help="Any ONNX file.")):
    """Inputs, outputs, ops, parameters, opset of an ONNX file, and whether dlc can train it."""
    from dlc.commands import inspect as command

    code = command.command(model)
    if code:
        raise typer.Exit(code)


@app.command()
def init(data: str = typer.Argument(..., help="A .csv, .parquet or .feather table."),
         target: str = typer.Option(..., "--target", help="The column to predict."),
         output: Optional[str] = typer.Option(None, "-o", "--output", help="spec.yaml (default: stdout)"),
         force: bool = typer.Option(False, "--force", help="Replace an existing spec file.")):
    """Write a commented starting spec for a table: features, missing values and the task."""
    from dlc.commands import init as command

    command.command(data, target, output, force)


@app.command()
def schema():
    """Print the spec language's JSON Schema (also used by editors)."""
    from dlc.commands import schema as command

    command.command()


@app.command("compile")
def compile_(spec: str, output: str = typer.Option(..., "-o", "--output", help="model.onnx path"),
             seed: Optional[int] = typer.Option(None, help="Initialisation seed (default "
                                                           "train.seed)."),
             set_: Optional[List[str]] = SetOpt):
    """Compile a spec to an ONNX inference model with freshly initialised weights."""
    from dlc.commands import compile as command

    command.command(spec, output, seed, set_ or [])


@app.command()
def summary(spec: str, set_: Optional[List[str]] = SetOpt, device: str = typer.Option(
        "cpu", "--device", help="Warn when activations exceed its memory: cpu, cuda[:N].")):
    """Print the layer table: output shapes, parameters, FLOPs and activation memory."""
    from dlc.commands import summary as command

    command.command(spec, set_ or [], device)


@app.command()
def profile(spec: str, steps: int = typer.Option(20, "--steps", min=1, help="Timed steps."),
            batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                     help="Batch (default train.batch_size)."),
            device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto."),
            set_: Optional[List[str]] = SetOpt):
    """Per-layer forward, backward and update time of a train step, on synthetic data."""
    from dlc.commands import profile as command

    command.command(spec, steps, batch_size, device, set_ or [])


@app.command()
def train(spec: Optional[str] = typer.Argument(None, help="Spec file (omit with --resume)."),
          resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this "
                                                                      "folder from its checkpoint."),
          out: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder (default "
                                                                     "runs/<name>/<time>)."),
          set_: Optional[List[str]] = SetOpt,
          epochs: Optional[int] = typer.Option(None, help="Shorthand for --set train.epochs=N."),
          seed: Optional[int] = typer.Option(None, help="Shorthand for --set train.seed=S."),
          device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (default "
                                                          "train.device, auto)."),
          force: bool = typer.Option(False, "--force", help="Overwrite a non-empty run folder."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
          log_format: str = typer.Option("text", "--log-format", help="text (a progress bar on "
                                         "a terminal, one line per epoch otherwise, on stderr) "
                                         "| jsonl (one JSON object per epoch on stdout)."),
          workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Data-parallel "
                                                "workers started by Ray Train (batch_size per "
                                                "worker; default train.distributed.workers)."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address "
                                                "(default: a local Ray)."),
          gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", min=0,
                                                          help="GPUs Ray gives each worker "
                                                          "(default train.distributed."
                                                          "gpus_per_worker, 0: CPU)."),
          cpus_per_worker: Optional[int] = typer.Option(None, "--cpus-per-worker", min=1,
                                                        help="CPUs Ray gives each worker, and so "
                                                        "its onnxruntime threads (default: an "
                                                        "equal share of this machine's; 1 on a "
                                                        "cluster).")):
    """Train a spec on its data; write model.onnx, metrics and a checkpoint to a run folder."""
    from dlc.commands import train as command

    overrides = list(set_ or [])
    overrides += [f"train.epochs={epochs}"] if epochs is not None else []
    overrides += [f"train.seed={seed}"] if seed is not None else []
    command.command(spec, resume, out, overrides, device, force, quiet, log_format, workers,
                    address, gpus_per_worker, cpus_per_worker)


@app.command()
def evaluate(model: str, data: str = typer.Option(..., "--data", help="builtin:NAME, csv:PATH, "
                                                  "parquet:PATH, feather:PATH, npz:PATH or "
                                                  "folder:PATH (a bare .csv/.parquet/.feather/"
                                                  ".npz path too), with targets."),
             output: Optional[str] = typer.Option(None, "-o", "--output", help="metrics.json"),
             batch_size: int = BatchOpt, device: str = DeviceOpt,
             per_class: bool = typer.Option(False, "--per-class", help="Precision, recall, F1 "
                                            "and support per class; the most confused pairs."),
             split: Optional[str] = typer.Option(None, "--split", help="test | val | train | "
                                                 "all: part of the model's own data source "
                                                 "(default test there, all elsewhere).")):
    """Metrics of a trained model on a data source (with targets); says which rows it scored."""
    from dlc.commands import evaluate as command

    command.command(model, data, output, batch_size, device, per_class, split)


@app.command()
def predict(model: str, input: str = typer.Argument(..., help="CSV, Parquet, Feather, NPZ, an image or a folder of images: raw inputs."),
            output: Optional[str] = typer.Option(None, "-o", "--output",
                                                 help=".csv, .npz or .json (default: csv to "
                                                      "stdout)"),
            batch_size: int = BatchOpt, device: str = DeviceOpt):
    """Predictions with class names and probabilities (or regression values)."""
    from dlc.commands import predict as command

    command.command(model, input, output, batch_size, device)


@app.command()
def serve(model: str, host: str = typer.Option("127.0.0.1", help="Address (0.0.0.0: all)."),
          port: int = typer.Option(8000, help="Port (0: a free one, printed)."),
          max_batch: int = typer.Option(64, help="Rows merged into one onnxruntime run."),
          max_wait_ms: float = typer.Option(0.0, help="How long a request waits to share one."),
          max_rows: int = typer.Option(1024, help="Rows one request may hold."),
          device: str = DeviceOpt):
    """Serve a model over HTTP: POST /predict, GET /health and /schema, a page at /."""
    from dlc.commands.serve import serve as command

    command(model, host, port, max_batch, max_wait_ms, max_rows, device)


@app.command()
def quantize(model: str, output: str = typer.Option(..., "-o", "--output", help="int8.onnx path"),
             mode: Optional[str] = typer.Option(None, help="dynamic | static (default: the "
                                                "faster here)"),
             data: Optional[str] = typer.Option(None, "--data", help="Calibration (and, when the "
                                                "spec's data does not load, comparison) source."),
             calibration: int = typer.Option(256, help="Calibration samples (static)."),
             device: str = DeviceOpt):
    """Quantize a trained model to int8 (onnxruntime); report size, speed and metric change."""
    from dlc.commands import quantize as command

    command.command(model, output, mode, data, calibration, device)


@app.command()
def cv(spec: str, folds: int = typer.Option(5, "--folds", "-k", help="Number of folds K."),
       set_: Optional[List[str]] = SetOpt,
       output: Optional[str] = typer.Option(None, "-o", "--output", help="cv.json"),
       device: str = DeviceOpt):
    """K-fold cross-validation: a fresh model per fold; mean ± std of each metric."""
    from dlc.commands import cv as command

    command.command(spec, folds, set_ or [], output, device)


@app.command()
def tune(spec: str, trials: int = typer.Option(20, "--trials", "-n", min=1,
                                               help="Trials to run now (added to the study)."),
         storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL, e.g. "
                                               "sqlite:///study.db: processes share one study."),
         study: Optional[str] = typer.Option(None, "--study", help="Study name (default: the "
                                                                   "spec's name)."),
         output: Optional[str] = typer.Option(None, "-o", "--output", help="Write the best spec "
                                              "(YAML, search: removed) here."),
         metric: Optional[str] = typer.Option(None, "--metric", help="Column to optimise "
                                              "(default: the early-stopping monitor or val_loss)."),
         seed: Optional[int] = typer.Option(None, help="Sampler seed (default train.seed); give "
                                                       "each process sharing a study its own."),
         set_: Optional[List[str]] = SetOpt,
         device: str = DeviceOpt,
         backend: str = typer.Option("optuna", help="optuna | ray (Ray Tune: random search, "
                                                    "ASHA early stopping)."),
         address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to run the "
                                               "trials on (ray.init's address; default: a local "
                                               "Ray).")):
    """Hyperparameter search over the spec's search: section, with Optuna or Ray Tune."""
    from dlc.commands import tune as command

    command.command(spec, trials, storage, study, output, metric, seed, set_ or [], device,
                    backend, address)


@app.command()
def explain(model: str, input: str = typer.Argument(..., help="Raw inputs, read as predict "
                                                           "reads them: CSV, Parquet, Feather, "
                                                           "NPZ, an image or a folder of them."),
            output: Optional[str] = typer.Option(None, "-o", "--output",
                                                 help="tabular: .csv/.npz table; images: PNG "
                                                      "folder (default saliency/)"),
            method: str = typer.Option("grad_x_input", help="grad_x_input | "
                                                           "integrated_gradients"),
            steps: int = typer.Option(32, help="Integrated-gradients interpolation steps."),
            target: Optional[str] = typer.Option(None, help="Class name or index (default: "
                                                            "the predicted class)."),
            baseline: str = typer.Option("mean", help="mean (the training mean) | zero"),
            device: str = DeviceOpt):
    """Input attributions of the target logit, through dlc's own gradient pass."""
    from dlc.commands import explain as command

    command.command(model, input, output, method, steps, target, baseline, device)


@app.command()
def expand(spec: str, set_: Optional[List[str]] = SetOpt):
    """Print the spec with blocks expanded and every default filled."""
    from dlc.commands import expand as command

    command.command(spec, set_ or [])


@app.command()
def graph(spec: str, output: str = typer.Option("graph.svg", "-o", "--output",
                                               help=".svg, .mmd (Mermaid), .md (Mermaid in "
                                                    "Markdown), .dot; .png/.pdf need Graphviz"),
          set_: Optional[List[str]] = SetOpt):
    """Draw the layer graph: SVG and Mermaid written by dlc; png/pdf through Graphviz's dot."""
    from dlc.commands import graph as command

    command.command(spec, output, set_ or [])


@app.command()
def diff(a: str, b: str):
    """Semantic difference of two specs: changed fields (defaults filled) and parameter counts."""
    from dlc.commands import diff as command

    command.command(a, b)


@app.command()
def runs(folder: str = typer.Argument("runs", help="Folder to search for run folders.")):
    """List runs, newest first: time, spec, epochs, best monitored value, test metrics, speed."""
    from dlc.commands import runs as command

    command.command(folder)


@app.command()
def plot(run: str, output: str = typer.Option("curves.png", "-o", "--output",
                                              help="The figure: .png, .svg or .pdf.")):
    """Plot loss and metrics per epoch (train vs val) of a run folder (needs matplotlib)."""
    from dlc.commands import plot as command

    command.command(run, output)


@app.command()
def env():
    """Versions, execution providers, and whether CUDA is usable here (and why not)."""
    from dlc.commands import env as command

    command.command()


def _one_line(text: str) -> str:
    """Line breaks inside a message (from file contents, names) shown escaped: one line."""
    return text.strip().replace("\r", "\\r").replace("\n", "\\n")


def main() -> None:
    try:
        run()
    except DlcError as e:
        if isinstance(e, SpecError):  # one line per diagnostic
            print(str(e), file=sys.stderr)
        else:
            print(f"error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place unexpected errors are turned into text
        if _state["debug"]:
            raise
        print(f"dlc: unexpected error: {type(e).__name__}: {_one_line(str(e))} (run with "
              "--debug for the traceback)", file=sys.stderr)
        sys.exit(3)
