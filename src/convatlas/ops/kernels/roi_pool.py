"""RoI pool's argmax on CPU in the C kernels (``csrc/roi_pool.c``, loaded by :mod:`convatlas.ops.kernels.native`).

The kernel only finds, for every (box, channel, bin), the position of the first strict maximum in row-major order,
with torchvision's bin arithmetic in the input's float type. :func:`convatlas.ops.roi.roi_pool` then gathers the
output at those positions, so autograd sends each gradient to exactly that cell. Codes: ``-1`` for an empty bin
(output 0), ``-2`` for a non-empty bin without a value above ``-FLT_MAX`` (output ``-FLT_MAX``, as the reference).
:func:`convatlas.ops.roi.roi_pool` runs this with ``backend="c"`` (``"auto"`` on CPU when the library loads).
"""

from __future__ import annotations

import torch
from torch import Tensor

from convatlas.ops.kernels.native import library


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
    lib = library()
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
        lib = library()
        fn = lib.roi_pool_backward_f64 if g.dtype == torch.float64 else lib.roi_pool_backward_f32
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
