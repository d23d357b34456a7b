"""The overlap-tile strategy of U-Net (Ronneberger et al. 2015, Fig. 2): predict an image of any size, tile by tile.

The unpadded U-Net maps an input tile to a smaller output, its centre: ``output_size(572) = 388``, a border of 92
pixels lost on each side. To segment a ``H x W`` image the image is mirrored outward by that border ("the missing
context is extrapolated by mirroring the input image"), cut into input tiles whose outputs cover the image, and the
outputs are stitched.

Tiles advance by a multiple of ``2 ** (levels - 1)`` (16 for the paper's network), so that the 2x2 max pools of every
tile fall on the same grid as those of one pass over the whole mirrored image: the stitched result equals that single
pass exactly and does not depend on the tile size (the paper's 388-pixel outputs then overlap by 4 pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.models.unet import output_size


@dataclass(frozen=True)
class TileGeometry:
    """The geometry of one tile of an unpadded U-Net.

    Attributes:
        input: the input tile side.
        output: the output side, ``input - 2 * border``.
        border: pixels lost on each side.
        stride: how far tiles advance, the largest multiple of ``2 ** (levels - 1)`` that is at most ``output``.
        levels: the network's levels (pooling steps + 1).
    """

    input: int
    output: int
    border: int
    stride: int
    levels: int


def valid_input_size(size: int, *, levels: int = 5) -> int:
    """The smallest input side ``>= size`` for which every 2x2 max pool of an unpadded U-Net sees an even size.

    Raises:
        ValueError: when ``levels < 1``.
    """
    if levels < 1:
        raise ValueError(f"valid_input_size: levels must be >= 1, got {levels}")
    candidate = max(int(size), 1)
    while True:
        try:
            output_size(candidate, levels=levels)
            return candidate
        except ValueError:
            candidate += 1


def tile_geometry(input_size: int, *, levels: int = 5) -> TileGeometry:
    """The output, border and stride of an unpadded U-Net tile.

    Args:
        input_size: the input tile side (a valid one: see :func:`valid_input_size`).
        levels: the network's levels (5 in the paper).

    Raises:
        ValueError: for an input side that a max pool cannot halve evenly, or an output smaller than the stride unit.
    """
    out = output_size(input_size, levels=levels)
    unit = 2 ** (levels - 1)
    if out < unit:
        raise ValueError(f"tile_geometry: a {input_size}-pixel tile gives a {out}-pixel output, smaller than the "
                         f"{unit}-pixel pooling grid; use a larger tile")  # fmt: skip
    return TileGeometry(input_size, out, (input_size - out) // 2, out // unit * unit, levels)


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Pad the last two dims by mirroring about the edge pixels (``numpy.pad(mode="reflect")``), to any width.

    Padding wider than the image reflects repeatedly, as numpy does.

    Args:
        x (Tensor[N, C, H, W]): the image.

    Returns:
        Tensor[N, C, top + H + bottom, left + W + right].
    """
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"mirror_pad: pads must be >= 0, got {(top, bottom, left, right)}")
    if x.dim() != 4:
        raise ValueError(f"mirror_pad: x must be Tensor[N, C, H, W], got shape {tuple(x.shape)}")

    def spec(dim: int, before: int, after: int) -> tuple[int, int, int, int]:
        return (0, 0, before, after) if dim == -2 else (before, after, 0, 0)

    for dim, (before, after) in ((-2, (top, bottom)), (-1, (left, right))):
        if x.shape[dim] == 1:  # nothing to mirror about: numpy repeats the pixel
            x = F.pad(x, spec(dim, before, after), mode="replicate")
            continue
        while before or after:
            step_b, step_a = min(before, x.shape[dim] - 1), min(after, x.shape[dim] - 1)
            x = F.pad(x, spec(dim, step_b, step_a), mode="reflect")
            before, after = before - step_b, after - step_a
    return x


def unpadded_levels(model: nn.Module) -> int | None:
    """The levels of an unpadded U-Net (``UNet`` with ``padding="valid"`` and no encoder), ``None`` for any other
    model (one whose output has the input's size)."""
    if getattr(model, "padding", None) != "valid" or getattr(model, "encoder", None) is not None:
        return None
    return len(model.feature_info)


def unpadded_border(levels: int) -> int:
    """The pixels an unpadded U-Net of ``levels`` levels loses on each side (92 for the paper's 5, 44 for 4)."""
    smallest = valid_input_size(1, levels=levels)
    return (smallest - output_size(smallest, levels=levels)) // 2


def valid_output_size(size: int, *, levels: int = 5) -> int:
    """The largest output side ``<= size`` an unpadded U-Net can produce (the smallest one when ``size`` is below it):
    a training crop of that side, with :func:`unpadded_border` pixels of context around, tiles the network exactly.
    """
    smallest = output_size(valid_input_size(1, levels=levels), levels=levels)
    unit = 2 ** (levels - 1)  # valid inputs, and so outputs, are a pooling unit apart
    return smallest + max(0, (int(size) - smallest) // unit) * unit


def _levels_of(model: nn.Module) -> int:
    levels = unpadded_levels(model)
    if levels is None:
        raise ValueError(
            "predict_tiled: needs an unpadded U-Net (UNet with padding='valid' and no encoder); a 'same'-padded "
            "network predicts the whole image padded to a multiple of 16 in one pass"
        )
    return levels


def forward_padded(model: nn.Module, image: Tensor) -> Tensor:
    """Class scores for every pixel of a batch in one pass of an unpadded U-Net, with gradients: the batch is mirrored
    outward by the network's border (and to the next valid input size at the bottom and right) and the scores are
    cut to the image.

    One tile of :func:`predict_tiled` as large as the image; use it to train on images whose masks have their size.

    Args:
        model: an unpadded :class:`convatlas.models.unet.UNet`.
        image (Tensor[N, C, H, W]): the batch.

    Returns:
        Tensor[N, K, H, W].
    """
    levels = _levels_of(model)
    height, width = image.shape[-2:]
    border = unpadded_border(levels)
    side = valid_input_size(max(height, width, 2 ** (levels - 1)) + 2 * border, levels=levels)
    padded = mirror_pad(image, border, side - border - height, border, side - border - width)
    return model(padded)[..., :height, :width]


@torch.no_grad()
def predict_tiled(model: nn.Module, image: Tensor, *, tile_size: int = 572, batch_size: int = 4) -> Tensor:
    """Class scores for every pixel of an image of any size, by the overlap-tile strategy.

    Args:
        model: an unpadded :class:`convatlas.models.unet.UNet` (``padding="valid"``); its mode (train or eval) is
            left as it is.
        image (Tensor[N, C, H, W] or Tensor[C, H, W]): the image(s), normalised as in training.
        tile_size: the input tile side (572 in the paper); it must be valid for the network (see
            :func:`valid_input_size`). A tile is never larger than needed for the image.
        batch_size: tiles per forward pass.

    Returns:
        Tensor[N, K, H, W] (or Tensor[K, H, W]): the scores, equal to the centre of one pass over the mirrored image.
    """
    levels = _levels_of(model)
    single = image.dim() == 3
    if single:
        image = image[None]
    if image.dim() != 4:
        raise ValueError(
            f"predict_tiled: image must be Tensor[N, C, H, W] or Tensor[C, H, W], got {tuple(image.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"predict_tiled: batch_size must be >= 1, got {batch_size}")
    geo = tile_geometry(tile_size, levels=levels)
    n, _, height, width = image.shape
    # Shrink the tile to what the image needs (one tile for a small image), keeping the same pooling grid.
    needed = max(height, width, 2 ** (levels - 1))
    if geo.output >= needed:
        smaller = valid_input_size(needed + 2 * geo.border, levels=levels)
        if smaller < tile_size:
            geo = tile_geometry(smaller, levels=levels)
    ys = _starts(height, geo)
    xs = _starts(width, geo)
    bottom = ys[-1] + geo.input - geo.border - height
    right = xs[-1] + geo.input - geo.border - width
    padded = mirror_pad(image, geo.border, bottom, geo.border, right)

    out = None
    tiles = [(b, y, x) for b in range(n) for y in ys for x in xs]
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        batch = torch.stack([padded[b, :, y : y + geo.input, x : x + geo.input] for b, y, x in chunk])
        scores = model(batch)
        if scores.shape[-2:] != (geo.output, geo.output):
            raise ValueError(f"predict_tiled: the model maps a {geo.input}-pixel tile to {tuple(scores.shape[-2:])}, "
                             f"expected {geo.output} (levels={levels})")  # fmt: skip
        if out is None:
            out = scores.new_empty(n, scores.shape[1], height, width)
        for (b, y, x), s in zip(chunk, scores, strict=True):
            # Each tile writes its whole valid output; where outputs overlap they are equal.
            h, w = min(geo.output, height - y), min(geo.output, width - x)
            out[b, :, y : y + h, x : x + w] = s[:, :h, :w]
    return out[0] if single else out


def _starts(length: int, geo: TileGeometry) -> list[int]:
    """Output offsets of the tiles along one side: ``0, stride, 2 * stride, ...`` until the outputs cover it."""
    starts = [0]
    while starts[-1] + geo.output < length:
        starts.append(starts[-1] + geo.stride)
    return starts


__all__ = [
    "TileGeometry",
    "forward_padded",
    "mirror_pad",
    "predict_tiled",
    "tile_geometry",
    "unpadded_border",
    "unpadded_levels",
    "valid_input_size",
    "valid_output_size",
]
