"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022): a ResNet modernised step by step towards a Swin.

A 4x4 stride-4 "patchify" stem; four stages of blocks at reductions 4, 8, 16, 32 with LayerNorm + 2x2 stride-2
convolutions between them (odd sizes padded to even first, see :class:`Downsample`); each block is
``7x7 depthwise conv -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C)`` (an inverted bottleneck), scaled per
channel by a learned layer scale ``gamma`` initialised to 1e-6, and added to the input through stochastic depth.
The head pools globally, normalises and classifies. Parameter counts equal torchvision's and timm's ``convnext_*``
and their weights load with :func:`convatlas.models.load_weights`.
"""

from __future__ import annotations

import re

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.models.base import ImageModel
from convatlas.models.checks import MAX_BLOCKS, MAX_CHANNELS, check_float, check_ints, check_rate
from convatlas.models.registry import register_model
from convatlas.nn.layers import ClassifierHead, DropPath, LayerNorm2d

LN_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block: ``x + drop_path(gamma * fc2(gelu(fc1(norm(dwconv7x7(x))))))``.

    The LayerNorm and the two linear layers work channels-last, ``(N, H, W, C)``, as in the paper.

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, C, H, W]
    """

    def __init__(self, dim: int, *, drop_path: float = 0.0, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))  # back to (N, C, H, W)


def pad_to_even(x: Tensor) -> Tensor:
    """Zero-pad one row / column at the bottom / right of a map whose height / width is odd.

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, C, H + H % 2, W + W % 2]
    """
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if pad_h == 0 and pad_w == 0:
        return x  # the usual case: no copy
    return F.pad(x, (0, pad_w, 0, pad_h))


torch.fx.wrap("pad_to_even")  # a leaf for torch.fx: the padding depends on the size at call time


class Downsample(nn.Module):
    """LayerNorm then a 2x2 stride-2 convolution, between stages.

    An odd size is first padded at the bottom / right (``ceil(H / 2)`` out), so that small inputs such as 28x28 get
    through all four stages; torchvision and timm drop the last row instead. Even sizes are unaffected.

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, ceil(H / 2), ceil(W / 2)]
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = LayerNorm2d(in_dim, eps=LN_EPS)
        self.conv = nn.Conv2d(in_dim, out_dim, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_to_even(self.norm(x)))


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm, 2x2 stride-2 conv) followed by ``depth`` blocks.

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, H / 2, W / 2] (H, W unchanged for the first stage).
    """

    def __init__(
        self, in_dim: int, out_dim: int, depth: int, *, downsample: bool, drop_paths: list[float], layer_scale: float
    ):
        super().__init__()
        if downsample:
            self.downsample = Downsample(in_dim, out_dim)
        else:
            self.downsample = nn.Identity()
        blocks = [ConvNeXtBlock(out_dim, drop_path=drop_paths[i], layer_scale=layer_scale) for i in range(depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(ImageModel):
    """ConvNeXt with stage depths ``depths`` and widths ``dims``.

    Args:
        depths: blocks per stage, e.g. (3, 3, 9, 3) for tiny.
        dims: channels per stage, e.g. (96, 192, 384, 768) for tiny.
        num_classes: classifier outputs; 0 for features only.
        in_channels: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth probability, rising linearly from 0 at the first block to this at the last.
        layer_scale: initial value of the per-channel scale ``gamma`` (0 disables it).

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, num_classes]; ``forward_features`` gives Tensor[N, dims[-1], H/32, W/32].
    """

    def __init__(
        self,
        *,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        layer_scale: float = 1e-6,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        depths = check_ints(where, "depths", depths, high=MAX_BLOCKS)
        # The blocks' inverted bottleneck is 4 times as wide as the stage.
        dims = check_ints(
            where, "dims", dims, length=len(depths), high=MAX_CHANNELS // 4, note=" (one per entry of depths)"
        )
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        drop_path_rate = check_rate(where, "drop_path_rate", drop_path_rate)
        layer_scale = check_float(where, "layer_scale", layer_scale, low=0.0, high=1e3)
        self.stem = nn.Sequential(nn.Conv2d(self.in_channels, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=LN_EPS))
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, self.feature_info, prev = [], [], dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            start = sum(depths[:i])
            stage = ConvNeXtStage(
                prev, dim, depth, downsample=i > 0, drop_paths=rates[start : start + depth], layer_scale=layer_scale
            )
            stages.append(stage)
            self.feature_info.append({"num_chs": dim, "reduction": 4 * 2**i, "module": f"stages.{i}"})
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.trunk = ("stem", "stages")  # forward_features: stages(stem(x))
        self.num_features = dims[-1]
        norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head = ClassifierHead(dims[-1], self.num_classes, drop_rate=drop_rate, norm=norm)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def convert_state_dict(self, state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Rename a torchvision or timm ``convnext_*`` state dict to this model's names."""
        out = {}
        for key, value in state_dict.items():
            if source == "torchvision":
                key = _rename_torchvision(key)
                if key.endswith(".gamma"):
                    value = value.reshape(-1)  # torchvision keeps the layer scale as (C, 1, 1)
            else:
                key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc", ".fc")
                if m := re.fullmatch(r"(stages\.\d+\.downsample)\.([01])\.(\w+)", key):
                    key = f"{m[1]}.{_DOWNSAMPLE[m[2]]}.{m[3]}"
            out[key] = value
        return out


_DOWNSAMPLE = {"0": "norm", "1": "conv"}  # indices in torchvision's and timm's downsampling Sequential
_TV_BLOCK = {"0": "dwconv", "2": "norm", "3": "fc1", "5": "fc2"}  # indices in torchvision's CNBlock.block


def _rename_torchvision(key: str) -> str:
    if m := re.fullmatch(r"features\.0\.(.*)", key):
        return f"stem.{m[1]}"
    if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.(\d)\.(\w+)", key):
        return f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.{_TV_BLOCK[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.layer_scale", key):
        return f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.gamma"
    if m := re.fullmatch(r"features\.(\d+)\.(\d)\.(\w+)", key):  # even indices: downsampling layers
        return f"stages.{int(m[1]) // 2}.downsample.{_DOWNSAMPLE[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"classifier\.([02])\.(\w+)", key):
        return f"head.{'norm' if m[1] == '0' else 'fc'}.{m[2]}"
    return key  # left as is: load_weights reports it as unexpected


@register_model
def convnext_tiny(**kwargs) -> ConvNeXt:
    kwargs.setdefault("drop_path_rate", 0.1)
    return ConvNeXt(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **kwargs)


@register_model
def convnext_small(**kwargs) -> ConvNeXt:
    kwargs.setdefault("drop_path_rate", 0.4)
    return ConvNeXt(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **kwargs)


@register_model
def convnext_base(**kwargs) -> ConvNeXt:
    kwargs.setdefault("drop_path_rate", 0.5)
    return ConvNeXt(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **kwargs)


@register_model
def convnext_large(**kwargs) -> ConvNeXt:
    kwargs.setdefault("drop_path_rate", 0.5)
    return ConvNeXt(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), **kwargs)


__all__ = ["ConvNeXt", "ConvNeXtBlock", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny"]
