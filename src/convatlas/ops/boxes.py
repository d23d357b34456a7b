"""Box operators of the R-CNN family: area, IoU, format conversion, box coding and non-maximum suppression.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels with ``x1 < x2`` and ``y1 < y2`` unless a function says otherwise.
Argument order and semantics follow ``torchvision.ops`` so the two can be swapped.

Precision: integer boxes are upcast to int64 before products (areas cannot overflow); float16/bfloat16 boxes are
computed in float32 (an fp16 box of 400 x 400 pixels already overflows fp16's 65504 as an area), also under
``torch.autocast``, which changes none of these results. Every operator here is a ``torch.fx`` leaf
(:func:`convatlas.ops.tracing.fx_leaf`) and compiles with ``torch.jit.script``: each public function is a typed wrapper
in TorchScript's subset, and its work a Python function marked ``@torch.jit.ignore`` that the compiled code calls back
(so a scripted one runs in a Python process and cannot be saved with ``torch.jit.save``; see :mod:`convatlas.ops`).
``nms``, ``batched_nms`` and ``soft_nms`` take ``backend="auto" | "c" | "torch"`` (:mod:`convatlas.ops.backend`).

Box coding (R-CNN, Girshick et al. 2014, appendix C) with proposal ``p`` and ground truth ``g`` given as centre,
width and height, and weights ``(w_x, w_y, w_w, w_h)``::

    t_x = w_x (g_x - p_x) / p_w        t_w = w_w log(g_w / p_w)
    b_x = p_x + p_w t_x / w_x          b_w = p_w exp(min(t_w / w_w, clamp))
"""

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from convatlas.errors import InputTypeError
from convatlas.ops.backend import resolve
from convatlas.ops.kernels import nms as _nms_kernels
from convatlas.ops.tracing import fx_leaf

__all__ = [
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "box_iou_max",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "nms",
    "remove_small_boxes",
    "soft_nms",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
DEFAULT_BBOX_CLIP = math.log(1000.0 / 16)


def _check_boxes(boxes: Tensor, name: str = "boxes", batched: bool = False) -> None:
    if not isinstance(boxes, Tensor):
        raise InputTypeError(f"{name} must be a Tensor, got {type(boxes).__name__}")
    if batched:
        if boxes.dim() < 1 or boxes.shape[-1] != 4:
            raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")
    elif boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {tuple(boxes.shape)}")


def _upcast(t: Tensor) -> Tensor:
    """float16/bfloat16 -> float32, small integers -> int64, so products cannot overflow."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype == torch.int64 else t.long()


def _float(t: Tensor) -> Tensor:
    """The floating dtype boxes are computed in: float64 stays, everything else becomes float32."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_fmt(fmt: str, name: str = "fmt") -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(f"{name} must be one of {BOX_FORMATS}, got {fmt!r}")


@fx_leaf
def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of each box.

    Args:
        boxes (Tensor[..., 4]): (x1, y1, x2, y2), 0 <= x1 < x2, 0 <= y1 < y2, or ``fmt``.
        fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"`` (see :func:`box_convert`).

    Returns:
        Tensor[...]: ``(x2 - x1) * (y2 - y1)`` (``w * h``); int64 for integer boxes, float32 for float16/bfloat16.
    """
    return _box_area(boxes, fmt)


@torch.jit.ignore
def _box_area(boxes: Tensor, fmt: str) -> Tensor:
    _check_boxes(boxes, batched=True)
    _check_fmt(fmt)
    boxes = _upcast(boxes)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def _iou_block(boxes1: Tensor, area1: Tensor, boxes2: Tensor, area2: Tensor) -> Tensor:
    """IoU of xyxy ``boxes1 [..., n, 4]`` with ``boxes2 [..., m, 4]`` (leading dimensions broadcast)."""
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # (..., n, m, 2)
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # (..., n, m, 2)
    wh = _upcast(rb - lt).clamp_(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union


def _chunk_rows(m: int, chunk_elems: int) -> int:
    return max(1, chunk_elems // max(m, 1))


def _iou_inputs(boxes1: Tensor, boxes2: Tensor, fmt: str) -> tuple[Tensor, Tensor, Tensor, Tensor, torch.dtype]:
    """Both sets upcast, as xyxy, with their areas (from ``fmt``, as torchvision computes them) and the IoU dtype."""
    _check_boxes(boxes1, "boxes1", batched=True)
    _check_boxes(boxes2, "boxes2", batched=True)
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if b.dim() < 2:
            raise ValueError(f"{name} must have shape [..., N, 4], got {tuple(b.shape)}")
    _check_fmt(fmt)
    b1, b2 = _upcast(boxes1), _upcast(boxes2)
    area1, area2 = box_area(b1, fmt), box_area(b2, fmt)
    if fmt != "xyxy":
        b1, b2 = _upcast(box_convert(b1, fmt, "xyxy")), _upcast(box_convert(b2, fmt, "xyxy"))
    dtype = torch.float64 if torch.float64 in (b1.dtype, b2.dtype) else torch.get_default_dtype()
    return b1, area1, b2, area2, dtype


@fx_leaf
def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy", chunk_elems: int = 1 << 22) -> Tensor:
    """Intersection over union of every pair of boxes.

    The full matrix is returned, as torchvision does, but it is built in row chunks so the temporary tensors never
    exceed ``chunk_elems`` pairs (torchvision's peak is about six times the output). The output itself is
    ``4 N M`` bytes in float32: 10 GB for 50,000 x 50,000. When only the best match per box is needed (matching
    anchors to ground truth, NMS), use :func:`box_iou_max` or :func:`nms`, whose memory stays bounded.

    Args:
        boxes1 (Tensor[..., N, 4]): (x1, y1, x2, y2), 0 <= x1 < x2, 0 <= y1 < y2, or ``fmt``.
        boxes2 (Tensor[..., M, 4]): same format; leading dimensions broadcast with those of ``boxes1``.
        fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"`` (see :func:`box_convert`).
        chunk_elems: pairs per temporary block.

    Returns:
        Tensor[..., N, M]: IoU in float32 (float64 for float64 boxes); NaN where both boxes have zero area.
    """
    return _box_iou(boxes1, boxes2, fmt, chunk_elems)


@torch.jit.ignore
def _box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str, chunk_elems: int) -> Tensor:
    b1, area1, b2, area2, dtype = _iou_inputs(boxes1, boxes2, fmt)
    n, m = b1.shape[-2], b2.shape[-2]
    lead = torch.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    out = torch.empty((*lead, n, m), dtype=dtype, device=boxes1.device)
    rows = _chunk_rows(m * math.prod(lead), chunk_elems)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        out[..., start:stop, :] = _iou_block(b1[..., start:stop, :], area1[..., start:stop], b2, area2)
    return out


@fx_leaf
def box_iou_max(boxes1: Tensor, boxes2: Tensor, chunk_elems: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """For each box of ``boxes1``, its best IoU over ``boxes2`` and where it was found, in bounded memory.

    Equal to ``box_iou(boxes1, boxes2).max(dim=1)`` (first index on ties) without building the ``N x M`` matrix:
    memory is ``O(chunk_elems + N)``, so 50,000 x 50,000 needs megabytes, not 10 GB.

    Args:
        boxes1 (Tensor[N, 4]): (x1, y1, x2, y2), 0 <= x1 < x2, 0 <= y1 < y2.
        boxes2 (Tensor[M, 4]): same format, M >= 1.
        chunk_elems: pairs per temporary block.

    Returns:
        (Tensor[N], Tensor[N]): the maximum IoU and the int64 index into ``boxes2``.
    """
    return _box_iou_max(boxes1, boxes2, chunk_elems)


@torch.jit.ignore
def _box_iou_max(boxes1: Tensor, boxes2: Tensor, chunk_elems: int) -> tuple[Tensor, Tensor]:
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    if len(boxes2) == 0:
        raise ValueError(f"boxes2 must hold at least one box to take a maximum over, got shape {tuple(boxes2.shape)}")
    b1, area1, b2, area2, dtype = _iou_inputs(boxes1, boxes2, "xyxy")
    values, indices = [], []
    rows = _chunk_rows(len(b2), chunk_elems)
    for start in range(0, len(b1), rows):
        stop = min(start + rows, len(b1))
        v, i = _iou_block(b1[start:stop], area1[start:stop], b2, area2).max(dim=1)
        values.append(v)
        indices.append(i)
    if not values:
        return boxes1.new_zeros(0, dtype=dtype), boxes1.new_zeros(0, dtype=torch.int64)
    return torch.cat(values), torch.cat(indices)


@fx_leaf
def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between ``"xyxy"`` (corners), ``"xywh"`` (corner, size) and ``"cxcywh"`` (centre, size).

    The arithmetic is torchvision's, so is the dtype: integer boxes stay integer unless a centre is involved
    (``cx = (x1 + x2) / 2``, ``x1 = cx - 0.5 w``), which gives float32 (the default dtype) instead of truncating.

    Args:
        boxes (Tensor[..., 4]): boxes in ``in_fmt``.
        in_fmt: one of ``"xyxy"``, ``"xywh"``, ``"cxcywh"``.
        out_fmt: one of the same.

    Returns:
        Tensor[..., 4]: boxes in ``out_fmt``; the input's dtype, or float32 for integer boxes to or from ``"cxcywh"``.
    """
    return _box_convert(boxes, in_fmt, out_fmt)


@torch.jit.ignore
def _box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    _check_boxes(boxes, batched=True)
    _check_fmt(in_fmt, "in_fmt")
    _check_fmt(out_fmt, "out_fmt")
    if in_fmt == out_fmt:
        return boxes.clone()
    if in_fmt == "xywh":
        x, y, w, h = boxes.unbind(-1)
        boxes = torch.stack((x, y, x + w, y + h), dim=-1)
    elif in_fmt == "cxcywh":
        cx, cy, w, h = boxes.unbind(-1)
        boxes = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
    if out_fmt == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    if out_fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


@fx_leaf
def clip_boxes(boxes: Tensor, size: list[int]) -> Tensor:
    """Clip boxes to an image of ``size = (height, width)``: x to ``[0, width]``, y to ``[0, height]``.

    Args:
        boxes (Tensor[..., 4]): (x1, y1, x2, y2).
        size: ``(height, width)`` of the image (a sequence of two ints).

    Returns:
        Tensor[..., 4]: the clipped boxes.
    """
    return _clip_boxes(boxes, size)


@torch.jit.ignore
def _clip_boxes(boxes: Tensor, size: list[int]) -> Tensor:
    _check_boxes(boxes, batched=True)
    if len(size) != 2:
        raise ValueError(f"size must be (height, width), got {tuple(size)!r}")
    height, width = size
    if height < 0 or width < 0:
        raise ValueError(f"size must be non-negative, got height={height}, width={width}")
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


@fx_leaf
def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2).
        min_size: minimum side length.

    Returns:
        Tensor[K]: int64 indices of the boxes kept, increasing.
    """
    return _remove_small_boxes(boxes, min_size)


@torch.jit.ignore
def _remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    _check_boxes(boxes)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return torch.where((w >= min_size) & (h >= min_size))[0]


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    weights = tuple(float(w) for w in weights)
    if len(weights) != 4:
        raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {len(weights)}")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    return weights


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


@fx_leaf
def encode_boxes(
    boxes: Tensor, proposals: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """R-CNN regression targets that turn ``proposals`` into ``boxes``.

    ``t_x = w_x (g_x - p_x) / p_w``, ``t_y = w_y (g_y - p_y) / p_h``, ``t_w = w_w log(g_w / p_w)``,
    ``t_h = w_h log(g_h / p_h)`` with centres ``x, y`` and sizes ``w, h``. Batched over leading dimensions.

    Args:
        boxes (Tensor[..., 4]): ground-truth boxes (x1, y1, x2, y2), x1 < x2, y1 < y2.
        proposals (Tensor[..., 4]): the reference boxes, same shape (or broadcastable), positive width and height.
        weights: ``(w_x, w_y, w_w, w_h)``; Fast R-CNN heads use ``(10, 10, 5, 5)``.

    Returns:
        Tensor[..., 4]: ``(t_x, t_y, t_w, t_h)``, float32 for non-float64 inputs.
    """
    return _encode_boxes(boxes, proposals, weights)


@torch.jit.ignore
def _encode_boxes(boxes: Tensor, proposals: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    _check_boxes(boxes, batched=True)
    _check_boxes(proposals, "proposals", batched=True)
    _check_broadcast(boxes, proposals, "boxes")
    wx, wy, ww, wh = _check_weights(weights)
    gx, gy, gw, gh = _centre_size(_float(boxes))
    px, py, pw, ph = _centre_size(_float(proposals))
    return torch.stack(
        (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)), dim=-1
    )


@fx_leaf
def decode_boxes(
    deltas: Tensor,
    proposals: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = DEFAULT_BBOX_CLIP,
) -> Tensor:
    """Apply R-CNN regression ``deltas`` to ``proposals``: the inverse of :func:`encode_boxes`.

    ``b_x = p_x + p_w t_x / w_x``, ``b_w = p_w exp(min(t_w / w_w, clamp))`` (and likewise for y, h); the clamp keeps
    ``exp`` finite for wild early-training deltas. Batched over leading dimensions.

    Args:
        deltas (Tensor[..., 4]): ``(t_x, t_y, t_w, t_h)``.
        proposals (Tensor[..., 4]): reference boxes (x1, y1, x2, y2), same shape (or broadcastable).
        weights: ``(w_x, w_y, w_w, w_h)`` used when encoding.
        clamp: upper bound of ``t_w / w_w`` and ``t_h / w_h`` before ``exp``; default ``log(1000 / 16)``.

    Returns:
        Tensor[..., 4]: decoded boxes (x1, y1, x2, y2), float32 for non-float64 inputs.
    """
    return _decode_boxes(deltas, proposals, weights, clamp)


@torch.jit.ignore
def _decode_boxes(
    deltas: Tensor, proposals: Tensor, weights: tuple[float, float, float, float], clamp: float
) -> Tensor:
    _check_boxes(deltas, "deltas", batched=True)
    _check_boxes(proposals, "proposals", batched=True)
    _check_broadcast(deltas, proposals, "deltas")
    wx, wy, ww, wh = _check_weights(weights)
    px, py, pw, ph = _centre_size(_float(proposals))
    deltas = _float(deltas)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=clamp)
    dh = (deltas[..., 3] / wh).clamp(max=clamp)
    cx, cy = px + dx * pw, py + dy * ph
    half_w, half_h = 0.5 * torch.exp(dw) * pw, 0.5 * torch.exp(dh) * ph
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def _check_broadcast(a: Tensor, proposals: Tensor, name: str) -> None:
    try:
        torch.broadcast_shapes(a.shape, proposals.shape)
    except RuntimeError:
        raise ValueError(f"{name} {tuple(a.shape)} and proposals {tuple(proposals.shape)} must have the same shape "
                         "(or broadcast)") from None  # fmt: skip


def _check_nms_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    _check_boxes(boxes)
    if not isinstance(scores, Tensor):
        raise InputTypeError(f"scores must be a Tensor, got {type(scores).__name__}")
    if scores.dim() != 1 or len(scores) != len(boxes):
        raise ValueError(f"scores must have shape [N] with N = len(boxes) = {len(boxes)}, got {tuple(scores.shape)}")
    if not boxes.is_floating_point():
        raise InputTypeError(f"boxes must be floating point for NMS, got {boxes.dtype}")
    if scores.device != boxes.device:
        raise ValueError(f"scores are on {scores.device} but boxes on {boxes.device}")
    if not isinstance(iou_threshold, numbers.Real):
        raise InputTypeError(f"iou_threshold must be a number, got {type(iou_threshold).__name__}")
    if math.isnan(iou_threshold):
        raise ValueError("iou_threshold must be a number, got nan")


@fx_leaf
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str = "auto") -> Tensor:
    """Greedy non-maximum suppression.

    Visit boxes by decreasing score (ties: lower index first); keep a box unless its IoU with an already kept box is
    strictly greater than ``iou_threshold``. The result equals that definition exactly, on every backend: ``"c"``, a
    C kernel with a uniform-grid index that compares each box only with kept boxes that overlap it (CUDA inputs are
    copied to the host and the indices back, one synchronisation), or ``"torch"``, a blocked PyTorch path on the
    inputs' device. ``"auto"`` takes ``"c"`` when the C kernels load (:func:`convatlas.ops.backends` says why).

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2), 0 <= x1 < x2, 0 <= y1 < y2; float16/bfloat16 computed in float32.
        scores (Tensor[N]): one score per box, any real dtype (int64 scores are ordered exactly).
        iou_threshold: suppress when IoU > this.
        backend: ``"auto"``, ``"c"`` or ``"torch"``.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, sorted by decreasing score.
    """
    return _nms(boxes, scores, iou_threshold, backend)


@torch.jit.ignore
def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str) -> Tensor:
    _check_nms_inputs(boxes, scores, iou_threshold)
    which = resolve("nms", backend, boxes.device)
    return _nms_kernels.nms(_float(boxes), scores, float(iou_threshold), which)


@fx_leaf
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, backend: str = "auto") -> Tensor:
    """Non-maximum suppression run independently per category: boxes with different ``idxs`` never suppress each other.

    Exact per category (no coordinate-offset trick, so no rounding of shifted coordinates). As in torchvision, an
    empty ``boxes`` gives an empty result whatever the other arguments are.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2), 0 <= x1 < x2, 0 <= y1 < y2.
        scores (Tensor[N]): one score per box.
        idxs (Tensor[N]): integer category of each box.
        iou_threshold: suppress when IoU > this.
        backend: ``"auto"``, ``"c"`` or ``"torch"``, as in :func:`nms`.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, sorted by decreasing score (ties: lower index first).
    """
    return _batched_nms(boxes, scores, idxs, iou_threshold, backend)


@torch.jit.ignore
def _batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, backend: str) -> Tensor:
    if isinstance(boxes, Tensor) and boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    _check_nms_inputs(boxes, scores, iou_threshold)
    if not isinstance(idxs, Tensor):
        raise InputTypeError(f"idxs must be a Tensor, got {type(idxs).__name__}")
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have shape [N] with N = {len(boxes)}, got {tuple(idxs.shape)}")
    if idxs.is_floating_point() or idxs.is_complex():
        raise InputTypeError(f"idxs must be an integer tensor, got {idxs.dtype}")
    which = resolve("batched_nms", backend, boxes.device)
    return _nms_kernels.batched_nms(_float(boxes), scores, idxs.long(), float(iou_threshold), which)


@fx_leaf
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017): decay the scores of overlapping boxes instead of removing them.

    Repeatedly take the remaining box ``M`` with the highest score (ties: lower index) and rescale every other
    remaining box ``b_i``: ``"linear"``: ``s_i *= 1 - IoU(M, b_i)`` when ``IoU > iou_threshold``; ``"gaussian"``:
    ``s_i *= exp(-IoU(M, b_i)^2 / sigma)``. Boxes whose score falls below ``score_threshold`` are dropped, and so are
    boxes with a NaN score. A NaN IoU (a box with a NaN coordinate, or two empty boxes) counts as no overlap, as in
    :func:`nms`: a NaN box decays nothing and is not decayed.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2), 0 <= x1 < x2, 0 <= y1 < y2.
        scores (Tensor[N]): one score per box.
        method: ``"linear"`` or ``"gaussian"``.
        sigma: Gaussian width (``"gaussian"`` only), > 0.
        iou_threshold: overlap above which ``"linear"`` decays.
        score_threshold: drop boxes whose (decayed) score is below this.
        backend: ``"auto"``, ``"c"`` (an ``O(N^2)`` C loop on the host) or ``"torch"`` (the same loop in PyTorch).

    Returns:
        (Tensor[K], Tensor[K]): int64 indices of the kept boxes in selection order and their decayed scores
        (float64 when boxes or scores are float64 or scores are integers, else float32).
    """
    return _soft_nms(boxes, scores, method, sigma, iou_threshold, score_threshold, backend)


@torch.jit.ignore
def _soft_nms(
    boxes: Tensor, scores: Tensor, method: str, sigma: float, iou_threshold: float, score_threshold: float, backend: str
) -> tuple[Tensor, Tensor]:
    _check_nms_inputs(boxes, scores, iou_threshold)
    if method not in ("linear", "gaussian"):
        raise ValueError(f"method must be 'linear' or 'gaussian', got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for the gaussian method, got {sigma}")
    which = resolve("soft_nms", backend, boxes.device)
    exact = boxes.dtype == torch.float64 or scores.dtype == torch.float64 or not scores.is_floating_point()
    dtype = torch.float64 if exact else torch.float32
    return _nms_kernels.soft_nms(
        boxes.to(dtype),
        scores.to(dtype),
        method == "gaussian",
        float(sigma),
        float(iou_threshold),
        float(score_threshold),
        which,
    )
