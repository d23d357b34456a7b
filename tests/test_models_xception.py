"""Xception against the paper's count and timm's ``legacy_xception`` (reference: timm, same graph and weights)."""

from __future__ import annotations

import pytest
import timm
import torch

from convatlas.models import create_model, load_weights, model_info
from convatlas.models.xception import XceptionBlock
from convatlas.nn import SeparableConv2d
from helpers import check_against

# Chollet 2017, Table 3: "Xception 22,855,952 parameters". Keras' applications.Xception summary: "Total params:
# 22,910,480, Trainable params: 22,855,952, Non-trainable params: 54,528" (the BatchNorm moving mean and variance).
PUBLISHED = 22_855_952
KERAS_TOTAL, KERAS_NON_TRAINABLE = 22_910_480, 54_528


def test_parameter_count_equals_paper():
    with torch.device("meta"):
        model = create_model("xception")
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED
    # Keras counts BatchNorm's two running statistics as weights too: same BatchNorm layers, same widths.
    running = sum(2 * m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert running == KERAS_NON_TRAINABLE and PUBLISHED + running == KERAS_TOTAL
    with torch.device("meta"):
        assert sum(p.numel() for p in timm.create_model("legacy_xception").parameters()) == PUBLISHED


def test_thirty_six_convolutions_in_fourteen_modules():
    # The paper: "36 convolutional layers ... structured into 14 modules" (separable convs and the two stem convs;
    # the 1x1 shortcut convolutions are not counted).
    model = create_model("xception")
    blocks = list(model.blocks)
    separable = sum(len(b.units) for b in blocks) + 2  # + the two of the exit flow
    units = [unit for b in blocks for unit in b.units]
    assert all(isinstance(m, SeparableConv2d) for m in [unit[1] for unit in units] + list(model.exit))
    # Nothing between the depthwise and pointwise convolutions (the paper's finding); BatchNorm after the pointwise.
    assert all(len(unit[1].dw) == 1 and isinstance(unit[1].pw[1], torch.nn.BatchNorm2d) for unit in units)
    assert separable + 2 == 36
    assert len(blocks) + 2 == 14  # 12 residual modules, the stem and the exit convolutions
    assert model_info("xception").input_size == (3, 299, 299)


@pytest.mark.parametrize("size", [32, 71])
def test_weights_from_timm_give_equal_outputs(size):
    peer = timm.create_model("legacy_xception")
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine terms
        for m in peer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    peer.eval()
    ours = load_weights(create_model("xception"), peer.state_dict(), source="timm").eval()
    x = torch.randn(2, 3, size, size, requires_grad=True)
    check_against(ours, peer, [x], atol=1e-5, rtol=1e-5)


def test_no_torchvision_counterpart():
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        load_weights(create_model("xception", num_classes=2), {}, source="torchvision")


def test_block_matches_float64_formula():
    # Reference: an entry-flow block written out with torch.nn.functional in float64.
    block = XceptionBlock(4, 8, reps=2, stride=2).double().eval()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    f = torch.nn.functional

    def bn(x, m):
        return f.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    def reference(x):
        y = x
        for unit in block.units:
            sep = unit[1]  # the shared SeparableConv2d: dw = (depthwise conv,), pw = (pointwise conv, BatchNorm)
            y = f.conv2d(f.relu(y), sep.dw[0].weight, padding=1, groups=y.shape[1])
            y = bn(f.conv2d(y, sep.pw[0].weight), sep.pw[1])
        y = f.max_pool2d(y, 3, 2, padding=1)
        return y + bn(f.conv2d(x, block.shortcut[0].weight, stride=2), block.shortcut[1])

    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    check_against(block, reference, [x])


def test_forward_backward_small_input_and_feature_info():
    model = create_model("xception", num_classes=3, in_channels=1)
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_stages(x)
    # Unpadded stem convolutions: 64 -> 31 -> 29, then each stride-2 stage gives ceil(n / 2): 15, 8, 4, 2.
    assert [tuple(t.shape[1:]) for t in feats] == [(64, 29, 29), (128, 15, 15), (256, 8, 8), (728, 4, 4), (2048, 2, 2)]
    assert [t.shape[1] for t in feats] == [i["num_chs"] for i in model.feature_info]
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]


def test_paper_input_gives_10x10_features():
    model = create_model("xception", num_classes=0).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 299, 299)).shape == (1, 2048, 10, 10)


def test_fx_trace_matches_eager():
    model = create_model("xception", num_classes=5).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(traced(x), model(x))
