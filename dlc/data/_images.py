"""Image data: `folder:PATH` sources (one sub-folder of PNG/JPEG files per class, read with
Pillow), folders of images for `dlc predict`, and the NHWC -> NCHW layout of image arrays.

Images become float32 [C, H, W] in [0, 1]: grayscale when the model's input has 1 channel, RGB
when it has 3, resized (bilinear) to the input's H x W. Pillow is imported lazily."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dlc.data._targets import _encode_categorical
from dlc.errors import DlcError, optional_module

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("nchw", "nhwc")

Raw = tuple[np.ndarray, "np.ndarray | None", "list[str] | None", "list[str] | None"]


def _pil():
    return optional_module("PIL.Image", "folder sources need Pillow: pip install 'dlc[images]'",
                           "folder sources")


def image_shape(shape: Sequence[int] | None, what: str) -> tuple[int, int, int]:
    """(C, H, W) of an image input; DlcError unless input.shape is [1|3, H, W]."""
    dims = [int(d) for d in shape or []]
    if len(dims) != 3 or dims[0] not in (1, 3):
        raise DlcError(
            f"{what}: images need input.shape [C, H, W] with C 1 (grayscale) or 3 (RGB), "
            f"found {dims}"
        )
    return dims[0], dims[1], dims[2]


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files directly in `folder`, sorted by name (hidden files skipped)."""
    found = [
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: p.name)


def pixels_to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (what every model input holds)."""
    return x.astype(np.float32) / np.float32(255.0)


def read_image(path: Path, shape: tuple[int, int, int], display: str) -> np.ndarray:
    """One image file -> uint8 [C, H, W]; DlcError naming `display` if unreadable."""
    pil = _pil()
    c, h, w = shape
    try:
        with pil.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            img = img.resize((w, h), pil.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, pil.DecompressionBombError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DlcError(f"cannot read image {display}: {reason}") from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def read_images(files: list[Path], shape: tuple[int, int, int], names: list[str]) -> np.ndarray:
    """Several image files -> uint8 [n, C, H, W] (a quarter of float32's memory: a training
    split stays uint8 until its batches are gathered); names[i] is how file i is named in
    errors. Decoded in a thread pool (Pillow releases the GIL while it decodes and resizes); an
    error names the first unreadable file in order."""
    x = np.empty((len(files), *shape), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, arr in enumerate(pool.map(read_image, files, [shape] * len(files), names)):
            x[i] = arr
    return x


def _class_dirs(path: Path, display: str) -> list[Path]:
    dirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not dirs:
        loose = len(image_files(path))
        hint = f" ({loose} images lie directly in it)" if loose else ""
        raise DlcError(
            f"{display}: no class sub-folders{hint}; a folder source needs one sub-folder of "
            "PNG/JPEG images per class"
        )
    return sorted(dirs, key=lambda p: p.name)


def _folder_files(path: Path, display: str) -> tuple[list[Path], list[str]]:
    """Every image file of every class folder, and the class name of each."""
    files: list[Path] = []
    classes: list[str] = []
    for d in _class_dirs(path, display):
        found = image_files(d)
        if not found:
            raise DlcError(f"{display}/{d.name}: class folder has no PNG/JPEG images")
        files += found
        classes += [d.name] * len(found)
    return files, classes


def load_folder(
    path: Path, display: str, spec: dict, known: list[str] | None, strict: bool
) -> Raw:
    """(x uint8 [n, C, H, W], y, labels, None) from a folder of class sub-folders."""
    kind = (spec.get("task") or {}).get("kind", "classification")
    if kind == "regression":
        raise DlcError(
            f"folder:{display}: folder sources give class labels; a regression task needs a "
            "csv or npz source"
        )
    shape = image_shape((spec.get("input") or {}).get("shape"), f"folder:{display}")
    files, classes = _folder_files(path, display)
    y, labels = _encode_categorical(
        classes, kind, known, strict, lambda i: f"folder:{display}: class folder"
    )
    names = [f"{display}/{cls}/{p.name}" for p, cls in zip(files, classes)]
    return read_images(files, shape, names), y, labels, None


def image_paths(path: Path) -> list[str] | None:
    """The image files `dlc predict` reads from `path` (a folder: its PNG/JPEG files, sorted by
    name; one image file), as paths to print beside their predictions; None for other inputs."""
    path = Path(path)
    if path.is_dir():
        return [str(path / p.name) for p in image_files(path)]
    return [str(path)] if path.suffix.lower() in IMAGE_SUFFIXES else None


def read_image_inputs(path: Path, input_shape: Sequence[int]) -> np.ndarray:
    """Every PNG/JPEG file directly in the folder `path` (sorted by name), or the one image file
    `path` -> float32 [n, C, H, W]."""
    shape = image_shape(input_shape, f"input {path.name}")
    if not path.is_dir():
        return pixels_to_float(read_images([path], shape, [path.name]))
    files = image_files(path)
    if not files:
        raise DlcError(f"input folder {path}: no PNG/JPEG images in it")
    return pixels_to_float(read_images(files, shape, [f"{path.name}/{p.name}" for p in files]))


def to_nchw(x: np.ndarray, input_shape: Sequence[int], layout: str, what: str) -> np.ndarray:
    """Samples x [n, ...] in `layout` -> channels-first; nchw arrays pass through unchanged.

    nhwc accepts per-sample shapes [H, W, C], flat [H*W*C] (pixel-major rows) and, for one
    channel, [H, W]; input.shape must be [C, H, W]."""
    if layout not in LAYOUTS:
        raise DlcError(f"data.layout: expected nchw or nhwc, found {layout!r}")
    dims = [int(d) for d in input_shape]
    per = [int(d) for d in x.shape[1:]]
    if layout == "nchw":
        if len(dims) == 3 and per == [dims[1], dims[2], dims[0]] and per != dims:
            raise DlcError(
                f"{what}: samples have shape {per}, channels last, but input.shape {dims} is "
                "channels first; set data.layout: nhwc"
            )
        return x
    if len(dims) != 3:
        raise DlcError(f"data.layout nhwc needs input.shape [C, H, W], found {dims}")
    c, h, w = dims
    if per in ([h, w, c], [h * w * c]) or (c == 1 and per == [h, w]):
        return np.ascontiguousarray(x.reshape(len(x), h, w, c).transpose(0, 3, 1, 2))
    raise DlcError(
        f"{what}: samples have shape {per}; data.layout nhwc with input.shape {dims} "
        f"needs [{h}, {w}, {c}]"
    )
