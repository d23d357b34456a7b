"""Detection metrics: PASCAL VOC average precision (11-point and all-point) and COCO mAP through pycocotools.

Detections and targets are lists with one dict per image:

- detection: ``{"boxes": Tensor[D, 4], "scores": Tensor[D], "labels": Tensor[D]}``;
- target: ``{"boxes": Tensor[G, 4], "labels": Tensor[G]}`` and optionally ``"difficult": Tensor[G]`` (bool; VOC's
  flag: such objects neither count as misses nor make a detection a false positive).

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels; labels are ``1..num_classes`` (0 is background). IoU is the
continuous one (no VOC ``+1`` pixel), as in pycocotools, so that our AP50 and pycocotools' agree.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from convatlas.ops.boxes import box_iou

AP_METHODS = ("11point", "all", "101point")


def average_precision(recall: np.ndarray, precision: np.ndarray, *, method: str = "all") -> float:
    """The area under a precision/recall curve, interpolated as PASCAL VOC or COCO do.

    Args:
        recall (array[D]): non-decreasing recall after each detection (ranked by score).
        precision (array[D]): precision after each detection.
        method: ``"11point"`` (VOC 2007: mean of the best precision at recall >= 0, 0.1, ..., 1),
            ``"all"`` (VOC 2010+: exact area under the monotone precision envelope) or ``"101point"``
            (COCO: the envelope sampled at recall 0, 0.01, ..., 1, as pycocotools does).

    Returns:
        float: the average precision in [0, 1].
    """
    if method not in AP_METHODS:
        raise ValueError(f"average_precision: method must be one of {AP_METHODS}, got {method!r}")
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape:
        raise ValueError(f"average_precision: recall {recall.shape} and precision {precision.shape} differ in shape")
    if len(recall) == 0:
        return 0.0
    if method == "11point":
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # the best precision at this recall or beyond
    if method == "101point":
        index = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in index]))
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * envelope).sum())


def _check(detections: Sequence[dict], targets: Sequence[dict]) -> None:
    if len(detections) != len(targets):
        raise ValueError(f"evaluate: {len(detections)} detection entries for {len(targets)} images")
    for i, (d, t) in enumerate(zip(detections, targets, strict=True)):
        for key in ("boxes", "scores", "labels"):
            if key not in d:
                raise ValueError(f"evaluate: detections[{i}] has no {key!r}")
        for key in ("boxes", "labels"):
            if key not in t:
                raise ValueError(f"evaluate: targets[{i}] has no {key!r}")
        if not (len(d["boxes"]) == len(d["scores"]) == len(d["labels"])):
            raise ValueError(
                f"evaluate: detections[{i}] has {len(d['boxes'])} boxes, {len(d['scores'])} scores and "
                f"{len(d['labels'])} labels"
            )


def voc_evaluate(
    detections: Sequence[dict],
    targets: Sequence[dict],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
    method: str = "all",
) -> dict:
    """PASCAL VOC evaluation: per-class AP at one IoU threshold and their mean.

    Detections of a class are ranked by score over all images; each is a true positive when its best-overlapping
    ground truth box of that class (IoU >= ``iou_threshold``) is not yet taken by a higher-scored detection.

    Args:
        detections: one dict per image (see the module docstring).
        targets: one dict per image.
        num_classes: labels are ``1..num_classes``.
        iou_threshold: the match threshold (0.5 for VOC).
        method: ``"11point"``, ``"all"`` or ``"101point"``, see :func:`average_precision`.

    Returns:
        dict: ``{"map": float, "ap": {label: float}}``; classes without ground truth are left out of the mean.
    """
    _check(detections, targets)
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"voc_evaluate: iou_threshold must be in (0, 1], got {iou_threshold}")
    ap = {}
    for c in range(1, num_classes + 1):
        records = []  # (score, is true positive)
        num_gt = 0
        for d, t in zip(detections, targets, strict=True):
            gt_mask = torch.as_tensor(t["labels"]) == c
            gt = torch.as_tensor(t["boxes"], dtype=torch.float64)[gt_mask]
            difficult = torch.as_tensor(t.get("difficult", torch.zeros(len(gt_mask), dtype=torch.bool)))[gt_mask]
            num_gt += int((~difficult.bool()).sum())
            det_mask = torch.as_tensor(d["labels"]) == c
            boxes = torch.as_tensor(d["boxes"], dtype=torch.float64)[det_mask]
            scores = torch.as_tensor(d["scores"], dtype=torch.float64)[det_mask]
            order = torch.argsort(scores, descending=True, stable=True)
            boxes, scores = boxes[order], scores[order]
            taken = torch.zeros(len(gt), dtype=torch.bool)
            overlaps = box_iou(boxes, gt) if len(gt) and len(boxes) else None
            for k in range(len(boxes)):
                if overlaps is None:
                    records.append((float(scores[k]), False))
                    continue
                best, j = overlaps[k].max(0)
                if best < iou_threshold:
                    records.append((float(scores[k]), False))
                elif difficult[j]:
                    continue  # neither a true nor a false positive
                elif not taken[j]:
                    taken[j] = True
                    records.append((float(scores[k]), True))
                else:
                    records.append((float(scores[k]), False))
        if num_gt == 0:
            continue
        records.sort(key=lambda r: -r[0])  # stable: ties keep image order, as the VOC devkit does
        tp = np.cumsum([r[1] for r in records], dtype=np.float64)
        fp = np.cumsum([not r[1] for r in records], dtype=np.float64)
        recall = tp / num_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[c] = average_precision(recall, precision, method=method)
    return {"map": float(np.mean(list(ap.values()))) if ap else 0.0, "ap": ap}


COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small",
              "AR_medium", "AR_large")  # fmt: skip


def coco_evaluate(
    detections: Sequence[dict],
    targets: Sequence[dict],
    *,
    num_classes: int,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict:
    """COCO mAP (IoU 0.50:0.95) and the eleven other COCO statistics, computed by pycocotools.

    Args:
        detections: one dict per image (see the module docstring).
        targets: one dict per image; ``"iscrowd"`` (Tensor[G]) is passed through when present.
        num_classes: labels are ``1..num_classes``.
        image_sizes: ``(H, W)`` per image (only recorded in the COCO image table; optional).

    Returns:
        dict: ``{"AP": ..., "AP50": ..., ...}`` (pycocotools' ``stats``; -1 where a statistic has no ground truth).
    """
    _check(detections, targets)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (d, t) in enumerate(zip(detections, targets, strict=True)):
        h, w = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": i, "height": int(h), "width": int(w)})
        crowd = t.get("iscrowd", torch.zeros(len(t["labels"])))
        gt_rows = zip(torch.as_tensor(t["boxes"]).tolist(), t["labels"].tolist(), crowd.tolist(), strict=True)
        for box, label, is_crowd in gt_rows:
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(is_crowd),
                }
            )
        dt_rows = zip(torch.as_tensor(d["boxes"]).tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True)
        for box, score, label in dt_rows:
            x1, y1, x2, y2 = box
            results.append({"image_id": i, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})  # fmt: skip
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(1, num_classes + 1)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return dict.fromkeys(COCO_STATS, 0.0)
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STATS, evaluator.stats, strict=True)}
