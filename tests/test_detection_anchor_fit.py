"""Anchors fitted to training boxes (k-means on 1 - IoU, YOLOv2): planted clusters are recovered, coverage numbers
equal brute-force counts, and fitted shapes drive the Faster R-CNN builder (with and without a feature pyramid)."""

from __future__ import annotations

import math

import pytest
import torch

from convatlas.detection.anchors import (
    AnchorFit,
    AnchorGenerator,
    anchor_coverage,
    fit_anchors,
    grid_coverage,
    shape_iou,
)
from convatlas.models import create_model
from convatlas.ops.boxes import box_iou

PLANTED = torch.tensor([[8.0, 8.0], [30.0, 14.0], [12.0, 40.0], [60.0, 60.0]])


def _planted_boxes(n_per=60, noise=0.06, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for w, h in PLANTED.tolist():
        scale = 1 + noise * (2 * torch.rand(n_per, 2, generator=gen) - 1)
        wh = torch.tensor([w, h]) * scale
        xy = torch.rand(n_per, 2, generator=gen) * 100
        rows.append(torch.cat([xy, xy + wh], dim=1))
    return torch.cat(rows)


def test_shape_iou_is_the_iou_of_centred_boxes():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 2, generator=gen) * 20 + 1, torch.rand(4, 2, generator=gen) * 20 + 1
    centred = lambda wh: torch.cat([-wh / 2, wh / 2], dim=1)  # noqa: E731
    torch.testing.assert_close(shape_iou(a, b), box_iou(centred(a), centred(b)))


def test_kmeans_recovers_planted_clusters():
    boxes = _planted_boxes()
    fit = fit_anchors(boxes, 4)
    assert fit.shapes.shape == (4, 2)
    torch.testing.assert_close(fit.shapes, PLANTED.double(), rtol=0.03, atol=0.0)  # sorted by area, as planted
    assert fit.mean_iou > 0.9 and fit.coverage == 1.0
    assert fit.sizes[0] == pytest.approx(math.sqrt(fit.shapes[0, 0] * fit.shapes[0, 1]))
    assert fit.aspect_ratios[1] == pytest.approx(float(fit.shapes[1, 1] / fit.shapes[1, 0]))
    again = fit_anchors(boxes, 4)
    assert torch.equal(again.shapes, fit.shapes)  # deterministic for a seed
    assert fit_anchors(boxes, 2).mean_iou < fit.mean_iou  # fewer anchors fit worse


def test_coverage_against_a_brute_force_count():
    boxes = _planted_boxes(noise=0.4, seed=3)
    shapes = torch.tensor([[10.0, 10.0], [25.0, 25.0], [50.0, 50.0]])
    hits = 0
    for x1, y1, x2, y2 in boxes.tolist():
        w, h = x2 - x1, y2 - y1
        best = max(min(w, a) * min(h, b) / (w * h + a * b - min(w, a) * min(h, b)) for a, b in shapes.tolist())
        hits += best >= 0.7
    assert anchor_coverage(boxes, shapes) == pytest.approx(hits / len(boxes))
    fit = fit_anchors(boxes, 6)
    assert fit.coverage == pytest.approx(anchor_coverage(boxes, fit.shapes))


def test_grid_coverage_against_explicit_anchors():
    # Reference: every anchor of every cell of every level written out by loops, IoU by hand.
    gen = torch.Generator().manual_seed(4)
    sizes = [(70, 90), (64, 50)]
    boxes = []
    for h, w in sizes:
        xy = torch.rand(12, 2, generator=gen) * torch.tensor([w - 30.0, h - 30.0])
        wh = 6 + torch.rand(12, 2, generator=gen) * 24
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    shapes = [[(8.0, 8.0), (16.0, 8.0)], [(16.0, 16.0), (32.0, 16.0)]]
    strides = [4, 8]
    generator = AnchorGenerator(shapes=shapes)
    ours = grid_coverage(boxes, sizes, generator, strides, iou_threshold=0.5)

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    hits = total = 0
    for image_boxes, (h, w) in zip(boxes, sizes, strict=True):
        ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        anchors = []
        for level, stride in zip(shapes, strides, strict=True):
            for cy in range(ph // stride):
                for cx in range(pw // stride):
                    x, y = (cx + 0.5) * stride, (cy + 0.5) * stride
                    anchors += [(x - aw / 2, y - ah / 2, x + aw / 2, y + ah / 2) for aw, ah in level]
        for box in image_boxes.tolist():
            hits += max(iou(box, a) for a in anchors) >= 0.5
            total += 1
    assert ours == pytest.approx(hits / total)
    assert 0 < ours < 1  # a case that tells counts apart


def test_anchor_generator_takes_explicit_shapes():
    gen = AnchorGenerator(shapes=[[(10.0, 20.0), (30.0, 6.0)]])
    assert gen.num_anchors_per_location() == [2]
    anchors = gen([(1, 2)], [16])[0]
    expected = torch.tensor([[3.0, -2, 13, 18], [-7, 5, 23, 11], [19, -2, 29, 18], [9, 5, 39, 11]])
    torch.testing.assert_close(anchors, expected)
    assert gen.sizes == [(math.sqrt(200), math.sqrt(180))] and gen.aspect_ratios == [(2.0, 0.2)]
    grid = AnchorGenerator(sizes=((16.0,),), aspect_ratios=((0.25, 1.0),))
    assert grid.shapes == [[(32.0, 8.0), (16.0, 16.0)]]
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator(shapes=[[(10.0, 0.0)]])


def test_per_level_split_and_errors():
    fit = AnchorFit(torch.tensor([[4.0, 4], [8, 8], [16, 16], [32, 32]], dtype=torch.float64), 0.8, 0.9, 0.7)
    assert fit.per_level(2, split=True) == [[(4.0, 4.0), (8.0, 8.0)], [(16.0, 16.0), (32.0, 32.0)]]
    with pytest.raises(ValueError, match="4 shapes do not split into 3 equal levels"):
        fit.per_level(3, split=True)
    everywhere = fit.per_level(3)
    assert len(everywhere) == 3 and all(level == [(4.0, 4.0), (8.0, 8.0), (16.0, 16.0), (32.0, 32.0)]
                                        for level in everywhere)  # fmt: skip
    with pytest.raises(ValueError, match="need 1 <= k <= number of boxes"):
        fit_anchors(torch.tensor([[0.0, 0, 5, 5]]), 2)
    with pytest.raises(ValueError, match="box 1 .* has no area"):
        fit_anchors(torch.tensor([[0.0, 0, 5, 5], [3.0, 3, 3, 9]]), 1)


def test_every_shape_on_every_level_matches_more_small_boxes():
    # Boxes of 8 to 64 px at random places of a 170 px image, strides 4 to 32: split by area, the larger shapes land
    # on strides they cannot match at 0.7 from between two cells.
    boxes = _planted_boxes(n_per=15, seed=5)
    fit = fit_anchors(boxes, 8)
    strides, size = [4, 8, 16, 32], [(170, 170)]
    everywhere = grid_coverage([boxes], size, AnchorGenerator(shapes=fit.per_level(4)), strides)
    split = grid_coverage([boxes], size, AnchorGenerator(shapes=fit.per_level(4, split=True)), strides)
    assert everywhere > split + 0.2 and everywhere > 0.8


@pytest.mark.parametrize("fpn", [False, True])
def test_fitted_anchors_drive_faster_rcnn(fpn):
    boxes = _planted_boxes(n_per=20)
    levels = 4 if fpn else 1
    fit = fit_anchors(boxes, 2 * levels)
    model = create_model("faster_rcnn", num_classes=2, backbone="mobilenet_v3_small", representation_size=32,
                         fpn=fpn, anchor_shapes=fit.per_level(levels, split=True))  # fmt: skip
    generator = model.rpn.anchor_generator
    assert [len(level) for level in generator.shapes] == [2] * levels
    torch.testing.assert_close(torch.tensor([s for level in generator.shapes for s in level], dtype=torch.float64),
                               fit.shapes)  # fmt: skip
    image = torch.rand(3, 96, 96)
    target = {"boxes": torch.tensor([[10.0, 12, 22, 24], [40, 40, 70, 56]]), "labels": torch.tensor([1, 2])}
    losses, detections = model([image], [target])
    assert all(torch.isfinite(v) for v in losses.values()) and len(detections) == 1
    sum(losses.values()).backward()
    with pytest.raises(ValueError, match="anchor_shapes has 1 levels, the backbone gives 4"):
        create_model("faster_rcnn", num_classes=2, backbone="mobilenet_v3_small", fpn=True,
                     anchor_shapes=[[(8.0, 8.0)]])  # fmt: skip
