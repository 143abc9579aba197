"""TensorBoard tracking (train.tracking: {backend: tensorboard}): event files in the run folder's
tb/, read back record by record (TFRecord framing, tensorboardX's Event protobuf)."""

from __future__ import annotations

import csv
import struct

import pytest
from conftest import SPECS, interrupt_in_epoch

try:
    import tensorboardX
except ImportError:  # the `tensorboard` extra is not installed
    tensorboardX = None
needs_tensorboardx = pytest.mark.skipif(tensorboardX is None,
                                        reason="pip install 'dlc[tensorboard]'")
TB = ("--set", "train.tracking.backend=tensorboard")


def read_events(folder) -> list:
    """Every Event in the folder's event files: each record is a u64 length, its masked CRC32,
    the serialized Event, and the data's masked CRC32."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            events.append(event)
            at += 12 + length + 4
    return events


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(folder):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


@needs_tensorboardx
def test_scalars_and_graph_written_to_tb(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", SPECS / "iris.yaml", "--out", out, "--epochs", "3", *TB,
            "--log-format", "jsonl")
    assert r.code == 0, r
    assert all(line.startswith("{") for line in r.out.splitlines())  # nothing else on stdout
    found = {split: scalars(out / "tb" / split) for split in ("train", "val", "test")}
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for column, split, tag in (("train_loss", "train", "loss"), ("val_loss", "val", "loss"),
                               ("val_accuracy", "val", "accuracy"), ("lr", "train", "lr")):
        assert [s for s, _ in found[split][tag]] == [1, 2, 3]
        assert [v for _, v in found[split][tag]] == pytest.approx(
            [float(r[column]) for r in rows], rel=1e-6)
    assert {"samples_per_s", "epoch_seconds"} <= set(found["train"])
    assert set(found["test"]) == {"loss", "accuracy", "f1"}
    assert any(e.HasField("graph_def") for e in read_events(out / "tb" / "train"))


@needs_tensorboardx
def test_resume_continues_the_same_event_folder(cli, monkeypatch, tmp_path):
    out = tmp_path / "run"
    restore = interrupt_in_epoch(monkeypatch, 3)
    assert cli("train", SPECS / "iris.yaml", "--out", out, "--epochs", "4", "-q", *TB).code == 130
    restore()
    assert cli("train", "--resume", out, "-q").code == 0
    steps = [s for s, _ in scalars(out / "tb" / "val")["loss"]]
    assert steps == [1, 2, 3, 4]  # epochs 1-2 before the interrupt, 3-4 after: none twice



def test_schema_accepts_tensorboard():
    from dlc.model.spec import load_spec

    loaded = load_spec(SPECS / "iris.yaml", ["train.tracking.backend=tensorboard"])
    assert loaded.data["train"]["tracking"]["backend"] == "tensorboard"
