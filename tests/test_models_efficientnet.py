"""EfficientNet b0..b7 against torchvision and timm (references: their ``efficientnet_b*`` models and metadata)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from convatlas.models import create_model, load_weights
from convatlas.models.efficientnet import B0_STAGES, EfficientNet, round_filters, round_repeats
from helpers import check_against

# Published counts: torchvision's weight metadata (EfficientNet_B*_Weights.IMAGENET1K_V1.meta["num_params"]).
PUBLISHED = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}
# Input resolutions of the paper (Tan & Le 2019; torchvision's transforms use other sizes for b1..b7).
RESOLUTION = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}


def _count(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name).parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_equals_published(name):
    assert _count(name) == PUBLISHED[name]


def test_published_table_is_torchvision_metadata():
    for i in range(8):
        weights = torchvision.models.get_model_weights(f"efficientnet_b{i}").IMAGENET1K_V1
        assert weights.meta["num_params"] == PUBLISHED[f"efficientnet_b{i}"]


@pytest.mark.parametrize("i", range(8))
def test_resolution_is_registered(i):
    from convatlas.models import model_info

    assert model_info(f"efficientnet_b{i}").input_size == (3, RESOLUTION[i], RESOLUTION[i])


def test_compound_scaling_rule():
    # b0 table scaled by w and d, rounded: b7 (w=2.0, d=3.1) has stage channels 64, 32, 48, 80, 160, 224, 384, 640.
    widths = [round_filters(c, 2.0) for c in (32,) + tuple(s[3] for s in B0_STAGES)]
    assert widths == [64, 32, 48, 80, 160, 224, 384, 640]
    assert [round_repeats(s[4], 3.1) for s in B0_STAGES] == [4, 7, 7, 10, 10, 13, 4]
    # b2 (w=1.1): 17.6 -> 16, 26.4 -> 24, 44 -> 48, 88, 123.2 -> 120, 211.2 -> 208, 352 (torchvision's b2 widths)
    assert [round_filters(s[3], 1.1) for s in B0_STAGES] == [16, 24, 48, 88, 120, 208, 352]
    assert round_filters(3, 1.0) == 8  # never below the divisor


@pytest.mark.parametrize("source", ["torchvision", "timm"])
@pytest.mark.parametrize("variant", [0, 2])
def test_weights_from_peer_give_equal_outputs(source, variant):
    name = f"efficientnet_b{variant}"
    peer = torchvision.models.get_model(name) if source == "torchvision" else timm.create_model(name)
    peer.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that a mixed-up BN would show
        for m in peer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    ours = load_weights(create_model(name), peer.state_dict(), source=source).eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    check_against(ours, peer, [x], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_weights_of_another_variant_are_refused(source):
    with torch.device("meta"):
        peer = torchvision.models.efficientnet_b2() if source == "torchvision" else timm.create_model("efficientnet_b2")
        model = create_model("efficientnet_b0")
    with pytest.raises(ValueError, match=r"missing tensors|has shape"):
        load_weights(model, peer.state_dict(), source=source)


def test_forward_backward_small_input_and_feature_info():
    model = create_model("efficientnet_b0", num_classes=7, in_channels=1)
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_stages(x)
    assert len(feats) == len(model.feature_info)
    for f, info in zip(feats, model.feature_info, strict=True):
        assert f.shape == (2, info["num_chs"], 32 // info["reduction"], 32 // info["reduction"])
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 1280)


def test_stochastic_depth_rises_to_drop_path_rate():
    model = EfficientNet(drop_path_rate=0.2)
    rates = [b.drop_path.p for stage in model.stages for b in stage if b.use_residual]
    # p_i = 0.2 * i / 16 over the 16 blocks of b0; the last residual block is block 14 (block 15 changes width).
    assert rates == sorted(rates) and rates[0] == pytest.approx(0.2 * 2 / 16)
    assert rates[-1] == pytest.approx(0.2 * 14 / 16)


def test_fx_trace_matches_eager():
    model = create_model("efficientnet_b0", num_classes=5).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(traced(x), model(x))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="width_mult"):
        EfficientNet(width_mult=0)
    with pytest.raises(ValueError, match="drop_path_rate"):
        EfficientNet(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="drop_rat"):
        create_model("efficientnet_b0", drop_rat=0.1)
