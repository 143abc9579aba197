"""The `dlc` command line: parse, dispatch, map errors to exit codes. No logic lives here.

Imports are lazy so that `dlc --help` and `dlc validate` never load numpy or onnxruntime.
Exit codes: 0 ok, 1 a problem with files, data or training, 2 a spec or usage error,
3 an unexpected error (run with --debug for the traceback), 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from dlc.cli_app import DeviceOpt, SetOpt, app, run
from dlc.cli_app import load as _load
from dlc.errors import DlcError, SpecError, UsageError

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks of unexpected "
                                                            "errors.")):
    _state["debug"] = debug


@app.command()
def validate(specs: List[str] = typer.Argument(..., help="Spec files to check.")):
    """Check spec files against the schema and the semantic rules; print ok or every error."""
    failed = []
    for path in specs:
        try:
            spec = _load(path)
            from pathlib import Path

            from dlc.network import build_network
            from dlc.traincheck import check_training

            check_training(spec, build_network(spec), Path(path).resolve().parent)
            print(f"{path}: ok")
        except DlcError as e:
            print(str(e) if isinstance(e, SpecError) else f"{path}: {e}", file=sys.stderr)
            failed.append(e)
    if failed:
        raise typer.Exit(max(e.exit_code for e in failed))


@app.command()
def schema():
    """Print the spec language's JSON Schema (also used by editors)."""
    from dlc.spec import schema_path

    sys.stdout.write(schema_path().read_text())


@app.command("compile")
def compile_(spec: str, output: str = typer.Option(..., "-o", "--output", help="model.onnx path"),
             seed: Optional[int] = typer.Option(None, help="Initialisation seed (default "
                                                           "train.seed)."),
             set_: Optional[List[str]] = SetOpt):
    """Compile a spec to an ONNX inference model with freshly initialised weights."""
    from pathlib import Path

    import onnx

    from dlc.compile import compile_spec
    from dlc.fileio import write_bytes

    model = compile_spec(_load(spec, set_), seed)
    onnx.checker.check_model(model, full_check=True)
    out = Path(output)
    if not out.parent.is_dir():
        raise DlcError(f"output folder {out.parent} does not exist")
    write_bytes(out, model.SerializeToString())
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


@app.command()
def summary(spec: str, set_: Optional[List[str]] = SetOpt, device: str = typer.Option(
        "cpu", "--device", help="Warn when activations exceed its memory: cpu, cuda[:N].")):
    """Print the layer table: output shapes, parameters, FLOPs and activation memory."""
    from dlc.summary import render

    render(_load(spec, set_), device)


@app.command()
def profile(spec: str, steps: int = typer.Option(20, "--steps", min=1, help="Timed steps."),
            batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
            device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto."),
            set_: Optional[List[str]] = SetOpt):
    """Per-layer forward, backward and update time of a train step, on synthetic data."""
    from dlc import profile as P

    print("\n".join(P.render(P.run(_load(spec, set_), steps, batch_size, device))))


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
                                         "| jsonl (one JSON object per epoch on stdout).")):
    """Train a spec on its data; write model.onnx, metrics and a checkpoint to a run folder."""
    from dlc.runtime.report import LOG_FORMATS
    from dlc.runtime.run import resume as run_resume
    from dlc.runtime.run import train as run_train

    if log_format not in LOG_FORMATS:
        raise UsageError(f"unknown --log-format '{log_format}'; use text or jsonl")
    overrides = list(set_ or [])
    overrides += [f"train.epochs={epochs}"] if epochs is not None else []
    overrides += [f"train.seed={seed}"] if seed is not None else []
    if resume is not None:
        if spec is not None or out is not None:
            raise UsageError("--resume continues a run folder; give no SPEC and no --out with it")
        path = run_resume(resume, overrides, device, quiet, log_format)
    elif spec is None:
        raise UsageError("missing SPEC (or --resume RUN_DIR)")
    else:
        path = run_train(_load(spec, overrides), out, force, device, quiet, log_format)
    _print_run(path, log_format)


def _print_run(path, log_format: str) -> None:
    """The run folder and its final metrics: text lines, or (jsonl) one `end` event."""
    import json

    result = json.loads((path / "summary.json").read_text())
    if log_format == "jsonl":
        from dlc.runtime.report import json_event

        print(json_event({"event": "end", "run": str(path), **result}))
        return
    print(f"run: {path}")
    for split in ("val", "test"):
        if split in result:
            shown = {k: round(v, 4) for k, v in result[split].items() if isinstance(v, float)}
            print(f"{split}: {shown}")


@app.command()
def evaluate(model: str, data: str = typer.Option(..., "--data", help="builtin:NAME, csv:PATH, "
                                                                      "npz:PATH or folder:PATH"),
             output: Optional[str] = typer.Option(None, "-o", "--output", help="metrics.json"),
             batch_size: int = typer.Option(1024, min=1), device: str = DeviceOpt,
             per_class: bool = typer.Option(False, "--per-class", help="Precision, recall, F1 "
                                            "and support per class; the most confused pairs."),
             split: Optional[str] = typer.Option(None, "--split", help="test | val | train | "
                                                 "all: part of the model's own data source "
                                                 "(default test there, all elsewhere).")):
    """Metrics of a trained model on a data source (with targets); says which rows it scored."""
    from dlc.fileio import write_json
    from dlc.runtime import infer

    if split is not None and split not in infer.SPLITS:
        raise UsageError(f"--split {split}: expected one of {', '.join(infer.SPLITS)}")
    loaded = infer.load_model(model, device)
    if per_class and all(t["kind"] == "regression" for t in loaded.heads.values()):
        raise UsageError("--per-class needs a classification or binary model")
    result = infer.evaluate(loaded, data, batch_size, split)
    print(f"scored: {result['scored']}")
    parts = {h: result[h] for h in loaded.heads if h} or {"": result}  # per output
    if per_class:
        from dlc.metrics import per_class_report

        for head, part in parts.items():
            if "confusion_matrix" in part:
                part["per_class"] = per_class_report(part["confusion_matrix"],
                                                     loaded.labels_of(head))
    if output:
        write_json(output, result, indent=1)  # null for a NaN metric: standard JSON
    for head, part in parts.items():
        _print_metrics({k: v for k, v in part.items() if k != "scored"}, f"{head}." if head else "")
    if "" not in parts:
        print(f"samples: {result['samples']}")


def _print_metrics(result: dict, prefix: str) -> None:
    """`name: value` lines, then the confusion matrix and the per-class table if present."""
    from dlc.metrics import render_per_class

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


@app.command()
def predict(model: str, input: str = typer.Argument(..., help="CSV, NPZ or a folder of images: raw inputs."),
            output: Optional[str] = typer.Option(None, "-o", "--output",
                                                 help=".csv, .npz or .json (default: csv to "
                                                      "stdout)"),
            batch_size: int = typer.Option(1024, min=1), device: str = DeviceOpt):
    """Predictions with class names and probabilities (or regression values)."""
    from dlc.runtime import infer

    m = infer.load_model(model, device)
    text = infer.write_predictions(m, infer.predict(m, input, batch_size, output), output)
    if text is not None:
        sys.stdout.write(text)
    else:
        print(f"wrote {output}", file=sys.stderr)


@app.command()
def serve(model: str, host: str = typer.Option("127.0.0.1", help="Address (0.0.0.0: all)."),
          port: int = typer.Option(8000, help="Port (0: a free one, printed)."),
          max_batch: int = typer.Option(64, help="Rows merged into one onnxruntime run."),
          max_wait_ms: float = typer.Option(0.0, help="How long a request waits to share one."),
          max_rows: int = typer.Option(1024, help="Rows one request may hold."),
          device: str = DeviceOpt):
    """Serve a model over HTTP: POST /predict, GET /health and /schema, a page at /."""
    from dlc.serve import serve as run_serve

    run_serve(model, host, port, max_batch, max_wait_ms, max_rows, device)


@app.command()
def quantize(model: str, output: str = typer.Option(..., "-o", "--output", help="int8.onnx path"),
             mode: Optional[str] = typer.Option(None, help="dynamic | static (default: the "
                                                "faster here)"),
             data: Optional[str] = typer.Option(None, "--data", help="Calibration (and, when the "
                                                "spec's data does not load, comparison) source."),
             calibration: int = typer.Option(256, help="Calibration samples (static)."),
             device: str = DeviceOpt):
    """Quantize a trained model to int8 (onnxruntime); report size, speed and metric change."""
    from dlc.tools_quantize import quantize as run_quantize
    from dlc.tools_quantize import render

    for line in render(run_quantize(model, output, mode, data, calibration, device=device)):
        print(line)


@app.command()
def cv(spec: str, folds: int = typer.Option(5, "--folds", "-k", help="Number of folds K."),
       set_: Optional[List[str]] = SetOpt,
       output: Optional[str] = typer.Option(None, "-o", "--output", help="cv.json"),
       device: str = DeviceOpt):
    """K-fold cross-validation: a fresh model per fold; mean ± std of each metric."""
    from dlc.crossval import cross_validate, render
    from dlc.fileio import write_json

    report = cross_validate(_load(spec, set_), folds, device, note=print)
    for line in render(report):
        print(line)
    if output:
        write_json(output, report, indent=1)  # standard JSON: null for a NaN fold metric
        print(f"wrote {output}")


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
    """Hyperparameter search over the spec's search: section (Optuna: TPE, median pruning;
    or Ray Tune)."""
    from dlc.fileio import write_text
    from dlc.tune import best_spec_text, print_table, require_backend
    from dlc.tune import tune as run_tune

    require_backend(backend, storage, address)  # bad options, missing library: before any work
    loaded = _load(spec, set_)
    result = run_tune(loaded, trials, storage, study, set_ or [], metric, seed, device,
                      backend=backend, address=address)
    print_table(result)
    best = result["best"]
    print(f"best: trial {best['trial']}  {result['metric']} {best['value']:.6g}  {best['params']}")
    if output:
        write_text(output, best_spec_text(loaded, set_ or [], result))
        print(f"wrote {output}")


@app.command()
def explain(model: str, input: str = typer.Argument(..., help="CSV, NPZ or image folder: raw "
                                                           "inputs, as for predict."),
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
    from dlc.explain_report import explain_file

    for line in explain_file(model, input, output, method, steps, target, baseline, device):
        print(line)


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


from dlc import cli_tools  # noqa: E402,F401 - registers expand, graph, diff, runs, plot, env
