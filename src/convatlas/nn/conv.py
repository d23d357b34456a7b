"""Thin modules over :mod:`convatlas.ops.conv`: pointwise, depthwise and depthwise-separable convolution.

Each module holds its hyperparameters and weights (initialised as ``torch.nn.Conv2d`` does, with the same weight
shapes so state dicts are interchangeable) and calls the op. They are not ``nn.Conv2d`` subclasses: a model's
``isinstance(m, nn.Conv2d)`` initialisation loop skips them (call ``reset_parameters`` or initialise ``m.weight``).

:class:`SeparableConv2d` is the building block of Xception (Chollet 2017: depthwise then pointwise, no nonlinearity
between) and MobileNet v1 (Howard et al. 2017: depthwise-BN-ReLU then pointwise-BN-ReLU); the norm and activation at
each step are options.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from convatlas.ops.conv import depthwise_conv, pointwise_conv

__all__ = ["DepthwiseConv2d", "PointwiseConv2d", "SeparableConv2d"]


def _init_conv(weight: nn.Parameter, bias: nn.Parameter | None) -> None:
    """``torch.nn.Conv2d``'s default initialisation: Kaiming-uniform (``a = sqrt(5)``), bias in +-1/sqrt(fan_in)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = math.prod(weight.shape[1:])
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound, bound)


def _positive(name: str, value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


class PointwiseConv2d(nn.Module):
    """Pointwise (1x1) convolution: channel mixing at every position. See :func:`convatlas.ops.pointwise_conv`.

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, out_channels, ceil(H / stride), ceil(W / stride)]
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, bias: bool = True):
        super().__init__()
        self.in_channels = _positive("in_channels", in_channels, "PointwiseConv2d")
        self.out_channels = _positive("out_channels", out_channels, "PointwiseConv2d")
        self.stride = _positive("stride", stride, "PointwiseConv2d")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise as ``torch.nn.Conv2d`` does."""
        _init_conv(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return pointwise_conv(x, self.weight, self.bias, stride=self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, bias={self.bias is not None}"


class DepthwiseConv2d(nn.Module):
    """Depthwise convolution (``groups = channels``): each channel filtered on its own by ``multiplier`` filters.

    See :func:`convatlas.ops.depthwise_conv`. ``padding=None`` keeps the size at stride 1 for odd kernels
    (``p = d(k-1)/2``); ``"same"`` also handles even kernels (stride 1 only).

    Shapes:
        x (Tensor[N, channels, H, W]) -> Tensor[N, channels * multiplier, H', W'],
        ``H' = floor((H + 2p - d(k-1) - 1)/s) + 1``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | str | None = None,
        dilation: int = 1,
        multiplier: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        where = "DepthwiseConv2d"
        self.channels = _positive("channels", channels, where)
        self.kernel_size = _positive("kernel_size", kernel_size, where)
        self.stride = _positive("stride", stride, where)
        self.dilation = _positive("dilation", dilation, where)
        self.multiplier = _positive("multiplier", multiplier, where)
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.out_channels = channels * multiplier
        self.weight = nn.Parameter(torch.empty(self.out_channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise as ``torch.nn.Conv2d`` does."""
        _init_conv(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv(
            x, self.weight, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
            f"dilation={self.dilation}, multiplier={self.multiplier}, bias={self.bias is not None}"
        )


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution: :class:`DepthwiseConv2d`, optional norm/act, :class:`PointwiseConv2d`,
    optional norm/act.

    - Xception: ``SeparableConv2d(c_in, c_out)`` (no norm or activation between; a BatchNorm after via ``norm``).
    - MobileNet v1: ``SeparableConv2d(c_in, c_out, stride=s, dw_norm=nn.BatchNorm2d, dw_act=nn.ReLU,
      norm=nn.BatchNorm2d, act=nn.ReLU)``.

    The convolutions have no bias by default (a norm usually follows). Children: ``depthwise``, ``dw_norm``,
    ``dw_act``, ``pointwise``, ``norm``, ``act`` (``nn.Identity`` where not used). Parameters:
    ``C_in k^2 + C_in C_out`` (see :func:`convatlas.arithmetic.separable_params`).

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, out_channels, H', W'],
        ``H' = floor((H + 2p - d(k-1) - 1)/s) + 1`` (``H' = ceil(H / s)`` with the default padding and odd k).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | str | None = None,
        dilation: int = 1,
        multiplier: int = 1,
        bias: bool = False,
        dw_norm: type[nn.Module] | None = None,
        dw_act: type[nn.Module] | None = None,
        norm: type[nn.Module] | None = None,
        act: type[nn.Module] | None = None,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depthwise = DepthwiseConv2d(
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            multiplier=multiplier,
            bias=bias,
        )
        mid = self.depthwise.out_channels
        self.dw_norm = dw_norm(mid) if dw_norm is not None else nn.Identity()
        self.dw_act = dw_act() if dw_act is not None else nn.Identity()
        self.pointwise = PointwiseConv2d(mid, out_channels, bias=bias)
        self.norm = norm(out_channels) if norm is not None else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.dw_act(self.dw_norm(self.depthwise(x)))  # (N, C_in * m, H', W')
        return self.act(self.norm(self.pointwise(x)))  # (N, C_out, H', W')
