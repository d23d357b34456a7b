"""ResNet-9: the residual network of D. Page, "How to train your ResNet" (Myrtle.ai, 2018), whose final DAWNBench
entry trained CIFAR-10 to 94% test accuracy in 79 s on one V100 (part 4, "Architecture search"; the network was kept
in parts 5 to 8).

Every convolution is 3x3, stride 1, padding 1, without bias, followed by batch norm and ReLU; downsampling is a 2x2
max pool after a convolution; a residual block adds its input to two such convolutions (no activation after the
sum). The layout, with the paper's widths at ``width_mult=1``:

    prep    conv 64
    layer1  conv 128, max pool, residual(conv 128, conv 128)
    layer2  conv 256, max pool
    layer3  conv 512, max pool, residual(conv 512, conv 512)
    head    global max pool, linear, logits multiplied by 0.125

Nine weighted layers, hence the name. All the computation is dense 3x3 convolution at a small depth, which is what
oneDNN and cuDNN run fastest; the network is the convatlas demo's model at ``width_mult=0.125`` on Fashion-MNIST
(docs/benchmarks.md). ``tests/test_models_resnet9.py`` checks it against a float64 re-statement of the layout above
with ``torch.nn.functional`` and against the parameter count by formula.
"""

from __future__ import annotations

from torch import Tensor, nn

from convatlas.models.base import ImageModel
from convatlas.models.checks import check_float, check_multiplier, check_rate
from convatlas.models.registry import register_model
from convatlas.nn.layers import ClassifierHead, ConvNormAct, make_divisible

WIDTHS = (64, 128, 256, 512)  # prep, layer1, layer2, layer3 at width_mult=1


class Residual(nn.Module):
    """``x + conv_bn_relu(conv_bn_relu(x))``: Page's residual block, both convolutions 3x3 at the input's width.

    Shapes:
        x (Tensor[N, C, H, W]) -> Tensor[N, C, H, W]
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3)
        self.conv2 = ConvNormAct(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class ResNet9(ImageModel):
    """ResNet-9 (Page 2018) with a width multiplier.

    Args:
        width_mult: multiplies the widths 64, 128, 256, 512; each is rounded to a multiple of 8
            (:func:`~convatlas.nn.layers.make_divisible`), so 0.125, 0.25, 0.375, 0.5, ... keep the ratios exactly.
        logit_scale: the logits are multiplied by this (0.125 in the paper, which lets the classifier train at the
            convolutions' learning rate).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns the pooled features); 10 by default,
            CIFAR-10's, the paper's data set.
        in_channels: input image channels.
        drop_rate: dropout before the classifier (0 in the paper).

    Shapes:
        x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes]; ``forward_features`` gives
        Tensor[N, 512 * width_mult, H/8, W/8] (each max pool rounds down).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        logit_scale: float = 0.125,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        where = type(self).__name__
        width_mult = check_multiplier(where, "width_mult", width_mult)
        self.logit_scale = check_float(where, "logit_scale", logit_scale, low=0.0, high=1e6, low_open=True)
        drop_rate = check_rate(where, "drop_rate", drop_rate)
        c0, c1, c2, c3 = (make_divisible(w * width_mult, 8) for w in WIDTHS)
        self.width_mult = width_mult

        self.prep = ConvNormAct(self.in_channels, c0, 3)
        self.layer1 = nn.Sequential(ConvNormAct(c0, c1, 3), nn.MaxPool2d(2), Residual(c1))
        self.layer2 = nn.Sequential(ConvNormAct(c1, c2, 3), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(ConvNormAct(c2, c3, 3), nn.MaxPool2d(2), Residual(c3))
        self.trunk = ("prep", "layer1", "layer2", "layer3")
        self.feature_info = [
            {"num_chs": c0, "reduction": 1, "module": "prep"},
            {"num_chs": c1, "reduction": 2, "module": "layer1"},
            {"num_chs": c2, "reduction": 4, "module": "layer2"},
            {"num_chs": c3, "reduction": 8, "module": "layer3"},
        ]
        self.num_features = c3
        self.head = ClassifierHead(c3, self.num_classes, drop_rate=drop_rate, pool="max")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """x (Tensor[N, C, H, W]) -> the scaled logits Tensor[N, num_classes] (``pre_logits`` or no classifier: the
        pooled features Tensor[N, C], unscaled)."""
        x = self.head(x, pre_logits=pre_logits)
        return x if pre_logits or self.num_classes == 0 else x * self.logit_scale


@register_model(input_size=(3, 32, 32))
def resnet9(**kwargs) -> ResNet9:
    """ResNet-9 (Page 2018) for 32x32 CIFAR-10 images: 6,573,130 parameters (the paper's 6,573,120 and the 10 biases
    of the classifier, which the paper leaves out)."""
    return ResNet9(**kwargs)
