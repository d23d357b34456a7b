"""R-CNN, Fast R-CNN and Faster R-CNN: one composition, three sources of proposals.

=============  =======================================  ==============================================
detector       proposals                                region features
=============  =======================================  ==============================================
R-CNN          selective search                         each warped crop through its own CNN pass
Fast R-CNN     selective search                         RoI pooling on one shared backbone pass
Faster R-CNN   the region proposal network (learned)    RoI pooling on the same shared backbone pass
=============  =======================================  ==============================================

Each ``forward(images, targets=None)`` returns ``(losses, detections)``: the losses when targets are given (empty
otherwise) and the detections (unless ``detect=False``), in train and eval mode alike. Images are a list of
``Tensor[C, H, W]`` in ``[0, 1]`` (sizes may differ; they are padded to a common size) and targets a list of
``{"boxes": Tensor[K, 4], "labels": Tensor[K]}`` with (x1, y1, x2, y2) pixel boxes and labels in ``1..num_classes``;
``K`` may be 0 (an image without objects trains as all background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.detection.anchors import AnchorGenerator
from convatlas.detection.heads import RoIHeads, RoIPoolFeatures, WarpFeatures
from convatlas.detection.proposals import selective_search
from convatlas.detection.rpn import RegionProposalNetwork
from convatlas.errors import InputTypeError
from convatlas.models.registry import create_model, model_info, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pyramid_stages(feature_info: Sequence[dict]) -> list[int]:
    """The stages a feature pyramid is built on: every one of reduction 4 to 32 (P2 to P5)."""
    return [i for i, f in enumerate(feature_info) if 4 <= f["reduction"] <= 32]


def pyramid_strides(backbone: str, backbone_kwargs: dict | None = None) -> list[int]:
    """The strides of the pyramid levels :class:`Backbone` puts on the zoo model ``backbone`` (built on the meta
    device: nothing is allocated)."""
    with torch.device("meta"):
        info = _backbone_model(backbone, backbone_kwargs).feature_info
    return [info[i]["reduction"] for i in pyramid_stages(info)]


class Backbone(nn.Module):
    """Feature maps of a zoo image model, chosen from its declared ``feature_info``, with an optional pyramid.

    Args:
        model: a zoo image model with ``forward_stages`` and ``feature_info``.
        stages: indices into ``feature_info`` to return; default: the deepest stage with reduction <= 16 (the
            "C4" map of the Faster R-CNN paper), or with ``fpn`` every stage of reduction 4 to 32.
        fpn: add a feature pyramid (Lin et al. 2017): 1x1 lateral convolutions, top-down nearest upsampling and a
            3x3 output convolution per level, all with ``fpn_channels`` channels.
        fpn_channels: channels of the pyramid levels.
    """

    def __init__(self, model: nn.Module, *, stages: Sequence[int] | None = None, fpn: bool = False,
                 fpn_channels: int = 256):  # fmt: skip
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_stages"):
            raise InputTypeError(f"Backbone: {type(model).__name__} lacks feature_info/forward_stages; use a zoo model")
        if stages is None:
            if fpn:
                stages = pyramid_stages(info)
            else:
                stages = [max((i for i, f in enumerate(info) if f["reduction"] <= 16), default=len(info) - 1)]
        stages = [s % len(info) for s in stages]
        if not stages or any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
            raise ValueError(f"Backbone: stages must be increasing indices into feature_info, got {stages}")
        self.body, self.stages, self.fpn = model, stages, fpn
        self.strides = [info[s]["reduction"] for s in stages]
        channels = [info[s]["num_chs"] for s in stages]
        if fpn:
            self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, 1) for c in channels)
            self.output = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in channels)
            self.out_channels = fpn_channels
        else:
            if len(set(channels)) != 1:
                raise ValueError(f"Backbone: stages {stages} have different channels {channels}; use fpn=True")
            self.out_channels = channels[0]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[N, C, H, W]`` -> one ``Tensor[N, out_channels, H / s, W / s]`` per stride ``s`` in ``strides``."""
        all_stages = self.body.forward_stages(x)
        features = [all_stages[s] for s in self.stages]
        if not self.fpn:
            return features
        inner = self.lateral[-1](features[-1])
        out = [self.output[-1](inner)]
        for k in range(len(features) - 2, -1, -1):
            lateral = self.lateral[k](features[k])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            out.insert(0, self.output[k](inner))
        return out


def check_targets(targets: Sequence[dict], image_sizes: Sequence[tuple[int, int]], num_classes: int) -> None:
    """Reject malformed targets, naming the image and the box.

    Raises:
        ValueError: a missing key, a shape mismatch, a non-finite or degenerate box (``x1 >= x2`` or ``y1 >= y2``),
            or a label outside ``1..num_classes``.
    """
    if len(targets) != len(image_sizes):
        raise ValueError(f"targets: {len(targets)} entries for {len(image_sizes)} images")
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}]: need a dict with 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != (len(boxes),):
            raise ValueError(
                f"targets[{i}]: boxes must be Tensor[K, 4] and labels Tensor[K], got {tuple(boxes.shape)} and "
                f"{tuple(labels.shape)}"
            )
        bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            k = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"targets[{i}]: box {k} {tuple(round(v, 2) for v in boxes[k].tolist())} is degenerate: need finite "
                f"x1 < x2 and y1 < y2 (image {i} is {image_sizes[i][1]}x{image_sizes[i][0]})"
            )
        out = (labels < 1) | (labels > num_classes)
        if out.any():
            k = int(torch.nonzero(out)[0])
            raise ValueError(f"targets[{i}]: label {int(labels[k])} of box {k} is outside 1..{num_classes}")


class TwoStageDetector(nn.Module):
    """What the three detectors share: input batching and normalisation, target checks, the region heads."""

    roi_heads: RoIHeads

    def __init__(self, *, roi_heads: RoIHeads, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, size_divisible=32):
        super().__init__()
        self.roi_heads = roi_heads
        self.num_classes = roi_heads.num_classes
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1), persistent=False)
        self.size_divisible = size_divisible

    def batch_images(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise and zero-pad a list of ``Tensor[C, H, W]`` into ``Tensor[N, C, H', W']`` (multiples of 32)."""
        if isinstance(images, Tensor):
            images = list(images) if images.dim() == 4 else [images]
        if not images:
            raise ValueError("images: need at least one image")
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != len(self.image_mean):
                raise ValueError(f"images[{i}]: need Tensor[{len(self.image_mean)}, H, W], got shape {tuple(im.shape)}")
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisible
        h = -(-max(s[0] for s in sizes) // d) * d
        w = -(-max(s[1] for s in sizes) // d) * d
        batch = images[0].new_zeros(len(images), images[0].shape[0], h, w)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[1], : im.shape[2]] = (im - self.image_mean.to(im)) / self.image_std.to(im)
        return batch, sizes

    def prepare(self, images, targets):
        batch, sizes = self.batch_images(images)
        if targets is not None:
            check_targets(targets, sizes, self.num_classes)
            targets = [{"boxes": t["boxes"].to(batch), "labels": t["labels"].to(batch.device)} for t in targets]
        return batch, sizes, targets


class SelectiveSearchProposer(nn.Module):
    """Selective search as a proposal source (no parameters); see :func:`convatlas.detection.selective_search`."""

    def __init__(self, *, mode: str = "fast", max_proposals: int = 2000, seed: int = 0):
        super().__init__()
        self.mode, self.max_proposals, self.seed = mode, max_proposals, seed

    def forward(self, images: Sequence[Tensor]) -> list[Tensor]:
        """``list[Tensor[C, H, W]]`` in [0, 1] -> ``list[Tensor[P_i, 4]]`` (x1, y1, x2, y2)."""
        return [
            selective_search(im, mode=self.mode, seed=self.seed, max_proposals=self.max_proposals).to(im.device)
            for im in images
        ]


class _ExternalProposals(TwoStageDetector):
    """R-CNN and Fast R-CNN: proposals come from outside the network (selective search unless given)."""

    uses_backbone_features = True

    def __init__(self, *, backbone: nn.Module | None, proposer: nn.Module, roi_heads: RoIHeads, **kwargs):
        super().__init__(roi_heads=roi_heads, **kwargs)
        self.backbone, self.proposer = backbone, proposer

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict] | None = None,
        *,
        proposals: Sequence[Tensor] | None = None,
        detect: bool = True,
    ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Losses (given ``targets``) and detections.

        Args:
            images (list[Tensor[C, H, W]]): in [0, 1].
            targets: one ``{"boxes", "labels"}`` dict per image, or None.
            proposals (list[Tensor[P_i, 4]]): precomputed proposals (e.g. cached selective search); computed if None.
            detect: compute the detections (on all proposals).

        Returns:
            (dict[str, Tensor], list[dict[str, Tensor]]): losses and detections (``boxes``, ``scores``, ``labels``).
        """
        batch, sizes, targets = self.prepare(images, targets)
        if proposals is None:
            proposals = self.proposer(list(images))
        proposals = [p.to(batch) for p in proposals]
        source = self.backbone(batch) if self.backbone is not None else batch  # R-CNN: the heads read the pixels
        detections, losses = self.roi_heads(source, proposals, sizes, targets, detect=detect)
        return losses, detections


class RCNN(_ExternalProposals):
    """R-CNN (Girshick, Donahue, Darrell and Malik, CVPR 2014): a CNN pass per warped proposal.

    Args:
        proposer: the proposal source (selective search).
        roi_heads: :class:`RoIHeads` over :class:`WarpFeatures` (which holds the CNN).
    """

    def __init__(self, *, proposer: nn.Module, roi_heads: RoIHeads, **kwargs):
        if not isinstance(roi_heads.box_features, WarpFeatures):
            raise InputTypeError("RCNN: roi_heads.box_features must be WarpFeatures (a CNN pass per warped proposal)")
        super().__init__(backbone=None, proposer=proposer, roi_heads=roi_heads, **kwargs)


class FastRCNN(_ExternalProposals):
    """Fast R-CNN (Girshick, ICCV 2015): one backbone pass per image, RoI pooling of external proposals.

    Args:
        backbone: :class:`Backbone`.
        proposer: the proposal source (selective search).
        roi_heads: :class:`RoIHeads` over :class:`RoIPoolFeatures`.
    """

    def __init__(self, *, backbone: nn.Module, proposer: nn.Module, roi_heads: RoIHeads, **kwargs):
        super().__init__(backbone=backbone, proposer=proposer, roi_heads=roi_heads, **kwargs)


class FasterRCNN(TwoStageDetector):
    """Faster R-CNN (Ren, He, Girshick and Sun, NeurIPS 2015): the proposals come from an RPN on the same features.

    Args:
        backbone: :class:`Backbone`.
        rpn: :class:`RegionProposalNetwork`.
        roi_heads: :class:`RoIHeads` over :class:`RoIPoolFeatures`.
    """

    def __init__(self, *, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads, **kwargs):
        super().__init__(roi_heads=roi_heads, **kwargs)
        self.backbone, self.rpn = backbone, rpn

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict] | None = None, *, detect: bool = True
    ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Losses (given ``targets``) and detections; see :meth:`FastRCNN.forward` for the formats."""
        batch, sizes, targets = self.prepare(images, targets)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(features, self.backbone.strides, sizes, targets)
        detections, head_losses = self.roi_heads(features, proposals, sizes, targets, detect=detect)
        return {**rpn_losses, **head_losses}, detections


# --- builders -------------------------------------------------------------------------------------------------------


def _backbone_model(name: str, kwargs: dict | None) -> nn.Module:
    try:
        model_info(name)
    except ValueError as err:
        raise ValueError(f"backbone {name!r}: {err}") from None
    if model_info(name).task not in ("classification",):
        raise ValueError(f"backbone {name!r} is a {model_info(name).task} model; use an image classifier of the zoo")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise InputTypeError(f"backbone_kwargs must be a dict of keywords for {name}, got {type(kwargs).__name__} "
                             f"{kwargs!r}")  # fmt: skip
    model = create_model(name, **(kwargs or {}))
    if not getattr(model, "feature_info", None):
        raise ValueError(f"backbone {name!r} declares no feature_info")
    return model


@register_model(task="detection", input_size=(3, 224, 224))
def rcnn(
    *,
    num_classes: int = 20,
    backbone: str = "resnext50_32x4d",
    backbone_kwargs: dict | None = None,
    warp_size: int = 224,
    context: int = 16,
    max_proposals: int = 2000,
    batch_size_per_image: int = 128,
    nms_threshold: float = 0.3,
) -> RCNN:
    """R-CNN with a zoo CNN on warped proposals; fine-tuning samples 128 RoIs, a quarter with IoU >= 0.5."""
    features = WarpFeatures(_backbone_model(backbone, backbone_kwargs), warp_size=warp_size, context=context)
    heads = RoIHeads(
        features,
        num_classes=num_classes,
        background_iou=(0.0, 0.5),
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.25,
        nms_threshold=nms_threshold,
    )
    return RCNN(proposer=SelectiveSearchProposer(max_proposals=max_proposals), roi_heads=heads)


@register_model(task="detection", input_size=(3, 224, 224))
def fast_rcnn(
    *,
    num_classes: int = 20,
    backbone: str = "resnext50_32x4d",
    backbone_kwargs: dict | None = None,
    pool: str = "max",
    representation_size: int = 1024,
    max_proposals: int = 2000,
    batch_size_per_image: int = 64,
) -> FastRCNN:
    """Fast R-CNN: selective search, RoI max pooling to 7x7 on the C4 map, 64 RoIs per image with 25% foreground."""
    body = Backbone(_backbone_model(backbone, backbone_kwargs))
    features = RoIPoolFeatures(
        body.out_channels, strides=body.strides, pool=pool, representation_size=representation_size
    )
    heads = RoIHeads(
        features,
        num_classes=num_classes,
        background_iou=(0.1, 0.5),
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.25,
    )
    return FastRCNN(backbone=body, proposer=SelectiveSearchProposer(max_proposals=max_proposals), roi_heads=heads)


@register_model(task="detection", input_size=(3, 224, 224))
def faster_rcnn(
    *,
    num_classes: int = 20,
    backbone: str = "resnext50_32x4d",
    backbone_kwargs: dict | None = None,
    fpn: bool = False,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float] = (32.0, 64.0, 128.0, 256.0),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_shapes: Sequence[Sequence[tuple[float, float]]] | None = None,
    pool: str = "align",
    representation_size: int = 1024,
    rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
    rpn_post_nms_top_n: tuple[int, int] = (2000, 1000),
    batch_size_per_image: int = 512,
) -> FasterRCNN:
    """Faster R-CNN: RPN with ``anchor_sizes x aspect_ratios`` anchors (one size per level with ``fpn``), RoI align,
    512 RoIs per image with 25% foreground (the paper's 128 per image pair is also common: pass it).

    Small objects: use ``fpn=True``. The pyramid (Lin et al. 2017) gives the RPN and the RoI pooling maps of stride 4
    to 32 instead of the one stride-16 map, on which an object of 16 pixels is a single cell; pair it with anchors
    as small as the objects (``anchor_sizes=(16, 32, 64, 128)``) or with fitted ones.

    ``anchor_shapes`` replaces ``anchor_sizes x aspect_ratios`` by explicit ``(w, h)`` shapes per level, the same
    number on every level (one level without ``fpn``, one per pyramid level with it), for example anchors fitted to the
    training boxes (:func:`convatlas.detection.anchors.fit_anchors`): ``anchor_shapes=fit.per_level(4)``.
    """
    body = Backbone(_backbone_model(backbone, backbone_kwargs), fpn=fpn, fpn_channels=fpn_channels)
    if anchor_shapes is not None:
        levels = len(body.strides)
        if len(anchor_shapes) != levels:
            raise ValueError(f"faster_rcnn: anchor_shapes has {len(anchor_shapes)} levels, the backbone gives "
                             f"{levels} (fpn={fpn})")  # fmt: skip
        anchors = AnchorGenerator(shapes=anchor_shapes)
    elif fpn:
        if len(anchor_sizes) != len(body.strides):
            raise ValueError(f"faster_rcnn: with fpn, give one anchor size per level ({len(body.strides)}), "
                             f"got {len(anchor_sizes)}")  # fmt: skip
        anchors = AnchorGenerator(sizes=[(s,) for s in anchor_sizes], aspect_ratios=(tuple(aspect_ratios),))
    else:
        anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    rpn = RegionProposalNetwork(
        body.out_channels,
        anchor_generator=anchors,
        pre_nms_top_n=tuple(rpn_pre_nms_top_n),
        post_nms_top_n=tuple(rpn_post_nms_top_n),
    )
    features = RoIPoolFeatures(
        body.out_channels, strides=body.strides, pool=pool, representation_size=representation_size
    )
    heads = RoIHeads(features, num_classes=num_classes, batch_size_per_image=batch_size_per_image)
    return FasterRCNN(backbone=body, rpn=rpn, roi_heads=heads)
