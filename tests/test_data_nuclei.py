"""The nuclei data (stardist's real 512x512 image, 125 nuclei): counts, the spatial split, boxes against masks,
metadata and determinism. References: brute-force loops over the label image and torchvision's masks_to_boxes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torchvision.ops import masks_to_boxes

from convatlas.data import Subset
from convatlas.data.augment import unet_augmentation
from convatlas.data.detection import collate_detection
from convatlas.data.nuclei import (
    IGNORE_INDEX,
    NucleiDetection,
    NucleiSegmentation,
    load_nuclei,
    nuclei_files,
    spatial_split,
    targets_from_instances,
)
from convatlas.ops.masks import separate_touching


def _centroid(instances, i):
    ys, xs = torch.nonzero(instances == i, as_tuple=True)
    return ys.double().mean().item() + 0.5, xs.double().mean().item() + 0.5


def test_the_image_and_its_125_nuclei():
    image, instances = load_nuclei()
    assert image.shape == (1, 512, 512) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 235 / 255 + 1e-7
    assert instances.dtype == torch.int64 and instances.shape == (512, 512)
    assert torch.equal(torch.unique(instances), torch.arange(126))  # 0 and 1..125, renumbered consecutively
    # the nuclei are brighter than the background (a fluorescence image)
    assert image[0][instances > 0].mean() > 2 * image[0][instances == 0].mean()


@pytest.mark.parametrize("quadrant", range(4))
def test_split_puts_each_nucleus_in_the_split_holding_its_centroid(quadrant):
    _, instances = load_nuclei()
    split = spatial_split(instances, quadrant)
    train, test = set(split.train_ids.tolist()), set(split.test_ids.tolist())
    assert not train & test and len(train | test) == 125
    y1, y2, x1, x2 = split.window
    assert (y2 - y1, x2 - x1) == (256, 256)
    for i in range(1, 126):  # brute force: the centroid of every nucleus
        cy, cx = _centroid(instances, i)
        assert (i in test) == (y1 <= cy < y2 and x1 <= cx < x2)
    # no pixel of a nucleus lies in the other split's region
    assert split.train_region[torch.isin(instances, split.train_ids)].all()
    assert not split.train_region[torch.isin(instances, split.test_ids)].any()
    # away from nuclei the regions are the quadrants
    background = instances == 0
    in_window = torch.zeros_like(background)
    in_window[y1:y2, x1:x2] = True
    assert torch.equal(split.train_region[background], ~in_window[background])


def test_default_split_counts():
    _, instances = load_nuclei()
    split = spatial_split(instances)
    assert (len(split.train_ids), len(split.test_ids), split.window) == (102, 23, (256, 512, 256, 512))
    counts = [len(spatial_split(instances, q).test_ids) for q in range(4)]
    assert sum(counts) == 125  # the four quadrants partition the nuclei


def test_training_never_shows_a_test_pixel_and_test_never_a_training_nucleus():
    image, instances = load_nuclei()
    split = spatial_split(instances)
    data = NucleiSegmentation("train", size=96, context=16, num_samples=40, instances=True)
    canvas = data.prep.canvas[0]
    fill = canvas[~split.train_region]
    assert torch.all(fill == fill[0])  # the held-out pixels are one constant, the training background's median
    assert torch.equal(canvas[split.train_region], image[0][split.train_region])
    for k in range(len(data)):
        x, target = data[k]
        assert x.shape == (1, 128, 128) and target["mask"].shape == (96, 96)
        assert set(torch.unique(target["instances"]).tolist()) <= {0} | set(split.train_ids.tolist())
    # every training crop's mask window misses the held-out quadrant
    y1, y2, x1, x2 = split.window
    ys, xs = data.positions[:, 0], data.positions[:, 1]
    assert not ((ys + 96 > y1) & (ys < y2) & (xs + 96 > x1) & (xs < x2)).any()
    test = NucleiSegmentation("test", instances=True)
    x, target = test[0]
    assert len(test) == 1 and x.shape == (1, 256, 256)
    window = instances[y1:y2, x1:x2]
    trained_here = torch.isin(window, split.train_ids)
    assert (target["mask"][trained_here] == IGNORE_INDEX).all()
    assert torch.all(x[0][trained_here] == fill[0])
    assert set(torch.unique(target["instances"]).tolist()) == {0} | set(split.test_ids.tolist())


def test_masks_separate_touching_nuclei_and_ignore_the_other_split():
    _, instances = load_nuclei()
    data = NucleiSegmentation("test", separate=True, instances=True)
    _, target = data[0]
    expected = (separate_touching(target["instances"]) > 0).long()
    labelled = target["mask"] != IGNORE_INDEX
    assert torch.equal(target["mask"][labelled], expected[labelled])
    plain = NucleiSegmentation("test", separate=False)[0][1]
    assert (plain == 1).sum() > (target["mask"] == 1).sum()  # the gaps took pixels


def test_boxes_match_masks():
    _, instances = load_nuclei()
    target = targets_from_instances(instances)
    assert len(target["boxes"]) == 125 and target["labels"].eq(1).all()
    # reference 1: torchvision's masks_to_boxes (inclusive ends) plus one on x2, y2
    torch.testing.assert_close(target["boxes"], masks_to_boxes(target["masks"]) + torch.tensor([0.0, 0, 1, 1]))
    # reference 2: a brute-force loop
    for k in (0, 57, 124):
        ys, xs = torch.nonzero(instances == target["ids"][k], as_tuple=True)
        assert target["boxes"][k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    empty = targets_from_instances(torch.zeros(5, 7, dtype=torch.int64))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 5, 7)


def test_detection_items_boxes_follow_augmented_masks():
    data = NucleiDetection("train", size=96, num_samples=6, transform=unet_augmentation())
    for k in range(len(data)):
        image, target = data[k]
        assert image.shape == (3, 96, 96)
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) > 0
        expected = masks_to_boxes(target["masks"]) + torch.tensor([0.0, 0, 1, 1])
        torch.testing.assert_close(target["boxes"], expected)
        assert target["masks"].flatten(1).any(1).all()
    images, targets = collate_detection([data[0], data[1]])
    assert len(images) == len(targets) == 2
    test_image, test_target = NucleiDetection("test")[0]
    assert test_image.shape == (3, 256, 256) and len(test_target["boxes"]) == 23


def test_metadata_matches_the_other_datasets():
    seg = NucleiSegmentation("train", num_samples=4)
    det = NucleiDetection("train", num_samples=4)
    assert (seg.task, seg.num_classes, seg.in_channels) == ("segmentation", 2, 1)
    assert seg.classes == det.classes == ("background", "nucleus")
    assert (det.task, det.num_classes, det.in_channels) == ("detection", 1, 3)  # detection counts no background
    # mean and std of the training region's real pixels
    image, instances = load_nuclei()
    region = spatial_split(instances).train_region
    assert seg.mean[0] == pytest.approx(image[0][region].double().mean().item())
    assert seg.std[0] == pytest.approx(image[0][region].double().std().item())
    assert det.mean == seg.mean * 3 and len(det.std) == 3
    sub = Subset(seg, 2)
    assert (sub.task, sub.num_classes, sub.mean) == (seg.task, seg.num_classes, seg.mean)


def test_items_are_repeatable_and_epochs_differ():
    def items(data):
        return [data[k] for k in range(len(data))]

    kw = {"size": 64, "num_samples": 4, "weights": True, "transform": unet_augmentation()}
    a, b = items(NucleiSegmentation("train", **kw)), items(NucleiSegmentation("train", **kw))
    for (xa, ta), (xb, tb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    other = NucleiSegmentation("train", **kw)
    other.set_epoch(1)
    assert not torch.equal(other[0][0], a[0][0])
    seeded = NucleiSegmentation("train", seed=1, **kw)
    assert not torch.equal(seeded[0][0], a[0][0])
    # items are copies: changing one leaves the dataset as it was
    test = NucleiSegmentation("test")
    test[0][0].zero_()
    assert test[0][0].abs().sum() > 0
    # the draw does not disturb the caller's random stream
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    _ = seeded[1]
    assert torch.equal(torch.rand(1), before)


def test_weight_maps_come_with_crops():
    data = NucleiSegmentation("train", size=64, num_samples=2, weights=True)
    _, target = data[0]
    assert set(target) == {"mask", "weight"} and target["weight"].shape == (64, 64)
    assert target["weight"].dtype == torch.float32 and target["weight"].min() > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="test_quadrant must be 0..3"):
        NucleiSegmentation("train", test_quadrant=4)
    with pytest.raises(ValueError, match="size 300: no 300x300 crop .* use size <= 256"):
        NucleiSegmentation("train", size=300)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        NucleiDetection("val")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        NucleiSegmentation(channels=2)
    with pytest.raises(IndexError, match="out of range for 1 items"):
        NucleiSegmentation("test")[1]


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "stardist" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps stardist"):
        nuclei_files()
