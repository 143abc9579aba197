"""`dlc tune --backend ray`: the search space as Ray Tune's domains (the same distributions
Optuna samples), and an iris search run by Ray Tune end to end (a local Ray, started and shut
down by the command; about 15 s, most of it Ray's startup)."""

from __future__ import annotations

import ast
import re

import pytest

pytest.importorskip("ray.tune")
from conftest import SPECS  # noqa: E402
from test_tune import SEARCH  # noqa: E402

from dlc.model.spec import load_spec  # noqa: E402
from dlc.commands.tune import suggest  # noqa: E402
from dlc.commands.tune_search import lookup  # noqa: E402
from dlc.commands.tune_ray import ray_space  # noqa: E402

SPACE = {"a": ("loguniform", [1.0e-3, 1.0e-1]), "b": ("uniform", [-1, 2]),
         "c": ("int", [1, 3]), "d": ("choice", ["adam", "sgd"])}


def test_optuna_and_ray_get_the_same_distributions():
    optuna = pytest.importorskip("optuna")
    from ray import tune
    from ray.tune.search import sample

    trial = optuna.create_study().ask()
    for key, (kind, args) in SPACE.items():
        suggest(trial, key, kind, args)
    ours, theirs = trial.distributions, ray_space(tune, SPACE)
    for key, log in (("a", True), ("b", False)):
        assert (ours[key].low, ours[key].high, ours[key].log) == \
            (theirs[key].lower, theirs[key].upper, log)
        assert isinstance(theirs[key].get_sampler(), sample.LogUniform) == log
    # int bounds are inclusive in both (Ray's randint excludes its upper, so the table adds 1)
    assert {theirs["c"].sample() for _ in range(200)} == set(range(ours["c"].low,
                                                                    ours["c"].high + 1))
    assert theirs["d"].categories == list(ours["d"].choices) == ["adam", "sgd"]


def test_tune_iris_with_ray_writes_the_table_and_a_best_spec(cli, tmp_path, monkeypatch):
    import ray

    spec, best = tmp_path / "iris.yaml", tmp_path / "best.yaml"
    spec.write_text((SPECS / "iris.yaml").read_text().replace("epochs: 60", "epochs: 8") + SEARCH)
    monkeypatch.chdir(tmp_path)  # Ray's files: runs/iris/tune-<time>/
    r = cli("tune", spec, "--trials", "3", "--backend", "ray", "-o", best)
    assert r.code == 0, r
    assert not ray.is_initialized()  # the command shut down the Ray it started
    assert "study iris: val_loss (minimize)" in r.out and [*tmp_path.glob("runs/iris/tune-*")]
    assert sorted(re.findall(r"^trial (\d+): ", r.out, re.M)) == ["0", "1", "2"], r.out
    done = [float(v) for v in re.findall(r"^trial \d+: val_loss (\S+)", r.out, re.M)]
    found = re.search(r"^best: trial (\d+)  val_loss (\S+)  (\{.*\})$", r.out, re.M)
    assert done and float(found[2]) == pytest.approx(min(done), rel=1e-5), r.out
    tuned = load_spec(best)
    assert "search" not in tuned.data
    assert f"best trial {found[1]}: val_loss {found[2]}" in best.read_text().splitlines()[0]
    params = ast.literal_eval(found[3])
    assert {key: lookup(tuned.data, key) for key in params} == params
