"""Augmentation as ``torchvision.transforms.v2`` transforms: masks, weight maps and boxes move with their images.

Two recipes (:func:`augmentation` picks one by name):

- ``"flip-shift"`` (:func:`flip_and_shift`): a random horizontal flip and a random shift of up to 1/14 of each side,
  zero-filled; the engine's ``augment`` for every data set but the nuclei.
- ``"unet"`` (:func:`unet_augmentation`): the U-Net paper's: random horizontal and vertical flips, a random multiple
  of 90 degrees and the elastic deformation of Ronneberger, Fischer and Brox (2015), section 3.1: "we generate smooth
  deformations using random displacement vectors on a coarse 3 by 3 grid. The displacements are sampled from a
  Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements are then computed using bicubic
  interpolation." (:class:`ElasticGrid` does exactly that; torchvision's ``v2.ElasticTransform`` is a different
  deformation, Simard et al. 2003: an independent random displacement per pixel, smoothed by a Gaussian of ``sigma``
  and scaled by ``alpha``.) The nuclei sets declare it (their ``augmentation`` attribute).

The transforms under them: :class:`RandomRot90` (a rotation by ``k * 90`` degrees, exact on images, masks and boxes;
with the two flips it covers the eight symmetries of a square) and :class:`ElasticGrid` (images bilinear or bicubic,
masks nearest, mirror padding outside the image; it refuses boxes, which cannot follow a non-rigid deformation
exactly). The pure functions under those: :func:`elastic_field` (per-pixel displacements from the coarse grid) and
:func:`elastic_warp` (resampling by a displacement field).

Applying a recipe to samples of each kind (:func:`augment_sample`, :func:`augment_batch`; plain tensors in and out):

- classification: ``(Image[C, H, W], label)``, the label passes through;
- segmentation: ``(Image, mask Tensor[H, W])`` or ``(Image, {name: Tensor[H, W]})`` (a class mask ``"mask"`` with a
  per-pixel ``"weight"``, ...). Pixels shifted in from outside the image get ``ignore_index`` in the class mask (0
  in other maps);
- detection: ``(Image, {"boxes": Tensor[K, 4] (x1, y1, x2, y2), "labels": Tensor[K], ...})``. With ``"masks"``
  (``Tensor[K, H, W]`` bool) the masks move with the image and each box is recomputed tight around its mask (``x2``,
  ``y2`` exclusive), so boxes follow any deformation exactly; without masks the boxes are transformed and clamped to
  the image. Either way an object left with less than one pixel of width or height is dropped with its label (and its
  ``difficult`` flag and mask).

Randomness comes from torch's global generator, as in every ``v2`` transform, so :func:`augment_batch` draws under a
forked generator seeded per call: the same seed gives the same augmentation, which the training engine needs for an
exact resume.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from convatlas.errors import InputTypeError

KINDS = ("classification", "segmentation", "detection")
AUGMENTATIONS = ("flip-shift", "unet")
IGNORE_INDEX = 255
ELASTIC_GRID = 3  # the U-Net paper's coarse grid: 3 x 3 displacement vectors
ELASTIC_SIGMA = 10.0  # their standard deviation in pixels
_PER_OBJECT = ("boxes", "labels", "difficult", "masks")  # detection target entries with one row per object


def _rot90_boxes(boxes: tv_tensors.BoundingBoxes, k: int) -> tv_tensors.BoundingBoxes:
    """Boxes of a ``k * 90``-degree counter-clockwise rotation (``torch.rot90`` over ``(H, W)``), exactly."""
    height, width = boxes.canvas_size
    xyxy = v2.functional.convert_bounding_box_format(
        boxes.as_subclass(Tensor), old_format=boxes.format, new_format=tv_tensors.BoundingBoxFormat.XYXY
    )
    for _ in range(k % 4):
        # A point (x, y) of a W-wide canvas goes to (y, W - x); the canvas becomes W high and H wide.
        x1, y1, x2, y2 = xyxy.unbind(-1)
        xyxy = torch.stack([y1, width - x2, y2, width - x1], dim=-1)
        height, width = width, height
    out = v2.functional.convert_bounding_box_format(
        xyxy, old_format=tv_tensors.BoundingBoxFormat.XYXY, new_format=boxes.format
    )
    return tv_tensors.BoundingBoxes(out, format=boxes.format, canvas_size=(height, width))


class RandomRot90(v2.Transform):
    """Rotate by ``k * 90`` degrees counter-clockwise, ``k`` drawn uniformly from ``{0, 1, 2, 3}`` per call.

    Images, videos, masks and plain tensors (``Tensor[..., H, W]``) are rotated with ``torch.rot90`` (no
    interpolation); ``BoundingBoxes`` are rotated exactly and get the rotated canvas size.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = params["k"]
        if isinstance(inpt, PIL.Image.Image):
            raise InputTypeError("RandomRot90: got a PIL image; convert it with v2.ToImage() first")
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return _rot90_boxes(inpt, k)
        if not isinstance(inpt, Tensor) or inpt.dim() < 2:
            raise InputTypeError(f"RandomRot90: need a Tensor[..., H, W], got {type(inpt).__name__}")
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(Tensor), k, dims=(-2, -1)), like=inpt)


def elastic_field(displacements: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-pixel displacements from the displacement vectors of a coarse grid, by bicubic interpolation.

    The ``g x g`` grid points sit at ``g`` evenly spaced rows and columns from the first pixel to the last (for
    ``g = 3``: the corners, the edge midpoints and the centre), so the field passes through the given vectors there.

    Args:
        displacements (Tensor[2, g_h, g_w]): ``(dx, dy)`` in pixels at the grid points.
        size: ``(H, W)`` of the image.

    Returns:
        Tensor[2, H, W]: ``(dx, dy)`` per pixel, in the dtype of ``displacements``.
    """
    if displacements.dim() != 3 or displacements.shape[0] != 2 or min(displacements.shape[1:]) < 2:
        raise ValueError(f"elastic_field: displacements must be Tensor[2, g_h, g_w] with g >= 2, got "
                         f"{tuple(displacements.shape)}")  # fmt: skip
    return F.interpolate(displacements[None], size=tuple(size), mode="bicubic", align_corners=True)[0]


def elastic_warp(x: Tensor, field: Tensor, *, mode: str = "bilinear") -> Tensor:
    """Resample ``x`` at ``p + field(p)`` for every pixel ``p`` (mirror padding outside the image).

    Args:
        x (Tensor[..., H, W]): the image or mask; integer tensors are resampled as floats and cast back, so masks
            should use ``mode="nearest"``.
        field (Tensor[2, H, W]): ``(dx, dy)`` displacements in pixels (:func:`elastic_field`).
        mode: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.

    Returns:
        Tensor[..., H, W] of the dtype of ``x``.
    """
    if mode not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"elastic_warp: mode must be 'bilinear', 'bicubic' or 'nearest', got {mode!r}")
    height, width = x.shape[-2:]
    if field.shape != (2, height, width):
        raise ValueError(f"elastic_warp: field must be Tensor[2, {height}, {width}], got {tuple(field.shape)}")
    lead = x.shape[:-2]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    flat = x.reshape(1, -1, height, width).to(work)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=work, device=x.device), torch.arange(width, dtype=work, device=x.device),
        indexing="ij",
    )  # fmt: skip
    field = field.to(device=x.device, dtype=work)
    # Normalised coordinates with align_corners=True: -1 and 1 are the centres of the first and last pixels.
    gx = 2 * (xs + field[0]) / max(width - 1, 1) - 1
    gy = 2 * (ys + field[1]) / max(height - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1)[None]
    out = F.grid_sample(flat, grid, mode=mode, padding_mode="reflection", align_corners=True)[0]
    if not x.is_floating_point():
        out = out.round()
    return out.to(x.dtype).reshape(*lead, height, width)


class ElasticGrid(v2.Transform):
    """The U-Net paper's elastic deformation: a random vector on a coarse grid, bicubic between the grid points.

    One field is drawn per call and applied to every image and mask of the sample, so they stay aligned.

    Args:
        grid: grid points per side (the paper's 3).
        sigma: standard deviation of each displacement component in pixels (the paper's 10).
        interpolation: resampling of images, ``"bilinear"`` or ``"bicubic"``; masks always use nearest.
    """

    def __init__(self, *, grid: int = ELASTIC_GRID, sigma: float = ELASTIC_SIGMA, interpolation: str = "bilinear"
                 ) -> None:  # fmt: skip
        super().__init__()
        if grid < 2:
            raise ValueError(f"ElasticGrid: grid must be >= 2 points per side, got {grid}")
        if sigma < 0:
            raise ValueError(f"ElasticGrid: sigma must be >= 0 pixels, got {sigma}")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"ElasticGrid: interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.grid, self.sigma, self.interpolation = int(grid), float(sigma), interpolation

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        if any(isinstance(x, tv_tensors.BoundingBoxes) for x in flat_inputs):
            raise InputTypeError(
                "ElasticGrid: boxes cannot follow an elastic deformation exactly; deform instance masks and take "
                "their boxes afterwards (convatlas.data.nuclei.targets_from_instances)"
            )

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # flat_inputs holds what this call transforms (v2 passes labels and other plain tensors through).
        sizes = {
            tuple(x.shape[-2:])
            for x in flat_inputs
            if isinstance(x, Tensor) and not isinstance(x, tv_tensors.BoundingBoxes) and x.dim() >= 2
        }
        if len(sizes) != 1:
            raise ValueError(f"ElasticGrid: every image and mask of a sample must have one size, got {sorted(sizes)}")
        size = sizes.pop()
        coarse = torch.randn(2, self.grid, self.grid) * self.sigma
        return {"field": elastic_field(coarse, size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            raise InputTypeError("ElasticGrid: got a PIL image; convert it with v2.ToImage() first")
        mode = "nearest" if isinstance(inpt, tv_tensors.Mask) else self.interpolation
        return tv_tensors.wrap(elastic_warp(inpt.as_subclass(Tensor), params["field"], mode=mode), like=inpt)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, sigma={self.sigma}, interpolation={self.interpolation!r}"


def unet_augmentation(*, elastic: bool = True, grid: int = ELASTIC_GRID, sigma: float = ELASTIC_SIGMA) -> v2.Compose:
    """Random horizontal and vertical flips, a random multiple of 90 degrees and (optionally) :class:`ElasticGrid`.

    Args:
        elastic: include the elastic deformation.
        grid, sigma: its grid points per side and displacement standard deviation in pixels (the paper's 3 and 10).
    """
    steps = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    if elastic:
        steps.append(ElasticGrid(grid=grid, sigma=sigma))
    return v2.Compose(steps)


def flip_and_shift(kind: str, *, max_shift: float = 1 / 14, ignore_index: int = IGNORE_INDEX) -> v2.Transform:
    """Random horizontal flip (p = 0.5) and a random shift of up to ``max_shift`` of each side, zero-filled.

    Args:
        kind: ``"classification"``, ``"segmentation"`` or ``"detection"`` (what the targets are).
        max_shift: the largest shift as a fraction of the width (horizontal) and height (vertical).
        ignore_index: the class-mask value of pixels shifted in from outside (segmentation; detection's instance
            masks get 0 there).
    """
    _check_kind("flip_and_shift", kind)
    if not 0 <= max_shift < 1:
        raise ValueError(f"flip_and_shift: max_shift must be in [0, 1), got {max_shift}")
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index if kind == "segmentation" else 0}
    return v2.Compose(
        [v2.RandomHorizontalFlip(p=0.5), v2.RandomAffine(degrees=0, translate=(max_shift, max_shift), fill=fill)]
    )


def augmentation(name: str, kind: str) -> v2.Transform:
    """A recipe by name: ``"flip-shift"`` (:func:`flip_and_shift`) or ``"unet"`` (:func:`unet_augmentation`).

    Raises:
        ValueError: an unknown name or kind.
    """
    _check_kind("augmentation", kind)
    if name == "flip-shift":
        return flip_and_shift(kind)
    if name == "unet":
        return unet_augmentation()
    raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")


def _check_kind(where: str, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")


def boxes_of_masks(masks: Tensor) -> Tensor:
    """The tight box of each non-empty mask, ``x2`` and ``y2`` exclusive (a one-pixel mask has a box 1 wide).

    Args:
        masks (Tensor[K, H, W]): bool.

    Returns:
        Tensor[K, 4] float32 (x1, y1, x2, y2); an empty mask gets ``(0, 0, 0, 0)``.
    """
    rows, cols = masks.any(2), masks.any(1)  # (K, H), (K, W)
    height, width = masks.shape[-2:]
    y1, x1 = rows.float().argmax(1), cols.float().argmax(1)
    y2, x2 = height - rows.flip(1).float().argmax(1), width - cols.flip(1).float().argmax(1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float().reshape(-1, 4)
    return torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def _segmentation(transform: v2.Transform, image: Tensor, target) -> tuple[Tensor, Any]:
    maps = target if isinstance(target, dict) else {"mask": target}
    out_image, out = transform(tv_tensors.Image(image), {k: tv_tensors.Mask(v) for k, v in maps.items()})
    out = {k: v.as_subclass(Tensor) for k, v in out.items()}
    return out_image.as_subclass(Tensor), out if isinstance(target, dict) else out["mask"]


def _detection(transform: v2.Transform, image: Tensor, target: dict) -> tuple[Tensor, dict]:
    size = tuple(image.shape[-2:])
    if "masks" in target:
        inputs = {k: v for k, v in target.items() if k != "boxes"}
        inputs["masks"] = tv_tensors.Mask(target["masks"])
        out_image, out = transform(tv_tensors.Image(image), inputs)
        out = {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v for k, v in out.items()}
        out["boxes"] = boxes_of_masks(out["masks"].bool())
        out["masks"] = out["masks"].bool()
    else:
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=size)
        out_image, out = transform(tv_tensors.Image(image), {**target, "boxes": boxes})
        out = {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v for k, v in out.items()}
        height, width = out_image.shape[-2:]
        limit = torch.tensor([width, height, width, height], dtype=out["boxes"].dtype)
        out["boxes"] = torch.minimum(out["boxes"].clamp(min=0), limit)
    boxes = out["boxes"]
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    for key in _PER_OBJECT:
        if key in out:
            out[key] = out[key][keep]
    return out_image.as_subclass(Tensor), {key: out[key] for key in target}


def augment_sample(transform: v2.Transform, kind: str, image: Tensor, target):
    """Apply ``transform`` to one sample of the given kind (see the module docstring); plain tensors in and out.

    Args:
        image (Tensor[C, H, W]): the image.
        target: an int label; a mask ``Tensor[H, W]`` or a dict of such maps; or a dict with ``boxes (Tensor[K, 4])``,
            ``labels (Tensor[K])`` and optionally ``masks (Tensor[K, H, W])`` and ``difficult (Tensor[K])``.

    Returns:
        ``(image, target)`` of the same kinds and keys.
    """
    _check_kind("augment_sample", kind)
    if kind == "segmentation":
        return _segmentation(transform, image, target)
    if kind == "detection":
        return _detection(transform, image, target)
    out_image, label = transform(tv_tensors.Image(image), target)
    return out_image.as_subclass(Tensor), label


def augment_batch(transform: v2.Transform, kind: str, images, targets, *, seed: int):
    """Augment every sample of a batch, drawing from a generator seeded with ``seed`` (global state untouched).

    Args:
        images (Tensor[B, C, H, W] or list[Tensor[C, H, W]]): the images.
        targets: ``Tensor[B]`` labels, ``Tensor[B, H, W]`` masks, a dict of ``Tensor[B, H, W]`` maps, or a list of
            per-image dicts (detection).

    Returns:
        ``(images, targets)`` of the same kinds (stacked again when given stacked).
    """
    if isinstance(targets, dict):
        per_sample = [{k: v[i] for k, v in targets.items()} for i in range(len(images))]
    else:
        per_sample = [targets[i] for i in range(len(images))]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pairs = [augment_sample(transform, kind, x, per_sample[i]) for i, x in enumerate(images)]
    new_images = [x for x, _ in pairs]
    new_targets = [y for _, y in pairs]
    if isinstance(images, Tensor):
        new_images = torch.stack(new_images)
    if isinstance(targets, dict):
        new_targets = {k: torch.stack([t[k] for t in new_targets]) for k in targets}
    elif isinstance(targets, Tensor):
        new_targets = torch.stack(new_targets) if kind == "segmentation" else targets.clone()
    return new_images, new_targets


__all__ = [
    "AUGMENTATIONS",
    "ELASTIC_GRID",
    "ELASTIC_SIGMA",
    "IGNORE_INDEX",
    "KINDS",
    "ElasticGrid",
    "RandomRot90",
    "augment_batch",
    "augment_sample",
    "augmentation",
    "boxes_of_masks",
    "elastic_field",
    "elastic_warp",
    "flip_and_shift",
    "unet_augmentation",
]
