"""The cross-entropy's closed-form gradient, (softmax - target) / count: the train step with it
gives what the chain rule through the loss's nodes gave (label smoothing, per-token logits, a
weighted multi-output loss), with fewer nodes; class-weighted losses keep the chain rule."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from test_outputs import multi_net

from dlc.model import losses
from dlc.model.network import build_network
from dlc.model.spec import load_spec_text
from dlc.train.step import build_train_step, persistent_values

CE = {"kind": "classification", "loss": "cross_entropy"}


def spec_net(task, layers=None, shape=(5,)):
    layers = layers or [{"type": "dense", "units": 7, "activation": "relu"},
                        {"type": "dense", "units": 4}]
    return build_network(load_spec_text(json.dumps({
        "dlc": 1, "name": "closed", "input": {"shape": list(shape)}, "layers": layers,
        "task": task, "train": {"optimizer": {"type": "adam", "lr": 0.01}}})))


SEQUENCE = [{"type": "dense", "units": 6, "activation": "tanh"}, {"type": "dense", "units": 4}]
NETS = {
    "smoothing": lambda: spec_net({**CE, "label_smoothing": 0.1}),
    "plain": lambda: spec_net(CE),
    "per_token": lambda: spec_net({**CE, "label_smoothing": 0.2}, SEQUENCE, shape=(3, 5)),
    "multi_output": lambda: multi_net((1.0, 0.3, 2.0)),
}


def feeds(net, step, sess, rng):
    """Random inputs of every kind the step takes: x, integer or float targets, lr, step."""
    out = {"lr": np.array(0.01, np.float32), "step": np.array(2.0, np.float32)}
    values = persistent_values(net, step, net.init_params(0))
    values.update({k: rng.random(v.shape).astype(np.float32) for k, v in values.items()
                   if k.startswith("state.")})
    for i in sess.get_inputs():
        if i.name in values:
            out[i.name] = values[i.name]
        elif i.name not in out:
            shape = [6 if isinstance(d, str) else d for d in i.shape]
            out[i.name] = (rng.integers(0, 2, shape) if i.type == "tensor(int64)"
                           else rng.standard_normal(shape).astype(np.float32))
    return out


def run(step, sess_feeds):
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: sess_feeds[i.name]
                                           for i in sess.get_inputs()})))


@pytest.mark.parametrize("name", list(NETS))
def test_closed_form_equals_the_chain_rule(name, monkeypatch):
    net = NETS[name]()
    closed = build_train_step(net)
    monkeypatch.setattr(losses, "closed_gradient", lambda *a, **k: None)  # no closed forms
    chain = build_train_step(net)
    assert len(closed.model.graph.node) < len(chain.model.graph.node)
    assert not any("LogSoftmax.grad" in n.name for n in closed.model.graph.node)
    sess = ort.InferenceSession(chain.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    f = feeds(net, chain, sess, np.random.default_rng(0))
    a, b = run(closed, f), run(chain, f)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_class_weights_keep_the_chain_rule():
    net = spec_net({**CE, "class_weights": [1.0, 2.0, 0.5, 1.0]})
    assert any("LogSoftmax.grad" in n.name for n in build_train_step(net).model.graph.node)
