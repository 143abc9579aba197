"""One train step gives the same result at 1 and at 4 intra-op threads (issue #14 follow-up).

onnxruntime 1.31's CPU ScatterND with reduction add loses updates of repeated indices when it
splits its updates over threads (microsoft/onnxruntime#18048): dlc's embedding gradient was up
to 29 % off, silently and run to run different, on every multi-core CPU, and no gradient test
saw it: each ran at whatever thread count, on inputs too small for onnxruntime to split. Here
each model's real train step (Trainer: dlc's session options and IOBinding stepper; the same
parameters, batch and dropout noise) runs once at 1 thread and RUNS times at 4, and each
parameter's gradient, each running statistic, the loss, the logits and the gradient norm must
agree within 1e-5 of the tensor's largest |value|. Between thread counts only the order of
float32 sums may legitimately change (~6e-8 per addition, growing as the square root of the
terms: ~1e-6 for the thousands summed here); a lost update drops whole terms (the old embedding
form here: 0.9 % to 104 % of the largest entry). Measured, onnxruntime 1.31.1 on a 2-core CPU:
all five models bitwise equal at 1 and 4 threads, 8 runs.

ScatterND split its updates over threads only from about a megabyte of them (4,096 ids x 64
wide: 10 of 10 runs off at 4 threads; 2,048 x 64: 0 of 10), so the embedding models feed 4,096
ids a batch, Zipf-distributed (frequent ids repeat, as in text), into 64-wide tables. With the
old form the three of them failed in each of 5 runs of this file; per step, the race showed in
32 of 32 runs (Transformer), 30 of 32 (text column) and 3 of 32 to 15 of 15 (GRU) depending on
the machine's other load: a race is a matter of chance, which RUNS and three models cover.

The per-op audit behind it: every op type of the train steps of specs/ and bench/specs/ (fused
and split), the test specs of test_cnn.py and test_sequence.py and the explain graphs that
accumulates or writes through indices, at realistic sizes, at 1, 2 and 4 threads, 5 runs each,
against numpy in float64. Only ScatterND's add lost updates. ScatterElements' add (MaxPool's
overlapping-window gradient; 1M updates into 1,000 slots), ScatterND and ScatterElements on
distinct indices, MaxUnpool, MaxPool's Indices with ties, TopK with ties, Unique, CumSum,
ReduceSum/Mean/Max/SumSquare, Gemm and MatMul over long reductions, Conv, ConvTranspose's
col2im, AveragePool, BatchNormalization, Softmax, LogSoftmax and Gather were bitwise equal
at every thread count.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import ROOT
from test_text_columns import spec_file, write_table

from dlc.data import Dataset, Split
from dlc.model.network import build_network
from dlc.model.spec import load_spec, load_spec_text
from dlc.train.run import prepare
from dlc.train.step import build_train_step
from dlc.train.trainer import Trainer

THREADS, RUNS = 4, 8
TOL = 1e-5  # of each tensor's largest |value| (see the module docstring)
LR = 1024.0  # a power of two: the gradient read back as (p - new) / LR keeps its low bits
CLASSES, VOCAB = 5, 1000
# Op types whose CPU kernel writes through indices or depends on the order of its elements, with
# the forms (their `reduction`) the audit above found exact at every thread count. A CPU train
# step with another form, or another such op, needs that audit first: ScatterND's add races.
AUDITED = {"ScatterND": {"none"},  # distinct ids: the embedding gradient's one write per row
           "ScatterElements": {"none", "add"},  # add: overlapping MaxPool windows
           "MaxUnpool": {"none"}, "CumSum": {"none"}, "TopK": {"none"}, "Unique": {"none"}}
INDEXED = {*AUDITED, "Scatter", "GatherND", "GatherElements", "Col2Im", "Resize", "NonZero",
           "TensorScatter", "MaxRoiPool", "RoiAlign", "GridSample"}


def embed(dim=64):
    return {"type": "embedding", "name": "emb", "vocab_size": VOCAB, "dim": dim,
            "padding_index": 0}


MODELS = {  # name: (input shape, dtype, batch, layers)
    "mlp": ([32], "float32", 256, [
        {"type": "dense", "units": 64, "activation": "relu"}, {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 64, "activation": "tanh"}]),
    "cnn_batchnorm_maxpool": ([3, 32, 32], "float32", 64, [
        {"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same", "use_bias": False},
        {"type": "batchnorm"}, {"type": "relu"},  # ties at 0 in the pool windows
        {"type": "maxpool2d", "pool": 3, "stride": 2, "padding": "same"},  # overlaps: scatter-add
        {"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same", "activation": "relu"},
        {"type": "maxpool2d", "pool": 2}, {"type": "flatten"}]),  # MaxUnpool
    "embedding_gru": ([16], "int64", 256, [
        embed(), {"type": "gru", "units": 16}]),
    "transformer_encoder": ([32], "int64", 128, [
        embed(), {"type": "positional_encoding"},
        {"type": "transformer_encoder", "heads": 2, "ff_dim": 64, "dropout": 0.1},
        {"type": "sequence_pool", "mode": "mean"}]),
}


def synthetic(name: str) -> tuple:
    """(network, dataset, batch size) of a MODELS entry with a seeded batch: Zipf ids over
    1..VOCAB-1 with every third row padded from the middle, or standard normal floats."""
    shape, dtype, n, layers = MODELS[name]
    spec = {"dlc": 1, "name": name.replace("_", "-"), "input": {"shape": shape, "dtype": dtype},
            "layers": [*layers, {"type": "dense", "units": CLASSES}],
            "task": {"kind": "classification", "loss": "cross_entropy"},
            "train": {"batch_size": n, "optimizer": {"type": "sgd", "lr": LR}}}
    rng = np.random.default_rng(0)
    if dtype == "int64":
        x = rng.zipf(1.3, (n, *shape)) % (VOCAB - 1) + 1
        x[::3, shape[0] // 2:] = 0
    else:
        x = rng.standard_normal((n, *shape))
    y = rng.integers(0, CLASSES, n)
    return (build_network(load_spec_text(json.dumps(spec))),
            Dataset(Split(x.astype(dtype), y), None, None, None, None, None), n)


def text_columns(tmp_path) -> tuple:
    """test_text_columns' table model (a numeric and a categorical column, a free-text column
    through its own embedding), read from its CSV as `dlc train` does, 64 wide, 512 rows of 8
    token ids a batch."""
    write_table(tmp_path / "t.csv", n=1000)
    path, spec = spec_file(tmp_path)
    spec["inputs"]["note"]["columns"]["note"]["max_length"] = 8
    spec["layers"][0]["dim"] = 64
    spec["train"].update(batch_size=512, optimizer={"type": "sgd", "lr": LR})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    net, dataset, _ = prepare(load_spec(path), tmp_path)
    return net, dataset, 512


def model(name: str, tmp_path) -> tuple:
    return text_columns(tmp_path) if name == "text_columns" else synthetic(name)


def trainer(net, dataset, n: int, threads: int) -> tuple[Trainer, dict]:
    """A Trainer at `threads` intra-op threads and the feeds of its first `n` samples."""
    t = Trainer(net, dataset, ("cpu", 0), 0, threads)
    rows = np.arange(n)
    return t, t._feeds(dataset.train.x[rows], dataset.train.y[rows], LR)  # noise drawn once


def step_results(built: tuple, threads: int, runs: int) -> list[dict[str, np.ndarray]]:
    """Each run: one step from the initial parameters; each parameter's gradient (read back from
    the SGD update), each buffer's new value (running statistics), loss, logits, grad_norm."""
    t, feeds = trainer(*built, threads)
    start, trained = t.params, {p.name for p in t.net.params if p.trainable}
    found = []
    for _ in range(runs):
        t.params = start
        out = t.stepper.run(feeds)
        t.stepper.commit()
        after = t.params
        found.append({**{k: (start[k].astype(np.float64) - after[k]) / LR if k in trained
                         else after[k] for k in after}, **out})
    return found


@pytest.mark.parametrize("name", [*MODELS, "text_columns"])
def test_train_step_agrees_at_one_and_four_threads(name, tmp_path):
    built = model(name, tmp_path)
    (ref,) = step_results(built, 1, 1)
    assert all(np.any(v != 0) for k, v in ref.items() if k.endswith(("weight", "table"))), \
        "a parameter without gradient would make the comparison vacuous"
    for run, found in enumerate(step_results(built, THREADS, RUNS)):
        for k, want in ref.items():
            scale = max(float(np.max(np.abs(want))), 1e-30)
            err = float(np.max(np.abs(np.asarray(found[k], np.float64) - want))) / scale
            assert err <= TOL, f"{name} {k}, run {run + 1} at {THREADS} threads: {err:.3g} of max"


def indexed_forms(graph) -> set[tuple[str, str]]:
    """(op type, reduction) of every INDEXED node of a graph and its subgraphs."""
    forms = set()
    for node in graph.node:
        if node.op_type in INDEXED:
            form = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")
            forms.add((node.op_type, form))
        for sub in (g for a in node.attribute for g in (a.g, *a.graphs)):  # Scan, Loop, If
            forms |= indexed_forms(sub)
    return forms


def test_cpu_train_steps_write_through_indices_only_in_audited_forms():
    """The CPU train steps of every spec of specs/ and bench/specs/ and of the models above
    write through indices only in AUDITED forms: a rule that emits ScatterND's add on CPU
    again, or a new indexed op, fails here until the per-op audit (bench/thread_audit.py) has
    run it at several thread counts. The second line keeps the check from passing vacuously."""
    paths = [*ROOT.glob("specs/*.yaml"), *ROOT.glob("bench/specs/*.yaml")]
    nets = [build_network(load_spec(p)) for p in sorted(paths)]
    nets += [synthetic(name)[0] for name in MODELS]
    forms = set().union(*(indexed_forms(build_train_step(n).model.graph) for n in nets))
    assert {(op, f) for op, f in forms if f not in AUDITED.get(op, ())} == set()
    assert {("ScatterND", "none"), ("ScatterElements", "add"), ("MaxUnpool", "none")} <= forms


SMALL_CONV = ([8, 4, 4], "float32", 64, [  # 4x4 outputs: im2col + one GEMM on CPU, Conv on CUDA
    {"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same", "activation": "relu"},
    {"type": "maxpool2d", "pool": 2}, {"type": "flatten"}])


@pytest.mark.parametrize("name", ["cnn_batchnorm_maxpool", "embedding_gru", "small_conv"])
def test_cuda_forms_compute_the_cpu_forms_results(name, monkeypatch):
    """The train step built for CUDA (ScatterND's atomic add for the embedding, the scatter-add
    for MaxPool, the Conv node for small convs) computes what the CPU form computes: both run
    here on onnxruntime's CPU provider at 1 thread (no GPU is needed to check the graph)."""
    import onnxruntime as ort

    if name == "small_conv":
        monkeypatch.setitem(MODELS, name, SMALL_CONV)
    net, dataset, n = synthetic(name)
    t, feeds = trainer(net, dataset, n, 1)
    params = net.init_params(0)
    outs = {}
    for device in ("cpu", "cuda"):
        step = build_train_step(net, device=device)
        feed = {**feeds, "params": step.pack(params),
                **{f"state.{s}": np.zeros(step.total, np.float32) for s in step.states},
                **{p.name: params[p.name] for p in net.buffers}}
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(step.model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs[device] = dict(zip(names, sess.run(None, {k: feed[k] for k in
                                                       (i.name for i in sess.get_inputs())})))
        outs[device]["ops"] = {node.op_type for node in step.model.graph.node}
    assert outs["cpu"]["ops"] != outs["cuda"]["ops"]  # the forms differ
    for k, want in outs["cpu"].items():
        if k != "ops":
            scale = max(float(np.max(np.abs(want))), 1e-30)
            assert float(np.max(np.abs(outs["cuda"][k] - want))) / scale <= TOL, k
