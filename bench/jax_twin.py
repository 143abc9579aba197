"""The JAX jit side of bench/train_speed.py: the spec's dense chain (dlc's initial weights),
optax's Adam with the spec's settings, the same batches drawn the same way as the torch side; one
jitted step per batch, like ../shared/bench/peer_jax.py.

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


def twin(chain: list, init: dict):
    """(params, forward) for a chain of dense layers (other layer types: NotImplementedError)."""
    import jax

    params, acts = [], []
    for layer in chain:
        cfg = layer.cfg
        if cfg["type"] != "dense" or ACT.get(cfg.get("activation", "linear"), 0) == 0:
            raise NotImplementedError(f"layer {cfg['type']} in the JAX twin")
        params.append((init[f"{layer.name}.weight"], init.get(f"{layer.name}.bias", 0.0)))
        act = ACT[cfg.get("activation", "linear")]
        acts.append(getattr(jax.nn, act) if act else (lambda v: v))

    def forward(ps, x):
        for (w, b), act in zip(ps, acts):
            x = act(x @ w + b)
        return x
    return [tuple(np.asarray(v, np.float32) for v in p) for p in params], forward


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
