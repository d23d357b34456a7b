"""EfficientNet b0..b7 (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", 2019).

One baseline (b0, found by architecture search: MBConv blocks with squeeze-and-excitation and SiLU) and one rule,
compound scaling, that grows it: depth ``d = alpha^phi``, width ``w = beta^phi``, resolution ``r = gamma^phi`` with
``alpha * beta^2 * gamma^2 ~ 2`` (alpha 1.2, beta 1.1, gamma 1.15). The released variants round those powers to the
coefficients below; a variant's stage table is the b0 table with channels ``round_filters(c, w)`` (the nearest
multiple of 8, never more than 10% below ``c * w``) and repeats ``round_repeats(n, d) = ceil(n * d)``.

=========  =====  =====  ==========  =======
variant    width  depth  resolution  dropout
=========  =====  =====  ==========  =======
b0         1.0    1.0    224         0.2
b1         1.0    1.1    240         0.2
b2         1.1    1.2    260         0.3
b3         1.2    1.4    300         0.3
b4         1.4    1.8    380         0.4
b5         1.6    2.2    456         0.4
b6         1.8    2.6    528         0.5
b7         2.0    3.1    600         0.5
=========  =====  =====  ==========  =======

Stochastic depth drops residual branches with probability ``drop_path_rate * i / num_blocks`` for block ``i``
(0.2 at the last block, the paper's survival probability 0.8). Parameter counts equal torchvision's and timm's
``efficientnet_b*`` and their weights load with :func:`convatlas.models.load_weights`.
"""

from __future__ import annotations

import math
import re

from torch import Tensor, nn

from convatlas.models.base import ImageModel
from convatlas.models.checks import check_multiplier, check_rate
from convatlas.models.registry import register_model
from convatlas.nn.layers import ClassifierHead, ConvNormAct, DropPath, SqueezeExcite, make_divisible

# The b0 baseline (Table 1 of the paper): (expand ratio, kernel, stride, channels, repeats) per stage.
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
B0_STEM, B0_HEAD = 32, 1280
# Stages whose output is a feature_info entry: the last stage at each reduction (as timm declares them).
FEATURE_STAGES = (0, 1, 2, 4, 6)


def round_filters(channels: int, width_mult: float) -> int:
    """Channels of a scaled stage: ``channels * width_mult`` rounded to a multiple of 8 (at most 10% lost)."""
    return make_divisible(channels * width_mult, 8)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """Blocks of a scaled stage: ``ceil(repeats * depth_mult)``."""
    return int(math.ceil(repeats * depth_mult))


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNet v2) with squeeze-and-excitation, SiLU and stochastic depth.

    ``1x1 expand -> kxk depthwise (stride s) -> SE -> 1x1 linear project``, plus the input when the shapes match.
    The expansion is left out when ``expand_ratio == 1``; the SE bottleneck has ``in_channels // 4`` channels.

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, ceil(H / s), ceil(W / s)]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_path: float = 0.0,
    ):
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        self.expand = ConvNormAct(in_channels, mid, 1, act=nn.SiLU) if self.has_expand else nn.Identity()
        self.dw = ConvNormAct(mid, mid, kernel_size, stride=stride, groups=mid, act=nn.SiLU)
        self.se = SqueezeExcite(mid, max(1, in_channels // 4), act=nn.SiLU)
        self.project = ConvNormAct(mid, out_channels, 1, act=None)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.use_residual else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        if self.use_residual:
            out = x + self.drop_path(out)
        return out


class EfficientNet(ImageModel):
    """EfficientNet: the b0 stage table scaled by ``width_mult`` and ``depth_mult`` (see the module docstring).

    Args:
        width_mult: channel multiplier ``w`` (rounded per stage by :func:`round_filters`).
        depth_mult: depth multiplier ``d`` (rounded per stage by :func:`round_repeats`).
        num_classes: classifier outputs; 0 for features only.
        in_channels: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth probability of the last block (linear in the block index).

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, num_classes]; ``forward_features`` gives Tensor[N, C_head, H/32, W/32].
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        width_mult = check_multiplier(where, "width_mult", width_mult)
        depth_mult = check_multiplier(where, "depth_mult", depth_mult)
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        drop_path_rate = check_rate(where, "drop_path_rate", drop_path_rate)
        self.width_mult, self.depth_mult = width_mult, depth_mult

        stem_chs = round_filters(B0_STEM, width_mult)
        self.stem = ConvNormAct(self.in_channels, stem_chs, 3, stride=2, act=nn.SiLU)
        num_blocks = sum(round_repeats(n, depth_mult) for *_, n in B0_STAGES)
        stages, feature_info = [], []
        block_idx, chs, reduction = 0, stem_chs, 2
        for s, (expand, kernel, stride, out, repeats) in enumerate(B0_STAGES):
            out = round_filters(out, width_mult)
            blocks = []
            for i in range(round_repeats(repeats, depth_mult)):
                p = drop_path_rate * block_idx / num_blocks
                blocks.append(
                    MBConv(
                        chs,
                        out,
                        kernel_size=kernel,
                        stride=stride if i == 0 else 1,
                        expand_ratio=expand,
                        drop_path=p,
                    )
                )
                chs, block_idx = out, block_idx + 1
            reduction *= stride
            stages.append(nn.Sequential(*blocks))
            if s in FEATURE_STAGES:
                feature_info.append({"num_chs": out, "reduction": reduction, "module": f"stages.{s}"})
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
        self.num_features = 4 * round_filters(B0_STAGES[-1][3], width_mult)  # 1280 for b0
        self.head_conv = ConvNormAct(chs, self.num_features, 1, act=nn.SiLU)
        self.trunk = ("stem", "stages", "head_conv")  # forward_features: head_conv(stages(stem(x)))
        self.head = ClassifierHead(self.num_features, self.num_classes, drop_rate=drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Rename a torchvision or timm ``efficientnet_b*`` state dict to this model's names."""
        out = {}
        for key, value in state_dict.items():
            new = _rename_torchvision(key, self) if source == "torchvision" else _rename_timm(key, self)
            out[new] = value
        return out


def _has_expand(model: EfficientNet, stage: int, block: int) -> bool | None:
    """Whether our block ``stages.{stage}.{block}`` has an expansion conv; None when the model has no such block."""
    if stage >= len(model.stages) or block >= len(model.stages[stage]):
        return None
    return model.stages[stage][block].has_expand


def _block_parts(model: EfficientNet, stage: int, block: int) -> list[str] | None:
    """Our sub-module names of one MBConv in the order torchvision's ``block`` Sequential lists them."""
    has_expand = _has_expand(model, stage, block)
    if has_expand is None:
        return None
    parts = ["dw", "se", "project"]
    return ["expand", *parts] if has_expand else parts


def _rename_torchvision(key: str, model: EfficientNet) -> str:
    last = len(B0_STAGES) + 1
    if m := re.fullmatch(r"features\.0\.(.*)", key):
        return f"stem.{m[1]}"
    if m := re.fullmatch(rf"features\.{last}\.(.*)", key):
        return f"head_conv.{m[1]}"
    if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(.*)", key):
        stage, block = int(m[1]) - 1, int(m[2])
        parts = _block_parts(model, stage, block)
        if parts is None or int(m[3]) >= len(parts):
            return key  # a block we do not have (weights of a bigger variant): reported as unexpected
        return f"stages.{stage}.{block}.{parts[int(m[3])]}.{m[4]}"
    if m := re.fullmatch(r"classifier\.1\.(.*)", key):
        return f"head.fc.{m[1]}"
    return key  # left as is: load_weights reports it as unexpected


_TIMM_TOP = {"conv_stem": "stem.0", "bn1": "stem.1", "conv_head": "head_conv.0", "bn2": "head_conv.1"}
# timm's InvertedResidual (with expansion) and DepthwiseSeparableConv (without) name their layers differently.
_TIMM_EXPAND = {"conv_pw": "expand.0", "bn1": "expand.1", "conv_dw": "dw.0", "bn2": "dw.1", "conv_pwl": "project.0",
                "bn3": "project.1", "se.conv_reduce": "se.fc1", "se.conv_expand": "se.fc2"}  # fmt: skip
_TIMM_NO_EXPAND = {"conv_dw": "dw.0", "bn1": "dw.1", "conv_pw": "project.0", "bn2": "project.1",
                   "se.conv_reduce": "se.fc1", "se.conv_expand": "se.fc2"}  # fmt: skip


def _rename_timm(key: str, model: EfficientNet) -> str:
    if m := re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)", key):
        stage, block = int(m[1]), int(m[2])
        has_expand = _has_expand(model, stage, block)
        if has_expand is None:
            return key  # a block we do not have (weights of a bigger variant): reported as unexpected
        table = _TIMM_EXPAND if has_expand else _TIMM_NO_EXPAND
        return f"stages.{stage}.{block}.{table.get(m[3], m[3])}.{m[4]}"
    if m := re.fullmatch(r"classifier\.(\w+)", key):
        return f"head.fc.{m[1]}"
    layer, _, param = key.rpartition(".")
    return f"{_TIMM_TOP.get(layer, layer)}.{param}"


def _efficientnet_kwargs(drop_rate: float, kwargs: dict) -> dict:
    kwargs.setdefault("drop_rate", drop_rate)
    return kwargs


@register_model(input_size=(3, 224, 224))
def efficientnet_b0(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=1.0, depth_mult=1.0, **_efficientnet_kwargs(0.2, kwargs))


@register_model(input_size=(3, 240, 240))
def efficientnet_b1(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=1.0, depth_mult=1.1, **_efficientnet_kwargs(0.2, kwargs))


@register_model(input_size=(3, 260, 260))
def efficientnet_b2(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=1.1, depth_mult=1.2, **_efficientnet_kwargs(0.3, kwargs))


@register_model(input_size=(3, 300, 300))
def efficientnet_b3(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=1.2, depth_mult=1.4, **_efficientnet_kwargs(0.3, kwargs))


@register_model(input_size=(3, 380, 380))
def efficientnet_b4(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=1.4, depth_mult=1.8, **_efficientnet_kwargs(0.4, kwargs))


@register_model(input_size=(3, 456, 456))
def efficientnet_b5(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=1.6, depth_mult=2.2, **_efficientnet_kwargs(0.4, kwargs))


@register_model(input_size=(3, 528, 528))
def efficientnet_b6(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=1.8, depth_mult=2.6, **_efficientnet_kwargs(0.5, kwargs))


@register_model(input_size=(3, 600, 600))
def efficientnet_b7(**kwargs) -> EfficientNet:
    return EfficientNet(width_mult=2.0, depth_mult=3.1, **_efficientnet_kwargs(0.5, kwargs))


__all__ = ["EfficientNet", "MBConv", "round_filters", "round_repeats"] + [f"efficientnet_b{i}" for i in range(8)]
