"""convatlas.nn.conv against torch.nn: each module is loaded with the same weights as the equivalent ``torch.nn.Conv2d``
(or a Sequential of them for SeparableConv2d) and compared forward and backward in float64 with ``check_against``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convatlas import arithmetic
from convatlas.nn import DepthwiseConv2d, PointwiseConv2d, SeparableConv2d
from helpers import check_against

F64 = torch.float64


def _compare_modules(ours: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Same outputs and same input gradients, then the same parameter gradients (by position)."""
    check_against(ours, reference, [x.requires_grad_()])
    for module in (ours, reference):
        module.zero_grad()
        module(x.detach()).square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("bias, stride", [(True, 1), (False, 2)])
def test_pointwise_matches_conv2d(bias, stride):
    ours = PointwiseConv2d(6, 4, stride=stride, bias=bias).double()
    reference = nn.Conv2d(6, 4, 1, stride=stride, bias=bias).double()
    reference.load_state_dict(ours.state_dict())  # same parameter names and shapes as nn.Conv2d
    _compare_modules(ours, reference, torch.randn(2, 6, 7, 5, dtype=F64))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, multiplier",
    [(3, 1, None, 1, 1), (5, 2, None, 1, 2), (3, 1, None, 2, 1), (4, 1, "same", 1, 1), (3, 2, 0, 1, 3)],
)
def test_depthwise_matches_grouped_conv2d(kernel, stride, padding, dilation, multiplier):
    ours = DepthwiseConv2d(4, kernel, stride=stride, padding=padding, dilation=dilation, multiplier=multiplier)
    torch_padding = dilation * (kernel - 1) // 2 if padding is None else padding
    reference = nn.Conv2d(4, 4 * multiplier, kernel, stride, torch_padding, dilation, groups=4)
    ours, reference = ours.double(), reference.double()
    reference.load_state_dict(ours.state_dict())
    _compare_modules(ours, reference, torch.randn(2, 4, 9, 8, dtype=F64))


@pytest.mark.parametrize("stride", [1, 2])
def test_separable_mobilenet_block_matches_torch_sequential(stride):
    """MobileNet v1: depthwise-BN-ReLU then pointwise-BN-ReLU, in training mode (batch statistics)."""
    ours = SeparableConv2d(
        8, 12, 3, stride=stride, dw_norm=nn.BatchNorm2d, dw_act=nn.ReLU, norm=nn.BatchNorm2d, act=nn.ReLU
    ).double()
    reference = nn.Sequential(
        nn.Conv2d(8, 8, 3, stride, 1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 1, bias=False),
        nn.BatchNorm2d(12),
        nn.ReLU(),
    ).double()
    reference.load_state_dict(dict(zip(reference.state_dict(), ours.state_dict().values(), strict=True)))
    _compare_modules(ours, reference, torch.randn(4, 8, 10, 9, dtype=F64))
    assert list(ours.state_dict())[:2] == ["depthwise.weight", "dw_norm.weight"]


def test_separable_xception_block_and_counts():
    """Xception: depthwise then pointwise with nothing between; parameters as arithmetic.separable_params counts."""
    ours = SeparableConv2d(16, 32, 3).double()
    reference = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.Conv2d(16, 32, 1, bias=False))
    reference = reference.double()
    reference.load_state_dict(dict(zip(reference.state_dict(), ours.state_dict().values(), strict=True)))
    _compare_modules(ours, reference, torch.randn(2, 16, 6, 6, dtype=F64))
    assert sum(p.numel() for p in ours.parameters()) == arithmetic.separable_params(16, 32, (3, 3), bias=False)
    assert isinstance(ours.dw_norm, nn.Identity) and isinstance(ours.act, nn.Identity)
    with torch.device("meta"):  # full-size counts without memory: Xception's middle flow, 728 channels
        big = SeparableConv2d(728, 728, 3, bias=True)
    assert sum(p.numel() for p in big.parameters()) == arithmetic.separable_params(728, 728, (3, 3))


def test_float32_and_output_shape():
    m = SeparableConv2d(3, 5, 5, stride=2, dilation=2)
    y = m(torch.randn(2, 3, 17, 16))
    expected = [arithmetic.conv_out(n, 5, stride=2, padding=4, dilation=2) for n in (17, 16)]
    assert y.dtype == torch.float32 and tuple(y.shape) == (2, 5, *expected)


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda: PointwiseConv2d(0, 3), ["PointwiseConv2d", "in_channels", "0"]),
        (lambda: DepthwiseConv2d(4, 3, stride=0), ["DepthwiseConv2d", "stride", "0"]),
        (lambda: SeparableConv2d(4, 8, kernel_size=2.5), ["kernel_size", "2.5"]),
    ],
)
def test_bad_hyperparameters(build, words):
    with pytest.raises(ValueError) as info:
        build()
    for word in words:
        assert word in str(info.value)


def test_wrong_input_channels_names_the_numbers():
    with pytest.raises(ValueError, match="input has 3 channels but weight has 4 filters"):
        DepthwiseConv2d(4)(torch.randn(1, 3, 8, 8))
