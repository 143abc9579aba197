"""bench/grad_forms.py's candidate gradient forms compute what dlc's forms compute, so that the
figures it reports compare like with like (each case checks this before timing; here at the
cases' own ResNet-20 shapes, and the sub-pixel input gradient at sizes its case does not reach)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import grad_forms  # noqa: E402


@pytest.mark.parametrize("case", ["conv_dw_8x8", "conv_dx_s2", "conv_dx_1x1_s2",
                                  "channel_sums_16x16", "gather_dw", "maxpool_dx", "lstm_gates"])
def test_candidate_forms_match_dlc(case):
    inputs, built = grad_forms.models(case)
    assert len(built) >= 2
    sessions = {v: grad_forms.session(m, 1) for v, m in built.items()}
    grad_forms.check_same(case, sessions, inputs)


@pytest.mark.parametrize("stride,pad", [(2, 0), (2, 1), (1, 0)])
def test_weight_gradient_candidates_at_other_strides_and_pads(stride, pad):
    """The one-hot Conv and gathered-tap forms of dW against dlc's, a small odd-sized conv."""
    inputs, variants = grad_forms.conv_dw(3, 7, batch=2, stride=stride, pad=pad)(
        np.random.default_rng(0))
    sessions = {v: grad_forms.session(grad_forms.graph(inputs, f, v), 1)
                for v, f in variants.items()}
    grad_forms.check_same("conv_dw", sessions, inputs)


@pytest.mark.parametrize("side,stride", [(5, 1), (7, 2), (4, 2)])
def test_im2col_forms_match_the_conv_node(side, stride):
    """The im2col lowering and its two alternatives against the Conv node: output, dX, dW, dB."""
    inputs, variants = grad_forms.conv_im2col(3, 4, side, batch=2, stride=stride)(
        np.random.default_rng(0))
    sessions = {v: grad_forms.session(grad_forms.graph(inputs, f, v), 1)
                for v, f in variants.items()}
    assert len(sessions) == 4
    grad_forms.check_same("im2col", sessions, inputs)


def test_check_same_catches_a_wrong_form():
    """The check the test above relies on fails on a form off by 0.1%."""
    inputs, built = grad_forms.models("channel_sums_8x8")
    wrong = grad_forms.graph(inputs, lambda b, x: [b.ReduceSum(
        b.Mul(x, b.const(np.array(1.001, np.float32))), b.const([0, 2, 3]), keepdims=0)], "off")
    sessions = {"dlc": grad_forms.session(built["reducesum_023"], 1),
                "off": grad_forms.session(wrong, 1)}
    with pytest.raises(AssertionError, match="off differs"):
        grad_forms.check_same("channel_sums_8x8", sessions, inputs)


def test_phase_taps_of_a_stride_2_3x3_conv():
    """Input row 2q reads dY row q through kernel row 1; row 2q + 1 reads rows q (kernel row 2)
    and q + 1 (kernel row 0)."""
    sel, lo = grad_forms.phase_taps(3, 2, 1)
    assert lo == 0
    np.testing.assert_array_equal(sel, [[[0, 1, 0], [0, 0, 0]], [[0, 0, 1], [1, 0, 0]]])


@pytest.mark.parametrize("side,k,stride,pad", [(7, 3, 2, 1), (9, 3, 3, 0), (8, 1, 2, 0)])
def test_subpixel_input_gradient_is_conv_transpose(side, k, stride, pad):
    """Odd sizes (the DepthToSpace output cut back), a stride 3 and a 1x1 kernel."""
    out = (side + 2 * pad - k) // stride + 1
    rng = np.random.default_rng(0)
    inputs = {"g": rng.standard_normal((2, 4, out, out), np.float32),
              "w": rng.standard_normal((4, 3, k, k), np.float32)}
    extra = side - ((out - 1) * stride + k - 2 * pad)
    built = {"conv_transpose": lambda b, g, w: [b.ConvTranspose(
                 g, w, strides=[stride] * 2, pads=[pad] * 4, output_padding=[extra] * 2)],
             "subpixel": lambda b, g, w: [grad_forms._subpixel(b, g, w, [4, 3, k], stride, pad,
                                                               (out, side))]}
    sessions = {v: grad_forms.session(grad_forms.graph(inputs, f, v), 1)
                for v, f in built.items()}
    grad_forms.check_same("subpixel", sessions, inputs)
    assert sessions["subpixel"].run(None, inputs)[0].shape == (2, 3, side, side)


@pytest.mark.parametrize("case", ["batchnorm_8x8", "relu_dx"])
def test_batchnorm_and_relu_candidates_match_dlc(case):
    """batchnorm's closed form by hand (and its variants) and ReLU's two gradient forms."""
    test_candidate_forms_match_dlc(case)


def test_layernorm_candidates_match_dlc():
    """layernorm's closed form by hand, its variants and the exported-model rule (recompute)
    against dlc's lowering and rule, at the Transformer's shape."""
    test_candidate_forms_match_dlc("layernorm_64x256")
