"""U-Net against the paper (Ronneberger et al. 2015, Fig. 1), a published Keras count and a float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convatlas.models import create_model, model_info
from convatlas.models.unet import UNet, center_crop, output_size
from helpers import check_against

# Published count of the paper's network (in 1 channel, 2 classes): the Keras model.summary() "Total params:
# 31,030,658" with output (None, 388, 388, 2) in the blog post "Model Implementation: Original U-Net in Keras /
# Tensorflow 2.3" (2020-08-30); the same number is reported for the authors' tf_unet defaults (5 layers, 64 roots).
PUBLISHED = 31_030_658


def _paper_count(in_channels: int, num_classes: int, widths=(64, 128, 256, 512, 1024)) -> int:
    """The count by formula: (k^2 C_in + 1) C_out per convolution, transposed ones included."""

    def conv(c_in: int, c_out: int, k: int) -> int:
        return (k * k * c_in + 1) * c_out

    total, prev = 0, in_channels
    for w in widths:
        total += conv(prev, w, 3) + conv(w, w, 3)
        prev = w
    for w in reversed(widths[:-1]):
        total += conv(prev, w, 2) + conv(2 * w, w, 3) + conv(w, w, 3)
        prev = w
    return total + conv(prev, num_classes, 1)


def test_parameter_count_equals_published():
    with torch.device("meta"):
        model = create_model("unet")
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED == _paper_count(1, 2)
    with torch.device("meta"):
        model = create_model("unet", in_channels=3, num_classes=5, batch_norm=False, bilinear=False)
    assert sum(p.numel() for p in model.parameters()) == _paper_count(3, 5)


def test_paper_shapes_572_to_388():
    # Fig. 1 of the paper: contracting maps 568, 280, 136, 64, 28 (after the two convs of each level), output 388.
    info = model_info("unet")
    assert info.task == "segmentation" and info.input_size == (1, 572, 572)
    with torch.device("meta"):
        model = create_model("unet")
        x = torch.empty(1, 1, 572, 572)
        assert [f.shape[-1] for f in model.forward_stages(x)] == [568, 280, 136, 64, 28]
        assert [f.shape[1] for f in model.forward_stages(x)] == [64, 128, 256, 512, 1024]
        assert [f["module"] for f in model.feature_info] == [f"down.{i}" for i in range(5)]
        assert model(x).shape == (1, 2, 388, 388)


def test_output_size_follows_the_tiling_rule():
    assert output_size(572) == 388 and output_size(188) == 4  # the paper's tile and the smallest valid one
    assert output_size(60, levels=3) == 20
    assert output_size(96, padding="same") == 96
    with pytest.raises(ValueError, match="level 1 gives an odd size 279 to the 2x2 max pool"):
        output_size(570)
    with pytest.raises(ValueError, match="vanish"):
        output_size(60)  # 56, 28 -> 24, 12 -> 8, 4 -> 0
    # The formula agrees with real forward passes (shapes on the meta device).
    with torch.device("meta"):
        model = UNet(widths=(4, 8, 16, 32, 64))
        for size in (188, 572, 252):
            assert model(torch.empty(1, 1, size, size)).shape[-1] == output_size(size)


def _reference_unet(model: UNet, x: torch.Tensor, *, pad: int = 0, bn: bool = False, bilinear: bool = False):
    """The forward pass written out with torch.nn.functional, reading the model's weights (eval-mode BatchNorm)."""

    def double(level, y):
        for block in level:
            y = F.conv2d(y, block[0].weight, block[0].bias, padding=pad)
            if bn:
                norm = block[1]
                y = F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
            y = F.relu(y)
        return y

    skips, y = [], x
    for i, level in enumerate(model.down):
        y = double(level, y if i == 0 else F.max_pool2d(y, 2))
        skips.append(y)
    y = skips.pop()
    for up, dec in zip(model.up, model.dec, strict=True):
        if bilinear:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = F.conv2d(y, up[1].weight, up[1].bias)
        else:
            y = F.conv_transpose2d(y, up.weight, up.bias, stride=2)
        skip = skips.pop()
        margin = (skip.shape[-1] - y.shape[-1]) // 2  # the paper's crop: the centre of the contracting map
        skip = skip[..., margin : margin + y.shape[-2], margin : margin + y.shape[-1]]
        y = double(dec, torch.cat([skip, y], dim=1))
    return F.conv2d(y, model.head.weight, model.head.bias)


def test_valid_unet_matches_float64_reference():
    model = UNet(in_channels=2, num_classes=3, widths=(4, 8, 16)).double()
    x = torch.randn(2, 2, 60, 60, dtype=torch.float64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, 20, 20)  # 60 -> 56 -> 28 -> 24 -> 12 -> 8 -> 16 -> 12 -> 24 -> 20
    check_against(model, lambda t: _reference_unet(model, t), [x])


def test_same_batch_norm_bilinear_matches_float64_reference():
    model = UNet(in_channels=1, num_classes=2, widths=(4, 8, 16), padding="same", batch_norm=True, bilinear=True)
    model = model.double().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 1, 16, 24, dtype=torch.float64, requires_grad=True)
    check_against(model, lambda t: _reference_unet(model, t, pad=1, bn=True, bilinear=True), [x])


@pytest.mark.parametrize(
    "options", [{}, {"batch_norm": True}, {"bilinear": True}, {"batch_norm": True, "bilinear": True}]
)
def test_same_padding_keeps_size_and_trains(options):
    model = create_model("unet", padding="same", in_channels=3, num_classes=4, widths=(8, 16, 32, 64), **options)
    x = torch.randn(2, 3, 32, 48)
    out = model(x)
    assert out.shape == (2, 4, 32, 48)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    has_convt = any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert has_bn == options.get("batch_norm", False)
    assert has_convt == (not options.get("bilinear", False))


@pytest.mark.parametrize("encoder", ["efficientnet_b0", "xception"])  # stride-2 padded stem; unpadded stem (crops)
def test_zoo_encoder_is_the_contracting_path(encoder):
    model = create_model("unet", encoder=encoder, in_channels=3, num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 3, 64, 64)
    declared = [{**f, "module": f"encoder.{f['module']}"} for f in model.encoder.feature_info]
    assert model.feature_info == declared
    assert [f.shape[1] for f in model.forward_stages(x)] == [f["num_chs"] for f in declared]
    # The decoder's upsampling factors follow the declared reductions: 2 between consecutive stages here.
    assert all(up.stride == (2, 2) for up in model.up)
    out.sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable)
    # Only parameters outside forward_stages (the classifier side) are frozen.
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith("encoder.head") for n in frozen), frozen
    assert bool(frozen) == (encoder == "efficientnet_b0")  # EfficientNet's 1x1 head conv follows the last stage


def test_fx_trace_matches_eager_with_crop():
    model = UNet(in_channels=1, num_classes=2, widths=(4, 8, 16)).eval()
    traced = torch.fx.symbolic_trace(model)
    for size in (44, 60):  # the crop is computed at call time, so one trace serves every input size
        x = torch.randn(1, 1, size, size)
        torch.testing.assert_close(traced(x), model(x))


def test_center_crop():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert center_crop(x, 2, 4).tolist() == [[[[13.0, 14.0, 15.0, 16.0], [19.0, 20.0, 21.0, 22.0]]]]
    with pytest.raises(ValueError, match="cannot crop a 6x6 map to 7x2"):
        center_crop(x, 7, 2)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"UNet: padding must be one of \('valid', 'same'\), got 'full'"):
        UNet(padding="full")
    with pytest.raises(ValueError, match=r"UNet: widths must hold at least 2 values, got 1: \(8,\)"):
        UNet(widths=(8,))
    with pytest.raises(ValueError, match="unknown model 'efficientnet_b9'"):
        UNet(encoder="efficientnet_b9")
    with pytest.raises(ValueError, match="encoder must be a registered image classifier"):
        UNet(encoder="unet")
