"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017).

The Inception hypothesis taken to its extreme: cross-channel and spatial correlations are mapped separately, by
depthwise-separable convolutions (a 3x3 depthwise then a 1x1 pointwise, no activation between them), arranged in
36 convolutional layers with residual connections, in three flows (the paper's Fig. 5):

- entry flow: two 3x3 convolutions (32, 64 channels, the first with stride 2, both unpadded), then three blocks
  (128, 256, 728 channels) of two separable convolutions and a 3x3 stride-2 max pool, with a 1x1 stride-2 shortcut;
- middle flow: eight blocks of three ReLU-separable-conv-BN units at 728 channels with identity shortcuts;
- exit flow: a block 728 -> 1024 with a pooled shortcut, separable convolutions to 1536 and 2048, global pooling,
  dropout 0.5 and the classifier.

With 1000 classes it has 22,855,952 parameters, the paper's Table 3 count (Keras' ``Xception`` reports the same as
its trainable parameters). The graph is that of timm's ``legacy_xception`` (max pools padded by 1 on each side,
where Keras pads "same", i.e. only at the bottom and right for even sizes), whose weights load with
:func:`convatlas.models.load_weights`. The default input is 299x299.
"""

from __future__ import annotations

import math
import re

from torch import Tensor, nn

from convatlas.models.base import ImageModel
from convatlas.models.checks import check_rate
from convatlas.models.registry import register_model
from convatlas.nn.conv import SeparableConv2d
from convatlas.nn.layers import ClassifierHead, ConvNormAct


class XceptionBlock(nn.Module):
    """``reps`` units of ReLU -> separable 3x3 -> BatchNorm, an optional max pool, plus a shortcut.

    Each unit is ``Sequential(ReLU, SeparableConv2d(norm=BatchNorm2d))``: the shared block of :mod:`convatlas.nn.conv`
    with nothing between its depthwise and pointwise convolutions, as in the paper.

    The shortcut is the identity when shapes match and a 1x1 convolution with BatchNorm otherwise. The leading ReLU
    sees the block input but the shortcut takes it before the ReLU, as in the paper's figure.

    Args:
        in_channels, out_channels: channels in and out.
        reps: number of separable-conv units.
        stride: 2 for a 3x3 stride-2 max pool at the end (and a strided shortcut), 1 for none.
        start_with_relu: False for the first block, which follows a ReLU already.
        grow_first: widen in the first unit (entry flow) or in the last one (exit flow).

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, ceil(H / stride), ceil(W / stride)]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ):
        super().__init__()
        self.start_with_relu = start_with_relu
        units = []
        for i in range(reps):
            if grow_first:
                cin, cout = (in_channels if i == 0 else out_channels), out_channels
            else:
                cin, cout = in_channels, (out_channels if i == reps - 1 else in_channels)
            # The first ReLU must leave the block input intact for the shortcut; later ones may work in place.
            act = nn.ReLU(inplace=i > 0) if (i > 0 or start_with_relu) else nn.Identity()
            units.append(nn.Sequential(act, SeparableConv2d(cin, cout, norm=nn.BatchNorm2d)))
        self.units = nn.Sequential(*units)
        self.pool = nn.MaxPool2d(3, stride, padding=1) if stride != 1 else nn.Identity()
        if in_channels != out_channels or stride != 1:
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride=stride, padding=0, act=None)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.units(x)) + self.shortcut(x)


class Xception(ImageModel):
    """Xception: entry, middle and exit flows (see the module docstring).

    Args:
        num_classes: classifier outputs; 0 for features only.
        in_channels: input channels.
        drop_rate: dropout before the classifier (0.5 in the paper's ImageNet runs).

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, num_classes], H, W >= 7; ``forward_features`` gives
        Tensor[N, 2048, H', W'] with H' = 10 for H = 299.
    """

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, drop_rate: float = 0.5):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        drop_rate = check_rate(type(self).__name__, "drop_rate", drop_rate)
        self.stem = nn.Sequential(
            ConvNormAct(self.in_channels, 32, 3, stride=2, padding=0),
            ConvNormAct(32, 64, 3, padding=0),
        )
        blocks = [
            XceptionBlock(64, 128, reps=2, stride=2, start_with_relu=False),
            XceptionBlock(128, 256, reps=2, stride=2),
            XceptionBlock(256, 728, reps=2, stride=2),
            *[XceptionBlock(728, 728, reps=3) for _ in range(8)],
            XceptionBlock(728, 1024, reps=2, stride=2, grow_first=False),
        ]
        self.blocks = nn.Sequential(*blocks)
        self.exit = nn.Sequential(
            SeparableConv2d(1024, 1536, norm=nn.BatchNorm2d, act=nn.ReLU),
            SeparableConv2d(1536, 2048, norm=nn.BatchNorm2d, act=nn.ReLU),
        )
        self.trunk = ("stem", "blocks", "exit")  # forward_features: exit(blocks(stem(x)))
        self.num_features = 2048
        self.head = ClassifierHead(2048, self.num_classes, drop_rate=drop_rate)
        # Outputs of the stem, of the entry-flow blocks 1 and 2, of the middle flow and of the exit flow.
        self.feature_info = [
            {"num_chs": 64, "reduction": 2, "module": "stem"},
            {"num_chs": 128, "reduction": 4, "module": "blocks.0"},
            {"num_chs": 256, "reduction": 8, "module": "blocks.1"},
            {"num_chs": 728, "reduction": 16, "module": "blocks.10"},
            {"num_chs": 2048, "reduction": 32, "module": "exit"},
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Rename a timm ``legacy_xception`` state dict to this model's names (torchvision has no Xception)."""
        if source != "timm":
            raise ValueError(f"load_weights: Xception has no {source} counterpart; use source='timm' (legacy_xception)")
        return {_rename_timm(key, self): value for key, value in state_dict.items()}


_TIMM_TOP = {"conv1": "stem.0.0", "bn1": "stem.0.1", "conv2": "stem.1.0", "bn2": "stem.1.1", "conv3": "exit.0",
             "bn3": "exit.0.pw.1", "conv4": "exit.1", "bn4": "exit.1.pw.1", "fc": "head.fc"}  # fmt: skip
# timm's SeparableConv2d names its convolutions conv1 (depthwise) and pointwise; ours are dw.0 and pw.0, and the
# BatchNorm that follows (a separate layer in timm) is pw.1.
_TIMM_SEPARABLE = {"conv1": "dw.0", "pointwise": "pw.0"}


def _rename_timm(key: str, model: Xception) -> str:
    """timm's blocks hold one flat ``rep`` list (ReLU, separable conv, BN, ...); ours group each three in a unit
    ``(ReLU, SeparableConv2d)`` whose block holds the BN as ``pw.1``."""
    if m := re.fullmatch(r"block(\d+)\.skip(bn)?\.(\w+)", key):
        return f"blocks.{int(m[1]) - 1}.shortcut.{1 if m[2] else 0}.{m[3]}"
    if m := re.fullmatch(r"block(\d+)\.rep\.(\d+)\.(.+)", key):
        block = int(m[1]) - 1
        if not 0 <= block < len(model.blocks):
            return key  # reported as unexpected by load_weights
        index = int(m[2]) + (0 if model.blocks[block].start_with_relu else 1)  # as if the leading ReLU were there
        unit, slot = divmod(index, 3)  # slot 1: separable conv, slot 2: its BatchNorm
        rest = m[3]
        if slot == 1:
            layer, _, param = rest.partition(".")
            rest = f"{_TIMM_SEPARABLE.get(layer, layer)}.{param}"
        elif slot == 2:
            rest = f"pw.1.{rest}"
        else:
            return key  # a ReLU has no tensors: reported as unexpected by load_weights
        return f"blocks.{block}.units.{unit}.1.{rest}"
    layer, _, rest = key.partition(".")
    if layer in ("conv3", "conv4"):
        sub, _, param = rest.partition(".")
        rest = f"{_TIMM_SEPARABLE.get(sub, sub)}.{param}"
    return f"{_TIMM_TOP.get(layer, layer)}.{rest}"


@register_model(input_size=(3, 299, 299))
def xception(**kwargs) -> Xception:
    return Xception(**kwargs)


__all__ = ["Xception", "XceptionBlock", "xception"]
