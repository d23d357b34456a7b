"""Triton kernels for lightweight and dynamic convolution, forward and backward.

:func:`convatlas.ops.lightweight_conv` and :func:`convatlas.ops.dynamic_conv` call these with ``backend="triton"``
(their default on CUDA when Triton imports); the kernels receive the kernel weights already normalised (softmax and
DropConnect are done by the op), so they compute only ``out[b, c, t] = sum_k w[h, k(, t)] * x[b, c, t + k - p]``
and its gradients.

Layout: every tensor contiguous, ``x``/``out`` as ``[B, C, T]`` rows of length T, ``w`` as ``[H, K]`` (lightweight)
or ``[B, H, K, T]`` (dynamic). Each program owns one tile of ``BLOCK_T`` time steps and gathers the
``(BLOCK_T, BLOCK_K)`` window of its taps with one masked load; products accumulate in float32 (float64 for float64
inputs, so the kernels can be checked against a float64 loop).

- lightweight forward and input gradient: one program per (row, time tile); the input gradient is the same
  correlation with the kernel flipped (``src = t - k + p``);
- lightweight weight gradient: per-(row, tile) partial sums of ``g[t] * x[t + k - p]``, reduced over B, the channels of
  a head and the tiles in PyTorch (deterministic, no atomics);
- dynamic: one program per (batch, head, time tile) that loads its weight tile once and loops over the ``C // H``
  channels of the head, for the forward, the input gradient and the weight gradient alike.

With ``TRITON_INTERPRET=1`` in the environment when Triton is imported, the kernels run on CPU tensors through
Triton's interpreter (:mod:`convatlas.ops.kernels.triton_support`): that is how the tests check them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from convatlas.errors import InputTypeError
from convatlas.ops.kernels.triton_support import interpreting, tl, triton

__all__ = ["dynamic_conv_triton", "lightweight_conv_triton"]

BLOCK_T = 64


if triton is not None:

    @triton.jit
    def _lw_apply(x_ptr, w_ptr, out_ptr, C, T, CPH, K, PAD, FLIP: tl.constexpr, F64: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
        """out[row, t] = sum_k w[h, k] * x[row, t + k - PAD] (or x[row, t - k + PAD] when FLIP)."""
        row = tl.program_id(0)
        h = (row % C) // CPH
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        k = tl.arange(0, BLOCK_K)
        acc_ty = tl.float64 if F64 else tl.float32
        w = tl.load(w_ptr + h * K + k, mask=k < K, other=0.0).to(acc_ty)
        if FLIP:  # noqa: SIM108 (a constexpr branch, resolved at compile time)
            src = t[:, None] - k[None, :] + PAD
        else:
            src = t[:, None] + k[None, :] - PAD
        mask = (src >= 0) & (src < T) & (k[None, :] < K) & (t[:, None] < T)
        base = row.to(tl.int64) * T
        xv = tl.load(x_ptr + base + src, mask=mask, other=0.0).to(acc_ty)  # (BLOCK_T, BLOCK_K)
        acc = tl.sum(xv * w[None, :], axis=1)
        tl.store(out_ptr + base + t, acc.to(out_ptr.dtype.element_ty), mask=t < T)

    @triton.jit
    def _lw_grad_w(x_ptr, g_ptr, part_ptr, T, K, PAD, NTB, F64: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
        """part[row, tile, k] = sum_{t in tile} g[row, t] * x[row, t + k - PAD]."""
        row = tl.program_id(0)
        tile = tl.program_id(1)
        t = tile * BLOCK_T + tl.arange(0, BLOCK_T)
        k = tl.arange(0, BLOCK_K)
        acc_ty = tl.float64 if F64 else tl.float32
        base = row.to(tl.int64) * T
        src = t[:, None] + k[None, :] - PAD
        mask = (src >= 0) & (src < T) & (k[None, :] < K) & (t[:, None] < T)
        xv = tl.load(x_ptr + base + src, mask=mask, other=0.0).to(acc_ty)
        g = tl.load(g_ptr + base + t, mask=t < T, other=0.0).to(acc_ty)
        acc = tl.sum(xv * g[:, None], axis=0)  # (BLOCK_K,)
        tl.store(part_ptr + (row.to(tl.int64) * NTB + tile) * BLOCK_K + k, acc)

    @triton.jit
    def _dyn_apply(x_ptr, w_ptr, out_ptr, C, H, T, CPH, K, PAD, FLIP: tl.constexpr, F64: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
        """Forward: out[b, c, t] = sum_k w[b, h, k, t] * x[b, c, t + k - PAD].

        FLIP (input gradient): out[b, c, s] = sum_k w[b, h, k, s - k + PAD] * x[b, c, s - k + PAD].
        """
        bh = tl.program_id(0)
        b = bh // H
        h = bh % H
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        k = tl.arange(0, BLOCK_K)
        acc_ty = tl.float64 if F64 else tl.float32
        if FLIP:
            src = t[:, None] - k[None, :] + PAD
            w_t = src  # the weight of the output step the gradient comes from
        else:
            src = t[:, None] + k[None, :] - PAD
            w_t = t[:, None] + 0 * k[None, :]
        mask = (src >= 0) & (src < T) & (k[None, :] < K) & (t[:, None] < T)
        w_base = bh.to(tl.int64) * K * T
        w = tl.load(w_ptr + w_base + k[None, :] * T + w_t, mask=mask, other=0.0).to(acc_ty)  # (BLOCK_T, BLOCK_K)
        for i in range(0, CPH):
            base = (b.to(tl.int64) * C + h * CPH + i) * T
            xv = tl.load(x_ptr + base + src, mask=mask, other=0.0).to(acc_ty)
            acc = tl.sum(xv * w, axis=1)
            tl.store(out_ptr + base + t, acc.to(out_ptr.dtype.element_ty), mask=t < T)

    @triton.jit
    def _dyn_grad_w(x_ptr, g_ptr, gw_ptr, C, H, T, CPH, K, PAD, F64: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
        """gw[b, h, k, t] = sum_{c in head h} g[b, c, t] * x[b, c, t + k - PAD]."""
        bh = tl.program_id(0)
        b = bh // H
        h = bh % H
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        k = tl.arange(0, BLOCK_K)
        acc_ty = tl.float64 if F64 else tl.float32
        src = t[:, None] + k[None, :] - PAD
        mask = (src >= 0) & (src < T) & (k[None, :] < K) & (t[:, None] < T)
        acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=acc_ty)
        for i in range(0, CPH):
            base = (b.to(tl.int64) * C + h * CPH + i) * T
            xv = tl.load(x_ptr + base + src, mask=mask, other=0.0).to(acc_ty)
            g = tl.load(g_ptr + base + t, mask=t < T, other=0.0).to(acc_ty)
            acc += xv * g[:, None]
        out_mask = (k[None, :] < K) & (t[:, None] < T)
        w_offs = bh.to(tl.int64) * K * T + k[None, :] * T + t[:, None]
        tl.store(gw_ptr + w_offs, acc.to(gw_ptr.dtype.element_ty), mask=out_mask)


def _check(x: Tensor, w: Tensor, name: str) -> None:
    if triton is None:
        raise RuntimeError(f"{name}: Triton is not installed; use convatlas.ops.{name.removesuffix('_triton')}")
    if not (x.is_cuda or interpreting()):
        raise ValueError(f"{name}: x is on {x.device}; the kernels need CUDA tensors (or TRITON_INTERPRET=1)")
    if w.dtype != x.dtype:
        raise InputTypeError(f"{name}: weight dtype {w.dtype} must equal x dtype {x.dtype}")


def _block_k(taps: int) -> int:
    return max(2, triton.next_power_of_2(taps))


def _lw_forward(x: Tensor, w: Tensor, padding_l: int, flip: bool) -> Tensor:
    batch, channels, steps = x.shape
    heads, taps = w.shape
    out = torch.empty_like(x)
    grid = (batch * channels, triton.cdiv(steps, BLOCK_T))
    _lw_apply[grid](
        x, w, out, channels, steps, channels // heads, taps, padding_l,
        FLIP=flip, F64=x.dtype == torch.float64, BLOCK_T=BLOCK_T, BLOCK_K=_block_k(taps),
    )  # fmt: skip
    return out


def _lw_weight_grad(x: Tensor, g: Tensor, heads: int, taps: int, padding_l: int) -> Tensor:
    batch, channels, steps = x.shape
    tiles = triton.cdiv(steps, BLOCK_T)
    block_k = _block_k(taps)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty(batch * channels, tiles, block_k, device=x.device, dtype=acc_dtype)
    _lw_grad_w[(batch * channels, tiles)](
        x, g, part, steps, taps, padding_l, tiles, F64=x.dtype == torch.float64, BLOCK_T=BLOCK_T, BLOCK_K=block_k
    )
    part = part.view(batch, heads, channels // heads, tiles, block_k)[..., :taps]
    return part.sum(dim=(0, 2, 3))  # (H, K)


class _LightweightConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, padding_l: int) -> Tensor:
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        ctx.padding_l = padding_l
        return _lw_forward(x, w, padding_l, flip=False)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _lw_forward(grad, w, ctx.padding_l, flip=True)
        if ctx.needs_input_grad[1]:
            grad_w = _lw_weight_grad(x, grad, w.shape[0], w.shape[1], ctx.padding_l).to(w.dtype)
        return grad_x, grad_w, None


def lightweight_conv_triton(x: Tensor, w: Tensor, padding_l: int) -> Tensor:
    """The Triton lightweight convolution with an already normalised kernel, differentiable in ``x`` and ``w``.

    Args:
        x (Tensor[B, C, T]): the sequence (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        w (Tensor[H, K]): the normalised kernel, same dtype as ``x``.
        padding_l: taps on the left, in ``[0, K - 1]``.

    Returns:
        Tensor[B, C, T]
    """
    _check(x, w, "lightweight_conv_triton")
    return _LightweightConv.apply(x, w, padding_l)


def _dyn_launch(kernel, x: Tensor, w: Tensor, out: Tensor, padding_l: int, **flags) -> None:
    batch, channels, steps = x.shape
    heads, taps = w.shape[1], w.shape[2]
    grid = (batch * heads, triton.cdiv(steps, BLOCK_T))
    kernel[grid](
        x, w, out, channels, heads, steps, channels // heads, taps, padding_l,
        F64=x.dtype == torch.float64, BLOCK_T=BLOCK_T, BLOCK_K=_block_k(taps), **flags,
    )  # fmt: skip


class _DynamicConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, padding_l: int) -> Tensor:
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        ctx.padding_l = padding_l
        out = torch.empty_like(x)
        _dyn_launch(_dyn_apply, x, w, out, padding_l, FLIP=False)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x)
            _dyn_launch(_dyn_apply, grad, w, grad_x, ctx.padding_l, FLIP=True)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(w)
            _dyn_grad_w_launch(x, grad, grad_w, ctx.padding_l)
        return grad_x, grad_w, None


def _dyn_grad_w_launch(x: Tensor, grad: Tensor, grad_w: Tensor, padding_l: int) -> None:
    batch, channels, steps = x.shape
    heads, taps = grad_w.shape[1], grad_w.shape[2]
    grid = (batch * heads, triton.cdiv(steps, BLOCK_T))
    _dyn_grad_w[grid](
        x, grad, grad_w, channels, heads, steps, channels // heads, taps, padding_l,
        F64=x.dtype == torch.float64, BLOCK_T=BLOCK_T, BLOCK_K=_block_k(taps),
    )  # fmt: skip


def dynamic_conv_triton(x: Tensor, w: Tensor, padding_l: int) -> Tensor:
    """The Triton dynamic convolution with already normalised kernels, differentiable in ``x`` and ``w``.

    Args:
        x (Tensor[B, C, T]): the sequence (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        w (Tensor[B, H, K, T]): the normalised kernel of each head at each step, same dtype as ``x``.
        padding_l: taps on the left, in ``[0, K - 1]``.

    Returns:
        Tensor[B, C, T]
    """
    _check(x, w, "dynamic_conv_triton")
    return _DynamicConv.apply(x, w, padding_l)
