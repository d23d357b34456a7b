"""convatlas.arithmetic against PyTorch.

References: the output shapes PyTorch computes for conv1d/2d/3d, max/avg pooling and transposed convolution (on the
``meta`` device, which runs PyTorch's own shape checks without allocating), whether PyTorch accepts or rejects the
same arguments, parameter counts of ``torch.nn.Conv2d``, MAC counts of ``torch.utils.flop_counter.FlopCounterMode``,
and receptive fields measured empirically from the gradient support of a stack of ``torch.nn.Conv1d``.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convatlas import arithmetic
from convatlas.arithmetic import RF

EXAMPLES = settings(max_examples=2000, deadline=None, derandomize=True)  # the shape properties PyTorch decides
FEWER = settings(max_examples=300, deadline=None, derandomize=True)  # properties of our own closed forms
META = "meta"


def _torch_shape(fn):
    """PyTorch's output shape, or None when PyTorch rejects the arguments."""
    try:
        return tuple(fn().shape)
    except RuntimeError:
        return None


def _ours(fn):
    """Our result, or None when we reject the arguments with a ValueError."""
    try:
        return fn()
    except ValueError:
        return None


# One spatial dimension's hyperparameters; the ranges include arguments PyTorch rejects, so both sides of every
# rule are exercised.
dim_params = st.tuples(
    st.integers(1, 24),  # length
    st.integers(1, 7),  # kernel
    st.integers(1, 5),  # stride
    st.integers(0, 6),  # padding
    st.integers(1, 4),  # dilation
)


@EXAMPLES
@given(dims=st.lists(dim_params, min_size=1, max_size=3), groups=st.sampled_from([1, 2]))
def test_conv_out_equals_torch_conv_shape(dims, groups):
    nd = len(dims)
    lengths, kernels, strides, paddings, dilations = (tuple(v) for v in zip(*dims, strict=True))
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    x = torch.empty(1, 2, *lengths, device=META)
    w = torch.empty(4, 2 // groups, *kernels, device=META)
    expected = _torch_shape(lambda: conv(x, w, None, strides, paddings, dilations, groups))
    ours = _ours(
        lambda: arithmetic.conv_out_shape(lengths, kernels, stride=strides, padding=paddings, dilation=dilations)
    )
    if expected is None:
        assert ours is None, f"PyTorch rejects {dims}, we give {ours}"
    else:
        assert ours == expected[2:]
        assert ours == tuple(
            arithmetic.conv_out(
                *lengths[i : i + 1], kernels[i], stride=strides[i], padding=paddings[i], dilation=dilations[i]
            )
            for i in range(nd)
        )


@EXAMPLES
@given(
    dims=st.lists(dim_params, min_size=1, max_size=3),
    ceil_mode=st.booleans(),
    kind=st.sampled_from(["max", "avg"]),
    default_stride=st.booleans(),
)
def test_pool_out_equals_torch_pool_shape(dims, ceil_mode, kind, default_stride):
    nd = len(dims)
    lengths, kernels, strides, paddings, dilations = (list(v) for v in zip(*dims, strict=True))
    if kind == "avg":
        dilations = [1] * nd  # average pooling has no dilation
    if default_stride:
        strides = kernels
    x = torch.empty(1, 1, *lengths, device=META)
    if kind == "max":
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        expected = _torch_shape(
            lambda: pool(x, kernels, None if default_stride else strides, paddings, dilations, ceil_mode)
        )
    else:
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        expected = _torch_shape(lambda: pool(x, kernels, None if default_stride else strides, paddings, ceil_mode))

    def ours():
        return tuple(
            arithmetic.pool_out(
                lengths[i],
                kernels[i],
                stride=None if default_stride else strides[i],
                padding=paddings[i],
                dilation=dilations[i],
                ceil_mode=ceil_mode,
            )
            for i in range(nd)
        )

    result = _ours(ours)
    if kind == "avg" and nd == 3 and any(n < k for n, k in zip(lengths, kernels, strict=True)):
        # avg_pool3d alone also requires the kernel to fit in the unpadded input (PyTorch's check_input_size); the
        # 1-D and 2-D poolings accept these arguments with the lengths we compute.
        assert expected is None
        return
    if expected is None:
        assert result is None, f"PyTorch rejects {dims} (ceil_mode={ceil_mode}), we give {result}"
    else:
        assert result == expected[2:]


@EXAMPLES
@given(
    dims=st.lists(
        st.tuples(
            st.integers(1, 12),  # length
            st.integers(1, 6),  # kernel
            st.integers(1, 4),  # stride
            st.integers(0, 5),  # padding
            st.integers(0, 4),  # output_padding
            st.integers(1, 4),  # dilation
        ),
        min_size=1,
        max_size=3,
    ),
    groups=st.sampled_from([1, 2]),
)
def test_conv_transpose_out_equals_torch_shape(dims, groups):
    nd = len(dims)
    lengths, kernels, strides, paddings, output_paddings, dilations = (tuple(v) for v in zip(*dims, strict=True))
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    x = torch.empty(1, 2, *lengths, device=META)
    w = torch.empty(2, 4 // groups, *kernels, device=META)
    expected = _torch_shape(lambda: conv_t(x, w, None, strides, paddings, output_paddings, groups, dilations))
    # The meta kernels skip PyTorch's output-padding rule; it does not depend on the lengths, so check it on CPU
    # with a one-element input and kernel.
    one_x, one_w = torch.zeros(1, 2, *[1] * nd), torch.zeros(2, 4 // groups, *[1] * nd)
    if _torch_shape(lambda: conv_t(one_x, one_w, None, strides, 0, output_paddings, groups, dilations)) is None:
        expected = None

    def ours():
        return tuple(
            arithmetic.conv_transpose_out(
                lengths[i],
                kernels[i],
                stride=strides[i],
                padding=paddings[i],
                output_padding=output_paddings[i],
                dilation=dilations[i],
            )
            for i in range(nd)
        )

    result = _ours(ours)
    if expected is not None and 0 in expected[2:]:
        # PyTorch only requires *some* output length >= 1 and returns an empty tensor; we reject every length < 1.
        assert result is None
        return
    if expected is None:
        assert result is None, f"PyTorch rejects {dims}, we give {result}"
    else:
        assert result == expected[2:]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@FEWER
@given(length=st.integers(1, 30), kernel=st.integers(1, 9), dilation=st.integers(1, 4))
def test_same_padding_keeps_length_like_torch_same(length, kernel, dilation):
    padding = arithmetic.same_padding(kernel, dilation=dilation)
    x = torch.empty(1, 1, length, device=META)
    w = torch.empty(1, 1, kernel, device=META)
    with torch.device(META):
        expected = F.conv1d(x, w, None, 1, "same", dilation).shape[-1]
    assert expected == length
    assert arithmetic.conv_out(length, kernel, padding=padding, dilation=dilation) == length
    total = dilation * (kernel - 1)
    if total % 2:
        assert padding == (total // 2, total // 2 + 1)  # the odd zero on the right, as in PyTorch
    else:
        assert padding == total // 2 and kernel * 0 + dilation * (kernel - 1) + 1 == 2 * padding + 1


def test_conv_out_examples_and_seed_formula():
    # AlexNet's first layer (11/4/2 on 224) and ResNet's stem (7/2/3 on 224); the seed's floor((L + 2p - k)/s + 1).
    assert arithmetic.conv_out(224, 11, stride=4, padding=2) == 55
    assert arithmetic.conv_out(224, 7, stride=2, padding=3) == 112
    for length, k, s, p in [(32, 5, 1, 0), (28, 3, 2, 1), (13, 4, 3, 2)]:
        assert arithmetic.conv_out(length, k, stride=s, padding=p) == math.floor((length + 2 * p - k) / s + 1)
    assert arithmetic.conv_out(10, 4, padding=(1, 2)) == 10  # asymmetric 'same' for an even kernel


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: arithmetic.conv_out(3, 7), ["conv_out", "7", "3", "floor((L + 2p - d(k-1) - 1)/s) + 1"]),
        (lambda: arithmetic.conv_out(5, 3, dilation=3), ["3*(3-1)+1 = 7", "5"]),
        (lambda: arithmetic.conv_out(-1, 3), ["length", ">= 1", "-1"]),
        (lambda: arithmetic.conv_out(8, 3, stride=0), ["stride", ">= 1", "0"]),
        (lambda: arithmetic.conv_out(8, 3, padding=(1, 2, 3)), ["padding", "(left, right)"]),
        (lambda: arithmetic.pool_out(8, 3, padding=2), ["p <= k // 2 = 1", "2"]),
        (lambda: arithmetic.conv_transpose_out(4, 3, stride=2, output_padding=2), ["max(stride, dilation)", "2"]),
        (lambda: arithmetic.conv_transpose_out(1, 1, padding=1), ["(1 - 1)*1 - 2*1", "-1"]),
        (lambda: arithmetic.conv_params(6, 4, 3, groups=4), ["groups", "c_in = 6", "4"]),
        (lambda: arithmetic.receptive_field([(3, 0)]), ["layer 0 stride", ">= 1", "0"]),
        (lambda: arithmetic.receptive_field([((3, 3), 1), ((3, 3, 3), 1)]), ["disagree", "2", "3"]),
        (lambda: arithmetic.receptive_field([]), ["empty"]),
    ],
)
def test_errors_name_numbers_and_rule(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_non_integers_raise_type_error():
    with pytest.raises(TypeError, match="kernel must be an integer, got 2.5"):
        arithmetic.conv_out(8, 2.5)
    with pytest.raises(TypeError, match="length must be an integer"):
        arithmetic.conv_out(True, 2)


# --------------------------------------------------------------------------------------------------------------------
# Receptive field


layer_params = st.tuples(st.integers(1, 7), st.integers(1, 3), st.integers(0, 3), st.integers(1, 3))


@FEWER
@given(layers=st.lists(layer_params, min_size=1, max_size=6))
def test_receptive_field_closed_form(layers):
    fields = arithmetic.receptive_field(layers)
    for n in range(1, len(layers) + 1):
        # r = sum_l (d_l(k_l - 1)) prod_{i<l} s_i + 1 and j = prod s_l
        size = sum(d * (k - 1) * math.prod(s for _, s, _, _ in layers[:l]) for l, (k, _, _, d) in enumerate(layers[:n]))
        assert fields[n - 1].size == size + 1
        assert fields[n - 1].jump == math.prod(s for _, s, _, _ in layers[:n])


def _support(grad: torch.Tensor) -> tuple[int, int]:
    nonzero = torch.nonzero(grad.flatten()).flatten()
    return int(nonzero.min()), int(nonzero.max())


@pytest.mark.parametrize(
    "layers",
    [
        [(7, 2, 3), (3, 2, 1), (3, 1, 1)],  # a ResNet-like stem
        [(11, 4, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1)],  # AlexNet's first layers
        [(3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4), (3, 1, 8, 8)],  # WaveNet-style dilations
        [(4, 2, 1), (2, 1, 0), (5, 3, 4, 2)],  # even kernels, dilation with stride: half-pixel starts
    ],
)
def test_receptive_field_matches_gradient_support(layers):
    """Reference: the inputs on which one output's gradient is nonzero, through real nn.Conv1d layers.

    Every weight is 1 and the input is positive, so no contribution cancels: the support's extent is the field.
    """
    stack = nn.Sequential(
        *[
            nn.Conv1d(1, 1, k, stride=s, padding=p, dilation=d, bias=False)
            for k, s, p, d in (lay + (1,) * 0 if len(lay) == 4 else lay + (1,) for lay in layers)
        ]
    ).double()
    for conv in stack:
        nn.init.ones_(conv.weight)
    fields = arithmetic.receptive_field(layers)
    rf = fields[-1]
    length = 4 * rf.size + 8 * rf.jump
    x = torch.rand(1, 1, length, dtype=torch.float64, requires_grad=True)
    y = stack(x)
    # An output whose whole field lies inside the input (away from the zero padding).
    index = next(i for i in range(y.shape[-1]) if rf.start + i * rf.jump - (rf.size - 1) / 2 >= 0)
    (grad,) = torch.autograd.grad(y[0, 0, index], x)
    first, last = _support(grad)
    assert last - first + 1 == rf.size
    assert (first + last) / 2 == rf.start + index * rf.jump


def test_receptive_field_per_dimension_tuples():
    fields = arithmetic.receptive_field([((7, 5), 2, 3), ((3, 1), (2, 1), (1, 0))])
    assert fields == [RF((7, 5), (2, 2), (0.0, -1.0)), RF((11, 5), (4, 2), (0.0, -1.0))]
    # Each dimension equals the 1-D result.
    for dim, layers in enumerate([[(7, 2, 3), (3, 2, 1)], [(5, 2, 3), (1, 1, 0)]]):
        for got, ref in zip(fields, arithmetic.receptive_field(layers), strict=True):
            assert (got.size[dim], got.jump[dim], got.start[dim]) == (ref.size, ref.jump, ref.start)


def test_receptive_field_defaults_and_parse_layers():
    assert arithmetic.parse_layers("7/2/3, 3/2/1, 3/1/1/2, 5") == [(7, 2, 3), (3, 2, 1), (3, 1, 1, 2), (5,)]
    assert arithmetic.receptive_field([3, (3,), (3, 1), (3, 1, 0, 1)])[-1] == RF(9, 1, 4.0)
    with pytest.raises(ValueError, match="layer 1"):
        arithmetic.parse_layers("3/1/1, 3/x")


# --------------------------------------------------------------------------------------------------------------------
# Parameters and MACs


@FEWER
@given(
    c_in_per_group=st.integers(1, 8),
    c_out_per_group=st.integers(1, 8),
    groups=st.integers(1, 4),
    kernel=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    bias=st.booleans(),
)
def test_conv_params_equals_nn_conv2d(c_in_per_group, c_out_per_group, groups, kernel, bias):
    c_in, c_out = c_in_per_group * groups, c_out_per_group * groups
    conv = nn.Conv2d(c_in, c_out, kernel, groups=groups, bias=bias, device=META)
    assert arithmetic.conv_params(c_in, c_out, kernel, groups=groups, bias=bias) == sum(
        p.numel() for p in conv.parameters()
    )


@pytest.mark.parametrize(
    "c_in, c_out, kernel, groups, size", [(3, 64, 11, 1, 55), (32, 32, 3, 32, 7), (8, 12, 5, 4, 6)]
)
def test_conv_macs_equals_flop_counter(c_in, c_out, kernel, groups, size):
    """Reference: torch.utils.flop_counter counts 2 FLOPs per multiply-accumulate of a convolution."""
    conv = nn.Conv2d(c_in, c_out, kernel, groups=groups, bias=False, device=META)
    with FlopCounterMode(display=False) as counter:
        y = conv(torch.empty(1, c_in, size + kernel - 1, size + kernel - 1, device=META))
    assert tuple(y.shape[2:]) == (size, size)
    assert arithmetic.conv_macs(c_in, c_out, (kernel, kernel), (size, size), groups=groups) * 2 == (
        counter.get_total_flops()
    )


@pytest.mark.parametrize(
    "c_in, c_out, k, size", [(32, 64, 3, 112), (512, 512, 3, 14), (728, 728, 3, 19), (16, 24, 5, 9)]
)
def test_separable_counts_and_ratio(c_in, c_out, k, size):
    from convatlas.nn import DepthwiseConv2d, PointwiseConv2d, SeparableConv2d

    kernel = (k, k)
    full = arithmetic.conv_params(c_in, c_out, kernel, bias=False)
    dw, pw = arithmetic.depthwise_params(c_in, kernel, bias=False), arithmetic.pointwise_params(c_in, c_out, bias=False)
    assert dw == c_in * k * k and pw == c_in * c_out
    assert arithmetic.separable_params(c_in, c_out, kernel, bias=False) == dw + pw
    with torch.device(META):
        sep = SeparableConv2d(c_in, c_out, k)
        biased = [DepthwiseConv2d(c_in, k), PointwiseConv2d(c_in, c_out)]
    assert sum(p.numel() for p in sep.parameters()) == dw + pw
    assert sum(p.numel() for m in biased for p in m.parameters()) == arithmetic.separable_params(c_in, c_out, kernel)
    macs = arithmetic.separable_macs(c_in, c_out, kernel, (size, size))
    assert macs == arithmetic.depthwise_macs(c_in, kernel, size * size) + arithmetic.pointwise_macs(
        c_in, c_out, size**2
    )
    # MobileNets eq. 5: the cost ratio is exactly 1/C_out + 1/k^2.
    ratio = macs / arithmetic.conv_macs(c_in, c_out, kernel, (size, size))
    assert ratio == pytest.approx(arithmetic.separable_ratio(c_out, kernel), rel=1e-12)
    assert ratio == pytest.approx(1 / c_out + 1 / k**2, rel=1e-12)
    assert full / (dw + pw) == pytest.approx(1 / ratio, rel=1e-12)


def test_arithmetic_does_not_import_torch():
    code = "import sys, convatlas.arithmetic; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
