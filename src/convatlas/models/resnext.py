"""ResNeXt: Xie, Girshick, Dollar, Tu and He, "Aggregated Residual Transformations for Deep Neural Networks"
(CVPR 2017).

A ResNeXt block aggregates ``C`` (the *cardinality*) transformations of the same topology,
``F(x) = x + sum_{i=1..C} T_i(x)``, where each ``T_i`` is 1x1 (in -> d), 3x3 (d -> d), 1x1 (d -> out). The paper shows
(its Fig. 3) that this equals one bottleneck whose 3x3 convolution has ``C`` groups: the first 1x1 convolutions of the
branches concatenate into one 1x1 convolution to ``C * d`` channels, and the last ones, summed, are one 1x1 convolution
from ``C * d`` channels. This file builds the grouped form; ``tests/test_models_resnext.py`` checks it against the
explicit sum of ``C`` branches.

The layout (7x7 stem, 3x3 max-pool, four stages of bottlenecks with the stride on the 3x3, projection shortcuts with
batch norm) is the paper's Table 1 and torchvision's, so torchvision and timm weights load with :func:`load_weights`.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from convatlas.models.base import ImageModel
from convatlas.models.checks import MAX_BLOCKS, MAX_CHANNELS, check_int, check_ints, check_rate
from convatlas.models.registry import register_model
from convatlas.nn.layers import ClassifierHead, ConvNormAct


class Bottleneck(nn.Module):
    """The ResNeXt block in its grouped form: 1x1 -> grouped 3x3 (stride here) -> 1x1, plus the shortcut.

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, out_channels, H / stride, W / stride]
    """

    def __init__(self, in_channels: int, out_channels: int, *, width: int, groups: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, width, 1)
        self.conv2 = ConvNormAct(width, width, 3, stride=stride, groups=groups)
        self.conv3 = ConvNormAct(width, out_channels, 1, act=None)
        if stride != 1 or in_channels != out_channels:
            self.downsample = ConvNormAct(in_channels, out_channels, 1, stride=stride, act=None)
        else:
            self.downsample = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.downsample(x)
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.act(x + shortcut)


class ResNeXt(ImageModel):
    """ResNeXt with ``C = groups`` paths of width ``d = width_per_group`` in the first stage (doubled each stage).

    Args:
        depths: number of blocks in each of the four stages, ``(3, 4, 6, 3)`` for ResNeXt-50.
        groups: cardinality ``C``.
        width_per_group: bottleneck width ``d`` of one path in the first stage.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_channels: input image channels.
        drop_rate: dropout before the classifier.

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes]; ``forward_features`` gives
        Tensor[N, 2048, H/32, W/32] (sizes rounded up at each stride).
    """

    def __init__(
        self,
        *,
        depths: tuple[int, ...] = (3, 4, 6, 3),
        groups: int = 32,
        width_per_group: int = 4,
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        depths = check_ints(where, "depths", depths, length=4, high=MAX_BLOCKS)
        groups = check_int(where, "groups", groups)
        width_per_group = check_int(where, "width_per_group", width_per_group)
        # The last stage's 3x3 convolution is 8 times as wide as the first stage's groups * width_per_group.
        check_int(where, "groups * width_per_group", groups * width_per_group, high=MAX_CHANNELS // 8)
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        self.groups, self.width_per_group = groups, width_per_group

        self.stem = ConvNormAct(self.in_channels, 64, 7, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [{"num_chs": 64, "reduction": 2, "module": "stem"}]
        stages = []
        channels, reduction = 64, 4
        for i, depth in enumerate(depths):
            # Stage i has C paths of width d * 2^i and outputs 256 * 2^i channels (the paper's Table 1).
            width = groups * width_per_group * 2**i
            out_channels = 256 * 2**i
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(depth):
                blocks.append(
                    Bottleneck(channels, out_channels, width=width, groups=groups, stride=stride if j == 0 else 1)
                )
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": out_channels, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.trunk = ("stem", "pool", "stages")  # forward_features: stages(pool(stem(x)))
        self.num_features = channels
        self.head = ClassifierHead(channels, self.num_classes, drop_rate=drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Rename a torchvision or timm ResNeXt state dict (both use ``conv1``, ``layer1.0.bn2``, ``fc``) to ours."""
        out = {}
        for key, value in state_dict.items():
            new = re.sub(r"^conv1\.", "stem.0.", key)
            new = re.sub(r"^bn1\.", "stem.1.", new)
            new = re.sub(r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.", new)
            new = re.sub(r"\.conv(\d)\.weight$", r".conv\1.0.weight", new)
            new = re.sub(r"\.bn(\d)\.", r".conv\1.1.", new)
            new = re.sub(r"^fc\.", "head.fc.", new)
            out[new] = value
        return out


@register_model
def resnext50_32x4d(**kwargs) -> ResNeXt:
    """ResNeXt-50 (32x4d): 25,028,904 parameters (torchvision, timm)."""
    return ResNeXt(depths=(3, 4, 6, 3), groups=32, width_per_group=4, **kwargs)


@register_model
def resnext101_32x8d(**kwargs) -> ResNeXt:
    """ResNeXt-101 (32x8d): 88,791,336 parameters (torchvision, timm)."""
    return ResNeXt(depths=(3, 4, 23, 3), groups=32, width_per_group=8, **kwargs)
