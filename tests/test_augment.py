"""dlc.data.augment: seeded, shape-preserving batch augmentation; schema entries; trainer wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlc.data.augment import augment, check_augment, config, rotate
from dlc.errors import DlcError, SpecError
from dlc.model.spec import load_spec_text

SPECS = Path(__file__).resolve().parent.parent / "specs"
ALL = {"shift": 2, "flip": "horizontal", "rotate": 10, "noise": 0.05, "cutout": 2}


def batch(n=8, c=3, h=10, w=12, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)


def rng(seed=0) -> np.random.Generator:
    return np.random.default_rng(seed)


def one_hot(n, h=9, w=9, y=4, x=4) -> np.ndarray:
    out = np.zeros((n, 1, h, w), np.float32)
    out[:, 0, y, x] = 1.0
    return out


def test_deterministic_same_seed_and_shapes_preserved():
    x = batch()
    a, b = augment(x, ALL, rng(7)), augment(x, ALL, rng(7))
    assert np.array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.float32
    assert not np.array_equal(a, augment(x, ALL, rng(8)))


def test_generator_advances_like_a_resumed_run():
    x = batch()
    g = rng(3)
    first, second = augment(x, ALL, g), augment(x, ALL, g)
    state = rng(3)
    augment(x, ALL, state)
    assert not np.array_equal(first, second)
    assert np.array_equal(augment(x, ALL, state), second)  # same stream, same result


def test_never_in_place():
    x = batch()
    before = x.copy()
    for cfg in (ALL, {"flip": "horizontal"}, {"noise": 0.1}, {"cutout": 3}, {"shift": 1}):
        out = augment(x, cfg, rng())
        assert out is not x and not np.shares_memory(out, x)
    assert np.array_equal(x, before)


def test_empty_config_is_identity_copy():
    x = batch()
    out = augment(x, {}, rng())
    assert np.array_equal(out, x) and out is not x
    assert np.array_equal(augment(x, {"shift": 0, "flip": "none", "rotate": 0}, rng()), x)


def test_shift_moves_a_one_hot_pixel():
    x = one_hot(200)
    out = augment(x, {"shift": 2}, rng(1))
    moves = set()
    for sample in out[:, 0]:
        assert sample.sum() == 1.0  # the pixel stays inside (4 +- 2 within 0..8), zero fill
        y, xx = np.argwhere(sample == 1.0)[0]
        assert abs(y - 4) <= 2 and abs(xx - 4) <= 2
        moves.add((int(y) - 4, int(xx) - 4))
    assert len(moves) == 25  # every offset in [-2, 2]^2 occurs


def test_shift_fills_with_zero():
    x = np.ones((50, 2, 6, 6), np.float32)
    out = augment(x, {"shift": 3}, rng(2))
    assert set(np.unique(out)) <= {0.0, 1.0}
    for sample in out:  # the ones form one rectangle, the same in every channel
        assert np.array_equal(sample[0], sample[1])
        rows, cols = sample[0].any(axis=1).sum(), sample[0].any(axis=0).sum()
        assert sample[0].sum() == rows * cols and rows >= 3 and cols >= 3


def test_flip_flips_about_half():
    x = batch(n=400, h=4, w=5)
    out = augment(x, {"flip": "horizontal"}, rng(4))
    same = np.array([np.array_equal(o, s) for o, s in zip(out, x)])
    flipped = np.array([np.array_equal(o, s[..., ::-1]) for o, s in zip(out, x)])
    assert np.all(same ^ flipped)
    assert 150 < flipped.sum() < 250


def test_noise_std_matches_config():
    x = np.zeros((64, 3, 16, 16), np.float32)
    out = augment(x, {"noise": 0.05}, rng(5))
    assert abs(out.std() - 0.05) < 0.002 and abs(out.mean()) < 0.002
    flat = augment(np.zeros((1000, 4), np.float32), {"noise": 0.5}, rng(5))  # any shape
    assert flat.shape == (1000, 4) and abs(flat.std() - 0.5) < 0.02


def test_cutout_zeros_one_square_of_the_right_size():
    x = np.ones((100, 3, 10, 12), np.float32)
    out = augment(x, {"cutout": 4}, rng(6))
    corners = set()
    for sample in out:
        zero = sample == 0
        assert np.array_equal(zero[0], zero[1]) and np.array_equal(zero[0], zero[2])
        ys, xs = np.nonzero(zero[0])
        assert len(ys) == 16 and np.ptp(ys) == 3 and np.ptp(xs) == 3  # one 4x4 square
        corners.add((int(ys.min()), int(xs.min())))
    assert len(corners) > 30
    assert min(c[0] for c in corners) >= 0 and max(c[0] for c in corners) <= 6


def test_rotate_zero_is_identity_and_rotation_moves_pixels():
    x = batch(n=4, h=9, w=11)
    assert np.array_equal(rotate(x, np.zeros(4)), x)
    img = one_hot(1, y=1, x=4)  # top centre of a 9x9 image
    quarter = rotate(img, np.array([90.0]))[0, 0]
    assert np.isclose(quarter.sum(), 1.0, atol=1e-5)
    y, xx = np.unravel_index(np.argmax(quarter), quarter.shape)
    assert (y, xx) in ((4, 1), (4, 7)) and quarter[y, xx] > 0.99
    half = rotate(img, np.array([180.0]))[0, 0]
    assert half[7, 4] > 0.99


def test_rotate_random_bounded_and_zero_fill():
    x = np.ones((20, 1, 16, 16), np.float32)
    out = augment(x, {"rotate": 30}, rng(8))
    assert out.shape == x.shape
    assert np.allclose(out[:, :, 6:10, 6:10], 1.0, atol=1e-5)  # the centre stays
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-5
    corners = out[:, 0, 0, 0]
    assert (corners < 0.5).sum() >= 10  # most rotations pull zeros into the corners


def test_spatial_ops_need_images():
    with pytest.raises(DlcError, match="needs image batches"):
        augment(np.zeros((4, 10), np.float32), {"shift": 1}, rng())
    check_augment({"noise": 0.1}, [10])
    check_augment(None, [10])
    with pytest.raises(DlcError, match="data.augment.rotate needs image inputs"):
        check_augment({"rotate": 5}, [8, 8])


def test_config_defaults_and_bad_values():
    assert config(None) == {"shift": 0, "flip": "none", "rotate": 0.0, "noise": 0.0, "cutout": 0}
    with pytest.raises(DlcError, match="unknown key 'shfit'"):
        config({"shfit": 2})
    with pytest.raises(DlcError, match="data.augment.flip"):
        config({"flip": "vertical"})
    with pytest.raises(DlcError, match="data.augment.shift: expected an integer"):
        config({"shift": 1.5})
    with pytest.raises(DlcError, match="data.augment.noise"):
        config({"noise": -1})


# ---------------------------------------------------------------- schema


def spec_text(data_extra: str) -> str:
    return (
        "dlc: 1\nname: t\ninput: {shape: [1, 8, 8]}\nlayers:\n  - {type: flatten}\n"
        "  - {type: dense, units: 10}\ntask: {kind: classification}\n"
        f"data:\n  source: builtin:digits\n{data_extra}"
    )


def test_schema_accepts_augment_layout_and_folder():
    spec = load_spec_text(spec_text("  layout: nhwc\n  augment: {shift: 2, noise: 0.05}\n"))
    data = spec.data["data"]
    assert data["layout"] == "nhwc"
    assert data["augment"] == {"shift": 2, "flip": "none", "rotate": 0, "noise": 0.05,
                               "cutout": 0}
    plain = load_spec_text(spec_text("")).data["data"]
    assert plain["layout"] == "nchw" and "augment" not in plain
    folder = load_spec_text(spec_text("").replace("builtin:digits", "folder:images"))
    assert folder.data["data"]["source"] == "folder:images"


@pytest.mark.parametrize("extra, expected", [
    ("  augment: {flip: vertical}\n", "data.augment.flip"),
    ("  augment: {shfit: 2}\n", "did you mean 'shift'"),
    ("  augment: {rotate: 200}\n", "data.augment.rotate"),
    ("  layout: nwhc\n", "data.layout"),
])
def test_schema_rejects_bad_augment(extra, expected):
    with pytest.raises(SpecError) as info:
        load_spec_text(spec_text(extra), "spec.yaml")
    assert expected in str(info.value)


# ---------------------------------------------------------------- trainer wiring


def test_trainer_augments_training_batches(monkeypatch):
    from dlc.data import load_dataset
    from dlc.model.network import build_network
    from dlc.train import trainer as T

    text = spec_text("  split: {val: 0.1, test: 0.1}\n  augment: {shift: 1, noise: 0.1}\n")
    text += "train: {epochs: 1, batch_size: 256}\n"
    spec = load_spec_text(text)
    data = load_dataset(spec.data, SPECS)
    seen = []
    real = T.augment

    def spy(x, cfg, g):
        seen.append((x.shape, dict(cfg), g))
        return real(x, cfg, g)

    monkeypatch.setattr(T, "augment", spy)
    trainer = T.Trainer(build_network(spec), data)
    trainer.train_epoch()
    assert len(seen) == trainer.steps_per_epoch
    assert seen[0][0][1:] == (1, 8, 8) and seen[0][1]["shift"] == 1
    assert all(g is trainer.state.rng for _, _, g in seen)
