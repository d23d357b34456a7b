"""Region-of-interest pooling: RoI pool (Fast R-CNN), RoI align (Mask R-CNN) and the FPN multi-scale pooler.

Boxes are ``(x1, y1, x2, y2)`` in input-image pixels; ``spatial_scale`` maps them onto the feature map (``1/16`` for a
stride-16 backbone). They come either as one ``Tensor[K, 5]`` whose first column is the batch index, or as a list of
``Tensor[L, 4]``, one per image, as in ``torchvision.ops``.

RoI align is linear in the input: its bilinear weights for all boxes form one sparse ``[K*PH*PW, N*H*W]`` matrix that
multiplies the channels-last feature map once, and autograd gives the backward (the transposed product). On small
maps with many boxes (a detector's RoI head), where that matrix holds 16 weights per output element for few
channels, the separable form ``A_y x A_x^T`` (two dense products) runs instead, picked by a cost model. That is
``backend="torch"``; ``backend="triton"`` (the default on CUDA) runs Triton kernels (``kernels/roi_align_triton.py``)
that do the same sampling directly. RoI pool's ``backend="c"`` (the default on CPU) runs a C kernel
(``kernels/roi_pool.py``: a direct scan, and a scatter to the argmax for the backward); ``"torch"`` is a vectorised
PyTorch path that keeps the first strict maximum of each bin and gathers the output at it (see
:mod:`convatlas.ops.backend`).

float16/bfloat16 inputs are computed in float32 and cast back, also under ``torch.autocast`` (CPU and CUDA), as
torchvision does: the output has the input's dtype. Boxes may be any real dtype (integer boxes too); they get no
gradient, as in torchvision, and must be finite. The operators are ``torch.fx`` leaves and compile with
``torch.jit.script`` (alone or inside a scripted module, with torchvision's argument types): the compiled code calls
back into the Python implementation, so it runs in a Python process and cannot be saved with ``torch.jit.save``
(see :mod:`convatlas.ops`).

RoI align (He et al. 2017): the box ``[x1 s - o, x2 s - o]`` (``o = 0.5`` when ``aligned``, else the width is at
least 1) is cut into ``PH x PW`` bins; each bin averages ``g_h x g_w`` bilinear samples at
``y = y1' + (i + (j + 0.5) / g_h) h / PH``, where ``g_h = sampling_ratio`` or, when that is <= 0,
``ceil(h / PH)``. A sample outside ``[-1, H] x [-1, W]`` contributes 0; otherwise coordinates are clamped into the map.
Only the samples that can fall inside the map are evaluated (a window per bin row and column, widened by the rounding
of the positions), and the average still divides by ``g_h g_w``: a box of side 1e9 with adaptive sampling
(``g`` about 1.4e8 per bin) costs about as much as a box the size of the map, and gives torchvision's result.

RoI pool (Girshick 2015): the box is rounded to feature cells ``[round(x1 s), round(x2 s)]`` (inclusive), bin ``i``
covers rows ``floor(i h / PH) .. ceil((i + 1) h / PH) - 1``, and the output is the maximum over the bin (0 for an
empty bin); the gradient goes to the position of the maximum.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.jit.annotations import BroadcastingList2

from convatlas.errors import InputTypeError
from convatlas.ops.backend import resolve
from convatlas.ops.kernels import roi_align_triton as _roi_align_triton
from convatlas.ops.kernels import roi_pool as _roi_pool_kernel
from convatlas.ops.tracing import autocast_off, fx_leaf

__all__ = ["assign_levels", "boxes_to_rois", "infer_scale", "multi_scale_roi_align", "roi_align", "roi_pool"]

# elements per gathered temporary (the roi loop is chunked so this bounds memory)
_CHUNK_ELEMS = 1 << 24
# weights per sparse matrix of roi_align (about 20 bytes each)
_SPARSE_NNZ = 1 << 22
# CPU cost of one scattered sparse multiply-add in units of one dense (GEMM) one, for choosing roi_align's path
_SPARSE_COST = 8.0


def boxes_to_rois(boxes: Tensor | Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """Bring boxes to the ``Tensor[K, 5]`` form ``(batch_index, x1, y1, x2, y2)``.

    Args:
        boxes: ``Tensor[K, 5]`` (returned as is, cast to ``dtype``) or a list of ``Tensor[L, 4]``, one per image.
        dtype: dtype of the result; default the boxes' own.

    Returns:
        Tensor[K, 5]: batch index in column 0, then (x1, y1, x2, y2).
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"boxes as a Tensor must have shape [K, 5] (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}"
            )
        return boxes if dtype is None else boxes.to(dtype)
    if not isinstance(boxes, list | tuple) or not all(isinstance(b, Tensor) for b in boxes):
        raise InputTypeError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must have shape [L, 4], got {tuple(b.shape)}")
    if not boxes:
        return torch.zeros((0, 5), dtype=dtype or torch.get_default_dtype())
    dtype = dtype or boxes[0].dtype
    ids = [torch.full((len(b), 1), i, dtype=dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(ids), torch.cat(boxes).to(dtype)], dim=1)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints (height, width), got {value!r}")
    return value


def _prepare(input: Tensor, boxes: Tensor | Sequence[Tensor], output_size, spatial_scale: float, op: str):
    if not isinstance(input, Tensor):
        raise InputTypeError(f"{op}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"{op}: input must have shape [N, C, H, W], got {tuple(input.shape)}")
    if not input.is_floating_point():
        raise InputTypeError(f"{op}: input must be floating point, got {input.dtype}")
    if not spatial_scale > 0:
        raise ValueError(f"{op}: spatial_scale must be > 0, got {spatial_scale}")
    ph, pw = _pair(output_size, "output_size")
    compute = torch.float64 if input.dtype == torch.float64 else torch.float32
    rois = boxes_to_rois(boxes, compute).detach().to(input.device)
    if len(rois):
        finite = torch.isfinite(rois[:, 1:]).all(dim=1)
        stats = torch.stack([rois[:, 0].min(), rois[:, 0].max(), finite.all().to(rois.dtype)]).tolist()
        bmin, bmax, all_finite = int(stats[0]), int(stats[1]), bool(stats[2])
        if bmin < 0 or bmax >= input.shape[0]:
            raise ValueError(
                f"{op}: box batch indices must lie in [0, {input.shape[0] - 1}] for an input batch of "
                f"{input.shape[0]}, got [{bmin}, {bmax}]"
            )
        if not all_finite:
            k = int(torch.nonzero(~finite)[0])
            raise ValueError(f"{op}: box coordinates must be finite, got box {k} = {rois[k, 1:].tolist()}")
    n, c, h, w = input.shape
    flat = input.to(compute).permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N*H*W, C), channels last
    return flat, rois, ph, pw, compute


def _chunks(k: int, per_roi: int):
    step = max(1, _CHUNK_ELEMS // max(per_roi, 1))
    for start in range(0, k, step):
        yield start, min(start + step, k)


def _sample_windows(
    start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int, compute: torch.dtype
) -> Tensor:
    """For each box and bin along one axis, the sample indices ``[lo, hi)`` that can fall inside ``[-1, size]``.

    Sample ``j`` of bin ``p`` sits at ``y_p + (j + 0.5) b / g`` with ``y_p = start + p b`` (computed in ``compute``),
    increasing in ``j``; the window solves ``-1 <= y <= size`` for ``j`` in float64 and widens it by the rounding of
    the positions in ``compute`` (a few ulps of ``|y_p| + 2 |b|``) plus one sample on each side, so every sample left
    out is invalid for certain (its weight would be 0). Each sample inside is still tested exactly.

    Args:
        start (Tensor[K]): box start on the feature map; bin_size (Tensor[K]): ``b``; grid (Tensor[K]): ``g`` (int64).
        pooled: bins along this axis; size: the map's size along it; compute: the dtype of the sample positions.

    Returns:
        Tensor[K, pooled, 2]: int64 ``lo, hi`` with ``0 <= lo <= hi <= g``.
    """
    p = torch.arange(pooled, dtype=compute, device=start.device)
    y0 = (start[:, None] + p[None, :] * bin_size[:, None]).double()  # (K, pooled), as the samples compute it
    b = bin_size.double()[:, None]
    g = grid.double()[:, None]
    step = b / g.clamp(min=1)
    slack = 8 * torch.finfo(compute).eps * (y0.abs() + 2 * b.abs() + 1)
    spread = step > 0
    safe = torch.where(spread, step, torch.ones_like(step))
    lo = torch.floor((-1.0 - y0 - slack) / safe - 0.5) - 1
    hi = torch.floor((size - y0 + slack) / safe - 0.5) + 2
    lo = torch.where(spread, lo, torch.zeros_like(lo))  # all samples of a zero-size bin sit at y_p: keep them all
    hi = torch.where(spread, hi, g)
    lo = torch.minimum(lo.clamp(min=0), g)
    hi = torch.minimum(torch.maximum(hi, lo), g)
    return torch.stack([lo, hi], dim=-1).long()


def _axis_samples(
    start: Tensor, bin_size: Tensor, window: Tensor, pooled: int, grid: int, size: int, compute: torch.dtype
):
    """Sample positions along one axis in the windows of :func:`_sample_windows` and their bilinear low/high indices
    and weights, torchvision's rules.

    Returns four tensors of shape (K, pooled, M), ``M`` the widest window: low index, high index, low weight and high
    weight (0 outside the map and past a bin's window).
    """
    lo, count = window[..., 0], window[..., 1] - window[..., 0]  # (K, pooled)
    m = int(count.max()) if count.numel() else 0
    t = torch.arange(m, device=start.device)
    j = (lo[:, :, None] + t).to(compute) + 0.5  # (K, pooled, M): sample index + 0.5, as the reference computes it
    p = torch.arange(pooled, dtype=compute, device=start.device)
    # same evaluation order as the reference: start + p * bin + (j + .5) * bin / grid
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]) + (j * bin_size[:, None, None]) / grid
    valid = (pos >= -1.0) & (pos <= size) & (t < count[:, :, None])
    pos = pos.clamp(min=0)
    low = pos.long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(compute), pos)
    frac = pos - low
    w_high = frac * valid
    w_low = (1 - frac) * valid
    return low, high, w_low, w_high


def _window_chunks(window: Tensor, idx: Tensor) -> list[Tensor]:
    """``idx`` split so that each piece's samples (boxes x bins x widest window) stay within ``_CHUNK_ELEMS``."""
    width = window[idx, :, 1] - window[idx, :, 0]  # (k, pooled)
    per_box = width.shape[1] * int(width.max()) if width.numel() else 0
    if per_box > _CHUNK_ELEMS:
        k = int(idx[int(width.amax(dim=1).argmax())])
        raise ValueError(
            f"roi_align: box {k} would evaluate up to {int(width.max())} samples per bin along one axis of the "
            f"feature map, more than the {_CHUNK_ELEMS // width.shape[1]} supported (lower sampling_ratio, or clip "
            "the box to the image)"
        )
    step = max(1, _CHUNK_ELEMS // max(per_box, 1))
    return [idx[a : a + step] for a in range(0, len(idx), step)]


def _axis_weights(
    start: Tensor, bin_size: Tensor, grid: Tensor, window: Tensor, pooled: int, size: int, compute: torch.dtype
) -> Tensor:
    """Dense bilinear weights along one axis: ``A[k, p, t]`` is the mean over bin ``p``'s ``g`` samples of their
    weight on cell ``t`` (0 for a box with no samples). Returns Tensor[K, pooled, size]."""
    k = len(start)
    weights = torch.zeros((k, pooled, size), dtype=compute, device=start.device)
    for g in torch.unique(grid).tolist():
        if g == 0:
            continue  # no samples: the row stays 0, as in the reference
        for idx in _window_chunks(window, torch.nonzero(grid == g).flatten()):
            low, high, w_low, w_high = _axis_samples(start[idx], bin_size[idx], window[idx], pooled, g, size, compute)
            part = torch.zeros((len(idx), pooled, size), dtype=compute, device=start.device)
            part.scatter_add_(2, low, w_low / g)
            part.scatter_add_(2, high, w_high / g)
            weights[idx] = part
    return weights


def _evaluated_samples(win_y: Tensor, win_x: Tensor) -> Tensor:
    """Samples per bin each box evaluates (its widest row window times its widest column window). Tensor[K]."""
    rows = (win_y[..., 1] - win_y[..., 0]).amax(dim=1)
    cols = (win_x[..., 1] - win_x[..., 0]).amax(dim=1)
    return rows * cols


def _separable_is_cheaper(h: int, w: int, ph: int, pw: int, samples: Tensor) -> bool:
    """Whether the dense separable path should run: its work per box and channel, ``H W PW + H PH PW`` dense
    multiply-adds, against the sparse path's ``4 PH PW s`` scattered ones (``s`` samples evaluated per bin), which
    cost about ``_SPARSE_COST`` times more each on CPU (small feature maps, as in a detector's RoI head, favour it).
    A box whose sparse weights alone would exceed ``_SPARSE_NNZ`` always takes the separable path."""
    if int(samples.max()) * 4 * ph * pw > _SPARSE_NNZ:
        return True
    mean = float(samples.double().mean())
    return h * w * pw + h * ph * pw <= _SPARSE_COST * 4 * ph * pw * max(mean, 1.0)


def _roi_align_separable(
    input: Tensor, batch: Tensor, y_axis: tuple[Tensor, ...], x_axis: tuple[Tensor, ...], ph: int, pw: int,
) -> Tensor:  # fmt: skip
    """RoI align as two dense contractions: bilinear sampling and bin averaging are separable, so
    ``out[k, c, i, j] = sum_y A_y[k, i, y] sum_x input[b_k, c, y, x] A_x[k, j, x]``. One matrix product per image
    (and chunk of its boxes) contracts the rows, a batched product the columns; autograd gives the backward.

    Args:
        input (Tensor[N, C, H, W]): feature map in the compute dtype.
        batch (Tensor[K]): image index of each box.
        y_axis, x_axis: per-box start, bin size, samples per bin and sample windows along rows / columns.
        ph, pw: output size.

    Returns:
        Tensor[K, C, PH, PW]
    """
    n, c, h, w = input.shape
    k = len(batch)
    a_y = _axis_weights(*y_axis, ph, h, input.dtype)  # (K, PH, H)
    a_x = _axis_weights(*x_axis, pw, w, input.dtype).transpose(1, 2)  # (K, W, PW)
    out = input.new_empty((k, ph, c, pw))
    step = max(1, _CHUNK_ELEMS // (ph * c * w))
    with torch.autocast(input.device.type, enabled=False):  # in the compute dtype even inside an autocast region
        for b in torch.unique(batch).tolist():
            boxes = torch.nonzero(batch == b).flatten()
            feature = input[b].permute(1, 0, 2).reshape(h, c * w)  # (H, C*W)
            for start in range(0, len(boxes), step):
                idx = boxes[start : start + step]
                m = len(idx)
                rows = (a_y[idx].reshape(m * ph, h) @ feature).view(m, ph * c, w)  # rows contracted: (m, PH*C, W)
                out.index_copy_(0, idx, torch.bmm(rows, a_x[idx]).view(m, ph, c, pw))  # columns contracted
    return out.permute(0, 2, 1, 3)


def _roi_align_sparse(
    flat: Tensor, rois: Tensor, shape: tuple[int, ...], y_axis: tuple[Tensor, ...], x_axis: tuple[Tensor, ...],
    ph: int, pw: int,
) -> Tensor:  # fmt: skip
    """RoI align as one sparse product: ``out[(k, i, j), :] = sum of weight * flat[cell, :]`` over the 4 bilinear
    corners of every evaluated sample of bin ``(i, j)``; autograd gives the backward (the transpose times the output
    gradient). One pass per distinct ``(g_h, g_w)``, split so that one matrix holds at most ``_SPARSE_NNZ`` weights.

    Returns:
        Tensor[K, PH, PW, C]
    """
    n, c, h, w = shape
    k = len(rois)
    y1, bin_h, grid_h, win_y = y_axis
    x1, bin_w, grid_w, win_x = x_axis
    compute = flat.dtype
    batch = rois[:, 0].long()
    result = None
    rows, cols, weights, pending = [], [], [], 0

    def flush(result: Tensor | None) -> Tensor:
        matrix = torch.sparse_coo_tensor(
            torch.stack([torch.cat(rows), torch.cat(cols)]),
            torch.cat(weights),
            (k * ph * pw, n * h * w),
            check_invariants=False,
        )
        rows.clear(), cols.clear(), weights.clear()
        product = torch.sparse.mm(matrix, flat)
        return product if result is None else result + product

    pairs = torch.stack([grid_h, grid_w], dim=1)
    for gh, gw in torch.unique(pairs, dim=0).tolist():
        if gh == 0 or gw == 0:
            continue  # no samples: the output stays 0, as in the reference
        group = torch.nonzero((grid_h == gh) & (grid_w == gw)).flatten()
        mh = int((win_y[group, :, 1] - win_y[group, :, 0]).max())
        mw = int((win_x[group, :, 1] - win_x[group, :, 0]).max())
        per_box = 4 * ph * mh * pw * mw
        if per_box == 0:
            continue  # no sample of these boxes can fall inside the map
        step = max(1, _SPARSE_NNZ // per_box)
        for start in range(0, len(group), step):
            idx = group[start : start + step]
            yl, yh, wyl, wyh = (t.reshape(len(idx), -1) for t in _axis_samples(
                y1[idx], bin_h[idx], win_y[idx], ph, gh, h, compute))  # fmt: skip
            xl, xh, wxl, wxh = (t.reshape(len(idx), -1) for t in _axis_samples(
                x1[idx], bin_w[idx], win_x[idx], pw, gw, w, compute))  # fmt: skip
            base = (batch[idx] * h * w)[:, None, None]
            my, mx = yl.shape[1] // ph, xl.shape[1] // pw  # this chunk's window widths
            i = torch.arange(ph, device=rois.device).repeat_interleave(my)  # bin row of each y sample
            j = torch.arange(pw, device=rois.device).repeat_interleave(mx)  # bin column of each x sample
            row = (idx[:, None, None] * ph + i[None, :, None]) * pw + j[None, None, :]  # (k, PH*my, PW*mx)
            for yi, wy in ((yl, wyl), (yh, wyh)):
                for xi, wx in ((xl, wxl), (xh, wxh)):
                    rows.append(row.flatten())
                    cols.append((base + yi[:, :, None] * w + xi[:, None, :]).flatten())
                    weights.append((wy[:, :, None] * wx[:, None, :]).flatten() / (gh * gw))
            pending += len(idx) * per_box
            if pending >= _SPARSE_NNZ:
                result, pending = flush(result), 0
    if rows:
        result = flush(result)
    if result is None:  # no box has samples
        return flat.new_zeros((k, ph, pw, c))
    return result.view(k, ph, pw, c)


@fx_leaf
def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    backend: str = "auto",
) -> Tensor:
    """RoI align: average of bilinear samples in each bin of each box (Mask R-CNN).

    Same arguments and result as ``torchvision.ops.roi_align``, also under ``torch.autocast`` (computed in float32,
    returned in the input's dtype).

    Args:
        input (Tensor[N, C, H, W]): feature map.
        boxes (Tensor[K, 5] or list of Tensor[L, 4]): (batch index,) x1, y1, x2, y2 in image pixels, x1 < x2, y1 < y2.
        output_size: ``(PH, PW)`` or one int.
        spatial_scale: factor from image pixels to feature cells (``1 / stride``).
        sampling_ratio: samples per bin along each axis; <= 0 means ``ceil(box size / output size)`` per box.
        aligned: shift boxes by -0.5 cell so that sample points sit at pixel centres (Detectron2's convention).
        backend: ``"auto"``, ``"torch"`` (sparse or separable products, any device) or ``"triton"`` (CUDA; CPU only
            under Triton's interpreter); see :mod:`convatlas.ops.backend`.

    Returns:
        Tensor[K, C, PH, PW]: pooled features, dtype of ``input``.
    """
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, backend)


@torch.jit.ignore
def _roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    backend: str,
) -> Tensor:
    flat, rois, ph, pw, compute = _prepare(input, boxes, output_size, spatial_scale, "roi_align")
    n, c, h, w = input.shape
    k = len(rois)
    if k == 0:
        return input.new_zeros((0, c, ph, pw))
    which = resolve("roi_align", backend, input.device)
    with autocast_off(input.device):
        offset = 0.5 if aligned else 0.0
        scale = torch.tensor(spatial_scale, dtype=compute)
        x1, y1 = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
        roi_w, roi_h = rois[:, 3] * scale - offset - x1, rois[:, 4] * scale - offset - y1
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
        bin_w, bin_h = roi_w / pw, roi_h / ph
        if sampling_ratio > 0:
            grid_h = torch.full((k,), sampling_ratio, dtype=torch.int64, device=rois.device)
            grid_w = grid_h
        else:
            # clamped below 2**62 so the cast is defined; the sample windows keep the work bounded
            grid_h = torch.ceil(roi_h / ph).clamp(min=0, max=2**62).long()
            grid_w = torch.ceil(roi_w / pw).clamp(min=0, max=2**62).long()
        win_y = _sample_windows(y1, bin_h, grid_h, ph, h, compute)  # (K, PH, 2)
        win_x = _sample_windows(x1, bin_w, grid_w, pw, w, compute)  # (K, PW, 2)
        if which == "triton":
            grids = torch.stack([grid_h, grid_w], dim=1)
            out = _roi_align_triton.roi_align_triton(
                flat, rois, grids, (win_y, win_x), input.shape, (ph, pw), spatial_scale, aligned
            )
            return out.view(k, ph, pw, c).permute(0, 3, 1, 2).to(input.dtype)
        y_axis, x_axis = (y1, bin_h, grid_h, win_y), (x1, bin_w, grid_w, win_x)
        if _separable_is_cheaper(h, w, ph, pw, _evaluated_samples(win_y, win_x)):
            out = _roi_align_separable(input.to(compute), rois[:, 0].long(), y_axis, x_axis, ph, pw)
            return out.to(input.dtype)
        out = _roi_align_sparse(flat, rois, input.shape, y_axis, x_axis, ph, pw)
        return out.permute(0, 3, 1, 2).to(input.dtype)


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


@fx_leaf
def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    backend: str = "auto",
) -> Tensor:
    """RoI max pooling over quantised bins (Fast R-CNN).

    Same arguments and result as ``torchvision.ops.roi_pool``.

    Args:
        input (Tensor[N, C, H, W]): feature map.
        boxes (Tensor[K, 5] or list of Tensor[L, 4]): (batch index,) x1, y1, x2, y2 in image pixels, x1 < x2, y1 < y2.
        output_size: ``(PH, PW)`` or one int.
        spatial_scale: factor from image pixels to feature cells (``1 / stride``).
        backend: ``"auto"``, ``"c"`` (CPU tensors) or ``"torch"``; see :mod:`convatlas.ops.backend`.

    Returns:
        Tensor[K, C, PH, PW]: the maximum of each bin (0 for a bin that falls outside the map), dtype of ``input``.
    """
    return _roi_pool(input, boxes, output_size, spatial_scale, backend)


@torch.jit.ignore
def _roi_pool(
    input: Tensor, boxes: Tensor | list[Tensor], output_size: list[int], spatial_scale: float, backend: str
) -> Tensor:
    flat, rois, ph, pw, compute = _prepare(input, boxes, output_size, spatial_scale, "roi_pool")
    n, c, h, w = input.shape
    k = len(rois)
    if k == 0:
        return input.new_zeros((0, c, ph, pw))
    which = resolve("roi_pool", backend, input.device)
    if which == "c":  # a direct scan, as the reference does
        out = _roi_pool_kernel.RoIPoolFunction.apply(input.to(compute), rois, (ph, pw), float(spatial_scale))
        return out.to(input.dtype)
    scale = torch.tensor(spatial_scale, dtype=compute)
    start = _round_half_away(rois[:, 1:3] * scale).long()  # (k, 2): x, y
    end = _round_half_away(rois[:, 3:5] * scale).long()
    size = (end - start + 1).clamp(min=1)

    def bins(i: int, pooled: int, limit: int) -> tuple[Tensor, Tensor]:
        bin_size = size[:, i].to(compute) / pooled
        p = torch.arange(pooled, dtype=compute, device=rois.device)
        lo = torch.floor(p[None, :] * bin_size[:, None]).long() + start[:, i, None]
        hi = torch.ceil((p[None, :] + 1) * bin_size[:, None]).long() + start[:, i, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)  # (k, pooled)

    x_lo, x_hi = bins(0, pw, w)
    y_lo, y_hi = bins(1, ph, h)
    batch = rois[:, 0].long()
    lowest = torch.finfo(compute).min  # the reference starts each non-empty bin at -FLT_MAX
    # boxes are grouped by their largest bin (rows, columns) so small boxes do not pay for the scan of large ones
    span_y = (y_hi - y_lo).amax(dim=1).clamp(min=0)
    span_x = (x_hi - x_lo).amax(dim=1).clamp(min=0)
    pieces, order = [], []
    for sy, sx in torch.unique(torch.stack([span_y, span_x], dim=1), dim=0).tolist():
        group = torch.nonzero((span_y == sy) & (span_x == sx)).flatten()
        for a, b in _chunks(len(group), ph * pw * c * 4):
            idx = group[a:b]
            pieces.append(
                _roi_pool_bins(flat, batch[idx], y_lo[idx], y_hi[idx], x_lo[idx], x_hi[idx], sy, sx, h, w, lowest)
            )
            order.append(idx)
    out = torch.cat(pieces)[torch.argsort(torch.cat(order))]
    return out.permute(0, 3, 1, 2).to(input.dtype)


def _roi_pool_bins(
    flat: Tensor,
    batch: Tensor,
    y_lo: Tensor,
    y_hi: Tensor,
    x_lo: Tensor,
    x_hi: Tensor,
    span_y: int,
    span_x: int,
    h: int,
    w: int,
    lowest: float,
) -> Tensor:
    """Max of each bin for k boxes whose bins span at most ``span_y x span_x`` cells; returns (k, PH, PW, C).

    Scans each bin in row-major order keeping the first strict maximum and where it was (the reference's argmax),
    one gather of all bins per offset, without a graph; the output is then gathered again at the argmax so that
    autograd sends each gradient to exactly that cell.
    """
    k, ph, pw, c = len(batch), y_lo.shape[1], x_lo.shape[1], flat.shape[1]
    base = (batch * h * w)[:, None, None]
    with torch.no_grad():
        best = flat.new_full((k, ph, pw, c), lowest)
        arg = torch.full((k, ph, pw, c), -1, dtype=torch.int64, device=flat.device)
        for dy in range(span_y):
            rows = y_lo + dy  # (k, PH)
            row_ok = rows < y_hi
            for dx in range(span_x):
                cols = x_lo + dx  # (k, PW)
                ok = row_ok[:, :, None] & (cols < x_hi)[:, None, :]  # (k, PH, PW)
                cell = base + rows.clamp(max=h - 1)[:, :, None] * w + cols.clamp(max=w - 1)[:, None, :]
                val = flat.index_select(0, cell.flatten()).view(*cell.shape, c)
                better = (val > best) & ok[..., None]
                best = torch.where(better, val, best)
                arg = torch.where(better, cell[..., None], arg)
        empty = ((y_hi <= y_lo)[:, :, None] | (x_hi <= x_lo)[:, None, :])[..., None]
        fill = torch.full(empty.shape, lowest, dtype=flat.dtype, device=flat.device).masked_fill(empty, 0)
    picked = flat.gather(0, arg.clamp(min=0).view(-1, c)).view(k, ph, pw, c)
    return torch.where(arg >= 0, picked, fill)


def infer_scale(feature_size: list[int], image_size: list[int]) -> float:
    """The power of two closest to ``feature_size / image_size`` (heights), e.g. 0.25 for a stride-4 map.

    Written in TorchScript's subset (scripted modules call it compiled).

    Args:
        feature_size: ``(H, W)`` of the feature map.
        image_size: ``(height, width)`` of the (padded) input image.
    """
    approx = float(feature_size[0]) / float(image_size[0])
    return 2.0 ** float(torch.tensor(approx, dtype=torch.float64).log2().round())  # TorchScript has no math.log2


def assign_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    *,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each box: ``k = floor(k0 + log2(sqrt(w h) / s0) + eps)`` clamped to ``[k_min, k_max]``.

    Args:
        boxes (Tensor[K, 4]): (x1, y1, x2, y2) in image pixels.
        k_min: finest pyramid level present (2 for P2 at stride 4).
        k_max: coarsest pyramid level present.
        canonical_scale: ``s0``, the box size that maps to ``canonical_level``.
        canonical_level: ``k0``.
        eps: guards ``floor`` against round-off for sizes that are exact powers of two times ``s0``.

    Returns:
        Tensor[K]: int64 level index counted from ``k_min`` (0 is the finest map).
    """
    if k_min > k_max:
        raise ValueError(f"k_min must be <= k_max, got k_min={k_min}, k_max={k_max}")
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    k = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return (k.clamp(min=k_min, max=k_max).long() - k_min).long()


@fx_leaf
def multi_scale_roi_align(
    features: list[Tensor],
    boxes: list[Tensor],
    output_size: BroadcastingList2[int],
    scales: list[float],
    sampling_ratio: int = -1,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    aligned: bool = False,
    backend: str = "auto",
) -> Tensor:
    """RoI align over a feature pyramid: each box is pooled from the level FPN's rule assigns it to.

    Args:
        features (list of Tensor[N, C, H_l, W_l]): pyramid levels, finest first, strides doubling.
        boxes (list of Tensor[L, 4]): per-image boxes (x1, y1, x2, y2) in image pixels, x1 < x2, y1 < y2.
        output_size: ``(PH, PW)`` or one int.
        scales: spatial scale of each level (``1 / stride``), powers of two.
        sampling_ratio: as in :func:`roi_align`.
        canonical_scale: ``s0`` of :func:`assign_levels`.
        canonical_level: ``k0`` of :func:`assign_levels`.
        aligned: as in :func:`roi_align`.
        backend: as in :func:`roi_align`.

    Returns:
        Tensor[K, C, PH, PW]: pooled features in the order of the concatenated boxes, dtype of ``features[0]``.
    """
    return _multi_scale_roi_align(
        features, boxes, output_size, scales, sampling_ratio, canonical_scale, canonical_level, aligned, backend
    )


@torch.jit.ignore
def _multi_scale_roi_align(
    features: list[Tensor],
    boxes: list[Tensor],
    output_size: list[int],
    scales: list[float],
    sampling_ratio: int,
    canonical_scale: float,
    canonical_level: int,
    aligned: bool,
    backend: str,
) -> Tensor:
    if len(features) == 0 or len(features) != len(scales):
        raise ValueError(
            f"features and scales must be non-empty and of equal length, got {len(features)} and {len(scales)}"
        )
    if not all(isinstance(f, Tensor) for f in features):
        kinds = [type(f).__name__ for f in features]
        raise InputTypeError(f"features must be a list of Tensor[N, C, H, W], got {kinds}")
    compute = torch.float64 if features[0].dtype == torch.float64 else torch.float32
    rois = boxes_to_rois(list(boxes), compute)  # box coordinates are never rounded to float16/bfloat16
    ph, pw = _pair(output_size, "output_size")
    args = (sampling_ratio, aligned)
    if len(features) == 1:
        return roi_align(features[0], rois, (ph, pw), scales[0], *args, backend=backend)
    k_min = round(-math.log2(scales[0]))
    k_max = round(-math.log2(scales[-1]))
    if k_max - k_min + 1 != len(features):
        raise ValueError(
            f"scales must halve from level to level: {list(scales)} spans levels {k_min}..{k_max} "
            f"for {len(features)} feature maps"
        )
    levels = assign_levels(rois[:, 1:], k_min, k_max, canonical_scale=canonical_scale, canonical_level=canonical_level)
    c = features[0].shape[1]
    out = features[0].new_zeros((len(rois), c, ph, pw))
    for level, (feat, scale) in enumerate(zip(features, scales, strict=True)):
        idx = torch.nonzero(levels == level).flatten()
        if len(idx):
            pooled = roi_align(feat, rois[idx], (ph, pw), scale, *args, backend=backend)
            out = out.index_copy(0, idx, pooled.to(out.dtype))
    return out
