"""Each broken spec in the table gives exactly one diagnostic, at the right line."""

from __future__ import annotations

import pytest
from broken_specs import BROKEN_OVERRIDES, BROKEN_SPECS, EXPECTED_COLUMNS, VALID_SPEC, mutate

from dlc.errors import DlcError, SpecError
from dlc.model.spec import load_spec, load_spec_text


def _only_diagnostic(text: str, overrides=()):
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "spec.yaml", overrides)
    diagnostics = info.value.diagnostics
    assert len(diagnostics) == 1, str(info.value)
    return diagnostics[0]


def test_table_is_large_and_ids_unique():
    ids = [case[0] for case in BROKEN_SPECS]
    assert len(ids) >= 35
    assert len(set(ids)) == len(ids)
    assert set(EXPECTED_COLUMNS) <= set(ids)


@pytest.mark.parametrize(("text", "line", "expected"), [case[1:] for case in BROKEN_SPECS],
                         ids=[case[0] for case in BROKEN_SPECS])
def test_broken_spec(request, text, line, expected):
    diagnostic = _only_diagnostic(text)
    rendered = diagnostic.render()
    assert expected in rendered
    assert diagnostic.file == "spec.yaml"
    assert diagnostic.line == line, rendered
    assert rendered.startswith(f"spec.yaml:{line}:")
    assert "\n" not in rendered
    column = EXPECTED_COLUMNS.get(request.node.callspec.id)
    if column is not None:
        assert diagnostic.col == column, rendered


@pytest.mark.parametrize(("text", "overrides", "line", "expected"),
                         [case[1:] for case in BROKEN_OVERRIDES],
                         ids=[case[0] for case in BROKEN_OVERRIDES])
def test_broken_override(text, overrides, line, expected):
    diagnostic = _only_diagnostic(text, overrides)
    assert expected in diagnostic.render()
    assert diagnostic.line == line, diagnostic.render()


def test_valid_spec_loads():
    assert load_spec_text(VALID_SPEC).data["name"] == "digits-mlp"


def test_all_errors_at_once():
    text = mutate("units: 10", "unit: 10")
    text = mutate("epochs: 20", "epochs: 0", text)
    text = mutate("source: builtin:digits", "source: builtin:digitz", text)
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "spec.yaml")
    lines = str(info.value).splitlines()
    assert [d.line for d in info.value.diagnostics] == [13, 17, 20]
    assert lines == [
        "spec.yaml:13:5: layers[2].unit: unknown key 'unit'; did you mean 'units'?",
        "spec.yaml:17:11: data.source: expected one of builtin:digits, builtin:iris, builtin:wine, "
        "builtin:breast_cancer, builtin:diabetes, csv:PATH, parquet:PATH, feather:PATH, npz:PATH, folder:PATH; got \"builtin:digitz\"; "
        "did you mean 'builtin:digits'?",
        "spec.yaml:20:11: train.epochs: expected an integer ≥ 1, got 0",
    ]


def test_yaml_problems_reported_together():
    text = mutate("  shape: [64]", "  shape: &s [64]")
    text = mutate("    units: 10\n", "    units: 10\n    units: 11\n", text)
    with pytest.raises(SpecError) as info:
        load_spec_text(text)
    assert [d.line for d in info.value.diagnostics] == [4, 14]


def test_misspelt_required_key_is_one_line():
    diagnostic = _only_diagnostic(mutate("    units: 10", "    unit: 10"))
    assert "missing" not in diagnostic.message


def test_long_values_are_truncated():
    diagnostic = _only_diagnostic(mutate("    units: 10", "    units: " + "x" * 200))
    assert len(diagnostic.message) < 80
    assert "..." in diagnostic.message


def test_python_tag_never_runs(tmp_path):
    marker = tmp_path / "ran"
    text = f"dlc: !!python/object/apply:os.system ['touch {marker}']\n"
    _only_diagnostic(text)
    assert not marker.exists()


def test_alias_bomb_is_rejected_fast():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    with pytest.raises(SpecError) as info:
        load_spec_text(bomb)
    assert all("anchors and aliases" in d.message for d in info.value.diagnostics)


def test_missing_file():
    with pytest.raises(DlcError, match="spec file not found: nope.yaml") as info:
        load_spec("nope.yaml")
    assert not isinstance(info.value, SpecError)


def test_directory_is_not_a_spec(tmp_path):
    with pytest.raises(DlcError, match="directory"):
        load_spec(tmp_path)


def test_file_name_as_given(tmp_path, monkeypatch):
    (tmp_path / "m.yaml").write_text(mutate("dlc: 1", "dlc: 2"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec("m.yaml")
    assert str(info.value).startswith("m.yaml:1:6: dlc: expected 1")
