"""DenseNet-BC: dense connectivity, compression, and the memory-efficient (checkpointed) option.

References: the paper's equations written as float64 loops (``x_l = H_l([x_0, ..., x_{l-1}])``, the transition's
mean over each 2x2 window), torch's ``F.avg_pool2d`` for even sizes, and the model itself without checkpointing
for ``memory_efficient=True`` (same outputs, same input and parameter gradients, fewer bytes saved for backward).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convatlas.models import create_model
from convatlas.models.densenet import DenseBlock, DenseNet, Transition
from helpers import check_against, randomize


def _small(**kwargs) -> DenseNet:
    return DenseNet(block_config=(2, 3), growth_rate=4, num_init_features=8, num_classes=3, **kwargs)


def dense_block_reference(block: DenseBlock, x: torch.Tensor) -> torch.Tensor:
    """``x_l = H_l([x_0, ..., x_{l-1}])`` with H_l = BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 (eval-mode batch norm)."""

    def bn(h, norm):
        return (h - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps) * (
            norm.weight[:, None, None]
        ) + norm.bias[:, None, None]

    features = [x]
    for layer in block:
        h = torch.cat(features, 1)
        h = F.conv2d(torch.relu(bn(h, layer.norm1)), layer.conv1.weight)
        h = F.conv2d(torch.relu(bn(h, layer.norm2)), layer.conv2.weight, padding=1)
        features.append(h)
    return torch.cat(features, 1)


def test_dense_block_equals_the_papers_equation():
    block = randomize(DenseBlock(6, 4, growth_rate=3, bn_size=4, drop_rate=0.0, memory_efficient=False)).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    check_against(block, lambda x: dense_block_reference(block, x), [x])
    assert block(x).shape == (2, 6 + 4 * 3, 5, 5)


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("densenet121", (256, 512, 1024, 1024)),
        ("densenet169", (256, 512, 1280, 1664)),
        ("densenet201", (256, 512, 1792, 1920)),
    ],
)
def test_channels_follow_growth_and_compression(name, channels):
    # Block b ends with c_b + L_b * 32 channels; each transition halves them (compression 0.5, paper Sec. 3).
    model = create_model(name)
    assert tuple(f["num_chs"] for f in model.feature_info[1:]) == channels
    for stage in list(model.stages)[1:]:
        conv = stage.transition.conv
        assert conv.out_channels == conv.in_channels // 2
        for l, layer in enumerate(stage.block):
            assert layer.norm1.num_features == conv.out_channels + 32 * l  # sees every earlier map
            assert layer.conv1.out_channels == 4 * 32 and layer.conv2.out_channels == 32  # bottleneck 4k, growth k


def test_transition_pooling_on_odd_sizes_averages_the_partial_window():
    # Reference: a slow loop taking the mean of each 2x2 window clipped to the map; on even sizes F.avg_pool2d.
    t = Transition(4, 2).double().eval()
    x = torch.randn(1, 4, 5, 7, dtype=torch.float64)
    h = t.conv(t.relu(t.norm(x)))
    expect = torch.empty(1, 2, 3, 4, dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            expect[..., i, j] = h[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean((-2, -1))
    torch.testing.assert_close(t(x), expect)
    x = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(t(x), F.avg_pool2d(t.conv(t.relu(t.norm(x))), 2))


def test_memory_efficient_matches_outputs_and_gradients():
    torch.manual_seed(0)
    plain = randomize(_small()).double().train()
    efficient = _small(memory_efficient=True).double().train()
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    check_against(efficient, plain, [x])  # outputs and input gradients (train-mode batch norm)
    for model in (plain, efficient):
        model.zero_grad()
        model(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=lambda m, name=name: f"{name}: {m}")


def _saved_bytes(model: DenseNet, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_memory_efficient_saves_less_for_backward():
    plain = DenseNet(block_config=(6, 6), growth_rate=8, num_init_features=16, num_classes=3).train()
    efficient = DenseNet(block_config=(6, 6), growth_rate=8, num_init_features=16, num_classes=3, memory_efficient=True)
    x = torch.randn(2, 3, 64, 64)
    assert _saved_bytes(efficient.train(), x) < 0.75 * _saved_bytes(plain, x)
    efficient.set_memory_efficient(False)
    assert _saved_bytes(efficient, x) == _saved_bytes(plain, x)
