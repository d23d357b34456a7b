"""Metrics: confusion matrices (classification and per-pixel), accuracy, IoU, and a JSON-lines log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from convatlas.files import atomic_write_text


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Counts of (true class, predicted class) pairs.

    Args:
        pred (Tensor[N] or Tensor[N, H, W]): predicted class indices.
        target (Tensor[N] or Tensor[N, H, W]): true class indices.
        num_classes: K.
        ignore_index: a target value whose entries are not counted.

    Returns:
        Tensor[K, K] int64: row = true class, column = prediction.
    """
    pred, target = pred.reshape(-1), target.reshape(-1)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(cm: Tensor) -> float:
    """The fraction of correct predictions in a confusion matrix."""
    total = cm.sum().item()
    return cm.diag().sum().item() / total if total else 0.0


def iou_per_class(cm: Tensor) -> Tensor:
    """Intersection over union of each class, ``TP / (TP + FP + FN)``; NaN for a class absent from both.

    Returns:
        Tensor[K] float64.
    """
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: Tensor) -> float:
    """The mean IoU over the classes that occur (in targets or predictions)."""
    return float(iou_per_class(cm).nanmean())


class MetricsLog:
    """The ``metrics.jsonl`` of a run: one JSON record a line, kept in memory and rewritten atomically by
    :meth:`flush` (the engine flushes with every checkpoint, so the file never runs ahead of what can be resumed by
    more than the records of one step).

    Args:
        path: the ``metrics.jsonl`` path.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        """Add a record (written at the next :meth:`flush`)."""
        self.records.append(record)

    def flush(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def load(self, global_step: int) -> None:
        """Read the file of a run being resumed and keep the records up to ``global_step`` (its checkpoint's)."""
        self.records = []
        if not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line of a file written by hand or by another tool: keep what precedes
                break
            if record.get("global_step", 0) <= global_step:
                self.records.append(record)
