"""ResNeXt: the grouped-convolution block equals the paper's aggregated form, and the layout follows Table 1.

Reference for the block: the paper's Fig. 3(a), written out as a slow float64 loop over ``C`` explicit branches
``T_i`` (1x1 -> 3x3 -> 1x1, with the weights sliced from our grouped block), summed, then the shortcut:
``y = relu(bn3(sum_i T_i(x)) + shortcut(x))``. Forward and input gradients are compared with ``check_against``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convatlas.models import create_model
from convatlas.models.resnext import Bottleneck
from convatlas.nn.layers import ConvNormAct
from helpers import check_against, randomize


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d, sl: slice, training: bool) -> torch.Tensor:
    """Batch norm of the channels ``sl`` only, with the block's own parameters and statistics."""
    stats = (None, None) if training else (bn.running_mean[sl], bn.running_var[sl])
    return F.batch_norm(x, *stats, bn.weight[sl], bn.bias[sl], training=training, eps=bn.eps)


def aggregated_form(block: Bottleneck, x: torch.Tensor, training: bool) -> torch.Tensor:
    """``relu(bn3(sum_{i<C} T_i(x)) + shortcut(x))`` with ``C`` explicit branches of width ``d``."""
    conv1, bn1 = block.conv1[0], block.conv1[1]
    conv2, bn2 = block.conv2[0], block.conv2[1]
    conv3, bn3 = block.conv3[0], block.conv3[1]
    groups = conv2.groups
    d = conv2.out_channels // groups
    total = 0
    for i in range(groups):
        sl = slice(i * d, (i + 1) * d)
        h = F.relu(_bn(F.conv2d(x, conv1.weight[sl]), bn1, sl, training))  # 1x1: in -> d
        h = F.conv2d(h, conv2.weight[sl], stride=conv2.stride, padding=1)  # 3x3: d -> d, branch i's filters
        h = F.relu(_bn(h, bn2, sl, training))
        total = total + F.conv2d(h, conv3.weight[:, sl])  # 1x1: d -> out, summed over branches
    out = _bn(total, bn3, slice(None), training)
    if isinstance(block.downsample, torch.nn.Identity):
        shortcut = x
    else:
        conv, bn = block.downsample[0], block.downsample[1]
        shortcut = _bn(F.conv2d(x, conv.weight, stride=conv.stride), bn, slice(None), training)
    return F.relu(out + shortcut)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("in_channels", "stride"), [(64, 1), (32, 2)], ids=["identity-shortcut", "projection"])
def test_grouped_block_equals_sum_of_explicit_branches(training, in_channels, stride):
    groups, d = 8, 4
    out_channels = 64
    block = randomize(Bottleneck(in_channels, out_channels, width=groups * d, groups=groups, stride=stride)).double()
    block.train(training)
    x = torch.randn(2, in_channels, 9, 9, dtype=torch.float64, requires_grad=True)
    check_against(block, lambda x: aggregated_form(block, x, training), [x])


def test_layout_follows_paper_table_1():
    # ResNeXt-50 (32x4d), Table 1: conv2 stage [1x1, 128; 3x3, 128, C=32; 1x1, 256] x3, doubling each stage.
    model = create_model("resnext50_32x4d")
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    for i, stage in enumerate(model.stages):
        conv2 = stage[0].conv2[0]
        assert (conv2.in_channels, conv2.groups, conv2.stride) == (128 * 2**i, 32, (1, 1) if i == 0 else (2, 2))
        assert stage[-1].conv3[0].out_channels == 256 * 2**i
    wide = create_model("resnext101_32x8d")
    assert [len(s) for s in wide.stages] == [3, 4, 23, 3] and wide.stages[0][0].conv2[0].in_channels == 256


def test_first_stage_uses_a_projection_shortcut_only_where_shapes_change():
    model = create_model("resnext50_32x4d", num_classes=4)
    projections = [
        name for name, m in model.named_modules() if name.endswith("downsample") and isinstance(m, ConvNormAct)
    ]
    assert projections == [f"stages.{i}.0.downsample" for i in range(4)]
