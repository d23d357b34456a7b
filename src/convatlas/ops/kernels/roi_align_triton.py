"""RoI align as Triton kernels: the CUDA path of :func:`convatlas.ops.roi.roi_align`.

One program computes one output bin ``(k, i, j)`` for a block of channels: it walks the bin's ``g_h x g_w`` bilinear
samples (``g`` from ``sampling_ratio`` or, when that is <= 0, ``ceil(size / output)`` per box, a runtime loop bound)
and reads the four corner vectors from the channels-last map ``[N*H*W, C]``, so every load is contiguous. The
arithmetic follows the PyTorch path step by step (sample position, the ``[-1, H]`` validity window, clamping, low and
high corners). The backward program walks the same samples and adds ``weight * grad`` into the input gradient with
atomic adds, as torchvision's CUDA kernel does.

No GPU was available when this was written: the kernels are tested on CPU tensors under ``TRITON_INTERPRET=1``
(Triton reads the variable when it is imported) against the PyTorch path, and their speed on a GPU is unmeasured.
``CONVATLAS_ROI_ALIGN_BACKEND=torch`` keeps CUDA inputs on the PyTorch path.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with the CUDA builds of torch
    triton = None

__all__ = ["available", "interpreting", "roi_align_triton"]


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set: the kernels then run on CPU tensors through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device) -> bool:
    """Whether :func:`roi_align_triton` should run for inputs on ``device``."""
    if triton is None or os.environ.get("CONVATLAS_ROI_ALIGN_BACKEND") == "torch":
        return False
    return device.type == "cuda" or (interpreting() and device.type == "cpu")


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
    def _roi_geometry(rois_ptr, k, i, j, PH, PW, SAMPLING: tl.constexpr, ALIGNED: tl.constexpr):
        # rois arrive scaled and shifted on the host, in the compute dtype: (b, x1 s - o, y1 s - o, x2 s - o, y2 s - o)
        b = tl.load(rois_ptr + k * 5).to(tl.int32)
        x1 = tl.load(rois_ptr + k * 5 + 1)
        y1 = tl.load(rois_ptr + k * 5 + 2)
        roi_w = tl.load(rois_ptr + k * 5 + 3) - x1
        roi_h = tl.load(rois_ptr + k * 5 + 4) - y1
        if not ALIGNED:
            roi_w = tl.maximum(roi_w, 1.0)
            roi_h = tl.maximum(roi_h, 1.0)
        bin_w = roi_w / PW
        bin_h = roi_h / PH
        if SAMPLING > 0:
            gh = tl.full((), SAMPLING, tl.int32)
            gw = tl.full((), SAMPLING, tl.int32)
        else:
            gh = tl.maximum(tl.ceil(roi_h / PH), 0.0).to(tl.int32)
            gw = tl.maximum(tl.ceil(roi_w / PW), 0.0).to(tl.int32)
        y0 = y1 + i * bin_h
        x0 = x1 + j * bin_w
        return b, y0, x0, bin_h, bin_w, gh, gw

    @triton.jit
    def _forward_kernel(
        flat_ptr, rois_ptr, out_ptr, C, H, W, PH, PW,
        SAMPLING: tl.constexpr, ALIGNED: tl.constexpr, F64: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)  # one output bin (k, i, j)
        k = pid // (PH * PW)
        i = (pid // PW) % PH
        j = pid % PW
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        b, y0, x0, bin_h, bin_w, gh, gw = _roi_geometry(rois_ptr, k, i, j, PH, PW, SAMPLING, ALIGNED)
        acc = tl.zeros((BLOCK_C,), dtype=tl.float64 if F64 else tl.float32)
        base = b.to(tl.int64) * H * W
        for iy in range(0, gh):
            y = y0 + ((iy + 0.5) * bin_h) / gh
            yl, yh, wyl, wyh = _corner(y, H)
            for ix in range(0, gw):
                x = x0 + ((ix + 0.5) * bin_w) / gw
                xl, xh, wxl, wxh = _corner(x, W)
                v = tl.load(flat_ptr + (base + yl * W + xl) * C + c, mask=cmask, other=0.0) * (wyl * wxl)
                v += tl.load(flat_ptr + (base + yl * W + xh) * C + c, mask=cmask, other=0.0) * (wyl * wxh)
                v += tl.load(flat_ptr + (base + yh * W + xl) * C + c, mask=cmask, other=0.0) * (wyh * wxl)
                v += tl.load(flat_ptr + (base + yh * W + xh) * C + c, mask=cmask, other=0.0) * (wyh * wxh)
                acc += v
        count = tl.maximum(gh * gw, 1)
        tl.store(out_ptr + pid.to(tl.int64) * C + c, acc / count, mask=cmask)

    @triton.jit
    def _backward_kernel(
        grad_out_ptr, rois_ptr, grad_flat_ptr, C, H, W, PH, PW,
        SAMPLING: tl.constexpr, ALIGNED: tl.constexpr, F64: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        k = pid // (PH * PW)
        i = (pid // PW) % PH
        j = pid % PW
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        b, y0, x0, bin_h, bin_w, gh, gw = _roi_geometry(rois_ptr, k, i, j, PH, PW, SAMPLING, ALIGNED)
        count = tl.maximum(gh * gw, 1)
        g = tl.load(grad_out_ptr + pid.to(tl.int64) * C + c, mask=cmask, other=0.0) / count
        base = b.to(tl.int64) * H * W
        for iy in range(0, gh):
            y = y0 + ((iy + 0.5) * bin_h) / gh
            yl, yh, wyl, wyh = _corner(y, H)
            for ix in range(0, gw):
                x = x0 + ((ix + 0.5) * bin_w) / gw
                xl, xh, wxl, wxh = _corner(x, W)
                tl.atomic_add(grad_flat_ptr + (base + yl * W + xl) * C + c, g * (wyl * wxl), mask=cmask)
                tl.atomic_add(grad_flat_ptr + (base + yl * W + xh) * C + c, g * (wyl * wxh), mask=cmask)
                tl.atomic_add(grad_flat_ptr + (base + yh * W + xl) * C + c, g * (wyh * wxl), mask=cmask)
                tl.atomic_add(grad_flat_ptr + (base + yh * W + xh) * C + c, g * (wyh * wxh), mask=cmask)


def _launch_args(flat: Tensor, rois: Tensor, shape, output_size, sampling_ratio, aligned):
    n, c, h, w = shape
    ph, pw = output_size
    block_c = min(128, max(16, triton.next_power_of_2(c)))
    grid = (len(rois) * ph * pw, triton.cdiv(c, block_c))
    consts = {"SAMPLING": max(int(sampling_ratio), 0), "ALIGNED": bool(aligned), "F64": flat.dtype == torch.float64}
    return grid, (c, h, w, ph, pw), {**consts, "BLOCK_C": block_c}


class _RoIAlignTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, rois, shape, output_size, sampling_ratio, aligned):
        grid, sizes, consts = _launch_args(flat, rois, shape, output_size, sampling_ratio, aligned)
        out = torch.empty((len(rois) * output_size[0] * output_size[1], shape[1]), dtype=flat.dtype, device=flat.device)
        _forward_kernel[grid](flat, rois, out, *sizes, **consts)
        ctx.save_for_backward(rois)
        ctx.args = (shape, output_size, sampling_ratio, aligned, flat.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (rois,) = ctx.saved_tensors
        shape, output_size, sampling_ratio, aligned, dtype = ctx.args
        n, c, h, w = shape
        grad_flat = torch.zeros((n * h * w, c), dtype=dtype, device=grad_out.device)
        grid, sizes, consts = _launch_args(grad_flat, rois, shape, output_size, sampling_ratio, aligned)
        g = grad_out.contiguous().to(dtype)
        _backward_kernel[grid](g, rois, grad_flat, *sizes, **consts)
        return grad_flat, None, None, None, None, None


def roi_align_triton(
    flat: Tensor,
    rois: Tensor,
    shape: tuple[int, int, int, int],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoI align of a channels-last map; see :func:`convatlas.ops.roi.roi_align`.

    Args:
        flat (Tensor[N*H*W, C]): the feature map in channels-last order, float32 or float64.
        rois (Tensor[K, 5]): (batch index, x1, y1, x2, y2), validated, same dtype as ``flat``.
        shape: ``(N, C, H, W)`` of the map.
        output_size: ``(PH, PW)``.
        spatial_scale, sampling_ratio, aligned: as in :func:`convatlas.ops.roi.roi_align`.

    Returns:
        Tensor[K*PH*PW, C]: pooled features, row ``(k * PH + i) * PW + j``.
    """
    flat = flat.contiguous()
    rois = rois.detach().to(flat.dtype)
    # scale and shift on the host, with the same operations as the PyTorch path
    scale = torch.tensor(spatial_scale, dtype=flat.dtype)
    offset = 0.5 if aligned else 0.0
    scaled = torch.cat([rois[:, :1], rois[:, 1:] * scale.to(rois.device) - offset], dim=1).contiguous()
    return _RoIAlignTriton.apply(flat, scaled, tuple(shape), tuple(output_size), sampling_ratio, aligned)
