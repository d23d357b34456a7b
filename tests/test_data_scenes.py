"""``fashion-scenes``: exact boxes and masks, determinism and the target format the detection engine consumes.

Reference: the boxes are recomputed by a plain loop over each instance mask's non-zero pixels, and each item's pixels
are compared with the Fashion-MNIST source image it was scaled from.
"""

from __future__ import annotations

import pytest
import torch

from convatlas.data import FashionScenes
from convatlas.data.fashion_mnist import DEBIAN_DIR

pytestmark = pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed (make data)"
)


@pytest.fixture(scope="module")
def scenes():
    return FashionScenes("train", num_images=40, canvas=(64, 80), seed=3)


def test_target_format(scenes):
    image, target = scenes[0]
    assert image.shape == (1, 64, 80) and image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    k = len(target["labels"])
    assert k >= 1
    assert target["boxes"].shape == (k, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and target["labels"].min() >= 1 and target["labels"].max() <= 10
    assert target["masks"].shape == (k, 64, 80) and target["masks"].dtype == torch.bool
    assert target["mask"].shape == (64, 80) and target["mask"].dtype == torch.int64


def test_boxes_are_tight_around_mask_pixels_and_masks_agree(scenes):
    for i in range(len(scenes)):
        image, target = scenes[i]
        union = torch.zeros(64, 80, dtype=torch.int64)
        for box, label, mask in zip(target["boxes"], target["labels"], target["masks"], strict=True):
            ys, xs = [], []
            for y in range(64):
                for x in range(80):
                    if mask[y, x]:
                        ys.append(y)
                        xs.append(x)
            assert box.tolist() == [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
            assert (union[mask] == 0).all(), "items overlap"
            union[mask] = label
            assert (image[0][mask] > 0).all()
        assert torch.equal(union, target["mask"])
        assert (image[0][target["mask"] == 0] == 0).all()


def test_items_are_scaled_fashion_mnist_images(scenes):
    # One-item scenes at scale 1 paste the source image unchanged: find it in the split.
    exact = FashionScenes("test", num_images=5, canvas=40, seed=1, max_items=1, scale=(1.0, 1.0))
    source = exact.source.images
    for i in range(5):
        image, target = exact[i]
        x1, y1, x2, y2 = (int(v) for v in target["boxes"][0])
        crop = (image[0, y1:y2, x1:x2] * 255).round().to(torch.uint8)
        h, w = crop.shape
        # Compare against every source image of that class with the same bounding box.
        label = int(target["labels"][0]) - 1
        candidates = source[exact.source.targets == label]
        nz = candidates > 0
        found = False
        for img, m in zip(candidates, nz, strict=True):
            rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
            same_box = len(rows) and rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
            if same_box and torch.equal(img[rows[0] : rows[0] + h, cols[0] : cols[0] + w], crop):
                found = True
                break
        assert found, f"scene {i}: the pasted item is not a Fashion-MNIST test image of class {label}"


def test_deterministic_and_random_access(scenes):
    again = FashionScenes("train", num_images=40, canvas=(64, 80), seed=3)
    for i in (7, 2, 7):
        a, b = scenes[i], again[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    other = FashionScenes("train", num_images=40, canvas=(64, 80), seed=4)
    assert not torch.equal(scenes[0][0], other[0][0])
    test_split = FashionScenes("test", num_images=40, canvas=(64, 80), seed=3)
    assert not torch.equal(scenes[0][0], test_split[0][0])


def test_bad_arguments_name_the_rule():
    with pytest.raises(ValueError, match=r"canvas must be in 28\.\.8192, got 20"):
        FashionScenes(canvas=(20, 64))
    with pytest.raises(ValueError, match="scale high 3.0 makes items of 84 px, larger than the canvas 64x64"):
        FashionScenes(canvas=64, scale=(1.0, 3.0))
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        FashionScenes("val")
