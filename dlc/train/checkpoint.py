"""checkpoint.npz: parameters, optimizer state and the whole loop state, written atomically.

Layout: `param/<name>`, `state/<name>`, `best/<name>` arrays and `meta` (UTF-8 JSON as uint8):
epoch, step, RNG state, schedule state, early-stopping state and the metrics history.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from dlc.errors import DlcError
from dlc.files.atomic import write_bytes


def save(path: Path, trainer) -> None:
    write_bytes(path, to_bytes(trainer))


def save_epoch(run: Path, trainer) -> None:
    """After an epoch (train.checkpoint): checkpoint.npz every `every` epochs (and at the last
    one), a copy per epoch in checkpoints/ keeping the last `keep`, and checkpoints/best.npz for
    the best epoch."""
    st, cfg = trainer.state, trainer.opts.checkpoint
    if st.epoch % cfg.every and st.epoch < trainer.opts.epochs:
        return
    data = to_bytes(trainer)
    write_bytes(run / "checkpoint.npz", data)
    keep, folder = cfg.keep, run / "checkpoints"
    if keep or cfg.best:
        folder.mkdir(exist_ok=True)
    if keep:
        write_bytes(folder / f"epoch-{st.epoch:04d}.npz", data)
        for old in sorted(folder.glob("epoch-*.npz"))[:-keep]:
            old.unlink()
    if cfg.best and st.best and st.best["epoch"] == st.epoch:
        write_bytes(folder / "best.npz", data)


def to_bytes(trainer) -> bytes:
    st = trainer.state
    arrays = {f"param/{k}": v for k, v in trainer.params.items()}
    arrays.update({f"state/{k}": v for k, v in trainer.opt_states.items()})
    best = None
    if st.best:
        arrays.update({f"best/{k}": v for k, v in st.best["params"].items()})
        best = {"epoch": st.best["epoch"], "value": st.best["value"]}
    meta = {"epoch": st.epoch, "step": st.step, "rng": st.rng.bit_generator.state,
            "schedule": trainer.schedule.state(), "history": st.history, "best": best,
            "bad_epochs": st.bad_epochs, "skipped_steps": st.skipped_steps}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# what `meta` must hold, by key: (type, description); a damaged file fails here, not later
META = {"epoch": (int, "an epoch count"), "step": (int, "a step count"),
        "rng": (dict, "an RNG state"), "schedule": (dict, "a schedule state"),
        "history": (list, "a list of metric rows"), "bad_epochs": (int, "a count"),
        "skipped_steps": (int, "a count"), "best": ((dict, type(None)), "the best epoch")}


def _read(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a checkpoint file, or DlcError naming what is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "meta" not in arrays:
            raise DlcError("no meta record")
        meta = json.loads(arrays.pop("meta").tobytes())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, DlcError) as e:
        raise DlcError(f"cannot read checkpoint {path}: {e or type(e).__name__}") from None
    if not isinstance(meta, dict):
        raise DlcError(f"checkpoint {path} is damaged: meta is not a mapping")
    meta.setdefault("skipped_steps", 0)
    for key, (kind, what) in META.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or \
                (isinstance(value, int) and value < 0):
            raise DlcError(f"checkpoint {path} is damaged: meta.{key} is not {what}")
    if not all(isinstance(row, dict) and all(isinstance(v, (int, float)) for v in row.values())
               for row in meta["history"]):
        raise DlcError(f"checkpoint {path} is damaged: meta.history is not {META['history'][1]}")
    return arrays, meta


def epoch_of(path: Path) -> int | None:
    """The epoch a checkpoint file holds; None when there is none, or none readable."""
    try:
        return _read(path)[1]["epoch"]
    except DlcError:
        return None


def load(path: Path, trainer) -> None:
    """Restore `trainer` from a checkpoint written by `save` for the same spec."""
    arrays, meta = _read(path)
    st = trainer.state
    params, states = trainer.params, trainer.opt_states
    for group, target in (("param", params), ("state", states)):
        for k in target:
            if f"{group}/{k}" not in arrays or arrays[f"{group}/{k}"].shape != target[k].shape:
                raise DlcError(f"checkpoint {path} does not match the spec: {group} {k}")
            target[k] = arrays[f"{group}/{k}"]
    if meta["best"] and not all(f"best/{k}" in arrays for k in params):
        raise DlcError(f"checkpoint {path} is damaged: the best epoch's parameters are missing")
    try:
        st.rng.bit_generator.state = meta["rng"]
        sched, number = meta["schedule"], lambda v: None if v is None else float(v)
        trainer.schedule.load_state({"scale": float(sched["scale"]), "best": number(sched["best"]),
                                     "bad_epochs": int(sched["bad_epochs"])})
        best = meta["best"] and {"epoch": int(meta["best"]["epoch"]),
                                 "value": float(meta["best"]["value"])}
    except (TypeError, ValueError, KeyError) as e:
        raise DlcError(f"checkpoint {path} is damaged: bad RNG, schedule or best-epoch state "
                       f"({type(e).__name__}: {e})") from None
    trainer.params, trainer.opt_states = params, states
    st.epoch, st.step, st.history = meta["epoch"], meta["step"], meta["history"]
    st.bad_epochs, st.skipped_steps = meta["bad_epochs"], meta["skipped_steps"]
    if best:
        st.best = {**best, "params": {k: arrays[f"best/{k}"] for k in params}}
