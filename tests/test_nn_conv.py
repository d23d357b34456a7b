"""convatlas.nn.conv in float64, forward and backward, with ``check_against``.

References: the reference modules DepthwiseConv2d / PointwiseConv2d against ``torch.nn.Conv2d`` loaded with the same
weights; the shared (native) SeparableConv2d against the from-primitives operators ``convatlas.ops.separable_conv``
(and ``depthwise_conv`` / ``pointwise_conv`` with batch norm written out for the MobileNet form).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convatlas import arithmetic, ops
from convatlas.nn import DepthwiseConv2d, PointwiseConv2d, SeparableConv2d
from helpers import check_against

F64 = torch.float64


def _compare_modules(ours: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Same outputs and same input gradients, then the same parameter gradients (by position)."""
    check_against(ours, reference, [x.requires_grad_()])
    for module in (ours, reference):
        module.zero_grad()
        module(x.detach()).square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("bias, stride", [(True, 1), (False, 2)])
def test_pointwise_matches_conv2d(bias, stride):
    ours = PointwiseConv2d(6, 4, stride=stride, bias=bias).double()
    reference = nn.Conv2d(6, 4, 1, stride=stride, bias=bias).double()
    reference.load_state_dict(ours.state_dict())  # same parameter names and shapes as nn.Conv2d
    _compare_modules(ours, reference, torch.randn(2, 6, 7, 5, dtype=F64))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, multiplier",
    [(3, 1, None, 1, 1), (5, 2, None, 1, 2), (3, 1, None, 2, 1), (4, 1, "same", 1, 1), (3, 2, 0, 1, 3)],
)
def test_depthwise_matches_grouped_conv2d(kernel, stride, padding, dilation, multiplier):
    ours = DepthwiseConv2d(4, kernel, stride=stride, padding=padding, dilation=dilation, multiplier=multiplier)
    torch_padding = dilation * (kernel - 1) // 2 if padding is None else padding
    reference = nn.Conv2d(4, 4 * multiplier, kernel, stride, torch_padding, dilation, groups=4)
    ours, reference = ours.double(), reference.double()
    reference.load_state_dict(ours.state_dict())
    _compare_modules(ours, reference, torch.randn(2, 4, 9, 8, dtype=F64))


def _batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Training-mode batch norm written out: batch mean and biased variance per channel."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def _with_parameters(block: nn.Module):
    """``block`` as a function of (x, *its parameters), so check_against compares the parameter gradients too."""
    names = [name for name, _ in block.named_parameters()]

    def run(x, *params):
        return torch.func.functional_call(block, dict(zip(names, params, strict=True)), (x,))

    return run, [p.detach().clone().requires_grad_() for _, p in block.named_parameters()]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, multiplier, bias",
    [(3, 1, None, 1, 1, False), (3, 2, None, 1, 1, False), (5, 2, None, 2, 2, True), (4, 1, "same", 1, 1, True)],
)
def test_separable_xception_form_matches_ops_separable_conv(kernel, stride, padding, dilation, multiplier, bias):
    """Reference: convatlas.ops.separable_conv (from primitives, no F.conv*), float64, output and every gradient."""
    block = SeparableConv2d(
        6, 5, kernel, stride=stride, padding=padding, dilation=dilation, multiplier=multiplier, bias=bias
    ).double()
    run, params = _with_parameters(block)
    ref_padding = dilation * (kernel - 1) // 2 if padding is None else padding

    def reference(x, dw_weight, *rest):  # parameter order: dw.0.weight, [dw.0.bias], pw.0.weight, [pw.0.bias]
        dw_bias, pw_weight, pw_bias = rest if bias else (None, rest[0], None)
        return ops.separable_conv(
            x, dw_weight, pw_weight, dw_bias, pw_bias, stride=stride, padding=ref_padding, dilation=dilation
        )

    x = torch.randn(2, 6, 11, 10, dtype=F64, requires_grad=True)
    check_against(run, reference, [x, *params])
    assert len(params) == (4 if bias else 2)


@pytest.mark.parametrize("stride", [1, 2])
def test_separable_mobilenet_form_matches_ops_with_batch_norm(stride):
    """MobileNet v1: depthwise-BN-ReLU6 then pointwise-BN-ReLU6 in training mode (batch statistics). Reference:
    ops.depthwise_conv and ops.pointwise_conv with batch norm and ReLU6 written out, float64, every gradient."""
    block = SeparableConv2d(
        8, 12, 3, stride=stride, dw_norm=nn.BatchNorm2d, dw_act=nn.ReLU6, norm=nn.BatchNorm2d, act=nn.ReLU6
    ).double()
    run, params = _with_parameters(block)
    assert [name for name, _ in block.named_parameters()] == [
        "dw.0.weight", "dw.1.weight", "dw.1.bias", "pw.0.weight", "pw.1.weight", "pw.1.bias"
    ]  # fmt: skip
    with torch.no_grad():  # non-trivial affine terms
        for p in params[1:3] + params[4:]:
            p.uniform_(0.5, 1.5)

    def reference(x, dw_weight, g1, b1, pw_weight, g2, b2):
        h = ops.depthwise_conv(x, dw_weight, stride=stride, padding=1)
        h = _batch_norm(h, g1, b1).clamp(0, 6)
        return _batch_norm(ops.pointwise_conv(h, pw_weight), g2, b2).clamp(0, 6)

    x = torch.randn(4, 8, 10, 9, dtype=F64, requires_grad=True)
    check_against(run, reference, [x, *params])


def test_separable_block_is_native_and_traces_with_fx():
    block = SeparableConv2d(4, 6, 3, stride=2, dw_norm=nn.BatchNorm2d, dw_act=nn.ReLU, norm=nn.BatchNorm2d).eval()
    dw, pw = block.dw[0], block.pw[0]
    assert type(dw) is nn.Conv2d and dw.groups == 4 and dw.kernel_size == (3, 3) and dw.stride == (2, 2)
    assert type(pw) is nn.Conv2d and pw.groups == 1 and pw.kernel_size == (1, 1)
    traced = torch.fx.symbolic_trace(block)
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(traced(x), block(x))
    # The reference modules check their arguments in Python: an fx Proxy is not a Tensor, so tracing stops there.
    with pytest.raises(TypeError, match="depthwise_conv: input and weight must be Tensors"):
        torch.fx.symbolic_trace(DepthwiseConv2d(4))


def test_reference_modules_swap_state_dicts_with_the_block():
    """The reference DepthwiseConv2d / PointwiseConv2d have nn.Conv2d's parameter names: their weights load into
    the block's convolutions and give the same function."""
    block = SeparableConv2d(5, 7, 3, multiplier=2, bias=True).double()
    dw, pw = DepthwiseConv2d(5, 3, multiplier=2).double(), PointwiseConv2d(10, 7).double()
    block.dw[0].load_state_dict(dw.state_dict())
    block.pw[0].load_state_dict(pw.state_dict())
    x = torch.randn(2, 5, 8, 8, dtype=F64, requires_grad=True)
    check_against(block, nn.Sequential(dw, pw), [x])


def test_separable_counts():
    """Parameters as arithmetic.separable_params counts, at small and (on the meta device) Xception's full size."""
    ours = SeparableConv2d(16, 32, 3)
    assert sum(p.numel() for p in ours.parameters()) == arithmetic.separable_params(16, 32, (3, 3), bias=False)
    with torch.device("meta"):  # full-size counts without memory: Xception's middle flow, 728 channels
        big = SeparableConv2d(728, 728, 3, bias=True)
    assert sum(p.numel() for p in big.parameters()) == arithmetic.separable_params(728, 728, (3, 3))


def test_float32_and_output_shape():
    m = SeparableConv2d(3, 5, 5, stride=2, dilation=2)
    y = m(torch.randn(2, 3, 17, 16))
    expected = [arithmetic.conv_out(n, 5, stride=2, padding=4, dilation=2) for n in (17, 16)]
    assert y.dtype == torch.float32 and tuple(y.shape) == (2, 5, *expected)


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda: PointwiseConv2d(0, 3), ["PointwiseConv2d", "in_channels", "0"]),
        (lambda: DepthwiseConv2d(4, 3, stride=0), ["DepthwiseConv2d", "stride", "0"]),
        (lambda: SeparableConv2d(4, 8, kernel_size=2.5), ["SeparableConv2d", "kernel_size", "2.5"]),
        (lambda: SeparableConv2d(4, 8, multiplier=0), ["SeparableConv2d", "multiplier", "0"]),
    ],
)
def test_bad_hyperparameters(build, words):
    with pytest.raises(ValueError) as info:
        build()
    for word in words:
        assert word in str(info.value)


def test_wrong_input_channels_names_the_numbers():
    with pytest.raises(ValueError, match="input has 3 channels but weight has 4 filters"):
        DepthwiseConv2d(4)(torch.randn(1, 3, 8, 8))
