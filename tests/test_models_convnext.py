"""ConvNeXt against torchvision and timm (references: their ``convnext_*`` models and torchvision's metadata)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from convatlas.models import create_model, load_weights
from convatlas.models.convnext import ConvNeXt, ConvNeXtBlock
from helpers import check_against

# Published counts: torchvision's weight metadata (ConvNeXt_*_Weights.IMAGENET1K_V1.meta["num_params"]).
PUBLISHED = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_published(name):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta["num_params"] == PUBLISHED[name]


def _randomize(model: torch.nn.Module) -> None:
    """Give every 1-d tensor (norms, biases, layer scales) random values: defaults of 1, 0 and 1e-6 hide mix-ups."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or p.shape[1:] == (1, 1):
                p.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_weights_from_peer_give_equal_outputs(source):
    peer = torchvision.models.convnext_tiny() if source == "torchvision" else timm.create_model("convnext_tiny")
    _randomize(peer)
    peer.eval()
    ours = load_weights(create_model("convnext_tiny"), peer.state_dict(), source=source).eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    check_against(ours, peer, [x], atol=1e-5, rtol=1e-5)


def test_block_matches_float64_formula():
    # Reference: the block written out with torch.nn.functional in float64 (paper, Fig. 4).
    block = ConvNeXtBlock(8, layer_scale=0.5).double().eval()
    with torch.no_grad():
        block.gamma.uniform_(-1, 1)

    def reference(x):
        y = torch.nn.functional.conv2d(x, block.dwconv.weight, block.dwconv.bias, padding=3, groups=8)
        y = y.permute(0, 2, 3, 1)
        y = torch.nn.functional.layer_norm(y, (8,), block.norm.weight, block.norm.bias, eps=1e-6)
        y = torch.nn.functional.linear(y, block.fc1.weight, block.fc1.bias)
        y = 0.5 * y * (1 + torch.erf(y / 2**0.5))  # exact GELU
        y = torch.nn.functional.linear(y, block.fc2.weight, block.fc2.bias) * block.gamma
        return x + y.permute(0, 3, 1, 2)

    x = torch.randn(2, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    check_against(block, reference, [x])


def test_defaults_layer_scale_and_stochastic_depth():
    small = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64))
    assert all(torch.all(b.gamma == 1e-6) for stage in small.stages for b in stage.blocks)
    with torch.device("meta"):
        model = create_model("convnext_small")
    blocks = [b for stage in model.stages for b in stage.blocks]
    rates = [b.drop_path.p for b in blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.4)  # linear from 0 to drop_path_rate (paper: 0.4 for S)
    assert rates == sorted(rates)


def test_forward_backward_small_input_and_feature_info():
    model = create_model("convnext_tiny", num_classes=4, in_channels=2)
    x = torch.randn(2, 2, 32, 32)
    out = model(x)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_stages(x)
    assert [f.shape for f in feats] == [
        (2, i["num_chs"], 32 // i["reduction"], 32 // i["reduction"]) for i in model.feature_info
    ]
    model.reset_classifier(0)
    assert model(x).shape == (2, 768)


def test_odd_sizes_are_padded_before_downsampling():
    # 28x28 (Fashion-MNIST): 7 -> 4 -> 2 -> 1 with bottom/right padding; flooring would give 7 -> 3 -> 1 -> error.
    model = create_model("convnext_tiny", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    assert [f.shape[-1] for f in model.forward_stages(x)] == [7, 4, 2, 1]
    # Reference for one odd map: zero padding then the 2x2 stride-2 convolution equals conv2d with that padding.
    down = model.stages[1].downsample
    y = torch.randn(1, 96, 7, 5, dtype=torch.float64, requires_grad=True)
    down = down.double()

    def reference(t):
        t = torch.nn.functional.layer_norm(t.permute(0, 2, 3, 1), (96,), down.norm.weight, down.norm.bias, 1e-6)
        t = torch.nn.functional.pad(t.permute(0, 3, 1, 2), (0, 1, 0, 1))
        return torch.nn.functional.conv2d(t, down.conv.weight, down.conv.bias, stride=2)

    check_against(down, reference, [y])
    assert down(y).shape == (1, 192, 4, 3)


def test_fx_trace_matches_eager():
    model = create_model("convnext_tiny", num_classes=3).eval()
    traced = torch.fx.symbolic_trace(model)
    for side in (32, 28):  # the odd-size padding is computed at call time
        x = torch.randn(1, 3, side, side)
        torch.testing.assert_close(traced(x), model(x))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"ConvNeXt: dims must hold 2 values \(one per entry of depths\), got 3"):
        ConvNeXt(depths=(1, 1), dims=(8, 16, 32))
    with pytest.raises(ValueError, match="drop_path_rate"):
        ConvNeXt(drop_path_rate=1.5)
