"""MobileNet v1/v2/v3 blocks against the papers' equations, written as float64 functional code.

References: v1's depthwise-separable layer as a per-channel loop of 3x3 convolutions (each channel with its own
filter) followed by a 1x1 ``einsum``; v2/v3's inverted residual as expand -> depthwise -> (SE) -> linear projection
(+ x), with hard-swish ``x * relu6(x + 3) / 6`` and hard-sigmoid ``relu6(x + 3) / 6`` spelled out. Whole-model
equivalence with torchvision and timm is in ``test_models_interop.py``; counts in ``test_models_params.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convatlas.models import create_model
from convatlas.models.mobilenet import InvertedResidual
from convatlas.nn import SeparableConv2d
from helpers import check_against, randomize


def _bn(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return (x - norm.running_mean[:, None, None]) * scale[:, None, None] + norm.bias[:, None, None]


def _relu6(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 6)


def _hardswish(x: torch.Tensor) -> torch.Tensor:
    return x * _relu6(x + 3) / 6


def depthwise_separable_reference(block: SeparableConv2d, x: torch.Tensor) -> torch.Tensor:
    dw, pw = block.dw[0], block.pw[0]
    stride = dw.stride[0]
    per_channel = [F.conv2d(x[:, c : c + 1], dw.weight[c : c + 1], stride=stride, padding=1) for c in range(x.shape[1])]
    h = _relu6(_bn(torch.cat(per_channel, 1), block.dw[1]))
    h = torch.einsum("oc,nchw->nohw", pw.weight[:, :, 0, 0], h)  # 1x1 pointwise
    return _relu6(_bn(h, block.pw[1]))


def inverted_residual_reference(block: InvertedResidual, x: torch.Tensor, act) -> torch.Tensor:
    h = x
    if not isinstance(block.expand, nn.Identity):
        h = act(_bn(F.conv2d(h, block.expand[0].weight), block.expand[1]))
    dw = block.dw[0]
    h = F.conv2d(h, dw.weight, stride=dw.stride, padding=dw.padding, groups=dw.groups)
    h = act(_bn(h, block.dw[1]))
    if not isinstance(block.se, nn.Identity):
        s = h.mean((2, 3), keepdim=True)
        s = torch.relu(F.conv2d(s, block.se.fc1.weight, block.se.fc1.bias))
        h = h * _relu6(F.conv2d(s, block.se.fc2.weight, block.se.fc2.bias) + 3) / 6
    h = _bn(F.conv2d(h, block.project[0].weight), block.project[1])  # linear bottleneck: no activation
    return h + x if block.use_residual else h


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_separable_equals_per_channel_loop(stride):
    # The v1 blocks as MobileNetV1 builds them (width 0.25: 8 -> 16 at stride 1, 16 -> 32 at stride 2): the shared
    # SeparableConv2d with BN and ReLU6 after both convolutions.
    block = create_model("mobilenet_v1", width_mult=0.25).features[stride]
    assert isinstance(block, SeparableConv2d) and block.dw[0].stride == (stride, stride)
    block = randomize(block).double()
    x = torch.randn(2, block.in_channels, 9, 9, dtype=torch.float64, requires_grad=True)
    check_against(block, lambda x: depthwise_separable_reference(block, x), [x])


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "expand", "kernel", "stride", "se", "act", "ref_act"),
    [
        (8, 8, 48, 3, 1, False, nn.ReLU6, _relu6),  # v2, residual
        (8, 16, 48, 3, 2, False, nn.ReLU6, _relu6),  # v2, downsampling, no residual
        (16, 16, 16, 3, 1, False, nn.ReLU6, _relu6),  # t = 1: no expansion layer
        (24, 24, 72, 5, 1, True, nn.Hardswish, _hardswish),  # v3 with SE and hard-swish
        (16, 24, 64, 5, 2, True, nn.ReLU, torch.relu),  # v3 with SE and ReLU
    ],
)
def test_inverted_residual_equals_the_papers_block(in_ch, out_ch, expand, kernel, stride, se, act, ref_act):
    block = InvertedResidual(in_ch, out_ch, expand_channels=expand, kernel_size=kernel, stride=stride, act=act, se=se)
    block = randomize(block).double()
    assert isinstance(block.expand, nn.Identity) == (expand == in_ch)
    x = torch.randn(2, in_ch, 9, 9, dtype=torch.float64, requires_grad=True)
    check_against(block, lambda x: inverted_residual_reference(block, x, ref_act), [x])


def test_v2_residuals_and_linear_bottlenecks_follow_table_2():
    model = create_model("mobilenet_v2")
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    # A residual joins every repeat after the first of each row of Table 2: sum(n - 1) = 10.
    assert sum(b.use_residual for b in blocks) == 10
    assert all(len(b.project) == 2 for b in blocks)  # conv and BN, no activation


@pytest.mark.parametrize(("name", "hidden"), [("mobilenet_v3_large", 1280), ("mobilenet_v3_small", 1024)])
def test_v3_head_pools_before_the_last_layer(name, hidden):
    model = create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert model.forward_head(features, pre_logits=True).shape == (1, hidden)
        # Pooling first: the head sees only the channel means, so permuting positions changes nothing.
        flipped = model.forward_head(features.flip(-1).flip(-2))
        torch.testing.assert_close(flipped, model.forward_head(features))


def test_v1_width_multiplier_thins_every_layer():
    full, half = create_model("mobilenet_v1"), create_model("mobilenet_v1", width_mult=0.5)
    widths = [f["num_chs"] for f in full.feature_info]
    assert [f["num_chs"] for f in half.feature_info] == [w // 2 for w in widths]
