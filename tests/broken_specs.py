"""A table of broken specs and the one diagnostic each must give.

Shared by the loader tests (tests/test_spec_errors.py) and the CLI tests: import with
`from broken_specs import BROKEN_SPECS` (tests/ has no __init__.py, so pytest puts it on sys.path).

BROKEN_SPECS: (id, yaml_text, expected_line, expected_substring), one diagnostic each.
EXPECTED_COLUMNS: id -> expected column, where the column is meaningful.
BROKEN_OVERRIDES: (id, yaml_text, overrides, expected_line, expected_substring).
"""

from __future__ import annotations

# The digits MLP. Line numbers below refer to this text.
VALID_SPEC = """\
dlc: 1
name: digits-mlp
input:
  shape: [64]
layers:
  - type: dense
    units: 256
    activation: relu
  - type: dense
    units: 256
    activation: relu
  - type: dense
    units: 10
task:
  kind: classification
data:
  source: builtin:digits
  split: {val: 0.1, test: 0.2}
train:
  epochs: 20
  batch_size: 64
  optimizer: {type: adam, lr: 0.001}
"""


def mutate(old: str, new: str, text: str = VALID_SPEC) -> str:
    """VALID_SPEC with the one occurrence of `old` replaced by `new`."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def with_layer(lines: str) -> str:
    """VALID_SPEC with an extra layer (`lines`, indented as list items) appended at line 14."""
    return mutate("task:\n", lines + "task:\n")


BROKEN_SPECS = [
    # --- YAML level ---
    ("empty-file", "", 1, "the file is empty; a spec starts with `dlc: 1`"),
    ("only-comments", "# nothing here\n", 1, "the file is empty"),
    ("top-level-list", "- dlc: 1\n- name: x\n", 1, "a spec must be a mapping of keys"),
    ("top-level-scalar", "hello\n", 1, "got the value 'hello'"),
    ("bad-yaml-colon", mutate("  kind: classification", "  kind: classification: x"), 15,
     "invalid YAML: mapping values are not allowed here"),
    ("bad-yaml-unclosed-flow", mutate("shape: [64]", "shape: [64"), 5, "invalid YAML"),
    ("tab-indentation", mutate("    units: 10", "\tunits: 10"), 13,
     "tab characters are not allowed"),
    ("duplicate-key", mutate("    units: 10\n", "    units: 10\n    units: 12\n"), 14,
     "duplicate key 'units' (first at line 13)"),
    ("python-tag", "dlc: !!python/object/apply:os.system ['echo hi']\n", 1, "tags are not allowed"),
    ("str-tag", mutate("name: digits-mlp", "name: !!str digits-mlp"), 2, "tags are not allowed"),
    ("anchor", mutate("  shape: [64]", "  shape: &s [64]"), 4,
     "anchors and aliases are not allowed"),
    ("alias", mutate("    units: 10", "    units: *u"), 13, "anchors and aliases are not allowed"),
    ("two-documents", VALID_SPEC + "---\ndlc: 1\n", 23, "one YAML document"),
    # --- top level ---
    ("missing-dlc", mutate("dlc: 1\n", ""), 1, "missing required key 'dlc'"),
    ("dlc-2", mutate("dlc: 1", "dlc: 2"), 1, "expected 1 (the spec language version), got 2"),
    ("dlc-string", mutate("dlc: 1", "dlc: one"), 1, 'expected an integer, got "one"'),
    ("missing-layers", VALID_SPEC.split("layers:")[0] + "task:\n  kind: binary\n", 1,
     "missing required key 'layers'"),
    ("empty-layers",
     VALID_SPEC.split("layers:")[0] + "layers: []\ntask:" + VALID_SPEC.split("task:")[1],
     5, "a spec needs at least one layer, got []"),
    ("unknown-top-key", mutate("task:\n", "tsk:\n  kind: binary\ntask:\n"), 14,
     "unknown key 'tsk'; did you mean 'task'?"),
    ("bad-name", mutate("name: digits-mlp", "name: digits mlp!"), 2, "expected a name made of"),
    # --- input ---
    ("input-shape-not-list", mutate("shape: [64]", "shape: 64"), 4, "expected a list, got 64"),
    ("input-shape-zero", mutate("shape: [64]", "shape: [0]"), 4, "expected an integer ≥ 1, got 0"),
    ("input-missing-shape", mutate("  shape: [64]", "  dtype: float32"), 4,
     "missing required key 'shape'"),
    ("input-dtype", mutate("  shape: [64]", "  shape: [64]\n  dtype: float16"), 5,
     "expected one of float32, int64; got 'float16'"),
    # --- layers ---
    ("misspelt-layer-type",
     mutate("  - type: dense\n    units: 10", "  - type: dnese\n    units: 10"),
     12, "unknown layer type 'dnese'; did you mean 'dense'?"),
    ("unknown-layer-type", with_layer("  - type: transformer\n"), 14,
     "unknown layer type 'transformer'"),
    ("layer-missing-type", with_layer("  - units: 3\n"), 14, "missing required key 'type'"),
    ("layer-not-mapping", with_layer("  - dense\n"), 14, 'expected a mapping of keys, got "dense"'),
    ("unknown-key-did-you-mean", mutate("    units: 10", "    unit: 10"), 13,
     "unknown key 'unit'; did you mean 'units'?"),
    ("units-zero", mutate("    units: 10", "    units: 0"), 13, "expected an integer ≥ 1, got 0"),
    ("units-many", mutate("    units: 10", '    units: "many"'), 13,
     'expected an integer, got "many"'),
    ("units-float", mutate("    units: 10", "    units: 10.0"), 13,
     "expected an integer, got 10.0"),
    ("units-bool", mutate("    units: 10", "    units: true"), 13, "expected an integer, got true"),
    ("missing-units", mutate("    units: 10\n", ""), 12, "missing required key 'units'"),
    ("misspelt-activation", mutate("units: 10", "units: 10\n    activation: rellu"), 14,
     "got 'rellu'; did you mean 'relu'?"),
    ("use-bias-string", mutate("units: 10", "units: 10\n    use_bias: maybe"), 14,
     'expected true or false, got "maybe"'),
    ("bad-initializer", mutate("units: 10", "units: 10\n    initializer: xavier"), 14,
     "expected one of auto, glorot_uniform"),
    ("dropout-rate-high", with_layer("  - {type: dropout, rate: 1.5}\n"), 14,
     "expected a number ≥ 0 and < 1, got 1.5"),
    ("dropout-rate-one", with_layer("  - {type: dropout, rate: 1}\n"), 14, "got 1"),
    ("dropout-missing-rate", with_layer("  - {type: dropout}\n"), 14,
     "missing required key 'rate'"),
    ("units-on-relu", with_layer("  - {type: relu, units: 3}\n"), 14, "unknown key 'units'"),
    ("leaky-alpha-string", with_layer("  - {type: leaky_relu, alpha: big}\n"), 14,
     'expected a number, got "big"'),
    ("gelu-approximate", with_layer("  - {type: gelu, approximate: fast}\n"), 14,
     "expected one of none, tanh; got 'fast'"),
    ("reshape-zero", with_layer("  - {type: reshape, shape: [0, 8]}\n"), 14,
     "expected an integer ≥ 1 or -1, got 0"),
    ("reshape-two-minus-one", with_layer("  - {type: reshape, shape: [-1, -1]}\n"), 14,
     "at most one -1"),
    ("bad-layer-name", with_layer("  - {type: relu, name: 1st}\n"), 14, "expected a name made of"),
    ("duplicate-layer-name", mutate("    units: 10", "    units: 10\n    name: dense_0"), 14,
     "duplicate layer name 'dense_0': already used by layers[0]"),
    # --- task ---
    ("missing-task-kind", mutate("  kind: classification", "  loss: mse"), 15,
     "missing required key 'kind'"),
    ("bad-task-kind", mutate("kind: classification", "kind: clasification"), 15,
     "unknown task kind 'clasification'; expected one of classification, binary, regression; "
     "did you mean 'classification'?"),
    ("bad-metric", mutate("kind: classification", "kind: classification\n  metrics: [acc]"), 16,
     "got 'acc'; did you mean 'accuracy'?"),
    ("label-smoothing-negative", mutate("kind: classification",
                                        "kind: classification\n  label_smoothing: -0.1"), 16,
     "expected a number ≥ 0 and < 1, got -0.1"),
    # --- data ---
    ("bad-source", mutate("source: builtin:digits", "source: builtin:digitz"), 17,
     "did you mean 'builtin:digits'?"),
    ("source-no-scheme", mutate("source: builtin:digits", "source: data.csv"), 17,
     "expected one of builtin:digits"),
    ("data-missing-source", mutate("  source: builtin:digits\n", ""), 17,
     "missing required key 'source'"),
    ("split-val-high", mutate("{val: 0.1, test: 0.2}", "{val: 2, test: 0.2}"), 18, "got 2"),
    ("bad-target", mutate("  source: builtin:digits", "  source: csv:x.csv\n  target: -1"), 18,
     "expected an integer ≥ 0, got -1"),
    ("bad-normalize", mutate("  split:", "  normalize: zscore\n  split:"), 18,
     "expected one of none, standard, minmax; got 'zscore'"),
    # --- train ---
    ("epochs-zero", mutate("epochs: 20", "epochs: 0"), 20, "expected an integer ≥ 1, got 0"),
    ("batch-size-string", mutate("batch_size: 64", "batch_size: big"), 21,
     'expected an integer, got "big"'),
    ("negative-lr", mutate("lr: 0.001", "lr: -0.1"), 22, "expected a number > 0, got -0.1"),
    ("unknown-optimizer", mutate("type: adam", "type: adamm"), 22,
     "unknown optimizer 'adamm'; expected one of sgd, momentum, nesterov, adam, adamw, rmsprop; "
     "did you mean 'adam'?"),
    ("optimizer-unknown-key", mutate("lr: 0.001", "learning_rate: 0.001"), 22,
     "unknown key 'learning_rate'"),
    ("bad-device", mutate("batch_size: 64", "batch_size: 64\n  device: gpu"), 22,
     'expected auto, cpu, cuda or cuda:N; got "gpu"'),
    ("bad-device-index", mutate("batch_size: 64", "batch_size: 64\n  device: cuda:x"), 22,
     "expected auto, cpu, cuda or cuda:N"),
    ("bad-schedule", mutate("batch_size: 64", "batch_size: 64\n  schedule: {type: cosin}"), 22,
     "unknown schedule 'cosin'"),
    ("bad-monitor", mutate("batch_size: 64", "batch_size: 64\n  early_stopping: {monitor: loss}"),
     22, "expected val_loss or val_<metric>"),
    ("clip-norm-zero", mutate("batch_size: 64", "batch_size: 64\n  clip_norm: 0"), 22,
     "expected a number > 0, got 0"),
    ("train-not-mapping", VALID_SPEC.split("train:")[0] + "train: 20\n", 19,
     "expected a mapping of keys, got 20"),
    ("name-trailing-newline", mutate("name: digits-mlp", 'name: "digits-mlp\\n"'), 2,
     "expected a name made of letters"),
    ("layer-name-trailing-newline", mutate("    units: 10", '    units: 10\n    name: "out\\n"'),
     14, "expected a name made of letters"),
    ("lr-nan", mutate("lr: 0.001", "lr: .nan"), 22, "train.optimizer.lr: not a number"),
    ("lr-beyond-float32", mutate("lr: 0.001", "lr: 1.0e39"), 22,
     "1e+39 is outside float32's range"),
    ("smoothing-infinite", mutate("kind: classification", "kind: classification\n  "
                                  "huber_delta: .inf"), 16, "task.huber_delta: an infinity"),
    ("task-and-outputs", mutate("task:", "outputs: {out: {kind: regression}}\ntask:"), 1,
     "give exactly one of `task:`"),
]

EXPECTED_COLUMNS = {
    "bad-yaml-colon": 23,
    "tab-indentation": 1,
    "duplicate-key": 5,
    "python-tag": 6,
    "alias": 12,
    "missing-units": 5,
    "unknown-key-did-you-mean": 5,
    "units-zero": 12,
    "misspelt-layer-type": 11,
    "layer-missing-type": 5,
    "dlc-2": 6,
    "negative-lr": 31,
    "unknown-optimizer": 21,
    "bad-source": 11,
    "unknown-top-key": 1,
    "input-shape-zero": 11,
}

BROKEN_OVERRIDES = [
    ("set-no-equals", VALID_SPEC, ["train.epochs"], 0,
     "--set train.epochs: expected KEY.PATH=VALUE"),
    ("set-layer-out-of-range", VALID_SPEC, ["layers.9.units=128"], 6,
     "--set layers.9.units=128: no layer 9 (the spec has 3)"),
    ("set-into-scalar", VALID_SPEC, ["train.epochs.max=3"], 20,
     "--set train.epochs.max=3: train.epochs is 20, not a mapping"),
    ("set-list-by-name", VALID_SPEC, ["layers.first.units=3"], 6, "layers is a list; use a number"),
    ("set-bad-value", VALID_SPEC, ["layers.2.units=0"], 13,
     "expected an integer ≥ 1, got 0 (from --set layers.2.units=0)"),
    ("set-unknown-key", VALID_SPEC, ["train.epoch=3"], 20,
     "unknown key 'epoch'; did you mean 'epochs'? (from --set train.epoch=3)"),
    ("set-bad-yaml", VALID_SPEC, ["train.epochs=[1"], 0,
     "--set train.epochs=[1: bad value: invalid YAML"),
]
