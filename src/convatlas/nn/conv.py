"""Depthwise-separable convolution, the block Xception and MobileNet v1 share, and reference pointwise and
depthwise modules over :mod:`convatlas.ops.conv`.

Two kinds of module live here, on purpose:

- :class:`SeparableConv2d` is the one block the model zoo uses: a ``k x k`` depthwise convolution
  (``groups = C_in``), an optional norm and activation, a ``1 x 1`` pointwise convolution, an optional norm and
  activation. It is two :class:`~convatlas.nn.layers.ConvNormAct` built on ``torch.nn.Conv2d``, so it runs on the
  native kernels (cuDNN, oneDNN), traces with ``torch.fx``, exports to ONNX, and a model's
  ``isinstance(m, nn.Conv2d)`` initialisation loop reaches its convolutions.
- :class:`DepthwiseConv2d` and :class:`PointwiseConv2d` are reference modules for teaching and verification: thin
  wrappers that call :func:`convatlas.ops.depthwise_conv` and :func:`convatlas.ops.pointwise_conv`, which compute
  from tensor primitives (shift-and-add, one matrix product) and never call ``F.conv*``. They are slower, and their
  argument checks in Python make ``torch.fx`` tracing fail, so no model uses them. Their parameters have
  ``torch.nn.Conv2d``'s names and shapes, so a state dict moves between them and the convolutions of
  :class:`SeparableConv2d` (``dw.0``, ``pw.0``) unchanged.

Why not one module with an implementation switch: the models need only the native path, and a switch would make
every model's layers depend on a flag that changes their speed and traceability. The block is instead tested
against the from-primitives operator :func:`convatlas.ops.separable_conv` (float64, forward and backward).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from convatlas.nn.layers import ConvNormAct
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


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution: ``k x k`` depthwise conv, optional norm/act, ``1 x 1`` pointwise conv,
    optional norm/act. Native ``nn.Conv2d`` underneath (see the module docstring).

    - Xception (Chollet 2017): ``SeparableConv2d(c_in, c_out, norm=nn.BatchNorm2d)``, nothing between the two
      convolutions.
    - MobileNet v1 (Howard et al. 2017): ``SeparableConv2d(c_in, c_out, stride=s, dw_norm=nn.BatchNorm2d,
      dw_act=nn.ReLU6, norm=nn.BatchNorm2d, act=nn.ReLU6)``.

    Children: ``dw`` and ``pw``, each a :class:`~convatlas.nn.layers.ConvNormAct` (``dw.0`` the depthwise
    ``nn.Conv2d``, then its norm and activation where given; likewise ``pw``). The convolutions have no bias by
    default (a norm usually follows). Parameters without norms or bias: ``C_in m k^2 + C_in m C_out`` (see
    :func:`convatlas.arithmetic.separable_params`).

    Args:
        in_channels, out_channels: channels in and out.
        kernel_size: depthwise kernel ``k``.
        stride, dilation: of the depthwise convolution.
        padding: of the depthwise convolution; ``None`` keeps the size at stride 1 for odd kernels
            (``p = d(k-1)/2``), ``"same"`` (stride 1) also for even ones.
        multiplier: depthwise filters per input channel ``m``; the pointwise step sees ``C_in m`` channels.
        bias: a bias in both convolutions.
        dw_norm, dw_act: norm and activation after the depthwise convolution (MobileNet), or None (Xception).
        norm, act: norm and activation after the pointwise convolution, or None.

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
        where = "SeparableConv2d"
        self.in_channels = _positive("in_channels", in_channels, where)
        self.out_channels = _positive("out_channels", out_channels, where)
        _positive("kernel_size", kernel_size, where)
        _positive("stride", stride, where)
        _positive("dilation", dilation, where)
        mid = in_channels * _positive("multiplier", multiplier, where)
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.dw = ConvNormAct(
            in_channels,
            mid,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=bias,
            norm=dw_norm,
            act=dw_act,
        )
        self.pw = ConvNormAct(mid, out_channels, 1, padding=0, bias=bias, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dw(x)  # (N, C_in * m, H', W')
        return self.pw(x)  # (N, C_out, H', W')


class PointwiseConv2d(nn.Module):
    """Reference pointwise (1x1) convolution over :func:`convatlas.ops.pointwise_conv` (a matrix product).

    For teaching and verification; models use ``nn.Conv2d(c_in, c_out, 1)`` (as :class:`SeparableConv2d` does).
    Parameters as ``torch.nn.Conv2d``'s, initialised the same way.

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
    """Reference depthwise convolution over :func:`convatlas.ops.depthwise_conv` (shift and add): each channel
    filtered on its own by ``multiplier`` filters (``groups = channels``).

    For teaching and verification; models use ``nn.Conv2d(c, c * m, k, groups=c)`` (as :class:`SeparableConv2d`
    does). Parameters as ``torch.nn.Conv2d``'s, initialised the same way. ``padding=None`` keeps the size at
    stride 1 for odd kernels (``p = d(k-1)/2``); ``"same"`` also handles even kernels (stride 1 only).

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
