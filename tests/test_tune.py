"""`dlc tune`: the search: section (validated, errors at the key's line), Optuna's TPE study with
per-epoch reports and median pruning, a shared sqlite storage, and the best spec written out;
the --backend options (Ray Tune's own run: test_tune_ray.py)."""

from __future__ import annotations

import json

import pytest
from conftest import SPECS

from dlc.errors import DlcError, SpecError
from dlc.model.spec import load_spec

SEARCH = """\
search:
  train.optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}
  layers.0.units: {int: [4, 64]}
  train.optimizer.type: {choice: [adam, rmsprop, sgd]}
"""


@pytest.fixture
def spec(tmp_path):
    """specs/iris.yaml, 8 epochs, a search over learning rate, width and optimizer."""
    text = (SPECS / "iris.yaml").read_text().replace("epochs: 60", "epochs: 8")
    path = tmp_path / "iris.yaml"
    path.write_text(text + SEARCH)
    return path


def _line_of(path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_unknown_paths_and_empty_ranges_are_spec_errors_at_their_line(tmp_path):
    from dlc.commands.tune_search import search_space

    path = tmp_path / "s.yaml"
    path.write_text((SPECS / "iris.yaml").read_text() + "search:\n"
                    "  train.optimizr.lr: {uniform: [0.1, 0.2]}\n"
                    "  layers.7.units: {int: [4, 8]}\n"
                    "  train.epochs: {int: [9, 3]}\n"
                    "  train.optimizer.type: {choice: [adam, adamm]}\n"
                    "  train.batch_size: {uniform: [0.5, 2.5]}\n")
    with pytest.raises(SpecError) as e:
        search_space(load_spec(path))
    lines = str(e.value).splitlines()
    assert len(lines) == 5, lines
    expect = {"train.optimizr.lr": "unknown key 'optimizr'; did you mean 'optimizer'?",
              "layers.7.units": "no layer 7 (the spec has 3)",
              "train.epochs": "int: low 9 is above high 3",
              "train.optimizer.type": "unknown optimizer 'adamm'",
              "train.batch_size": "expected an integer"}
    for key, message in expect.items():
        line = next(x for x in lines if f"search.{key}:" in x)
        assert line.startswith(f"{path}:{_line_of(path, key + ':')}:3: ") and message in line, line


def test_schema_rejects_bad_distributions(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text((SPECS / "iris.yaml").read_text() + "search:\n"
                    "  train.optimizer.lr: {logunifrm: [0.1, 0.2]}\n"
                    "  'bad path': {int: [1, 2]}\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert "expected one of {loguniform: [low, high]}" in str(e.value)
    assert "expected a dotted spec path" in str(e.value)



def test_every_distribution_of_the_schema_has_one_row_for_both_backends():
    from dlc.model.spec.schema import schema
    from dlc.commands.tune_search import DISTRIBUTIONS

    kinds = [d["required"][0] for d in schema()["$defs"]["distribution"]["oneOf"]]
    assert list(DISTRIBUTIONS) == kinds
    assert all(len(row) == 2 for row in DISTRIBUTIONS.values())  # (Optuna, Ray Tune)



@pytest.mark.parametrize("args, message", [
    (["--backend", "hyperopt"], "--backend hyperopt: expected optuna or ray"),
    (["--address", "auto"], "--address is a Ray cluster's; add --backend ray"),
    (["--backend", "ray", "--storage", "sqlite:///s.db"], "--storage is Optuna's study storage")])
def test_backend_options_that_do_not_fit_are_usage_errors(cli, spec, args, message):
    r = cli("tune", spec, "--trials", "1", *args)
    assert r.code == 2 and r.err.startswith(f"error: {message}"), r


def test_no_search_section(cli):
    pytest.importorskip("optuna")
    r = cli("tune", SPECS / "iris.yaml", "--trials", "1")
    assert r.code == 2 and "the spec has no search: section" in r.err, r


def _val_loss(cli, spec, out) -> float:
    r = cli("train", spec, "--out", out, "-q")
    assert r.code == 0, r
    return json.loads((out / "summary.json").read_text())["val"]["loss"]


def test_tune_iris_shares_a_sqlite_study_and_its_best_spec_retrains_to_its_value(cli, spec, tmp_path):
    optuna = pytest.importorskip("optuna")
    db = tmp_path / "study.db"
    url, best = f"sqlite:///{db}", tmp_path / "best.yaml"
    r = cli("tune", spec, "--trials", "6", "--storage", url, "--study", "iris-lr", "-o", best)
    assert r.code == 0, r
    assert db.is_file() and "study iris-lr: val_loss (minimize)" in r.out
    study = optuna.load_study(study_name="iris-lr", storage=url)
    assert len(study.trials) == 6
    assert study.trials[0].params == {"train.optimizer.lr": 0.01, "layers.0.units": 32,
                                      "train.optimizer.type": "adam"}  # the spec as written
    first_best = study.best_value
    r = cli("tune", spec, "--trials", "6", "--storage", url, "--study", "iris-lr", "--seed", "1",
            "-o", best)
    assert r.code == 0, r
    study = optuna.load_study(study_name="iris-lr", storage=url)
    assert len(study.trials) == 12 and study.best_value <= first_best  # one study, both runs
    distinct = {json.dumps(t.params, sort_keys=True) for t in study.trials}
    assert len(distinct) >= 10, distinct  # the second run searched on, not the same points again
    for t in study.trials:  # one report per epoch (pruned trials stop early)
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == list(range(1, 9))
    tuned = load_spec(best)
    assert "search" not in tuned.data
    for key, value in study.best_params.items():
        from dlc.commands.tune_search import lookup
        assert lookup(tuned.data, key) == value
    default, found = _val_loss(cli, spec, tmp_path / "d"), _val_loss(cli, best, tmp_path / "b")
    print(f"\niris val_loss: spec as written {default:.4f}, tuned {found:.4f} "
          f"({study.best_params})")
    # the written spec and the spec as written retrain to the values their trials reported
    assert found == pytest.approx(study.best_value, rel=1e-6)
    assert default == pytest.approx(study.trials[0].value, rel=1e-6)


def test_metric_of_a_multi_output_spec_names_an_output():
    from dlc.model.spec import load_spec
    from dlc.commands.tune_search import choose_metric

    spec = load_spec(SPECS / "penguins_multitask.yaml")
    assert choose_metric(spec, None) == ("val_loss", True)
    assert choose_metric(spec, "val_species.accuracy") == ("val_species.accuracy", False)
    assert choose_metric(spec, "val_bill_depth.mae") == ("val_bill_depth.mae", True)
    assert choose_metric(spec, "train_sex.loss") == ("train_sex.loss", True)
    with pytest.raises(DlcError, match="val_accuracy: expected val_<m> or train_<m> with m one "
                                       "of loss, species.loss, species.accuracy"):
        choose_metric(spec, "val_accuracy")
