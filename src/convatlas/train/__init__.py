"""The training engine: one loop for classification, segmentation, text and detection."""
