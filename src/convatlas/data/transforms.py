"""Training augmentation through ``torchvision.transforms.v2``: masks and boxes move with their images.

Samples are wrapped in ``tv_tensors`` so that one v2 pipeline transforms every part consistently:

- classification: ``(Image[C, H, W], label)``, the label passes through;
- segmentation: ``(Image, Mask[H, W])``; pixels shifted in from outside the image get ``ignore_index`` in the mask;
- detection: ``(Image, {"boxes": BoundingBoxes[K, 4] XYXY, "labels": Tensor[K], ...})``; boxes are clamped to the
  image, and boxes pushed out of it are dropped together with their labels (and ``difficult`` flags).

Randomness comes from torch's global generator, so :func:`augment_batch` draws under a forked generator seeded per
call: the same seed gives the same augmentation, which the training engine needs for an exact resume.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

KINDS = ("classification", "segmentation", "detection")
IGNORE_INDEX = 255


def flip_and_shift(kind: str, *, max_shift: float = 1 / 14, ignore_index: int = IGNORE_INDEX) -> v2.Transform:
    """Random horizontal flip (p = 0.5) and a random shift of up to ``max_shift`` of each side, zero-filled.

    Args:
        kind: ``"classification"``, ``"segmentation"`` or ``"detection"`` (what the targets are).
        max_shift: the largest shift as a fraction of the width (horizontal) and height (vertical).
        ignore_index: the mask value of pixels shifted in from outside (segmentation).
    """
    if kind not in KINDS:
        raise ValueError(f"flip_and_shift: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0 <= max_shift < 1:
        raise ValueError(f"flip_and_shift: max_shift must be in [0, 1), got {max_shift}")
    steps = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomAffine(
            degrees=0, translate=(max_shift, max_shift), fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
        ),  # fmt: skip
    ]
    if kind == "detection":
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1, labels_getter=_box_labels)]
    return v2.Compose(steps)


def _box_labels(inputs) -> tuple[Tensor, ...]:
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "difficult") if k in target)


def _wrap(kind: str, image: Tensor, target):
    image = tv_tensors.Image(image)
    if kind == "segmentation":
        return image, tv_tensors.Mask(target)
    if kind == "detection":
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
        return image, {**target, "boxes": boxes}
    return image, target


def _unwrap(kind: str, image: Tensor, target):
    image = image.as_subclass(Tensor)
    if kind == "segmentation":
        return image, target.as_subclass(Tensor)
    if kind == "detection":
        return image, {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v for k, v in target.items()}
    return image, target


def augment_sample(transform: v2.Transform, kind: str, image: Tensor, target):
    """Apply ``transform`` to one sample of the given kind; plain tensors in, plain tensors out.

    Args:
        image (Tensor[C, H, W]): the image.
        target: an int label, a mask ``Tensor[H, W]`` or a dict with ``boxes (Tensor[K, 4])`` and ``labels``.
    """
    return _unwrap(kind, *transform(*_wrap(kind, image, target)))


def augment_batch(transform: v2.Transform, kind: str, images, targets, *, seed: int):
    """Augment every sample of a batch, drawing from a generator seeded with ``seed`` (global state untouched).

    Args:
        images (Tensor[B, C, H, W] or list[Tensor[C, H, W]]): the images.
        targets (Tensor[B], Tensor[B, H, W] or list[dict]): labels, masks or box targets.

    Returns:
        ``(images, targets)`` of the same kinds (stacked again when given stacked).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pairs = [augment_sample(transform, kind, x, targets[i]) for i, x in enumerate(images)]
    new_images = [x for x, _ in pairs]
    new_targets = [y for _, y in pairs]
    if isinstance(images, Tensor):
        new_images = torch.stack(new_images)
    if isinstance(targets, Tensor):
        new_targets = torch.stack(new_targets) if kind == "segmentation" else targets.clone()
    return new_images, new_targets
