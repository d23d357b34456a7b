"""MobileNet v1, v2 and v3: convolutional networks for mobile devices built on depthwise convolutions.

- v1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications" (2017).
  Depthwise-separable convolutions (3x3 depthwise, BN, ReLU, 1x1 pointwise, BN, ReLU) and a width multiplier
  ``alpha`` that thins every layer.
- v2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018). Blocks expand a thin
  input ``t`` times with a 1x1 convolution, filter it with a 3x3 depthwise convolution and project it back with a
  *linear* 1x1 convolution; the residual connects the thin ends.
- v3: Howard et al., "Searching for MobileNetV3" (ICCV 2019). The v2 block plus squeeze-and-excitation with a
  hard-sigmoid gate, hard-swish activations, 5x5 kernels in places, and a cheaper head (pool first, then a 1x1
  layer to 1280 or 1024 features).

Every variant is one ``features`` sequence (stem, blocks, last 1x1 convolution), in the order of torchvision's, so
torchvision and timm weights load with :func:`convatlas.models.load_weights`.
"""

from __future__ import annotations

import functools
import re

from torch import Tensor, nn

from convatlas.models.base import ImageModel
from convatlas.models.checks import check_int, check_module_class, check_multiplier, check_rate
from convatlas.models.registry import register_model
from convatlas.nn.conv import SeparableConv2d
from convatlas.nn.layers import ClassifierHead, ConvNormAct, SqueezeExcite, make_divisible


class InvertedResidual(nn.Module):
    """MobileNet v2/v3 block: 1x1 expansion (skipped when it would not widen), depthwise conv, optional
    squeeze-and-excitation, linear 1x1 projection; a residual when the stride is 1 and the widths agree.

    Without expansion, v2's first block (depthwise-BN-ReLU6, pointwise-BN) is :class:`convatlas.nn.SeparableConv2d`
    with ``act=None``, but v3's put an SE between the two convolutions and some add a residual; v2 and v3 keep this
    one layout for every block, as torchvision's weights do.

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, out_channels, H / stride, W / stride]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expand_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: type[nn.Module] = nn.ReLU6,
        se: bool = False,
        norm: type[nn.Module] = nn.BatchNorm2d,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        self.out_channels = out_channels
        self.use_residual = stride == 1 and in_channels == out_channels
        if expand_channels != in_channels:
            self.expand = ConvNormAct(in_channels, expand_channels, 1, norm=norm, act=act)
        else:
            self.expand = nn.Identity()
        self.dw = ConvNormAct(
            expand_channels, expand_channels, kernel_size, stride=stride, groups=expand_channels, norm=norm, act=act
        )
        if se:
            # v3: squeeze to a quarter of the expanded width (rounded to 8), ReLU, hard-sigmoid gate.
            squeeze = make_divisible(expand_channels // 4, 8)
            self.se = SqueezeExcite(expand_channels, squeeze, act=nn.ReLU, gate=nn.Hardsigmoid)
        else:
            self.se = nn.Identity()
        self.project = ConvNormAct(expand_channels, out_channels, 1, norm=norm, act=None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        if self.use_residual:
            out = out + x
        return out


class MobileNetV3Head(nn.Module):
    """v3's head: global average pooling, a linear layer to ``hidden`` features, hard-swish, dropout, classifier.

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, num_classes]; with ``pre_logits=True``, Tensor[N, hidden].
    """

    def __init__(self, in_features: int, hidden: int, num_classes: int, *, drop_rate: float = 0.2):
        super().__init__()
        self.hidden = hidden
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.Hardswish(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.act(self.fc1(self.flatten(self.pool(x))))
        return x if pre_logits else self.fc(self.drop(x))


def _feature_info(features: nn.Sequential, strides: list[int]) -> list[dict]:
    """One entry per reduction: the last module of ``features`` before the next stride-2 module (timm's rule)."""
    info, reduction = [], 1
    for i, stride in enumerate(strides):
        reduction *= stride
        if i == len(strides) - 1 or strides[i + 1] > 1:
            info.append({"num_chs": features[i].out_channels, "reduction": reduction, "module": f"features.{i}"})
    return info


# timm's block parameter names -> ours, by block type (timm calls a block without expansion DepthwiseSeparableConv).
_TIMM_V1_BLOCK = {"conv_dw": "dw.0", "bn1": "dw.1", "conv_pw": "pw.0", "bn2": "pw.1"}
_TIMM_DS_BLOCK = {"conv_dw": "dw.0", "bn1": "dw.1", "se": "se", "conv_pw": "project.0", "bn2": "project.1"}
_TIMM_IR_BLOCK = {
    "conv_pw": "expand.0",
    "bn1": "expand.1",
    "conv_dw": "dw.0",
    "bn2": "dw.1",
    "se": "se",
    "conv_pwl": "project.0",
    "bn3": "project.1",
}
_TIMM_CONV_BLOCK = {"conv": "0", "bn1": "1"}
_TIMM_SE = {"conv_reduce": "fc1", "conv_expand": "fc2"}


def _rename(rest: str, table: dict[str, str]) -> str:
    """Replace the leading name of ``rest`` (``"bn1.weight"``) by its entry in ``table`` (``"dw.1.weight"``)."""
    head, _, tail = rest.partition(".")
    return f"{table[head]}.{tail}" if tail else table[head]


class MobileNet(ImageModel):
    """The part the three versions share: ``features`` (stem, blocks, last conv), a head, and weight conversion."""

    features: nn.Sequential
    # torchvision's classifier index -> our head's layer: v2 ``(Dropout, Linear)``; None: torchvision lacks the model.
    TORCHVISION_CLASSIFIER: dict[str, str] | None = {"1": "fc"}

    def _finish(self, strides: list[int], head: nn.Module) -> None:
        self.trunk = ("features",)  # forward_features: features(x)
        self.feature_info = _feature_info(self.features, strides)
        self.num_features = self.features[-1].out_channels
        self.head = head
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Rename a torchvision (``features.3.conv.1.0.weight``) or timm (``blocks.1.0.conv_dw.weight``) state dict."""
        if source == "timm":
            return self._convert_timm(state_dict)
        if self.TORCHVISION_CLASSIFIER is None:
            raise ValueError(f"{type(self).__name__} has no torchvision counterpart; load timm's with source='timm'")
        return self._convert_torchvision(state_dict)

    def _convert_torchvision(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        last = len(self.features) - 1
        for key, value in state_dict.items():
            m = re.match(r"features\.(\d+)\.(conv|block)\.(\d+)\.(.+)", key)
            if m is not None:
                block = self.features[int(m.group(1))]
                # torchvision's block is a sequence of its present parts; v2 splits the projection into conv and BN.
                parts = [name for name in ("expand", "dw", "se") if not isinstance(getattr(block, name), nn.Identity)]
                parts += ["project.0", "project.1"] if m.group(2) == "conv" else ["project"]
                key = f"features.{m.group(1)}.{parts[int(m.group(3))]}.{m.group(4)}"
            elif key.startswith("classifier."):
                # v2: classifier = (Dropout, Linear); v3: (Linear, Hardswish, Dropout, Linear).
                index, _, rest = key[len("classifier.") :].partition(".")
                key = f"head.{self.TORCHVISION_CLASSIFIER[index]}.{rest}"
            elif not key.startswith("features.0.") and not key.startswith(f"features.{last}."):
                raise ValueError(f"MobileNet.convert_state_dict: unexpected torchvision tensor {key!r}")
            out[key] = value
        return out

    def _convert_timm(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        # timm groups blocks in stages (blocks.<stage>.<block>); ours are one flat sequence after the stem.
        prefixes: list[str] = []
        for key in state_dict:
            m = re.match(r"blocks\.\d+\.\d+\.", key)
            if m is not None and m.group(0) not in prefixes:
                prefixes.append(m.group(0))
        last = len(self.features) - 1
        out = {}
        for key, value in state_dict.items():
            m = re.match(r"blocks\.\d+\.\d+\.", key)
            if m is not None:
                index = prefixes.index(m.group(0)) + 1
                block, rest = self.features[index], key[m.end() :]
                if isinstance(block, SeparableConv2d):
                    table = _TIMM_V1_BLOCK
                elif isinstance(block, InvertedResidual):
                    table = _TIMM_DS_BLOCK if isinstance(block.expand, nn.Identity) else _TIMM_IR_BLOCK
                else:
                    table = _TIMM_CONV_BLOCK
                new = _rename(rest, table)
                if new.startswith("se."):
                    new = "se." + _rename(new[3:], _TIMM_SE)
                key = f"features.{index}.{new}"
            elif key.startswith("conv_stem."):
                key = "features.0.0." + key[len("conv_stem.") :]
            elif key.startswith("bn1."):
                key = "features.0.1." + key[len("bn1.") :]
            elif key.startswith("conv_head.") and isinstance(self, MobileNetV3):
                # v3's head layer is a 1x1 convolution with bias in timm, a linear layer here.
                value = value.flatten(1) if value.ndim == 4 else value
                key = "head.fc1." + key[len("conv_head.") :]
            elif key.startswith("conv_head."):
                key = f"features.{last}.0." + key[len("conv_head.") :]
            elif key.startswith("bn2."):
                key = f"features.{last}.1." + key[len("bn2.") :]
            elif key.startswith("classifier."):
                key = "head.fc." + key[len("classifier.") :]
            else:
                raise ValueError(f"MobileNet.convert_state_dict: unexpected timm tensor {key!r}")
            out[key] = value
        return out


class MobileNetV1(MobileNet):
    """MobileNet v1: a 3x3/2 stem and 13 depthwise-separable blocks (the paper's Table 1), each the shared
    :class:`convatlas.nn.SeparableConv2d` with BatchNorm and the activation after both convolutions.

    Args:
        width_mult: the paper's width multiplier ``alpha`` (1.0, 0.75, 0.5, 0.25); channels are rounded to multiples
            of 8, which for these four values is exactly ``alpha * channels``.
        act: activation; ReLU6 as in the released TensorFlow/Keras models and timm (the paper writes ReLU).
        num_classes: classifier outputs (0: no classifier).
        in_channels: input image channels.
        drop_rate: dropout before the classifier.

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes]
    """

    TORCHVISION_CLASSIFIER = None
    # (output channels, stride) of the 13 depthwise-separable blocks.
    CONFIG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + ((1024, 2), (1024, 1))

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        act: type[nn.Module] = nn.ReLU6,
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        width_mult = check_multiplier(where, "width_mult", width_mult)
        act = check_module_class(where, "act", act)
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        channels = make_divisible(32 * width_mult, 8)
        layers: list[nn.Module] = [ConvNormAct(self.in_channels, channels, 3, stride=2, act=act)]
        strides = [2]
        for out, stride in self.CONFIG:
            out = make_divisible(out * width_mult, 8)
            # Depthwise 3x3 conv-BN-act, pointwise 1x1 conv-BN-act: the shared separable block.
            block = SeparableConv2d(
                channels, out, 3, stride=stride, dw_norm=nn.BatchNorm2d, dw_act=act, norm=nn.BatchNorm2d, act=act
            )
            layers.append(block)
            strides.append(stride)
            channels = out
        self.features = nn.Sequential(*layers)
        self._finish(strides, ClassifierHead(channels, self.num_classes, drop_rate=drop_rate))


class MobileNetV2(MobileNet):
    """MobileNet v2: a 3x3/2 stem, 17 inverted residual blocks and a 1x1 convolution to 1280 (the paper's Table 2).

    Args:
        width_mult: width multiplier; channels are rounded to multiples of 8 and the last layer never shrinks below
            1280 (torchvision's and timm's rule).
        num_classes: classifier outputs (0: no classifier).
        in_channels: input image channels.
        drop_rate: dropout before the classifier (0.2 as in torchvision).

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes]
    """

    # (expansion t, output channels c, repeats n, first stride s), the paper's Table 2.
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(
        self, *, width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3, drop_rate: float = 0.2
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        width_mult = check_multiplier(where, "width_mult", width_mult)
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        channels = make_divisible(32 * width_mult, 8)
        layers: list[nn.Module] = [ConvNormAct(self.in_channels, channels, 3, stride=2, act=nn.ReLU6)]
        strides = [2]
        for t, c, n, s in self.CONFIG:
            out = make_divisible(c * width_mult, 8)
            for i in range(n):
                stride = s if i == 0 else 1
                layers.append(
                    InvertedResidual(channels, out, expand_channels=channels * t, stride=stride, act=nn.ReLU6)
                )
                strides.append(stride)
                channels = out
        last = make_divisible(1280 * max(1.0, width_mult), 8)
        layers.append(ConvNormAct(channels, last, 1, act=nn.ReLU6))
        strides.append(1)
        self.features = nn.Sequential(*layers)
        self._finish(strides, ClassifierHead(last, self.num_classes, drop_rate=drop_rate))


class MobileNetV3(MobileNet):
    """MobileNet v3 (large or small): the architectures of the paper's Tables 1 and 2.

    Args:
        config: the blocks, as ``(kernel, expansion channels, output channels, SE, activation, stride)`` rows.
        last_channels: width of the head's hidden layer before width scaling (1280 large, 1024 small).
        width_mult: width multiplier (channels rounded to multiples of 8, as torchvision).
        num_classes: classifier outputs (0: no classifier).
        in_channels: input image channels.
        drop_rate: dropout before the classifier (0.2 as in torchvision).

    Batch norm uses ``eps=0.001, momentum=0.01`` as the paper's TensorFlow training did (torchvision too).

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes]
    """

    # torchvision's classifier is ``(Linear, Hardswish, Dropout, Linear)``.
    TORCHVISION_CLASSIFIER = {"0": "fc1", "3": "fc"}

    def __init__(
        self,
        *,
        config: tuple[tuple, ...],
        last_channels: int,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.2,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        width_mult = check_multiplier(where, "width_mult", width_mult)
        last_channels = check_int(where, "last_channels", last_channels)
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        norm = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        channels = make_divisible(16 * width_mult, 8)
        layers: list[nn.Module] = [ConvNormAct(self.in_channels, channels, 3, stride=2, norm=norm, act=nn.Hardswish)]
        strides = [2]
        for kernel, expand, out, se, act, stride in config:
            expand, out = make_divisible(expand * width_mult, 8), make_divisible(out * width_mult, 8)
            block = InvertedResidual(
                channels, out, expand_channels=expand, kernel_size=kernel, stride=stride, act=act, se=se, norm=norm
            )
            layers.append(block)
            strides.append(stride)
            channels = out
        layers.append(ConvNormAct(channels, 6 * channels, 1, norm=norm, act=nn.Hardswish))
        strides.append(1)
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(last_channels * width_mult, 8)
        self._finish(strides, MobileNetV3Head(6 * channels, hidden, self.num_classes, drop_rate=drop_rate))


_RE, _HS = nn.ReLU, nn.Hardswish
# (kernel, expansion channels, output channels, squeeze-excite, activation, stride): the paper's Table 1.
V3_LARGE = (
    (3, 16, 16, False, _RE, 1),
    (3, 64, 24, False, _RE, 2),
    (3, 72, 24, False, _RE, 1),
    (5, 72, 40, True, _RE, 2),
    (5, 120, 40, True, _RE, 1),
    (5, 120, 40, True, _RE, 1),
    (3, 240, 80, False, _HS, 2),
    (3, 200, 80, False, _HS, 1),
    (3, 184, 80, False, _HS, 1),
    (3, 184, 80, False, _HS, 1),
    (3, 480, 112, True, _HS, 1),
    (3, 672, 112, True, _HS, 1),
    (5, 672, 160, True, _HS, 2),
    (5, 960, 160, True, _HS, 1),
    (5, 960, 160, True, _HS, 1),
)
# The paper's Table 2.
V3_SMALL = (
    (3, 16, 16, True, _RE, 2),
    (3, 72, 24, False, _RE, 2),
    (3, 88, 24, False, _RE, 1),
    (5, 96, 40, True, _HS, 2),
    (5, 240, 40, True, _HS, 1),
    (5, 240, 40, True, _HS, 1),
    (5, 120, 48, True, _HS, 1),
    (5, 144, 48, True, _HS, 1),
    (5, 288, 96, True, _HS, 2),
    (5, 576, 96, True, _HS, 1),
    (5, 576, 96, True, _HS, 1),
)


@register_model
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """MobileNet v1 1.0-224: 4,231,976 parameters (timm), 4,253,864 with BN statistics (Keras)."""
    return MobileNetV1(**kwargs)


@register_model
def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNet v2 1.0: 3,504,872 parameters (torchvision, timm)."""
    return MobileNetV2(**kwargs)


@register_model
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNet v3 large 1.0: 5,483,032 parameters (torchvision, timm)."""
    return MobileNetV3(config=V3_LARGE, last_channels=1280, **kwargs)


@register_model
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNet v3 small 1.0: 2,542,856 parameters (torchvision, timm)."""
    return MobileNetV3(config=V3_SMALL, last_channels=1024, **kwargs)
