"""Masks: separating touching instances, splitting a foreground into instances, and segmentation metrics.

- :func:`separate_touching`: the thin background gaps U-Net's paper "introduces between touching cells";
- :func:`label_instances`: instances of a predicted foreground, by connected components or by a watershed on the
  distance transform (for touching objects that components would merge);
- :func:`foreground_iou`, :func:`dice`: pixel overlap of a predicted and a true foreground;
- :func:`instance_iou`, :func:`match_instances`, :func:`instance_f1`: instance-level precision, recall and F1 at an
  IoU threshold (0.5: a match is then unique).

Label images are ``Tensor[H, W]`` int64: 0 the background, other values instance ids (not necessarily consecutive).
scipy and scikit-image do the connected components and the watershed (imported when used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# The 8 neighbours (dy, dx) of a pixel.
_NEIGHBOURS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _check_labels(name: str, labels: Tensor) -> None:
    if labels.dim() != 2:
        raise ValueError(f"{name} must be Tensor[H, W], got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"{name} must hold integer ids, got {labels.dtype}")


def separate_touching(instances: Tensor) -> Tensor:
    """Remove the pixels where two instances touch, so that no two instances remain 8-connected.

    A pixel of instance ``a`` becomes background when one of its 8 neighbours belongs to an instance ``b > a``: the gap
    is one pixel wide and cut from the instance with the smaller id.

    Args:
        instances (Tensor[H, W]): instance ids, 0 for the background.

    Returns:
        Tensor[H, W]: the same ids with the contact pixels set to 0.
    """
    _check_labels("separate_touching: instances", instances)
    h, w = instances.shape
    padded = torch.nn.functional.pad(instances[None, None].long(), (1, 1, 1, 1))[0, 0]
    cut = torch.zeros_like(instances, dtype=torch.bool)
    for dy, dx in _NEIGHBOURS_8:
        neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        cut |= neighbour > instances
    return torch.where(cut & (instances > 0), torch.zeros_like(instances), instances)


def label_instances(
    foreground: Tensor,
    *,
    method: str = "components",
    connectivity: int = 1,
    min_distance: int = 3,
    min_size: int = 0,
) -> Tensor:
    """Split a foreground mask into instances.

    Args:
        foreground (Tensor[H, W]): bool, or class indices where ``> 0`` is foreground.
        method: ``"components"`` (connected components) or ``"watershed"`` (markers at the local maxima of the
            Euclidean distance transform at least ``min_distance`` apart, flooded on the negative distance within each
            component, as ``skimage.segmentation.watershed``).
        connectivity: 1 (4-neighbours) or 2 (8-neighbours) for the components.
        min_distance: the watershed's marker spacing in pixels.
        min_size: instances with fewer pixels are removed (set to 0).

    Returns:
        Tensor[H, W] int64: 0 the background, instances numbered 1..M in raster order of their first pixel.
    """
    from scipy import ndimage

    if foreground.dim() != 2:
        raise ValueError(f"label_instances: foreground must be Tensor[H, W], got shape {tuple(foreground.shape)}")
    if method not in ("components", "watershed"):
        raise ValueError(f"label_instances: method must be 'components' or 'watershed', got {method!r}")
    if connectivity not in (1, 2):
        raise ValueError(f"label_instances: connectivity must be 1 or 2, got {connectivity}")
    fg = (foreground > 0).cpu().numpy()
    structure = ndimage.generate_binary_structure(2, connectivity)
    components, count = ndimage.label(fg, structure=structure)
    if method == "watershed" and count:
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        distance = ndimage.distance_transform_edt(fg)
        peaks = peak_local_max(distance, min_distance=max(int(min_distance), 1), labels=components,
                               exclude_border=False)  # fmt: skip
        markers = np.zeros_like(components)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # A component without a peak (a thin sliver) keeps one marker of its own.
        missing = np.setdiff1d(np.arange(1, count + 1), np.unique(components[markers > 0]))
        for k, comp in enumerate(missing):
            y, x = np.argwhere(components == comp)[0]
            markers[y, x] = len(peaks) + 1 + k
        components = watershed(-distance, markers, mask=fg, connectivity=connectivity)
    labels = torch.from_numpy(components.astype(np.int64))
    if min_size > 0:
        sizes = torch.bincount(labels.reshape(-1))
        labels = torch.where(sizes[labels] < min_size, torch.zeros_like(labels), labels)
    return _renumber(labels).to(foreground.device)


def _renumber(labels: Tensor) -> Tensor:
    """Ids 1..M in raster order of each instance's first pixel (0 stays 0)."""
    flat = labels.reshape(-1)
    size = int(flat.max()) + 1 if len(flat) else 1
    position = torch.arange(len(flat), dtype=torch.int64)
    first = torch.full((size,), len(flat), dtype=torch.int64).scatter_reduce(0, flat, position, reduce="amin")
    present = torch.nonzero(first < len(flat)).flatten()
    present = present[present != 0]
    ordered = present[torch.argsort(first[present])]
    lookup = torch.zeros(size, dtype=torch.int64)
    lookup[ordered] = torch.arange(1, len(ordered) + 1)
    return lookup[labels]


def _foreground_pair(pred: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape")
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    return (pred > 0) & valid, (target > 0) & valid


def foreground_iou(pred: Tensor, target: Tensor, *, ignore_index: int | None = 255) -> float:
    """Intersection over union of the predicted and the true foreground, ``|P & T| / |P | T|``, over all pixels given.

    Args:
        pred (Tensor[..., H, W]): bool, or class indices (``> 0`` is foreground).
        target (Tensor[..., H, W]): class indices; ``ignore_index`` pixels do not count.
        ignore_index: unlabelled target value.

    Returns:
        float; NaN when both foregrounds are empty.
    """
    p, t = _foreground_pair(pred, target, ignore_index)
    union = int((p | t).sum())
    return int((p & t).sum()) / union if union else float("nan")


def dice(pred: Tensor, target: Tensor, *, ignore_index: int | None = 255) -> float:
    """The Dice coefficient (F1 of pixels) of the foregrounds, ``2 |P & T| / (|P| + |T|)``; NaN when both are empty.

    Args: as :func:`foreground_iou`.
    """
    p, t = _foreground_pair(pred, target, ignore_index)
    total = int(p.sum()) + int(t.sum())
    return 2 * int((p & t).sum()) / total if total else float("nan")


def instance_iou(pred: Tensor, true: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """IoU of every predicted instance with every true instance, from one joint histogram of the two label images.

    Args:
        pred (Tensor[H, W]): predicted instance ids (0 background).
        true (Tensor[H, W]): true instance ids (0 background).

    Returns:
        (Tensor[P, T] float64, Tensor[P], Tensor[T]): the IoU matrix and the ids of its rows and columns.
    """
    _check_labels("instance_iou: pred", pred)
    _check_labels("instance_iou: true", true)
    if pred.shape != true.shape:
        raise ValueError(f"instance_iou: pred {tuple(pred.shape)} and true {tuple(true.shape)} must have one shape")
    pred_ids, p = torch.unique(pred.cpu().long(), return_inverse=True)
    true_ids, t = torch.unique(true.cpu().long(), return_inverse=True)
    n_p, n_t = len(pred_ids), len(true_ids)
    joint = torch.bincount((p * n_t + t).reshape(-1), minlength=n_p * n_t).reshape(n_p, n_t).double()
    area_p, area_t = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    iou = joint / (area_p + area_t - joint)
    keep_p, keep_t = pred_ids != 0, true_ids != 0
    return iou[keep_p][:, keep_t], pred_ids[keep_p], true_ids[keep_t]


@dataclass(frozen=True)
class InstanceScores:
    """Instance matching counts and the scores they give (precision, recall and F1 are 0 when undefined)."""

    tp: int
    fp: int
    fn: int
    matched_iou: float  # the mean IoU of the matched pairs (NaN without matches)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 0.0

    def __add__(self, other: InstanceScores) -> InstanceScores:
        """Pooled counts of two images (the matched IoU weighted by the number of matches)."""
        tp = self.tp + other.tp
        parts = [s.matched_iou * s.tp for s in (self, other) if s.tp]
        return InstanceScores(tp, self.fp + other.fp, self.fn + other.fn, sum(parts) / tp if tp else float("nan"))


def match_instances(
    pred: Tensor, true: Tensor, *, iou_threshold: float = 0.5, ignore: Tensor | None = None
) -> tuple[list[tuple[int, int, float]], Tensor, Tensor]:
    """Match predicted to true instances one-to-one, greedily by decreasing IoU, keeping pairs with IoU >= threshold.

    Above a threshold of 0.5 an instance can overlap only one other that much, so the greedy matching is the unique
    one; below it, greedy by IoU is the usual approximation.

    Args:
        pred (Tensor[H, W]): predicted instance ids.
        true (Tensor[H, W]): true instance ids.
        iou_threshold: the least IoU of a match.
        ignore (Tensor[H, W]): bool, an unlabelled region; a predicted instance with more than half of its pixels in
            it is left out (neither a true nor a false positive).

    Returns:
        (list[(pred_id, true_id, iou)], Tensor[P'], Tensor[T]): the matches and the ids of the predicted instances
        that count and of all true instances.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"match_instances: iou_threshold must be in (0, 1], got {iou_threshold}")
    iou, pred_ids, true_ids = instance_iou(pred, true)
    if ignore is not None:
        if ignore.shape != pred.shape:
            raise ValueError(f"match_instances: ignore {tuple(ignore.shape)} must match pred {tuple(pred.shape)}")
        flat = pred.cpu().long().reshape(-1)
        inside = torch.bincount(flat[ignore.cpu().reshape(-1).bool()], minlength=int(flat.max()) + 1)
        area = torch.bincount(flat, minlength=int(flat.max()) + 1)
        counted = 2 * inside[pred_ids] <= area[pred_ids]
        iou, pred_ids = iou[counted], pred_ids[counted]
    matches = []
    if iou.numel():
        rows, cols = torch.nonzero(iou >= iou_threshold, as_tuple=True)
        order = torch.argsort(iou[rows, cols], descending=True, stable=True)
        used_p, used_t = set(), set()
        for k in order.tolist():
            r, c = int(rows[k]), int(cols[k])
            if r not in used_p and c not in used_t:
                used_p.add(r)
                used_t.add(c)
                matches.append((int(pred_ids[r]), int(true_ids[c]), float(iou[r, c])))
    return matches, pred_ids, true_ids


def instance_f1(
    pred: Tensor, true: Tensor, *, iou_threshold: float = 0.5, ignore: Tensor | None = None
) -> InstanceScores:
    """Instance precision, recall and F1 at an IoU threshold (see :func:`match_instances`).

    Args:
        pred (Tensor[H, W]): predicted instance ids (for example :func:`label_instances` of a predicted foreground).
        true (Tensor[H, W]): true instance ids.
        iou_threshold: the least IoU of a true positive (0.5).
        ignore (Tensor[H, W]): bool, an unlabelled region (see :func:`match_instances`).

    Returns:
        :class:`InstanceScores`; sum the scores of several images with ``+`` to pool them.
    """
    matches, pred_ids, true_ids = match_instances(pred, true, iou_threshold=iou_threshold, ignore=ignore)
    tp = len(matches)
    mean_iou = sum(m[2] for m in matches) / tp if tp else float("nan")
    return InstanceScores(tp=tp, fp=len(pred_ids) - tp, fn=len(true_ids) - tp, matched_iou=mean_iou)


__all__ = [
    "InstanceScores",
    "dice",
    "foreground_iou",
    "instance_f1",
    "instance_iou",
    "label_instances",
    "match_instances",
    "separate_touching",
]
