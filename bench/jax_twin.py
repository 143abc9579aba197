"""The JAX jit side of bench/train_speed.py: the spec's chain of dense, conv2d, maxpool2d and
flatten layers with dlc's initial weights, optax's Adam with the spec's settings, the same
batches drawn the same way as the torch side; one jitted step per batch, like
../shared/bench/peer_jax.py.

Thread count: XLA's CPU client reads its flags when jax is first imported, so `limit_threads`
must run before that (train_speed.py calls it at start-up).
"""

from __future__ import annotations

import os
import time

import numpy as np

ACT = {"linear": None, "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "gelu": "gelu",
       "elu": "elu", "selu": "selu", "silu": "silu", "softplus": "softplus"}


def limit_threads(threads: int) -> None:
    if threads == 1:  # one intra-op thread, as the other sides
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                                   "=false intra_op_parallelism_threads=1").strip()


def window2d(layer, shape) -> tuple:
    """(kernel, stride, dilation, (pad_h, pad_w)) of a 2-D conv or pooling layer, as torch and
    JAX take them; NotImplementedError for other ranks or uneven (begin != end) padding."""
    if getattr(layer, "rank", None) != 2:
        raise NotImplementedError(f"layer type {layer.cfg['type']}")
    k, s, d, pads, _ = layer.geometry(shape)
    if pads[:2] != pads[2:]:
        raise NotImplementedError(f"uneven padding {pads}")
    return tuple(k), tuple(s), tuple(d), tuple(pads[:2])


def _activation(cfg: dict):
    act = ACT.get(cfg.get("activation", "linear"), 0)
    if act == 0:
        raise NotImplementedError(f"activation {cfg.get('activation')} in the JAX twin")
    import jax

    return getattr(jax.nn, act) if act else (lambda v: v)


def _dense(layer, shape, init):
    act = _activation(layer.cfg)
    return ((init[f"{layer.name}.weight"], init.get(f"{layer.name}.bias", 0.0)),
            lambda p, x: act(x @ p[0] + p[1]))


def _conv(layer, shape, init):
    """NCHW input, OIHW weight as dlc (and ONNX) keep them."""
    import jax

    act, (k, s, d, pad) = _activation(layer.cfg), window2d(layer, shape)
    groups, bias = layer.cfg["groups"], init.get(f"{layer.name}.bias", np.zeros(1, np.float32))

    def apply(p, x):
        y = jax.lax.conv_general_dilated(x, p[0], s, [(q, q) for q in pad], rhs_dilation=d,
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                         feature_group_count=groups)
        return act(y + p[1].reshape(1, -1, 1, 1))
    return (init[f"{layer.name}.weight"], bias), apply


def _maxpool(layer, shape, init):
    import jax
    import jax.numpy as jnp

    k, s, _, pad = window2d(layer, shape)
    return (), lambda p, x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, *k),
                                                  (1, 1, *s), [(0, 0), (0, 0),
                                                               *[(q, q) for q in pad]])


def _flatten(layer, shape, init):
    return (), lambda p, x: x.reshape(x.shape[0], -1)


# layer type -> (layer, per-sample input shape, dlc's initial values) -> (params, apply(p, x))
LAYERS = {"dense": _dense, "conv2d": _conv, "maxpool2d": _maxpool, "flatten": _flatten}


def twin(chain: list, init: dict):
    """(params, forward) for a chain of (layer, input shape) pairs (layer types without a rule
    here: NotImplementedError)."""
    params, applies = [], []
    for layer, shape in chain:
        rule = LAYERS.get(layer.cfg["type"])
        if rule is None:
            raise NotImplementedError(f"layer {layer.cfg['type']} in the JAX twin")
        p, apply = rule(layer, shape, init)
        params.append(tuple(np.asarray(v, np.float32) for v in p))
        applies.append(apply)

    def forward(ps, x):
        for p, apply in zip(ps, applies):
            x = apply(p, x)
        return x
    return params, forward


def jax_run(chain: list, init: dict, ds, train_cfg: dict, smoothing: float, epochs: int,
            seed: int = 0) -> dict:
    import jax
    import optax

    params, forward = twin(chain, init)
    o = train_cfg["optimizer"]
    if o["type"] != "adam":
        raise NotImplementedError(f"optimizer {o['type']} in the JAX twin")
    opt = optax.adam(o["lr"], o.get("beta1", 0.9), o.get("beta2", 0.999), o.get("eps", 1e-8))
    classes = forward(params, ds.train.x[:1]).shape[-1]

    def loss_fn(ps, x, y):
        labels = optax.smooth_labels(jax.nn.one_hot(y, classes), smoothing)
        return optax.softmax_cross_entropy(forward(ps, x), labels).mean()

    @jax.jit
    def step(ps, state, x, y):
        loss, g = jax.value_and_grad(loss_fn)(ps, x, y)
        upd, state = opt.update(g, state, ps)
        return optax.apply_updates(ps, upd), state, loss

    x, y, bs = ds.train.x, ds.train.y, train_cfg["batch_size"]
    state, n = opt.init(params), len(x)
    for size in {bs, n % bs or bs}:  # compile both batch shapes before the clock starts
        step(params, state, x[:size], y[:size])[2].block_until_ready()
    rng, seen = np.random.default_rng(seed), 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        perm = rng.permutation(n)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            params, state, loss = step(params, state, x[idx], y[idx])
            seen += len(idx)
    loss.block_until_ready()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = None
    if ds.test is not None:
        acc = float((np.asarray(forward(params, ds.test.x)).argmax(1) == ds.test.y).mean())
    return {"wall_s": wall, "samples_per_s": seen / wall, "samples_per_cpu_s": seen / cpu,
            "test_acc": acc, "jax": jax.__version__}
