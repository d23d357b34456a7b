"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015).

The paper's network (its Fig. 1) is the default: a contracting path of two unpadded 3x3 convolutions with ReLU and a
2x2 max pool per level (64, 128, 256, 512, 1024 channels), an expansive path where each step is a 2x2 transposed
convolution ("up-convolution") that halves the channels, the centre crop of the matching contracting-path map
concatenated to it, and two unpadded 3x3 convolutions; a final 1x1 convolution gives the class scores. Every unpadded
convolution loses a 1-pixel border, so ``unet(in_channels=1, num_classes=2)`` maps a 572x572 tile to 388x388
(31,030,658 parameters; the overlap-tile strategy of the paper covers large images with such tiles).

Options: ``padding="same"`` (output as large as the input when H and W are multiples of 16), ``batch_norm=True``
(BatchNorm after every 3x3 convolution), ``bilinear=True`` (bilinear upsampling followed by a 1x1 convolution that
halves the channels, instead of the transposed convolution), and ``encoder="<registered image model>"``: the zoo
model's ``forward_stages`` replaces the contracting path, its ``feature_info`` sets the decoder's widths and
upsampling factors, and the scores are resized bilinearly to the input size at the end.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from convatlas.errors import InputTypeError
from convatlas.models.base import FeatureStages
from convatlas.models.checks import check_bool, check_choice, check_in_channels, check_ints, check_num_classes
from convatlas.models.registry import create_model, model_info, register_model
from convatlas.nn.layers import ConvNormAct

PAPER_WIDTHS = (64, 128, 256, 512, 1024)


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """The central ``height x width`` window of ``x`` (the paper's "crop"), Tensor[N, C, H, W] -> Tensor[N, C, h, w].

    Raises:
        ValueError: when the window is larger than the map.
    """
    h, w = x.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"center_crop: cannot crop a {h}x{w} map to {height}x{width}")
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def crop_and_concat(skip: Tensor, up: Tensor) -> Tensor:
    """Crop ``skip`` and ``up`` centrally to their common size and concatenate them along channels.

    Shapes:
        skip (Tensor[N, C_s, H_s, W_s]), up (Tensor[N, C_u, H_u, W_u]) -> Tensor[N, C_s + C_u, min(H), min(W)]
    """
    height, width = min(skip.shape[-2], up.shape[-2]), min(skip.shape[-1], up.shape[-1])
    return torch.cat([center_crop(skip, height, width), center_crop(up, height, width)], dim=1)


def output_size(size: int, *, levels: int = 5, padding: str = "valid") -> int:
    """Output height (or width) of the plain U-Net for an input of ``size``, checking the paper's tiling rule.

    Each level's two 3x3 convolutions take 4 pixels when unpadded; the paper chooses tiles "such that all 2x2
    max-pooling operations are applied to a layer with an even x- and y-size" (572 -> 388, 188 -> 4).

    Raises:
        ValueError: when a max pool would see an odd size or a map would vanish.
    """
    loss = 4 if padding == "valid" else 0
    for level in range(levels):
        size -= loss
        if size < 1:
            raise ValueError(f"output_size: the maps vanish at level {level} (input too small for {levels} levels)")
        if level < levels - 1:
            if size % 2:
                raise ValueError(f"output_size: level {level} gives an odd size {size} to the 2x2 max pool")
            size //= 2
    for _ in range(levels - 1):
        size = 2 * size - loss
        if size < 1:
            raise ValueError("output_size: the maps vanish in the expansive path (input too small)")
    return size


def resize_to(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resize of ``x`` (Tensor[N, C, h, w]) to the spatial size of ``ref`` (Tensor[N, *, H, W])."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


# Leaves for torch.fx: their shape arithmetic runs at call time, not at trace time.
torch.fx.wrap("crop_and_concat")
torch.fx.wrap("resize_to")


def _freeze_unused(encoder: nn.Module, in_channels: int) -> None:
    """Freeze the encoder parameters that ``forward_stages`` never uses (a classifier's norm, a last 1x1 conv).

    Unused trainable parameters make DistributedDataParallel fail; frozen, they still load with the encoder's
    pretrained weights. Found by one small forward pass in eval mode, with a hook on each module that owns parameters.
    """
    used: set[nn.Module] = set()
    owners = [m for m in encoder.modules() if next(m.parameters(recurse=False), None) is not None]
    hooks = [m.register_forward_hook(lambda module, args, out: used.add(module)) for m in owners]
    ref = next(encoder.parameters())
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        encoder.forward_stages(torch.zeros(1, in_channels, 64, 64, device=ref.device, dtype=ref.dtype))
    encoder.train(was_training)
    for hook in hooks:
        hook.remove()
    for module in owners:
        if module not in used:
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional BatchNorm and) ReLU.

    Shapes:
        x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, H - 4, W - 4] unpadded, Tensor[N, C_out, H, W] with "same".
    """

    def __init__(self, in_channels: int, out_channels: int, *, padding: int, batch_norm: bool):
        norm = nn.BatchNorm2d if batch_norm else None
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, padding=padding, norm=norm),
            ConvNormAct(out_channels, out_channels, 3, padding=padding, norm=norm),
        )


def _upsample(in_channels: int, out_channels: int, factor: int, *, bilinear: bool) -> nn.Module:
    """The expansive path's upsampling: a ``factor x factor`` stride-``factor`` transposed convolution, or bilinear
    upsampling and a 1x1 convolution (a 1x1 convolution alone when ``factor == 1``)."""
    if factor == 1:
        return nn.Conv2d(in_channels, out_channels, 1)
    if bilinear:
        return nn.Sequential(
            nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 1),
        )
    return nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor)


class UNet(FeatureStages):
    """U-Net: the 2015 paper's network by default, or a decoder on top of a zoo encoder.

    Args:
        in_channels: input channels (1 in the paper).
        num_classes: output channels, one score map per class (2 in the paper).
        widths: channels of the contracting path's levels (the paper's 64 ... 1024); unused with ``encoder``.
        padding: ``"valid"`` (the paper: unpadded convolutions, output smaller than the input) or ``"same"``;
            defaults to ``"valid"`` without an encoder and ``"same"`` with one.
        batch_norm: BatchNorm after every 3x3 convolution (not in the paper).
        bilinear: bilinear upsampling + 1x1 convolution instead of the 2x2 transposed convolution.
        encoder: name of a registered image classifier whose ``forward_stages`` becomes the contracting path.

    ``forward_stages(x)`` gives the contracting path's maps, one per ``feature_info`` entry, shallowest first (the
    encoder's stages with an encoder); ``forward_features(x)`` the deepest of them (the encoder's ``forward_features``
    with an encoder).

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes, H', W']: H' = 388 for H = 572 with the paper's
        settings, H' = H with ``padding="same"`` (H a multiple of 16) or with an encoder.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: tuple[int, ...] = PAPER_WIDTHS,
        padding: str | None = None,
        batch_norm: bool = False,
        bilinear: bool = False,
        encoder: str | None = None,
    ):
        super().__init__()
        where = type(self).__name__
        in_channels = check_in_channels(where, in_channels)
        num_classes = check_num_classes(where, num_classes, allow_zero=False)
        batch_norm = check_bool(where, "batch_norm", batch_norm)
        bilinear = check_bool(where, "bilinear", bilinear)
        if encoder is not None and not isinstance(encoder, str):
            raise InputTypeError(f"{where}: encoder must be the name of a registered model or None, got {encoder!r}")
        if padding is None:
            padding = "same" if encoder else "valid"
        padding = check_choice(where, "padding", padding, ("valid", "same"))
        self.in_channels, self.num_classes, self.padding = in_channels, num_classes, padding
        pad = 0 if padding == "valid" else 1

        if encoder is not None:
            if model_info(encoder).task != "classification":
                raise ValueError(
                    f"UNet: encoder must be a registered image classifier, {encoder!r} is a "
                    f"{model_info(encoder).task} model"
                )
            self.encoder = create_model(encoder, in_channels=in_channels, num_classes=0)
            _freeze_unused(self.encoder, in_channels)
            self.down = None
            info = self.encoder.feature_info
            channels, reductions = [f["num_chs"] for f in info], [f["reduction"] for f in info]
            modules = [f"encoder.{f['module']}" for f in info]
            self.trunk = tuple(f"encoder.{path}" for path in self.encoder.trunk)
        else:
            widths = check_ints(where, "widths", widths, min_length=2)
            self.encoder = None
            self.down = nn.ModuleList()
            prev = in_channels
            for width in widths:
                self.down.append(DoubleConv(prev, width, padding=pad, batch_norm=batch_norm))
                prev = width
            self.pool = nn.MaxPool2d(2)
            channels, reductions = list(widths), [2**i for i in range(len(widths))]
            modules = [f"down.{i}" for i in range(len(widths))]
            trunk = ["down.0"]
            for i in range(1, len(widths)):
                trunk += ["pool", f"down.{i}"]  # the 2x2 max pool, then the level's two convolutions
            self.trunk = tuple(trunk)
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": m} for c, r, m in zip(channels, reductions, modules, strict=True)
        ]

        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(channels) - 1)):  # from the deepest skip to the shallowest
            factor = reductions[i + 1] // reductions[i]
            self.up.append(_upsample(channels[i + 1], channels[i], factor, bilinear=bilinear))
            self.dec.append(DoubleConv(2 * channels[i], channels[i], padding=pad, batch_norm=batch_norm))
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        self.resize_output = reductions[0] > 1
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper: Gaussian with standard deviation sqrt(2 / N), N = k * k * C_in (He et al.), encoder excluded.
        decoder = [self.up, self.dec, self.head] + ([self.down] if self.down is not None else [])
        for part in decoder:
            for m in part.modules():
                if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.forward_stages(x)
        y = feats[-1]
        for up, dec, skip in zip(self.up, self.dec, reversed(feats[:-1]), strict=True):
            y = dec(crop_and_concat(skip, up(y)))
        y = self.head(y)
        if self.resize_output:
            y = resize_to(y, x)
        return y


@register_model(task="segmentation", input_size=(1, 572, 572))
def unet(**kwargs) -> UNet:
    return UNet(**kwargs)


__all__ = ["DoubleConv", "UNet", "center_crop", "crop_and_concat", "output_size", "resize_to", "unet"]
