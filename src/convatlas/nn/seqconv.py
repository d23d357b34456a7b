"""Modules over :func:`convatlas.ops.lightweight_conv` and :func:`convatlas.ops.dynamic_conv` (Wu et al. 2019).

- :class:`LightweightConv1d`: holds the ``Tensor[H, K]`` kernel; see :func:`~convatlas.ops.lightweight_conv`.
- :class:`DynamicConv1d`: predicts a kernel at every step from the input with a linear layer
  (``C -> H * K``); see :func:`~convatlas.ops.dynamic_conv`.
- :class:`LightConvBlock`: the paper's block, ``Linear(D, 2C) -> GLU -> conv -> Linear(C, D)``, over
  ``Tensor[B, T, D]``.

Every module also decodes step by step when it is causal (``padding_l = K - 1``): ``step(x_t, state)`` takes one
time step and a state holding the last ``K - 1`` conv inputs and returns the output of that step, equal to the
corresponding step of the full-sequence forward.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.ops.seqconv import dynamic_conv, lightweight_conv

__all__ = ["DynamicConv1d", "LightConvBlock", "LightweightConv1d"]


def _check_input(x: Tensor, where: str, layout: str, dim: int, size: int) -> Tensor:
    """``x`` when it has 3 dimensions and ``size`` entries along ``dim``, else a ``ValueError`` naming ``where``."""
    if x.dim() != 3 or x.shape[dim] != size:
        raise ValueError(f"{where}: x must be Tensor[{layout}], got {tuple(x.shape)}")
    return x


# Leaves for torch.fx (as torchvision's ops): their checks and kernel choice run at call time, also in a traced graph.
torch.fx.wrap("_check_input")
torch.fx.wrap("lightweight_conv")
torch.fx.wrap("dynamic_conv")


class _SeqConv1d(nn.Module):
    """What the two convolutions share: sizes, bias, the causal window of :meth:`step` and the repr."""

    def __init__(self, channels: int, kernel_size: int, *, heads: int, padding_l: int | None, weight_softmax: bool,
                 weight_dropout: float, bias: bool):  # fmt: skip
        super().__init__()
        name = type(self).__name__
        if channels < 1 or heads < 1 or channels % heads != 0:
            raise ValueError(f"{name}: channels={channels} must be a positive multiple of heads={heads}")
        if kernel_size < 1:
            raise ValueError(f"{name}: kernel_size must be >= 1, got {kernel_size}")
        padding_l = kernel_size // 2 if padding_l is None else padding_l
        if not 0 <= padding_l <= kernel_size - 1:
            raise ValueError(
                f"{name}: padding_l must lie in [0, {kernel_size - 1}] for kernel_size={kernel_size}, got {padding_l}"
            )
        self.channels, self.kernel_size, self.heads, self.padding_l = channels, kernel_size, heads, padding_l
        self.weight_softmax, self.weight_dropout = weight_softmax, weight_dropout
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def _add_bias(self, out: Tensor) -> Tensor:
        """Add the per-channel bias to ``Tensor[B, C, T]`` or ``Tensor[B, C]`` (channels on dim 1)."""
        if self.bias is None:
            return out
        return out + self.bias.view(-1, *([1] * (out.dim() - 2))).to(out.dtype)

    def _window(self, x_t: Tensor, state: Tensor | None) -> Tensor:
        """The last K conv inputs ``Tensor[B, C, K]``: the state's ``K - 1`` (zeros at the start) then ``x_t``."""
        if self.padding_l != self.kernel_size - 1:
            raise ValueError(
                f"{type(self).__name__}.step: needs a causal layer (padding_l = K - 1 = {self.kernel_size - 1}), "
                f"this one has padding_l={self.padding_l}"
            )
        if state is None:
            state = x_t.new_zeros(x_t.shape[0], x_t.shape[1], self.kernel_size - 1)  # the causal left padding
        return torch.cat([state, x_t.unsqueeze(-1)], dim=-1)

    def _apply_window(self, window: Tensor, w: Tensor) -> Tensor:
        """``sum_k w[.., h, k] * window[b, c, k]`` for ``w`` of shape ``(1 or B, H, K)``: ``Tensor[B, C]``."""
        batch = window.shape[0]
        heads_view = window.view(batch, self.heads, -1, self.kernel_size)  # (B, H, C/H, K)
        return (heads_view * w[:, :, None, :].to(window.dtype)).sum(-1).view(batch, -1)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, heads={self.heads}, padding_l={self.padding_l}, "
            f"weight_dropout={self.weight_dropout}"
        )


class LightweightConv1d(_SeqConv1d):
    """Lightweight convolution with a learned ``Tensor[H, K]`` kernel. See :func:`convatlas.ops.lightweight_conv`.

    Args:
        channels: C, the input and output channels.
        kernel_size: K, the taps of each kernel.
        heads: H, kernels shared by ``C // H`` adjacent channels each.
        padding_l: taps on the left (default ``K // 2``; ``K - 1`` is causal and enables :meth:`step`).
        weight_softmax: normalise the kernel with a softmax over its taps.
        weight_dropout: DropConnect probability on the normalised kernel in training.
        bias: add a learned per-channel bias.

    Shapes:
        x (Tensor[B, C, T]) -> Tensor[B, C, T]
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        *,
        heads: int = 1,
        padding_l: int | None = None,
        weight_softmax: bool = True,
        weight_dropout: float = 0.0,
        bias: bool = False,
    ):
        super().__init__(channels, kernel_size, heads=heads, padding_l=padding_l, weight_softmax=weight_softmax,
                         weight_dropout=weight_dropout, bias=bias)  # fmt: skip
        self.weight = nn.Parameter(torch.empty(heads, kernel_size))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = lightweight_conv(
            x, self.weight, self.padding_l, self.weight_softmax, dropout=self.weight_dropout, training=self.training
        )
        return self._add_bias(out)

    def step(self, x_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step of causal decoding (no DropConnect).

        Args:
            x_t (Tensor[B, C]): the input at step t.
            state (Tensor[B, C, K - 1]): the previous ``K - 1`` inputs, or ``None`` at the first step.

        Returns:
            (Tensor[B, C], Tensor[B, C, K - 1]): the output at step t and the next state.
        """
        window = self._window(x_t, state)  # (B, C, K)
        w = torch.softmax(self.weight, dim=-1) if self.weight_softmax else self.weight  # (H, K)
        return self._add_bias(self._apply_window(window, w[None])), window[..., 1:]


class DynamicConv1d(_SeqConv1d):
    """Dynamic convolution: a ``Linear(C, H * K)`` predicts the kernel of each step from the input at that step.

    See :func:`convatlas.ops.dynamic_conv`. Arguments as :class:`LightweightConv1d`.

    Shapes:
        x (Tensor[B, C, T]) -> Tensor[B, C, T]
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        *,
        heads: int = 1,
        padding_l: int | None = None,
        weight_softmax: bool = True,
        weight_dropout: float = 0.0,
        bias: bool = False,
    ):
        super().__init__(channels, kernel_size, heads=heads, padding_l=padding_l, weight_softmax=weight_softmax,
                         weight_dropout=weight_dropout, bias=bias)  # fmt: skip
        self.weight_linear = nn.Linear(channels, heads * kernel_size)

    def predict_kernel(self, x: Tensor) -> Tensor:
        """The raw (unnormalised) kernels: ``x (Tensor[B, C, T]) -> Tensor[B, H, K, T]``."""
        batch, _, steps = x.shape
        w = self.weight_linear(x.transpose(1, 2))  # (B, T, H*K)
        return w.view(batch, steps, self.heads, self.kernel_size).permute(0, 2, 3, 1)  # (B, H, K, T)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_input(x, "DynamicConv1d", f"B, {self.channels}, T", 1, self.channels)
        w = self.predict_kernel(x)
        out = dynamic_conv(
            x, w, self.padding_l, self.weight_softmax, dropout=self.weight_dropout, training=self.training
        )
        return self._add_bias(out)

    def step(self, x_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step of causal decoding (no DropConnect); arguments and returns as :meth:`LightweightConv1d.step`."""
        window = self._window(x_t, state)  # (B, C, K)
        w = self.weight_linear(x_t).view(x_t.shape[0], self.heads, self.kernel_size)  # (B, H, K)
        if self.weight_softmax:
            w = torch.softmax(w, dim=-1)
        return self._add_bias(self._apply_window(window, w)), window[..., 1:]


class LightConvBlock(nn.Module):
    """The paper's convolution block: input projection with GLU, lightweight or dynamic conv, output projection.

    ``y = Linear(C, D)(conv(GLU(Linear(D, 2C)(x))))``; residual connections, normalisation and the feed-forward
    part belong to the layer that uses it (see :mod:`convatlas.models.lightconv`).

    Args:
        dim: D, the model width (input and output features).
        kernel_size: K.
        heads: H.
        conv_dim: C, the width of the convolution (default D).
        dynamic: use :class:`DynamicConv1d` instead of :class:`LightweightConv1d`.
        causal: left padding ``K - 1`` (decoders; enables :meth:`step`) instead of ``K // 2``.
        weight_dropout: DropConnect probability on the normalised kernels.

    Shapes:
        x (Tensor[B, T, D]), padding_mask (Tensor[B, T] bool, True at padding) -> Tensor[B, T, D]
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        *,
        heads: int = 1,
        conv_dim: int | None = None,
        dynamic: bool = False,
        causal: bool = False,
        weight_dropout: float = 0.0,
    ):
        super().__init__()
        conv_dim = conv_dim or dim
        self.dim, self.conv_dim = dim, conv_dim
        self.in_proj = nn.Linear(dim, 2 * conv_dim)
        conv_cls = DynamicConv1d if dynamic else LightweightConv1d
        padding_l = kernel_size - 1 if causal else kernel_size // 2
        self.conv = conv_cls(conv_dim, kernel_size, heads=heads, padding_l=padding_l, weight_dropout=weight_dropout)
        self.out_proj = nn.Linear(conv_dim, dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = _check_input(x, "LightConvBlock", f"B, T, {self.dim}", 2, self.dim)
        u = F.glu(self.in_proj(x), dim=-1)  # (B, T, C)
        if padding_mask is not None:
            u = u.masked_fill(padding_mask[..., None], 0.0)  # padding must not leak into real tokens
        u = self.conv(u.transpose(1, 2)).transpose(1, 2)  # (B, C, T) -> (B, T, C)
        return self.out_proj(u)

    def step(self, x_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step of causal decoding.

        Args:
            x_t (Tensor[B, D]): the input at step t.
            state (Tensor[B, C, K - 1]): the conv state from the previous step, or ``None`` at the first step.

        Returns:
            (Tensor[B, D], Tensor[B, C, K - 1]): the output at step t and the next state.
        """
        u = F.glu(self.in_proj(x_t), dim=-1)  # (B, C)
        u, state = self.conv.step(u, state)
        return self.out_proj(u), state
