"""Anchors, matching and sampling: the bookkeeping that turns boxes into training labels (Ren et al. 2015).

- :class:`AnchorGenerator`: ``len(sizes) * len(aspect_ratios)`` reference boxes centred on every feature-map cell.
- :func:`match_boxes`: each reference box (anchor or proposal) gets the index of its best ground-truth box, or
  ``BACKGROUND`` below the low threshold, or ``IGNORE`` between the thresholds.
- :func:`sample_labels`: a fixed-size mini-batch with at most a given fraction of positives; the rules of R-CNN
  (128 with 32 positive), Fast R-CNN (64 per image, a quarter foreground) and the RPN (256, half positive).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] = ((128.0, 256.0, 512.0),),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
    ):
        super().__init__()
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
