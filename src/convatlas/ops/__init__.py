"""Operators: pure functions over tensors, no state (modules in ``convatlas.nn`` only hold hyperparameters)."""

from convatlas.ops.conv import (  # noqa: E402, F401
    conv1d,
    conv2d,
    conv_matrix,
    conv_transpose1d,
    conv_transpose2d,
    depthwise_conv,
    pointwise_conv,
    separable_conv,
)

from convatlas.ops.seqconv import dynamic_conv, lightweight_conv  # noqa: E402, F401
