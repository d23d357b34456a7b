"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 60,000 training and 10,000 test images of 28x28 clothing items.

The four original gzip files come from the Debian package ``dataset-fashion-mnist`` (``make data`` installs it), so
nothing is downloaded at run time. The whole split is decoded once into a ``uint8`` tensor held in memory.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Per-channel statistics of the 60,000 training images in [0, 1].
MEAN, STD = (0.2860,), (0.3530,)


def check_split(split: str) -> str:
    """Return ``split`` when it is ``"train"`` or ``"test"``; raise ``ValueError`` otherwise."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (optionally gzip-compressed): the format of the original MNIST and Fashion-MNIST files.

    Returns:
        the array, ``uint8`` of shape ``[N]`` (labels) or ``[N, H, W]`` (images).

    Raises:
        ValueError: when a ``.gz`` file is not gzip, the header is not an unsigned-byte IDX header or the payload is
            short.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a readable gzip file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: IDX header says {dims} ({expected} bytes), file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four Fashion-MNIST files: ``data_dir``, else ``$CONVATLAS_FASHION_MNIST``, else Debian's.

    Raises:
        FileNotFoundError: naming the folder searched and how to install the data.
    """
    if data_dir is not None:
        folder = check_data_dir(data_dir)
    else:
        folder = Path(os.environ.get("CONVATLAS_FASHION_MNIST") or DEBIAN_DIR)
    missing = [name for pair in _FILES.values() for name in pair if _resolve(folder, name) is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}): run `make data` or "
            "`sudo apt-get install dataset-fashion-mnist`, or give data_dir, a folder with the four IDX files"
        )
    return folder


def check_data_dir(data_dir: str | os.PathLike) -> Path:
    """``data_dir`` as a ``Path`` when it is an existing folder.

    Raises:
        FileNotFoundError: it does not exist.
        NotADirectoryError: it is a file.
    """
    folder = Path(data_dir)
    if not folder.exists():
        raise FileNotFoundError(f"data_dir {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"data_dir {folder} is a file, not a folder")
    return folder


def _resolve(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


class GrayImages28(Dataset):
    """In-memory 28x28 grey-level classification images: the item and batch access Fashion-MNIST and MNIST share.

    Subclasses set ``images`` (Tensor[N, 28, 28] uint8) and ``targets`` (Tensor[N] int64) in ``__init__``.
    """

    num_classes = 10
    in_channels = 1
    task = "classification"
    images: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].unsqueeze(0).float().div_(255), int(self.targets[index])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """A whole batch at once (the engine's fast path): ``(Tensor[B, 1, 28, 28] float32, Tensor[B] int64)``."""
        return self.images[indices].unsqueeze(1).float().div_(255), self.targets[indices]


class FashionMNIST(GrayImages28):
    """One split of Fashion-MNIST, held in memory.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: a folder with the four IDX files (gzip or not); default: the Debian package's folder.

    Attributes:
        images (Tensor[N, 28, 28]): ``uint8`` pixels.
        targets (Tensor[N]): ``int64`` labels in ``0..9``.

    Items are ``(Tensor[1, 28, 28] float32 in [0, 1], int label)``.
    """

    classes = CLASSES
    mean, std = MEAN, STD

    def __init__(self, split: str = "train", *, data_dir: str | os.PathLike | None = None) -> None:
        folder = find_fashion_mnist(data_dir)
        images_name, labels_name = _FILES[check_split(split)]
        images = read_idx(_resolve(folder, images_name))
        labels = read_idx(_resolve(folder, labels_name))
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.split = split
        self.images = torch.from_numpy(images.copy())
        self.targets = torch.from_numpy(labels.astype(np.int64))
