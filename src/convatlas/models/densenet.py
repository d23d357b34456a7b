"""DenseNet: Huang, Liu, van der Maaten and Weinberger, "Densely Connected Convolutional Networks" (CVPR 2017).

Inside a dense block, layer ``l`` sees the concatenation of every earlier feature map,
``x_l = H_l([x_0, ..., x_{l-1}])``, and adds ``growth_rate`` new channels. This file builds the paper's DenseNet-BC:
each ``H_l`` is a bottleneck BN-ReLU-Conv(1x1, ``bn_size * growth_rate``)-BN-ReLU-Conv(3x3, ``growth_rate``), and each
transition between blocks is BN-ReLU-Conv(1x1) with compression 0.5 (halving the channels) followed by 2x2 average
pooling.

``memory_efficient=True`` trades compute for memory: the concatenation and the bottleneck 1x1 convolution of every
layer are recomputed in the backward pass (gradient checkpointing) instead of being stored, which makes the memory
of a block linear instead of quadratic in its depth (Pleiss et al. 2017, "Memory-Efficient Implementation of
DenseNets"). Outputs and gradients are the same.

The transitions pool with ``ceil_mode=True``: on even sizes (224x224 inputs) that is exactly the paper's 2x2 pooling,
and on odd sizes the last row and column are averaged on their own instead of dropped, so 28x28 inputs still reach
a 1x1 map at stride 32 instead of an empty one.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from convatlas.models.base import ImageModel
from convatlas.models.checks import MAX_BLOCKS, MAX_CHANNELS, check_bool, check_float, check_int, check_ints, check_rate
from convatlas.models.registry import register_model
from convatlas.nn.layers import ClassifierHead, ConvNormAct


class DenseLayer(nn.Module):
    """One ``H_l``: BN-ReLU-Conv1x1 to ``bn_size * growth_rate`` channels, BN-ReLU-Conv3x3 to ``growth_rate``.

    Shapes:
        features (list of Tensor[N, C_i, H, W]) -> Tensor[N, growth_rate, H, W]
    """

    def __init__(self, in_channels: int, *, growth_rate: int, bn_size: int, drop_rate: float, memory_efficient: bool):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: Tensor) -> Tensor:
        """[x_0, ..., x_{l-1}] -> Tensor[N, bn_size * growth_rate, H, W]: the part worth recomputing."""
        return self.conv1(F.relu(self.norm1(torch.cat(features, 1)), inplace=True))

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.memory_efficient and self.training:
            # The concatenation is the large tensor; recompute it (and the 1x1 conv) in the backward pass.
            x = torch.utils.checkpoint.checkpoint(self.bottleneck, *features, use_reentrant=False)
        else:
            x = self.bottleneck(*features)
        x = self.conv2(F.relu(self.norm2(x), inplace=True))
        return F.dropout(x, p=self.drop_rate, training=self.training)


class DenseBlock(nn.ModuleList):
    """``num_layers`` dense layers; the output concatenates the input and every layer's new channels.

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, C + num_layers * growth_rate, H, W]
    """

    def __init__(self, in_channels: int, num_layers: int, **layer_kwargs):
        growth_rate = layer_kwargs["growth_rate"]
        super().__init__(DenseLayer(in_channels + i * growth_rate, **layer_kwargs) for i in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (compression) and 2x2 average pooling.

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, ceil(H / 2), ceil(W / 2)]
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True)


class DenseStage(nn.Module):
    """A transition (all stages but the first) followed by a dense block; the last stage ends with BN-ReLU.

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, H', W'], ``H' = ceil(H / 2)`` after a transition, else ``H``.
    """

    def __init__(self, transition: nn.Module, block: DenseBlock, norm: nn.Module):
        super().__init__()
        self.transition = transition
        self.block = block
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.block(self.transition(x)))


def block_widths(
    num_init_features: int, block_config: tuple[int, ...], *, growth_rate: int, compression: float
) -> list[tuple[int, int]]:
    """The channels entering and leaving each dense block: a transition multiplies them by ``compression`` (rounded
    down), a block of ``n`` layers adds ``n * growth_rate``. DenseNet-121: ``[(64, 256), (128, 512), (256, 1024),
    (512, 1024)]``."""
    widths, channels = [], num_init_features
    for i, num_layers in enumerate(block_config):
        start = channels if i == 0 else int(channels * compression)
        channels = start + num_layers * growth_rate
        widths.append((start, channels))
    return widths


class DenseNet(ImageModel):
    """DenseNet-BC.

    Args:
        block_config: number of layers in each dense block, ``(6, 12, 24, 16)`` for DenseNet-121.
        growth_rate: channels each layer adds (``k`` in the paper).
        num_init_features: channels of the 7x7 stem convolution (``2k`` in the paper).
        bn_size: bottleneck width as a multiple of ``growth_rate`` (4 in the paper).
        compression: channel factor of the transitions, in (0, 1] (0.5 in the paper).
        drop_rate: dropout after each layer's 3x3 convolution.
        memory_efficient: recompute concatenations in the backward pass (checkpointing) to save memory.
        num_classes: classifier outputs (0: no classifier).
        in_channels: input image channels.

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes]; ``forward_features`` gives Tensor[N, C, H/32, W/32]
        with C = 1024 (121), 1664 (169), 1920 (201).
    """

    def __init__(
        self,
        *,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        growth_rate: int = 32,
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        block_config = check_ints(where, "block_config", block_config, high=MAX_BLOCKS)
        growth_rate = check_int(where, "growth_rate", growth_rate)
        num_init_features = check_int(where, "num_init_features", num_init_features)
        bn_size = check_int(where, "bn_size", bn_size)
        check_int(where, "bn_size * growth_rate", bn_size * growth_rate)  # the bottleneck's width
        compression = check_float(where, "compression", compression, low=0.0, high=1.0, low_open=True)
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        memory_efficient = check_bool(where, "memory_efficient", memory_efficient)
        widths = block_widths(num_init_features, block_config, growth_rate=growth_rate, compression=compression)
        for i, (start, end) in enumerate(widths):
            # Checked before anything is built: the concatenation grows by growth_rate with every layer.
            if start < 1 or end > MAX_CHANNELS:
                raise ValueError(
                    f"{where}: num_init_features={num_init_features}, block_config={block_config}, growth_rate="
                    f"{growth_rate} and compression={compression:g} give dense block {i} {start} to {end} channels; "
                    f"each must lie in [1, {MAX_CHANNELS}]"
                )

        # Stem: 7x7/2 conv, BN, ReLU (reduction 2), then 3x3/2 max-pool (reduction 4).
        self.stem = ConvNormAct(self.in_channels, num_init_features, 7, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [{"num_chs": num_init_features, "reduction": 2, "module": "stem"}]
        layer_kwargs = {
            "growth_rate": growth_rate,
            "bn_size": bn_size,
            "drop_rate": drop_rate,
            "memory_efficient": memory_efficient,
        }
        stages = []
        channels, reduction = num_init_features, 4
        for i, (num_layers, (start, end)) in enumerate(zip(block_config, widths, strict=True)):
            transition: nn.Module = nn.Identity()
            if i > 0:
                transition = Transition(channels, start)
                reduction *= 2
            block = DenseBlock(start, num_layers, **layer_kwargs)
            channels = end
            last = i == len(block_config) - 1
            norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) if last else nn.Identity()
            stages.append(DenseStage(transition, block, norm))
            self.feature_info.append({"num_chs": channels, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.trunk = ("stem", "pool", "stages")  # forward_features: stages(pool(stem(x)))
        self.num_features = channels
        self.head = ClassifierHead(channels, self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's: He-normal convolutions, unit BN, zero linear bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def set_memory_efficient(self, enabled: bool = True) -> None:
        """Switch checkpointing of the dense layers on or off after construction."""
        for m in self.modules():
            if isinstance(m, DenseLayer):
                m.memory_efficient = enabled

    def convert_state_dict(self, state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Rename a torchvision or timm DenseNet state dict (``features.denseblock1.denselayer1.conv1``) to ours."""
        last = len(self.stages) - 1
        out = {}
        for key, value in state_dict.items():
            new = re.sub(r"^features\.conv0\.", "stem.0.", key)
            new = re.sub(r"^features\.norm0\.", "stem.1.", new)
            new = re.sub(r"^features\.norm5\.", f"stages.{last}.norm.0.", new)
            new = re.sub(
                r"^features\.denseblock(\d+)\.denselayer(\d+)\.",
                lambda m: f"stages.{int(m.group(1)) - 1}.block.{int(m.group(2)) - 1}.",
                new,
            )
            # transition i sits between block i and block i + 1, so it opens our stage i (0-based).
            new = re.sub(r"^features\.transition(\d+)\.", lambda m: f"stages.{int(m.group(1))}.transition.", new)
            new = re.sub(r"^classifier\.", "head.fc.", new)
            out[new] = value
        return out


@register_model
def densenet121(**kwargs) -> DenseNet:
    """DenseNet-121 (k = 32): 7,978,856 parameters (torchvision, timm)."""
    return DenseNet(block_config=(6, 12, 24, 16), growth_rate=32, num_init_features=64, **kwargs)


@register_model
def densenet169(**kwargs) -> DenseNet:
    """DenseNet-169 (k = 32): 14,149,480 parameters (torchvision, timm)."""
    return DenseNet(block_config=(6, 12, 32, 32), growth_rate=32, num_init_features=64, **kwargs)


@register_model
def densenet201(**kwargs) -> DenseNet:
    """DenseNet-201 (k = 32): 20,013,928 parameters (torchvision, timm)."""
    return DenseNet(block_config=(6, 12, 48, 32), growth_rate=32, num_init_features=64, **kwargs)
