"""Users' own images: ImageFolder trees (``root/<class>/<image>``) and image/mask folder pairs for segmentation.

Every file is checked when the set is built: an image that cannot be decoded is reported by name and counted, never
dropped in silence, and a mask whose size differs from its image names both files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from convatlas.errors import InputTypeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# ImageNet statistics: the default normalisation of RGB folders (what pretrained zoo weights expect).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# Larger sides are refused: one 16384x16384 RGB float32 image already takes 3 GiB.
MAX_IMAGE_SIZE = 16384


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted; hidden files (``.name``, such as macOS ``._a.jpg``) are not
    images."""
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def _by_stem(folder: Path, what: str) -> dict[str, Path]:
    """The image files of ``folder`` by stem; two files of one stem (``a.png``, ``a.jpg``) cannot be paired."""
    by_stem: dict[str, Path] = {}
    for path in _image_files(folder):
        if path.stem in by_stem:
            raise ValueError(
                f"segfolder: {what} folder {folder} has two files of stem {path.stem!r} ({by_stem[path.stem].name}, "
                f"{path.name}); images and masks are paired by stem"
            )
        by_stem[path.stem] = path
    return by_stem


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a ``Path`` when it is an existing folder.

    Raises:
        FileNotFoundError: it does not exist.
        NotADirectoryError: it is a file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder")
    return path


def check_image_size(value, name: str = "image_size", *, optional: bool = False) -> int | None:
    """``value`` as a side length in ``1..MAX_IMAGE_SIZE`` (or ``None`` when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not 1 <= value <= MAX_IMAGE_SIZE:
        raise ValueError(f"{name} must be in 1..{MAX_IMAGE_SIZE}, got {value}")
    return value


def _check_channels(channels, where: str) -> int:
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"{where}: channels must be 1 or 3, got {channels!r}")
    return int(channels)


def find_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """The class folders of an ImageFolder tree: the sub-folders of ``root`` sorted by name (hidden ones, such as
    ``.ipynb_checkpoints``, are not classes).

    Raises:
        FileNotFoundError, NotADirectoryError: ``root`` is not a folder.
    """
    root = check_folder(root, "imagefolder:")
    return tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))


def _check_readable(paths: list[Path]) -> list[tuple[Path, str]]:
    """The files among ``paths`` that PIL cannot decode, each with the reason."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            bad.append((path, f"{type(err).__name__}: {err}"))
    return bad


def _report(bad: list[tuple[Path, str]], total: int, root: Path) -> str:
    names = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"{len(bad)} of {total} images under {root} are unreadable: {names}{more}"


class ImageFolder(Dataset):
    """Images sorted into one sub-folder per class (torchvision's ``ImageFolder`` layout).

    Args:
        root: the folder whose sub-folders are the classes (sorted by name: class ``i`` is the ``i``-th; hidden
            folders such as ``.ipynb_checkpoints`` are not classes).
        image_size: every image is resized to ``(image_size, image_size)``, ``1..16384``.
        channels: 3 (RGB) or 1 (grayscale).
        skip_unreadable: when ``False`` (default) an unreadable image raises; when ``True`` it is left out, and its
            name and the count are kept in ``unreadable`` and reported in a warning.
        classes: the class names in label order, for a split that must share another split's labels (the test split
            of a training set, a checkpoint's classes). Folders are matched to them by name: a folder that is not
            among them is an error naming it; a class without a folder simply has no items here. By default the
            classes are the folders, and each must hold at least one image.

    Items are ``(Tensor[C, image_size, image_size] float32 in [0, 1], int label)``.

    Raises:
        FileNotFoundError, NotADirectoryError: when ``root`` is not a folder.
        ValueError: for a root without class folders or images, a class folder without images, a folder that is not
            among ``classes``, or unreadable images (listed by name, counted).
    """

    task = "classification"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        image_size: int = 224,
        channels: int = 3,
        skip_unreadable: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = check_folder(root, "imagefolder:")
        channels = _check_channels(channels, "imagefolder")
        image_size = check_image_size(image_size)
        found = find_classes(self.root)
        if not found:
            raise ValueError(f"imagefolder: {self.root} has no class sub-folders (expected root/<class>/<image>)")
        files = {name: _image_files(self.root / name) for name in found}
        if classes is None:
            empty = [name for name in found if not files[name]]
            if empty:
                raise ValueError(
                    f"imagefolder: class folder {self.root / empty[0]} holds no image (extensions "
                    f"{', '.join(IMAGE_EXTENSIONS)}){f' and {len(empty) - 1} more are empty' if len(empty) > 1 else ''}"
                    "; every class needs at least one image"
                )
            self.classes = found
        else:
            self.classes = _check_class_names(classes)
            unknown = [name for name in found if name not in self.classes]
            if unknown:
                extra = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:4])})" if len(unknown) > 1 else ""
                raise ValueError(
                    f"imagefolder: class folder {self.root / unknown[0]}{extra} is not one of the {len(self.classes)} "
                    f"classes {', '.join(self.classes)}; labels are matched by name, so every class here must also "
                    "be a training class"
                )
        label = {name: i for i, name in enumerate(self.classes)}
        samples = sorted(((p, label[name]) for name in found for p in files[name]), key=lambda s: (s[1], s[0]))
        if not samples:
            raise ValueError(f"imagefolder: no images with extensions {', '.join(IMAGE_EXTENSIONS)} under {self.root}")
        bad = _check_readable([p for p, _ in samples])
        self.unreadable = [str(p) for p, _ in bad]
        if bad:
            message = _report(bad, len(samples), self.root)
            if not skip_unreadable:
                raise ValueError(f"imagefolder: {message} (pass skip_unreadable=True to leave them out)")
            warnings.warn(f"imagefolder: {message}; left out", stacklevel=2)
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


def _check_class_names(classes) -> tuple[str, ...]:
    """``classes`` as a tuple of distinct, non-empty strings."""
    if isinstance(classes, str | bytes):
        raise InputTypeError(f"classes must be a sequence of names, not one string ({classes!r})")
    names = tuple(classes)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError(f"classes must be non-empty names, got {names!r}")
    duplicates = sorted({c for c in names if names.count(c) > 1})
    if duplicates:
        raise ValueError(f"classes must be distinct, got {', '.join(map(repr, duplicates))} more than once")
    return names


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
        classes: names of the classes in label order (then ``num_classes`` is their number); default ``"0"``,
            ``"1"``, ...

    Items are ``(Tensor[C, H, W] float32 in [0, 1], Tensor[H, W] int64)``.

    Raises:
        FileNotFoundError, NotADirectoryError: for a missing folder, or a file where a folder is expected.
        ValueError: for an image without a mask (or the reverse), two files of one stem, an unreadable file, a mask
            whose size differs from its image (naming both files and both sizes), a mask that is not one integer per
            pixel, or a mask value that is negative or ``>= num_classes``.
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
        classes: Sequence[str] | None = None,
    ) -> None:
        self.images_dir = check_folder(images, "segfolder: images folder")
        self.masks_dir = check_folder(masks, "segfolder: masks folder")
        channels = _check_channels(channels, "segfolder")
        image_size = check_image_size(image_size, optional=True)
        if classes is not None:
            classes = _check_class_names(classes)
            if num_classes is not None and num_classes != len(classes):
                raise ValueError(f"segfolder: num_classes={num_classes} but {len(classes)} classes are named")
            num_classes = len(classes)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise InputTypeError(f"segfolder: num_classes must be an int, got {num_classes!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"segfolder: num_classes must be >= 1, got {num_classes}")
        image_files, mask_files = _by_stem(self.images_dir, "images"), _by_stem(self.masks_dir, "masks")
        if not image_files:
            raise ValueError(f"segfolder: no images with extensions {', '.join(IMAGE_EXTENSIONS)} in {self.images_dir}")
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
            if not np.issubdtype(values.dtype, np.integer) and not np.issubdtype(values.dtype, np.bool_):
                raise ValueError(f"segfolder: mask {mask_path} holds {values.dtype} values; expected integer classes")
            values = values[values != ignore_index]
            if values.size and int(values.min()) < 0:
                raise ValueError(f"segfolder: mask {mask_path} has the negative class {int(values.min())}")
            largest = max(largest, int(values.max()) if values.size else 0)
        if num_classes is None:
            num_classes = largest + 1
        elif largest >= num_classes:
            raise ValueError(f"segfolder: mask values go up to {largest}, not below num_classes={num_classes}")
        self.num_classes, self.in_channels, self.ignore_index = int(num_classes), channels, ignore_index
        self.image_size = image_size
        self.classes = classes or tuple(str(i) for i in range(self.num_classes))
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
