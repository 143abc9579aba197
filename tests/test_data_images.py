"""dlc.data image sources: folder:PATH (Pillow), npz layouts, predict inputs, augment checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import raises_one_line
from oracles import Image, needs_pillow

from dlc.data import load_arrays, load_dataset, read_inputs, stats


def make_spec(source, shape=(3, 16, 16), kind="classification", **data):
    data.setdefault("split", {"val": 0.0, "test": 0.0, "stratify": True, "seed": 0})
    data.setdefault("normalize", "none")
    return {
        "dlc": 1,
        "name": "t",
        "input": {"shape": list(shape), "dtype": "float32"},
        "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}],
        "task": {"kind": kind},
        "data": {"source": source, "x_key": "x", "y_key": "y", **data},
    }


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def image_folder(root: Path) -> Path:
    """cats: 3 RGB images of different sizes (one JPEG); dogs: 2 grayscale, 1 RGBA."""
    save(root / "cats" / "b.png", np.full((20, 30, 3), 255))
    save(root / "cats" / "a.png", np.zeros((8, 8, 3)))
    save(root / "cats" / "c.JPG", np.full((16, 16, 3), 128))
    save(root / "dogs" / "x.png", np.full((10, 12), 64))
    save(root / "dogs" / "y.png", np.full((16, 16), 200))
    rgba = np.zeros((5, 7, 4))
    rgba[..., 0], rgba[..., 3] = 255, 255
    save(root / "dogs" / "z.png", rgba)
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------- folder sources


@needs_pillow
def test_folder_rgb_resized_and_labelled(tmp_path):
    image_folder(tmp_path / "imgs")
    x, y, labels, features = load_arrays("folder:imgs", make_spec(""), tmp_path)
    assert x.shape == (6, 3, 16, 16) and x.dtype == np.float32
    assert labels == ["cats", "dogs"] and features is None
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.allclose(x[0], 0.0) and np.allclose(x[1], 1.0)  # a.png, b.png (sorted)
    assert np.allclose(x[2], 128 / 255, atol=0.02)  # the JPEG
    assert np.allclose(x[3], 64 / 255) and np.allclose(x[4], 200 / 255)  # gray -> RGB
    assert np.allclose(x[5, 0], 1.0) and np.allclose(x[5, 1:], 0.0)  # red RGBA -> RGB


@needs_pillow
def test_folder_grayscale_for_one_channel(tmp_path):
    image_folder(tmp_path / "imgs")
    x, y, _, _ = load_arrays("folder:imgs", make_spec("", shape=(1, 4, 6)), tmp_path)
    assert x.shape == (6, 1, 4, 6)
    assert np.allclose(x[1], 1.0) and np.allclose(x[3], 64 / 255)
    red = 0.299  # ITU-R 601-2 luma of pure red, Pillow's "L" conversion
    assert np.allclose(x[5], red, atol=0.01)


@needs_pillow
def test_folder_bilinear_resize_of_a_gradient(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 32), (32, 1))
    save(tmp_path / "d" / "a" / "r.png", ramp)
    save(tmp_path / "d" / "b" / "r.png", ramp[:, ::-1])
    x, _, _, _ = load_arrays("folder:d", make_spec("", shape=(1, 8, 8)), tmp_path)
    row = x[0, 0, 0]
    assert np.all(np.diff(row) > 0) and np.allclose(x[0, 0], row)  # smooth, still a ramp
    assert np.allclose(x[1, 0, 0], row[::-1], atol=1e-2)


@needs_pillow
def test_folder_end_to_end_load_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("ants", "bees"):
        for i in range(5):
            save(tmp_path / "data" / cls / f"{i}.png", rng.integers(0, 256, (20, 24, 3)))
    spec = make_spec("folder:data", split={"val": 0.2, "test": 0.2, "stratify": True, "seed": 0},
                     normalize="standard")
    ds = load_dataset(spec, tmp_path)
    assert ds.labels == ["ants", "bees"]
    assert ds.train.x.shape == (6, 3, 16, 16) and ds.train.x.dtype == np.float32
    assert len(ds.val) == 2 and len(ds.test) == 2
    assert sorted(ds.val.y.tolist()) == [0, 1] and sorted(ds.test.y.tolist()) == [0, 1]
    assert isinstance(ds.train.x, stats.Rows) and ds.train.x.raw.dtype == np.uint8  # until a batch
    assert abs(float(np.asarray(ds.train.x).mean())) < 1e-5  # normalised with training statistics


@needs_pillow
def test_folder_corrupt_image_named(tmp_path):
    image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cats" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    raises_one_line(lambda: load_arrays("folder:imgs", make_spec(""), tmp_path),
           "cannot read image imgs/cats/x.png: ")


@needs_pillow
def test_folder_empty_class_and_empty_folder(tmp_path):
    image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "birds").mkdir()
    (tmp_path / "imgs" / "birds" / "readme.txt").write_text("no images")
    raises_one_line(lambda: load_arrays("folder:imgs", make_spec(""), tmp_path),
           "imgs/birds: class folder has no PNG/JPEG images")
    (tmp_path / "empty").mkdir()
    raises_one_line(lambda: load_arrays("folder:empty", make_spec(""), tmp_path),
           "empty: no class sub-folders")
    save(tmp_path / "flat" / "a.png", np.zeros((4, 4)))
    raises_one_line(lambda: load_arrays("folder:flat", make_spec(""), tmp_path),
           "no class sub-folders (1 images lie directly in it)")


@needs_pillow
def test_folder_path_and_shape_errors(tmp_path):
    image_folder(tmp_path / "imgs")
    raises_one_line(lambda: load_arrays("folder:nope", make_spec(""), tmp_path), "data folder not found")
    (tmp_path / "f.txt").write_text("x")
    raises_one_line(lambda: load_arrays("folder:f.txt", make_spec(""), tmp_path), "is a file")
    raises_one_line(lambda: load_arrays("folder:imgs", make_spec("", shape=(64,)), tmp_path),
           "input.shape [C, H, W]", "[64]")
    raises_one_line(lambda: load_arrays("folder:imgs", make_spec("", shape=(2, 8, 8)), tmp_path),
           "C 1 (grayscale) or 3 (RGB)")
    raises_one_line(lambda: load_arrays("folder:imgs", make_spec("", kind="regression"), tmp_path),
           "regression")


@needs_pillow
def test_folder_with_known_labels(tmp_path):
    image_folder(tmp_path / "imgs")
    spec = make_spec("")
    _, y, labels, _ = load_arrays("folder:imgs", spec, tmp_path, labels=["dogs", "cats", "cows"])
    assert labels == ["dogs", "cats", "cows"] and y.tolist() == [1, 1, 1, 0, 0, 0]
    raises_one_line(lambda: load_arrays("folder:imgs", spec, tmp_path, labels=["dogs", "cows"]),
           "'cats' is not one of the class names")
    _, y, labels, _ = load_arrays("folder:imgs", make_spec("", kind="binary"), tmp_path)
    assert labels == ["cats", "dogs"] and y.shape == (6, 1)



# ---------------------------------------------------------------- npz layouts


def test_npz_nhwc_and_nchw_identical(tmp_path):
    nchw = np.random.default_rng(0).normal(size=(6, 3, 4, 5))
    y = np.arange(6) % 2
    np.savez(tmp_path / "a.npz", x=nchw, y=y)
    np.savez(tmp_path / "b.npz", x=nchw.transpose(0, 2, 3, 1), y=y)
    a = load_arrays("npz:a.npz", make_spec("", shape=(3, 4, 5)), tmp_path)[0]
    b = load_arrays("npz:b.npz", make_spec("", shape=(3, 4, 5), layout="nhwc"), tmp_path)[0]
    assert a.shape == b.shape == (6, 3, 4, 5)
    assert np.array_equal(a, b) and np.allclose(a, nchw)
    ds_a = load_dataset(make_spec("npz:a.npz", shape=(3, 4, 5), normalize="standard"), tmp_path)
    ds_b = load_dataset(make_spec("npz:b.npz", shape=(3, 4, 5), layout="nhwc",
                                  normalize="standard"), tmp_path)
    assert np.array_equal(ds_a.train.x, ds_b.train.x)


def test_npz_nhwc_grayscale_and_flat(tmp_path):
    x = np.random.default_rng(1).normal(size=(4, 6, 5))
    np.savez(tmp_path / "g.npz", x=x, y=np.arange(4) % 2)
    got = load_arrays("npz:g.npz", make_spec("", shape=(1, 6, 5), layout="nhwc"), tmp_path)[0]
    assert np.allclose(got[:, 0], x)
    flat = np.random.default_rng(2).normal(size=(4, 2, 3, 3))  # NHWC, stored flat
    np.savez(tmp_path / "f.npz", x=flat.reshape(4, -1), y=np.arange(4) % 2)
    got = load_arrays("npz:f.npz", make_spec("", shape=(3, 2, 3), layout="nhwc"), tmp_path)[0]
    assert np.allclose(got, flat.transpose(0, 3, 1, 2))


def test_npz_layout_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 8, 8, 3)), y=np.arange(4) % 2)
    raises_one_line(lambda: load_arrays("npz:a.npz", make_spec("", shape=(3, 8, 8)), tmp_path),
           "channels last", "data.layout: nhwc")
    raises_one_line(lambda: load_arrays("npz:a.npz", make_spec("", shape=(3, 4, 16), layout="nhwc"),
                               tmp_path), "samples have shape [8, 8, 3]", "needs [4, 16, 3]")
    raises_one_line(lambda: load_arrays("npz:a.npz", make_spec("", shape=(192,), layout="nhwc"), tmp_path),
           "nhwc needs input.shape [C, H, W]")


def test_builtin_digits_as_image():
    x, y, labels, _ = load_arrays("builtin:digits", make_spec("", shape=(1, 8, 8)), Path())
    assert x.shape == (1797, 1, 8, 8) and len(labels) == 10
    flat = load_arrays("builtin:digits", make_spec("", shape=(64,)), Path())[0]
    assert np.array_equal(x.reshape(1797, 64), flat)


# ---------------------------------------------------------------- predict inputs


@needs_pillow
def test_read_inputs_image_folder(tmp_path):
    save(tmp_path / "in" / "b.png", np.full((9, 9, 3), 255))
    save(tmp_path / "in" / "a.png", np.zeros((5, 5)))
    (tmp_path / "in" / "skip.txt").write_text("x")
    x = read_inputs(tmp_path / "in", None, [3, 4, 4])
    assert x.shape == (2, 3, 4, 4) and np.allclose(x[0], 0) and np.allclose(x[1], 1)
    (tmp_path / "none").mkdir()
    raises_one_line(lambda: read_inputs(tmp_path / "none", None, [3, 4, 4]), "no PNG/JPEG images")
    (tmp_path / "in" / "c.png").write_bytes(b"junk")
    raises_one_line(lambda: read_inputs(tmp_path / "in", None, [3, 4, 4]), "cannot read image in/c.png")


def test_read_inputs_npz_layouts(tmp_path):
    nchw = np.random.default_rng(3).normal(size=(5, 3, 4, 6)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=nchw)
    np.savez(tmp_path / "b.npz", x=nchw.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "one.npz", x=nchw[0].transpose(1, 2, 0))
    assert np.array_equal(read_inputs(tmp_path / "a.npz", None, [3, 4, 6]), nchw)
    assert np.array_equal(read_inputs(tmp_path / "b.npz", None, [3, 4, 6], layout="nhwc"), nchw)
    assert np.array_equal(read_inputs(tmp_path / "one.npz", None, [3, 4, 6], "nhwc"), nchw[:1])
    raises_one_line(lambda: read_inputs(tmp_path / "a.npz", None, [3, 4, 6], layout="nhwc"),
           "a.npz: samples have shape [3, 4, 6]")


# ---------------------------------------------------------------- augment checks at load time


def test_augment_checked_at_load(tmp_path):
    spec = make_spec("builtin:iris", shape=(4,), augment={"flip": "horizontal"})
    raises_one_line(lambda: load_dataset(spec, Path()), "data.augment.flip needs image inputs", "[4]")
    spec = make_spec("builtin:iris", shape=(4,), augment={"noise": 0.1})
    assert load_dataset(spec, Path()).train.x.shape[1:] == (4,)
    spec = make_spec("builtin:digits", shape=(1, 8, 8), augment={"shift": 8})
    raises_one_line(lambda: load_dataset(spec, Path()), "data.augment.shift 8 must be smaller")
    spec = make_spec("builtin:digits", shape=(1, 8, 8), augment={"cutout": 9})
    raises_one_line(lambda: load_dataset(spec, Path()), "data.augment.cutout 9 is larger")
    spec = make_spec("builtin:digits", shape=(1, 8, 8), augment={"shift": 2, "rotate": 10})
    assert load_dataset(spec, Path()).train.x.shape[1:] == (1, 8, 8)


@needs_pillow
def test_predict_names_each_image_and_takes_one_file(cli, tmp_path):
    """`dlc predict` on a folder prints each image's path first; one image file is accepted and
    answers what the folder answered for it."""
    import yaml

    from dlc.model.compile import compile_spec
    from dlc.model.spec import load_spec

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(make_spec("folder:x", shape=(3, 4, 4))))
    model = tmp_path / "m.onnx"
    model.write_bytes(compile_spec(load_spec(tmp_path / "s.yaml")).SerializeToString())
    save(tmp_path / "in" / "b.png", np.full((9, 9, 3), 255))
    save(tmp_path / "in" / "a.png", np.zeros((5, 5)))
    folder = cli("predict", model, tmp_path / "in")
    assert folder.code == 0, folder
    rows = folder.out.splitlines()
    assert rows[0].startswith("path,") and len(rows) == 3
    assert rows[1].startswith(f"{tmp_path / 'in' / 'a.png'},")
    assert rows[2].startswith(f"{tmp_path / 'in' / 'b.png'},")
    one = cli("predict", model, tmp_path / "in" / "b.png")
    assert one.code == 0 and one.out.splitlines() == [rows[0], rows[2]], one
