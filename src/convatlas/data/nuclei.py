"""``nuclei``: a real fluorescence image of cell nuclei with 125 instance masks, split spatially into train and test.

The image and its labels come from the ``stardist`` wheel (``stardist/data/images/img2d.tif`` and ``mask2d.tif``,
read with ``tifffile``; stardist itself is never imported): a 512x512 image from the 2018 Data Science Bowl, 8-bit
intensities (0..235, stored as uint16) scaled to ``[0, 1]``, and an instance label image with 125 nuclei (ids are not
consecutive in the file; here they become 1..125 in increasing file id). Install it with
``pip install --no-deps stardist``.

The spatial split (:func:`spatial_split`): one quadrant is held out for testing (bottom-right by default), the other
three train. A nucleus belongs to the split that holds its centroid, and no pixel of a nucleus is ever shown to the
other split:

- the *test region* is the held-out quadrant minus the pixels of training nuclei that reach into it, plus the pixels
  of test nuclei that reach out of it; the *training region* is everything else;
- pixels outside a split's region are replaced by the median background intensity of the training region and
  labelled ``IGNORE_INDEX`` (255) in the class mask, so they neither train nor count in a metric;
- the test image is the held-out quadrant itself (256x256): test nuclei that reach out of it are cut at its edge.

With the default split, 102 nuclei train and 23 test.

Datasets (with ``task``, ``num_classes``, ``in_channels``, ``classes``, ``mean``, ``std`` like every other set):

- :class:`NucleiSegmentation`: ``(image, mask)`` with ``mask`` 0 background, 1 nucleus, 255 ignored. Training items
  are random ``size x size`` crops of the training region (crop ``i`` depends only on ``(seed, epoch, i)``); with
  ``context > 0`` the image has ``context`` more pixels on each side than the mask (mirrored at the image border),
  as the unpadded U-Net needs. The test split is one item, the held-out quadrant.
- :class:`NucleiDetection`: ``(image, {"boxes", "labels", "masks"})`` from the same crops and quadrant.

Both declare ``augmentation = "unet"``: the training engine's ``augment`` gives them the U-Net paper's flips,
90-degree rotations and elastic deformation (:mod:`convatlas.data.augment`).

As a data spec (``convatlas train --data nuclei[:key=value,...]``, :func:`parse_nuclei_options`): ``size`` (the
training crops' side, default 128), ``samples`` (crops per epoch, default 256), ``quadrant`` (the held-out one, 0..3
or its name, default ``bottom-right``), ``seed`` (of the crop positions, default 0) and, for segmentation,
``separate`` (1 or 0, default 1).

Touching nuclei: with ``separate=True`` (the default) the class mask has a one-pixel background gap where two nuclei
touch (:func:`convatlas.ops.masks.separate_touching`), the "separation borders" of the U-Net paper.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from convatlas.data.specs import parse_options, read_bool
from convatlas.ops.masks import separate_touching
from convatlas.ops.unet_loss import class_balance_weights, unet_weight_map

IGNORE_INDEX = 255
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
CLASSES = ("background", "nucleus")
_FILES = ("data/images/img2d.tif", "data/images/mask2d.tif")  # inside the stardist package folder


def nuclei_files() -> tuple[Path, Path]:
    """The image and label TIFF files inside the installed ``stardist`` wheel (found without importing it).

    Raises:
        FileNotFoundError: when stardist is not installed or lacks the files (the message says how to install it).
    """
    spec = importlib.util.find_spec("stardist")
    hint = "install them with: pip install --no-deps stardist"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"nuclei: the stardist wheel holds the nuclei image and masks; {hint}")
    root = Path(list(spec.submodule_search_locations)[0])
    paths = tuple(root / f for f in _FILES)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"nuclei: {path} does not exist; {hint}")
    return paths  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    image_path, mask_path = nuclei_files()
    image, labels = tifffile.imread(image_path), tifffile.imread(mask_path)
    if image.shape != labels.shape or image.ndim != 2:
        raise ValueError(f"nuclei: {image_path.name} {image.shape} and {mask_path.name} {labels.shape} must be one "
                         "2-D size")  # fmt: skip
    if image.max() > 255:
        raise ValueError(f"nuclei: {image_path.name} has values up to {image.max()}, expected 8-bit intensities")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lookup[ids] = np.arange(1, len(ids) + 1)
    return image.astype(np.float32) / 255.0, lookup[labels]


def load_nuclei() -> tuple[Tensor, Tensor]:
    """The whole nuclei image and its instance labels.

    Returns:
        (Tensor[1, 512, 512], Tensor[512, 512]): the image, float32 in [0, 1], and int64 instance ids (0 background,
        1..125).
    """
    image, labels = _read()
    return torch.from_numpy(image.copy())[None], torch.from_numpy(labels.copy())


def targets_from_instances(instances: Tensor) -> dict[str, Tensor]:
    """Detection targets of an instance label image: one box, label and mask per instance present, by increasing id.

    Args:
        instances (Tensor[H, W]): instance ids, 0 for the background.

    Returns:
        dict: ``boxes (Tensor[K, 4])`` float32 ``(x1, y1, x2, y2)`` tight around each instance's pixels in absolute
        pixels (``x2``, ``y2`` exclusive, so ``x1 < x2``, ``y1 < y2``), ``labels (Tensor[K])`` int64 all 1 (nucleus),
        ``masks (Tensor[K, H, W])`` bool and ``ids (Tensor[K])`` the instance ids.
    """
    if instances.dim() != 2 or instances.is_floating_point():
        raise ValueError(f"targets_from_instances: need an integer Tensor[H, W], got {instances.dtype} "
                         f"{tuple(instances.shape)}")  # fmt: skip
    ids = torch.unique(instances)
    ids = ids[ids != 0]
    masks = instances[None] == ids[:, None, None]
    rows, cols = masks.any(2), masks.any(1)  # (K, H), (K, W)
    h, w = instances.shape
    y1 = rows.float().argmax(1)
    y2 = h - rows.flip(1).float().argmax(1)
    x1 = cols.float().argmax(1)
    x2 = w - cols.flip(1).float().argmax(1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float().reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.ones(len(ids), dtype=torch.int64), "masks": masks, "ids": ids}


@dataclass(frozen=True)
class NucleiSplit:
    """A spatial split of an instance label image (see the module docstring).

    Attributes:
        test_quadrant: index into ``QUADRANTS``.
        window: ``(y1, y2, x1, x2)`` of the held-out quadrant (ends exclusive).
        train_ids, test_ids: instance ids of each split (Tensor[K_train], Tensor[K_test]).
        train_region: Tensor[H, W] bool; the test region is its complement.
    """

    test_quadrant: int
    window: tuple[int, int, int, int]
    train_ids: Tensor
    test_ids: Tensor
    train_region: Tensor


def spatial_split(instances: Tensor, test_quadrant: int = 3) -> NucleiSplit:
    """Hold out one quadrant; each instance goes to the split holding its centroid.

    The centroid is the mean of the pixel centres ``(row + 0.5, col + 0.5)``; a centroid on the dividing line goes to
    the bottom or right quadrant.

    Args:
        instances (Tensor[H, W]): instance ids, 0 for the background.
        test_quadrant: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
    """
    if test_quadrant not in range(4):
        raise ValueError(f"test_quadrant must be 0..3 ({', '.join(QUADRANTS)}), got {test_quadrant}")
    h, w = instances.shape
    top, left = (test_quadrant // 2) * (h // 2), (test_quadrant % 2) * (w // 2)
    window = (top, top + (h - h // 2 if top else h // 2), left, left + (w - w // 2 if left else w // 2))
    ids = torch.unique(instances)
    ids = ids[ids != 0]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")  # fmt: skip
    size = int(instances.max()) + 1
    flat = instances.reshape(-1).long()
    count = torch.bincount(flat, minlength=size).double()
    cy = torch.bincount(flat, weights=ys.reshape(-1), minlength=size) / count.clamp(min=1)
    cx = torch.bincount(flat, weights=xs.reshape(-1), minlength=size) / count.clamp(min=1)
    y1, y2, x1, x2 = window
    inside = (cy[ids] >= y1) & (cy[ids] < y2) & (cx[ids] >= x1) & (cx[ids] < x2)
    test_ids, train_ids = ids[inside], ids[~inside]
    in_window = torch.zeros(h, w, dtype=torch.bool)
    in_window[y1:y2, x1:x2] = True
    test_region = (in_window & ~torch.isin(instances, train_ids)) | torch.isin(instances, test_ids)
    return NucleiSplit(test_quadrant, window, train_ids, test_ids, ~test_region)


@dataclass(frozen=True)
class _Prepared:
    """The split's images, computed once per held-out quadrant."""

    split: NucleiSplit
    canvas: Tensor  # (1, H, W) the image, pixels outside the training region filled
    train_instances: Tensor  # (H, W) training nuclei only
    test_image: Tensor  # (1, h, w) the held-out quadrant, pixels outside the test region filled
    test_instances: Tensor  # (h, w) test nuclei only, cut at the quadrant's edge
    test_valid: Tensor  # (h, w) bool, the test region inside the quadrant
    mean: float
    std: float


@functools.lru_cache(maxsize=4)
def _prepare(test_quadrant: int) -> _Prepared:
    image, instances = load_nuclei()
    split = spatial_split(instances, test_quadrant)
    train = split.train_region
    fill = float(image[0][train & (instances == 0)].median())
    canvas = torch.where(train, image, torch.full_like(image, fill))
    train_instances = torch.where(torch.isin(instances, split.train_ids), instances, 0)
    y1, y2, x1, x2 = split.window
    valid = ~train[y1:y2, x1:x2]
    test_image = torch.where(valid, image[:, y1:y2, x1:x2], torch.full_like(image[:, y1:y2, x1:x2], fill))
    window = instances[y1:y2, x1:x2]
    test_instances = torch.where(torch.isin(window, split.test_ids), window, 0)
    pixels = image[0][train].double()
    return _Prepared(split, canvas, train_instances, test_image, test_instances, valid, float(pixels.mean()),
                     float(pixels.std()))  # fmt: skip


def _class_mask(instances: Tensor, valid: Tensor, separate: bool) -> Tensor:
    fg = (separate_touching(instances) if separate else instances) > 0
    return torch.where(valid, fg.long(), torch.full_like(instances, IGNORE_INDEX))


@functools.lru_cache(maxsize=4)
def _training_maps(test_quadrant: int, separate: bool, weights: bool) -> tuple[Tensor, Tensor | None]:
    """The class mask of the training canvas and, on request, its U-Net weight map (from the training nuclei)."""
    prep = _prepare(test_quadrant)
    mask = _class_mask(prep.train_instances, prep.split.train_region, separate)
    if not weights:
        return mask, None
    cells = separate_touching(prep.train_instances) if separate else prep.train_instances
    return mask, unet_weight_map(cells, class_weights=class_balance_weights(mask, 2, ignore_index=IGNORE_INDEX))


def _pad(x: Tensor, context: int) -> Tensor:
    """Mirror-pad the last two dims by ``context`` (``numpy.pad(mode="reflect")``); integer maps keep their dtype."""
    if context == 0:
        return x
    lead = x.shape[:-2]
    work = x.reshape(1, -1, *x.shape[-2:]).double()
    out = F.pad(work, (context,) * 4, mode="reflect")[0]
    return out.to(x.dtype).reshape(*lead, *out.shape[-2:])


def _quadrant(text: str) -> int:
    value = QUADRANTS.index(text) if text in QUADRANTS else int(text)
    if value not in range(4):
        raise ValueError(text)
    return value


def _at_least(low: int):
    def read(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value

    return read


_OPTIONS = {
    "size": (_at_least(1), "an integer number of pixels >= 1"),
    "samples": (_at_least(1), "an integer >= 1"),
    "quadrant": (_quadrant, f"0..3 or one of {', '.join(QUADRANTS)}"),
    "seed": (_at_least(0), "an integer >= 0"),
    "separate": (read_bool, "1 or 0"),
}
_KEYWORDS = {"size": "size", "samples": "num_samples", "quadrant": "test_quadrant", "seed": "seed",
             "separate": "separate"}  # fmt: skip


def parse_nuclei_options(spec: str, text: str, *, task: str = "segmentation") -> dict:
    """The ``key=value,...`` options of a ``nuclei:...`` spec as keywords of :class:`NucleiSegmentation` (or, with
    ``task="detection"``, of :class:`NucleiDetection`, which has no ``separate``).

    Raises:
        ValueError: an unknown key, a value that does not parse, or ``separate`` for detection (naming it).
    """
    options = parse_options(spec, text, _OPTIONS)
    if task == "detection" and "separate" in options:
        raise ValueError(f"data {spec!r}: separate applies to nuclei segmentation masks, not to detection boxes")
    return {_KEYWORDS[k]: v for k, v in options.items()}


class _NucleiCrops(Dataset):
    """What the two datasets share: the split, crop positions, per-item seeding, augmentation and metadata."""

    classes = CLASSES
    augmentation = "unet"  # the recipe of convatlas.data.augment the training engine applies with `augment`

    def __init__(self, split: str, *, size: int, context: int, num_samples: int, seed: int, test_quadrant: int,
                 channels: int, transform: Callable | None) -> None:  # fmt: skip
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.prep = _prepare(test_quadrant)
        height, width = self.prep.canvas.shape[-2:]
        if not 0 <= context < min(height, width):
            raise ValueError(f"context must be in 0..{min(height, width) - 1} pixels, got {context}")
        self.split, self.size, self.context, self.seed = split, int(size), int(context), int(seed)
        self.num_samples, self.test_quadrant, self.transform = int(num_samples), test_quadrant, transform
        self.in_channels, self.channels = channels, channels
        self.mean, self.std = (self.prep.mean,) * channels, (self.prep.std,) * channels
        self.epoch = 0
        if split == "train":
            self.positions = _crop_positions((height, width), self.prep.split.window, self.size)
            self._padded_canvas = _pad(self.prep.canvas, self.context)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops and augmentations of ``epoch`` (item ``i`` depends only on ``(seed, epoch, i)``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples if self.split == "train" else 1

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"nuclei {self.split} index {index} out of range for {len(self)} items")
        return index % len(self)

    def _item_seed(self, index: int) -> int:
        return (self.seed * 1_000_003 + self.epoch) * 1_000_033 + index

    def _crop(self, index: int, maps: dict[str, Tensor], *, cut: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """A random training crop of the canvas and of ``maps`` (each ``Tensor[H + 2 * context, W + 2 * context]``,
        mirror-padded like the canvas), augmented, as tensors.

        The image has ``size + 2 * context`` pixels a side; with ``cut`` the maps are cut to the central ``size``
        after the augmentation (which sees the whole window, so the image and the maps move together).
        """
        seed = self._item_seed(index)
        gen = torch.Generator().manual_seed(seed)
        y, x = self.positions[int(torch.randint(len(self.positions), (1,), generator=gen))].tolist()
        c, side = self.context, self.size + 2 * self.context
        image = self._padded_canvas[:, y : y + side, x : x + side]
        window = {k: v[y : y + side, x : x + side] for k, v in maps.items()}
        image, window = self._augment(image, window, seed)
        if cut:
            window = {k: v[c : c + self.size, c : c + self.size] for k, v in window.items()}
        return image, window

    def _augment(self, image: Tensor, maps: dict[str, Tensor], seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = image.repeat(self.channels, 1, 1)  # a copy: the cached canvas is never handed out
        if self.transform is None:
            return image, {k: v.clone() for k, v in maps.items()}
        masks = {k: tv_tensors.Mask(v.clone()) for k, v in maps.items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out_image, out_maps = self.transform(tv_tensors.Image(image), masks)
        return out_image.as_subclass(Tensor), {k: v.as_subclass(Tensor) for k, v in out_maps.items()}


def _crop_positions(size: tuple[int, int], window: tuple[int, int, int, int], crop: int) -> Tensor:
    """Top-left ``(y, x)`` of every ``crop x crop`` window inside the image that misses the held-out ``window``."""
    height, width = size
    if not 1 <= crop <= min(height, width):
        raise ValueError(f"size must be in 1..{min(height, width)}, got {crop}")
    ys = torch.arange(height - crop + 1)[:, None]
    xs = torch.arange(width - crop + 1)[None, :]
    y1, y2, x1, x2 = window
    hits = (ys + crop > y1) & (ys < y2) & (xs + crop > x1) & (xs < x2)
    positions = torch.nonzero(~hits)
    if not len(positions):
        raise ValueError(f"size {crop}: no {crop}x{crop} crop of the {height}x{width} image misses the held-out "
                         f"quadrant; use size <= {max(y1, height - y2, x1, width - x2)}")  # fmt: skip
    return positions


class NucleiSegmentation(_NucleiCrops):
    """The nuclei image for semantic segmentation (background / nucleus).

    Args:
        split: ``"train"`` (random crops of the training region) or ``"test"`` (the held-out quadrant, one item).
        size: the side of a training crop's mask.
        context: pixels of image around the mask on each side (training crops only), for networks whose output is
            smaller than their input: the unpadded U-Net maps ``size + 2 * context`` to ``size`` when ``context`` is
            half its border loss (92 for the paper's network). Mirrored at the image border.
        num_samples: training crops per epoch.
        seed: crop ``i`` of epoch ``e`` depends only on ``(seed, e, i)``; see :meth:`set_epoch`.
        test_quadrant: the held-out quadrant (``QUADRANTS``; default bottom-right).
        channels: 1, or 3 (the gray image repeated).
        separate: a one-pixel background gap between touching nuclei in the mask.
        weights: also return the U-Net weight map (:func:`convatlas.ops.unet_loss.unet_weight_map` of the training
            nuclei, ``w0 = 10``, ``sigma = 5``, class weights from the training region's frequencies).
        instances: also return the instance ids (training nuclei in a training crop, test nuclei in the test item).
        whole_maps: with ``context``, give the maps over the whole input window (real labels in the context, mirrored
            at the image border) instead of its centre, so that a later augmentation deforms them with the image
            without losing labels at the centre's edge; a loss on an unpadded network's output uses their centre.
        transform: a ``v2`` transform called as ``transform(image, maps)`` with ``image`` a ``tv_tensors.Image`` and
            ``maps`` a dict of ``tv_tensors.Mask`` (for example :func:`convatlas.data.augment.unet_augmentation`); it
            runs under a seed of the item, so items are repeatable.

    Items are ``(image, mask)``, or ``(image, {"mask", "weight", "instances"})`` with ``weights`` or ``instances``:
    ``image (Tensor[C, S + 2 * context, S + 2 * context])`` float32 in ``[0, 1]``, ``mask (Tensor[S, S])`` int64 with
    0 background, 1 nucleus and 255 ignored, ``weight (Tensor[S, S])`` float32, ``instances (Tensor[S, S])`` int64
    (``S + 2 * context`` a side with ``whole_maps``). The test item is the whole quadrant (256x256, no context;
    predict it with :func:`convatlas.models.tiling.predict_tiled` for an unpadded network) and has no weight map.
    """

    task = "segmentation"
    num_classes = 2

    def __init__(
        self,
        split: str = "train",
        *,
        size: int = 128,
        context: int = 0,
        num_samples: int = 256,
        seed: int = 0,
        test_quadrant: int = 3,
        channels: int = 1,
        separate: bool = True,
        weights: bool = False,
        instances: bool = False,
        whole_maps: bool = False,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(
            split,
            size=size,
            context=context,
            num_samples=num_samples,
            seed=seed,
            test_quadrant=test_quadrant,
            channels=channels,
            transform=transform,
        )
        self.separate, self.weights, self.instances, self.whole_maps = separate, weights, instances, whole_maps
        if split == "train":
            self.mask, self.weight = _training_maps(test_quadrant, separate, weights)
            self._padded_maps = {
                "mask": _pad(self.mask, self.context),
                "instances": _pad(self.prep.train_instances, self.context),
            }
            if weights:
                self._padded_maps["weight"] = _pad(self.weight, self.context)
        else:
            self.mask = _class_mask(self.prep.test_instances, self.prep.test_valid, separate)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor | dict[str, Tensor]]:
        index = self._check_index(index)
        if self.split == "train":
            image, out = self._crop(index, self._padded_maps, cut=not self.whole_maps)
        else:
            maps = {"mask": self.mask, "instances": self.prep.test_instances}
            image, out = self._augment(self.prep.test_image, maps, self._item_seed(index))
        if not (self.weights or self.instances):
            return image, out["mask"]
        if not self.instances:
            del out["instances"]
        return image, out


class NucleiDetection(_NucleiCrops):
    """The nuclei image for detection and instance segmentation (one class, ``nucleus``).

    Args:
        split: ``"train"`` (random crops of the training region) or ``"test"`` (the held-out quadrant, one item).
        size: the side of a training crop.
        num_samples: training crops per epoch.
        seed: crop ``i`` of epoch ``e`` depends only on ``(seed, e, i)``; see :meth:`set_epoch`.
        test_quadrant: the held-out quadrant (default bottom-right).
        channels: 3 (the gray image repeated, for RGB backbones) or 1.
        transform: a ``v2`` transform called as ``transform(image, {"instances": mask})`` (see
            :class:`NucleiSegmentation`); boxes and masks are taken from the transformed instance ids, so they follow
            any deformation exactly.

    Items are ``(image, target)``: ``image (Tensor[C, S, S])`` float32 in ``[0, 1]``; ``target`` has ``boxes
    (Tensor[K, 4])`` float32 ``(x1, y1, x2, y2)`` absolute pixels (``x2``, ``y2`` exclusive), ``labels (Tensor[K])``
    int64 all 1, and ``masks (Tensor[K, S, S])`` bool. Every nucleus with a pixel in the crop is a target (cut at the
    crop's edge); ``num_classes`` is 1 (without the background), as for the other detection sets.
    """

    task = "detection"
    num_classes = 1

    def __init__(self, split: str = "train", *, size: int = 128, num_samples: int = 256, seed: int = 0,
                 test_quadrant: int = 3, channels: int = 3, transform: Callable | None = None) -> None:  # fmt: skip
        super().__init__(split, size=size, context=0, num_samples=num_samples, seed=seed, test_quadrant=test_quadrant,
                         channels=channels, transform=transform)  # fmt: skip

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        index = self._check_index(index)
        if self.split == "train":
            image, maps = self._crop(index, {"instances": self.prep.train_instances})
        else:
            image, maps = self._augment(self.prep.test_image, {"instances": self.prep.test_instances},
                                        self._item_seed(index))  # fmt: skip
        target = targets_from_instances(maps["instances"])
        del target["ids"]
        return image, target


__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "QUADRANTS",
    "NucleiDetection",
    "NucleiSegmentation",
    "NucleiSplit",
    "load_nuclei",
    "nuclei_files",
    "parse_nuclei_options",
    "spatial_split",
    "targets_from_instances",
]
