"""Per-parameter views of the train step's flat I/O, for tests that compare by parameter name.

The train graph takes `params` (every trainable parameter in one flat vector) and `state.<s>`
(each optimizer state, flat alike); these helpers pack dicts into those inputs and name the
outputs back as `<param>.new` and `<param>.<state>.new`."""

from __future__ import annotations

import numpy as np


def state_names(step) -> list[str]:
    return [f"{p}.{s}" for p in step.params for s in step.states]


def pack_feeds(step, values: dict, states: dict | None = None) -> dict:
    feeds = {"params": step.pack(values)}
    for s in step.states:
        feeds[f"state.{s}"] = (step.pack({p: states[f"{p}.{s}"] for p in step.params}) if states
                               else np.zeros(step.total, np.float32))
    feeds.update({k: v for k, v in values.items() if k not in step.params})  # buffers
    return feeds


def named(step, out: dict) -> dict:
    out = dict(out)
    out.update({f"{p}.new": v for p, v in step.unpack(out["params.new"]).items()})
    for s in step.states:
        out.update({f"{p}.{s}.new": v for p, v in step.unpack(out[f"state.{s}.new"]).items()})
    return out


def assert_close(actual, expected, what: str, tol: float = 1e-4) -> None:
    """max |actual - expected| below `tol` relative to the largest |expected| (a torch tensor
    or an array; compared in float64), with the same shape. The default suits an fp32 train
    step against a float64 reference."""
    expected = np.asarray(expected.detach() if hasattr(expected, "detach") else expected,
                          np.float64)
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-12)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err < tol, f"{what}: relative error {err:.3g} (max |expected| {scale:.3g})"
