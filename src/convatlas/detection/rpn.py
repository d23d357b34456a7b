"""The region proposal network of Faster R-CNN (Ren, He, Girshick and Sun, NeurIPS 2015).

A 3x3 convolution slides over each feature map; two sibling 1x1 convolutions predict, for each of the ``A`` anchors
of a cell, an objectness logit and box deltas ``(t_x, t_y, t_w, t_h)``. Proposals are the decoded anchors: the
top-n by objectness per level, clipped, tiny ones dropped, NMS at 0.7, the top-n again. Training samples 256 anchors
per image, at most half positive (IoU >= 0.7, or the best anchor of a ground-truth box), negatives below 0.3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.detection.anchors import AnchorGenerator, match_boxes, sample_labels
from convatlas.ops.boxes import batched_nms, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes


class RPNHead(nn.Module):
    """The RPN's convolutional head, shared by all feature levels.

    Args:
        in_channels: channels of the feature maps.
        num_anchors: anchors per location ``A``.
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness ``Tensor[N, H*W*A]`` and deltas ``Tensor[N, H*W*A, 4]`` (cell-major, like anchors)."""
        objectness, deltas = [], []
        for x in features:
            n, _, h, w = x.shape
            t = F.relu(self.conv(x))
            objectness.append(self.objectness(t).permute(0, 2, 3, 1).reshape(n, -1))  # (N, A, H, W) -> (N, H*W*A)
            d = self.deltas(t).reshape(n, -1, 4, h, w)  # (N, A*4, H, W) -> (N, A, 4, H, W)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return objectness, deltas


class RegionProposalNetwork(nn.Module):
    """Anchors, the RPN head, proposal selection and the RPN losses.

    Args:
        in_channels: channels of the backbone's feature maps.
        anchor_generator: anchors per level (default: sizes 32..256 at ratios 0.5, 1, 2 on one map).
        pre_nms_top_n, post_nms_top_n: proposals kept per level before NMS and per image after it,
            ``(training, testing)``.
        nms_threshold: NMS IoU of proposals (the paper's 0.7).
        positive_iou, negative_iou: anchor labelling thresholds (0.7 and 0.3).
        batch_size_per_image, positive_fraction: the anchor sample (256, half positive).
        min_size: proposals narrower or shorter than this (pixels) are dropped.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        anchor_generator: AnchorGenerator | None = None,
        pre_nms_top_n: tuple[int, int] = (2000, 1000),
        post_nms_top_n: tuple[int, int] = (2000, 1000),
        nms_threshold: float = 0.7,
        positive_iou: float = 0.7,
        negative_iou: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        min_size: float = 1e-3,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator(sizes=((32.0, 64.0, 128.0, 256.0),))
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location()[0])
        if len(set(self.anchor_generator.num_anchors_per_location())) != 1:
            raise ValueError("RegionProposalNetwork: every level must have the same number of anchors per location")
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_threshold = nms_threshold
        self.positive_iou, self.negative_iou = positive_iou, negative_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.min_size = min_size

    def forward(
        self,
        features: Sequence[Tensor],
        strides: Sequence[int],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals per image, and the RPN losses when ``targets`` are given.

        Args:
            features (list[Tensor[N, C, H_l, W_l]]): the feature maps.
            strides: the stride of each feature map.
            image_sizes: ``(H, W)`` of each (unpadded) image.
            targets: one dict per image with ``boxes (Tensor[K, 4])``.

        Returns:
            (list[Tensor[P_i, 4]], dict): proposals (x1, y1, x2, y2) per image, and
            ``{"loss_objectness", "loss_rpn_box"}`` (empty without targets).
        """
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator([f.shape[-2:] for f in features], strides, device=features[0].device)
        mode = 0 if self.training else 1
        proposals = []
        for i, size in enumerate(image_sizes):
            boxes, scores, levels = [], [], []
            for level, (obj, d, a) in enumerate(zip(objectness, deltas, anchors, strict=True)):
                score = obj[i].detach()
                top = score.topk(min(self.pre_nms_top_n[mode], len(score))).indices
                boxes.append(clip_boxes(decode_boxes(d[i, top].detach(), a[top]), size))
                scores.append(score[top])
                levels.append(torch.full_like(top, level))
            boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes, scores.float(), levels, self.nms_threshold)[: self.post_nms_top_n[mode]]
            proposals.append(boxes[keep])
        losses = {} if targets is None else self.loss(objectness, deltas, anchors, targets)
        return proposals, losses

    def loss(self, objectness, deltas, anchors, targets) -> dict[str, Tensor]:
        """Binary cross-entropy on the sampled anchors and smooth L1 (beta 1/9) on the positive ones, both averaged
        over the sampled anchors (as in the paper's normalisation by the mini-batch size)."""
        anchors = torch.cat(anchors)
        objectness = torch.cat(objectness, dim=1)
        deltas = torch.cat(deltas, dim=1)
        obj_losses, box_losses = [], []
        for i, target in enumerate(targets):
            matches = match_boxes(
                anchors, target["boxes"], high=self.positive_iou, low=self.negative_iou, allow_low_quality=True
            )
            pos, neg = sample_labels(
                matches.cpu(), batch_size=self.batch_size_per_image, positive_fraction=self.positive_fraction
            )
            pos, neg = pos.to(anchors.device), neg.to(anchors.device)
            sampled = torch.cat([pos, neg])
            labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(objectness)
            obj_losses.append(F.binary_cross_entropy_with_logits(objectness[i, sampled], labels, reduction="sum"))
            if len(pos):
                goal = encode_boxes(target["boxes"][matches[pos]].to(anchors), anchors[pos])
                box_losses.append(F.smooth_l1_loss(deltas[i, pos], goal.to(deltas), beta=1 / 9, reduction="sum"))
            else:
                box_losses.append(deltas[i].sum() * 0.0)
            obj_losses[-1] = obj_losses[-1] / max(len(sampled), 1)
            box_losses[-1] = box_losses[-1] / max(len(sampled), 1)
        return {
            "loss_objectness": torch.stack(obj_losses).mean(),
            "loss_rpn_box": torch.stack(box_losses).mean(),
        }
