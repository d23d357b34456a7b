"""Lightweight and dynamic convolution over sequences (Wu et al. 2019, "Pay Less Attention with Lightweight and
Dynamic Convolutions").

Both are depthwise convolutions along time whose kernel is normalised with a softmax over its K taps and shared by
the ``C // H`` adjacent channels of each of ``H`` heads (channel ``c`` uses head ``c // (C // H)``):

- :func:`lightweight_conv`: one kernel per head, ``weight (Tensor[H, K])``;
- :func:`dynamic_conv`: one kernel per head, batch element and time step, ``weight (Tensor[B, H, K, T])``
  (the paper predicts it from the input with a linear layer, see :class:`convatlas.nn.DynamicConv1d`).

With ``p = padding_l`` taps on the left the output keeps the length T:
``out[b, c, t] = sum_k w[h(c), k] * x[b, c, t + k - p]``, with ``x`` zero outside ``[0, T)``.
``p = K // 2`` centres the kernel (the default); ``p = K - 1`` makes it causal (step t sees only ``x[..t]``).

``backend="triton"`` (the default on CUDA when Triton imports) runs the kernels of
:mod:`convatlas.ops.kernels.seqconv`; ``backend="torch"`` (the default elsewhere) the PyTorch path below (a depthwise
``conv1d`` for lightweight, a sum of K shifted products for dynamic); see :mod:`convatlas.ops.backend`. Both are
``torch.fx`` leaves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from convatlas.errors import InputTypeError
from convatlas.ops.backend import resolve
from convatlas.ops.kernels import seqconv as _kernels
from convatlas.ops.tracing import fx_leaf

__all__ = ["dynamic_conv", "lightweight_conv"]


def _check_common(name: str, x: Tensor, heads: int, taps: int, padding_l: int | None, dropout: float) -> int:
    """Validate what both operators share; return the resolved ``padding_l``."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a Tensor[B, C, T] (3 dims), got {shape}")
    if not x.is_floating_point():
        raise InputTypeError(f"{name}: x must be a floating-point tensor, got {x.dtype}")
    channels = x.shape[1]
    if heads < 1 or channels % heads != 0:
        raise ValueError(f"{name}: the channels C={channels} of x must be divisible by the heads H={heads} of weight")
    if taps < 1:
        raise ValueError(f"{name}: the kernel size K must be >= 1, got {taps}")
    if padding_l is None:
        padding_l = taps // 2
    if isinstance(padding_l, bool) or not isinstance(padding_l, int):
        raise InputTypeError(f"{name}: padding_l must be an int or None, got {type(padding_l).__name__}")
    if not 0 <= padding_l <= taps - 1:
        raise ValueError(f"{name}: padding_l must lie in [0, K - 1] = [0, {taps - 1}] for K={taps}, got {padding_l}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout}")
    return padding_l


def _normalise(weight: Tensor, *, dim: int, softmax: bool, dtype: torch.dtype) -> Tensor:
    """Softmax over the taps (in float32 at least, so bf16 kernels still sum to one), cast to the input's dtype."""
    if softmax:
        weight = torch.softmax(weight, dim=dim, dtype=torch.promote_types(weight.dtype, torch.float32))
    return weight.to(dtype)


def _check_device(name: str, x: Tensor, weight: Tensor) -> None:
    if weight.device != x.device:
        raise ValueError(f"{name}: weight is on {weight.device} but x on {x.device}")


@fx_leaf
def lightweight_conv(
    x: Tensor,
    weight: Tensor,
    padding_l: int | None = None,
    weight_softmax: bool = True,
    dropout: float = 0.0,
    training: bool = True,
    *,
    backend: str = "auto",
) -> Tensor:
    """Lightweight convolution: a depthwise convolution over time with one softmax-normalised kernel per head.

    ``out[b, c, t] = sum_k w[h, k] * x[b, c, t + k - padding_l]`` with ``h = c // (C // H)`` and
    ``w = softmax(weight, dim=-1)`` (when ``weight_softmax``), followed in training by DropConnect on ``w``.

    Args:
        x (Tensor[B, C, T]): the sequence, channels first.
        weight (Tensor[H, K]): one kernel of K taps per head; H must divide C.
        padding_l: taps on the left, in ``[0, K - 1]``; ``None`` means ``K // 2`` (centred), ``K - 1`` is causal.
        weight_softmax: normalise each kernel with a softmax over its K taps.
        dropout: DropConnect probability on the normalised kernel (each tap zeroed with this probability, the rest
            scaled by ``1 / (1 - dropout)``), applied only when ``training`` is true, as ``F.dropout`` does.
        training: whether DropConnect is active.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (CUDA; CPU only under Triton's interpreter).

    Returns:
        Tensor[B, C, T]

    Raises:
        ValueError: on a wrong number of dimensions, C not divisible by H, or ``padding_l``/``dropout`` out of range.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"lightweight_conv: weight must be a Tensor[H, K] (2 dims), got {shape}")
    heads, taps = weight.shape
    padding_l = _check_common("lightweight_conv", x, heads, taps, padding_l, dropout)
    _check_device("lightweight_conv", x, weight)
    which = resolve("lightweight_conv", backend, x.device)
    w = _normalise(weight, dim=1, softmax=weight_softmax, dtype=x.dtype)
    if dropout > 0.0 and training:
        w = F.dropout(w, p=dropout, training=True)
    if which == "triton":
        return _kernels.lightweight_conv_triton(x, w, padding_l)
    return _lightweight_torch(x, w, padding_l)


def _lightweight_torch(x: Tensor, w: Tensor, padding_l: int) -> Tensor:
    """PyTorch path: the per-head kernel repeated over its channels, then a depthwise ``conv1d``."""
    channels = x.shape[1]
    heads, taps = w.shape
    per_head = channels // heads
    x = F.pad(x, (padding_l, taps - 1 - padding_l))  # (B, C, T + K - 1)
    w = w.repeat_interleave(per_head, dim=0).unsqueeze(1)  # (C, 1, K): channel c gets head c // per_head
    return F.conv1d(x, w, groups=channels)


@fx_leaf
def dynamic_conv(
    x: Tensor,
    weight: Tensor,
    padding_l: int | None = None,
    weight_softmax: bool = True,
    dropout: float = 0.0,
    training: bool = True,
    *,
    backend: str = "auto",
) -> Tensor:
    """Dynamic convolution: like :func:`lightweight_conv`, but with a different kernel at every time step.

    ``out[b, c, t] = sum_k w[b, h, k, t] * x[b, c, t + k - padding_l]`` with ``h = c // (C // H)`` and
    ``w = softmax(weight, dim=2)`` over the K taps (when ``weight_softmax``), then DropConnect in training.

    Args:
        x (Tensor[B, C, T]): the sequence, channels first.
        weight (Tensor[B, H, K, T]): the kernel of each head at each step; H must divide C.
        padding_l: taps on the left, in ``[0, K - 1]``; ``None`` means ``K // 2``, ``K - 1`` is causal.
        weight_softmax: normalise each kernel with a softmax over its K taps.
        dropout: DropConnect probability on the normalised kernel, applied only when ``training`` is true.
        training: whether DropConnect is active.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``, as in :func:`lightweight_conv`.

    Returns:
        Tensor[B, C, T]

    Raises:
        ValueError: on shapes that disagree (B, T), C not divisible by H, or ``padding_l``/``dropout`` out of range.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"dynamic_conv: weight must be a Tensor[B, H, K, T] (4 dims), got {shape}")
    batch, heads, taps, steps = weight.shape
    padding_l = _check_common("dynamic_conv", x, heads, taps, padding_l, dropout)
    if (batch, steps) != (x.shape[0], x.shape[2]):
        raise ValueError(
            f"dynamic_conv: weight Tensor[B, H, K, T] = {tuple(weight.shape)} must match x Tensor[B, C, T] = "
            f"{tuple(x.shape)} in B and T"
        )
    _check_device("dynamic_conv", x, weight)
    which = resolve("dynamic_conv", backend, x.device)
    w = _normalise(weight, dim=2, softmax=weight_softmax, dtype=x.dtype)
    if dropout > 0.0 and training:
        w = F.dropout(w, p=dropout, training=True)
    if which == "triton":
        return _kernels.dynamic_conv_triton(x, w, padding_l)
    return _dynamic_torch(x, w, padding_l)


def _dynamic_torch(x: Tensor, w: Tensor, padding_l: int) -> Tensor:
    """PyTorch path: a sum of K shifted products, memory O(B C T) instead of the O(B C T K) of unfolding."""
    batch, channels, steps = x.shape
    heads, taps = w.shape[1], w.shape[2]
    x = F.pad(x, (padding_l, taps - 1 - padding_l)).view(batch, heads, channels // heads, steps + taps - 1)
    out = x.new_zeros(batch, heads, channels // heads, steps)
    for k in range(taps):
        out = out + w[:, :, k, None, :] * x[..., k : k + steps]  # (B, H, C/H, T)
    return out.view(batch, channels, steps)
