"""The indexing and slicing rules of the VJP table (indexing.py: Gather; shape.py: Slice, Concat,
Split), checked against central finite differences in float64 with the harness of test_vjp_rules,
plus the patterns sequence layers build from them (unrolled time steps, stacked outputs).

Every op here has a float64 kernel in onnxruntime CPU, so each case runs there directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_vjp_rules import TOL64, C, Case, Evaluator, build_model, err, fd_grad, make_feeds

from dlc.autodiff.driver import gradients
from dlc.autodiff.rules import VJP
from dlc.graph import Builder

NEW_OPS = ("Gather", "Slice", "Concat", "Split")


def _i64(*v):
    return np.array(v, np.int64)


def gather(shape, indices, axis=0, tag=""):
    idx = np.asarray(indices, np.int64)
    return C("Gather", lambda b, x: b.Gather(x, b.const(idx), axis=axis), shape,
             tag=tag or f"axis{axis}-idx{list(idx.shape)}")


def slice_(shape, starts, ends, axes=None, steps=None, tag=""):
    def build(b, x):
        extra = [b.const(_i64(*axes)) if axes is not None else None] if axes or steps else []
        if steps is not None:
            extra.append(b.const(_i64(*steps)))
        return b.Slice(x, b.const(_i64(*starts)), b.const(_i64(*ends)), *extra)
    return C("Slice", build, shape, tag=tag)


def split(shape, axis, parts, use, sizes=None, tag=""):
    """Split into `parts` (equal, or `sizes`); the loss sees the outputs listed in `use`."""
    def build(b, x):
        outs = b.Split(x, *([b.const(_i64(*sizes))] if sizes else []), axis=axis,
                       outputs=parts, **({} if sizes else {"num_outputs": parts}))
        y = outs[use[0]]
        for i in use[1:]:
            y = b.Add(y, b.Mul(outs[i], b.const(0.5 + i)))
        return y
    return C("Split", build, shape, tag=tag)


def _runtime_slice(b, x):
    """Bounds computed at run time (from Shape): the scatter path of the Slice rule (the Reshape
    gives the harness a static output shape)."""
    end = b.Sub(b.Slice(b.Shape(x), b.const(_i64(1)), b.const(_i64(2))), b.const(_i64(1)))
    return b.Reshape(b.Slice(x, b.const(_i64(1)), end, b.const(_i64(1))), b.const(_i64(3, 3)))


def _unrolled(b, x, w):
    """A tiny RNN over x [N, T=3, F] with recurrent weights w [F, F]: split time, step, stack."""
    steps = b.Split(x, axis=1, num_outputs=3, outputs=3)
    h, outs = None, []
    for s in steps:
        xt = b.Squeeze(s, b.const(_i64(1)))
        h = b.Tanh(xt if h is None else b.Add(xt, b.MatMul(h, w)))
        outs.append(b.Unsqueeze(h, b.const(_i64(1))))
    return b.Concat(*outs, axis=1)


CASES = [
    # ---- Gather (embedding lookups and time-step picks) ----
    gather([5, 3], [[0, 2, 2], [4, 0, 2]], tag="embedding-repeated-ids"),
    gather([5, 3], [1, 1, 1, 1], tag="same-row-four-times"),
    gather([300, 2], (np.random.default_rng(1).zipf(1.3, (4, 16)) % 300).tolist(),
           tag="vocab300-zipf-ids"),
    gather([4, 3], [-1, 0, -1], tag="negative-ids"),
    gather([6], [2, 2, 5], tag="vector"),
    gather([2, 4, 3], 1, axis=1, tag="scalar-index-axis1"),
    gather([2, 4, 3], -1, axis=1, tag="last-step"),
    gather([2, 4, 3], [[3, 0], [3, 3]], axis=1, tag="axis1-2d-repeated"),
    gather([2, 3, 4], [0, 3, 3], axis=-1, tag="axis-minus1"),
    gather([3, 4], 2, axis=0, tag="scalar-row"),
    # ---- Slice (constant unit steps: Pad; otherwise: scatter) ----
    slice_([3, 5], [1], [4], [1], tag="pad-axis1"),
    slice_([3, 5], [0, 2], [2, 5], tag="pad-no-axes"),
    slice_([2, 4, 3], [-3, 1], [-1, 99], [1, 2], tag="pad-negative-and-clamped"),
    slice_([2, 4, 3], [-1], [np.iinfo(np.int64).max], [1], tag="pad-last-step"),
    slice_([4, 6], [0, 1], [4, 6], [0, 1], [2, 2], tag="steps2"),
    slice_([4, 5], [3], [-99], [0], [-1], tag="reverse"),
    slice_([3, 7], [5], [0], [-1], [-2], tag="negative-step2"),
    C("Slice", _runtime_slice, [3, 5], tag="runtime-bounds"),
    # ---- Concat ----
    C("Concat", lambda b, x, y: b.Concat(x, y, axis=0), [2, 3], [4, 3], tag="axis0"),
    C("Concat", lambda b, x, y, z: b.Concat(x, y, z, axis=-1), [2, 1], [2, 3], [2, 2],
      tag="three-axis-1"),
    C("Concat", lambda b, x: b.Concat(x, b.Tanh(x), x, axis=1), [2, 2, 3], tag="fan-out"),
    C("Concat", lambda b, x: b.Concat(x, b.const(np.ones([2, 3])), axis=0), [1, 3],
      tag="with-constant"),
    C("Concat", lambda b, x: b.Concat(x, axis=1), [2, 3], tag="single"),
    C("Concat", lambda b, x: b.Reshape(b.Concat(b.Slice(x, b.const(_i64(0)), b.Reshape(
        b.Size(x), b.const(_i64(1)))), x, axis=0), b.const(_i64(4, 3))), [2, 3],
      tag="runtime-sizes"),
    # ---- Split ----
    split([4, 6], 1, 3, [0, 1, 2], tag="equal-all-used"),
    split([4, 6], 1, 3, [0, 2], tag="middle-unused"),
    split([5, 2], 0, 2, [1], sizes=[2, 3], tag="sizes-first-unused"),
    split([2, 3, 4], -1, 2, [0, 1], sizes=[1, 3], tag="sizes-axis-1"),
    # ---- patterns of the sequence layers ----
    C("Split", _unrolled, [2, 3, 4], [4, 4], tag="unrolled-rnn"),
]
CASES_BY_OP: dict[str, list[Case]] = {}
for _c in CASES:
    CASES_BY_OP.setdefault(_c.op, []).append(_c)


def test_every_new_rule_has_a_case():
    assert set(NEW_OPS) <= set(VJP)
    assert set(CASES_BY_OP) == set(NEW_OPS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vjp_matches_finite_differences(case: Case):
    feeds = make_feeds(case)
    ev = Evaluator(build_model(case, "float64"), allow_reference=False)
    out = ev(feeds)
    for name in feeds:
        analytic, fd = out[f"d{name}"], fd_grad(ev, feeds, name)
        assert analytic.shape == fd.shape
        assert np.abs(fd).max() > 1e-3, f"d{name}: degenerate case, zero gradient"
        assert err(analytic, fd) < TOL64, f"d{name}: analytic\n{analytic}\nfd\n{fd}"


def _grad(build, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    b = Builder(float_type="float64")
    xi = b.input("x", "float64", list(x.shape))
    n_before = len(b.nodes)
    loss = b.ReduceSum(build(b, xi), keepdims=0)
    n_forward = len(b.nodes)
    b.output(gradients(b, loss, [xi])[xi], "dx", "float64", list(x.shape))
    ops = [nd.op_type for nd in b.nodes[n_forward:]]
    assert n_before == 0
    return Evaluator(b.model("grad"), allow_reference=False)({"x": x})["dx"], ops


def test_gather_repeated_ids_accumulate_exactly():
    """An embedding row looked up k times gets k times the cotangent; rows never looked up get 0."""
    ids = _i64(3, 0, 3, 3, 1)
    dx, ops = _grad(lambda b, x: b.Gather(x, b.const(ids)), np.zeros((5, 2)))
    np.testing.assert_array_equal(dx[:, 0], [1, 1, 0, 3, 0])
    assert "ScatterND" in ops


def test_constant_slice_uses_pad_and_strided_slice_scatters():
    _, ops = _grad(lambda b, x: b.Slice(x, b.const(_i64(1)), b.const(_i64(3)),
                                        b.const(_i64(1))), np.zeros((2, 4)))
    assert "Pad" in ops and "ScatterElements" not in ops
    dx, ops = _grad(lambda b, x: b.Slice(x, b.const(_i64(0)), b.const(_i64(4)), b.const(_i64(1)),
                                         b.const(_i64(2))), np.zeros((2, 4)))
    assert "ScatterElements" in ops
    np.testing.assert_array_equal(dx, [[1, 0, 1, 0], [1, 0, 1, 0]])


def test_split_with_an_unused_output_gives_it_zeros():
    def build(b, x):
        return b.Split(x, axis=0, num_outputs=2, outputs=2)[1]
    dx, _ = _grad(build, np.ones((4, 3)))
    np.testing.assert_array_equal(dx, np.r_[np.zeros((2, 3)), np.ones((2, 3))])


def _zipf_ids(vocab: int, shape) -> np.ndarray:
    return (np.random.default_rng(0).zipf(1.3, shape) % vocab).astype(np.int64)


def test_large_vocab_embedding_gradient_is_exact_with_repeated_ids():
    """A 30,000-row table (the suite's text classifier) looked up by Zipf-distributed ids, many
    repeated: the gradient equals numpy's unbuffered scatter-add of the cotangents exactly."""
    ids = _zipf_ids(30000, (16, 64))
    r = np.random.default_rng(2).standard_normal((16, 64, 8))
    assert len(np.unique(ids)) < ids.size / 2  # repeats: the case that needs accumulation
    dx, _ = _grad(lambda b, x: b.Mul(b.Gather(x, b.const(ids)), b.const(r)), np.zeros((30000, 8)))
    expected = np.zeros((30000, 8))
    np.add.at(expected, ids, r)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)


def test_large_vocab_embedding_gradient_matches_torch():
    torch = pytest.importorskip("torch")
    ids = _zipf_ids(30000, (16, 64))
    r = np.random.default_rng(3).standard_normal((16, 64, 8))
    table = torch.zeros((30000, 8), dtype=torch.float64, requires_grad=True)
    picked = torch.nn.functional.embedding(torch.from_numpy(ids), table)
    (picked * torch.from_numpy(r)).sum().backward()
    dx, _ = _grad(lambda b, x: b.Mul(b.Gather(x, b.const(ids)), b.const(r)), np.zeros((30000, 8)))
    np.testing.assert_allclose(dx, table.grad.numpy(), rtol=1e-12, atol=1e-12)


def _embedding_grad_session(device: str, threads: int, ids: np.ndarray, dim: int, vocab: int):
    """The float32 gradient of sum(table[ids] * r) w.r.t. the table, in the form emitted for
    `device`, as an onnxruntime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    b = Builder()
    table, r = b.input("table", "float32", [vocab, dim]), b.input("r", "float32", [*ids.shape, dim])
    loss = b.ReduceSum(b.Mul(b.Gather(table, b.const(ids)), r), keepdims=0)
    b.output(gradients(b, loss, [table], device=device)[table], "dx", "float32", [vocab, dim])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(b.model("g").SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def test_embedding_gradient_is_exact_on_many_threads():
    """onnxruntime 1.31's CPU ScatterND with reduction add loses updates of repeated indices at
    more than one thread; the CPU form sorts the ids and writes each distinct row once. The
    text classifier's batch (128 x 64 Zipf ids into 30,000 x 128) at 4 threads, several runs:
    float32 rounding only. The CUDA form (atomic adds on a GPU) keeps ScatterND's add."""
    ids = _zipf_ids(30000, (128, 64))
    r = np.random.default_rng(4).standard_normal((128, 64, 128)).astype(np.float32)
    expected = np.zeros((30000, 128))
    np.add.at(expected, ids, r.astype(np.float64))
    sess = _embedding_grad_session("cpu", 4, ids, 128, 30000)
    table = np.zeros((30000, 128), np.float32)
    for _ in range(10):  # the old form failed 3 of 5 such runs on a 2-core machine
        dx = sess.run(None, {"table": table, "r": r})[0]
        assert np.abs(dx - expected).max() < 1e-4 * np.abs(expected).max()


def test_embedding_gradient_forms_by_device():
    """CPU: the sorted form's one write per distinct id; CUDA: ScatterND's atomic add."""
    def scatters(device):
        b = Builder()
        table = b.input("table", "float32", [50, 4])
        loss = b.ReduceSum(b.Gather(table, b.const(_i64(3, 3, 1))), keepdims=0)
        gradients(b, loss, [table], device=device)
        return [next((a.s for a in n.attribute if a.name == "reduction"), b"none")
                for n in b.nodes if n.op_type == "ScatterND"]
    assert scatters("cpu") == [b"none"] and scatters("cuda") == [b"add"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_gather_gradient_with_int32_ids(device):
    """Exported models may index with int32 (Gather allows it; ScatterND, TopK and the wrap of
    negative ids take int64): repeated and negative ids accumulate as with int64, both forms."""
    import onnx
    import onnxruntime as ort

    b = Builder()
    table, ids = b.input("table", "float32", [10, 4]), b.input("ids", "int64", [6])
    loss = b.ReduceSum(b.Gather(table, b.Cast(ids, to=onnx.TensorProto.INT32)), keepdims=0)
    b.output(gradients(b, loss, [table], device=device)[table], "dx", "float32", [10, 4])
    sess = ort.InferenceSession(b.model("g").SerializeToString(),
                                providers=["CPUExecutionProvider"])
    dx = sess.run(None, {"table": np.zeros((10, 4), np.float32),
                         "ids": _i64(1, 1, 3, -1, 0, 1)})[0]
    np.testing.assert_array_equal(dx[:, 0], [1, 3, 0, 1, 0, 0, 0, 0, 0, 1])
