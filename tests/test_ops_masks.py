"""Mask metrics and instance separation against hand-computed cases, brute-force loops and scikit-image/scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as sk_label

from convatlas.ops.masks import (
    InstanceScores,
    dice,
    foreground_iou,
    instance_f1,
    instance_iou,
    label_instances,
    match_instances,
    separate_touching,
)


def _disc(h, w, cy, cx, r):
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


def test_separate_touching_cuts_a_one_pixel_gap():
    labels = torch.zeros(8, 10, dtype=torch.int64)
    labels[1:5, 1:5] = 2
    labels[1:5, 5:9] = 5  # touches 2 along a column
    labels[6:8, 0:2] = 9  # alone
    out = separate_touching(labels)
    assert (out[1:5, 4] == 0).all()  # the contact column of the smaller id became background
    assert torch.equal(out[1:5, 5:9], labels[1:5, 5:9]) and torch.equal(out[6:8, 0:2], labels[6:8, 0:2])
    _, count = ndimage.label(out.numpy() > 0, structure=np.ones((3, 3)))
    assert count == 3  # no longer 8-connected: three separate instances
    diagonal = torch.zeros(4, 4, dtype=torch.int64)
    diagonal[0, 0], diagonal[1, 1] = 1, 2  # touching only at a corner
    assert separate_touching(diagonal)[0, 0] == 0 and separate_touching(diagonal)[1, 1] == 2


@pytest.mark.parametrize("connectivity", [1, 2])
def test_components_match_scikit_image(connectivity):
    gen = torch.Generator().manual_seed(0)
    fg = torch.rand(40, 50, generator=gen) > 0.6
    ours = label_instances(fg, connectivity=connectivity)
    ref = sk_label(fg.numpy(), connectivity=connectivity)  # numbered in raster order, as ours
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_watershed_splits_touching_discs_that_components_merge():
    fg = _disc(40, 60, 20, 18, 11) | _disc(40, 60, 20, 38, 11)  # two discs overlapping in a neck
    assert label_instances(fg).max() == 1
    split = label_instances(fg, method="watershed", min_distance=5)
    assert split.max() == 2
    assert split[20, 18] != split[20, 38] and (split > 0).eq(fg).all()
    assert label_instances(fg, min_size=10_000).max() == 0  # min_size removes it


def test_foreground_iou_and_dice_by_hand():
    pred = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1]])
    target = torch.tensor([[1, 0, 0, 0], [1, 1, 255, 255]])
    # valid pixels: the first 6; P = {00, 01, 10}, T = {00, 10, 11}; |P & T| = 2, |P | T| = 4
    assert foreground_iou(pred, target) == pytest.approx(2 / 4)
    assert dice(pred, target) == pytest.approx(2 * 2 / 6)
    # without ignore_index, 255 is foreground: P & T = {00, 10, 13}, P | T adds 01, 11, 12
    assert foreground_iou(pred, target, ignore_index=None) == pytest.approx(3 / 6)
    assert math.isnan(foreground_iou(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64)))
    assert math.isnan(dice(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64)))


def test_instance_iou_against_a_loop():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randint(0, 5, (12, 13), generator=gen) * 3  # ids 0, 3, 6, 9, 12
    true = torch.randint(0, 4, (12, 13), generator=gen) + 10 * (torch.rand(12, 13, generator=gen) > 0.5)
    true = torch.where(true == 10, 0, true)
    iou, pred_ids, true_ids = instance_iou(pred, true)
    for r, p in enumerate(pred_ids.tolist()):
        for c, t in enumerate(true_ids.tolist()):
            inter = ((pred == p) & (true == t)).sum().item()
            union = ((pred == p) | (true == t)).sum().item()
            assert iou[r, c].item() == pytest.approx(inter / union)
    assert 0 not in pred_ids.tolist() and 0 not in true_ids.tolist()


def test_instance_f1_by_hand():
    true = torch.zeros(10, 20, dtype=torch.int64)
    true[0:4, 0:4] = 1  # 16 px
    true[0:4, 8:12] = 2  # 16 px
    true[6:10, 0:4] = 3  # 16 px, missed
    pred = torch.zeros_like(true)
    pred[0:4, 0:3] = 5  # IoU 12/16 = 0.75 with 1
    pred[0:4, 10:14] = 6  # IoU 8/24 with 2: below 0.5
    pred[6:8, 15:18] = 7  # nothing there
    scores = instance_f1(pred, true)
    assert (scores.tp, scores.fp, scores.fn) == (1, 2, 2)
    assert scores.precision == pytest.approx(1 / 3) and scores.recall == pytest.approx(1 / 3)
    assert scores.f1 == pytest.approx(2 / (2 + 2 + 2)) and scores.matched_iou == pytest.approx(0.75)
    assert instance_f1(pred, true, iou_threshold=0.3).tp == 2  # 6 matches 2 at 1/3
    # a prediction lying mostly in an ignored region is neither a true nor a false positive
    ignore = torch.zeros_like(true, dtype=torch.bool)
    ignore[5:10, 14:20] = True
    assert (instance_f1(pred, true, ignore=ignore).fp, instance_f1(pred, true, ignore=ignore).fn) == (1, 2)
    matches, _, _ = match_instances(pred, true)
    assert matches == [(5, 1, 0.75)]


def test_matching_is_one_to_one_and_scores_pool():
    true = torch.zeros(4, 8, dtype=torch.int64)
    true[:, :4] = 1
    pred = torch.zeros_like(true)
    pred[:, :3] = 2  # IoU 0.75
    pred[:, 3:4] = 3  # IoU 0.25
    scores = instance_f1(pred, true, iou_threshold=0.2)
    assert (scores.tp, scores.fp, scores.fn) == (1, 1, 0)  # the true instance is taken once, by the best
    pooled = scores + InstanceScores(tp=3, fp=0, fn=1, matched_iou=0.55)
    assert (pooled.tp, pooled.fp, pooled.fn) == (4, 1, 1)
    assert pooled.matched_iou == pytest.approx((0.75 + 3 * 0.55) / 4)
    empty = instance_f1(torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3, 3, dtype=torch.int64))
    assert (empty.f1, empty.precision, empty.recall) == (0.0, 0.0, 0.0) and math.isnan(empty.matched_iou)
