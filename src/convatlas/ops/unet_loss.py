"""U-Net's weighted loss (Ronneberger, Fischer and Brox 2015, eq. 1 and 2).

The energy is a pixel-wise cross-entropy in which each pixel counts ``w(x)`` times:

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``w_c`` balances the class frequencies, ``d1`` and ``d2`` are the distances to the border of the nearest and the
second-nearest cell, and the paper sets ``w0 = 10`` and ``sigma ~ 5`` pixels. The weight map is computed once per
ground-truth image ("pre-computed") from its instance labels, so that the thin background gaps between touching cells
weigh most.

Choices where the paper is silent, stated here once:

- ``d_i(x)`` is the Euclidean distance from the centre of pixel ``x`` to the centre of the nearest pixel of cell
  ``i`` (``scipy.ndimage.distance_transform_edt``); a background pixel next to a cell is at distance 1.
- The border term applies to background pixels (inside a cell the distance to "the border of the nearest cell" is
  the cell itself), and needs at least two cells.
- ``w_c`` is the inverse class frequency, ``w_c = N / (K * N_c)`` over the ``N`` labelled pixels of ``K`` classes,
  so that it averages 1 over the pixels; pass ``class_weights`` to use frequencies of a whole training set instead.
- :func:`weighted_cross_entropy` averages ``w(x) * CE(x)`` over the labelled pixels (the paper's sum divided by the
  pixel count), so that ``w = 1`` gives ``F.cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

W0 = 10.0
SIGMA = 5.0


def class_balance_weights(mask: Tensor, num_classes: int, *, ignore_index: int | None = 255) -> Tensor:
    """Inverse class frequencies ``w_c = N / (K * N_c)`` of a class mask (0 for a class without pixels).

    Args:
        mask (Tensor[..., H, W]): class indices in ``0..num_classes - 1`` (and ``ignore_index``, not counted).
        num_classes: ``K``.
        ignore_index: a value that is not a class.

    Returns:
        Tensor[K] float64.
    """
    values = mask.reshape(-1).long()
    if ignore_index is not None:
        values = values[values != ignore_index]
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"class_balance_weights: mask values must be in 0..{num_classes - 1}, got "
                         f"{int(values.min())}..{int(values.max())}")  # fmt: skip
    counts = torch.bincount(values, minlength=num_classes).double()
    weights = counts.sum() / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


def border_distances(instances: Tensor) -> tuple[Tensor, Tensor]:
    """``d1`` and ``d2``: per pixel, the distances to the nearest and the second-nearest instance.

    Args:
        instances (Tensor[H, W]): instance ids, 0 for the background (ids need not be consecutive).

    Returns:
        (Tensor[H, W], Tensor[H, W]) float64: ``inf`` where there are fewer than one (``d1``) or two (``d2``)
        instances. Inside an instance its own distance is 0.
    """
    from scipy import ndimage

    if instances.dim() != 2:
        raise ValueError(f"border_distances: instances must be Tensor[H, W], got shape {tuple(instances.shape)}")
    labels = instances.detach().cpu().numpy()
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for i in np.unique(labels):
        if i == 0:
            continue
        d = ndimage.distance_transform_edt(labels != i)
        d2 = np.minimum(d2, np.maximum(d1, d))  # keep the two smallest distances seen so far
        d1 = np.minimum(d1, d)
    return torch.from_numpy(d1), torch.from_numpy(d2)


def unet_weight_map(
    instances: Tensor,
    *,
    w0: float = W0,
    sigma: float = SIGMA,
    class_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """The weight map ``w(x) = w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` of one instance label image.

    Args:
        instances (Tensor[H, W]): instance ids, 0 for the background; the classes are background (0) and cell (1).
        w0: the border weight (the paper's 10).
        sigma: the border width in pixels (the paper's 5).
        class_weights: ``(w_background, w_cell)``; default :func:`class_balance_weights` of this image.

    Returns:
        Tensor[H, W] float32.
    """
    if sigma <= 0 or w0 < 0:
        raise ValueError(f"unet_weight_map: need sigma > 0 and w0 >= 0, got sigma={sigma}, w0={w0}")
    foreground = instances > 0
    if class_weights is None:
        class_weights = class_balance_weights(foreground.long(), 2, ignore_index=None)
    class_weights = torch.as_tensor(class_weights, dtype=torch.float64)
    if class_weights.shape != (2,):
        raise ValueError(f"unet_weight_map: class_weights must be (background, cell), got {class_weights.tolist()}")
    d1, d2 = border_distances(instances)
    border = w0 * torch.exp(-((d1 + d2) ** 2) / (2 * sigma**2))  # exp(-inf) = 0 with fewer than two cells
    fg = foreground.cpu()
    weight = class_weights[fg.long()] + torch.where(fg, torch.zeros_like(border), border)
    return weight.float().to(instances.device)


def weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """Pixel-wise cross-entropy, each pixel weighted by ``weight`` (U-Net's eq. 1).

    The unpadded U-Net predicts the centre of its input: when ``logits`` is smaller than ``target``, the target and
    weight are cropped centrally to its size.

    Args:
        logits (Tensor[N, K, h, w]): class scores.
        target (Tensor[N, H, W]): class indices, ``ignore_index`` where unlabelled; ``H >= h``, ``W >= w``.
        weight (Tensor[N, H, W]): per-pixel weights (:func:`unet_weight_map`); ``None`` for all ones.
        ignore_index: target value that does not count.
        reduction: ``"mean"`` (the weighted sum over the labelled pixels divided by their number), ``"sum"`` or
            ``"none"`` (``Tensor[N, h, w]``, 0 at ignored pixels).

    Returns:
        Tensor[] (or Tensor[N, h, w] with ``reduction="none"``), float32 at least.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"weighted_cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.dim() != 4 or target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"weighted_cross_entropy: need logits Tensor[N, K, h, w] and target Tensor[N, H, W], got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")  # fmt: skip
    if weight is not None and weight.shape != target.shape:
        raise ValueError(f"weighted_cross_entropy: weight {tuple(weight.shape)} must match target "
                         f"{tuple(target.shape)}")  # fmt: skip
    h, w = logits.shape[-2:]
    height, width = target.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"weighted_cross_entropy: logits {h}x{w} are larger than the target {height}x{width}")
    top, left = (height - h) // 2, (width - w) // 2
    target = target[:, top : top + h, left : left + w]
    ce = F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, target,
                         ignore_index=ignore_index, reduction="none")  # fmt: skip
    if weight is not None:
        ce = ce * weight[:, top : top + h, left : left + w].to(ce.dtype)
    if reduction == "none":
        return ce
    if reduction == "sum":
        return ce.sum()
    return ce.sum() / (target != ignore_index).sum().clamp(min=1)


__all__ = [
    "SIGMA",
    "W0",
    "border_distances",
    "class_balance_weights",
    "unet_weight_map",
    "weighted_cross_entropy",
]
