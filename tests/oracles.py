"""Optional test oracles. Only the tests that use one are marked with its `needs_*` mark, so the
rest of a file still runs where the oracle is not installed (a file-level importorskip would
silently skip them all)."""

from __future__ import annotations

import pytest

try:
    import torch
    F = torch.nn.functional
except ImportError:  # the `torch` extra is not installed
    torch = F = None

needs_torch = pytest.mark.skipif(torch is None,
                                 reason="needs the PyTorch oracle: pip install 'dlc[torch]'")

try:
    from PIL import Image
except ImportError:  # the `images` extra is not installed
    Image = None

needs_pillow = pytest.mark.skipif(Image is None,
                                  reason="needs Pillow for image files: pip install 'dlc[images]'")
