"""The `dlc` command line: parse, dispatch, map errors to exit codes. No logic lives here.

Imports are lazy so that `dlc --help` and `dlc validate` never load numpy or onnxruntime.
Exit codes: 0 ok, 1 a problem with files, data or training, 2 a spec or usage error,
3 an unexpected error (run with --debug for the traceback), 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from dlc.errors import DlcError, SpecError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dlc: YAML model specs compiled to ONNX and trained in ONNX Runtime.")
_state = {"debug": False}

SetOpt = typer.Option(None, "--set", help="Override a spec field: --set train.epochs=5 "
                                          "--set layers.0.units=128 (repeatable).")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks of unexpected "
                                                            "errors.")):
    _state["debug"] = debug


def _load(path: str, overrides: Optional[List[str]] = None):
    from dlc.spec import load_spec

    return load_spec(path, overrides or [])


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
def summary(spec: str, set_: Optional[List[str]] = SetOpt):
    """Print the layer table: output shapes, parameters and FLOPs per sample."""
    from dlc.summary import render

    render(_load(spec, set_))


@app.command()
def train(spec: Optional[str] = typer.Argument(None, help="Spec file (omit with --resume)."),
          resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this "
                                                                      "folder from its checkpoint."),
          out: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder (default "
                                                                     "runs/<name>/<time>)."),
          set_: Optional[List[str]] = SetOpt,
          epochs: Optional[int] = typer.Option(None, help="Shorthand for --set train.epochs=N."),
          seed: Optional[int] = typer.Option(None, help="Shorthand for --set train.seed=S."),
          device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
          force: bool = typer.Option(False, "--force", help="Overwrite a non-empty run folder."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output.")):
    """Train a spec on its data; write model.onnx, metrics and a checkpoint to a run folder."""
    import json

    from dlc.runtime.run import resume as run_resume
    from dlc.runtime.run import train as run_train

    overrides = list(set_ or [])
    overrides += [f"train.epochs={epochs}"] if epochs is not None else []
    overrides += [f"train.seed={seed}"] if seed is not None else []
    if resume is not None:
        if spec is not None or out is not None:
            raise UsageError("--resume continues a run folder; give no SPEC and no --out with it")
        path = run_resume(resume, overrides, device, quiet)
    elif spec is None:
        raise UsageError("missing SPEC (or --resume RUN_DIR)")
    else:
        path = run_train(_load(spec, overrides), out, force, device, quiet)
    result = json.loads((path / "summary.json").read_text())
    print(f"run: {path}")
    for split in ("val", "test"):
        if split in result:
            shown = {k: round(v, 4) for k, v in result[split].items() if isinstance(v, float)}
            print(f"{split}: {shown}")


@app.command()
def evaluate(model: str, data: str = typer.Option(..., "--data", help="builtin:NAME, csv:PATH, "
                                                                      "npz:PATH or folder:PATH"),
             output: Optional[str] = typer.Option(None, "-o", "--output", help="metrics.json"),
             batch_size: int = typer.Option(1024, min=1), device: str = "cpu",
             per_class: bool = typer.Option(False, "--per-class", help="Precision, recall, F1 "
                                            "and support per class; the most confused pairs.")):
    """Metrics of a trained model on a data source (with targets)."""
    import json

    from dlc.fileio import write_text
    from dlc.runtime import infer

    loaded = infer.load_model(model, device)
    if per_class and all(t["kind"] == "regression" for t in loaded.heads.values()):
        raise UsageError("--per-class needs a classification or binary model")
    result = infer.evaluate(loaded, data, batch_size)
    parts = {h: result[h] for h in loaded.heads if h} or {"": result}  # per output
    if per_class:
        from dlc.metrics import per_class_report

        for head, part in parts.items():
            if "confusion_matrix" in part:
                part["per_class"] = per_class_report(part["confusion_matrix"],
                                                     loaded.labels_of(head))
    text = json.dumps(result, indent=1)
    if output:
        write_text(output, text + "\n")
    for head, part in parts.items():
        _print_metrics(part, f"{head}." if head else "")
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
            batch_size: int = typer.Option(1024, min=1), device: str = "cpu"):
    """Predictions with class names and probabilities (or regression values)."""
    from dlc.runtime import infer

    m = infer.load_model(model, device)
    text = infer.write_predictions(m, infer.predict(m, input, batch_size, output), output)
    if text is not None:
        sys.stdout.write(text)
    else:
        print(f"wrote {output}", file=sys.stderr)


@app.command()
def expand(spec: str, set_: Optional[List[str]] = SetOpt):
    """Print the spec with blocks expanded and every default filled."""
    import yaml

    data = dict(_load(spec, set_).data)
    data.pop("blocks", None)
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


@app.command()
def graph(spec: str, output: str = typer.Option("graph.svg", "-o", "--output",
                                               help=".dot, .svg, .png or .pdf")):
    """Draw the layer graph (Graphviz's dot renders svg/png/pdf)."""
    from pathlib import Path

    from dlc.drawing import render, to_dot

    render(to_dot(_load(spec)), Path(output))
    print(f"wrote {output}")


@app.command()
def diff(a: str, b: str):
    """Semantic difference of two specs: changed fields (defaults filled) and parameter counts."""
    from dlc.tools import diff_specs

    for line in diff_specs(_load(a), _load(b)):
        print(line)


@app.command()
def runs(folder: str = typer.Argument("runs", help="Folder to search for run folders.")):
    """List runs (newest first) with their test metrics and training speed."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from dlc.tools import list_runs

    found, unread = list_runs(Path(folder))
    if not found:
        raise DlcError(f"no runs under {folder}" + (f" ({unread} unreadable summary.json)"
                                                   if unread else ""))
    table = Table()
    for col in ("run", "epochs", "test", "samples/s"):
        table.add_column(col)
    for r in found:
        test = "  ".join(f"{k} {v:.4g}" for k, v in r["test"].items() if isinstance(v, float))
        table.add_row(r["run"], str(r["epochs"]), test, f"{r['samples_per_s'] or 0:,.0f}")
    Console().print(table)
    if unread:
        print(f"note: {unread} summary.json not readable as a dlc summary, left out")


@app.command()
def plot(run: str, output: str = typer.Option("curves.png", "-o", "--output")):
    """Plot loss and metrics per epoch (train vs val) of a run folder (needs matplotlib)."""
    from pathlib import Path

    from dlc.tools import plot_run

    for note in plot_run(Path(run), Path(output)):
        print(f"note: {note}")
    print(f"wrote {output}")


@app.command()
def quantize(model: str, output: str = typer.Option(..., "-o", "--output", help="int8.onnx path"),
             mode: Optional[str] = typer.Option(None, help="dynamic | static (default: the "
                                                "faster here)"),
             data: Optional[str] = typer.Option(None, "--data", help="Calibration (and, when the "
                                                "spec's data does not load, comparison) source."),
             calibration: int = typer.Option(256, help="Calibration samples (static).")):
    """Quantize a trained model to int8 (onnxruntime); report size, speed and metric change."""
    from dlc.tools_quantize import quantize as run_quantize
    from dlc.tools_quantize import render

    for line in render(run_quantize(model, output, mode, data, calibration)):
        print(line)


@app.command()
def cv(spec: str, folds: int = typer.Option(5, "--folds", "-k", help="Number of folds K."),
       set_: Optional[List[str]] = SetOpt,
       output: Optional[str] = typer.Option(None, "-o", "--output", help="cv.json"),
       device: str = typer.Option("cpu", help="auto | cpu | cuda | cuda:N.")):
    """K-fold cross-validation: a fresh model per fold; mean ± std of each metric."""
    import json

    from dlc.crossval import cross_validate, render
    from dlc.fileio import write_text

    report = cross_validate(_load(spec, set_), folds, device, note=print)
    for line in render(report):
        print(line)
    if output:
        write_text(output, json.dumps(report, indent=1) + "\n")
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
         device: str = typer.Option("cpu", help="auto | cpu | cuda | cuda:N."),
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
                                                            "the predicted class).")):
    """Input attributions of the target logit, through dlc's own gradient pass."""
    from dlc.explain import explain_file

    for line in explain_file(model, input, output, method, steps, target):
        print(line)


@app.command()
def env():
    """Versions, execution providers, and whether CUDA is usable here (and why not)."""
    from dlc.tools import environment

    for key, value in environment():
        print(f"{key + ':':22} {value}")


def _one_line(text: str) -> str:
    """Line breaks inside a message (from file contents, names) shown escaped: one line."""
    return text.strip().replace("\r", "\\r").replace("\n", "\\n")


def main() -> None:
    try:
        app()
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
