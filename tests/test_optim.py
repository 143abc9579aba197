"""Optimizer updates of the train-step graph against a numpy reference and torch.optim.

A single dense layer (regression, mse) takes 5 steps on the same batch, with a different lr fed
at every step (lr is a graph input) and the 1-based step count fed for bias correction; after each
step the parameters and every optimizer state are compared with an independent float64 numpy
implementation of torch.optim's update rules, and (where torch is importable) with torch.optim
itself running its own autograd trajectory.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import stepio
from stepio import named, pack_feeds, state_names

from dlc.model.network import build_network
from dlc.train.optim import STATES
from dlc.model.spec import load_spec_text
from dlc.train.step import build_train_step

KINDS = ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"]
LRS = [0.05, 0.02, 0.08, 0.01, 0.04]  # one per step: proves lr is read from the feed
TOL = 1e-5  # relative to the largest |value| of the reference tensor


def assert_close(actual, expected, what, tol=TOL):
    stepio.assert_close(actual, expected, what, tol)
DEFAULTS = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "alpha": 0.99}
# Non-default values, each large enough to change the 5-step trajectory well beyond TOL.
CUSTOM = {"momentum": 0.7, "beta1": 0.6, "beta2": 0.9, "eps": 0.05, "alpha": 0.8}


# --- the numpy reference (torch.optim's update rules, float64) ----------------------------------

def reference_update(kind, hp, wd, w, g, state, lr, t):
    """One update of `w` with gradient `g`; return (new w, new state). `state` holds the dlc
    state names, zeros before the first step."""
    if wd and kind != "adamw":
        g = g + wd * w
    if kind == "sgd":
        return w - lr * g, {}
    if kind in ("momentum", "nesterov"):
        mu = hp["momentum"]
        v = mu * state["velocity"] + g  # torch: buf = g at t = 1, which is this with buf = 0
        d = g + mu * v if kind == "nesterov" else v
        return w - lr * d, {"velocity": v}
    if kind in ("adam", "adamw"):
        b1, b2, eps = hp["beta1"], hp["beta2"], hp["eps"]
        if kind == "adamw":
            w = w * (1 - lr * wd)
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        return w - lr * m_hat / (np.sqrt(v_hat) + eps), {"m": m, "v": v}
    if kind == "rmsprop":
        a, eps = hp["alpha"], hp["eps"]
        sq = a * state["square_avg"] + (1 - a) * g * g
        return w - lr * g / (np.sqrt(sq) + eps), {"square_avg": sq}
    raise AssertionError(kind)


def mse_grads(values, x, y):
    """d/dW, d/db of mean((x W + b - y)^2), float64."""
    w, b = values["fc.weight"], values["fc.bias"]
    d = 2 * (x @ w + b - y) / y.size
    return {"fc.weight": x.T @ d, "fc.bias": d.sum(0)}


# --- the dlc side -------------------------------------------------------------------------------

def used(kind, hp):
    """The hyperparameters of `hp` that optimizer `kind` takes (the schema refuses the others);
    the loader fills in exactly those."""
    filled = make_net(kind, 0.0, {}).spec["train"]["optimizer"]
    return {k: v for k, v in hp.items() if k in filled}


def make_net(kind, wd, hp):
    opt = {"type": kind, "lr": 0.5, "weight_decay": wd, **hp}  # spec lr: unused by the graph
    data = {"dlc": 1, "name": "opt", "input": {"shape": [3]},
            "layers": [{"type": "dense", "name": "fc", "units": 2}],
            "task": {"kind": "regression", "loss": "mse"}, "train": {"optimizer": opt}}
    return build_network(load_spec_text(json.dumps(data)))


def data():
    """A batch whose gradient keeps its sign for 5 steps (x > 0 and targets well above the
    predictions), so Adam's g / sqrt(v) never divides near-zero quantities."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, size=(6, 3)).astype(np.float32)
    y = (3.0 + rng.normal(size=(6, 2))).astype(np.float32)
    return x, y


def initial(net):
    values = net.init_params(0)
    values["fc.bias"] = np.array([0.1, -0.2], np.float32)  # a nonzero bias: weight decay bites
    return values


def dlc_trajectory(net, lrs):
    """[(params, states)] after each step, fed back step to step."""
    step = build_train_step(net)
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    x, y = data()
    values = initial(net)
    states = None
    out = []
    for t, lr in enumerate(lrs, 1):
        feeds = {"x": x, "y": y, "lr": np.array(lr, np.float32),
                 "step": np.array(float(t), np.float32), **pack_feeds(step, values, states)}
        res = named(step, dict(zip(names, sess.run(None, feeds))))
        values = {p: res[p + ".new"] for p in step.params}
        states = {s: res[s + ".new"] for s in state_names(step)}
        out.append((values, states))
    return step, out


def numpy_trajectory(kind, wd, hp, values, lrs):
    x, y = (a.astype(np.float64) for a in data())
    w = {k: v.astype(np.float64) for k, v in values.items()}
    st = {k: {s: np.zeros_like(v) for s in STATES[kind]} for k, v in w.items()}
    out = []
    for t, lr in enumerate(lrs, 1):
        g = mse_grads(w, x, y)
        for k in w:
            w[k], st[k] = reference_update(kind, hp, wd, w[k], g[k], st[k], lr, t)
        out.append(({k: v.copy() for k, v in w.items()},
                    {f"{k}.{s}": v.copy() for k, d in st.items() for s, v in d.items()}))
    return out




def assert_trajectories_match(got, want, label):
    for t, ((p1, s1), (p2, s2)) in enumerate(zip(got, want), 1):
        assert sorted(p1) == sorted(p2) and sorted(s1) == sorted(s2)
        for k in p2:
            assert_close(p1[k], p2[k], f"{label} step {t}: {k}")
        for k in s2:
            assert_close(s1[k], s2[k], f"{label} step {t}: state {k}")


CASES = [(kind, wd, hp) for kind in KINDS for wd in (0.0, 0.1)
         for hp in ("default", "custom")]


def case_id(case):
    kind, wd, hp = case
    return f"{kind}-wd{wd}-{hp}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_numpy_reference(case):
    kind, wd, which = case
    hp = DEFAULTS if which == "default" else CUSTOM
    # "default": the spec leaves the hyperparameters out and the loader fills them in.
    net = make_net(kind, wd, {} if which == "default" else used(kind, hp))
    step, got = dlc_trajectory(net, LRS)
    assert step.states == STATES[kind]
    want = numpy_trajectory(kind, wd, hp, initial(net), LRS)
    assert_trajectories_match(got, want, kind)


# --- torch.optim --------------------------------------------------------------------------------

TORCH_STATE = {"velocity": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq",
               "square_avg": "square_avg"}


def torch_trajectory(kind, wd, hp, values, lrs):
    torch = pytest.importorskip("torch")
    x, y = (torch.from_numpy(a.astype(np.float64)) for a in data())
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in values.items()}
    ps = list(params.values())
    opt = {
        "sgd": lambda: torch.optim.SGD(ps, lr=lrs[0], weight_decay=wd),
        "momentum": lambda: torch.optim.SGD(ps, lr=lrs[0], momentum=hp["momentum"],
                                            weight_decay=wd),
        "nesterov": lambda: torch.optim.SGD(ps, lr=lrs[0], momentum=hp["momentum"],
                                            nesterov=True, weight_decay=wd),
        "adam": lambda: torch.optim.Adam(ps, lr=lrs[0], betas=(hp["beta1"], hp["beta2"]),
                                         eps=hp["eps"], weight_decay=wd),
        "adamw": lambda: torch.optim.AdamW(ps, lr=lrs[0], betas=(hp["beta1"], hp["beta2"]),
                                           eps=hp["eps"], weight_decay=wd),
        "rmsprop": lambda: torch.optim.RMSprop(ps, lr=lrs[0], alpha=hp["alpha"], eps=hp["eps"],
                                               weight_decay=wd),
    }[kind]()
    out = []
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(x @ params["fc.weight"] + params["fc.bias"], y)
        loss.backward()
        opt.step()
        states = {f"{k}.{s}": opt.state[p][TORCH_STATE[s]].detach().numpy().copy()
                  for k, p in params.items() for s in STATES[kind]}
        out.append(({k: p.detach().numpy().copy() for k, p in params.items()}, states))
    return out


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_optim(case):
    kind, wd, which = case
    hp = DEFAULTS if which == "default" else CUSTOM
    net = make_net(kind, wd, {} if which == "default" else used(kind, hp))
    want = torch_trajectory(kind, wd, hp, initial(net), LRS)
    _, got = dlc_trajectory(net, LRS)
    assert_trajectories_match(got, want, f"torch {kind}")


def test_torch_defaults_are_dlc_defaults():
    """The spec defaults are torch.optim's defaults (RMSprop's alpha 0.99 and eps 1e-8 included)."""
    torch = pytest.importorskip("torch")
    w = [torch.zeros(1, requires_grad=True)]
    adam = torch.optim.Adam(w).defaults
    rms = torch.optim.RMSprop(w).defaults
    assert adam["betas"] == (DEFAULTS["beta1"], DEFAULTS["beta2"]) and adam["eps"] == DEFAULTS["eps"]
    assert rms["alpha"] == DEFAULTS["alpha"] and rms["eps"] == DEFAULTS["eps"]
    filled = {k: v for kind in ("momentum", "adam", "rmsprop")
              for k, v in make_net(kind, 0.0, {}).spec["train"]["optimizer"].items()}
    assert {k: filled[k] for k in DEFAULTS} == DEFAULTS


# --- the graph reads what the spec and the feeds say ---------------------------------------------

HYPERPARAMETERS = [("momentum", "momentum"), ("nesterov", "momentum"), ("adam", "beta1"),
                   ("adam", "beta2"), ("adam", "eps"), ("adamw", "beta1"), ("adamw", "beta2"),
                   ("adamw", "eps"), ("rmsprop", "alpha"), ("rmsprop", "eps")]


def test_every_accepted_hyperparameter_is_tested_and_no_other_accepted():
    """Issue 15 item 6: the fields the schema accepts per optimizer type are exactly those the
    test below proves act; any other (sgd + momentum) is refused with the type that has it."""
    from dlc.errors import SpecError

    accepted = set()
    for kind in KINDS:
        for key, value in CUSTOM.items():
            try:
                make_net(kind, 0.0, {key: value})
                accepted.add((kind, key))
            except SpecError as e:
                assert "did you mean type:" in str(e), e
    assert accepted == set(HYPERPARAMETERS)


@pytest.mark.parametrize("kind,key", HYPERPARAMETERS)
def test_each_hyperparameter_comes_from_the_spec(kind, key):
    """Changing one hyperparameter in the spec changes the trajectory, to what the reference
    says for that value."""
    hp = {**DEFAULTS, key: CUSTOM[key]}
    net = make_net(kind, 0.0, {key: CUSTOM[key]})
    _, got = dlc_trajectory(net, LRS)
    assert_trajectories_match(got, numpy_trajectory(kind, 0.0, hp, initial(net), LRS), kind)
    default = numpy_trajectory(kind, 0.0, DEFAULTS, initial(net), LRS)
    final, final_default = got[-1][0]["fc.weight"], default[-1][0]["fc.weight"]
    assert np.max(np.abs(final - final_default)) > 20 * TOL * np.max(np.abs(final_default))


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adamw"])
def test_weight_decay_comes_from_the_spec(kind):
    a = dlc_trajectory(make_net(kind, 0.0, {}), LRS)[1][-1][0]["fc.weight"]
    b = dlc_trajectory(make_net(kind, 0.1, {}), LRS)[1][-1][0]["fc.weight"]
    assert np.max(np.abs(a - b)) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_lr_is_an_input(kind):
    """The same graph, fed lr and 2 lr, takes different steps; the spec's lr plays no part."""
    net = make_net(kind, 0.0, {})
    one = dlc_trajectory(net, [0.01])[1][0][0]["fc.weight"]
    two = dlc_trajectory(net, [0.02])[1][0][0]["fc.weight"]
    w0 = initial(net)["fc.weight"].astype(np.float64)
    np.testing.assert_allclose(two - w0, 2 * (one - w0), rtol=1e-4, atol=1e-7)


def test_adam_bias_correction_reads_the_step_input():
    """Feeding step t = 1 vs t = 3 with zero states changes Adam's update by the bias corrections
    (the step count is an input, not graph state)."""
    net = make_net("adam", 0.0, {})
    step = build_train_step(net)
    sess = ort.InferenceSession(step.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, y = data()
    values = initial(net)
    got = {}
    names = [o.name for o in sess.get_outputs()]
    for t in (1.0, 3.0):
        feeds = {"x": x, "y": y, "lr": np.array(0.01, np.float32), "step": np.array(t, np.float32),
                 **pack_feeds(step, values)}
        got[t] = named(step, dict(zip(names, sess.run(None, feeds))))["fc.weight.new"]
    g = mse_grads({k: v.astype(np.float64) for k, v in values.items()},
                  *(a.astype(np.float64) for a in data()))["fc.weight"]
    state = {"m": np.zeros_like(g), "v": np.zeros_like(g)}
    for t in (1, 3):
        want, _ = reference_update("adam", DEFAULTS, 0.0, values["fc.weight"].astype(np.float64),
                                   g, state, 0.01, t)
        assert_close(got[float(t)], want, f"adam at t={t}")
    assert np.max(np.abs(got[1.0] - got[3.0])) > 1e-3
