"""ResNet-9 (Page 2018) against a float64 re-statement of the paper's layout in ``torch.nn.functional`` (reference),
forward and gradients in train and eval mode, and against its parameter count by formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from convatlas.models import create_model, model_info
from convatlas.models.resnet9 import ResNet9
from helpers import check_against, randomize


def _formula(width_mult: float = 1.0, in_channels: int = 3, classes: int = 10) -> int:
    """Nine weighted layers: 3x3 convolutions without bias, each with a batch norm (weight and bias), and a linear
    classifier with bias. Widths 64, 128, 256, 512 times ``width_mult`` (multiples of 8 here)."""
    c0, c1, c2, c3 = (int(w * width_mult) for w in (64, 128, 256, 512))
    convs = [(in_channels, c0), (c0, c1), (c1, c1), (c1, c1), (c1, c2), (c2, c3), (c3, c3), (c3, c3)]
    return sum(9 * a * b + 2 * b for a, b in convs) + (c3 + 1) * classes


@pytest.mark.parametrize("width_mult, in_channels, classes", [(1.0, 3, 10), (0.25, 1, 10), (0.5, 3, 100)])
def test_parameter_count_by_formula(width_mult, in_channels, classes):
    with torch.device("meta"):
        model = create_model("resnet9", width_mult=width_mult, in_channels=in_channels, num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == _formula(width_mult, in_channels, classes)


def test_paper_size_and_defaults():
    # Page's network on CIFAR-10: 6,573,120 weights without the classifier's bias.
    assert _formula() == 6_573_130
    assert model_info("resnet9").input_size == (3, 32, 32)
    model = create_model("resnet9")
    assert (model.num_classes, model.logit_scale, model.num_features) == (10, 0.125, 512)


def _reference(params: dict, buffers: dict, x: torch.Tensor, *, training: bool, scale: float) -> torch.Tensor:
    """The layout of the paper, written out: conv-BN-ReLU everywhere, pools after layer1/2/3's first convolution,
    residual blocks in layer1 and layer3, global max pool, linear, logits times ``scale``."""

    def cbr(prefix: str, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, params[f"{prefix}.0.weight"], padding=1)
        x = F.batch_norm(
            x,
            buffers[f"{prefix}.1.running_mean"].clone(),
            buffers[f"{prefix}.1.running_var"].clone(),
            params[f"{prefix}.1.weight"],
            params[f"{prefix}.1.bias"],
            training=training,
            eps=1e-5,
        )
        return torch.relu(x)

    x = cbr("prep", x)
    x = F.max_pool2d(cbr("layer1.0", x), 2)
    x = x + cbr("layer1.2.conv2", cbr("layer1.2.conv1", x))
    x = F.max_pool2d(cbr("layer2.0", x), 2)
    x = F.max_pool2d(cbr("layer3.0", x), 2)
    x = x + cbr("layer3.2.conv2", cbr("layer3.2.conv1", x))
    x = x.amax(dim=(2, 3))
    return scale * (x @ params["head.fc.weight"].T + params["head.fc.bias"])


@pytest.mark.parametrize("training", [False, True])
def test_matches_functional_float64_reference(training):
    model = randomize(ResNet9(width_mult=0.125, in_channels=2, num_classes=5, logit_scale=0.3)).double()
    model.train(training)
    names = [n for n, _ in model.named_parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.randn(3, 2, 20, 20, dtype=torch.float64, requires_grad=True)
    values = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def ours(x, *vals):
        state = {**dict(zip(names, vals, strict=True)), **{n: b.clone() for n, b in buffers.items()}}
        return functional_call(model, state, (x,))

    def reference(x, *vals):
        return _reference(dict(zip(names, vals, strict=True)), buffers, x, training=training, scale=0.3)

    check_against(ours, reference, [x, *values])


def test_feature_maps_and_unscaled_pre_logits():
    model = randomize(create_model("resnet9", width_mult=0.25, in_channels=1))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        stages = model.forward_stages(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    assert [tuple(s.shape) for s in stages] == [(2, 16, 28, 28), (2, 32, 14, 14), (2, 64, 7, 7), (2, 128, 3, 3)]
    torch.testing.assert_close(pooled, stages[-1].amax(dim=(2, 3)))
    torch.testing.assert_close(logits, 0.125 * model.head.fc(pooled))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width_mult": 0}, r"ResNet9: width_mult must satisfy 0 < width_mult <= 16, got 0"),
        ({"logit_scale": -1.0}, r"ResNet9: logit_scale must satisfy 0 < logit_scale <= 1e\+06, got -1"),
        ({"drop_rate": 1.0}, r"ResNet9: drop_rate must satisfy 0 <= drop_rate < 1, got 1"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("resnet9", **kwargs)
