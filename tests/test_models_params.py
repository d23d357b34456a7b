"""Exact sizes: every registered model's parameter count (and multiply-accumulate count) against the published one.

Counted on the ``meta`` device, so full-size models cost no memory or time. Sources per row:
- "torchvision": ``torchvision.models.get_model_weights(name).DEFAULT.meta`` (``num_params``; ``_ops``, GMACs);
  ``test_torchvision_rows_match_torchvision_metadata`` re-reads them so a typo in the table cannot pass.
- "timm": the parameter count of timm's model of the same architecture (timm 1.0 model cards).
- "Keras": ``keras.applications`` model summaries, whose totals include batch-norm moving mean and variance.
- "paper": the architecture paper's own table, rounded as printed there.
Not in the table: ``kim_cnn`` (its size is set by the vocabulary; the paper publishes none).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convatlas.models import create_model, list_models

# name -> (parameters, GMACs at the model's input size or None, source)
PUBLISHED = {
    "resnext50_32x4d": (25_028_904, 4.23, "torchvision; paper Table 3: 25.0M params, 4.2 GFLOPs"),
    "resnext101_32x8d": (88_791_336, 16.414, "torchvision"),
    "densenet121": (7_978_856, 2.834, "torchvision"),
    "densenet169": (14_149_480, 3.36, "torchvision"),
    "densenet201": (20_013_928, 4.291, "torchvision"),
    "mobilenet_v1": (4_231_976, 0.569, "timm mobilenetv1_100 = Keras trainable; paper Table 6: 569M mult-adds"),
    "mobilenet_v2": (3_504_872, 0.301, "torchvision"),
    "mobilenet_v3_large": (5_483_032, 0.217, "torchvision"),
    "mobilenet_v3_small": (2_542_856, 0.057, "torchvision"),
    "xception": (22_855_952, None, "timm legacy_xception = Keras Xception trainable"),
    "efficientnet_b0": (5_288_548, 0.386, "torchvision"),
    "efficientnet_b1": (7_794_184, 0.687, "torchvision"),
    "efficientnet_b2": (9_109_994, 1.088, "torchvision"),
    "efficientnet_b3": (12_233_232, 1.827, "torchvision"),
    "efficientnet_b4": (19_341_616, 4.394, "torchvision"),
    "efficientnet_b5": (30_389_784, 10.266, "torchvision"),
    "efficientnet_b6": (43_040_704, 19.068, "torchvision"),
    "efficientnet_b7": (66_347_960, 37.746, "torchvision"),
    "convnext_tiny": (28_589_128, 4.456, "torchvision"),
    "convnext_small": (50_223_688, 8.684, "torchvision"),
    "convnext_base": (88_591_464, 15.355, "torchvision"),
    "convnext_large": (197_767_336, 34.361, "torchvision"),
    "resnet9": (6_573_130, None, "paper: Page 2018's CIFAR-10 network, 6,573,120 weights, + 10 classifier biases"),
}
# Input side of each torchvision _ops figure: torchvision's evaluation crop (224 unless listed). For EfficientNet that
# is the paper's compound-scaled resolution except b2, which torchvision evaluates at 288 instead of 260.
EFFICIENTNET_SIDE = {f"efficientnet_b{i}": s for i, s in enumerate((224, 240, 288, 300, 380, 456, 528, 600))}


def unet_paper_count(in_channels: int = 1, num_classes: int = 2) -> int:
    """The 2015 U-Net's size counted from the paper's Figure 1: 3x3 convs with bias, 2x2 up-convs, a 1x1 output."""
    widths = (64, 128, 256, 512, 1024)

    def double_conv(c_in: int, c_out: int) -> int:
        return (9 * c_in + 1) * c_out + (9 * c_out + 1) * c_out

    total, c = 0, in_channels
    for w in widths:  # contracting path
        total += double_conv(c, w)
        c = w
    for w in reversed(widths[:-1]):  # expansive path: up-conv halves the channels, concat doubles them back
        total += (4 * c + 1) * w + double_conv(2 * w, w)
        c = w
    return total + (c + 1) * num_classes


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, side: int) -> int:
    """Multiply-accumulates of convolutions and linear layers for one ``3 x side x side`` image (meta tensors)."""
    total = 0

    def hook(module: nn.Module, inputs, out: torch.Tensor) -> None:
        nonlocal total
        per_output = module.in_features if isinstance(module, nn.Linear) else module.weight[0].numel()
        total += out[0].numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.empty(1, 3, side, side, device="meta"))
    for h in handles:
        h.remove()
    return total


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_every_registered_image_model_has_a_published_count():
    missing = set(list_models()) - set(PUBLISHED) - {"kim_cnn", "unet"} - set(list_models(task="detection"))
    missing -= set(list_models(task="text"))
    assert not missing, f"no published parameter count in the table for {sorted(missing)}"


@pytest.mark.parametrize("name", [n for n in PUBLISHED if n in list_models()])
def test_parameter_count_equals_published(name):
    params, _, source = PUBLISHED[name]
    assert count(_meta(name)) == params, f"{name}: published {params:,} ({source})"


@pytest.mark.parametrize("name", [n for n, row in PUBLISHED.items() if row[1] is not None and n in list_models()])
def test_macs_equal_published(name):
    _, gmacs, source = PUBLISHED[name]
    side = EFFICIENTNET_SIDE.get(name, 224)
    decimals = len(str(gmacs).split(".")[1])
    assert round(count_macs(_meta(name), side) / 1e9, decimals) == gmacs, f"{name}: published {gmacs} GMACs ({source})"


@pytest.mark.parametrize(
    ("width", "params_m", "macs_m"), [(1.0, 4.2, 569), (0.75, 2.6, 325), (0.5, 1.3, 149), (0.25, 0.5, 41)]
)
def test_mobilenet_v1_width_multiplier_matches_paper_table_6(width, params_m, macs_m):
    # Paper Table 6 (Howard et al. 2017), rounded as printed: parameters in millions, mult-adds in millions.
    model = _meta("mobilenet_v1", width_mult=width)
    assert round(count(model) / 1e6, 1) == params_m
    assert round(count_macs(model, 224) / 1e6) == macs_m


@pytest.mark.parametrize(("name", "keras_total"), [("mobilenet_v1", 4_253_864), ("xception", 22_910_480)])
def test_keras_totals_with_batchnorm_statistics(name, keras_total):
    # Keras counts BN moving mean and variance as (non-trainable) parameters; we keep them as buffers.
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    model = _meta(name)
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert count(model) + stats == keras_total


def test_unet_matches_the_count_from_the_paper_figure():
    if "unet" not in list_models():
        pytest.skip("unet is not registered")
    assert count(_meta("unet")) == unet_paper_count() == 31_030_658


@pytest.mark.parametrize("name", [n for n, row in PUBLISHED.items() if row[2].startswith("torchvision")])
def test_torchvision_rows_match_torchvision_metadata(name):
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    params, gmacs, _ = PUBLISHED[name]
    assert meta["num_params"] == params
    assert meta["_ops"] == gmacs
