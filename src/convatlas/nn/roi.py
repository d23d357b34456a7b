"""Thin modules over :mod:`convatlas.ops.roi`: they hold hyperparameters and call the operator.

Each ``forward`` is one call of a ``torch.fx`` leaf function, so ``torch.fx.symbolic_trace`` and
``torchvision.models.feature_extraction.create_feature_extractor`` record these modules as single nodes, as they do
torchvision's own ``RoIAlign``, ``RoIPool`` and ``MultiScaleRoIAlign``. They also compile with ``torch.jit.script``,
alone or inside a scripted model (typed hyperparameters, typed ``forward``); the operators they call run their Python
implementation from the compiled code, so a scripted model holding them runs in a Python process and cannot be saved
with ``torch.jit.save`` (see :mod:`convatlas.ops`).
"""

from collections.abc import Sequence

from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from convatlas.ops.roi import infer_scale, multi_scale_roi_align, roi_align, roi_pool
from convatlas.ops.tracing import fx_leaf

__all__ = ["MultiScaleRoIAlign", "RoIAlign", "RoIPool"]


class RoIAlign(nn.Module):
    """See :func:`convatlas.ops.roi.roi_align`."""

    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    backend: str

    def __init__(
        self,
        output_size: int | Sequence[int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.backend = backend

    def forward(self, input: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
        """input (Tensor[N, C, H, W]), boxes (Tensor[K, 5] or list of Tensor[L, 4]) -> Tensor[K, C, PH, PW]."""
        return roi_align(
            input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """See :func:`convatlas.ops.roi.roi_pool`."""

    spatial_scale: float
    backend: str

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float = 1.0, *, backend: str = "auto") -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.backend = backend

    def forward(self, input: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
        """input (Tensor[N, C, H, W]), boxes (Tensor[K, 5] or list of Tensor[L, 4]) -> Tensor[K, C, PH, PW]."""
        return roi_pool(input, boxes, self.output_size, self.spatial_scale, self.backend)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


@fx_leaf
def _pool_named_levels(
    x: dict[str, Tensor],
    boxes: list[Tensor],
    image_shapes: list[tuple[int, int]],
    featmap_names: list[str],
    output_size: BroadcastingList2[int],
    sampling_ratio: int,
    canonical_scale: float,
    canonical_level: int,
    aligned: bool,
    backend: str,
) -> Tensor:
    """:class:`MultiScaleRoIAlign`'s work in one traceable call: pick the named maps, infer their scales, pool.
    Written in TorchScript's subset, so a scripted :class:`MultiScaleRoIAlign` compiles it."""
    missing: list[str] = []
    for name in featmap_names:
        if name not in x:
            missing.append(name)
    if len(missing) > 0:
        raise ValueError(f"MultiScaleRoIAlign: feature maps {missing} not among the inputs {list(x.keys())}")
    if len(image_shapes) == 0:
        raise ValueError("MultiScaleRoIAlign: image_shapes must list at least one (height, width)")
    features = [x[name] for name in featmap_names]
    largest = [max([s[0] for s in image_shapes]), max([s[1] for s in image_shapes])]
    scales = [infer_scale(f.shape[-2:], largest) for f in features]
    return multi_scale_roi_align(
        features, boxes, output_size, scales, sampling_ratio, canonical_scale, canonical_level, aligned, backend
    )


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
        backend: as in :func:`convatlas.ops.roi.roi_align`.
    """

    featmap_names: list[str]
    sampling_ratio: int
    canonical_scale: float
    canonical_level: int
    aligned: bool
    backend: str

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int | Sequence[int],
        sampling_ratio: int = -1,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.backend = backend

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pool ``boxes`` from the feature maps ``x``.

        Args:
            x (dict of Tensor[N, C, H_l, W_l]): feature maps by name.
            boxes (list of Tensor[L, 4]): per-image boxes (x1, y1, x2, y2) in image pixels, x1 < x2, y1 < y2.
            image_shapes: ``(height, width)`` of each image before the backbone.

        Returns:
            Tensor[K, C, PH, PW]: pooled features in the order of the concatenated boxes.
        """
        return _pool_named_levels(
            x,
            boxes,
            image_shapes,
            self.featmap_names,
            self.output_size,
            self.sampling_ratio,
            self.canonical_scale,
            self.canonical_level,
            self.aligned,
            self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"
        )
