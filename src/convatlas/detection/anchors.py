"""Anchors, matching and sampling: the bookkeeping that turns boxes into training labels (Ren et al. 2015).

- :class:`AnchorGenerator`: ``len(sizes) * len(aspect_ratios)`` reference boxes centred on every feature-map cell.
- :func:`match_boxes`: each reference box (anchor or proposal) gets the index of its best ground-truth box, or
  ``BACKGROUND`` below the low threshold, or ``IGNORE`` between the thresholds.
- :func:`sample_labels`: a fixed-size mini-batch with at most a given fraction of positives; the rules of R-CNN
  (128 with 32 positive), Fast R-CNN (64 per image, a quarter foreground) and the RPN (256, half positive).
- :func:`fit_anchors`: anchor shapes fitted to training boxes by k-means with the distance ``1 - IoU`` of boxes
  sharing a centre (YOLOv2, Redmon and Farhadi 2017), with :func:`anchor_coverage` and :func:`grid_coverage`, the
  share of boxes an anchor set can match at the RPN's positive threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convatlas.ops.boxes import box_iou

BACKGROUND = -1
IGNORE = -2


class AnchorGenerator(nn.Module):
    """Anchors at several scales and aspect ratios on one or more feature maps.

    Anchor ``(size s, ratio r = h / w)`` has width ``s / sqrt(r)`` and height ``s * sqrt(r)`` (area ``s^2``), centred
    at ``((x + 0.5) * stride, (y + 0.5) * stride)`` for feature cell ``(y, x)``.

    Args:
        sizes: anchor sizes in pixels per feature level, e.g. ``((128, 256, 512),)`` for one map (the paper's) or
            ``((32,), (64,), (128,), (256,), (512,))`` for a feature pyramid.
        aspect_ratios: ``h / w`` ratios per level (one tuple is reused for every level).
        shapes: instead of ``sizes x aspect_ratios``, explicit ``(w, h)`` anchor shapes per level, for example fitted
            ones (:meth:`AnchorFit.per_level`); every level needs the same number (the RPN head is shared).
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] = ((128.0, 256.0, 512.0),),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
        shapes: Sequence[Sequence[tuple[float, float]]] | None = None,
    ):
        super().__init__()
        if shapes is not None:
            levels = [[(float(w), float(h)) for w, h in level] for level in shapes]
            if not levels or any(not level or min(min(wh) for wh in level) <= 0 for level in levels):
                raise ValueError(f"AnchorGenerator: shapes must be non-empty levels of positive (w, h), got {shapes}")
            self.shapes = levels
            self.sizes = [tuple(math.sqrt(w * h) for w, h in level) for level in levels]
            self.aspect_ratios = [tuple(h / w for w, h in level) for level in levels]
            self.cell_anchors = [
                torch.tensor([(-w / 2, -h / 2, w / 2, h / 2) for w, h in level], dtype=torch.float64)
                for level in levels
            ]
            return
        sizes = [tuple(float(s) for s in level) for level in sizes]
        aspect_ratios = [tuple(float(r) for r in level) for level in aspect_ratios]
        if len(aspect_ratios) == 1:
            aspect_ratios = aspect_ratios * len(sizes)
        if len(aspect_ratios) != len(sizes):
            raise ValueError(
                f"AnchorGenerator: aspect_ratios has {len(aspect_ratios)} levels but sizes has {len(sizes)}"
            )
        for level in sizes + aspect_ratios:
            if not level or min(level) <= 0:
                raise ValueError(f"AnchorGenerator: sizes and aspect_ratios must be positive, non-empty; got {level}")
        self.sizes, self.aspect_ratios = sizes, aspect_ratios
        self.cell_anchors = [self._cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios, strict=True)]
        # from the numbers, not the tensors: under `with torch.device("meta")` the tensors hold no data
        self.shapes = [[(s / math.sqrt(r), s * math.sqrt(r)) for r in ratios for s in level_sizes]
                       for level_sizes, ratios in zip(sizes, aspect_ratios, strict=True)]  # fmt: skip

    @staticmethod
    def _cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
        """The ``(A, 4)`` anchors of one cell centred at the origin, ratio-major (all sizes of ratio 0 first)."""
        rows = []
        for r in ratios:
            for s in sizes:
                w, h = s / math.sqrt(r), s * math.sqrt(r)
                rows.append((-w / 2, -h / 2, w / 2, h / 2))
        return torch.tensor(rows, dtype=torch.float64)

    def num_anchors_per_location(self) -> list[int]:
        """``A`` for each level."""
        return [len(a) for a in self.cell_anchors]

    def forward(self, feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], *, dtype=torch.float32,
                device=None) -> list[Tensor]:  # fmt: skip
        """Anchors of every level.

        Args:
            feature_sizes: ``(H_l, W_l)`` of each feature map.
            strides: the stride (reduction) of each feature map in pixels.

        Returns:
            list[Tensor[H_l * W_l * A_l, 4]]: (x1, y1, x2, y2) per level, ordered cell-major (row, column, anchor) to
            match a head output reshaped from ``(N, A*k, H, W)`` to ``(N, H, W, A, k)``.
        """
        if len(feature_sizes) != len(self.cell_anchors) or len(strides) != len(self.cell_anchors):
            raise ValueError(
                f"AnchorGenerator: {len(self.cell_anchors)} levels configured, got {len(feature_sizes)} feature maps "
                f"and {len(strides)} strides"
            )
        out = []
        for (h, w), stride, cell in zip(feature_sizes, strides, self.cell_anchors, strict=True):
            ys = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
            xs = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(h * w, 1, 4)
            out.append((centres + cell[None]).reshape(-1, 4).to(dtype=dtype, device=device))
        return out


def match_boxes(
    boxes: Tensor,
    gt_boxes: Tensor,
    *,
    high: float,
    low: float,
    allow_low_quality: bool = False,
    min_low: float = 0.0,
) -> Tensor:
    """Assign each reference box to a ground-truth box by IoU.

    Args:
        boxes (Tensor[N, 4]): anchors or proposals, (x1, y1, x2, y2).
        gt_boxes (Tensor[G, 4]): ground truth, (x1, y1, x2, y2); ``G`` may be 0.
        high: IoU >= high is a match (positive).
        low: IoU < low is background; in between is ignored.
        allow_low_quality: also match each ground-truth box to the reference boxes that overlap it most, even below
            ``high`` (the RPN's rule, so every object gets at least one positive anchor).
        min_low: IoU < min_low is ignored rather than background (Fast R-CNN's 0.1, a crude hard-negative mining).

    Returns:
        Tensor[N]: int64, the matched ground-truth index, or ``BACKGROUND`` (-1), or ``IGNORE`` (-2).
    """
    if not 0 <= min_low <= low <= high <= 1:
        raise ValueError(f"match_boxes: need 0 <= min_low <= low <= high <= 1, got {min_low}, {low}, {high}")
    if len(gt_boxes) == 0:
        return torch.full((len(boxes),), BACKGROUND, dtype=torch.int64, device=boxes.device)
    iou = box_iou(gt_boxes.float(), boxes.float())  # (G, N)
    best, matches = iou.max(dim=0)
    result = matches.clone()
    result[best < high] = IGNORE
    result[best < low] = BACKGROUND
    result[best < min_low] = IGNORE
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        gt_index, box_index = torch.nonzero((iou == best_per_gt) & (best_per_gt > 0), as_tuple=True)
        result[box_index] = gt_index
    return result


def sample_labels(
    matches: Tensor, *, batch_size: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample a mini-batch of positive (matched) and negative (``BACKGROUND``) reference boxes.

    Takes ``min(#positives, batch_size * positive_fraction)`` positives at random and fills the rest of
    ``batch_size`` with negatives (fewer when there are not enough); ``IGNORE`` entries are never taken.

    Args:
        matches (Tensor[N]): from :func:`match_boxes`.
        batch_size: the mini-batch size (256 for the RPN, 64 per image for Fast R-CNN, 128 for R-CNN).
        positive_fraction: the most positives can make up (0.5 RPN, 0.25 Fast R-CNN and R-CNN).
        generator: the random source (a CPU generator).

    Returns:
        (Tensor[P], Tensor[Q]): int64 indices of the sampled positives and negatives.
    """
    if batch_size < 1 or not 0 <= positive_fraction <= 1:
        raise ValueError(
            f"sample_labels: need batch_size >= 1 and 0 <= positive_fraction <= 1, got {batch_size}, "
            f"{positive_fraction}"
        )
    positive = torch.nonzero(matches >= 0).flatten()
    negative = torch.nonzero(matches == BACKGROUND).flatten()
    num_pos = min(len(positive), int(batch_size * positive_fraction))
    num_neg = min(len(negative), batch_size - num_pos)
    pick_pos = torch.randperm(len(positive), generator=generator)[:num_pos].to(matches.device)
    pick_neg = torch.randperm(len(negative), generator=generator)[:num_neg].to(matches.device)
    return positive[pick_pos], negative[pick_neg]


# --- anchors fitted to the training boxes ---------------------------------------------------------------------------


def _box_shapes(boxes: Tensor, name: str) -> Tensor:
    """``(w, h)`` of ``Tensor[N, 4]`` (x1, y1, x2, y2) boxes as float64, rejecting degenerate ones."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: boxes must be Tensor[N, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    wh = (boxes[:, 2:] - boxes[:, :2]).double().cpu()
    if len(wh) and not (wh > 0).all():
        k = int(torch.nonzero((wh <= 0).any(1))[0])
        raise ValueError(f"{name}: box {k} {boxes[k].tolist()} has no area (need x1 < x2 and y1 < y2)")
    return wh


def shape_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes that share a centre, from their shapes: ``min(w) min(h) / (w_a h_a + w_b h_b - min(w) min(h))``.

    Args:
        a (Tensor[N, 2]), b (Tensor[M, 2]): ``(w, h)``.

    Returns:
        Tensor[N, M].
    """
    inter = torch.minimum(a[:, None, 0], b[None, :, 0]) * torch.minimum(a[:, None, 1], b[None, :, 1])
    return inter / (a[:, None, 0] * a[:, None, 1] + b[None, :, 0] * b[None, :, 1] - inter)


def anchor_coverage(boxes: Tensor, shapes: Tensor, *, iou_threshold: float = 0.7) -> float:
    """The share of boxes that some anchor shape, centred on the box, overlaps with IoU >= ``iou_threshold``.

    An upper bound of what anchors on a grid can match (:func:`grid_coverage` places them at their real centres).

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2) ground-truth boxes.
        shapes (Tensor[A, 2]): anchor ``(w, h)``.
        iou_threshold: the RPN's positive threshold (0.7).
    """
    wh = _box_shapes(boxes, "anchor_coverage")
    if not len(wh):
        return float("nan")
    best = shape_iou(wh, torch.as_tensor(shapes, dtype=torch.float64).reshape(-1, 2)).max(1).values
    return float((best >= iou_threshold).double().mean())


def grid_coverage(
    boxes: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    anchor_generator: AnchorGenerator,
    strides: Sequence[int],
    *,
    iou_threshold: float = 0.7,
    size_divisible: int = 32,
) -> float:
    """The share of ground-truth boxes that an anchor of the detector's grid overlaps with IoU >= ``iou_threshold``:
    the boxes the RPN can label positive without its fallback to each box's best anchor.

    Args:
        boxes: per image, ``Tensor[K_i, 4]`` (x1, y1, x2, y2).
        image_sizes: per image, ``(H, W)``; the detector pads it to a multiple of ``size_divisible`` and a level of
            stride ``s`` has ``padded / s`` cells a side.
        anchor_generator: the anchors.
        strides: the stride of each level.
        iou_threshold: the RPN's positive threshold (0.7).
    """
    if len(boxes) != len(image_sizes):
        raise ValueError(f"grid_coverage: {len(boxes)} box sets for {len(image_sizes)} image sizes")
    hits, total = 0, 0
    for image_boxes, (h, w) in zip(boxes, image_sizes, strict=True):
        _box_shapes(image_boxes, "grid_coverage")
        if not len(image_boxes):
            continue
        ph, pw = -(-h // size_divisible) * size_divisible, -(-w // size_divisible) * size_divisible
        anchors = torch.cat(anchor_generator([(ph // s, pw // s) for s in strides], strides, dtype=torch.float64))
        best = box_iou(image_boxes.double().cpu(), anchors).max(1).values
        hits += int((best >= iou_threshold).sum())
        total += len(image_boxes)
    return hits / total if total else float("nan")


@dataclass(frozen=True)
class AnchorFit:
    """Anchor shapes fitted by :func:`fit_anchors`.

    Attributes:
        shapes: Tensor[k, 2] float64 ``(w, h)`` in pixels, by increasing area.
        mean_iou: the mean over the boxes of their best IoU with a shape (YOLOv2's "Avg IOU").
        coverage: the share of boxes whose best IoU reaches ``iou_threshold`` (:func:`anchor_coverage`).
        iou_threshold: the threshold of ``coverage``.
    """

    shapes: Tensor
    mean_iou: float
    coverage: float
    iou_threshold: float

    @property
    def sizes(self) -> tuple[float, ...]:
        """``sqrt(w h)`` of each shape."""
        return tuple(math.sqrt(w * h) for w, h in self.shapes.tolist())

    @property
    def aspect_ratios(self) -> tuple[float, ...]:
        """``h / w`` of each shape."""
        return tuple(h / w for w, h in self.shapes.tolist())

    def per_level(self, num_levels: int, *, split: bool = False) -> list[list[tuple[float, float]]]:
        """The ``anchor_shapes`` of ``faster_rcnn``: one list of ``(w, h)`` per level (one level without a pyramid,
        one per pyramid level with ``fpn=True``, finest first).

        Args:
            num_levels: the number of feature levels.
            split: divide the shapes by area into ``num_levels`` equal groups, the smallest on the finest level,
                instead of giving every level every shape. Splitting keeps the anchor count down but puts the larger
                shapes on coarse strides, where a shape about the stride's size cannot reach IoU 0.7 with a box
                lying between two cells. With 12 shapes fitted to the training boxes of the nuclei and of
                ``fashion-scenes`` (objects of 2 to 50 pixels) on strides 4 to 32, the grid matches 0.89 and 0.95 of
                the boxes at IoU 0.7 with every shape on every level, 0.21 and 0.48 with the split
                (:func:`grid_coverage` measures it for given boxes).

        Raises:
            ValueError: when splitting and the number of shapes is not a multiple of ``num_levels``.
        """
        k = len(self.shapes)
        rows = [tuple(r) for r in self.shapes.tolist()]
        if num_levels < 1:
            raise ValueError(f"AnchorFit.per_level: num_levels must be >= 1, got {num_levels}")
        if not split:
            return [list(rows) for _ in range(num_levels)]
        if k % num_levels:
            raise ValueError(f"AnchorFit.per_level: {k} shapes do not split into {num_levels} equal levels; fit a "
                             f"multiple of {num_levels} or pass split=False")  # fmt: skip
        per = k // num_levels
        return [rows[i * per : (i + 1) * per] for i in range(num_levels)]


def fit_anchors(
    boxes: Tensor,
    k: int,
    *,
    iou_threshold: float = 0.7,
    max_iter: int = 300,
    restarts: int = 5,
    seed: int = 0,
) -> AnchorFit:
    """Fit ``k`` anchor shapes to ground-truth boxes: k-means on ``(w, h)`` with the distance ``1 - IoU``.

    As in YOLOv2 (Redmon and Farhadi 2017): the IoU of two boxes sharing a centre, so that large boxes do not weigh
    more than small ones as they would under a Euclidean distance. Seeding is k-means++ with that distance; each
    centre is the mean shape of its cluster (an empty cluster restarts at the box fitted worst); the best of
    ``restarts`` runs (highest mean IoU) is kept.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2) training boxes, N >= k.
        k: the number of anchor shapes.
        iou_threshold: the threshold reported in ``coverage`` (the RPN's positive 0.7).
        max_iter: iterations per run at most (a run stops when no assignment changes).
        restarts: runs from different seeds.
        seed: the seed of the first run.

    Returns:
        :class:`AnchorFit`.
    """
    wh = _box_shapes(boxes, "fit_anchors")
    if k < 1 or len(wh) < k:
        raise ValueError(f"fit_anchors: need 1 <= k <= number of boxes, got k={k} for {len(wh)} boxes")
    if restarts < 1 or max_iter < 1:
        raise ValueError(f"fit_anchors: restarts and max_iter must be >= 1, got {restarts} and {max_iter}")
    best_centres, best_score = None, -1.0
    for run in range(restarts):
        gen = torch.Generator().manual_seed(seed + run)
        centres = _kmeans_pp(wh, k, gen)
        assign = None
        for _ in range(max_iter):
            iou = shape_iou(wh, centres)
            new_assign = iou.argmax(1)
            if assign is not None and torch.equal(new_assign, assign):
                break
            assign = new_assign
            fit = iou.max(1).values
            for c in range(k):
                members = assign == c
                if members.any():
                    centres[c] = wh[members].mean(0)
                else:
                    worst = int(fit.argmin())
                    centres[c], fit[worst] = wh[worst], 1.0
        score = float(shape_iou(wh, centres).max(1).values.mean())
        if score > best_score:
            best_centres, best_score = centres.clone(), score
    order = torch.argsort(best_centres[:, 0] * best_centres[:, 1], stable=True)
    shapes = best_centres[order]
    coverage = anchor_coverage(boxes, shapes, iou_threshold=iou_threshold)
    return AnchorFit(shapes, best_score, coverage, iou_threshold)


def _kmeans_pp(wh: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding with the distance ``1 - IoU``: each new centre drawn with probability ``~ distance^2``."""
    centres = [wh[int(torch.randint(len(wh), (1,), generator=gen))]]
    for _ in range(1, k):
        distance = 1 - shape_iou(wh, torch.stack(centres)).max(1).values
        weights = distance.clamp(min=0) ** 2
        if float(weights.sum()) <= 0:  # every box already sits on a centre: take any box not yet chosen
            weights = torch.ones(len(wh), dtype=torch.float64)
        centres.append(wh[int(torch.multinomial(weights, 1, generator=gen))])
    return torch.stack(centres).clone()
