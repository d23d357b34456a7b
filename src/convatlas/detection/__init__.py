"""The R-CNN lineage: proposals, anchors, RPN, heads, detectors and evaluation."""
