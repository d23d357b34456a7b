"""Operators: pure functions over tensors, no state (modules in ``convatlas.nn`` only hold hyperparameters).

Operators with several implementations take ``backend="auto" | "c" | "torch" | "triton"``; :func:`backends` reports
what this machine can run and what ``"auto"`` picks, and why.
"""

from convatlas.ops.backend import BackendReport, backends  # noqa: F401
from convatlas.ops.boxes import (  # noqa: E402, F401
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nms,
    remove_small_boxes,
    soft_nms,
)
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
from convatlas.ops.roi import multi_scale_roi_align, roi_align, roi_pool  # noqa: E402, F401
from convatlas.ops.seqconv import dynamic_conv, lightweight_conv  # noqa: E402, F401
