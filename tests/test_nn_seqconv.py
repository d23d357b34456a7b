"""LightweightConv1d, DynamicConv1d and LightConvBlock: forward against the float64 loop of test_ops_seqconv.py,
and incremental (step-by-step) causal decoding against the full-sequence forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convatlas.nn import DynamicConv1d, LightConvBlock, LightweightConv1d
from test_ops_seqconv import loop_dynamic, loop_lightweight


def test_lightweight_module_equals_loop():
    conv = LightweightConv1d(6, 5, heads=3, bias=True).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    expected = loop_lightweight(x, conv.weight.detach(), 2) + conv.bias.detach()[:, None]
    torch.testing.assert_close(conv(x), expected)


def test_dynamic_module_predicts_kernel_per_step():
    conv = DynamicConv1d(6, 3, heads=2, padding_l=2).double()
    x = torch.randn(2, 6, 7, dtype=torch.float64)
    # reference: the linear layer applied at each step by hand, then the loop
    w = torch.einsum("bct,oc->bot", x, conv.weight_linear.weight.detach()) + conv.weight_linear.bias.detach()[:, None]
    w = w.view(2, 2, 3, 7)  # (B, H, K, T): output o = h * K + k
    torch.testing.assert_close(conv(x), loop_dynamic(x, w, 2))


@pytest.mark.parametrize("cls", [LightweightConv1d, DynamicConv1d])
def test_step_equals_full_causal_sequence(cls):
    conv = cls(8, 4, heads=2, padding_l=3, bias=True).double().eval()
    x = torch.randn(3, 8, 10, dtype=torch.float64)
    full = conv(x)
    state, steps = None, []
    for t in range(10):
        y, state = conv.step(x[..., t], state)
        steps.append(y)
    assert state.shape == (3, 8, 3)
    torch.testing.assert_close(torch.stack(steps, dim=-1), full)


@pytest.mark.parametrize("dynamic", [False, True])
def test_block_step_equals_full_causal_sequence(dynamic):
    block = LightConvBlock(12, 5, heads=3, conv_dim=6, dynamic=dynamic, causal=True, weight_dropout=0.1).double()
    block.eval()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    full = block(x)
    state, steps = None, []
    for t in range(9):
        y, state = block.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, dim=1), full)


def test_block_is_glu_conv_projection():
    block = LightConvBlock(8, 3, heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    u = F.glu(x @ block.in_proj.weight.T + block.in_proj.bias, dim=-1).transpose(1, 2)
    v = loop_lightweight(u, block.conv.weight.detach(), 1).transpose(1, 2)
    torch.testing.assert_close(block(x), v @ block.out_proj.weight.T + block.out_proj.bias)


def test_block_padding_does_not_leak():
    block = LightConvBlock(8, 5, heads=2, dynamic=True).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 4:] = True
    x2 = x.clone()
    x2[:, 4:] = 50.0
    torch.testing.assert_close(block(x, mask)[:, :4], block(x2, mask)[:, :4])


def test_every_parameter_gets_a_gradient():
    block = LightConvBlock(8, 3, heads=2, dynamic=True)
    block(torch.randn(2, 5, 8)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_weight_dropout_only_in_training():
    conv = LightweightConv1d(4, 5, heads=2, weight_dropout=0.5)
    x = torch.randn(1, 4, 9)
    conv.eval()
    torch.testing.assert_close(conv(x), conv(x))
    conv.train()
    outs = [conv(x) for _ in range(5)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="channels=6 must be a positive multiple of heads=4"):
        LightweightConv1d(6, 3, heads=4)
    with pytest.raises(ValueError, match=r"padding_l must lie in \[0, 2\] for kernel_size=3, got 3"):
        DynamicConv1d(6, 3, padding_l=3)
    with pytest.raises(ValueError, match="needs a causal layer"):
        LightweightConv1d(4, 3).step(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"LightConvBlock: x must be Tensor\[B, T, 8\]"):
        LightConvBlock(8, 3)(torch.randn(2, 8, 5, 1))
