"""``fashion-scenes``: a deterministic segmentation and detection set made from Fashion-MNIST items.

Each scene is a black canvas with 1 to ``max_items`` Fashion-MNIST items pasted at random positions and scales. Scene
``i`` of a split depends only on ``(seed, split, i)``, so the set needs no storage, any scene can be drawn in any order,
and two runs see the same pixels. Items never overlap (their boxes are disjoint), so every box and mask is exact.

Conventions:
    - ``labels`` are the Fashion-MNIST class plus one (``1..10``); ``0`` is the background.
    - ``mask`` (Tensor[H, W]) holds the same numbering per pixel; ``masks`` (Tensor[K, H, W]) one boolean mask per item.
    - an item's pixels are those whose pasted value is non-zero after scaling and rounding to 8 bits, and its box
      ``(x1, y1, x2, y2)`` is tight around them in absolute pixels (``x2``, ``y2`` exclusive): ``x1 < x2``, ``y1 < y2``.
    - ``"train"`` scenes draw items from the 60,000 training images, ``"test"`` scenes from the 10,000 test images.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from convatlas.data.fashion_mnist import CLASSES, FashionMNIST, check_split
from convatlas.data.specs import parse_options
from convatlas.errors import InputTypeError
from convatlas.utils import as_tuple

_SPLIT_SALT = {"train": 0, "test": 1_000_003}
# Bounds that keep every scene's tensors and generator seed in range (a 8192x8192 scene is 512 MiB of masks per item).
MAX_CANVAS, MAX_IMAGES, MAX_ITEMS = 8192, 2**31 - 1, 256


def _int_in(name: str, value, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``, naming ``name`` in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


# The options of ``fashion-scenes:key=value,...``: how each value is read, and what it should look like.
_SCENES_OPTIONS = {
    "num_images": (int, "an integer"),
    "seed": (int, "an integer"),
    "max_items": (int, "an integer"),
    "channels": (int, "1 or 3"),
    "canvas": (lambda v: tuple(int(x) for x in v.split("x")) if "x" in v else int(v), "an integer or HxW"),
    "scale": (lambda v: _pair(float(x) for x in v.split("-")), "a range LOW-HIGH such as 0.75-1.75"),
}


def _pair(values) -> tuple:
    values = tuple(values)
    if len(values) != 2:
        raise ValueError(f"expected 2 values, got {len(values)}")
    return values


def parse_scenes_options(spec: str, text: str) -> dict:
    """The ``key=value,...`` options of a ``fashion-scenes:...`` spec as keywords of :class:`FashionScenes`.

    Args:
        spec: the whole spec, for messages.
        text: the part after ``fashion-scenes:``.

    Raises:
        ValueError: an item that is not ``key=value``, an unknown key, or a value that does not parse (naming it).
    """
    return parse_options(spec, text, _SCENES_OPTIONS)


class FashionScenes(Dataset):
    """Scenes of Fashion-MNIST items with per-pixel classes, instance masks and boxes.

    Args:
        split: ``"train"`` or ``"test"`` (which Fashion-MNIST images the items come from).
        num_images: the number of scenes.
        canvas: the scene size, an int or ``(H, W)``; each side in ``28..8192``.
        seed: the seed in ``0..2**32 - 1``; scene ``i`` depends only on ``(seed, split, i)``.
        data_dir: the Fashion-MNIST folder (default: the Debian package's).
        max_items: at most this many items per scene (``1..256``).
        scale: the range of item scale factors (an item is ``round(28 * s)`` pixels on a side).
        channels: 1 (grayscale) or 3 (the gray image repeated, for RGB backbones).

    Items are ``(image, target)``: ``image (Tensor[C, H, W])`` float32 in ``[0, 1]`` and ``target`` a dict with
    ``boxes (Tensor[K, 4])`` float32 ``(x1, y1, x2, y2)`` absolute pixels, ``labels (Tensor[K])`` int64 in ``1..10``,
    ``masks (Tensor[K, H, W])`` bool and ``mask (Tensor[H, W])`` int64 in ``0..10``.
    """

    classes = ("background",) + CLASSES
    num_classes = 11
    task = "segmentation"
    mean, std = (0.0,), (1.0,)

    def __init__(
        self,
        split: str = "train",
        *,
        num_images: int = 1000,
        canvas: int | tuple[int, int] = 96,
        seed: int = 0,
        data_dir: str | os.PathLike | None = None,
        max_items: int = 4,
        scale: tuple[float, float] = (0.75, 1.75),
        channels: int = 1,
    ) -> None:
        check_split(split)
        self.height, self.width = (_int_in("canvas", v, 28, MAX_CANVAS) for v in as_tuple(canvas, 2, "canvas"))
        num_images = _int_in("num_images", num_images, 1, MAX_IMAGES)
        max_items = _int_in("max_items", max_items, 1, MAX_ITEMS)
        seed = _int_in("seed", seed, 0, 2**32 - 1)
        lo, hi = as_tuple(scale, 2, "scale")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
            raise InputTypeError(f"scale must be two numbers (low, high), got {scale!r}")
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"scale must be a range 0 < low <= high (finite), got ({lo}, {hi})")
        lo, hi = float(lo), float(hi)
        if round(28 * hi) > min(self.height, self.width):
            raise ValueError(
                f"scale high {hi} makes items of {round(28 * hi)} px, larger than the canvas {self.height}x{self.width}"
            )
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.split, self.num_images, self.seed = split, int(num_images), int(seed)
        self.max_items, self.scale, self.channels = int(max_items), (lo, hi), channels
        self.in_channels = channels
        self.mean, self.std = (0.0,) * channels, (1.0,) * channels
        self.source = FashionMNIST(split, data_dir=data_dir)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"scene index {index} out of range for {self.num_images} scenes")
        index %= self.num_images
        gen = torch.Generator().manual_seed(self.seed * 1_000_000_007 + _SPLIT_SALT[self.split] + index)
        canvas = torch.zeros(self.height, self.width, dtype=torch.uint8)
        mask = torch.zeros(self.height, self.width, dtype=torch.int64)
        boxes, labels, masks = [], [], []
        wanted = int(torch.randint(1, self.max_items + 1, (1,), generator=gen))
        for _ in range(wanted):
            item = int(torch.randint(len(self.source), (1,), generator=gen))
            s = self.scale[0] + (self.scale[1] - self.scale[0]) * float(torch.rand((), generator=gen))
            pixels = _scale_item(self.source.images[item], round(28 * s))
            found = _place(pixels, mask, gen)
            if found is None:  # no free spot after a few tries: the scene keeps fewer items
                continue
            y, x = found
            size = pixels.shape[0]
            visible = pixels > 0
            label = int(self.source.targets[item]) + 1
            canvas[y : y + size, x : x + size][visible] = pixels[visible]
            mask[y : y + size, x : x + size][visible] = label
            item_mask = torch.zeros(self.height, self.width, dtype=torch.bool)
            item_mask[y : y + size, x : x + size] = visible
            rows, cols = visible.any(1).nonzero().flatten(), visible.any(0).nonzero().flatten()
            boxes.append([x + cols[0].item(), y + rows[0].item(), x + cols[-1].item() + 1, y + rows[-1].item() + 1])
            labels.append(label)
            masks.append(item_mask)
        image = canvas.float().div_(255).unsqueeze(0).expand(self.channels, -1, -1).contiguous()
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.stack(masks) if masks else torch.zeros(0, self.height, self.width, dtype=torch.bool),
            "mask": mask,
        }
        return image, target


def _scale_item(image: Tensor, size: int) -> Tensor:
    """Resize one ``uint8`` item ``Tensor[28, 28]`` to ``Tensor[size, size]`` (bilinear, antialiased when shrinking)."""
    x = image.float()[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 28)
    return x[0, 0].round_().clamp_(0, 255).to(torch.uint8)


def _place(pixels: Tensor, occupied: Tensor, gen: torch.Generator, tries: int = 20) -> tuple[int, int] | None:
    """A top-left ``(y, x)`` where the item's visible box overlaps no earlier item's box, or ``None``."""
    size = pixels.shape[0]
    height, width = occupied.shape
    visible = pixels > 0
    if not visible.any():
        return None
    rows, cols = visible.any(1).nonzero().flatten(), visible.any(0).nonzero().flatten()
    r0, r1, c0, c1 = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
    for _ in range(tries):
        y = int(torch.randint(height - size + 1, (1,), generator=gen))
        x = int(torch.randint(width - size + 1, (1,), generator=gen))
        # Boxes, not only pixels, must be disjoint (one pixel of margin) so that every box holds one item.
        window = occupied[max(y + r0 - 1, 0) : y + r1 + 1, max(x + c0 - 1, 0) : x + c1 + 1]
        if not window.any():
            return y, x
    return None


class SegmentationView(Dataset):
    """A scenes set seen as ``(image, mask)`` pairs for semantic segmentation (``mask (Tensor[H, W])`` int64)."""

    task = "segmentation"

    def __init__(self, scenes: FashionScenes) -> None:
        self.scenes = scenes
        self.classes, self.num_classes = scenes.classes, scenes.num_classes
        self.in_channels, self.mean, self.std = scenes.in_channels, scenes.mean, scenes.std

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, target = self.scenes[index]
        return image, target["mask"]
