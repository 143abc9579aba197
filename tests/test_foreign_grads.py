"""dlc's gradient pass on models exported by torch.onnx.export (issue 20): a ResNet-style CNN
(Conv, BatchNormalization in inference form, Relu, MaxPool, residual Add, GlobalAveragePool,
Flatten, Gemm) and a 2-layer BERT-style encoder (Gather embeddings, LayerNormalization, MatMul,
Softmax attention with a Where mask, Erf GELU, Reshape/Transpose heads, Slice, Concat, Expand,
Cast, Sqrt, Pow, Div, ReduceMean), built here with random weights, nothing downloaded.

Every parameter's gradient from dlc equals torch autograd's on the same model within 1e-4
(relative to the tensor's scale), and one SGD step with momentum and weight decay through dlc's
optimizer gives torch.optim.SGD's weights. Both are exported at opset 17, so onnx's version
converter brings them to dlc's opset (OPSET) on the way."""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from oracles import needs_torch, torch
from test_vjp_rules import err

from dlc.autodiff import gradients
from dlc.autodiff.coverage import missing_rules
from dlc.graph import OPSET, Builder
from dlc.graph.foreign import add_graph, default_opset, to_pinned_opset
from dlc.train.optim import Optimizer
from dlc.train.options import OptimizerConfig

LR, MOMENTUM, DECAY = 0.05, 0.9, 0.01

if torch is not None:
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            self.blocks = nn.Sequential(Block(8), Block(8))
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.blocks(self.pool(torch.relu(self.bn(self.stem(x)))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class Layer(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads = heads
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

        def forward(self, x, pad):
            n, t, d = x.shape
            q, k, v = (h.reshape(n, t, self.heads, -1).transpose(1, 2)
                       for h in self.qkv(x).split(d, dim=-1))
            scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
            mask = pad[:, None, None, :].expand(-1, self.heads, t, -1)  # Expand
            scores = scores.masked_fill(mask, float("-inf"))
            att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
            x = self.ln1(x + self.out(att))
            return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))

    class Bert(nn.Module):
        def __init__(self, vocab=20, d=16, t=6):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(t, d) * 0.1)
            self.layers = nn.ModuleList([Layer(d, 2), Layer(d, 2)])
            self.head = nn.Linear(2 * d, 3)

        def forward(self, ids):
            pad = ids == 0
            x = self.tok(ids) + self.pos[: ids.shape[1]]
            for layer in self.layers:
                x = layer(x, pad)
            rms = x.pow(2).mean(-1, keepdim=True).sqrt()  # Pow, ReduceMean, Sqrt, Div
            x = x / (rms + 1.0)
            return self.head(torch.cat([x[:, 0], x.mean(1)], -1))  # Concat on the gradient path


def _exported(net, args, names, batch="static"):
    """torch.onnx.export at opset 17, constant folding off so that initialisers keep the
    parameters' names (folding would merge BatchNormalization into Conv); batch="dynamic": the
    batch axis symbolic, as users export for serving."""
    axes = {names[0]: {0: "N"}, "y": {0: "N"}} if batch == "dynamic" else None
    f = io.BytesIO()
    torch.onnx.export(net, args, f, input_names=names, output_names=["y"], opset_version=17,
                      do_constant_folding=False, dynamo=False, dynamic_axes=axes)
    return onnx.load_model_from_string(f.getvalue())


def _dlc_step(model, params, feeds, r):
    """loss = sum(y * r) (y: the model's first output); dlc's gradients and one momentum-SGD
    step, run in onnxruntime."""
    b = Builder()
    add_graph(b, model.graph)
    loss = b.ReduceSum(b.Mul(model.graph.output[0].name, b.const(r)), keepdims=0)
    grads = gradients(b, loss, list(params))
    opt = Optimizer(b, OptimizerConfig("momentum", LR, DECAY, momentum=MOMENTUM), b.const(LR),
                    b.const(1.0))
    for name in params:
        new_w, _ = opt.update(name, grads[name], {"velocity": b.const(0.0)})
        b.output(grads[name], f"g:{name}", "float32")
        b.output(new_w, f"w:{name}", "float32")
    graph = b.model("step")
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in graph.graph.output], sess.run(None, feeds)))


def _check_against_torch(net, args, names, batch):
    net.eval()
    with torch.no_grad():  # no two parameters equal (the exporter shares equal initialisers)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = _exported(net, args, names, batch)
    assert default_opset(model) == 17
    model = to_pinned_opset(model, "exported")
    assert default_opset(model) == OPSET and missing_rules(model) == []
    params = dict(net.named_parameters())
    assert params and set(params) <= {t.name for t in model.graph.initializer}
    y = net(*args)
    r = np.random.default_rng(0).uniform(-1, 1, y.shape).astype(np.float32)
    (y * torch.from_numpy(r)).sum().backward()
    before = {k: p.detach().clone() for k, p in params.items()}
    torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY).step()
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    out = _dlc_step(model, params, feeds, r)
    for name, p in params.items():
        assert err(out[f"g:{name}"], p.grad.numpy()) < 1e-4, name
        assert err(out[f"w:{name}"], p.detach().numpy()) < 1e-6, name
        assert not torch.equal(before[name], p.detach()), name  # the step moved it


@needs_torch
@pytest.mark.parametrize("batch", ["static", "dynamic"])
def test_resnet_export_gradients_and_sgd_step_match_torch(batch):
    torch.manual_seed(0)
    net = ResNet()
    for m in net.modules():  # non-trivial running statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    _check_against_torch(net, (torch.randn(2, 3, 8, 8),), ["image"], batch)


@needs_torch
@pytest.mark.parametrize("batch", ["static", "dynamic"])
def test_bert_export_gradients_and_sgd_step_match_torch(batch):
    torch.manual_seed(0)
    ids = torch.tensor([[3, 7, 1, 9, 0, 0], [5, 2, 2, 8, 4, 0]])
    _check_against_torch(Bert(), (ids,), ["ids"], batch)


@needs_torch
@pytest.mark.parametrize("family", ["resnet", "bert"])
def test_exports_use_the_ops_the_issue_names(family):
    """The exported graphs really hold the ops the rules were written for (an exporter change
    would otherwise hollow the parity tests out)."""
    torch.manual_seed(0)
    net, args, names = ((ResNet(), (torch.randn(2, 3, 8, 8),), ["image"]) if family == "resnet"
                        else (Bert(), (torch.tensor([[3, 7, 1, 9, 0, 0]]),), ["ids"]))
    ops = {n.op_type for n in _exported(net.eval(), args, names).graph.node}
    expected = ({"Conv", "BatchNormalization", "Relu", "MaxPool", "GlobalAveragePool", "Flatten",
                 "Gemm", "Add"} if family == "resnet" else
                {"Gather", "LayerNormalization", "MatMul", "Softmax", "Where", "Erf", "Reshape",
                 "Transpose", "Slice", "Concat", "Expand", "Cast", "Sqrt", "Pow", "Div",
                 "ReduceMean"})
    assert expected <= ops, expected - ops
