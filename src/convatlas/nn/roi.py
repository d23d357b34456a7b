"""Thin modules over :mod:`convatlas.ops.roi`: they hold hyperparameters and call the operator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from convatlas.ops.roi import infer_scale, multi_scale_roi_align, roi_align, roi_pool

__all__ = ["MultiScaleRoIAlign", "RoIAlign", "RoIPool"]


class RoIAlign(nn.Module):
    """See :func:`convatlas.ops.roi.roi_align`."""

    def __init__(
        self,
        output_size: int | Sequence[int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, boxes: Tensor | Sequence[Tensor]) -> Tensor:
        """input (Tensor[N, C, H, W]), boxes (Tensor[K, 5] or list of Tensor[L, 4]) -> Tensor[K, C, PH, PW]."""
        return roi_align(input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """See :func:`convatlas.ops.roi.roi_pool`."""

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, boxes: Tensor | Sequence[Tensor]) -> Tensor:
        """input (Tensor[N, C, H, W]), boxes (Tensor[K, 5] or list of Tensor[L, 4]) -> Tensor[K, C, PH, PW]."""
        return roi_pool(input, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class MultiScaleRoIAlign(nn.Module):
    """See :func:`convatlas.ops.roi.multi_scale_roi_align`; the call matches ``torchvision.ops.MultiScaleRoIAlign``.

    The scale of each named feature map is inferred on every call from its size and the largest image size
    (the nearest power of two of their ratio).

    Args:
        featmap_names: keys of the feature maps to pool from, finest first.
        output_size: ``(PH, PW)`` or one int.
        sampling_ratio: as in :func:`convatlas.ops.roi.roi_align`.
        canonical_scale: FPN's ``s0`` (224).
        canonical_level: FPN's ``k0`` (4).
        aligned: as in :func:`convatlas.ops.roi.roi_align`.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int | Sequence[int],
        sampling_ratio: int = -1,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned

    def forward(
        self, x: Mapping[str, Tensor], boxes: Sequence[Tensor], image_shapes: Sequence[tuple[int, int]]
    ) -> Tensor:
        """Pool ``boxes`` from the feature maps ``x``.

        Args:
            x (dict of Tensor[N, C, H_l, W_l]): feature maps by name.
            boxes (list of Tensor[L, 4]): per-image boxes (x1, y1, x2, y2) in image pixels, x1 < x2, y1 < y2.
            image_shapes: ``(height, width)`` of each image before the backbone.

        Returns:
            Tensor[K, C, PH, PW]: pooled features in the order of the concatenated boxes.
        """
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise ValueError(f"MultiScaleRoIAlign: feature maps {missing} not among the inputs {list(x)}")
        if not image_shapes:
            raise ValueError("MultiScaleRoIAlign: image_shapes must list at least one (height, width)")
        features = [x[name] for name in self.featmap_names]
        largest = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [infer_scale(f.shape[-2:], largest) for f in features]
        return multi_scale_roi_align(
            features,
            boxes,
            self.output_size,
            scales=scales,
            sampling_ratio=self.sampling_ratio,
            canonical_scale=self.canonical_scale,
            canonical_level=self.canonical_level,
            aligned=self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"
        )
