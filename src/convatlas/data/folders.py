"""Users' own images: ImageFolder trees (``root/<class>/<image>``) and image/mask folder pairs for segmentation.

Every file is checked when the set is built: an image that cannot be decoded is reported by name and counted, never
dropped in silence, and a mask whose size differs from its image names both files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# ImageNet statistics: the default normalisation of RGB folders (what pretrained zoo weights expect).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _check_readable(paths: list[Path]) -> list[tuple[Path, str]]:
    """The files among ``paths`` that PIL cannot decode, each with the reason."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, UnidentifiedImageError, ValueError) as err:
            bad.append((path, f"{type(err).__name__}: {err}"))
    return bad


def _report(bad: list[tuple[Path, str]], total: int, root: Path) -> str:
    names = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"{len(bad)} of {total} images under {root} are unreadable: {names}{more}"


class ImageFolder(Dataset):
    """Images sorted into one sub-folder per class (torchvision's ``ImageFolder`` layout).

    Args:
        root: the folder whose sub-folders are the classes (sorted by name: class ``i`` is the ``i``-th).
        image_size: every image is resized to ``(image_size, image_size)``.
        channels: 3 (RGB) or 1 (grayscale).
        skip_unreadable: when ``False`` (default) an unreadable image raises; when ``True`` it is left out, and its
            name and the count are kept in ``unreadable`` and printed as a warning.

    Items are ``(Tensor[C, image_size, image_size] float32 in [0, 1], int label)``.

    Raises:
        FileNotFoundError: when ``root`` does not exist.
        ValueError: for a root without class folders or images, or unreadable images (listed by name, counted).
    """

    task = "classification"

    def __init__(
        self, root: str | os.PathLike, *, image_size: int = 224, channels: int = 3, skip_unreadable: bool = False
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"imagefolder: {self.root} is not a directory")
        if channels not in (1, 3):
            raise ValueError(f"imagefolder: channels must be 1 or 3, got {channels}")
        if image_size < 1:
            raise ValueError(f"imagefolder: image_size must be >= 1, got {image_size}")
        self.classes = tuple(sorted(d.name for d in self.root.iterdir() if d.is_dir()))
        if not self.classes:
            raise ValueError(f"imagefolder: {self.root} has no class sub-folders (expected root/<class>/<image>)")
        samples = [(p, i) for i, name in enumerate(self.classes) for p in _image_files(self.root / name)]
        if not samples:
            raise ValueError(f"imagefolder: no images with extensions {IMAGE_EXTENSIONS} under {self.root}")
        bad = _check_readable([p for p, _ in samples])
        self.unreadable = [str(p) for p, _ in bad]
        if bad:
            message = _report(bad, len(samples), self.root)
            if not skip_unreadable:
                raise ValueError(f"imagefolder: {message} (pass skip_unreadable=True to leave them out)")
            print(f"warning: imagefolder: {message}; left out")
            skipped = {p for p, _ in bad}
            samples = [(p, i) for p, i in samples if p not in skipped]
        self.samples = samples
        self.targets = [i for _, i in samples]
        self.num_classes, self.in_channels, self.image_size = len(self.classes), channels, image_size
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        self.transform = v2.Compose(
            [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True), v2.ToDtype(torch.float32, scale=True)]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as im:
            image = im.convert("RGB" if self.in_channels == 3 else "L")
        return self.transform(image), label


class SegmentationFolder(Dataset):
    """Images and their masks in two folders, paired by file stem (``images/a.jpg`` with ``masks/a.png``).

    A mask holds one class index per pixel (an 8-bit grayscale or palette PNG; ``ignore_index`` marks pixels that do
    not count).

    Args:
        images: the image folder.
        masks: the mask folder.
        image_size: resize both to ``(image_size, image_size)`` (masks with nearest neighbour); ``None`` keeps sizes,
            which then must agree across the set for batching.
        channels: 3 (RGB) or 1 (grayscale).
        num_classes: the number of classes; default: the largest mask value (below ``ignore_index``) plus one.
        ignore_index: the mask value of pixels without a class.

    Items are ``(Tensor[C, H, W] float32 in [0, 1], Tensor[H, W] int64)``.

    Raises:
        FileNotFoundError: for a missing folder.
        ValueError: for an image without a mask (or the reverse), an unreadable file, a mask whose size differs from
            its image (naming both files and both sizes) or a mask value ``>= num_classes``.
    """

    task = "segmentation"

    def __init__(
        self,
        images: str | os.PathLike,
        masks: str | os.PathLike,
        *,
        image_size: int | None = None,
        channels: int = 3,
        num_classes: int | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.images_dir, self.masks_dir = Path(images), Path(masks)
        for name, folder in (("images", self.images_dir), ("masks", self.masks_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"segfolder: {name} folder {folder} is not a directory")
        if channels not in (1, 3):
            raise ValueError(f"segfolder: channels must be 1 or 3, got {channels}")
        image_files = {p.stem: p for p in _image_files(self.images_dir)}
        mask_files = {p.stem: p for p in _image_files(self.masks_dir)}
        if not image_files:
            raise ValueError(f"segfolder: no images in {self.images_dir}")
        lonely = sorted(set(image_files) ^ set(mask_files))
        if lonely:
            where = [str(image_files.get(s) or mask_files.get(s)) for s in lonely[:5]]
            raise ValueError(f"segfolder: {len(lonely)} files have no partner (paired by stem): {', '.join(where)}")
        self.pairs = [(image_files[s], mask_files[s]) for s in sorted(image_files)]
        bad = _check_readable([p for pair in self.pairs for p in pair])
        if bad:
            raise ValueError(f"segfolder: {_report(bad, 2 * len(self.pairs), self.images_dir.parent)}")
        largest = 0
        for image_path, mask_path in self.pairs:
            with Image.open(image_path) as im, Image.open(mask_path) as mk:
                if im.size != mk.size:
                    raise ValueError(
                        f"segfolder: mask {mask_path} is {mk.size[0]}x{mk.size[1]} (WxH) but image {image_path} is "
                        f"{im.size[0]}x{im.size[1]}; a mask must match its image"
                    )
                values = np.asarray(mk)
            if values.ndim != 2:
                raise ValueError(f"segfolder: mask {mask_path} has {values.ndim} dims; expected one class index/pixel")
            values = values[values != ignore_index]
            largest = max(largest, int(values.max()) if values.size else 0)
        if num_classes is None:
            num_classes = largest + 1
        elif largest >= num_classes:
            raise ValueError(f"segfolder: mask values go up to {largest}, not below num_classes={num_classes}")
        self.num_classes, self.in_channels, self.ignore_index = int(num_classes), channels, ignore_index
        self.image_size = image_size
        self.classes = tuple(str(i) for i in range(self.num_classes))
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        with Image.open(image_path) as im, Image.open(mask_path) as mk:
            image = v2.functional.to_image(im.convert("RGB" if self.in_channels == 3 else "L"))
            mask = torch.from_numpy(np.asarray(mk).astype(np.int64))
        image = v2.functional.to_dtype(image, torch.float32, scale=True)
        if self.image_size is not None:
            size = [self.image_size, self.image_size]
            image = v2.functional.resize(image, size, antialias=True)
            mask = v2.functional.resize(mask[None], size, interpolation=v2.InterpolationMode.NEAREST)[0]
        return image.as_subclass(Tensor), mask
