"""Overlap-tile prediction (U-Net paper, Fig. 2): stitched tiles equal one pass of the unpadded network over the whole
mirrored image (the reference: numpy's reflect padding and a single forward pass, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convatlas.models import create_model
from convatlas.models.tiling import (
    forward_padded,
    mirror_pad,
    predict_tiled,
    tile_geometry,
    unpadded_border,
    unpadded_levels,
    valid_input_size,
    valid_output_size,
)
from convatlas.models.unet import UNet, output_size
from helpers import randomize


def _small_unet(levels=3):
    torch.manual_seed(0)
    model = UNet(in_channels=2, num_classes=3, widths=tuple(4 * 2**i for i in range(levels))).double().eval()
    return randomize(model)


def _single_pass(model, image, levels):
    """Mirror-pad with numpy so that one valid input covers the image, run it once, keep the image's pixels."""
    h, w = image.shape[-2:]
    border = valid_input_size(64, levels=levels) - output_size(valid_input_size(64, levels=levels), levels=levels)
    border //= 2
    side = valid_input_size(max(h, w) + 2 * border, levels=levels)
    padded = np.pad(image.numpy(), ((0, 0), (0, 0), (border, side - h - border), (border, side - w - border)),
                    mode="reflect")  # fmt: skip
    with torch.no_grad():
        return model(torch.from_numpy(padded))[..., :h, :w]


def test_paper_tile_geometry():
    geo = tile_geometry(572)
    assert (geo.input, geo.output, geo.border, geo.stride, geo.levels) == (572, 388, 92, 384, 5)
    assert valid_input_size(570) == 572 and valid_input_size(572) == 572
    with pytest.raises(ValueError, match="odd size"):
        tile_geometry(570)


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (2, 3, 1, 4), (9, 13, 20, 7)])
def test_mirror_pad_matches_numpy_reflect(pads):
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    top, bottom, left, right = pads  # wider than the image: reflected again, as numpy does
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
    np.testing.assert_array_equal(mirror_pad(x, top, bottom, left, right).numpy(), ref)
    one = torch.rand(1, 1, 1, 4, dtype=torch.float64)
    ref = np.pad(one.numpy(), ((0, 0), (0, 0), (2, 1), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(mirror_pad(one, 2, 1, 0, 0).numpy(), ref)


@pytest.mark.parametrize("size", [(20, 20), (37, 50), (13, 71), (64, 3)])
def test_tiles_equal_one_pass_over_the_mirrored_image(size):
    levels = 3
    model = _small_unet(levels)
    gen = torch.Generator().manual_seed(sum(size))
    image = torch.rand(2, 2, *size, generator=gen, dtype=torch.float64)
    ref = _single_pass(model, image, levels)
    tile = valid_input_size(40, levels=levels)  # small tiles: several per side
    assert tile_geometry(tile, levels=levels).output < max(size) or max(size) <= 20
    ours = predict_tiled(model, image, tile_size=tile, batch_size=3)
    assert ours.shape == (2, 3, *size)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)
    # a tile of another size gives the same scores; a single image works without the batch dim
    other = predict_tiled(model, image[0], tile_size=valid_input_size(52, levels=levels))
    torch.testing.assert_close(other, ref[0], atol=1e-12, rtol=1e-10)


def test_paper_network_on_an_odd_sized_image():
    # The 5-level paper network (narrow widths to keep it fast): tiles of 188 (output 4, stride 0 would be wrong:
    # the geometry rounds the stride down to the 16-pixel pooling grid) against one pass.
    model = UNet(in_channels=1, num_classes=2, widths=(2, 2, 2, 2, 2)).double().eval()
    randomize(model)
    image = torch.rand(1, 1, 45, 30, dtype=torch.float64)
    with pytest.raises(ValueError, match="smaller than the 16-pixel pooling grid"):
        predict_tiled(model, image, tile_size=188)
    ours = predict_tiled(model, image, tile_size=220)  # output 36, stride 32
    torch.testing.assert_close(ours, _single_pass(model, image, 5), atol=1e-12, rtol=1e-10)


def test_padded_networks_are_refused():
    model = create_model("unet", widths=(4, 8), padding="same")
    with pytest.raises(ValueError, match="needs an unpadded U-Net"):
        predict_tiled(model, torch.rand(1, 1, 16, 16))


def test_paper_geometry_border_and_valid_outputs():
    assert unpadded_border(5) == 92 and output_size(572) == 572 - 2 * 92  # the paper's 572 -> 388 tile
    assert [unpadded_border(levels) for levels in (2, 3, 4)] == [8, 20, 44]
    for levels in (3, 4, 5):
        for size in (1, 50, 116, 128, 300):
            out = valid_output_size(size, levels=levels)
            assert output_size(out + 2 * unpadded_border(levels), levels=levels) == out
            assert out <= max(size, valid_output_size(1, levels=levels))
            assert valid_output_size(out + 2 ** (levels - 1), levels=levels) == out + 2 ** (levels - 1)
    assert valid_output_size(128) == 116
    assert unpadded_levels(_small_unet(3)) == 3
    assert unpadded_levels(UNet(in_channels=1, num_classes=2, widths=(4, 8), padding="same")) is None


@pytest.mark.parametrize("size", [(17, 23), (40, 40)])
def test_forward_padded_is_one_tile_with_gradients(size):
    """The training path of an unpadded U-Net on images without context equals the numpy single pass, with grads."""
    model = _small_unet(3)
    image = torch.rand(2, 2, *size, dtype=torch.float64, requires_grad=True)
    out = forward_padded(model, image)
    assert out.shape == (2, 3, *size)
    torch.testing.assert_close(out.detach(), _single_pass(model, image.detach(), 3))
    out.sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
