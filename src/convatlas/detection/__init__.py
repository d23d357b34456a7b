"""The R-CNN lineage: proposals, anchors, RPN, heads, detectors and evaluation.

>>> from convatlas.models import create_model
>>> model = create_model("faster_rcnn", num_classes=10, backbone="mobilenet_v3_small")
>>> losses, detections = model(images, targets)
"""

from convatlas.detection.anchors import (
    AnchorFit,
    AnchorGenerator,
    anchor_coverage,
    fit_anchors,
    grid_coverage,
    match_boxes,
    sample_labels,
)
from convatlas.detection.detectors import (
    RCNN,
    Backbone,
    FasterRCNN,
    FastRCNN,
    SelectiveSearchProposer,
    TwoStageDetector,
    check_targets,
)
from convatlas.detection.evaluation import average_precision, coco_evaluate, voc_evaluate
from convatlas.detection.heads import BoxPredictor, RoIHeads, RoIPoolFeatures, WarpFeatures
from convatlas.detection.proposals import Strategy, selective_search
from convatlas.detection.rpn import RegionProposalNetwork, RPNHead

__all__ = [
    "RCNN",
    "AnchorFit",
    "AnchorGenerator",
    "Backbone",
    "BoxPredictor",
    "FastRCNN",
    "FasterRCNN",
    "RPNHead",
    "RegionProposalNetwork",
    "RoIHeads",
    "RoIPoolFeatures",
    "SelectiveSearchProposer",
    "Strategy",
    "TwoStageDetector",
    "WarpFeatures",
    "anchor_coverage",
    "average_precision",
    "check_targets",
    "coco_evaluate",
    "fit_anchors",
    "grid_coverage",
    "match_boxes",
    "sample_labels",
    "selective_search",
    "voc_evaluate",
]
