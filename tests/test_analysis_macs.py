"""MAC counts of ``summary``, checked against ``torch.utils.flop_counter`` (FLOPs / 2), published figures and the
closed forms of ``convatlas.arithmetic``.

Published figures: torchvision's weight metadata ``_ops`` (GFLOPS in the multiply-accumulate convention) for
ResNeXt-50 32x4d 4.23, DenseNet-121 2.834, MobileNet v2 0.301, EfficientNet-B0 0.386, ConvNeXt-T 4.456; Howard et al.
2017 (MobileNet v1, 569 million mult-adds at 224).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import get_model_weights

from convatlas import arithmetic
from convatlas.analysis import summary
from convatlas.models import create_model, list_models


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    """``torch.utils.flop_counter`` FLOPs / 2; attention through its math path so its two matmuls are seen."""
    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(x)
    return counter.get_total_flops() // 2


PUBLISHED = {  # torchvision's ``_ops`` (GFLOPS = GMACs), given to 2 or 3 decimals
    "resnext50_32x4d": 4.23,
    "densenet121": 2.834,
    "mobilenet_v2": 0.301,
    "efficientnet_b0": 0.386,
    "convnext_tiny": 4.456,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_torchvision_models_match_published_gflops(name):
    weights = get_model_weights(name).DEFAULT
    assert weights.meta["_ops"] == PUBLISHED[name]
    with torch.device("meta"):
        model = torchvision.models.get_model(name)
    result = summary(model, (3, 224, 224))
    decimals = len(str(PUBLISHED[name]).split(".")[1])
    assert round(result.total_macs / 1e9, decimals) == PUBLISHED[name]
    assert result.total_params == weights.meta["num_params"]


@pytest.mark.parametrize("name", sorted(PUBLISHED) + ["mobilenet_v1"])
def test_zoo_models_match_published_gflops(name):
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    with torch.device("meta"):
        model = create_model(name)
    result = summary(model, (3, 224, 224))
    if name == "mobilenet_v1":  # Howard et al. 2017, Table 8: 569 million mult-adds, 4.2 million parameters
        assert round(result.total_macs / 1e6) == 569 and round(result.total_params / 1e6, 1) == 4.2
        return
    decimals = len(str(PUBLISHED[name]).split(".")[1])
    assert round(result.total_macs / 1e9, decimals) == PUBLISHED[name]
    assert result.total_params == get_model_weights(name).DEFAULT.meta["num_params"]


def test_layers_match_closed_forms():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
    tconv = nn.ConvTranspose2d(12, 6, 4, stride=2, padding=1)
    linear = nn.Linear(6 * 16 * 16, 10)
    model = nn.Sequential(conv, tconv, nn.ReLU(), nn.Flatten(), linear)
    result = summary(model, (8, 16, 16))
    rows = {r.path: r for r in result.rows}
    assert rows["0"].macs == arithmetic.conv_macs(8, 12, (3, 3), (8, 8), groups=4)
    # transposed: every one of the 12 x 8 x 8 inputs meets 6 filters of 4 x 4 taps
    assert rows["1"].macs == 12 * 8 * 8 * 6 * 16
    assert rows["4"].macs == 6 * 16 * 16 * 10
    assert rows["2"].macs == 0 and rows["2"].other_ops == 6 * 16 * 16  # ReLU: other ops, never MACs
    assert result.total_macs == sum(rows[p].macs for p in "014")
    assert result.total_macs == flop_counter_macs(model, torch.zeros(1, 8, 16, 16))


class MatmulZoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 7))

    def forward(self, x):  # x (N, 3, 4, 5)
        a = x @ self.w  # matmul -> (N, 3, 4, 7)
        b = torch.einsum("nchw,nchv->nwv", a, a)  # (N, 7, 7)
        return torch.bmm(b, b)


def test_matmul_einsum_bmm_are_macs():
    model = MatmulZoo()
    result = summary(model, (3, 4, 5))
    expected = 3 * 4 * 5 * 7 + 7 * 7 * (3 * 4) + 7 * 7 * 7
    assert result.total_macs == expected == flop_counter_macs(model, torch.zeros(1, 3, 4, 5))


def test_attention_counts_both_products():
    attn = nn.MultiheadAttention(16, 4, batch_first=True)

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Self()
    result = summary(model, (10, 16))
    projections = 4 * 10 * 16 * 16  # q, k, v and output projections
    products = 2 * 10 * 10 * 16  # q k^T and attention x v over 4 heads of 4
    # reference: the closed form (torch.utils.flop_counter sees 0 here: it does not count the fused
    # _native_multi_head_attention that nn.MultiheadAttention takes in eval mode)
    assert result.total_macs == projections + products
