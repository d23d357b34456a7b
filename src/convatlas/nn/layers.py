"""Blocks shared by the model families: each lives here once and model files only assemble them."""

from __future__ import annotations

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% (MobileNet, EfficientNet).

    ``new = max(min_value, int(value + divisor / 2) // divisor * divisor)``, bumped by one ``divisor`` when it would
    fall below ``round_limit * value``.
    """
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


class ConvNormAct(nn.Sequential):
    """Convolution, normalisation and activation: the basic block of every CNN in the zoo.

    ``padding=None`` keeps the length at stride 1 for odd kernels (``padding = dilation * (kernel - 1) // 2``).

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, H', W'] with H' = floor((H + 2p - d(k-1) - 1)/s) + 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm: type[nn.Module] | None = nn.BatchNorm2d,
        act: type[nn.Module] | None = nn.ReLU,
    ):
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = norm is None
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
        ]
        if norm is not None:
            layers.append(norm(out_channels))
        if act is not None:
            layers.append(act(inplace=True) if act in _INPLACE_ACTS else act())
        super().__init__(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels


_INPLACE_ACTS = {nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid}


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from global average pooling.

    ``x * gate(W2 act(W1 mean_hw(x)))`` with ``W1: C -> rd_channels``, ``W2: rd_channels -> C``.

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, C, H, W]
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int,
        *,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): zero whole samples of a residual branch with probability ``p``.

    Survivors are scaled by ``1 / (1 - p)`` so the expectation is unchanged. Identity in eval mode or at ``p = 0``.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


# A leaf for torch.fx, as torchvision's stochastic_depth: one call in a traced graph, its mask drawn at call time.
torch.fx.wrap("drop_path")


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map (ConvNeXt's downsampling layers).

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, C, H, W], normalised over C at each position.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ClassifierHead(nn.Module):
    """Global pooling, optional norm and dropout, and a linear classifier: ``forward_head`` of the image models.

    ``pool`` is ``"avg"`` (global average pooling) or ``"max"`` (global max pooling, as in ResNet-9). ``norm`` (for
    example ConvNeXt's ``nn.LayerNorm(C)``) is applied to the pooled features.

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, num_classes]; with ``pre_logits=True``, Tensor[N, C].
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        drop_rate: float = 0.0,
        norm: nn.Module | None = None,
        pool: str = "avg",
    ):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"ClassifierHead: pool must be 'avg' or 'max', got {pool!r}")
        self.in_features = in_features
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten(1)
        self.norm = norm
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.flatten(self.pool(x))  # (N, C)
        if self.norm is not None:
            x = self.norm(x)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


__all__ = [
    "ClassifierHead",
    "ConvNormAct",
    "DropPath",
    "LayerNorm2d",
    "SqueezeExcite",
    "drop_path",
    "make_divisible",
]
