"""`dlc cv` on `inputs:` models: the CSV's named columns, each fold's category table and
normalisation taken from its own training rows only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SPECS

from dlc.commands.cv import _raw_data, fold_dataset, fold_indices


def test_folds_encode_and_normalise_from_their_training_rows(tmp_path):
    """A species that occurs in one fold's held-out rows only is unknown (id 0) to that fold;
    the measurements are standardised with the training rows' means."""
    from dlc.model.spec import load_spec

    lines = (SPECS / "data" / "penguins.csv").read_text().splitlines()
    rows = [lines[0]] + [line for line in lines[1:] if ",NA" not in line][:90]
    rows[5] = rows[5].replace("Adelie", "Unicorn", 1)  # one sample of a species of its own
    data = tmp_path / "p.csv"
    data.write_text("\n".join(rows) + "\n")
    spec = load_spec(SPECS / "penguins_wide_deep.yaml", [f"data.source=csv:{data}"])
    raw = _raw_data(spec)
    table, y = raw[0], raw[1]
    species = np.array([row[0] for row in table.rows])
    mass = np.array([float(row[5]) for row in table.rows])
    held_all = []
    for train, held in fold_indices(y, len(y), 3, 0, True):
        ds = fold_dataset(raw, train, held, spec.data, True)
        known = ds.categories["categories"]["species"]
        assert known == sorted(set(species[train]))
        unicorn = np.flatnonzero(species[held] == "Unicorn")
        assert ("Unicorn" in known) == (len(unicorn) == 0)
        if len(unicorn):
            assert ds.test.x["categories"][unicorn[0], 0] == 0  # the unknown id
        assert ds.norm["numeric"]["offset"][3] == pytest.approx(mass[train].mean())
        assert len(ds.test) == len(held) and set(ds.test.x) == {"numeric", "categories"}
        held_all += held.tolist()
    assert sorted(held_all) == list(range(len(y)))


def test_cv_inputs_model_cli(cli, tmp_path):
    out = tmp_path / "cv.json"
    r = cli("cv", SPECS / "penguins_wide_deep.yaml", "--folds", "3", "--set", "train.epochs=8",
            "-o", out)
    assert r.code == 0, r
    assert "3-fold cross-validation (stratified, seed 0)" in r.out
    report = json.loads(out.read_text())
    assert sum(f["test"] for f in report["per_fold"]) == 333  # every sample held out once
    assert report["mean"]["accuracy"] > 0.7  # sex from measurements + species (chance ~0.5)
