"""VOC AP and COCO mAP: ours against a slow devkit-style loop (float64, plain Python) and against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convatlas.detection.evaluation import average_precision, coco_evaluate, voc_evaluate


def _slow_voc_ap(detections, targets, cls, iou_threshold, use_07):
    """The PASCAL VOC devkit's voc_eval logic, written as loops over Python floats (the slow reference)."""

    def iou(a, b):
        iw = min(a[2], b[2]) - max(a[0], b[0])
        ih = min(a[3], b[3]) - max(a[1], b[1])
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    gts = {}
    npos = 0
    for i, t in enumerate(targets):
        rows = [b for b, lab in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True) if lab == cls]
        gts[i] = {"boxes": rows, "taken": [False] * len(rows)}
        npos += len(rows)
    dets = []
    for i, d in enumerate(detections):
        for b, s, lab in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True):
            if lab == cls:
                dets.append((s, i, b))
    dets.sort(key=lambda r: -r[0])
    tp, fp = [], []
    for _, i, b in dets:
        best, j = 0.0, -1
        for k, g in enumerate(gts[i]["boxes"]):
            o = iou(b, g)
            if o > best:
                best, j = o, k
        if best >= iou_threshold and not gts[i]["taken"][j]:
            gts[i]["taken"][j] = True
            tp.append(1.0)
            fp.append(0.0)
        else:
            tp.append(0.0)
            fp.append(1.0)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for k in range(len(mpre) - 1, 0, -1):
        mpre[k - 1] = max(mpre[k - 1], mpre[k])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _random_set(seed, num_images=12, num_classes=3, separated=False):
    """Ground truth and noisy detections (jittered copies, plus false positives)."""
    gen = torch.Generator().manual_seed(seed)
    targets, detections = [], []
    for _ in range(num_images):
        k = int(torch.randint(0, 5, (1,), generator=gen))
        if separated:  # one object per 100-pixel column: objects never overlap
            x = torch.arange(k, dtype=torch.float64) * 100 + torch.rand(k, generator=gen, dtype=torch.float64) * 20
            y = torch.rand(k, generator=gen, dtype=torch.float64) * 50
        else:
            x = torch.rand(k, generator=gen, dtype=torch.float64) * 200
            y = torch.rand(k, generator=gen, dtype=torch.float64) * 200
        wh = 20 + torch.rand(k, 2, generator=gen, dtype=torch.float64) * 50
        gt = torch.stack([x, y, x + wh[:, 0], y + wh[:, 1]], dim=1)
        labels = torch.randint(1, num_classes + 1, (k,), generator=gen)
        targets.append({"boxes": gt, "labels": labels})
        copies = gt.repeat(2, 1) + torch.randn(2 * k, 4, generator=gen, dtype=torch.float64) * 6
        copies[:, 2:] = torch.maximum(copies[:, 2:], copies[:, :2] + 1)
        m = int(torch.randint(0, 4, (1,), generator=gen))
        fp_xy = torch.rand(m, 2, generator=gen, dtype=torch.float64) * 200
        fp = torch.cat([fp_xy, fp_xy + 30], dim=1)
        boxes = torch.cat([copies, fp])
        det_labels = torch.cat([labels.repeat(2), torch.randint(1, num_classes + 1, (m,), generator=gen)])
        # flip some labels so that classes get confused too
        flip = torch.rand(len(det_labels), generator=gen) < 0.15
        det_labels[flip] = torch.randint(1, num_classes + 1, (int(flip.sum()),), generator=gen)
        scores = torch.rand(len(boxes), generator=gen, dtype=torch.float64)
        detections.append({"boxes": boxes, "scores": scores, "labels": det_labels})
    return detections, targets


@pytest.mark.parametrize("method, use_07", [("11point", True), ("all", False)])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_voc_ap_matches_slow_devkit_loop(method, use_07, iou_threshold):
    for seed in range(3):
        detections, targets = _random_set(seed)
        ours = voc_evaluate(detections, targets, num_classes=3, iou_threshold=iou_threshold, method=method)
        for c in range(1, 4):
            if sum(int((t["labels"] == c).sum()) for t in targets) == 0:
                assert c not in ours["ap"]
                continue
            ref = _slow_voc_ap(detections, targets, c, iou_threshold, use_07)
            assert ours["ap"][c] == pytest.approx(ref, abs=1e-12), (seed, c)
        assert 0 < ours["map"] < 1


def test_voc_ap_101_point_equals_pycocotools_ap50():
    # Separated objects make VOC's and COCO's greedy matching identical; then the 101-point AP is COCO's AP50.
    detections, targets = _random_set(7, num_images=20, separated=True)
    ours = voc_evaluate(detections, targets, num_classes=3, method="101point")
    coco = coco_evaluate(detections, targets, num_classes=3)
    assert ours["map"] == pytest.approx(coco["AP50"], abs=1e-9)
    # The all-point AP is a slightly different interpolation of the same curve: close, not equal.
    assert voc_evaluate(detections, targets, num_classes=3)["map"] == pytest.approx(coco["AP50"], abs=0.02)


def test_perfect_detections_score_one_everywhere():
    _, targets = _random_set(3, separated=True)
    detections = [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]} for t in targets]
    for method in ("11point", "all", "101point"):
        assert voc_evaluate(detections, targets, num_classes=3, method=method)["map"] == pytest.approx(1.0)
    stats = coco_evaluate(detections, targets, num_classes=3)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)


def test_difficult_objects_are_neither_missed_nor_false_positives():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    targets = [{"boxes": gt, "labels": torch.tensor([1, 1]), "difficult": torch.tensor([False, True])}]
    only_easy = [{"boxes": gt[:1], "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    both = [{"boxes": gt, "scores": torch.tensor([0.9, 0.95]), "labels": torch.tensor([1, 1])}]
    assert voc_evaluate(only_easy, targets, num_classes=1)["map"] == pytest.approx(1.0)
    assert voc_evaluate(both, targets, num_classes=1)["map"] == pytest.approx(1.0)


def test_average_precision_hand_computed():
    # Detections: TP, FP, TP over 2 ground-truth boxes: recall 0.5, 0.5, 1; precision 1, 0.5, 2/3.
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision, method="all") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(recall, precision, method="11point") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="method must be one of"):
        average_precision(np.zeros(1), np.zeros(1), method="area")
    with pytest.raises(ValueError, match="2 detection entries for 1 images"):
        voc_evaluate([{}, {}], [{}], num_classes=1)
    bad = [{"boxes": torch.zeros(2, 4), "scores": torch.zeros(1), "labels": torch.zeros(2)}]
    with pytest.raises(ValueError, match=r"detections\[0\] has 2 boxes, 1 scores"):
        voc_evaluate(bad, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], num_classes=1)
