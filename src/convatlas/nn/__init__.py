"""Modules: thin wrappers over ``convatlas.ops`` and the blocks the model families share."""

from convatlas.nn.layers import (
    ClassifierHead,
    ConvNormAct,
    DropPath,
    LayerNorm2d,
    SqueezeExcite,
    drop_path,
    make_divisible,
)

__all__ = ["ClassifierHead", "ConvNormAct", "DropPath", "LayerNorm2d", "SqueezeExcite", "drop_path", "make_divisible"]

from convatlas.nn.conv import DepthwiseConv2d, PointwiseConv2d, SeparableConv2d  # noqa: E402

__all__ += ["DepthwiseConv2d", "PointwiseConv2d", "SeparableConv2d"]

from convatlas.nn.seqconv import DynamicConv1d, LightConvBlock, LightweightConv1d  # noqa: E402

__all__ += ["DynamicConv1d", "LightConvBlock", "LightweightConv1d"]

from convatlas.nn.roi import MultiScaleRoIAlign, RoIAlign, RoIPool  # noqa: E402

__all__ += ["MultiScaleRoIAlign", "RoIAlign", "RoIPool"]
