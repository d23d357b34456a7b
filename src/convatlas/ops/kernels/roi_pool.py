"""RoI pool's argmax on CPU as a small C kernel (built like the NMS kernel: gcc on first use, ctypes, cached).

The kernel only finds, for every (box, channel, bin), the position of the first strict maximum in row-major order,
with torchvision's bin arithmetic in the input's float type. :func:`convatlas.ops.roi.roi_pool` then gathers the
output at those positions, so autograd sends each gradient to exactly that cell. Codes: ``-1`` for an empty bin
(output 0), ``-2`` for a non-empty bin without a value above ``-FLT_MAX`` (output ``-FLT_MAX``, as the reference).
When the kernel cannot be built, ``roi_pool`` uses its vectorised PyTorch path.
"""

from __future__ import annotations

import ctypes
import os

import torch
from torch import Tensor

from convatlas.ops.kernels.clib import CLibrary

_C_SOURCE = r"""
#include <float.h>
#include <math.h>
#include <stdint.h>

#define DEFINE_ROI_POOL(SUFFIX, T, LOWEST)                                                                         \
void roi_pool_argmax_##SUFFIX(const T *input, int64_t channels, int64_t height, int64_t width, const T *rois,      \
                              int64_t k, int64_t ph_n, int64_t pw_n, double scale_d, int64_t *argmax,             \
                              T *output, int64_t *bounds) {                                                         \
    const T scale = (T)scale_d;                                                                                     \
    int64_t *hs = bounds, *he = bounds + ph_n, *ws = bounds + 2 * ph_n, *we = bounds + 2 * ph_n + pw_n;             \
    for (int64_t r = 0; r < k; r++) {                                                                               \
        const T *roi = rois + 5 * r;                                                                                \
        int64_t b = (int64_t)roi[0];                                                                                \
        int64_t sw = (int64_t)round(roi[1] * scale), sh = (int64_t)round(roi[2] * scale);                           \
        int64_t ew = (int64_t)round(roi[3] * scale), eh = (int64_t)round(roi[4] * scale);                           \
        int64_t rw = ew - sw + 1 > 1 ? ew - sw + 1 : 1, rh = eh - sh + 1 > 1 ? eh - sh + 1 : 1;                     \
        T bin_h = (T)rh / (T)ph_n, bin_w = (T)rw / (T)pw_n;                                                         \
        /* bin bounds once per box, torchvision's arithmetic in T */                                                \
        for (int64_t ph = 0; ph < ph_n; ph++) {                                                                     \
            int64_t lo = (int64_t)floor((T)ph * bin_h) + sh, hi = (int64_t)ceil((T)(ph + 1) * bin_h) + sh;          \
            hs[ph] = lo < 0 ? 0 : lo > height ? height : lo;                                                        \
            he[ph] = hi < 0 ? 0 : hi > height ? height : hi;                                                        \
        }                                                                                                           \
        for (int64_t pw = 0; pw < pw_n; pw++) {                                                                     \
            int64_t lo = (int64_t)floor((T)pw * bin_w) + sw, hi = (int64_t)ceil((T)(pw + 1) * bin_w) + sw;          \
            ws[pw] = lo < 0 ? 0 : lo > width ? width : lo;                                                          \
            we[pw] = hi < 0 ? 0 : hi > width ? width : hi;                                                          \
        }                                                                                                           \
        for (int64_t c = 0; c < channels; c++) {                                                                    \
            const T *plane = input + (b * channels + c) * height * width;                                          \
            int64_t *out = argmax + (r * channels + c) * ph_n * pw_n;                                               \
            T *val = output + (r * channels + c) * ph_n * pw_n;                                                     \
            for (int64_t ph = 0; ph < ph_n; ph++)                                                                   \
                for (int64_t pw = 0; pw < pw_n; pw++) {                                                             \
                    if (he[ph] <= hs[ph] || we[pw] <= ws[pw]) {                                                     \
                        out[ph * pw_n + pw] = -1;                                                                   \
                        val[ph * pw_n + pw] = 0;                                                                    \
                        continue;                                                                                   \
                    }                                                                                               \
                    T best = LOWEST;                                                                                \
                    int64_t arg = -2;                                                                               \
                    for (int64_t y = hs[ph]; y < he[ph]; y++) {                                                     \
                        const T *line = plane + y * width;                                                          \
                        for (int64_t x = ws[pw]; x < we[pw]; x++)                                                   \
                            if (line[x] > best) { best = line[x]; arg = y * width + x; }                            \
                    }                                                                                               \
                    out[ph * pw_n + pw] = arg;                                                                      \
                    val[ph * pw_n + pw] = best;                                                                     \
                }                                                                                                   \
        }                                                                                                           \
    }                                                                                                               \
}

DEFINE_ROI_POOL(f32, float, -FLT_MAX)
DEFINE_ROI_POOL(f64, double, -DBL_MAX)

/* Backward: each output gradient goes to its bin's argmax (none for argmax < 0). grad_in must be zeroed. */
#define DEFINE_ROI_POOL_BACKWARD(SUFFIX, T)                                                                        \
void roi_pool_backward_##SUFFIX(const T *grad_out, const int64_t *argmax, const int64_t *batch, int64_t k,         \
                                int64_t channels, int64_t bins, int64_t plane_size, T *grad_in) {                 \
    for (int64_t r = 0; r < k; r++)                                                                                 \
        for (int64_t c = 0; c < channels; c++) {                                                                    \
            T *plane = grad_in + (batch[r] * channels + c) * plane_size;                                            \
            const int64_t *arg = argmax + (r * channels + c) * bins;                                                \
            const T *g = grad_out + (r * channels + c) * bins;                                                      \
            for (int64_t i = 0; i < bins; i++)                                                                      \
                if (arg[i] >= 0) plane[arg[i]] += g[i];                                                             \
        }                                                                                                           \
}

DEFINE_ROI_POOL_BACKWARD(f32, float)
DEFINE_ROI_POOL_BACKWARD(f64, double)
"""

_VP, _I64 = ctypes.c_void_p, ctypes.c_int64
_ARGMAX_ARGS = [_VP, _I64, _I64, _I64, _VP, _I64, _I64, _I64, ctypes.c_double, _VP, _VP, _VP]
_BACKWARD_ARGS = [_VP, _VP, _VP, _I64, _I64, _I64, _I64, _VP]
_LIBRARY = CLibrary(
    "roi_pool",
    _C_SOURCE,
    {
        "roi_pool_argmax_f32": (None, _ARGMAX_ARGS),
        "roi_pool_argmax_f64": (None, _ARGMAX_ARGS),
        "roi_pool_backward_f32": (None, _BACKWARD_ARGS),
        "roi_pool_backward_f64": (None, _BACKWARD_ARGS),
    },
    what="C RoI pool kernel",
)


def load_library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; ``None`` when it cannot be built (warns once)."""
    return _LIBRARY.load()


def available(device: torch.device) -> bool:
    """Whether :func:`argmax` can run for tensors on ``device`` (CPU, kernel built, not forced off)."""
    if device.type != "cpu" or os.environ.get("CONVATLAS_ROI_POOL_BACKEND") == "torch":
        return False
    return load_library() is not None


def pool(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> tuple[Tensor, Tensor]:
    """Each bin's maximum and the position (``y * W + x``) of its first occurrence; -1 (empty bin, value 0) or
    -2 (nothing above -FLT_MAX, value -FLT_MAX) where there is none.

    Args:
        input (Tensor[N, C, H, W]): float32 or float64 feature map on CPU.
        rois (Tensor[K, 5]): (batch index, x1, y1, x2, y2), batch indices validated.
        output_size: ``(PH, PW)``.
        spatial_scale: image-to-feature factor.

    Returns:
        (Tensor[K, C, PH, PW], Tensor[K, C, PH, PW]): the values (dtype of ``input``) and int64 positions.
    """
    x = input.detach().contiguous()
    r = rois.detach().to(x.dtype).contiguous()
    n, c, h, w = x.shape
    ph, pw = output_size
    arg = torch.empty((len(r), c, ph, pw), dtype=torch.int64)
    out = torch.empty((len(r), c, ph, pw), dtype=x.dtype)
    bounds = torch.empty(2 * (ph + pw), dtype=torch.int64)  # workspace: bin bounds of one box
    lib = load_library()
    fn = lib.roi_pool_argmax_f64 if x.dtype == torch.float64 else lib.roi_pool_argmax_f32
    fn(
        x.data_ptr(),
        c,
        h,
        w,
        r.data_ptr(),
        len(r),
        ph,
        pw,
        float(spatial_scale),
        arg.data_ptr(),
        out.data_ptr(),
        bounds.data_ptr(),
    )
    return out, arg


class RoIPoolFunction(torch.autograd.Function):
    """RoI pool on CPU through the C kernel; backward adds each output gradient at its bin's argmax."""

    @staticmethod
    def forward(ctx, input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> Tensor:
        out, arg = pool(input, rois, output_size, spatial_scale)
        ctx.save_for_backward(rois, arg)
        ctx.input_shape = input.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rois, arg = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        if grad_out.dtype not in (torch.float32, torch.float64) or grad_out.requires_grad:
            # double backward or an unusual dtype: the same scatter in PyTorch ops
            plane = rois[:, 0].long()[:, None] * c + torch.arange(c)[None, :]  # (K, C): index of the (b, c) plane
            pos = plane[:, :, None, None] * (h * w) + arg.clamp(min=0)  # (K, C, PH, PW) into the flat input
            grad = torch.where(arg >= 0, grad_out, 0)
            grad_in = grad_out.new_zeros(n * c * h * w).index_add(0, pos.flatten(), grad.flatten())
            return grad_in.view(n, c, h, w), None, None, None
        g = grad_out.contiguous()
        batch = rois[:, 0].long().contiguous()
        grad_in = torch.zeros((n, c, h, w), dtype=g.dtype)
        fn = load_library().roi_pool_backward_f64 if g.dtype == torch.float64 else load_library().roi_pool_backward_f32
        fn(
            g.data_ptr(),
            arg.data_ptr(),
            batch.data_ptr(),
            len(batch),
            c,
            arg.shape[2] * arg.shape[3],
            h * w,
            grad_in.data_ptr(),
        )
        return grad_in, None, None, None
