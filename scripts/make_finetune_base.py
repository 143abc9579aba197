"""Makes the fine-tuning example's bundled files (specs/digits_finetune*.yaml), offline and
deterministic, from dlc's own copy of scikit-learn's digits (dlc/data/builtin/digits.npz):

- specs/data/digits_base.onnx: a small PyTorch CNN pretrained on the digits 0-4 (every such
  image), exported by torch.onnx.export at opset 17 with a dynamic batch axis and two outputs,
  `logits` (its 5 classes) and `features` (the 64 values its classifier reads: where the
  example cuts it);
- specs/data/digits_5to9/<digit>/<index>.png: the first PER_CLASS images of each digit 5-9,
  8x8 grayscale PNGs with the 0-16 values scaled to 0-255 (what the base was trained on: x / 16,
  which dlc's folder loader gives back as png / 255 up to rounding).

Run from the repository root: python scripts/make_finetune_base.py (needs torch and Pillow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "specs" / "data" / "digits_base.onnx"
FOLDER = ROOT / "specs" / "data" / "digits_5to9"
PER_CLASS = 80
EPOCHS, LR, SEED = 30, 0.003, 0


class BaseCNN(torch.nn.Module):
    """conv 16 -> conv 32 -> maxpool -> dense 64 (`features`) -> 5 logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32 * 4 * 4, 64)
        self.fc2 = torch.nn.Linear(64, 5)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)
        features = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(features), features


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(ROOT / "dlc" / "data" / "builtin" / "digits.npz")
    return data["x"].reshape(-1, 1, 8, 8), data["y"]


def pretrain(x: np.ndarray, y: np.ndarray) -> BaseCNN:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    net = BaseCNN()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xs, ys = torch.from_numpy(x.astype(np.float32) / 16), torch.from_numpy(y)
    order = np.random.default_rng(SEED)
    for _ in range(EPOCHS):
        for idx in np.array_split(order.permutation(len(xs)), len(xs) // 64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xs[idx])[0], ys[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(xs)[0].argmax(1) == ys).float().mean().item()
    print(f"pretrained on {len(xs)} images of the digits 0-4: training accuracy {accuracy:.3f}")
    return net


def export(net: BaseCNN) -> None:
    torch.onnx.export(net, torch.zeros(1, 1, 8, 8), str(BASE), input_names=["image"],
                      output_names=["logits", "features"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}, "features": {0: "N"}})
    print(f"wrote {BASE.relative_to(ROOT)} ({BASE.stat().st_size:,} bytes)")


def write_folder(x: np.ndarray, y: np.ndarray) -> None:
    for digit in range(5, 10):
        folder = FOLDER / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(y == digit)[:PER_CLASS]:
            pixels = np.round(x[i, 0].astype(np.float64) * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png", optimize=True)
    print(f"wrote {5 * PER_CLASS} PNGs under {FOLDER.relative_to(ROOT)}")


def main() -> None:
    x, y = digits()
    export(pretrain(x[y < 5], y[y < 5]))
    write_folder(x, y)


if __name__ == "__main__":
    main()
