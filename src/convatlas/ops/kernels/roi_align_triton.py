"""RoI align as Triton kernels: ``backend="triton"`` of :func:`convatlas.ops.roi.roi_align` (the default on CUDA).

One program computes one output bin ``(k, i, j)`` for a block of channels: it walks the bin's bilinear samples and
reads the four corner vectors from the channels-last map ``[N*H*W, C]``, so every load is contiguous. The arithmetic
follows the PyTorch path step by step (sample position, the ``[-1, H]`` validity window, clamping, low and high
corners). Only the samples in a window computed by :mod:`convatlas.ops.roi` are visited (every sample that can fall
inside the map, so a box of side 1e9 visits about the map's size, not 1e9 samples); the average still divides by the
full ``g_h x g_w``. The backward program walks the same samples and adds
``weight * grad`` into the input gradient with atomic adds, as torchvision's CUDA kernel does.

Tested on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` when Triton is imported) against
torchvision; GPU timings: not measured (``benchmarks/ops.py --device cuda`` prints them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from convatlas.ops.kernels.triton_support import tl, triton

__all__ = ["roi_align_triton"]


if triton is not None:

    @triton.jit
    def _corner(pos, size):
        """Bilinear corner indices and weights along one axis, torchvision's rules (weights 0 outside [-1, size])."""
        valid = (pos >= -1.0) & (pos <= size)
        pos = tl.maximum(pos, 0.0)
        low = pos.to(tl.int32)
        at_edge = low >= size - 1
        low = tl.where(at_edge, size - 1, low)
        high = tl.where(at_edge, low, low + 1)
        pos = tl.where(at_edge, low.to(pos.dtype), pos)
        frac = pos - low.to(pos.dtype)
        w_high = tl.where(valid, frac, 0.0)
        w_low = tl.where(valid, 1.0 - frac, 0.0)
        return low, high, w_low, w_high

    @triton.jit
    def _roi_geometry(rois_ptr, grids_ptr, k, i, j, PH, PW, ALIGNED: tl.constexpr):
        # rois arrive scaled and shifted on the host, in the compute dtype: (b, x1 s - o, y1 s - o, x2 s - o, y2 s - o);
        # the samples per bin (g_h, g_w) as int64 from the host, where the windows are computed from them too
        b = tl.load(rois_ptr + k * 5).to(tl.int64)
        x1 = tl.load(rois_ptr + k * 5 + 1)
        y1 = tl.load(rois_ptr + k * 5 + 2)
        roi_w = tl.load(rois_ptr + k * 5 + 3) - x1
        roi_h = tl.load(rois_ptr + k * 5 + 4) - y1
        if not ALIGNED:
            roi_w = tl.maximum(roi_w, 1.0)
            roi_h = tl.maximum(roi_h, 1.0)
        bin_w = roi_w / PW
        bin_h = roi_h / PH
        gh = tl.load(grids_ptr + k * 2)
        gw = tl.load(grids_ptr + k * 2 + 1)
        y0 = y1 + i * bin_h
        x0 = x1 + j * bin_w
        return b, y0, x0, bin_h, bin_w, gh, gw

    @triton.jit
    def _bin_windows(win_y_ptr, win_x_ptr, k, i, j, PH, PW):
        """The ``[lo, hi)`` sample indices of bin row ``i`` and bin column ``j`` that can fall inside the map."""
        iy_lo = tl.load(win_y_ptr + (k * PH + i) * 2)
        iy_hi = tl.load(win_y_ptr + (k * PH + i) * 2 + 1)
        ix_lo = tl.load(win_x_ptr + (k * PW + j) * 2)
        ix_hi = tl.load(win_x_ptr + (k * PW + j) * 2 + 1)
        return iy_lo, iy_hi, ix_lo, ix_hi

    @triton.jit
    def _forward_kernel(
        flat_ptr, rois_ptr, grids_ptr, win_y_ptr, win_x_ptr, out_ptr, C, H, W, PH, PW,
        ALIGNED: tl.constexpr, F64: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)  # one output bin (k, i, j)
        k = pid // (PH * PW)
        i = (pid // PW) % PH
        j = pid % PW
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        acc_ty = tl.float64 if F64 else tl.float32
        b, y0, x0, bin_h, bin_w, gh, gw = _roi_geometry(rois_ptr, grids_ptr, k, i, j, PH, PW, ALIGNED)
        iy_lo, iy_hi, ix_lo, ix_hi = _bin_windows(win_y_ptr, win_x_ptr, k, i, j, PH, PW)
        acc = tl.zeros((BLOCK_C,), dtype=acc_ty)
        base = b * H * W
        for iy in range(iy_lo, iy_hi):
            y = y0 + ((iy + 0.5) * bin_h) / gh.to(acc_ty)
            yl, yh, wyl, wyh = _corner(y, H)
            for ix in range(ix_lo, ix_hi):
                x = x0 + ((ix + 0.5) * bin_w) / gw.to(acc_ty)
                xl, xh, wxl, wxh = _corner(x, W)
                v = tl.load(flat_ptr + (base + yl * W + xl) * C + c, mask=cmask, other=0.0) * (wyl * wxl)
                v += tl.load(flat_ptr + (base + yl * W + xh) * C + c, mask=cmask, other=0.0) * (wyl * wxh)
                v += tl.load(flat_ptr + (base + yh * W + xl) * C + c, mask=cmask, other=0.0) * (wyh * wxl)
                v += tl.load(flat_ptr + (base + yh * W + xh) * C + c, mask=cmask, other=0.0) * (wyh * wxh)
                acc += v
        count = tl.maximum(gh.to(acc_ty) * gw.to(acc_ty), 1.0)  # in floating point: g_h g_w can exceed 2**31
        tl.store(out_ptr + pid.to(tl.int64) * C + c, acc / count, mask=cmask)

    @triton.jit
    def _backward_kernel(
        grad_out_ptr, rois_ptr, grids_ptr, win_y_ptr, win_x_ptr, grad_flat_ptr, C, H, W, PH, PW,
        ALIGNED: tl.constexpr, F64: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        k = pid // (PH * PW)
        i = (pid // PW) % PH
        j = pid % PW
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        acc_ty = tl.float64 if F64 else tl.float32
        b, y0, x0, bin_h, bin_w, gh, gw = _roi_geometry(rois_ptr, grids_ptr, k, i, j, PH, PW, ALIGNED)
        iy_lo, iy_hi, ix_lo, ix_hi = _bin_windows(win_y_ptr, win_x_ptr, k, i, j, PH, PW)
        count = tl.maximum(gh.to(acc_ty) * gw.to(acc_ty), 1.0)
        g = tl.load(grad_out_ptr + pid.to(tl.int64) * C + c, mask=cmask, other=0.0) / count
        base = b * H * W
        for iy in range(iy_lo, iy_hi):
            y = y0 + ((iy + 0.5) * bin_h) / gh.to(acc_ty)
            yl, yh, wyl, wyh = _corner(y, H)
            for ix in range(ix_lo, ix_hi):
                x = x0 + ((ix + 0.5) * bin_w) / gw.to(acc_ty)
                xl, xh, wxl, wxh = _corner(x, W)
                tl.atomic_add(grad_flat_ptr + (base + yl * W + xl) * C + c, g * (wyl * wxl), mask=cmask)
                tl.atomic_add(grad_flat_ptr + (base + yl * W + xh) * C + c, g * (wyl * wxh), mask=cmask)
                tl.atomic_add(grad_flat_ptr + (base + yh * W + xl) * C + c, g * (wyh * wxl), mask=cmask)
                tl.atomic_add(grad_flat_ptr + (base + yh * W + xh) * C + c, g * (wyh * wxh), mask=cmask)


def _launch_args(dtype: torch.dtype, k: int, shape, output_size, aligned: bool):
    n, c, h, w = shape
    ph, pw = output_size
    block_c = min(128, max(16, triton.next_power_of_2(c)))
    grid = (k * ph * pw, triton.cdiv(c, block_c))
    consts = {"ALIGNED": bool(aligned), "F64": dtype == torch.float64, "BLOCK_C": block_c}
    return grid, (c, h, w, ph, pw), consts


class _RoIAlignTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, rois, grids, win_y, win_x, shape, output_size, aligned):
        grid, sizes, consts = _launch_args(flat.dtype, len(rois), shape, output_size, aligned)
        out = torch.empty((len(rois) * output_size[0] * output_size[1], shape[1]), dtype=flat.dtype, device=flat.device)
        _forward_kernel[grid](flat, rois, grids, win_y, win_x, out, *sizes, **consts)
        ctx.save_for_backward(rois, grids, win_y, win_x)
        ctx.args = (shape, output_size, aligned, flat.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rois, grids, win_y, win_x = ctx.saved_tensors
        shape, output_size, aligned, dtype = ctx.args
        n, c, h, w = shape
        grad_flat = torch.zeros((n * h * w, c), dtype=dtype, device=grad_out.device)
        grid, sizes, consts = _launch_args(dtype, len(rois), shape, output_size, aligned)
        g = grad_out.contiguous().to(dtype)
        _backward_kernel[grid](g, rois, grids, win_y, win_x, grad_flat, *sizes, **consts)
        return grad_flat, None, None, None, None, None, None, None


def roi_align_triton(
    flat: Tensor,
    rois: Tensor,
    grids: Tensor,
    windows: tuple[Tensor, Tensor],
    shape: tuple[int, int, int, int],
    output_size: tuple[int, int],
    spatial_scale: float,
    aligned: bool,
) -> Tensor:
    """RoI align of a channels-last map; see :func:`convatlas.ops.roi.roi_align`.

    Args:
        flat (Tensor[N*H*W, C]): the feature map in channels-last order, float32 or float64.
        rois (Tensor[K, 5]): (batch index, x1, y1, x2, y2), validated, same dtype as ``flat``.
        grids (Tensor[K, 2]): samples per bin ``(g_h, g_w)`` of each box, int64.
        windows (Tensor[K, PH, 2], Tensor[K, PW, 2]): the ``[lo, hi)`` sample indices of each bin row / column that
            can fall inside the map (computed by :mod:`convatlas.ops.roi`).
        shape: ``(N, C, H, W)`` of the map.
        output_size: ``(PH, PW)``.
        spatial_scale, aligned: as in :func:`convatlas.ops.roi.roi_align`.

    Returns:
        Tensor[K*PH*PW, C]: pooled features, row ``(k * PH + i) * PW + j``.
    """
    flat = flat.contiguous()
    rois = rois.detach().to(flat.dtype)
    # scale and shift on the host, with the same operations as the PyTorch path
    scale = torch.tensor(spatial_scale, dtype=flat.dtype)
    offset = 0.5 if aligned else 0.0
    scaled = torch.cat([rois[:, :1], rois[:, 1:] * scale.to(rois.device) - offset], dim=1).contiguous()
    grids = grids.to(device=flat.device, dtype=torch.int64).contiguous()
    win_y, win_x = (win.to(device=flat.device, dtype=torch.int64).contiguous() for win in windows)
    return _RoIAlignTriton.apply(flat, scaled, grids, win_y, win_x, tuple(shape), tuple(output_size), aligned)
