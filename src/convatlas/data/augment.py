"""The U-Net paper's augmentation as ``torchvision.transforms.v2`` transforms: masks and boxes move with the image.

Ronneberger, Fischer and Brox (2015), section 3.1: "we generate smooth deformations using random displacement vectors
on a coarse 3 by 3 grid. The displacements are sampled from a Gaussian distribution with 10 pixels standard deviation.
Per-pixel displacements are then computed using bicubic interpolation." :class:`ElasticGrid` does exactly that.
torchvision's ``v2.ElasticTransform`` is a different deformation (Simard et al. 2003: an independent random
displacement per pixel, smoothed by a Gaussian of ``sigma`` and scaled by ``alpha``); it is not used here.

- :class:`RandomRot90`: a rotation by ``k * 90`` degrees, ``k`` uniform in ``{0, 1, 2, 3}``; exact on images, masks
  and boxes (with ``v2.RandomHorizontalFlip`` and ``v2.RandomVerticalFlip`` it covers the eight symmetries of a square).
- :class:`ElasticGrid`: the paper's elastic deformation of images (bilinear or bicubic) and masks (nearest), with
  mirror padding outside the image. Boxes cannot follow a non-rigid deformation exactly, so it rejects them: deform
  instance masks and take the boxes of the deformed masks (:func:`convatlas.data.nuclei.targets_from_instances`).
- :func:`unet_augmentation`: flips, 90-degree rotations and the elastic deformation, in that order.

The functions under them are pure: :func:`elastic_field` (the per-pixel displacements from the coarse grid) and
:func:`elastic_warp` (resampling by a displacement field).

Randomness comes from torch's global generator, as in every ``v2`` transform: seed it (for example under
``torch.random.fork_rng``) for repeatable draws.
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

    def __init__(self, *, grid: int = 3, sigma: float = 10.0, interpolation: str = "bilinear") -> None:
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


def unet_augmentation(*, elastic: bool = True, grid: int = 3, sigma: float = 10.0) -> v2.Compose:
    """Random horizontal and vertical flips, a random multiple of 90 degrees and (optionally) :class:`ElasticGrid`.

    Args:
        elastic: include the elastic deformation.
        grid, sigma: its grid points per side and displacement standard deviation in pixels (the paper's 3 and 10).
    """
    steps = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    if elastic:
        steps.append(ElasticGrid(grid=grid, sigma=sigma))
    return v2.Compose(steps)


__all__ = ["ElasticGrid", "RandomRot90", "elastic_field", "elastic_warp", "unet_augmentation"]
