"""Training augmentation (convatlas.data.augment): torchvision.transforms.v2 with masks and boxes moving with
their images, seeded per batch.

References: the image itself. A mask (or a box) is drawn from the image's own pixels before the transform, so after
it the mask must still equal the image's pixels wherever it has a class, and a box must still be tight around its
object's pixels; a flip-only or shift-only transform is compared with ``torch.flip`` / a slice of a zero-padded copy.
"""

from __future__ import annotations

import pytest
import torch

from convatlas.data.augment import IGNORE_INDEX, augment_batch, augment_sample, flip_and_shift


def _images_with_masks(n: int = 6, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 4, (n, 1, size, size), generator=gen)
    return levels.float() / 3, levels[:, 0].long()  # the mask is the image's own value


def test_masks_move_with_their_images_and_shifted_in_pixels_are_ignored():
    images, masks = _images_with_masks()
    out_images, out_masks = augment_batch(flip_and_shift("segmentation"), "segmentation", images, masks, seed=7)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape and out_masks.dtype == torch.int64
    moved = 0
    for image, mask, original in zip(out_images, out_masks, masks, strict=True):
        valid = mask != IGNORE_INDEX
        assert torch.equal((image[0][valid] * 3).round().long(), mask[valid])  # every labelled pixel kept its value
        assert torch.equal(image[0][~valid], torch.zeros(int((~valid).sum())))  # filled pixels are zero in the image
        moved += not torch.equal(mask, original)
    assert moved >= 3  # most samples were flipped or shifted


def test_the_shift_is_at_most_one_fourteenth_and_the_flip_is_a_mirror():
    image = torch.zeros(1, 28, 28)
    image[0, 10, 5] = 1.0
    positions = set()
    for seed in range(40):
        out, _ = augment_batch(flip_and_shift("classification"), "classification", image[None], torch.tensor([3]),
                               seed=seed)  # fmt: skip
        y, x = (out[0, 0] == 1.0).nonzero()[0].tolist()
        dx = min(abs(x - 5), abs(x - 22))  # 22 = 27 - 5: the mirrored column
        assert abs(y - 10) <= 2 and dx <= 2
        positions.add((y, x))
    assert any(x > 13 for _, x in positions) and any(x < 13 for _, x in positions) and len(positions) > 5
    still = flip_and_shift("classification", max_shift=0.0)
    flips = {bool(torch.equal(augment_sample(still, "classification", image, 1)[0], torch.flip(image, [-1])))
             for _ in range(20)}  # fmt: skip
    assert flips == {True, False}


def test_boxes_stay_tight_around_their_objects_and_boxes_pushed_out_are_dropped():
    image = torch.zeros(3, 40, 40)
    image[:, 5:15, 8:20] = 1.0  # object 1
    image[:, 30:40, 0:3] = 0.5  # object 2, at the border: a shift or flip can push it out
    target = {"boxes": torch.tensor([[8.0, 5, 20, 15], [0, 30, 3, 40]]), "labels": torch.tensor([4, 7]),
              "difficult": torch.tensor([False, True])}  # fmt: skip
    transform = flip_and_shift("detection", max_shift=0.1)
    dropped = 0
    for seed in range(30):
        out_image, out = augment_batch(transform, "detection", [image], [target], seed=seed)
        out_image, out = out_image[0], out[0]
        assert len(out["boxes"]) == len(out["labels"]) == len(out["difficult"])
        for box, label in zip(out["boxes"], out["labels"], strict=True):
            value = 1.0 if label == 4 else 0.5
            ys, xs = (out_image[0] == value).nonzero(as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        dropped += len(out["labels"]) < 2
        assert 4 in out["labels"].tolist()
        assert out["difficult"].tolist() == [lab == 7 for lab in out["labels"].tolist()]
    assert dropped > 0


def test_the_same_seed_gives_the_same_augmentation_and_leaves_the_global_generator_alone():
    images, masks = _images_with_masks()
    transform = flip_and_shift("segmentation")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = augment_batch(transform, "segmentation", images, masks, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = augment_batch(transform, "segmentation", images, masks, seed=1)
    c = augment_batch(transform, "segmentation", images, masks, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="kind must be one of"):
        flip_and_shift("text")
    with pytest.raises(ValueError, match=r"max_shift must be in \[0, 1\), got 1.5"):
        flip_and_shift("classification", max_shift=1.5)
