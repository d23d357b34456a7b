"""Part of a dataset: the ``limit`` that every dataset builder accepts, and :class:`Subset`, which applies it.

A limit keeps ``n`` items spread evenly over the set (items ``floor(i * len / n)``), so that a set stored class by
class still gives every class. ``None`` keeps everything; anything else must be an int of at least 1.
"""

from __future__ import annotations

import operator

import torch
from torch.utils.data import Dataset

from convatlas.errors import InputTypeError

# What a dataset says about itself; a subset keeps whichever of these its dataset has.
METADATA = ("task", "num_classes", "in_channels", "classes", "mean", "std", "augmentation")


def check_limit(limit, name: str = "limit") -> int | None:
    """``limit`` as an int ``>= 1``, or ``None``.

    Args:
        limit: ``None`` (keep everything) or a positive int (``bool`` is refused).
        name: what the caller calls it in messages (``"limit"``, ``"limit_train"``).

    Raises:
        InputTypeError: ``limit`` is not an int.
        ValueError: ``limit`` is 0 or negative.
    """
    if limit is None:
        return None
    try:
        if isinstance(limit, bool):
            raise TypeError
        value = operator.index(limit)
    except TypeError:
        raise InputTypeError(f"{name} must be an int >= 1 or None, got {limit!r} ({type(limit).__name__})") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (None keeps the whole split), got {value}")
    return value


def spread_indices(total: int, limit: int | None) -> list[int]:
    """The indices a limit keeps out of ``total`` items: ``floor(i * total / n)`` for ``i < n = min(limit, total)``."""
    limit = check_limit(limit)
    n = total if limit is None else min(limit, total)
    return [i * total // n for i in range(n)]


class Subset(Dataset):
    """``n`` items spread evenly over a dataset (see :func:`spread_indices`).

    Keeps the dataset's metadata (``task``, ``num_classes``, ``in_channels``, ``classes``, ``mean``, ``std``, where it
    has them) and its whole-batch fast path ``get_batch``.

    Args:
        dataset: any dataset with ``len``.
        n: how many items to keep (at most ``len(dataset)``).

    Raises:
        InputTypeError, ValueError: ``n`` is not an int ``>= 1``.
    """

    def __init__(self, dataset: Dataset, n: int) -> None:
        self.dataset = dataset
        self.indices = torch.tensor(spread_indices(len(dataset), check_limit(n, "n")), dtype=torch.int64)
        for name in METADATA:
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))
        if hasattr(dataset, "get_batch"):
            self.get_batch = lambda indices: dataset.get_batch(self.indices[indices])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]


def limited(dataset: Dataset, limit: int | None, name: str = "limit") -> Dataset:
    """``dataset`` itself when ``limit`` is ``None``, else a :class:`Subset` of ``limit`` items (checked, named
    ``name`` in errors)."""
    limit = check_limit(limit, name)
    return dataset if limit is None else Subset(dataset, limit)
