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
