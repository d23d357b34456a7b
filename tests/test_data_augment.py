"""The U-Net augmentation: 90-degree rotations exact on images, masks and boxes (references: numpy's rot90 and boxes
recomputed from the rotated masks), and the paper's elastic grid deformation (references: the control points of the
bicubic field and scipy.ndimage.map_coordinates in float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision import tv_tensors
from torchvision.transforms import v2

from convatlas.data.augment import ElasticGrid, RandomRot90, elastic_field, elastic_warp, unet_augmentation
from convatlas.data.nuclei import targets_from_instances
from convatlas.errors import InputTypeError


def _pattern(h=11, w=17):
    """Three rectangles with ids 1..3 on a non-square canvas: an asymmetric known pattern."""
    labels = torch.zeros(h, w, dtype=torch.int64)
    labels[1:4, 2:9] = 1
    labels[5:10, 12:15] = 2
    labels[7:9, 0:3] = 3
    return labels


def _boxes_of(labels):
    return targets_from_instances(labels)["boxes"]


@pytest.mark.parametrize("k", range(4))
def test_rot90_is_exact_on_images_masks_and_boxes(k):
    labels = _pattern()
    image = tv_tensors.Image(torch.rand(2, *labels.shape, dtype=torch.float64))
    mask = tv_tensors.Mask(labels)
    boxes = tv_tensors.BoundingBoxes(_boxes_of(labels), format="XYXY", canvas_size=tuple(labels.shape))
    rot = RandomRot90()
    out_image, out_mask, out_boxes = (rot.transform(x, {"k": k}) for x in (image, mask, boxes))
    assert isinstance(out_image, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    np.testing.assert_array_equal(out_image.numpy(), np.rot90(image.numpy(), k, axes=(1, 2)))
    np.testing.assert_array_equal(out_mask.numpy(), np.rot90(labels.numpy(), k))
    # the rotated boxes are the boxes of the rotated masks, on the rotated canvas
    torch.testing.assert_close(out_boxes.as_subclass(torch.Tensor), _boxes_of(out_mask.as_subclass(torch.Tensor)))
    assert out_boxes.canvas_size == tuple(out_mask.shape)


def test_rot90_boxes_in_other_formats():
    labels = _pattern()
    xyxy = _boxes_of(labels)
    cxcywh = v2.functional.convert_bounding_box_format(xyxy, old_format="XYXY", new_format="CXCYWH")
    boxes = tv_tensors.BoundingBoxes(cxcywh, format="CXCYWH", canvas_size=tuple(labels.shape))
    out = RandomRot90().transform(boxes, {"k": 1})
    back = v2.functional.convert_bounding_box_format(out.as_subclass(torch.Tensor), old_format="CXCYWH",
                                                     new_format="XYXY")  # fmt: skip
    torch.testing.assert_close(back, _boxes_of(torch.rot90(labels, 1)))


def test_flips_and_rotations_keep_boxes_equal_to_mask_boxes():
    labels = _pattern()
    pipeline = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()])
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        image = tv_tensors.Image(labels[None].float())
        target = {
            "boxes": tv_tensors.BoundingBoxes(_boxes_of(labels), format="XYXY", canvas_size=tuple(labels.shape)),
            "masks": tv_tensors.Mask(labels),
            "labels": torch.tensor([1, 2, 3]),
        }
        out_image, out = pipeline(image, target)
        mask = out["masks"].as_subclass(torch.Tensor)
        assert torch.equal(out_image[0].long(), mask)  # the image moved with the mask
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), _boxes_of(mask))
        assert torch.equal(out["labels"], torch.tensor([1, 2, 3]))
        seen.add(tuple(mask.flatten().tolist()))
    assert len(seen) == 8  # the eight symmetries of the dihedral group all occur


def test_elastic_field_passes_through_the_grid_vectors():
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64) * 10
    field = elastic_field(coarse, (41, 61))
    assert field.shape == (2, 41, 61) and field.dtype == torch.float64
    # the 3x3 grid points: the corners, the edge midpoints and the centre
    torch.testing.assert_close(field[:, ::20, ::30], coarse, atol=1e-12, rtol=0)
    constant = elastic_field(torch.full((2, 3, 3), 2.5, dtype=torch.float64), (9, 9))
    torch.testing.assert_close(constant, torch.full((2, 9, 9), 2.5, dtype=torch.float64))


def test_elastic_warp_matches_scipy_map_coordinates():
    # Reference: scipy.ndimage.map_coordinates, linear (order=1), mirror about the edge pixels, float64.
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 23, 31, generator=gen, dtype=torch.float64)
    field = elastic_field(torch.randn(2, 3, 3, generator=gen, dtype=torch.float64) * 3, (23, 31))
    ours = elastic_warp(image, field, mode="bilinear")
    ys, xs = np.meshgrid(np.arange(23.0), np.arange(31.0), indexing="ij")
    coords = np.stack([ys + field[1].numpy(), xs + field[0].numpy()])
    for c in range(2):
        ref = ndimage.map_coordinates(image[c].numpy(), coords, order=1, mode="mirror")
        np.testing.assert_allclose(ours[c].numpy(), ref, atol=1e-12)
    labels = _pattern().double()
    ref = ndimage.map_coordinates(labels.numpy(), np.stack([ys[:11, :17] + 0.4, xs[:11, :17] - 1.3]), order=0,
                                  mode="mirror")  # fmt: skip
    shift = torch.stack([torch.full((11, 17), -1.3), torch.full((11, 17), 0.4)]).double()
    np.testing.assert_array_equal(elastic_warp(_pattern(), shift, mode="nearest").numpy(), ref)


def test_elastic_grid_moves_masks_with_the_image():
    labels = _pattern(40, 48)
    image = tv_tensors.Image(labels[None].double())
    mask = tv_tensors.Mask(labels)
    transform = ElasticGrid()
    torch.manual_seed(5)
    out_image, out_mask = transform(image, mask)
    torch.manual_seed(5)
    field = transform.make_params([image, mask])["field"]
    assert field.abs().max() > 3  # the draw moved the pixels (sigma 10 px)
    torch.testing.assert_close(out_image, elastic_warp(image, field, mode="bilinear"))
    assert torch.equal(out_mask.as_subclass(torch.Tensor), elastic_warp(labels, field, mode="nearest"))
    assert out_mask.dtype == torch.int64 and isinstance(out_mask, tv_tensors.Mask)
    # the image resampled with the same field as the mask agrees with it where both are on one label
    nearest = elastic_warp(labels.double(), field, mode="nearest")
    assert torch.equal(nearest.long(), out_mask.as_subclass(torch.Tensor))


def test_elastic_grid_paper_defaults_and_identity():
    t = ElasticGrid()
    assert (t.grid, t.sigma) == (3, 10.0)  # the U-Net paper: a 3x3 grid, 10 px standard deviation
    steps = unet_augmentation().transforms
    assert [type(s).__name__ for s in steps] == ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomRot90",
                                                 "ElasticGrid"]  # fmt: skip
    image = tv_tensors.Image(torch.rand(1, 12, 12))
    torch.testing.assert_close(ElasticGrid(sigma=0)(image), image)


def test_elastic_grid_rejects_boxes_and_mixed_sizes():
    labels = _pattern()
    boxes = tv_tensors.BoundingBoxes(_boxes_of(labels), format="XYXY", canvas_size=tuple(labels.shape))
    with pytest.raises(InputTypeError, match="boxes cannot follow an elastic deformation"):
        ElasticGrid()(tv_tensors.Image(labels[None].float()), boxes)
    with pytest.raises(ValueError, match="must have one size"):
        ElasticGrid()(tv_tensors.Image(torch.rand(1, 5, 5)), tv_tensors.Mask(torch.zeros(6, 6, dtype=torch.int64)))
    with pytest.raises(ValueError, match="grid must be >= 2"):
        ElasticGrid(grid=1)
