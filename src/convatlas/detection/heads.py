"""Region heads shared by R-CNN, Fast R-CNN and Faster R-CNN.

The three detectors classify and refine the same kind of thing, a list of proposals per image; they differ only in
how a proposal becomes a feature vector:

- :class:`WarpFeatures` (R-CNN, Girshick et al. 2014): the proposal, dilated by 16 pixels of context, is cropped
  from the image, warped to 224x224 and run through a CNN of its own;
- :class:`RoIPoolFeatures` (Fast R-CNN, Girshick 2015, and Faster R-CNN): the proposal is pooled to 7x7 from the
  shared feature map (RoI max pooling or RoI align; on a feature pyramid, from the level its size selects) and
  passed through two fully connected layers.

:class:`RoIHeads` holds everything else once: proposal sampling for training, the box predictor (class scores and
class-specific deltas), the multi-task loss and the post-processing (decoding, clipping, per-class NMS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.detection.anchors import match_boxes, sample_labels
from convatlas.ops.boxes import batched_nms, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from convatlas.ops.roi import assign_levels, multi_scale_roi_align, roi_align, roi_pool


def _rois(proposals: Sequence[Tensor]) -> Tensor:
    """Per-image boxes -> ``Tensor[R, 5]`` rows ``(image index, x1, y1, x2, y2)``."""
    index = [torch.full((len(p), 1), i, dtype=p.dtype, device=p.device) for i, p in enumerate(proposals)]
    return torch.cat([torch.cat(index), torch.cat(list(proposals))], dim=1)


class RoIPoolFeatures(nn.Module):
    """Pool each proposal from the feature map(s) to a fixed grid, then two fully connected layers (Fast R-CNN).

    Args:
        in_channels: channels of the feature maps.
        strides: the stride of each feature map; several maps form a pyramid and each RoI is pooled from level
            ``k = floor(k0 + log2(sqrt(wh) / 224))`` clamped to the available levels (FPN's rule, ``k0`` = 4).
        output_size: the pooled grid (7 in the papers).
        pool: ``"align"`` (RoI align, bilinear, 2 samples per bin) or ``"max"`` (Fast R-CNN's RoI max pooling).
        representation_size: width of the two fully connected layers (4096 in the paper, 1024 in FPN).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        strides: Sequence[int],
        output_size: int = 7,
        pool: str = "align",
        representation_size: int = 1024,
    ):
        super().__init__()
        if pool not in ("align", "max"):
            raise ValueError(f"RoIPoolFeatures: pool must be 'align' or 'max', got {pool!r}")
        self.strides, self.output_size, self.pool = tuple(strides), output_size, pool
        self.fc6 = nn.Linear(in_channels * output_size * output_size, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = representation_size

    def forward(self, features: Sequence[Tensor], proposals: Sequence[Tensor]) -> Tensor:
        """``features (list[Tensor[N, C, H_l, W_l]])``, ``proposals (list[Tensor[R_i, 4]])`` -> ``Tensor[R, D]``."""
        proposals = [p.to(features[0].dtype) for p in proposals]
        scales = [1.0 / s for s in self.strides]
        if self.pool == "align":
            pooled = multi_scale_roi_align(features, proposals, self.output_size, scales=scales, sampling_ratio=2,
                                           aligned=True)  # fmt: skip
        elif len(features) == 1:
            pooled = roi_pool(features[0], proposals, self.output_size, scales[0])
        else:
            rois = _rois(proposals)
            k_min = round(math.log2(self.strides[0]))
            level = assign_levels(rois[:, 1:], k_min, k_min + len(features) - 1)
            pooled = rois.new_zeros(len(rois), features[0].shape[1], self.output_size, self.output_size)
            for k, (feature, scale) in enumerate(zip(features, scales, strict=True)):
                chosen = torch.nonzero(level == k).flatten()
                if len(chosen):
                    pooled[chosen] = roi_pool(feature, rois[chosen], self.output_size, scale)
        x = F.relu(self.fc6(pooled.flatten(1)))
        return F.relu(self.fc7(x))


class WarpFeatures(nn.Module):
    """R-CNN's region features: dilate each proposal for context, warp its pixels to a square, run a CNN on it.

    The box is dilated so that, once warped to ``warp_size``, ``context`` pixels of image surround it (16 of 224 in
    the paper). Warping is bilinear sampling of the box on a ``warp_size`` grid (RoI align on the image itself);
    outside the image the crop is zero (the image mean after normalisation).

    Args:
        cnn: a zoo image model (``forward_features`` and ``num_features``); its classifier is not used.
        warp_size: the side of the warped crop (224 in the paper).
        context: pixels of context around the box at the warped size (16 in the paper).
        chunk: crops run through the CNN per batch, to bound memory.
    """

    def __init__(self, cnn: nn.Module, *, warp_size: int = 224, context: int = 16, chunk: int = 256):
        super().__init__()
        if not 0 <= 2 * context < warp_size:
            raise ValueError(f"WarpFeatures: need 0 <= 2 * context < warp_size, got context={context}, {warp_size=}")
        self.cnn, self.warp_size, self.context, self.chunk = cnn, warp_size, context, chunk
        self.out_features = cnn.num_features

    def dilate(self, boxes: Tensor) -> Tensor:
        """``Tensor[R, 4]`` boxes grown about their centres by ``warp_size / (warp_size - 2 * context)``."""
        scale = self.warp_size / (self.warp_size - 2 * self.context)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
        return torch.cat([centre - half, centre + half], dim=1)

    def forward(self, images: Tensor, proposals: Sequence[Tensor]) -> Tensor:
        """``images (Tensor[N, C, H, W])`` (normalised), ``proposals (list[Tensor[R_i, 4]])`` -> ``Tensor[R, D]``."""
        rois = _rois([self.dilate(p) for p in proposals]).to(images.dtype)
        sizes = [min(self.chunk, len(rois) - start) for start in range(0, len(rois), self.chunk)]
        if len(sizes) > 1 and sizes[-1] == 1:  # batch norm in training needs more than one crop per pass
            sizes[-2:] = [sizes[-2] + 1]
        out = []
        for part in rois.split(sizes):
            crops = roi_align(images, part, self.warp_size, 1.0, 1, True)  # (r, C, S, S)
            if self.training and len(crops) == 1:
                crops = crops.expand(2, -1, -1, -1)  # a lone crop: run it twice so batch norm sees two values
            out.append(self.cnn.forward_features(crops).mean(dim=(2, 3))[: len(part)])
        if not out:
            return images.new_zeros(0, self.out_features)
        return torch.cat(out)


class BoxPredictor(nn.Module):
    """Class scores (``num_classes + 1`` with background 0) and class-specific box deltas from a region feature."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``Tensor[R, D]`` -> class logits ``Tensor[R, K+1]`` and deltas ``Tensor[R, (K+1)*4]``."""
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Sampling, region features, box predictor, multi-task loss and post-processing.

    Args:
        box_features: :class:`RoIPoolFeatures` or :class:`WarpFeatures` (anything mapping ``(source, proposals)``
            to ``Tensor[R, D]`` and declaring ``out_features``).
        num_classes: object classes, without the background.
        foreground_iou: proposals with IoU >= this are foreground (0.5 in all three papers).
        background_iou: ``(low, high)``: IoU in ``[low, high)`` is background (Fast R-CNN: ``(0.1, 0.5)``; R-CNN and
            Faster R-CNN: ``(0.0, 0.5)``); below ``low`` is not sampled.
        batch_size_per_image, positive_fraction: the RoI sample per image (Fast R-CNN: 64 and 0.25; R-CNN: 128 and
            0.25 over a batch).
        box_weights: the box coding weights ``(w_x, w_y, w_w, w_h)``.
        score_threshold, nms_threshold, detections_per_image: post-processing.
        add_gt_as_proposals: add the ground-truth boxes to the proposals when training (as all three papers do).
    """

    def __init__(
        self,
        box_features: nn.Module,
        *,
        num_classes: int,
        foreground_iou: float = 0.5,
        background_iou: tuple[float, float] = (0.0, 0.5),
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        add_gt_as_proposals: bool = True,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"RoIHeads: num_classes must be >= 1, got {num_classes}")
        self.box_features = box_features
        self.box_predictor = BoxPredictor(box_features.out_features, num_classes)
        self.num_classes = num_classes
        self.foreground_iou, self.background_iou = foreground_iou, background_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.box_weights = box_weights
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = detections_per_image
        self.add_gt_as_proposals = add_gt_as_proposals

    def sample(self, proposals: Sequence[Tensor], targets: Sequence[dict]) -> tuple[list[Tensor], Tensor, Tensor]:
        """Training RoIs per image with their class labels and regression targets.

        Returns:
            (list[Tensor[S_i, 4]], Tensor[S], Tensor[S, 4]): the sampled proposals, their labels (0 = background)
            and the encoded ground-truth boxes (zeros for background).
        """
        sampled, labels, goals = [], [], []
        for boxes, target in zip(proposals, targets, strict=True):
            gt = target["boxes"].to(boxes)
            if self.add_gt_as_proposals:
                boxes = torch.cat([boxes, gt])
            low, high = self.background_iou
            matches = match_boxes(boxes, gt, high=self.foreground_iou, low=high, min_low=low)
            pos, neg = sample_labels(
                matches.cpu(), batch_size=self.batch_size_per_image, positive_fraction=self.positive_fraction
            )
            pos, neg = pos.to(boxes.device), neg.to(boxes.device)
            chosen = torch.cat([pos, neg])
            label = torch.zeros(len(chosen), dtype=torch.int64, device=boxes.device)
            goal = torch.zeros(len(chosen), 4, dtype=boxes.dtype, device=boxes.device)
            if len(pos):
                label[: len(pos)] = target["labels"].to(boxes.device)[matches[pos]]
                goal[: len(pos)] = encode_boxes(gt[matches[pos]], boxes[pos], self.box_weights).to(boxes.dtype)
            sampled.append(boxes[chosen])
            labels.append(label)
            goals.append(goal)
        return sampled, torch.cat(labels), torch.cat(goals)

    def loss(self, logits: Tensor, deltas: Tensor, labels: Tensor, goals: Tensor) -> dict[str, Tensor]:
        """Fast R-CNN's multi-task loss: cross-entropy plus smooth L1 on the true class's deltas of foreground RoIs,
        both averaged over the sampled RoIs."""
        loss_cls = F.cross_entropy(logits, labels) if len(labels) else logits.sum() * 0.0
        fg = torch.nonzero(labels > 0).flatten()
        deltas = deltas.reshape(len(deltas), self.num_classes + 1, 4)[fg, labels[fg]]
        loss_box = F.smooth_l1_loss(deltas, goals[fg].to(deltas), beta=1.0, reduction="sum") / max(len(labels), 1)
        return {"loss_classifier": loss_cls, "loss_box": loss_box}

    def postprocess(
        self, logits: Tensor, deltas: Tensor, proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image: softmax scores, class-specific decoding, clipping, score threshold, per-class NMS, top-k."""
        scores_all = F.softmax(logits.float(), dim=-1)
        deltas_all = deltas.float().reshape(len(deltas), self.num_classes + 1, 4)
        out = []
        for boxes, scores, d, size in zip(
            proposals,
            scores_all.split([len(p) for p in proposals]),
            deltas_all.split([len(p) for p in proposals]),
            image_sizes,
            strict=True,
        ):
            k = scores.shape[1]
            decoded = clip_boxes(decode_boxes(d, boxes.float()[:, None, :].expand(-1, k, -1), self.box_weights), size)
            labels = torch.arange(k, device=boxes.device).expand(len(boxes), k)
            decoded = decoded[:, 1:].reshape(-1, 4)  # drop the background column
            scores, labels = scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.nonzero(scores > self.score_threshold).flatten()
            decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(decoded, 1e-2)
            decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
            keep = batched_nms(decoded, scores, labels, self.nms_threshold)[: self.detections_per_image]
            out.append({"boxes": decoded[keep], "scores": scores[keep], "labels": labels[keep]})
        return out

    def forward(
        self,
        source,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict] | None = None,
        *,
        detect: bool = True,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections and, given targets, the losses.

        Args:
            source: what ``box_features`` reads: the feature maps (Fast/Faster R-CNN) or the images (R-CNN).
            proposals (list[Tensor[R_i, 4]]): (x1, y1, x2, y2) per image.
            image_sizes: ``(H, W)`` per image.
            targets: one dict per image with ``boxes (Tensor[K, 4])`` and ``labels (Tensor[K])`` in 1..num_classes.
            detect: also compute detections (on all proposals); off saves time in a training loop.

        Returns:
            (list[dict], dict): detections ``{"boxes" Tensor[D, 4], "scores" Tensor[D], "labels" Tensor[D]}`` per
            image (empty list when ``detect`` is off) and ``{"loss_classifier", "loss_box"}`` (empty without targets).
        """
        losses = {}
        if targets is not None:
            sampled, labels, goals = self.sample(proposals, targets)
            logits, deltas = self.box_predictor(self.box_features(source, sampled))
            losses = self.loss(logits, deltas, labels, goals)
        detections = []
        if detect:
            with torch.set_grad_enabled(torch.is_grad_enabled() and targets is None):
                logits, deltas = self.box_predictor(self.box_features(source, proposals))
            detections = self.postprocess(logits, deltas, proposals, image_sizes)
        return detections, losses
