"""The one interface every image model of the zoo follows (timm's, so users of timm feel at home).

- ``forward_features(x)``: the backbone, ``Tensor[N, C, H, W] -> Tensor[N, C_last, H / r, W / r]``;
- ``forward_head(x, pre_logits=False)``: pooling and classifier, ``-> Tensor[N, num_classes]``;
- ``forward(x) = forward_head(forward_features(x))``;
- ``forward_stages(x)``: the output of each stage, one tensor per ``feature_info`` entry (U-Net and detection use it);
- ``feature_info``: ``[{"num_chs": C, "reduction": r, "module": "stages.0"}, ...]``, declared, checked by a test;
- ``num_classes``, ``in_channels`` and ``reset_classifier(num_classes)``.
"""

from __future__ import annotations

from torch import Tensor, nn


class ImageModel(nn.Module):
    """Base class of the zoo's image classifiers; subclasses set ``self.head`` and implement the two feature methods."""

    num_classes: int
    in_channels: int
    feature_info: list[dict]
    head: nn.Module

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it: features only)."""
        self.head.reset(num_classes)
        self.num_classes = num_classes
