"""lightweight_conv and dynamic_conv (PyTorch path) against a slow float64 loop over the definition, plus gradcheck.

Reference: the loop ``out[b, c, t] = sum_k w[h(c), k(, t)] * x[b, c, t + k - p]`` written straight from Wu et al. 2019
(fairseq's semantics: softmax over the K taps, channel c uses head c // (C // H), p taps of padding on the left).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convatlas.ops import dynamic_conv, lightweight_conv
from helpers import check_against


def loop_lightweight(x, weight, padding_l, weight_softmax=True):
    """Slow reference: one multiply-add per (b, c, t, k)."""
    batch, channels, steps = x.shape
    heads, taps = weight.shape
    w = torch.softmax(weight, dim=-1) if weight_softmax else weight
    out = torch.zeros_like(x)
    for b in range(batch):
        for c in range(channels):
            h = c // (channels // heads)
            for t in range(steps):
                for k in range(taps):
                    s = t + k - padding_l
                    if 0 <= s < steps:
                        out[b, c, t] = out[b, c, t] + w[h, k] * x[b, c, s]
    return out


def loop_dynamic(x, weight, padding_l, weight_softmax=True):
    batch, channels, steps = x.shape
    heads, taps = weight.shape[1], weight.shape[2]
    w = torch.softmax(weight, dim=2) if weight_softmax else weight
    out = torch.zeros_like(x)
    for b in range(batch):
        for c in range(channels):
            h = c // (channels // heads)
            for t in range(steps):
                for k in range(taps):
                    s = t + k - padding_l
                    if 0 <= s < steps:
                        out[b, c, t] = out[b, c, t] + w[b, h, k, t] * x[b, c, s]
    return out


def _inputs(batch=2, channels=6, steps=7, heads=3, taps=5, dynamic=False):
    x = torch.randn(batch, channels, steps, dtype=torch.float64, requires_grad=True)
    shape = (batch, heads, taps, steps) if dynamic else (heads, taps)
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    return x, w


@pytest.mark.parametrize("padding_l", [None, 0, 4, 2])
@pytest.mark.parametrize("weight_softmax", [True, False])
def test_lightweight_equals_loop(padding_l, weight_softmax):
    x, w = _inputs()
    p = 5 // 2 if padding_l is None else padding_l
    check_against(
        lambda x, w: lightweight_conv(x, w, padding_l, weight_softmax),
        lambda x, w: loop_lightweight(x, w, p, weight_softmax),
        [x, w],
    )


@pytest.mark.parametrize("padding_l", [None, 0, 4])
@pytest.mark.parametrize("weight_softmax", [True, False])
def test_dynamic_equals_loop(padding_l, weight_softmax):
    x, w = _inputs(dynamic=True)
    p = 5 // 2 if padding_l is None else padding_l
    check_against(
        lambda x, w: dynamic_conv(x, w, padding_l, weight_softmax),
        lambda x, w: loop_dynamic(x, w, p, weight_softmax),
        [x, w],
    )


def test_heads_share_adjacent_channels():
    # C=4, H=2: channels 0, 1 use head 0 and channels 2, 3 head 1 (c // (C // H)), not c % H.
    x = torch.ones(1, 4, 5, dtype=torch.float64)
    w = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    out = lightweight_conv(x, w, padding_l=1, weight_softmax=False)
    torch.testing.assert_close(out[0, :2], torch.ones(2, 5, dtype=torch.float64))  # identity kernel
    torch.testing.assert_close(out[0, 2:, 0], torch.zeros(2, dtype=torch.float64))  # shifted: zero at t=0
    torch.testing.assert_close(out[0, 2:, 1:], torch.ones(2, 4, dtype=torch.float64))


def test_lightweight_equals_dynamic_with_constant_kernel():
    x, w = _inputs()
    wd = w.detach()[None, :, :, None].expand(2, 3, 5, 7)
    torch.testing.assert_close(lightweight_conv(x, w), dynamic_conv(x, wd))


def test_causal_output_ignores_the_future():
    x, w = _inputs(steps=9)
    y = lightweight_conv(x, w, padding_l=4)
    x2 = x.detach().clone()
    x2[..., 6:] = 100.0
    torch.testing.assert_close(lightweight_conv(x2, w, padding_l=4)[..., :6], y[..., :6])


def test_gradcheck_pytorch_path():
    x, w = _inputs(batch=1, channels=4, steps=5, heads=2, taps=3)
    assert torch.autograd.gradcheck(lambda x, w: lightweight_conv(x, w, 1), (x, w))
    x, wd = _inputs(batch=1, channels=4, steps=5, heads=2, taps=3, dynamic=True)
    assert torch.autograd.gradcheck(lambda x, w: dynamic_conv(x, w, 2), (x, wd))


def test_dropconnect_on_normalised_kernel():
    x, w = _inputs()
    x, w = x.detach(), w.detach()
    # eval (training=False) ignores dropout; p in (0, 1) with training drops taps of the softmaxed kernel and rescales.
    torch.testing.assert_close(lightweight_conv(x, w, dropout=0.5, training=False), lightweight_conv(x, w))
    torch.manual_seed(3)
    out = lightweight_conv(x, w, dropout=0.5, training=True)
    torch.manual_seed(3)
    w_drop = F.dropout(torch.softmax(w, dim=-1), p=0.5, training=True)
    assert (w_drop == 0).any() and (w_drop != 0).any()
    torch.testing.assert_close(out, loop_lightweight(x, w_drop, 2, weight_softmax=False))


def test_float32_matches_float64():
    x, w = _inputs(dynamic=True)
    out64 = dynamic_conv(x, w)
    out32 = dynamic_conv(x.float(), w.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: lightweight_conv(torch.randn(2, 6), torch.randn(3, 5)), r"x must be a Tensor\[B, C, T\].*\(2, 6\)"),
        (lambda: lightweight_conv(torch.randn(2, 6, 7), torch.randn(4, 5)), r"C=6 .* divisible by the heads H=4"),
        (lambda: lightweight_conv(torch.randn(2, 6, 7), torch.randn(3, 5), padding_l=5), r"padding_l .*\[0, 4\].*5"),
        (lambda: lightweight_conv(torch.randn(2, 6, 7), torch.randn(3, 5), dropout=1.0), r"dropout .*\[0, 1\).*1.0"),
        (lambda: lightweight_conv(torch.randn(2, 6, 7), torch.randn(3)), r"weight must be a Tensor\[H, K\]"),
        (lambda: dynamic_conv(torch.randn(2, 6, 7), torch.randn(2, 3, 5, 8)), r"match x .* in B and T"),
        (lambda: dynamic_conv(torch.randn(2, 6, 7), torch.randn(3, 5)), r"weight must be a Tensor\[B, H, K, T\]"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_input_raises_type_error():
    with pytest.raises(TypeError, match="floating-point"):
        lightweight_conv(torch.ones(1, 2, 3, dtype=torch.int64), torch.randn(1, 3))
