"""NMS back ends: the C kernel with a uniform-grid index (on the host) and a blocked PyTorch path (any device).

Both compute the exact greedy result. Boxes arrive sorted by decreasing score (ties: lower index first); a box is
suppressed when its IoU with an earlier kept box is strictly greater than the threshold. The operator
(:func:`convatlas.ops.boxes.nms`) picks the back end from its ``backend`` argument (:mod:`convatlas.ops.backend`);
the functions here take ``"c"`` or ``"torch"``.

The C kernel (``csrc/nms.c``, loaded by :mod:`convatlas.ops.kernels.native`): torchvision's CPU NMS compares every
kept box with every later box, ``O(N K)`` IoUs for ``K`` kept boxes. Two boxes can only exceed a threshold ``>= 0``
when their rectangles overlap with positive area, so the kernel buckets kept boxes into a uniform grid (cells about
the mean box size) and tests a candidate only against the kept boxes in the cells it covers, its middle cell first.
Each cell stores its kept boxes in keep order in blocks of eight (structure of arrays, unused slots zero), and a
block is tested without branches, so the compiler vectorises it; a kept box covering several cells may be tested more
than once, which costs time but cannot change the result. The IoU is computed with the same float operations in the
same order as torchvision's CPU kernel; ``IoU > t`` (with ``t`` in double) is tested as ``IoU >= a`` where ``a`` is
the smallest value of the boxes' type above ``t``, which is the same test. So the result is bit-for-bit the greedy
definition; a negative or NaN threshold, or non-finite coordinates, take the plain quadratic loop. float32, float16
and bfloat16 scores are ordered by a stable radix sort in the same library (exact: each is a float32); other score
dtypes (float64, integers beyond 2**24) by ``torch.sort(stable=True)``.

The blocked PyTorch path: boxes are taken in blocks of ``block`` rows. A block is first tested against all boxes
kept so far (one vectorised IoU), then resolved internally: ``keep_i = alive_i and not any_j<i (keep_j and
IoU_ji > t)`` is iterated from ``keep = alive`` until it stops changing. Any fixed point of that recursion is the
greedy answer (it defines each ``keep_i`` from earlier ones), and iteration ``r`` fixes at least position ``r``, so it
ends after at most ``block`` rounds, in practice a handful.

Soft-NMS (Bodla et al. 2017) has a C loop and a PyTorch loop with the same arithmetic; an IoU that is NaN (a NaN box,
or two empty boxes) counts as no overlap, as it does in NMS (``NaN > t`` is false).
"""

from __future__ import annotations

import torch
from torch import Tensor

from convatlas.ops.kernels.native import library

# score dtypes the float32 radix sort orders exactly
_RADIX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _threshold_for(dtype: torch.dtype, thr: float) -> tuple[float, bool]:
    """``(t, inclusive)`` such that ``iou > thr`` (thr in double) equals ``iou >= t`` or ``iou > t`` in ``dtype``."""
    if dtype == torch.float64 or thr != thr:
        return thr, False
    t = torch.tensor(thr, dtype=dtype)
    if float(t) <= thr:
        t = torch.nextafter(t, torch.tensor(float("inf"), dtype=dtype))
    return float(t), True


def _pair_iou(a: Tensor, area_a: Tensor, b: Tensor, area_b: Tensor) -> Tensor:
    """IoU with the same float operations as the C kernel (kept box ``b`` first in the union's sum)."""
    xx1 = torch.maximum(b[None, :, 0], a[:, None, 0])
    yy1 = torch.maximum(b[None, :, 1], a[:, None, 1])
    xx2 = torch.minimum(b[None, :, 2], a[:, None, 2])
    yy2 = torch.minimum(b[None, :, 3], a[:, None, 3])
    inter = (xx2 - xx1).clamp_(min=0) * (yy2 - yy1).clamp_(min=0)
    return inter / (area_b[None, :] + area_a[:, None] - inter)


def greedy_torch(boxes: Tensor, thr: float, cls: Tensor | None = None, block: int = 256) -> Tensor:
    """Keep flags of greedy NMS over boxes already sorted by decreasing score, in blocked PyTorch ops.

    Args:
        boxes (Tensor[N, 4]): sorted boxes, float32 or float64.
        thr: IoU threshold (suppress when IoU > thr).
        cls (Tensor[N], optional): category of each box; boxes of different categories never suppress each other.
        block: rows per block.

    Returns:
        Tensor[N]: bool, True where the box is kept.
    """
    t, inclusive = _threshold_for(boxes.dtype, thr)

    def over(iou: Tensor) -> Tensor:
        return iou >= t if inclusive else iou > t

    n = len(boxes)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    kept_idx = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        blk, blk_area = boxes[start:stop], area[start:stop]
        alive = torch.ones(stop - start, dtype=torch.bool, device=boxes.device)
        if kept_idx:
            prev = torch.cat(kept_idx)
            hit = over(_pair_iou(blk, blk_area, boxes[prev], area[prev]))  # (block, kept)
            if cls is not None:
                hit &= cls[start:stop, None] == cls[prev][None, :]
            alive = ~hit.any(dim=1)
        # m[i, j]: earlier box j would suppress box i
        m = over(_pair_iou(blk, blk_area, blk, blk_area)).tril_(-1)
        if cls is not None:
            m &= cls[start:stop, None] == cls[None, start:stop]
        m &= alive[None, :]
        k = alive
        for _ in range(stop - start + 1):
            new = alive & ~(m & k[None, :]).any(dim=1)
            if torch.equal(new, k):
                break
            k = new
        keep[start:stop] = k
        kept_idx.append(torch.nonzero(k).flatten() + start)
    return keep


def _greedy_c(boxes: Tensor, thr: float, seg: Tensor) -> Tensor:
    lib = library()
    boxes = boxes.contiguous()
    keep = torch.empty(len(boxes), dtype=torch.uint8)
    fn = lib.nms_f64 if boxes.dtype == torch.float64 else lib.nms_f32
    seg = seg.contiguous()
    r = fn(boxes.data_ptr(), seg.data_ptr(), len(seg) - 1, thr, keep.data_ptr())
    if r < 0:
        raise MemoryError(f"C NMS kernel could not allocate its grid for {len(boxes)} boxes")
    return keep.bool()


def _block_for(device: torch.device) -> int:
    """Rows per block of the PyTorch path: larger on a GPU, where each block costs a few launches and syncs."""
    return 1024 if device.type == "cuda" else 256


def _order(scores: Tensor, backend: str = "torch") -> Tensor:
    """Indices that sort ``scores`` in decreasing order, ties by increasing index."""
    if backend == "c" and scores.dtype in _RADIX_DTYPES:
        keys = scores.float().contiguous()
        order = torch.empty(len(keys), dtype=torch.int64)
        if library().argsort_desc_f32(keys.data_ptr(), len(keys), order.data_ptr()) == 0:
            return order
    return torch.sort(scores, descending=True, stable=True).indices


def nms(boxes: Tensor, scores: Tensor, thr: float, backend: str) -> Tensor:
    """Greedy NMS on validated float32/float64 ``boxes`` with ``backend`` ``"c"`` or ``"torch"``; see
    :func:`convatlas.ops.boxes.nms`."""
    if len(boxes) == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if backend == "c" and boxes.device.type != "cpu":
        return nms(boxes.cpu(), scores.cpu(), thr, "c").to(boxes.device)
    order = _order(scores, backend)
    sorted_boxes = boxes[order]
    if backend == "c":
        seg = torch.tensor([0, len(boxes)], dtype=torch.int64)
        keep = _greedy_c(sorted_boxes, thr, seg)
    else:
        keep = greedy_torch(sorted_boxes, thr, block=_block_for(boxes.device))
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, thr: float, backend: str) -> Tensor:
    """Per-category greedy NMS on validated inputs with ``backend`` ``"c"`` or ``"torch"``; see
    :func:`convatlas.ops.boxes.batched_nms`."""
    if len(boxes) == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if backend == "c" and boxes.device.type != "cpu":
        return batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), thr, "c").to(boxes.device)
    order = _order(scores, backend)
    if backend == "c":
        # group by category, keeping score order inside each group (stable sort)
        order = order[torch.sort(idxs[order], stable=True).indices]
        counts = torch.unique_consecutive(idxs[order], return_counts=True)[1]
        seg = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        keep = _greedy_c(boxes[order], thr, seg)
    else:
        keep = greedy_torch(boxes[order], thr, cls=idxs[order], block=_block_for(boxes.device))
    kept = order[keep].sort().values  # by index, so the stable sort below breaks score ties by index
    return kept[_order(scores[kept], backend)]


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    gaussian: bool,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS on validated ``boxes`` and ``scores`` of one float dtype (float32 or float64) with ``backend``
    ``"c"`` (on the host) or ``"torch"``; see :func:`convatlas.ops.boxes.soft_nms`."""
    if backend == "c":
        keep, kept_scores = _soft_nms_c(boxes.cpu(), scores.cpu(), gaussian, sigma, iou_threshold, score_threshold)
        return keep.to(boxes.device), kept_scores.to(boxes.device)
    return _soft_nms_torch(boxes, scores, gaussian, sigma, iou_threshold, score_threshold)


def _soft_nms_c(
    boxes: Tensor, scores: Tensor, gaussian: bool, sigma: float, iou_threshold: float, score_threshold: float
) -> tuple[Tensor, Tensor]:
    b = boxes.detach().contiguous()
    s = scores.detach().to(b.dtype).clone().contiguous()
    keep = torch.empty(len(b), dtype=torch.int64)
    kept_scores = torch.empty(len(b), dtype=b.dtype)
    lib = library()
    fn = lib.soft_nms_f64 if b.dtype == torch.float64 else lib.soft_nms_f32
    count = fn(
        b.data_ptr(), s.data_ptr(), len(b), int(gaussian), sigma, iou_threshold, score_threshold,
        keep.data_ptr(), kept_scores.data_ptr(),
    )  # fmt: skip
    if count < 0:
        raise MemoryError(f"C soft-NMS kernel could not allocate its work arrays for {len(b)} boxes")
    return keep[:count], kept_scores[:count]


def _soft_nms_torch(
    boxes: Tensor, scores: Tensor, gaussian: bool, sigma: float, iou_threshold: float, score_threshold: float
) -> tuple[Tensor, Tensor]:
    """The same loop in PyTorch operations (any device, one host synchronisation per selected box)."""
    b = boxes.detach()
    s = scores.detach().clone()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = s >= score_threshold
    keep, kept_scores = [], []
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    for _ in range(len(b)):
        masked = torch.where(alive, s, neg_inf)
        i = int(masked.argmax())
        if not bool(alive[i]):
            break
        keep.append(i)
        kept_scores.append(s[i])
        alive[i] = False
        iou = _pair_iou(b, area, b[i : i + 1], area[i : i + 1])[:, 0]
        iou = torch.where(torch.isnan(iou), torch.zeros_like(iou), iou)  # NaN: no overlap
        if gaussian:
            decay = torch.exp(-(iou * iou) / sigma)
        else:
            decay = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))
        s = torch.where(alive, s * decay, s)
        alive &= s >= score_threshold
    idx = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    out_scores = torch.stack(kept_scores) if kept_scores else s.new_zeros(0)
    return idx, out_scores
